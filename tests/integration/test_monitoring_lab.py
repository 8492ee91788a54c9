"""The monitoring role on the lab: Prometheus on the monitoring host scrapes every instance, node exporter and GPU
collector (all up), and faults injected into the fleet fire the matching alerts in Prometheus itself, with the
role's default rules: a GPU with uncorrected ECC errors, a lost GPU, the emulator's queue build-up, a hung engine,
and an engine that dies three times. The times from injection to firing are written to
build/logs/monitoring-lab-alerts.json (benchmarks/README.md reports them)."""

import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from ansible_run import INVENTORY, ROOT, ansible_env
from grafana_queries import dashboard, panel_queries

KEY = "lab-demo-key-not-a-secret"  # inventories/lab/group_vars/vllm_hosts.yml
PORT = 8011
# A new name each run: the instance's series are new, so no restart or token of an earlier run counts.
INSTANCE = "mon%s" % uuid.uuid4().hex[:6]
TIMINGS = os.path.join(ROOT, "build", "logs", "monitoring-lab-alerts.json")
WATCHDOG_UNIT = "inferops-vllm-watchdog.service"
# The vllm role's vllm_watchdog_textfile_dir, read by the node exporter.
WATCHDOG_METRICS = "/var/lib/prometheus/node-exporter/inferops_vllm_watchdog.prom"


def playbook(path, extra, timeout=900):
    cmd = ["ansible-playbook", path, "-i", INVENTORY, "-e", json.dumps(extra)]
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    proc.elapsed = time.monotonic() - started
    return proc


class Prometheus:
    def __init__(self, host):
        self.base = "http://%s:9090" % host.ip

    def api(self, path, **params):
        url = self.base + "/api/v1/" + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def targets(self):
        return self.api("targets")["activeTargets"]

    def alerts(self):
        return self.api("alerts")["alerts"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def label_values(self, label, selector):
        return self.api("label/%s/values" % label, **{"match[]": selector})


@pytest.fixture(scope="module")
def monitored(lab_hosts):
    """Every lab host monitored, one emulator instance each (port 8011), Prometheus on inferops-lab-1."""
    for host in lab_hosts:
        restore(host)
    extra = {
        "monitoring_prometheus_scrape_interval": "5s", "monitoring_prometheus_evaluation_interval": "5s",
        "monitoring_gpu_metrics_interval": "5s", "monitoring_alertmanager_group_wait": "5s",
        "monitoring_grafana_provisioning": True,
        # The instances answer only the monitoring host (inferops-lab-1) and this machine, which sends the tests'
        # traffic: not the other lab host.
        "vllm_firewall": True, "vllm_firewall_sources": [this_machine(lab_hosts[0])],
        "vllm_instances": [{"name": INSTANCE, "model": "facebook/opt-125m", "model_params": "125M", "port": PORT,
                            "gpu_memory_utilization": 0.3, "max_model_len": 2048}],
    }
    proc = playbook(os.path.join(ROOT, "tests", "integration", "playbooks", "monitoring_lab.yml"), extra)
    assert proc.returncode == 0, proc.stdout[-5000:]
    print("monitoring and one instance per host deployed in %.1f s" % proc.elapsed)
    yield {"prometheus": Prometheus(lab_hosts[0]), "deploy": proc}
    for host in lab_hosts:
        restore(host)
        host.run("docker", "rm", "-f", "vllm-" + INSTANCE, check=False)
        # Left by a failed test before the one that turns it off: later tests must find no firewall.
        host.sh("systemctl disable --now inferops-vllm-firewall.service; rm -f /etc/systemd/system/inferops-vllm-"
                "firewall.service; nft delete table inet inferops_vllm", check=False)


def this_machine(host):
    """This machine's address as the lab hosts see it: their default gateway, the address of Docker's default bridge
    (`docker network inspect bridge` leaves the gateway out when docker0 existed before dockerd started)."""
    route = host.sh("ip route show default").stdout.split()
    assert route[:2] == ["default", "via"], "no default route on %s: %s" % (host.name, route)
    return route[2]


def restore(host):
    """No fault left on the instance's port, every GPU found and without ECC errors."""
    host.run("inferops-lab", "vllm-fault", str(PORT), "--clear")
    for gpu in range(8):
        host.run("inferops-lab", "find", str(gpu))
        host.run("inferops-lab", "ecc", str(gpu), "0")


def wait(check, timeout, step=2.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(step)


def test_every_target_is_up(monitored, lab_hosts):
    prometheus = monitored["prometheus"]

    def all_up():
        targets = prometheus.targets()
        return targets if len(targets) == 6 and all(t["health"] == "up" for t in targets) else None

    targets = wait(all_up, 90)
    assert targets, [(t["labels"], t["health"], t.get("lastError")) for t in prometheus.targets()]
    jobs = sorted((t["labels"]["job"], t["labels"]["host"]) for t in targets)
    names = sorted(h.name for h in lab_hosts)
    assert jobs == sorted([("alertmanager", names[0]), ("prometheus", names[0])] +
                          [("node", n) for n in names] + [("vllm", n) for n in names])
    # Nothing scraped by a configuration other than the role's: Prometheus started by the package with Debian's
    # default one scrapes localhost:9100 without a host label, and those series outlive the restart by 5 minutes.
    assert prometheus.query('count by (job, instance) ({__name__=~"up|node_uname_info|inferops_gpu_up", host=""})') == []
    # The GPU collector's metrics arrive through each node exporter: 8 fake H100s per host.

    def gpus_per_host():
        found = prometheus.query('inferops_gpu_up == 1')
        counts = {}
        for series in found:
            host = series["metric"].get("host")
            counts[host] = counts.get(host, 0) + 1
        return counts if counts == {n: 8 for n in names} else None

    assert wait(gpus_per_host, 60), prometheus.query('inferops_gpu_up')
    rules = prometheus.api("rules")["groups"]
    assert sorted(g["name"] for g in rules) == [
        "inferops_gateway", "inferops_gpu", "inferops_host", "inferops_slo", "inferops_vllm"]
    assert [r["name"] for g in rules for r in g["rules"] if r["health"] != "ok"] == []


def post(host, path, body, key=KEY):
    request = urllib.request.Request(
        "http://%s:%d%s" % (host.ip, PORT, path), method="POST", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer %s" % key})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def send_traffic(host):
    """Completions, a stream and a request for a model the server does not serve (a 4xx on /v1)."""
    for _request in range(5):
        assert post(host, "/v1/completions", {"model": "facebook/opt-125m", "prompt": "Hello", "max_tokens": 8})[0] == 200
    status, body = post(host, "/v1/completions",
                        {"model": "facebook/opt-125m", "prompt": "Hello", "max_tokens": 8, "stream": True})
    assert status == 200 and body.rstrip().endswith(b"data: [DONE]"), body[-200:]
    assert 400 <= post(host, "/v1/completions", {"model": "no-such-model", "prompt": "Hello", "max_tokens": 8})[0] < 500


def test_every_dashboard_query_returns_data_after_traffic(monitored, lab_hosts):
    """What issue 15 asks in place of a Grafana: each panel's query, with the dashboard's variables set the way
    Grafana sets them (All for the fleet, the first host for the GPU view), returns series from the lab's
    Prometheus once the fleet has served traffic."""
    prometheus = monitored["prometheus"]
    monitoring_host = lab_hosts[0]
    for host in lab_hosts:
        send_traffic(host)
    time.sleep(12)  # two scrapes at 5 s, so that every rate has two samples after the traffic
    directory = "/var/lib/grafana/dashboards/inferops"
    empty, checked = [], 0
    # The lab's fleet has no gateway: the gateways' dashboard is proved in tests/gateway, against the real HAProxy.
    for name in ("inferops-vllm-fleet.json", "inferops-gpu-host.json"):
        board = dashboard(name, monitoring_host.read("%s/%s" % (directory, name)))
        for where, expr in panel_queries(board, prometheus.label_values):
            checked += 1
            if not prometheus.query(expr):
                empty.append(where)
    assert checked > 30 and empty == []


def free_gpus(host):
    assignments = json.loads(host.read("/etc/vllm/gpu-assignments.json"))
    taken = {str(g) for gpus in assignments.values() for g in gpus} | {"0"}  # GPU 0: the lab's foreign job
    return [str(g) for g in range(8) if str(g) not in taken]


def hung_request(host):
    request = urllib.request.Request(
        "http://%s:%d/v1/completions" % (host.ip, PORT), method="POST",
        data=json.dumps({"model": "facebook/opt-125m", "prompt": "hi", "max_tokens": 4}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer %s" % KEY})
    try:
        urllib.request.urlopen(request, timeout=600).read()
    except (OSError, urllib.error.URLError):
        pass


def describe(host):
    """The host's containers and the instance's last log lines, for a failure message."""
    containers = host.run("docker", "ps", "-a", check=False).stdout
    logs = host.run("docker", "logs", "--tail", "30", "vllm-" + INSTANCE, check=False).stderr[-3000:]
    return "%s: %s\n%s" % (host.name, containers, logs)


def start_time(prometheus, host):
    found = prometheus.query('process_start_time_seconds{job="vllm",host="%s",vllm_instance="%s"}'
                             % (host.name, INSTANCE))
    return found[0]["value"][1] if found else None


def test_injected_faults_fire_their_alerts(monitored, lab_hosts):
    prometheus = monitored["prometheus"]
    # The engine deaths go to the host whose GPUs stay healthy: with a lost GPU, the container runtime's hook
    # fails to enumerate the GPUs and no GPU container starts on that host (as with NVIDIA's hook), so a dead
    # instance there would not come back.
    restarting, faulty = lab_hosts[0], lab_hosts[1]
    ecc_gpu, lost_gpu = free_gpus(faulty)[:2]
    expected = {
        "GpuUncorrectedEccErrors": {"host": faulty.name, "gpu": ecc_gpu},
        "GpuLost": {"host": faulty.name, "gpu": lost_gpu},
        "VllmQueueBacklog": {"host": faulty.name, "vllm_instance": INSTANCE},
        "VllmHung": {"host": faulty.name, "vllm_instance": INSTANCE},
        "VllmCrashLooping": {"host": restarting.name, "vllm_instance": INSTANCE},
    }
    # VllmHung holds for 5 minutes before it fires (the promtool tests prove that edge): here it must be pending,
    # which shows the rule sees the hang, without adding those 5 minutes to the lab stage.
    pending_is_enough = {"VllmHung"}
    seen = {}
    seen_lock = threading.Lock()
    stop = threading.Event()

    def watch():
        # Polled from the injection on, so each alert's time is its own, not the end of the restarts below.
        while not stop.is_set():
            try:
                alerts = prometheus.alerts()
            except OSError:
                alerts = []
            for alert in alerts:
                name = alert["labels"]["alertname"]
                wanted = expected.get(name)
                if wanted and name not in seen and all(alert["labels"].get(k) == v for k, v in wanted.items()) \
                        and (alert["state"] == "firing" or name in pending_is_enough):
                    with seen_lock:
                        seen[name] = (alert["state"], round(time.monotonic() - started, 1))
            stop.wait(1.0)

    def all_seen():
        with seen_lock:
            return set(seen) == set(expected)

    def active(alerts):
        return [a["labels"] for a in alerts if a["labels"]["alertname"] in expected and
                all(a["labels"].get(k) == v for k, v in expected[a["labels"]["alertname"]].items())]

    assert active(prometheus.alerts()) == [], "alerts active before any fault was injected"
    started = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    try:
        faulty.run("inferops-lab", "ecc", ecc_gpu, "2")
        faulty.run("inferops-lab", "lose", lost_gpu)
        faulty.run("inferops-lab", "vllm-fault", str(PORT), "queue=60", "hang=true")
        watcher.start()
        threading.Thread(target=hung_request, args=(faulty,), daemon=True).start()
        # The engine dies and the container restarts (unless-stopped) with a new process: three times.
        for _death in range(3):
            before = wait(lambda: start_time(prometheus, restarting), 60)
            assert before, "Prometheus has no start time for %s's instance" % restarting.name
            restarting.run("inferops-lab", "vllm-fault", str(PORT), "engine_dead=true")
            changed = wait(lambda: (start_time(prometheus, restarting) or before) != before, 90)
            assert changed, "Prometheus never saw %s's instance restart" % restarting.name

        wait(all_seen, 300)
        stop.set()
        watcher.join()
        assert sorted(seen) == sorted(expected), "\n".join(
            ["seen: %s" % seen, "alerts: %s" % [(a["labels"], a["state"]) for a in prometheus.alerts()],
             "up: %s" % [(r["metric"], r["value"][1]) for r in prometheus.query("up")]] +
            [describe(h) for h in (restarting, faulty)])
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        os.makedirs(os.path.dirname(TIMINGS), exist_ok=True)
        with open(TIMINGS, "w") as handle:
            json.dump({name: {"state": state, "seconds_after_injection": at} for name, (state, at) in seen.items()},
                      handle, indent=2)
        for host in (restarting, faulty):
            restore(host)


def metrics_from(client, host):
    """curl's exit code and HTTP status for `host`'s instance /metrics, asked from the lab host `client` (7: the
    connection was refused or reset; 28: no answer in 5 s)."""
    result = client.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                        "http://%s:%d/metrics" % (host.ip, PORT), check=False)
    return result.returncode, result.stdout


def resets(host):
    """How many new connections the firewall on `host` has reset so far (its reject rule's counter)."""
    chain = host.run("nft", "list", "chain", "inet", "inferops_vllm", "allowed_or_reset").stdout
    return int(re.search(r"ct state new counter packets (\d+) bytes \d+ reject", chain).group(1))


def test_the_instances_answer_the_monitoring_host_and_the_allowed_sources_only(monitored, lab_hosts):
    """Issue 15: an instance's /metrics (open in vLLM whatever its key) reaches the monitoring host, not the
    other hosts. inferops-lab-2 is neither a gateway nor the monitoring host: it is reset by the published port, by
    the container's own address through a route to the bridge, and so is another container on the same host."""
    monitoring_host, other = lab_hosts[0], lab_hosts[1]
    assert metrics_from(monitoring_host, other) == (0, "200")
    # The instance serves (it answers its own host just before), and the other host gets a reset: curl's 7, not a
    # timeout, and counted by the firewall's reject rule.
    assert metrics_from(monitoring_host, monitoring_host) == (0, "200")
    before = resets(monitoring_host)
    assert metrics_from(other, monitoring_host) == (7, "000")
    assert resets(monitoring_host) == before + 1
    # A neighbour that routes to the container's own address, past Docker's published port.
    container = "vllm-" + INSTANCE
    address = monitoring_host.run("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                  container).stdout.strip()
    other.run("ip", "route", "replace", address + "/32", "via", monitoring_host.ip)
    try:
        direct = other.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                           "http://%s:%d/metrics" % (address, PORT), check=False)
    finally:
        other.run("ip", "route", "del", address + "/32", check=False)
    assert (direct.returncode, direct.stdout) == (7, "000")
    assert resets(monitoring_host) == before + 2
    # Another container on the monitoring host, on the same bridge as the instance.
    image = monitoring_host.run("docker", "inspect", "-f", "{{.Config.Image}}", container).stdout.strip()
    probe = monitoring_host.run(
        "docker", "run", "--rm", "--entrypoint", "python3", image, "-c",
        "import socket\ntry:\n socket.create_connection(('%s', %d), 5)\n print('connected')\n"
        "except OSError as error:\n print(type(error).__name__)" % (address, PORT), check=False)
    assert probe.stdout.strip() == "ConnectionRefusedError", probe.stdout + probe.stderr
    assert resets(monitoring_host) == before + 3
    # A host reaches its own instance, by its address or the loopback.
    assert metrics_from(other, other) == (0, "200")
    assert other.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                     "http://127.0.0.1:%d/metrics" % PORT).stdout == "200"
    rules = other.run("nft", "list", "table", "inet", "inferops_vllm").stdout
    assert re.search(r"elements = \{ %d \}" % PORT, rules) and monitoring_host.ip in rules and this_machine(monitoring_host) in rules
    # Prometheus on the monitoring host still scrapes both instances.
    prometheus = monitored["prometheus"]
    assert wait(lambda: len(prometheus.query('up{job="vllm"} == 1')) == 2, 30), prometheus.query('up{job="vllm"}')


def test_a_table_removed_behind_the_roles_back_is_loaded_again_and_turning_it_off_removes_everything(
        monitored, lab_hosts):
    """Also the watchdog: on with the firewall, then off with it, which stops it and removes its metrics file."""
    monitoring_host, other = lab_hosts[0], lab_hosts[1]
    # What a host firewall's `flush ruleset` does: the unit still reads as started.
    monitoring_host.run("nft", "delete", "table", "inet", "inferops_vllm")
    assert metrics_from(other, monitoring_host) == (0, "200")
    instances = [{"name": INSTANCE, "model": "facebook/opt-125m", "model_params": "125M", "port": PORT,
                  "gpu_memory_utilization": 0.3, "max_model_len": 2048}]
    again = playbook(os.path.join(ROOT, "tests", "integration", "playbooks", "vllm_lab.yml"),
                     {"vllm_firewall": True, "vllm_firewall_sources": [this_machine(monitoring_host)],
                      "vllm_watchdog_enabled": True, "vllm_instances": instances})
    assert again.returncode == 0, again.stdout[-5000:]
    assert metrics_from(other, monitoring_host) == (7, "000")
    for host in lab_hosts:
        assert host.run("systemctl", "is-active", WATCHDOG_UNIT, check=False).stdout.strip() == "active"
        assert wait(lambda h=host: h.run("test", "-s", WATCHDOG_METRICS, check=False).returncode == 0, 30), host.name

    off = playbook(os.path.join(ROOT, "tests", "integration", "playbooks", "vllm_lab.yml"),
                   {"vllm_firewall": False, "vllm_watchdog_enabled": False, "vllm_instances": instances})
    assert off.returncode == 0, off.stdout[-5000:]
    assert metrics_from(other, monitoring_host) == (0, "200")
    for host in lab_hosts:
        assert host.run("nft", "list", "table", "inet", "inferops_vllm", check=False).returncode != 0
        for path in ("/etc/systemd/system/inferops-vllm-firewall.service", "/etc/vllm/vllm-firewall.nft"):
            assert host.run("test", "-e", path, check=False).returncode == 1, path
        enabled = host.run("systemctl", "is-enabled", "inferops-vllm-firewall.service", check=False)
        assert enabled.returncode != 0 and "enabled" != enabled.stdout.strip()
        for unit in ("inferops-vllm-firewall.service", WATCHDOG_UNIT):
            assert host.run("systemctl", "is-active", unit, check=False).stdout.strip() != "active", unit
        assert host.run("test", "-e", WATCHDOG_METRICS, check=False).returncode == 1
