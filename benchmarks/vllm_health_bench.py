#!/usr/bin/env python
"""Times inferops.vllm.vllm_health against the lab's emulator (`make lab-up` first):

- one full probe of a healthy server (tcp, health, version, models, metrics, GPUs, container, inference),
  run on the lab host, median of N;
- readiness detection: the emulator is started with a load delay; a watcher polls /health every 10 ms to see
  when it starts answering, while wait_for=healthy (poll interval 0.5 s) runs; the latency is the time from the
  first 200 the watcher saw to wait_for returning. Median of N starts.

Usage: python benchmarks/vllm_health_bench.py [--runs 5] [--host inferops-lab-1]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from gpu_select_bench import copy_collection  # noqa: E402

INNER = r"""
import json, subprocess, sys, threading, time, urllib.request
sys.path.insert(0, "/tmp/inferops-bench")
from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_health as vh

runs = int(sys.argv[1])
PORT = 8290

def docker(*args):
    return subprocess.run(["docker"] + list(args), capture_output=True, text=True, check=True).stdout.strip()

def start(name, faults):
    docker("run", "-d", "--name", name, "--gpus", '"device=7"', "-p", "%d:%d" % (PORT, PORT),
           "-e", "VLLM_EMULATOR_FAULTS=" + faults, "inferops/vllm-emulator:0.33.0", "facebook/opt-125m",
           "--port", str(PORT), "--gpu-memory-utilization", "0.2")

config = lambda: vh.Config("http://127.0.0.1:%d" % PORT, model="facebook/opt-125m", runtime="docker",
                           name="bench-health", timeout=10)

# One full probe of a healthy server.
start("bench-health", "{}")
report, failure = vh.wait_until_ready(config(), 60, 0.2)
assert failure is None, failure
probes = []
for _ in range(runs * 4):
    began = time.perf_counter()
    report = vh.probe(config())
    probes.append((time.perf_counter() - began) * 1000)
    assert report["status"] == "healthy", report["failed_checks"]
docker("rm", "-f", "bench-health")

# Readiness detection latency.
latencies = []
for run in range(runs):
    seen = {}

    def watch():
        while "ready" not in seen:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/health" % PORT, timeout=0.5) as r:
                    if r.status == 200:
                        seen["ready"] = time.monotonic()
            except Exception:
                pass
            time.sleep(0.01)

    start("bench-health", '{"load_delay": 3}')
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    report, failure = vh.wait_until_ready(config(), 60, 0.5)
    returned = time.monotonic()
    watcher.join(5)
    docker("rm", "-f", "bench-health")
    assert failure is None and "ready" in seen, failure
    latencies.append((returned - seen["ready"]) * 1000)
print(json.dumps({"probe_ms": probes, "readiness_ms": latencies}))
"""


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--host", default="inferops-lab-1")
    args = parser.parse_args(argv)
    copy_collection(args.host)
    out = subprocess.run(["docker", "exec", "-i", args.host, "python3", "-", str(args.runs)], input=INNER,
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    print("vllm_health on %s, %s, %d cores, %s" % (args.host, platform.platform(), os.cpu_count(),
                                                   time.strftime("%Y-%m-%d")))
    print("| measure | median (ms) | min (ms) | max (ms) | runs |")
    print("| --- | --- | --- | --- | --- |")
    for label, key in (("one full probe, healthy server", "probe_ms"),
                       ("readiness detection (wait_for, poll 0.5 s)", "readiness_ms")):
        values = data[key]
        row = (label, statistics.median(values), min(values), max(values), len(values))
        print("| %s | %.0f | %.0f | %.0f | %d |" % row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
