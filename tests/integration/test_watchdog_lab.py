"""The watchdog on the lab, as the Molecule scenario `gateway` deployed it (the vllm role with
vllm_watchdog_enabled on both lab hosts, HAProxy on inferops-lab-1 asking each host's watchdog through its agent
check): a hung engine, which /health still calls healthy, leaves the rotation within 15 s, is diagnosed, restarted
and back; an instance that crashes at every start is given up after the configured restarts, and the journal, the
state file and the metrics say why. Run by that scenario's verify step (`-m gateway`).

benchmarks/watchdog_bench.py repeats the hang measurement (detection and recovery times over several runs)."""
import json
import os
import threading
import time

import pytest

from test_gateway_lab import CONTAINER, KEYS, PORT, completion, endpoint

pytestmark = pytest.mark.gateway

STATE_FILE = "/var/lib/inferops/watchdog/state.json"
WATCHDOG_CONFIG = "/etc/vllm/watchdog.json"
LAB_KEY = "lab-demo-key-not-a-secret"  # inventories/lab/group_vars/vllm_hosts.yml: the instances' key
INSTANCE = "qwen-small"
# The vllm role's defaults, which the scenario keeps.
MAX_RESTARTS = 3
SHOW_STAT = r"""
import json, socket
sock = socket.socket(socket.AF_UNIX)
sock.connect("/run/haproxy/admin.sock")
sock.sendall(b"show stat\n")
data = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    data += chunk
lines = data.decode().splitlines()
head = lines[0].lstrip("# ").split(",")
rows = [dict(zip(head, line.split(","))) for line in lines[1:] if line]
print(json.dumps({r["svname"]: r["status"] for r in rows if r["pxname"] == "vllm"}))
"""


@pytest.fixture(scope="module")
def gateway(lab_hosts):
    return endpoint(lab_hosts[0])


def server_status(gateway_host, victim):
    return gateway_host.python(SHOW_STAT)["%s-%s" % (victim.name, INSTANCE)]


def watchdog_state(host):
    return json.loads(host.read(STATE_FILE))["instances"][INSTANCE]


class Client(object):
    """Completions through the gateway, one after the other, for as long as a measurement runs."""

    def __init__(self, gateway):
        self.results = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(gateway,), daemon=True)

    def _run(self, gateway):
        while not self.stop.is_set():
            self.results.append(completion(gateway, KEYS[0]))
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


def measure_hang(gateway, gateway_host, victim):
    """Hangs the victim's engine; returns (seconds until HAProxy had it out, seconds until it was back in)."""
    assert server_status(gateway_host, victim) == "UP"
    restarts_before = watchdog_state(victim)["restarts_total"]
    started_before = victim.container_state(CONTAINER)["StartedAt"]
    victim.set_fault(PORT, hang=True)
    hung_at = time.monotonic()
    out_at = back_at = None
    deadline = hung_at + 240
    while back_at is None:
        assert time.monotonic() < deadline, "the hung instance did not come back within 240 s: %s" % (
            watchdog_state(victim),)
        status = server_status(gateway_host, victim)
        now = time.monotonic()
        if out_at is None and status.startswith("DOWN"):
            out_at = now
        elif out_at is not None and status == "UP":
            back_at = now
        time.sleep(0.3)
    state = watchdog_state(victim)
    assert state["restarts_total"] == restarts_before + 1 and state["state"] == "serving", state
    assert victim.container_state(CONTAINER)["StartedAt"] != started_before, "the container was not restarted"
    return out_at - hung_at, back_at - hung_at


def test_a_hung_engine_is_out_within_15_s_restarted_and_back(gateway, lab_hosts):
    gateway_host, victim = lab_hosts[0], lab_hosts[1]
    with Client(gateway) as client:
        out_after, back_after = measure_hang(gateway, gateway_host, victim)
    print("hang: out of rotation after %.1f s, back after %.1f s; %d requests, %d not 200" % (
        out_after, back_after, len(client.results), len([s for s in client.results if s != 200])))
    assert out_after <= 15
    # The emulator loads in seconds: back within its load time + 30 s is back within 60 s of being out.
    assert back_after - out_after <= 60
    journal = victim.run("journalctl", "-u", "inferops-vllm-watchdog", "--no-pager", "-o", "cat").stdout
    assert "%s: out of rotation: unhealthy (inference_hang" % INSTANCE in journal
    assert "%s: restarting (" % INSTANCE in journal and "serves again" in journal
    bundle = watchdog_state(victim)["bundle"]
    assert victim.run("test", "-s", os.path.join(bundle, "logs-%s.txt" % INSTANCE)).returncode == 0
    said = journal + victim.read(STATE_FILE) + victim.read(WATCHDOG_CONFIG)
    assert LAB_KEY not in said


def test_a_crash_at_every_start_is_given_up_after_the_limit_and_the_journal_and_state_say_why(gateway, lab_hosts):
    victim = lab_hosts[0]
    # The engine dies, and every start after it fails with CUDA out of memory: Docker's restart policy alone would
    # restart it for ever.
    victim.set_fault(PORT, oom="startup")
    victim.run("inferops-lab", "vllm-fault", str(PORT), "engine_dead=true")
    try:
        deadline = time.monotonic() + 240
        while watchdog_state(victim)["state"] != "gave_up":
            assert time.monotonic() < deadline, "the watchdog did not give up: %s" % (watchdog_state(victim),)
            time.sleep(1)
        state = watchdog_state(victim)
        container = victim.container_state(CONTAINER)
        assert container["Status"] == "exited" and not container["Restarting"], container
        count = container.get("RestartCount")
        time.sleep(8)
        assert victim.container_state(CONTAINER).get("RestartCount") == count, "the storm went on"
        assert "(limit %d)" % MAX_RESTARTS in state["reason"] and "stopped" in state["reason"], state
        assert not state["in_rotation"]
        journal = victim.run("journalctl", "-u", "inferops-vllm-watchdog", "--no-pager", "-p", "crit",
                             "-o", "cat").stdout
        assert "%s: gave up, left out of rotation" % INSTANCE in journal, journal
        assert server_status(lab_hosts[0], victim).startswith(("DOWN", "MAINT"))
        # Meanwhile the other host serves every request.
        assert [completion(gateway, KEYS[0]) for _request in range(5)] == [200] * 5
    finally:
        victim.set_fault(PORT)
    # A person fixed it and starts it: once it serves, the watchdog lets it back and may restart it again.
    victim.run("docker", "start", CONTAINER)
    deadline = time.monotonic() + 180
    while not watchdog_state(victim)["in_rotation"]:
        assert time.monotonic() < deadline, "not back after the fix: %s" % (watchdog_state(victim),)
        time.sleep(1)
    journal = victim.run("journalctl", "-u", "inferops-vllm-watchdog", "--no-pager", "-o", "cat").stdout
    assert "restarts allowed again" in journal
