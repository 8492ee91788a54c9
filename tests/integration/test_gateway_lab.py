"""The gateway on the lab, as the Molecule scenario `gateway` deployed it (extensions/molecule/gateway): HAProxy on
inferops-lab-1:7654 in front of one emulated instance on each lab host. Run by that scenario's verify step
(`-m gateway`), not by the lab stage: a reload under a stream in flight drops nothing, and an engine death costs
only the requests of the seconds before the health checks see it."""
import hashlib
import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from ansible_run import ROOT, ansible_env
from gateway_traffic import Traffic

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


def stream(gateway, key, max_tokens=300):
    """One stream through the gateway: True when it ends with [DONE] after all its tokens, else what went wrong."""
    request = urllib.request.Request(
        gateway["url"] + "/v1/completions", method="POST",
        data=json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": max_tokens, "stream": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(request, timeout=60, context=gateway["context"]) as response:
            events = [line.strip() for line in response if line.startswith(b"data: ")]
    except (OSError, urllib.error.URLError) as error:
        return str(error)
    if not events or events[-1] != b"data: [DONE]":
        return "cut after %d events" % len(events)
    tokens = sum(1 for chunk in map(json.loads, (event[6:] for event in events[:-1]))
                 if chunk["choices"] and chunk["choices"][0]["text"])
    return True if tokens == max_tokens else "%d tokens of %d" % (tokens, max_tokens)


def traffic(gateway):
    """Completions with the first client key and 300-token streams with the second, through the gateway."""
    return Traffic(lambda: completion(gateway, KEYS[0]), lambda: stream(gateway, KEYS[1]), 300)


def test_both_hosts_serve_through_the_gateway_and_every_path_wants_a_key(gateway, lab_hosts):
    assert call(gateway, "/health")[0] == 200
    for path, body in (("/tokenize", {"prompt": "hi"}), ("/metrics", None), ("/v1/models", None),
                       ("/invocations", {"prompt": "hi"})):
        assert call(gateway, path, body=body) == (401, b'{"error":"Unauthorized"}'), path
    before = [served(host) for host in lab_hosts]
    assert [completion(gateway, KEYS[turn % 2]) for turn in range(20)] == [200] * 20
    after = [served(host) for host in lab_hosts]
    assert all(a > b for a, b in zip(after, before)), (before, after)


def test_the_instances_answer_the_gateway_and_not_the_other_host(lab_hosts):
    """The scenario's instances sit behind the vllm role's firewall (docs/firewall.md): the gateway's host reaches
    the other host's instance, which served its share above; inferops-lab-2, neither a gateway nor the monitoring
    host, gets a reset from inferops-lab-1's instance (curl's 7) instead of its /metrics."""
    gateway_host, other = lab_hosts[0], lab_hosts[1]

    def metrics(client, server):
        result = client.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                            "http://%s:8001/metrics" % server.ip, check=False)
        return result.returncode, result.stdout

    assert metrics(gateway_host, other) == (0, "200")
    # inferops-lab-1's instance serves (it answers its own host just before); the other host is reset.
    assert metrics(gateway_host, gateway_host) == (0, "200")
    assert metrics(other, gateway_host) == (7, "000")


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
    started = {host.name: host.container_state(CONTAINER)["StartedAt"] for host in lab_hosts}
    with traffic(gateway) as client:
        inventory = os.environ["GATEWAY_LAB_INVENTORY"]
        cmd = ["ansible-playbook", os.path.join(ROOT, "playbooks", "runbooks", "restart.yml"), "-i", inventory]
        env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-4000:]
    assert result.stdout.count("TASK [inferops.vllm.gateway : At the gateways, drain qwen-small]") == 2
    assert result.stdout.count("TASK [inferops.vllm.gateway : At the gateways, ready qwen-small]") == 2
    for host in lab_hosts:
        assert host.container_state(CONTAINER)["StartedAt"] != started[host.name], "%s was not restarted" % host.name
    failed, cut = client.report("rolling restart")
    assert len(client.completions) > 50 and len(client.streams) > 5
    assert failed == [] and cut == []


# The certificate rotations come last: the test before them runs the gateway role, which would put the inventory's
# certificate back over a rotated one (the third rotation writes it back, so later role runs keep it).
LAB_PKI = os.path.join(ROOT, "build", "molecule-gateway")  # extensions/molecule/gateway/prepare.yml


def rotate_gateway_cert(gateway_host, **extra):
    """rotate_certs.yml on the gateway only, a new certificate issued by the scenario's CA unless extra says."""
    args = dict(rotate=["gateway"], ca_cert_src=os.path.join(LAB_PKI, "ca.crt"),
                ca_key_src=os.path.join(LAB_PKI, "ca.key"),
                required_names=[gateway_host.name, gateway_host.ip, "127.0.0.1"])
    args.update(extra)
    cmd = ["ansible-playbook", os.path.join(ROOT, "playbooks", "runbooks", "rotate_certs.yml"), "-i",
           os.environ["GATEWAY_LAB_INVENTORY"], "-e", json.dumps(args)]
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def served_fingerprint(gateway_host):
    pem = ssl.get_server_certificate((gateway_host.ip, 7654))
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def file_fingerprint(path):
    with open(path) as handle:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(handle.read())).hexdigest()


def test_a_gateway_certificate_whose_key_does_not_match_is_refused_before_the_swap(lab_hosts):
    gateway_host = lab_hosts[0]
    before = served_fingerprint(gateway_host)
    result = rotate_gateway_cert(gateway_host, cert_src=os.path.join(LAB_PKI, "gateway.crt"),
                                 key_src=os.path.join(LAB_PKI, "ca.key"), ca_cert_src=os.path.join(LAB_PKI, "ca.crt"))
    assert result.returncode != 0
    assert "nothing was swapped" in result.stdout, result.stdout[-3000:]
    assert "the key does not match the certificate (give as key_src the key it was issued for)" in result.stdout
    assert "Place the certificate and its key" not in result.stdout
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    assert served_fingerprint(gateway_host) == before


def test_three_gateway_certificate_rotations_in_a_row_fail_no_request_and_cut_no_stream(gateway, lab_hosts):
    """Each rotation swaps gateway.pem and reloads HAProxy: the old process finishes what it has, the new one takes
    the new connections with the new certificate, which the client (trusting the scenario's CA) accepts. Three in
    a row, as issue 14 asks: nothing of an earlier one lingers into the next."""
    gateway_host = lab_hosts[0]
    seen = [served_fingerprint(gateway_host)]
    with traffic(gateway) as client:
        for turn in range(3):
            result = rotate_gateway_cert(gateway_host, write_back=turn == 2)
            assert result.returncode == 0, result.stdout[-4000:]
            assert "RUNNING HANDLER [inferops.vllm.gateway : Reload the gateway]" in result.stdout
            issued = re.search(r"SHA-256 ([0-9a-f:]+)", result.stdout).group(1).replace(":", "")
            assert issued not in seen
            seen.append(issued)
            assert served_fingerprint(gateway_host) == issued, "turn %d" % (turn + 1)
    failed, cut = client.report("three certificate rotations")
    assert len(client.completions) > 50 and len(client.streams) > 5
    assert failed == [] and cut == []
    assert served_fingerprint(gateway_host) == seen[-1]
    # write_back on the last: the inventory's pair is the served one, so the next deploy keeps it.
    # Letters only: the callback may fold the message as a double-quoted YAML scalar, with "\ " continuations.
    assert "nowholdthenewpair" in re.sub(r"[^a-z]", "", result.stdout.lower())
    assert file_fingerprint(os.path.join(LAB_PKI, "gateway.crt")) == seen[-1]
