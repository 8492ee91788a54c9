"""A client-key rotation at the gateway, as the Molecule scenario `gateway` deployed it, with a client running
through it: rotate_api_key.yml target=gateway adds the new key at the edge (a reload, no vLLM restart), the client
switches, the old keys are removed; no request fails, the old keys get 401, the new key is written where the next
deploy reads it, and a deploy from the inventory that still names the old keys refuses to bring them back. Run last
by the scenario's verify step (`-m gateway`): it leaves the gateway with the inventory's keys again.
"""
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from ansible_run import ROOT, ansible_env
from test_gateway_lab import CONTAINER, KEYS, PORT, completion, endpoint, run_gateway_role, traffic

pytestmark = pytest.mark.gateway


@pytest.fixture(scope="module")
def gateway(lab_hosts):
    return endpoint(lab_hosts[0])


def rotate(tmp_path, phase, target="gateway"):
    cmd = ["ansible-playbook", os.path.join(ROOT, "playbooks", "runbooks", "rotate_api_key.yml"), "-i",
           os.environ["GATEWAY_LAB_INVENTORY"], "-e", "target=%s" % target, "-e", "phase=%s" % phase,
           "-e", "new_key_file=%s" % (tmp_path / "new-key"), "-e", "keys_vars_file=%s" % (tmp_path / "keys.yml")]
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)


def test_a_client_key_rotation_at_the_gateway_fails_no_request_and_cannot_be_undone_by_a_deploy(
        gateway, lab_hosts, tmp_path):
    started = {host.name: host.container_state(CONTAINER)["StartedAt"] for host in lab_hosts}
    key = {"now": KEYS[0]}
    results = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            results.append((key["now"], completion(gateway, key["now"])))
            time.sleep(0.1)

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    try:
        added = rotate(tmp_path, "add")
        assert added.returncode == 0, added.stdout[-4000:]
        new_key = (tmp_path / "new-key").read_text().strip()
        assert len(new_key) == 48 and new_key not in added.stdout + added.stderr
        assert completion(gateway, new_key) == 200 and completion(gateway, KEYS[1]) == 200
        key["now"] = new_key  # the clients switch
        time.sleep(1)
        removed = rotate(tmp_path, "remove")
        time.sleep(1)
    finally:
        stop.set()
        worker.join(30)
    assert removed.returncode == 0, removed.stdout[-4000:]
    assert new_key not in removed.stdout + removed.stderr
    print("gateway key rotation: %d requests, %d with the new key" % (
        len(results), len([1 for used, _status in results if used == new_key])))
    assert [status for _used, status in results if status != 200] == []
    assert len([1 for used, _status in results if used == new_key]) > 5
    assert completion(gateway, KEYS[0]) == 401 and completion(gateway, KEYS[1]) == 401
    assert completion(gateway, new_key) == 200
    # No instance restarted: the edge changed with reloads only.
    assert {host.name: host.container_state(CONTAINER)["StartedAt"] for host in lab_hosts} == started
    assert yaml.safe_load((tmp_path / "keys.yml").read_text()) == {"gateway_api_keys": [new_key]}
    assert oct((tmp_path / "keys.yml").stat().st_mode & 0o777) == "0o600"
    retired = lab_hosts[0].run("stat", "-c", "%a %U", "/etc/haproxy/inferops/retired-keys.json").stdout.split()
    assert retired == ["600", "root"]
    record = lab_hosts[0].read("/etc/haproxy/inferops/retired-keys.json")
    assert KEYS[0] not in record and KEYS[1] not in record and new_key not in record

    # A deploy from the inventory, which still names the old keys, refuses and changes nothing.
    revert = run_gateway_role({})
    assert revert.returncode != 0
    assert "retired on this gateway" in revert.stdout and KEYS[0] not in revert.stdout
    assert completion(gateway, new_key) == 200 and completion(gateway, KEYS[0]) == 401
    # With the key the rotation wrote back, it passes; letting the old keys back on purpose restores the lab.
    assert run_gateway_role({"gateway_api_keys": [new_key]}).returncode == 0
    restored = run_gateway_role({"gateway_allow_retired_keys": True})
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert completion(gateway, KEYS[0]) == 200


# The instances' key in the lab's inventory (inventories/lab/group_vars/vllm_hosts.yml), which the gateway presents.
INSTANCE_KEY = "lab-demo-key-not-a-secret"


def models_status(host, key):
    """What the instance on `host` answers /v1/models with `key`, asked directly (this machine is in the scenario's
    vllm_firewall_sources)."""
    request = urllib.request.Request("http://%s:%d/v1/models" % (host.ip, PORT),
                                     headers={"Authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_an_instance_key_rotation_behind_the_gateway_fails_no_request_and_cuts_no_stream(gateway, lab_hosts, tmp_path):
    """Issue 14: rotate_api_key.yml target=instances, both phases, with completions and 300-token streams running
    through the gateway the whole time. Each instance restarts once per phase, one host at a time, drained at the
    gateway first; between the phases the gateway switches to presenting the new key. No request fails, no stream
    is cut, and afterwards the instances take only the new key, the gateway still serves, and the keys file holds
    the new key for the next deploy. Run last: the scenario's destroy recreates the lab hosts."""
    started = {host.name: host.container_state(CONTAINER)["StartedAt"] for host in lab_hosts}
    assert all(models_status(host, INSTANCE_KEY) == 200 for host in lab_hosts)
    began = time.monotonic()
    with traffic(gateway) as client:
        result = rotate(tmp_path, "all", target="instances")
    elapsed = time.monotonic() - began
    failed, cut = client.report("instance key rotation (%.0f s)" % elapsed)
    assert result.returncode == 0, result.stdout[-4000:]
    new_key = (tmp_path / "new-key").read_text().strip()
    assert len(new_key) == 48 and new_key not in result.stdout + result.stderr
    assert failed == [] and cut == []
    assert len(client.completions) > 50 and len(client.streams) > 3
    # Both instances restarted (a restart per phase), and now take the new key only.
    assert all(host.container_state(CONTAINER)["StartedAt"] != started[host.name] for host in lab_hosts)
    assert [models_status(host, key) for host in lab_hosts for key in (INSTANCE_KEY, new_key)] == [401, 200] * 2
    assert completion(gateway, KEYS[0]) == 200
    assert yaml.safe_load((tmp_path / "keys.yml").read_text()) == {"vllm_api_keys": [new_key]}
    assert lab_hosts[0].run("stat", "-c", "%a", "/etc/haproxy/inferops/backend-key.map").stdout.strip() == "640"
    assert new_key in lab_hosts[0].read("/etc/haproxy/inferops/backend-key.map")
