#!/usr/bin/env python
"""Times inferops.vllm.gpu_select on an 8-GPU lab host (`make lab-up` first), per backend:

- the selection call alone (observe + select, the module's logic) run on the lab host, median of N runs;
- one whole module run (`ansible -m inferops.vllm.gpu_select`, connection and module transfer included).

Usage: python benchmarks/gpu_select_bench.py [--runs 15] [--host inferops-lab-1]
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
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from ansible_run import run_module  # noqa: E402

CUDA_IMAGE = "inferops/cuda-base:12.2-lab"
INNER = r"""
import json, sys, time
sys.path.insert(0, "/tmp/inferops-bench")
from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select as gs
backend, image, runs = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
times = []
for _run in range(runs):
    start = time.perf_counter()
    obs, attempts = gs.observe(backend, 10, docker_image=image, with_topology=backend == "nvml")
    gs.select(obs, gs.Constraints(count=2, min_free_memory_mib=40960))
    times.append((time.perf_counter() - start) * 1000)
print(json.dumps(times))
"""


def copy_collection(host):
    subprocess.run(["docker", "exec", host, "rm", "-rf", "/tmp/inferops-bench"], check=True)
    target = "/tmp/inferops-bench/ansible_collections/inferops/vllm/plugins"
    subprocess.run(["docker", "exec", host, "mkdir", "-p", os.path.dirname(target)], check=True)
    subprocess.run(["docker", "cp", os.path.join(ROOT, "plugins"), "%s:%s" % (host, target)], check=True)


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--host", default="inferops-lab-1")
    args = parser.parse_args(argv)
    copy_collection(args.host)
    rows = []
    for backend, image in (("nvml", ""), ("nvidia-smi", ""), ("docker", CUDA_IMAGE)):
        inner = subprocess.run(["docker", "exec", "-i", args.host, "python3", "-", backend, image, str(args.runs)],
                               input=INNER, capture_output=True, text=True, check=True)
        selection = json.loads(inner.stdout)
        module = []
        for _run in range(max(3, args.runs // 3)):
            extra = {"docker_image": image} if image else {}
            result = run_module(args.host, "inferops.vllm.gpu_select",
                                dict(count=2, min_free_memory="40GiB", backend=backend, **extra))
            assert not result.failed, result.get("msg")
            module.append(result.elapsed * 1000)
        rows.append((backend, statistics.median(selection), min(selection), statistics.median(module)))
    print("gpu_select on %s (8 simulated H100), %s, %d cores, %s" % (
        args.host, platform.platform(), os.cpu_count(), time.strftime("%Y-%m-%d")))
    print("| backend | selection call, median (ms) | selection call, min (ms) | module run via ansible, median (ms) |")
    print("| --- | --- | --- | --- |")
    for backend, median, best, module in rows:
        print("| %s | %.1f | %.1f | %.0f |" % (backend, median, best, module))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
