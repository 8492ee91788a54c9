#!/usr/bin/env python
"""Times playbooks/deploy.yml on the lab (2 vLLM instances per host) with 1 and 2 hosts: a cold run on fresh
hosts, then an idempotent re-run. Also lists the slowest tasks of the re-run (ansible.posix.profile_tasks).

Usage: python benchmarks/deploy_bench.py [--hosts 1 2]
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from ansible_run import ansible_env  # noqa: E402


def deploy(profile=False):
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    if profile:
        env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
    started = time.monotonic()
    proc = subprocess.run(["ansible-playbook", os.path.join(ROOT, "playbooks", "deploy.yml"), "-i",
                           os.path.join(ROOT, "inventories", "lab")], capture_output=True, text=True, env=env,
                          check=False)
    elapsed = time.monotonic() - started
    recap = re.findall(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", proc.stdout, re.M)
    if proc.returncode != 0 or not recap:
        raise SystemExit("deploy.yml failed (rc %d):\n%s" % (proc.returncode, proc.stdout[-3000:]))
    slowest = re.findall(r"^(.+?) -{3,} (\d+\.\d+)s$", proc.stdout, re.M)[:5] if profile else []
    return elapsed, recap, slowest


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print("deploy.yml on the lab (2 instances per host), %s, %d cores, %s" % (
        platform.platform(), os.cpu_count(), time.strftime("%Y-%m-%d")))
    print("| hosts | run | wall (s) | tasks per host (ok) | changed per host |")
    print("| --- | --- | --- | --- | --- |")
    notes = []
    for hosts in args.hosts:
        subprocess.run([sys.executable, os.path.join(ROOT, "tests", "lab", "labctl.py"), "up", "--fresh", "--hosts",
                        str(hosts)], check=True, capture_output=True)
        for label, profile in (("cold", False), ("idempotent re-run", True)):
            elapsed, recap, slowest = deploy(profile)
            oks = sorted(set(int(r[1]) for r in recap))
            changed = sorted(set(int(r[2]) for r in recap))
            row = (hosts, label, elapsed, "/".join(map(str, oks)), "/".join(map(str, changed)))
            print("| %d | %s | %.1f | %s | %s |" % row)
            if slowest:
                notes.append("%d host(s), re-run, slowest tasks: %s" % (
                    hosts, "; ".join("%s %ss" % (name.strip(), secs) for name, secs in slowest)))
    print()
    for note in notes:
        print("- " + note)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
