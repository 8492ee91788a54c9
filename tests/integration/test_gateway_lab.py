"""The gateway on the lab, as the Molecule scenario `gateway` deployed it (extensions/molecule/gateway): HAProxy on
inferops-lab-1:7654 in front of one emulated instance on each lab host. Run by that scenario's verify step
(`-m gateway`), not by the lab stage: a reload under a stream in flight drops nothing, and an engine death costs
only the requests of the seconds before the health checks see it."""
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from ansible_run import ROOT, ansible_env

pytestmark = pytest.mark.gateway

CA = os.path.join(ROOT, "build", "molecule-gateway", "ca.crt")
KEYS = ["lab-gateway-client-key-1", "lab-gateway-client-key-2"]  # extensions/molecule/gateway/inventory
NEW_KEY = "lab-gateway-client-key-3"
PORT = 8001
MODEL = "qwen-small"
CONTAINER = "vllm-qwen-small"


def endpoint(gateway_host):
    """The gateway on that lab host, as a client that trusts the scenario's CA reaches it."""
    return {"url": "https://%s:7654" % gateway_host.ip, "context": ssl.create_default_context(cafile=CA)}


@pytest.fixture(scope="module")
def gateway(lab_hosts):
    return endpoint(lab_hosts[0])


def call(gateway, path, key=None, body=None, timeout=30):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(gateway["url"] + path, data=data, headers=headers,
                                     method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=gateway["context"]) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, urllib.error.URLError) as error:
        return None, str(error).encode()


def completion(gateway, key):
    return call(gateway, "/v1/completions", key, {"model": MODEL, "prompt": "hi", "max_tokens": 2})[0]


def served(host):
    return host.logs(CONTAINER).count("POST /v1/completions")


def test_both_hosts_serve_through_the_gateway_and_every_path_wants_a_key(gateway, lab_hosts):
    assert call(gateway, "/health")[0] == 200
    for path, body in (("/tokenize", {"prompt": "hi"}), ("/metrics", None), ("/v1/models", None),
                       ("/invocations", {"prompt": "hi"})):
        assert call(gateway, path, body=body) == (401, b'{"error":"Unauthorized"}'), path
    before = [served(host) for host in lab_hosts]
    assert [completion(gateway, KEYS[turn % 2]) for turn in range(20)] == [200] * 20
    after = [served(host) for host in lab_hosts]
    assert all(a > b for a, b in zip(after, before)), (before, after)


def run_gateway_role(extra):
    inventory = os.environ["GATEWAY_LAB_INVENTORY"]
    cmd = ["ansible-playbook", os.path.join(ROOT, "tests", "integration", "playbooks", "gateway.yml"), "-i",
           inventory, "-e", json.dumps(extra)]
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)


def test_a_key_added_by_the_role_reloads_the_gateway_under_a_stream_that_goes_on(gateway):
    events = []

    def stream():
        request = urllib.request.Request(
            gateway["url"] + "/v1/completions", method="POST",
            data=json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 6000, "stream": True}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer " + KEYS[0]})
        with urllib.request.urlopen(request, timeout=120, context=gateway["context"]) as response:
            for line in response:
                if line.startswith(b"data: "):
                    events.append(line.strip())

    assert completion(gateway, NEW_KEY) == 401
    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    time.sleep(2)
    assert reader.is_alive() and events, "the stream did not start"
    result = run_gateway_role({"gateway_api_keys": KEYS + [NEW_KEY]})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "RUNNING HANDLER [inferops.vllm.gateway : Reload the gateway]" in result.stdout
    assert NEW_KEY not in result.stdout + result.stderr
    assert reader.is_alive(), "the stream ended before the reload was over: make it longer"
    assert completion(gateway, NEW_KEY) == 200 and completion(gateway, KEYS[0]) == 200
    reader.join(120)
    assert events[-1] == b"data: [DONE]"
    tokens = [json.loads(event[6:]) for event in events[:-1]]
    assert sum(1 for chunk in tokens if chunk["choices"] and chunk["choices"][0]["text"]) == 6000


def test_an_engine_death_costs_only_the_requests_before_the_checks_see_it(gateway, lab_hosts):
    victim = lab_hosts[1]
    results = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            results.append((time.monotonic(), completion(gateway, KEYS[1])))
            time.sleep(0.1)

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    try:
        time.sleep(1)
        injected = time.monotonic()
        victim.set_fault(PORT, engine_dead=True)
        time.sleep(10)
    finally:
        stop.set()
        worker.join(30)
        victim.set_fault(PORT)
    failed = [(round(at - injected, 1), status) for at, status in results if status != 200]
    # Checks every second, out after two failures; a request the dying engine had already taken fails with it.
    assert all(at < 4 for at, _status in failed), failed
    assert len([1 for at, status in results if at > injected + 4 and status == 200]) > 30
    # Docker restarts the container (its restart policy); the instance passes its checks and comes back.
    deadline = time.monotonic() + 120
    before = served(victim)
    while served(victim) == before:
        assert time.monotonic() < deadline, "lab-2's instance never came back into rotation"
        completion(gateway, KEYS[0])
        time.sleep(0.5)


def test_a_rolling_restart_through_the_runbook_fails_no_request_and_cuts_no_stream(gateway, lab_hosts):
    """restart.yml restarts every instance, one host at a time; the vllm role drains each at the gateway first
    (waiting for its streams), and puts it back once its health gate passes."""
    completions, streams = [], []
    stop = threading.Event()

    def send_completions():
        while not stop.is_set():
            completions.append(completion(gateway, KEYS[0]))
            time.sleep(0.1)

    def send_streams():
        while not stop.is_set():
            request = urllib.request.Request(
                gateway["url"] + "/v1/completions", method="POST",
                data=json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 300, "stream": True}).encode(),
                headers={"Content-Type": "application/json", "Authorization": "Bearer " + KEYS[1]})
            try:
                with urllib.request.urlopen(request, timeout=60, context=gateway["context"]) as response:
                    events = [line.strip() for line in response if line.startswith(b"data: ")]
                streams.append(bool(events) and events[-1] == b"data: [DONE]" and len(events) > 300)
            except (OSError, urllib.error.URLError) as error:
                streams.append(str(error))

    started = {host.name: host.container_state(CONTAINER)["StartedAt"] for host in lab_hosts}
    workers = [threading.Thread(target=send_completions, daemon=True), threading.Thread(target=send_streams, daemon=True)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(2)
        inventory = os.environ["GATEWAY_LAB_INVENTORY"]
        cmd = ["ansible-playbook", os.path.join(ROOT, "playbooks", "runbooks", "restart.yml"), "-i", inventory]
        env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
        time.sleep(2)
    finally:
        stop.set()
        for worker in workers:
            worker.join(90)
    assert result.returncode == 0, result.stdout[-4000:]
    assert result.stdout.count("TASK [inferops.vllm.gateway : At the gateways, drain qwen-small]") == 2
    assert result.stdout.count("TASK [inferops.vllm.gateway : At the gateways, ready qwen-small]") == 2
    for host in lab_hosts:
        assert host.container_state(CONTAINER)["StartedAt"] != started[host.name], "%s was not restarted" % host.name
    print("rolling restart through the gateway: %d completions, %d streams" % (len(completions), len(streams)))
    assert len(completions) > 50 and len(streams) > 5
    assert [status for status in completions if status != 200] == []
    assert [outcome for outcome in streams if outcome is not True] == []
