#!/usr/bin/env python
"""Times, on the lab, how long each injected fault takes to fire its alert in Prometheus with the monitoring role's
default rules (scrape, evaluation and GPU collector intervals set to 5 s, as in the lab test): uncorrected ECC
errors, a lost GPU, a queue of 60, a hung engine with a request in flight, and an engine that dies three times.
Unlike tests/integration/test_monitoring_lab.py, it waits for VllmHung to fire (its for: 5m) instead of pending.

Usage: python benchmarks/alert_latency_bench.py   (with the lab up: make lab-up)
"""

import json
import os
import platform
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import test_monitoring_lab as lab  # noqa: E402
from labhost import LabHost  # noqa: E402
from conftest import _lab_hosts  # noqa: E402


def main():
    hosts = [LabHost(name) for name in _lab_hosts()]
    if len(hosts) < 2:
        raise SystemExit("start two lab hosts first: make lab-up")
    for host in hosts:
        lab.restore(host)
    extra = {"monitoring_prometheus_scrape_interval": "5s", "monitoring_prometheus_evaluation_interval": "5s",
             "monitoring_gpu_metrics_interval": "5s",
             "vllm_instances": [{"name": lab.INSTANCE, "model": "facebook/opt-125m", "model_params": "125M",
                                 "port": lab.PORT, "gpu_memory_utilization": 0.3, "max_model_len": 2048}]}
    deploy = lab.playbook(os.path.join(ROOT, "tests", "integration", "playbooks", "monitoring_lab.yml"), extra)
    if deploy.returncode != 0:
        raise SystemExit(deploy.stdout[-3000:])
    prometheus = lab.Prometheus(hosts[0])
    restarting, faulty = hosts[0], hosts[1]
    ecc_gpu, lost_gpu = lab.free_gpus(faulty)[:2]
    expected = {"GpuUncorrectedEccErrors": {"host": faulty.name, "gpu": ecc_gpu},
                "GpuLost": {"host": faulty.name, "gpu": lost_gpu},
                "VllmQueueBacklog": {"host": faulty.name, "vllm_instance": lab.INSTANCE},
                "VllmHung": {"host": faulty.name, "vllm_instance": lab.INSTANCE},
                "VllmCrashLooping": {"host": restarting.name, "vllm_instance": lab.INSTANCE}}
    seen = {}
    try:
        started = time.monotonic()
        faulty.run("inferops-lab", "ecc", ecc_gpu, "2")
        faulty.run("inferops-lab", "lose", lost_gpu)
        faulty.run("inferops-lab", "vllm-fault", str(lab.PORT), "queue=60", "hang=true")
        threading.Thread(target=lab.hung_request, args=(faulty,), daemon=True).start()
        deaths = threading.Thread(target=die_three_times, args=(prometheus, restarting), daemon=True)
        deaths.start()
        while time.monotonic() - started < 900:
            for alert in prometheus.alerts():
                name = alert["labels"]["alertname"]
                for state in ("pending", "firing"):
                    wanted = expected.get(name, {})
                    if name in expected and alert["state"] == state and (name, state) not in seen and \
                            all(alert["labels"].get(k) == v for k, v in wanted.items()):
                        seen[(name, state)] = round(time.monotonic() - started, 1)
            if all((name, "firing") in seen for name in expected):
                break
            time.sleep(1)
    finally:
        for host in hosts:
            lab.restore(host)
            host.run("docker", "rm", "-f", "vllm-" + lab.INSTANCE, check=False)
    print("machine: %s, %d cores; %s" % (platform.node(), os.cpu_count(), time.strftime("%Y-%m-%d")))
    print("| Fault | Alert | pending after (s) | firing after (s) |")
    print("| --- | --- | --- | --- |")
    faults = {"GpuUncorrectedEccErrors": "2 uncorrected ECC errors", "GpuLost": "a lost GPU",
              "VllmQueueBacklog": "60 requests waiting", "VllmHung": "hung engine, 1 request in flight",
              "VllmCrashLooping": "engine dies 3 times"}
    for name in expected:
        print("| %s | %s | %s | %s |" % (faults[name], name, seen.get((name, "pending"), "-"),
                                         seen.get((name, "firing"), "never")))
    print(json.dumps({"%s/%s" % key: value for key, value in seen.items()}))


def die_three_times(prometheus, host):
    for _death in range(3):
        before = lab.wait(lambda: lab.start_time(prometheus, host), 60)
        if not before:
            raise SystemExit("Prometheus has no start time for %s's instance" % host.name)
        host.run("inferops-lab", "vllm-fault", str(lab.PORT), "engine_dead=true")
        lab.wait(lambda: (lab.start_time(prometheus, host) or before) != before, 90)


if __name__ == "__main__":
    main()
