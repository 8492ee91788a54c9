"""The vllm role and the runbooks on the REAL vLLM (the lab's inferops/vllm-cpu image), on one lab host.

Two instances of the tiny model serve HTTPS with a private CA and certificate refresh, behind the role's health
gate. Then: vllm_health's verdict and metrics against the real server, three certificate rotations in a row checked
by the certificate on the wire (no restart), and an API-key rotation with a client failing over between the two
instances, which must see no failed request. `make test` runs these in the `realvllm` stage (`-m realvllm`)."""

import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from ansible_run import INVENTORY, ROOT, ansible_env, run_module

pytestmark = pytest.mark.realvllm

KEY = "real-lab-key-not-a-secret"
PORTS = {"tiny-a": 8011, "tiny-b": 8012}
# tiny-b has no served_model_name: vLLM then announces the model by its path in the container, and the role's
# health gate must ask for that id, not the host's path.
SERVED = {8011: "tiny", 8012: "/models/tiny"}
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
    for name, blob in files.items():
        (tmp / name).write_bytes(blob)
    # vllm_shutdown_timeout (--shutdown-timeout): on SIGTERM vLLM finishes the requests in flight before it exits,
    # within the container's stop timeout (vllm_stop_timeout, 30 s). Without it, a restart under traffic can leave
    # vLLM waiting for its connections until Docker kills it.
    # VLLM_CPU_OMP_THREADS_BIND=nobind: vLLM's CPU build pins every instance's worker to core 0, and a worker that
    # served in the last second spins on its core; two instances on these 2 cores then starved each other's
    # restarts (a new worker waited minutes for core 0). Unpinned, the kernel spreads them.
    instances = [{"name": name, "model": MODEL_DIR, "model_path_map": {"/srv/models": "/models"},
                  "port": port, "gpu_memory_utilization": 0.3, "enforce_eager": True,
                  "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}}
                 for name, port in sorted(PORTS.items())]
    instances[0]["served_model_name"] = SERVED[PORTS["tiny-a"]]
    host_vars = {"vllm_image": image, "vllm_image_pull": "never", "vllm_api_keys": [KEY], "vllm_instances": instances,
                 "vllm_tls_cert_src": str(tmp / "first.crt"), "vllm_tls_key_src": str(tmp / "first.key"),
                 "vllm_tls_ca_src": str(tmp / "ca.crt"), "vllm_wait_step": 5, "vllm_wait_start_period": 300,
                 "vllm_shutdown_timeout": 10}
    inventory = tmp / "real_vllm.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {host.name: host_vars}}}))
    proc = playbook(os.path.join(ROOT, "tests", "integration", "playbooks", "real_vllm.yml"), str(inventory),
                    {"real_vllm_hosts": host.name})
    assert proc.returncode == 0, proc.stdout[-4000:]
    print("real vLLM: 2 instances deployed by the role, health-gated, in %.1f s" % proc.elapsed)
    context = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    yield {"host": host, "inventory": str(inventory), "tmp": tmp, "context": context, "deploy": proc, "ca": ca}
    for name in PORTS:
        host.run("docker", "rm", "-f", "vllm-" + name, check=False)


def completion(real, port, key, timeout=10):
    request = urllib.request.Request(
        "https://%s:%d/v1/completions" % (real["host"].ip, port), method="POST",
        data=json.dumps({"model": SERVED[port], "prompt": "hi", "max_tokens": 1}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer %s" % key})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=real["context"]) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def served_der(real, port):
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((real["host"].ip, port), timeout=10))


def test_the_role_health_gates_real_vllm_and_health_sees_real_metrics(real):
    host = real["host"]
    assert "tiny-a" in real["deploy"].stdout and "healthy" in real["deploy"].stdout
    result = run_module(host.name, "inferops.vllm.vllm_health", {
        "url": "https://127.0.0.1:%d" % PORTS["tiny-a"], "api_key": KEY, "ca_path": "/etc/vllm/tls/ca.crt",
        "container": "vllm-tiny-a", "model": "tiny"}, timeout=180)
    assert result["status"] == "healthy", result
    assert result["version"] == "0.32.0"
    assert result["checks"]["inference"]["ok"] and result["checks"]["inference"]["ttft_ms"] > 0
    metrics = result["metrics"]
    assert metrics["num_requests_running"] == 0 and metrics["num_requests_waiting"] == 0
    assert 0 <= metrics["kv_cache_usage"] <= 1
    assert result["diagnosis"] == []
    assert KEY not in json.dumps(result)


def test_three_certificate_rotations_in_a_row_reach_the_wire_without_a_restart(real):
    host, tmp = real["host"], real["tmp"]
    pids = {name: host.container_state("vllm-" + name)["Pid"] for name in PORTS}
    seen = {served_der(real, PORTS["tiny-a"])}
    for turn in range(3):
        proc = playbook(os.path.join(RUNBOOKS, "rotate_certs.yml"), real["inventory"],
                        {"runbook_hosts": host.name, "ca_cert_src": str(tmp / "ca.crt"),
                         "ca_key_src": str(tmp / "ca.key"),
                         "required_names": [host.name, "127.0.0.1", host.ip]})
        assert proc.returncode == 0, "rotation %d:\n%s" % (turn + 1, proc.stdout[-3000:])
        new_der = ssl.PEM_cert_to_DER_cert(host.read("/etc/vllm/tls/server.crt"))
        assert new_der not in seen, "rotation %d did not make a new certificate" % (turn + 1)
        seen.add(new_der)
        for name, port in PORTS.items():
            assert served_der(real, port) == new_der, "rotation %d: %s serves an old certificate" % (turn + 1, name)
        assert "without a restart" in proc.stdout
        assert completion(real, PORTS["tiny-b"], KEY) == 200
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


def test_api_key_rotation_without_a_failed_request(real):
    host, tmp = real["host"], real["tmp"]
    key_file = tmp / "new-key"
    state = {"key": KEY, "sent": 0, "failed": [], "stop": False}
    ports = sorted(PORTS.values())

    def client():
        turn = 0
        while not state["stop"]:
            key = state["key"]
            statuses = []
            for offset in range(len(ports)):  # client-side failover between the two instances
                status = completion(real, ports[(turn + offset) % len(ports)], key)
                statuses.append(status)
                if status is not None and status < 500:
                    break
            state["sent"] += 1
            if statuses[-1] != 200:
                state["failed"].append((key == KEY, statuses))
            turn += 1
            time.sleep(0.25)

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    try:
        extra = {"runbook_hosts": host.name, "new_key_file": str(key_file)}
        add = playbook(os.path.join(RUNBOOKS, "rotate_api_key.yml"), real["inventory"], dict(extra, phase="add"))
        assert add.returncode == 0, add.stdout[-3000:]
        new_key = key_file.read_text().strip()
        state["key"] = new_key  # clients switch after step 1
        time.sleep(1)
        remove = playbook(os.path.join(RUNBOOKS, "rotate_api_key.yml"), real["inventory"],
                          dict(extra, phase="remove"))
        assert remove.returncode == 0, remove.stdout[-3000:]
        time.sleep(1)
    finally:
        state["stop"] = True
        worker.join(30)
    print("real vLLM key rotation: %d requests, %d failed (add %.0f s, remove %.0f s)" % (
        state["sent"], len(state["failed"]), add.elapsed, remove.elapsed))
    assert state["sent"] > 50
    assert state["failed"] == []
    assert new_key not in add.stdout + remove.stdout
    for port in ports:
        assert completion(real, port, KEY) == 401
        assert completion(real, port, new_key) == 200


def test_vllm_serve_asks_the_image_which_vllm_it_holds_when_the_tag_does_not_say(real):
    host = real["host"]
    host.run("docker", "tag", real_image(), "inferops/vllm-cpu:lab")
    args = {"name": "probe", "image": "inferops/vllm-cpu:lab", "pull": "never", "model": MODEL_DIR,
            "model_path_map": {"/srv/models": "/models"}, "gpus": ["7"], "port": 8019, "check_gpus": False,
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
