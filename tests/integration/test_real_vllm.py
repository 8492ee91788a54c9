"""The vllm role, the gateway and the runbooks on the REAL vLLM (the lab's inferops/vllm-cpu image), on one lab host.

Two instances of the tiny model serve HTTPS with a private CA and certificate refresh, behind the role's health
gate, and the gateway role's HAProxy fronts both on 7654 (verifying them with that CA). Then: vllm_health's verdict
and metrics against the real server, and, with completions and streams running through the gateway throughout,
three certificate rotations in a row on the instances checked by the certificate on the wire (no restart), and an
API-key rotation of the instances (each restarted once per phase, drained at the gateway first): no request may
fail and no stream may be cut. `make test` runs these in the `realvllm` stage (`-m realvllm`)."""

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from ansible_run import INVENTORY, ROOT, ansible_env, run_module
from gateway_traffic import Traffic

pytestmark = pytest.mark.realvllm

KEY = "real-lab-key-not-a-secret"
CLIENT_KEY = "real-lab-gateway-client-key"
PORTS = {"tiny-a": 8011, "tiny-b": 8012}
GATEWAY_PORT = 7654
# The instances have no served_model_name: vLLM then announces the model by its path in the container, and the
# role's health gate must ask for that id, not the host's path. Both serve it, so the gateway may send a request to
# either.
SERVED = "/models/tiny"
STREAM_TOKENS = 100
MODEL_DIR = "/srv/models/tiny"
RUNBOOKS = os.path.join(ROOT, "playbooks", "runbooks")
LABCTL = os.path.join(ROOT, "tests", "lab", "labctl.py")


def playbook(path, inventory, extra=None, timeout=1200):
    cmd = ["ansible-playbook", path, "-i", INVENTORY, "-i", inventory]
    if extra:
        cmd += ["-e", json.dumps(extra)]
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    proc.elapsed = time.monotonic() - started
    return proc


def real_image():
    return subprocess.run([sys.executable, LABCTL, "image-tag", "real"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def real(lab_hosts, tmp_path_factory):
    """Lab host 1 with the real vLLM image and the tiny model on disk, deployed by the vllm role."""
    import trustme

    host = lab_hosts[0]
    image = real_image()
    subprocess.run([sys.executable, LABCTL, "real-load", host.name], check=True)
    tmp = tmp_path_factory.mktemp("real-vllm")
    # The model on the host's disk, mapped into the containers, as users run local models (seed 004).
    subprocess.run("docker rm -f real-model-src >/dev/null 2>&1; docker create --name real-model-src %s && "
                   "docker cp real-model-src:/models/tiny %s && docker rm real-model-src" % (image, tmp),
                   shell=True, check=True, capture_output=True)
    host.run("mkdir", "-p", os.path.dirname(MODEL_DIR))
    subprocess.run(["docker", "cp", str(tmp / "tiny"), "%s:%s" % (host.name, MODEL_DIR)], check=True)
    host.run("chmod", "-R", "a+rX", MODEL_DIR)

    ca = trustme.CA()
    files = {"ca.crt": ca.cert_pem.bytes(), "ca.key": ca.private_key_pem.bytes()}
    first = ca.issue_cert("127.0.0.1", host.name, host.ip)
    files.update({"first.crt": first.cert_chain_pems[0].bytes(), "first.key": first.private_key_pem.bytes()})
    edge = ca.issue_cert("127.0.0.1", host.name, host.ip)
    files.update({"gateway.crt": edge.cert_chain_pems[0].bytes(), "gateway.key": edge.private_key_pem.bytes()})
    for name, blob in files.items():
        (tmp / name).write_bytes(blob)
    # vllm_shutdown_timeout (--shutdown-timeout): on SIGTERM vLLM finishes the requests in flight before it exits,
    # within the container's stop timeout (vllm_stop_timeout, 30 s). Without it, a restart under traffic can leave
    # vLLM waiting for its connections until Docker kills it.
    # VLLM_CPU_OMP_THREADS_BIND=nobind: vLLM's CPU build pins every instance's worker to core 0, and a worker that
    # served in the last second spins on its core; two instances on these 2 cores then starved each other's
    # restarts (a new worker waited minutes for core 0). Unpinned, the kernel spreads them.
    instances = [{"name": name, "model": MODEL_DIR, "model_path_map": {"/srv/models": "/models"},
                  "port": port, "gpu_memory_utilization": 0.3, "enforce_eager": True, "dtype": "float32",
                  "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}}
                 for name, port in sorted(PORTS.items())]
    host_vars = {"vllm_image": image, "vllm_image_pull": "never", "vllm_api_keys": [KEY], "vllm_instances": instances,
                 "vllm_tls_cert_src": str(tmp / "first.crt"), "vllm_tls_key_src": str(tmp / "first.key"),
                 "vllm_tls_ca_src": str(tmp / "ca.crt"), "vllm_wait_step": 5, "vllm_wait_start_period": 300,
                 "vllm_shutdown_timeout": 10,
                 # The gateway on the same host, in front of both instances, which it verifies with the private CA.
                 "gateway_tls_cert_src": str(tmp / "gateway.crt"), "gateway_tls_key_src": str(tmp / "gateway.key"),
                 "gateway_backend_ca_src": str(tmp / "ca.crt"), "gateway_api_keys": [CLIENT_KEY],
                 "gateway_check_interval": "1s"}
    inventory = tmp / "real_vllm.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {host.name: host_vars}},
                                     "gateway_hosts": {"hosts": {host.name: {}}}}))
    proc = playbook(os.path.join(ROOT, "tests", "integration", "playbooks", "real_vllm.yml"), str(inventory),
                    {"real_vllm_hosts": host.name})
    assert proc.returncode == 0, proc.stdout[-4000:]
    print("real vLLM: 2 instances deployed by the role, health-gated, and the gateway in front, in %.1f s"
          % proc.elapsed)
    context = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    yield {"host": host, "inventory": str(inventory), "tmp": tmp, "context": context, "deploy": proc, "ca": ca}
    for name in PORTS:
        host.run("docker", "rm", "-f", "vllm-" + name, check=False)
    host.run("systemctl", "disable", "--now", "haproxy", check=False)


def completion(real, port, key, timeout=10):
    request = urllib.request.Request(
        "https://%s:%d/v1/completions" % (real["host"].ip, port), method="POST",
        data=json.dumps({"model": SERVED, "prompt": "hi", "max_tokens": 1}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer %s" % key})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=real["context"]) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def stream(real, key=CLIENT_KEY, port=GATEWAY_PORT):
    """One stream of STREAM_TOKENS tokens: True when vLLM's own usage count says every token came and the stream
    ended with [DONE], else what went wrong. ignore_eos: the tiny model's random weights may end a stream early."""
    request = urllib.request.Request(
        "https://%s:%d/v1/completions" % (real["host"].ip, port), method="POST",
        data=json.dumps({"model": SERVED, "prompt": "hi", "max_tokens": STREAM_TOKENS, "stream": True,
                         "ignore_eos": True, "stream_options": {"include_usage": True}}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer %s" % key})
    try:
        with urllib.request.urlopen(request, timeout=60, context=real["context"]) as response:
            events = [line.strip() for line in response if line.startswith(b"data: ")]
    except (OSError, urllib.error.URLError) as error:
        return str(error)
    if not events or events[-1] != b"data: [DONE]":
        return "cut after %d events" % len(events)
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    reasons = [choice.get("finish_reason") for chunk in chunks for choice in chunk["choices"]
               if choice.get("finish_reason")]
    usage = chunks[-1].get("usage") or {}
    if reasons != ["length"] or usage.get("completion_tokens") != STREAM_TOKENS:
        return "finish %s, %s tokens of %d" % (reasons, usage.get("completion_tokens"), STREAM_TOKENS)
    return True


def through_the_gateway(real):
    """Completions every 0.5 s and a stream every 4 s: vLLM's CPU build on these 2 cores shares them with the
    restarting instance, whose start the client slows (with streams back to back, the key rotation took 12 minutes
    instead of 4; with a stream every 2 s and completions every 0.25 s, 6)."""
    return Traffic(lambda: completion(real, GATEWAY_PORT, CLIENT_KEY), lambda: stream(real), STREAM_TOKENS,
                   every=0.5, stream_pause=4)


def gateway_server_log(host, since):
    """What the gateway's HAProxy logged about its servers since `since` (UTC, HH:MM:SS): drains, re-admits, checks
    that failed or passed, with HAProxy's reason. Printed when a change under traffic failed a request."""
    found = host.sh("journalctl -q -o short-iso --utc --since '%s' -u haproxy | grep -E 'Server vllm/|backend vllm' "
                    "| tail -n 60" % since, check=False)
    return found.stdout.strip() or "(HAProxy logged nothing about its servers)"


def served_der(real, port):
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((real["host"].ip, port), timeout=10))


def test_the_role_health_gates_real_vllm_and_health_sees_real_metrics(real):
    host = real["host"]
    assert "tiny-a" in real["deploy"].stdout and "healthy" in real["deploy"].stdout
    result = run_module(host.name, "inferops.vllm.vllm_health", {
        "url": "https://127.0.0.1:%d" % PORTS["tiny-a"], "api_key": KEY, "ca_path": "/etc/vllm/tls/ca.crt",
        "container": "vllm-tiny-a", "model": SERVED}, timeout=180)
    assert result["status"] == "healthy", result
    assert result["version"] == "0.32.0"
    assert result["checks"]["inference"]["ok"] and result["checks"]["inference"]["ttft_ms"] > 0
    metrics = result["metrics"]
    assert metrics["num_requests_running"] == 0 and metrics["num_requests_waiting"] == 0
    assert 0 <= metrics["kv_cache_usage"] <= 1
    assert result["diagnosis"] == []
    assert KEY not in json.dumps(result)


def test_the_gateway_fronts_both_real_instances_and_wants_its_key_on_every_path(real):
    host = real["host"]
    gateway = {"url": "https://%s:%d" % (host.ip, GATEWAY_PORT), "context": real["context"]}
    assert completion(real, GATEWAY_PORT, CLIENT_KEY) == 200
    assert completion(real, GATEWAY_PORT, KEY) == 401, "the instances' own key is not a client key at the edge"
    for path in ("/tokenize", "/metrics", "/v1/models"):
        request = urllib.request.Request(gateway["url"] + path)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10, context=gateway["context"])
        assert refused.value.code == 401, path
    served = {name: host.logs("vllm-" + name).count("POST /v1/completions") for name in PORTS}
    assert [completion(real, GATEWAY_PORT, CLIENT_KEY) for _turn in range(10)] == [200] * 10
    after = {name: host.logs("vllm-" + name).count("POST /v1/completions") for name in PORTS}
    assert all(after[name] > served[name] for name in PORTS), (served, after)
    assert stream(real) is True


def test_three_certificate_rotations_in_a_row_reach_the_wire_without_a_restart(real):
    """With certificate refresh on, each rotation is picked up by vLLM itself: the gateway, which verifies the
    instances with the CA, keeps both in rotation, and the client through it sees no failure."""
    host, tmp = real["host"], real["tmp"]
    pids = {name: host.container_state("vllm-" + name)["Pid"] for name in PORTS}
    seen = {served_der(real, PORTS["tiny-a"])}
    with through_the_gateway(real) as client:
        for turn in range(3):
            proc = playbook(os.path.join(RUNBOOKS, "rotate_certs.yml"), real["inventory"],
                            {"runbook_hosts": host.name, "rotate": ["instances"], "ca_cert_src": str(tmp / "ca.crt"),
                             "ca_key_src": str(tmp / "ca.key"),
                             "required_names": [host.name, "127.0.0.1", host.ip]})
            assert proc.returncode == 0, "rotation %d:\n%s" % (turn + 1, proc.stdout[-3000:])
            new_der = ssl.PEM_cert_to_DER_cert(host.read("/etc/vllm/tls/server.crt"))
            assert new_der not in seen, "rotation %d did not make a new certificate" % (turn + 1)
            seen.add(new_der)
            for name, port in PORTS.items():
                assert served_der(real, port) == new_der, "rotation %d: %s serves an old certificate" % (
                    turn + 1, name)
            assert "without a restart" in proc.stdout
    failed, cut = client.report("three certificate rotations on the real instances")
    assert failed == [] and cut == []
    assert len(client.completions) > 30 and len(client.streams) > 3
    assert {name: host.container_state("vllm-" + name)["Pid"] for name in PORTS} == pids
    logs = host.logs("vllm-tiny-a")
    assert logs.count("Reloading SSL certificate") >= 3, logs[-3000:]


def test_a_swap_by_rename_is_followed_once_then_never(real):
    """Why rotate_certs.yml writes in place: vLLM's refresh watches the files' inodes, so after a pair is swapped in
    by rename (the atomic way) it sees that change and no later one. If a vLLM release fixes this, this test says
    so, and the runbook may go back to renames."""
    host = real["host"]

    def swap_by_rename():
        issued = real["ca"].issue_cert("127.0.0.1", host.name, host.ip)
        for name, blob in (("server.key", issued.private_key_pem.bytes()),
                           ("server.crt", issued.cert_chain_pems[0].bytes())):
            host.write("/etc/vllm/tls/%s.new" % name, blob.decode())
            host.run("mv", "/etc/vllm/tls/%s.new" % name, "/etc/vllm/tls/" + name)
        return ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())

    def served_within(der, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if served_der(real, PORTS["tiny-a"]) == der:
                return True
            time.sleep(0.5)
        return False

    first = swap_by_rename()
    assert served_within(first, 20)
    second = swap_by_rename()
    assert not served_within(second, 10)
    assert served_der(real, PORTS["tiny-a"]) == first


def test_api_key_rotation_behind_the_gateway_fails_no_request_and_cuts_no_stream(real):
    """rotate_api_key.yml on the instances, both phases in one run: each instance restarts once per phase, drained
    at the gateway first and put back once healthy; the gateway presents the new key between the phases. The
    clients keep their own key at the edge and notice nothing."""
    host, tmp = real["host"], real["tmp"]
    key_file = tmp / "new-key"
    started = {name: host.container_state("vllm-" + name)["StartedAt"] for name in PORTS}
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    with through_the_gateway(real) as client:
        rotation = playbook(os.path.join(RUNBOOKS, "rotate_api_key.yml"), real["inventory"],
                            {"runbook_hosts": host.name, "new_key_file": str(key_file), "phase": "all"})
    failed, cut = client.report("real vLLM key rotation (%.0f s)" % rotation.elapsed)
    if failed or cut:
        print("The gateway's log of its servers during the rotation:\n" + gateway_server_log(host, since))
    assert rotation.returncode == 0, rotation.stdout[-3000:]
    new_key = key_file.read_text().strip()
    assert new_key not in rotation.stdout
    for name in PORTS:
        assert rotation.stdout.count("TASK [inferops.vllm.gateway : At the gateways, drain %s]" % name) == 2, name
    assert failed == [] and cut == []
    assert len(client.completions) > 100 and len(client.streams) > 5
    assert all(host.container_state("vllm-" + name)["StartedAt"] != started[name] for name in PORTS)
    for port in sorted(PORTS.values()):
        assert completion(real, port, KEY) == 401
        assert completion(real, port, new_key) == 200
    assert completion(real, GATEWAY_PORT, CLIENT_KEY) == 200


def test_vllm_serve_asks_the_image_which_vllm_it_holds_when_the_tag_does_not_say(real):
    host = real["host"]
    host.run("docker", "tag", real_image(), "inferops/vllm-cpu:lab")
    args = {"name": "probe", "image": "inferops/vllm-cpu:lab", "pull": "never", "model": MODEL_DIR,
            "model_path_map": {"/srv/models": "/models"}, "gpus": ["7"], "port": 8019, "check_gpus": False,
            "dtype": "float32",
            "extra_args": {"enable-log-requests": True}}
    result = run_module(host.name, "inferops.vllm.vllm_serve", args, check=True)
    assert not result.failed, result
    assert result["flag_catalog"] == {"vllm_version": "0.32.0", "source": "the vLLM in inferops/vllm-cpu:lab",
                                      "catalog": "0.32.0"}
    assert result["served_model"] == "/models/tiny"
    # 0.33 took --disable-log-requests back (as the negation of --enable-log-requests); 0.32 has no such flag.
    refused = run_module(host.name, "inferops.vllm.vllm_serve", dict(args, extra_args={"disable-log-requests": True}),
                         check=True)
    assert refused.failed and "vLLM 0.32.0 has no --disable-log-requests" in refused["msg"]
