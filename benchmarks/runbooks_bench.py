#!/usr/bin/env python
"""Times the incident runbooks on the lab:

- MTTR of reset.yml on a hung instance (emulator load time 0): wall time from start to healthy, and each step's
  time from the runbook's own summary; median of N runs;
- API-key rotation: requests sent by a client with failover across the two replicas during the whole rotation,
  and how many failed.

Usage: python benchmarks/runbooks_bench.py [--runs 3]
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from labhost import LabHost  # noqa: E402
from test_runbooks import KEY, RUNBOOKS, completion, playbook  # noqa: E402

STEP = re.compile(r"opt-small: healthy after ([\d.]+) s \(diagnostics ([\d.]+) s in \S+,\s+stop ([\d.]+) s,\s+free "
                  r"GPUs\s+([\d.]+) s: .*?,\s+start to healthy ([\d.]+)\s+s\)", re.S)


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "lab", "labctl.py"), "up", "--fresh"], check=True,
                   capture_output=True)
    deploy = playbook(os.path.join(ROOT, "playbooks", "deploy.yml"))
    assert deploy.returncode == 0, deploy.stdout[-2000:]
    hosts = [LabHost("inferops-lab-1"), LabHost("inferops-lab-2")]
    host = hosts[0]

    rows = []
    for _run in range(args.runs):
        host.set_fault(8001, hang=True)
        assert completion(host, 8001, timeout=2) is None
        started = time.monotonic()
        proc = playbook(os.path.join(RUNBOOKS, "reset.yml"), {"instances": ["opt-small"]}, limit=host.name)
        wall = time.monotonic() - started
        assert proc.returncode == 0 and completion(host, 8001) == 200, proc.stdout[-2000:]
        steps = [float(x) for x in STEP.search(proc.stdout).groups()]
        rows.append([wall] + steps)

    state = {"key": KEY, "sent": 0, "failed": 0, "stop": False}

    def client():
        turn = 0
        while not state["stop"]:
            statuses = []
            for offset in range(len(hosts)):
                status = completion(hosts[(turn + offset) % len(hosts)], 8001, key=state["key"])
                statuses.append(status)
                if status is not None and status < 500:
                    break
            state["sent"] += 1
            state["failed"] += statuses[-1] != 200
            turn += 1
            time.sleep(0.05)

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    key_file = os.path.join(tempfile.mkdtemp(), "new-key")
    started = time.monotonic()
    add = playbook(os.path.join(RUNBOOKS, "rotate_api_key.yml"), {"new_key_file": key_file, "phase": "add"})
    state["key"] = open(key_file).read().strip()
    remove = playbook(os.path.join(RUNBOOKS, "rotate_api_key.yml"), {"new_key_file": key_file, "phase": "remove"})
    rotation = time.monotonic() - started
    state["stop"] = True
    worker.join(10)
    assert add.returncode == 0 and remove.returncode == 0

    print("runbooks on the lab, %s, %d cores, %s" % (platform.platform(), os.cpu_count(), time.strftime("%Y-%m-%d")))
    print("| reset.yml on a hung instance | median (s) | min (s) | max (s) |")
    print("| --- | --- | --- | --- |")
    labels = ("wall, playbook start to healthy", "runbook's own total", "1 diagnostics", "2 stop", "3-4 free GPUs",
              "5 start to healthy")
    for i, label in enumerate(labels):
        values = [r[i] for r in rows]
        print("| %s | %.1f | %.1f | %.1f |" % (label, statistics.median(values), min(values), max(values)))
    print()
    print("API-key rotation (add, switch, remove; 2 replicas, client-side failover): %.0f s, %d requests, %d failed"
          % (rotation, state["sent"], state["failed"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
