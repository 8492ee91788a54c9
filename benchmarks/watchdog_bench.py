#!/usr/bin/env python
"""Detection and recovery times of the watchdog over several hangs (issue 14: a hung backend out of rotation
<= 15 s after it hangs, back <= load time + 30 s later), on the lab as the Molecule scenario `gateway` deploys it
(the vllm role's watchdog defaults: probe every 5 s, deadline 5 s, restart at the second failure; HAProxy's agent
check every 1 s there). Each run hangs lab-2's emulated engine (its `hang` fault: /health stays 200) while a client
sends completions through the gateway, and reads HAProxy's server state on lab-1 every 0.3 s.

  molecule converge -s gateway          # from the repository root: lab hosts, instances, gateway
  python benchmarks/watchdog_bench.py [--runs 5]
  molecule destroy -s gateway
"""
import argparse
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from labhost import LabHost  # noqa: E402
import test_gateway_lab as gw  # noqa: E402
import test_watchdog_lab as wd  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    hosts = [LabHost("inferops-lab-1"), LabHost("inferops-lab-2")]
    gateway = gw.endpoint(hosts[0])
    outs, backs, failed, sent = [], [], 0, 0
    for run in range(args.runs):
        with wd.Client(gateway) as client:
            out_after, back_after = wd.measure_hang(gateway, hosts[0], hosts[1])
        outs.append(out_after)
        backs.append(back_after - out_after)
        sent += len(client.results)
        failed += len([s for s in client.results if s != 200])
        print("run %d: out of rotation %.1f s after the hang, serving again %.1f s after that" % (
            run + 1, out_after, back_after - out_after), flush=True)
        # Past the restart window's count: each run is one restart, the limit is 3 in 30 min.
        state = wd.watchdog_state(hosts[1])
        if len(state["restarts"]) >= wd.MAX_RESTARTS - 1 and run + 1 < args.runs:
            hosts[1].run("systemctl", "stop", "inferops-vllm-watchdog")
            hosts[1].python("import json; p='%s'; d=json.load(open(p)); d['instances']['%s']['restarts']=[]; "
                            "json.dump(d, open(p, 'w')); print('{}')" % (wd.STATE_FILE, wd.INSTANCE))
            hosts[1].run("systemctl", "start", "inferops-vllm-watchdog")
            time.sleep(12)
    print("\nmachine: %s, %d cores; %s" % (platform.platform(), os.cpu_count(), time.strftime("%Y-%m-%d")))
    print("out of rotation after the hang: median %.1f s, max %.1f s (%s)" % (
        statistics.median(outs), max(outs), ", ".join("%.1f" % v for v in outs)))
    print("serving again after being out: median %.1f s, max %.1f s (%s)" % (
        statistics.median(backs), max(backs), ", ".join("%.1f" % v for v in backs)))
    print("requests through the gateway meanwhile: %d, %d not 200" % (sent, failed))


if __name__ == "__main__":
    main()
