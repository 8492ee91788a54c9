"""The runbook playbooks against the faults they fix, on the lab (deployed with playbooks/deploy.yml first).

`make test` runs these as the verify step of the Molecule scenario `runbooks`, after its converge deployed the lab;
run alone (`pytest -m runbooks tests/integration`), they recreate the lab hosts and deploy them first."""

import json
import os
import re
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request

import pytest

from ansible_run import INVENTORY, ROOT, ansible_env

pytestmark = pytest.mark.runbooks

KEY = "lab-demo-key-not-a-secret"  # inventories/lab/group_vars/vllm_hosts.yml
RUNBOOKS = os.path.join(ROOT, "playbooks", "runbooks")


def playbook(path, extra=None, limit=None, timeout=900, options=(), inventory=INVENTORY):
    cmd = ["ansible-playbook", path, "-i", inventory] + list(options)
    if extra:
        cmd += ["-e", json.dumps(extra)]
    if limit:
        cmd += ["--limit", limit]
    started = time.monotonic()
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    proc.elapsed = time.monotonic() - started
    return proc


@pytest.fixture(scope="module")
def deployed(lab_hosts):
    """A fresh lab with deploy.yml applied: opt-small (port 8001) and qwen-small (8002) on every host."""
    if os.environ.get("INFEROPS_LAB_DEPLOYED") == "1":
        # Molecule's converge deployed these hosts, and its idempotence step re-ran the deploy.
        return lab_hosts
    subprocess.run(["python", os.path.join(ROOT, "tests", "lab", "labctl.py"), "up", "--fresh", "--hosts",
                    str(len(lab_hosts))], check=True, capture_output=True)
    proc = playbook(os.path.join(ROOT, "playbooks", "deploy.yml"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    return lab_hosts


def instance_gpus(host, name):
    return json.loads(host.read("/etc/vllm/gpu-assignments.json"))[name]


def worker_pids(host, gpu):
    return [p["pid"] for p in host.nvml()["gpus"][int(gpu)]["processes"]]


def completion(host, port, key=KEY, timeout=5):
    request = urllib.request.Request(
        "http://%s:%d/v1/completions" % (host.ip, port), method="POST",
        data=json.dumps({"prompt": "hi", "max_tokens": 1}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer %s" % key})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def recap(stdout):
    """{host: {ok, changed, failed, ...}} from the PLAY RECAP of ansible-playbook's default output."""
    hosts = {}
    # Molecule forces colours on the playbooks its steps run, and pytest inherits them.
    stdout = re.sub(r"\x1b\[[0-9;]*m", "", stdout)
    for line in stdout.split("PLAY RECAP")[-1].splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] == ":":
            hosts[parts[0]] = dict((k, int(v)) for k, v in (p.split("=", 1) for p in parts[2:] if "=" in p))
    return hosts


def test_deploy_in_check_mode_on_deployed_hosts_would_change_nothing(deployed):
    # First, before any fault changes the hosts. Molecule's `check` step ran it on the fresh hosts before converge.
    listing = ("docker ps -aq | xargs -r docker inspect -f '{{.Name}} {{.State.Status}} {{.State.StartedAt}}'; "
               "ls -lR --time-style=+%s /etc/vllm /etc/systemd/system /etc/prometheus 2>&1; "
               "systemctl show -p ActiveEnterTimestamp 'vllm-*' prometheus prometheus-node-exporter; true")
    before = dict((host.name, host.sh(listing).stdout) for host in deployed)
    # The inventory the hosts were deployed with: Molecule's has no monitoring hosts, inventories/lab has one.
    proc = playbook(os.path.join(ROOT, "playbooks", "deploy.yml"), options=["--check"],
                    inventory=os.environ.get("RUNBOOKS_LAB_INVENTORY") or INVENTORY)
    assert proc.returncode == 0, proc.stdout[-3000:]
    hosts = recap(proc.stdout)
    assert sorted(hosts) == sorted(host.name for host in deployed), proc.stdout[-2000:]
    assert all(h["changed"] == 0 and h["failed"] == 0 for h in hosts.values()), proc.stdout[-3000:]
    for host in deployed:
        assert host.sh(listing).stdout == before[host.name]


def deploy_runs():
    """The runs of deploy.yml Molecule's steps made (its converge.yml), oldest first, as
    tests/lab/callbacks/task_changes.py wrote them: {playbook, check, hosts, changed: {host: [task]}}. The playbooks
    these tests run inherit the callback, so their records are left out."""
    path = os.environ.get("INFEROPS_TASK_CHANGES")
    if not path:
        if os.environ.get("INFEROPS_LAB_DEPLOYED") == "1":
            pytest.fail("INFEROPS_TASK_CHANGES is not set: the scenario's verify step must pass it")
        pytest.skip("only in Molecule's runbooks scenario, whose check and converge steps record their changes")
    with open(path) as handle:
        runs = [json.loads(line) for line in handle if line.strip()]
    return [run for run in runs if run["playbook"] == "converge.yml"]


# What check mode cannot foretell on a fresh host, each named in its role's README ("Check mode"): the run installs a
# package first, and what the package brings decides these tasks.
UNFORESEEABLE = {
    "inferops.vllm.monitoring : Keep the node exporter running": "its unit comes with the package",
    "inferops.vllm.monitoring : Restart node exporter": "a handler of that unit",
    "inferops.vllm.monitoring : Keep the collector's timer running": "it runs the node exporter's collector",
    "inferops.vllm.monitoring : Restart the GPU metrics timer": "a handler of that timer",
}


def test_check_mode_on_the_fresh_hosts_predicted_what_the_deploy_then_changed(deployed):
    """Molecule's `check` step ran deploy.yml --check on the fresh hosts, then `converge` deployed them for real.
    Every task the real run changed was announced by check mode, and check mode announced nothing the real run then
    left alone, but for the few that hang on a package the run installs (UNFORESEEABLE): check mode is a faithful
    preview, not only a run that does not fail."""
    runs = deploy_runs()
    checks = [index for index, run in enumerate(runs) if run["check"]]
    assert checks and checks[-1] + 1 < len(runs), "no check run followed by a real one in %s" % [
        run["check"] for run in runs]
    # The run after the last check run is a real one: a check run after it would be the last.
    predicted, applied = runs[checks[-1]], runs[checks[-1] + 1]
    assert sorted(predicted["hosts"]) == sorted(applied["hosts"]) == sorted(host.name for host in deployed)
    differences = {}
    for host in applied["hosts"]:
        would = set(predicted["changed"].get(host, [])) - set(UNFORESEEABLE)
        did = set(applied["changed"].get(host, [])) - set(UNFORESEEABLE)
        if would != did:
            differences[host] = {"changed, not announced": sorted(did - would),
                                 "announced, not changed": sorted(would - did)}
    assert differences == {}, json.dumps(differences, indent=1)
    assert all(applied["changed"][host] for host in applied["hosts"]), "the real run changed nothing?"


def test_restart_is_rolling_and_health_gated(deployed):
    host = deployed[0]
    before = host.container_state("vllm-opt-small")["StartedAt"]
    proc = playbook(os.path.join(RUNBOOKS, "restart.yml"), {"instances": ["opt-small"]}, limit=host.name)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert host.container_state("vllm-opt-small")["StartedAt"] != before
    assert "restarted opt-small" in proc.stdout and "healthy" in proc.stdout
    assert completion(host, 8001) == 200


def test_restart_refuses_an_unknown_instance(deployed):
    proc = playbook(os.path.join(RUNBOOKS, "restart.yml"), {"instances": ["nope"]}, limit=deployed[0].name)
    assert proc.returncode != 0 and "instances ['nope'] are not among this host's" in proc.stdout


def test_reset_recovers_a_hung_instance(deployed):
    host = deployed[0]
    host.set_fault(8001, hang=True)
    assert completion(host, 8001, timeout=2) is None
    hung = worker_pids(host, instance_gpus(host, "opt-small")[0])
    proc = playbook(os.path.join(RUNBOOKS, "reset.yml"), {"instances": ["opt-small"]}, limit=host.name)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert completion(host, 8001) == 200
    after = worker_pids(host, instance_gpus(host, "opt-small")[0])
    assert after and not set(after) & set(hung)
    assert "opt-small: healthy after" in proc.stdout and "start to healthy" in proc.stdout
    assert host.sh("ls /var/lib/inferops/diagnostics | grep -c '^reset-opt-small-'").stdout.strip() != "0"


def test_reset_kills_orphans_of_this_instance_only(deployed):
    host = deployed[0]
    gpu = instance_gpus(host, "opt-small")[0]
    foreign = int(host.run("inferops-lab", "occupy", gpu, "--memory", "4GiB", "--name", "other-team").stdout)
    before = set(worker_pids(host, gpu))
    # An orphaned worker of opt-small: it carries the instance's mark and outlives its killed main process.
    main = host.sh("INFEROPS_VLLM_INSTANCE=opt-small CUDA_VISIBLE_DEVICES=%s VLLM_EMULATOR_FAULTS=orphan_workers "
                   "setsid /opt/vllm/bin/vllm serve facebook/opt-125m --port 8190 --gpu-memory-utilization 0.1 "
                   ">/tmp/orphan-src.log 2>&1 & echo $!" % gpu).stdout.strip()
    host.sh("for i in $(seq 100); do grep -q 'startup complete' /tmp/orphan-src.log && break; sleep 0.1; done")
    host.run("kill", "-9", main)
    orphans = set(worker_pids(host, gpu)) - before
    assert len(orphans) == 1
    try:
        proc = playbook(os.path.join(RUNBOOKS, "reset.yml"), {"instances": ["opt-small"]}, limit=host.name)
        assert proc.returncode == 0, proc.stdout[-3000:]
        alive = set(worker_pids(host, gpu))
        assert foreign in alive  # another workload's process is never touched
        assert not orphans & alive and not (before - {foreign}) & alive
        assert "killed %s" % next(iter(orphans)) in proc.stdout
        assert completion(host, 8001) == 200
    finally:
        host.run("kill", str(foreign), check=False)


def test_reset_handles_persistence_mode_on_a_held_gpu(deployed):
    host = deployed[0]
    gpu = instance_gpus(host, "qwen-small")[0]
    host.run("inferops-lab", "leak", gpu, "--memory", "10GiB")  # memory held with no process
    proc = playbook(os.path.join(RUNBOOKS, "reset.yml"), {"instances": ["qwen-small"]}, limit=host.name)
    assert proc.returncode == 0, proc.stdout[-3000:]
    gpu_state = host.nvml()["gpus"][int(gpu)]
    assert gpu_state["persistence"] == 1  # restored after the reset
    assert "reset %s" % gpu in proc.stdout
    assert completion(host, 8002) == 200


def test_reset_refuses_when_a_foreign_process_holds_the_gpu(deployed):
    host = deployed[0]
    gpu = instance_gpus(host, "qwen-small")[0]
    host.run("inferops-lab", "leak", gpu, "--memory", "10GiB")
    foreign = host.run("inferops-lab", "occupy", gpu, "--memory", "2GiB", "--name", "other-team").stdout.strip()
    try:
        proc = playbook(os.path.join(RUNBOOKS, "reset.yml"), {"instances": ["qwen-small"]}, limit=host.name)
        assert proc.returncode != 0
        assert "PID %s of another workload uses it" % foreign in proc.stdout
        assert int(foreign) in worker_pids(host, gpu)
    finally:
        host.run("kill", foreign, check=False)
        host.run("inferops-lab", "leak", gpu, "--memory", "0")
        playbook(os.path.join(RUNBOOKS, "restart.yml"), {"instances": ["qwen-small"]}, limit=host.name)


def test_oom_recover_steps_down_until_it_serves(deployed):
    host = deployed[0]
    host.set_fault(8001, oom_above={"gpu_memory_utilization": 0.15})
    crash = playbook(os.path.join(RUNBOOKS, "restart.yml"), {"instances": ["opt-small"]}, limit=host.name)
    assert crash.returncode != 0 and "cuda_oom" in crash.stdout
    proc = playbook(os.path.join(RUNBOOKS, "oom_recover.yml"),
                    {"instances": ["opt-small"], "floor_gpu_memory_utilization": 0.1,
                     "step_gpu_memory_utilization": 0.05, "attempt_wait": 60}, limit=host.name)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'opt-small serves with {"gpu_memory_utilization": 0.15}' in proc.stdout
    assert "--gpu-memory-utilization" in host.run("docker", "inspect", "-f", "{{json .Config.Cmd}}",
                                                  "vllm-opt-small").stdout
    assert completion(host, 8001) == 200
    host.run("inferops-lab", "vllm-fault", "--clear", "8001")


def test_diagnose_bundles_every_part_without_secrets(deployed, tmp_path):
    proc = playbook(os.path.join(RUNBOOKS, "diagnose.yml"), {"diag_output_dir": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:]
    bundles = list(tmp_path.glob("diagnose-*.tar.gz"))
    assert len(bundles) == 1
    names, contents = [], []
    with tarfile.open(bundles[0]) as outer:
        for member in outer.getmembers():
            if member.name.endswith(".tar.gz"):
                with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                    for item in inner.getmembers():
                        if item.isfile():
                            names.append(member.name.split("/")[-1] + ":" + item.name.lstrip("./"))
                            contents.append(inner.extractfile(item).read().decode("utf-8", "replace"))
    for host in deployed:
        for part in ("health-opt-small.json", "logs-opt-small.txt", "inspect-opt-small.json", "nvidia-smi-q.txt",
                     "dmesg-tail.txt", "versions-driver.txt", "versions-docker.txt", "disk.txt", "memory.txt"):
            assert "%s.tar.gz:%s" % (host.name, part) in names
    blob = "\n".join(contents)
    assert KEY not in blob and "PRIVATE KEY" not in blob
    assert "top diagnosis" in proc.stdout and "run next" in proc.stdout


def test_api_key_rotation_without_a_failed_request(deployed, tmp_path):
    hosts = deployed
    key_file = tmp_path / "new-key"
    state = {"key": KEY, "sent": 0, "failed": [], "stop": False}

    def client():
        turn = 0
        while not state["stop"]:
            key = state["key"]
            statuses = []
            for offset in range(len(hosts)):  # client-side failover across the replicas
                status = completion(hosts[(turn + offset) % len(hosts)], 8001, key=key, timeout=5)
                statuses.append(status)
                if status is not None and status < 500:
                    break
            state["sent"] += 1
            if statuses[-1] != 200:
                state["failed"].append((key == KEY, statuses))
            turn += 1
            time.sleep(0.05)

    worker = threading.Thread(target=client, daemon=True)
    worker.start()
    try:
        add = playbook(os.path.join(RUNBOOKS, "rotate_api_key.yml"), {"new_key_file": str(key_file), "phase": "add"})
        assert add.returncode == 0, add.stdout[-3000:]
        new_key = key_file.read_text().strip()
        assert oct(key_file.stat().st_mode & 0o777) == "0o600" and len(new_key) == 48
        state["key"] = new_key  # clients switch after step 1
        time.sleep(1)
        remove = playbook(os.path.join(RUNBOOKS, "rotate_api_key.yml"),
                          {"new_key_file": str(key_file), "phase": "remove"})
        assert remove.returncode == 0, remove.stdout[-3000:]
        time.sleep(1)
    finally:
        state["stop"] = True
        worker.join(10)
    print("rotation: %d requests, %d failed" % (state["sent"], len(state["failed"])))
    assert state["sent"] > 50
    assert state["failed"] == []
    assert new_key not in add.stdout + remove.stdout
    for host in hosts:
        assert completion(host, 8001, key=KEY) == 401
        assert completion(host, 8001, key=new_key) == 200


@pytest.fixture(scope="module")
def tls_host(deployed, tmp_path_factory):
    """The second lab host serving HTTPS with a certificate of a private CA (certificate refresh on), for the tests
    of rotate_certs.yml; plain HTTP again after them. Deployed once for them all: each deploy restarts both
    instances."""
    import trustme

    tmp_path = tmp_path_factory.mktemp("tls")
    host = deployed[-1]
    ca = trustme.CA()
    files = {}
    for name, blob in (("ca.crt", ca.cert_pem.bytes()), ("ca.key", ca.private_key_pem.bytes())):
        (tmp_path / name).write_bytes(blob)
        files[name] = str(tmp_path / name)
    first = ca.issue_cert("127.0.0.1", host.name, host.ip)
    (tmp_path / "first.crt").write_bytes(first.cert_chain_pems[0].bytes())
    (tmp_path / "first.key").write_bytes(first.private_key_pem.bytes())
    tls = {"vllm_tls_cert_src": str(tmp_path / "first.crt"), "vllm_tls_key_src": str(tmp_path / "first.key"),
           "vllm_tls_ca_src": files["ca.crt"]}
    proc = playbook(os.path.join(ROOT, "playbooks", "deploy.yml"), tls, limit=host.name)
    assert proc.returncode == 0, proc.stdout[-3000:]
    yield host, ca, files, tls, tmp_path
    playbook(os.path.join(ROOT, "playbooks", "deploy.yml"), limit=host.name)


def served_der(host, port):
    import ssl

    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host.ip, port), timeout=5))


def test_rotate_certs_refuses_a_mismatched_pair_and_keeps_serving_the_old(tls_host):
    import trustme

    host, ca, files, tls, tmp = tls_host
    other = trustme.CA().issue_cert("127.0.0.1", host.name)
    mine = ca.issue_cert("127.0.0.1", host.name)
    (tmp / "bad.crt").write_bytes(mine.cert_chain_pems[0].bytes())
    (tmp / "bad.key").write_bytes(other.private_key_pem.bytes())  # not this certificate's key
    served = served_der(host, 8001)
    proc = playbook(os.path.join(RUNBOOKS, "rotate_certs.yml"),
                    dict(tls, cert_src=str(tmp / "bad.crt"), key_src=str(tmp / "bad.key"),
                         ca_cert_src=files["ca.crt"]), limit=host.name)
    assert proc.returncode != 0
    assert "the key does not match the certificate" in proc.stdout and "nothing was swapped" in proc.stdout
    assert served_der(host, 8001) == served


def test_rotate_certs_serves_the_new_certificate_without_a_restart(tls_host):
    host, ca, files, tls, tmp = tls_host
    pid = host.container_state("vllm-opt-small")["Pid"]
    before = served_der(host, 8001)
    proc = playbook(os.path.join(RUNBOOKS, "rotate_certs.yml"),
                    dict(tls, ca_cert_src=files["ca.crt"], ca_key_src=files["ca.key"],
                         required_names=[host.name, "127.0.0.1"]), limit=host.name)
    assert proc.returncode == 0, proc.stdout[-3000:]
    new = host.read("/etc/vllm/tls/server.crt")
    import ssl

    new_der = ssl.PEM_cert_to_DER_cert(new)
    assert new_der != before
    assert served_der(host, 8001) == new_der and served_der(host, 8002) == new_der
    assert host.container_state("vllm-opt-small")["Pid"] == pid  # --enable-ssl-refresh: no restart
    assert "without a restart" in proc.stdout
    assert host.sh("ls /etc/vllm/tls/ | grep -c '^server.crt.*\\.bak$'").stdout.strip() == "1"
    assert "PRIVATE KEY" not in proc.stdout
