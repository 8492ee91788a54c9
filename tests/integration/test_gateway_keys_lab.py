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

import pytest
import yaml

from ansible_run import ROOT, ansible_env
from test_gateway_lab import CONTAINER, KEYS, completion, endpoint, run_gateway_role

pytestmark = pytest.mark.gateway


@pytest.fixture(scope="module")
def gateway(lab_hosts):
    return endpoint(lab_hosts[0])


def rotate(tmp_path, phase):
    cmd = ["ansible-playbook", os.path.join(ROOT, "playbooks", "runbooks", "rotate_api_key.yml"), "-i",
           os.environ["GATEWAY_LAB_INVENTORY"], "-e", "target=gateway", "-e", "phase=%s" % phase,
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
