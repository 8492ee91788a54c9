"""The watchdog's decisions, driven by scripted probe verdicts (the shape _vllm_health.Probe returns): when an
instance leaves the rotation, when it is restarted, when the watchdog gives up, what it tells HAProxy's agent check,
what it writes, and which configurations it refuses. The real probes, restarts and HAProxy are exercised on lab hosts
(tests/integration/test_watchdog_lab.py) and against the real HAProxy (tests/gateway)."""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _watchdog as wd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
KEY = "sk-watchdog-test-0123456789abcdef"
SETTINGS = dict(wd.load_config(json.dumps({"instances": []})), failures_before_restart=2, max_restarts=3,
                restart_window=600.0)
INSTANCE = {"name": "qwen", "backend": "docker", "port": 8000, "tls": False, "model": "Qwen/Qwen3-0.6B"}


def runtime(running=True, restarting=False, restart_count=0, exists=True, runtime_status="running"):
    return {"type": "docker", "name": "vllm-qwen", "exists": exists, "running": running, "restarting": restarting,
            "restart_count": restart_count, "status": runtime_status}


def verdict(status, code=None, message="", **state):
    return {"status": status, "runtime": runtime(**state), "failed_checks": [] if status == "healthy" else ["x"],
            "diagnosis": [{"code": code, "message": message, "evidence": "", "runbook": ""}] if code else []}


HEALTHY = verdict("healthy")
HUNG = verdict("unhealthy", "inference_hang", "A one-token completion got no answer while /health answered 200")


class FakeHost(object):
    """Scripted verdicts; records what the watchdog asked for."""

    def __init__(self, probes, ready=(HEALTHY, None), restart_error=None):
        self.probes = list(probes)
        self.ready = ready
        self.restart_error = restart_error
        self.calls = []
        self.secrets = {KEY}
        self.hold = False

    def held(self, instance):
        return self.hold

    def probe(self, instance):
        self.calls.append("probe")
        return self.probes.pop(0)

    def restart(self, instance):
        self.calls.append("restart")
        return self.restart_error

    def stop(self, instance):
        self.calls.append("stop")

    def diagnose(self, instance):
        self.calls.append("diagnose")
        return "/var/lib/inferops/diagnostics/watchdog/qwen-20261206T120000Z"

    def wait_ready(self, instance):
        self.calls.append("wait_ready")
        return self.ready


class Clock(object):
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


def watch(host, clock=None, saved=None, **overrides):
    lines = []
    w = wd.Watch(INSTANCE, dict(SETTINGS, **overrides), host, lambda prio, line: lines.append((prio, line)),
                 clock=clock or Clock(), saved=saved)
    return w, lines


def run(w, steps, clock=None, every=5.0):
    for _step in range(steps):
        w.step()
        if clock:
            clock.now += every


def test_before_any_probe_the_agent_leaves_the_verdict_to_the_health_checks():
    w, _lines = watch(FakeHost([]))
    assert w.agent_answer() == "up"


def test_a_hang_takes_the_instance_out_at_the_first_failure_and_restarts_it_at_the_second():
    host = FakeHost([HEALTHY, HUNG, HUNG])
    w, lines = watch(host)
    w.step()
    assert w.agent_answer() == "up"
    w.step()
    answer = w.agent_answer()
    assert answer.startswith("down #watchdog failing: unhealthy (inference_hang")
    assert "restart" not in host.calls
    assert [p for p, _line in lines] == [wd.WARNING] and "out of rotation" in lines[0][1]
    w.step()
    assert host.calls[-4:] == ["probe", "diagnose", "restart", "wait_ready"]
    assert w.agent_answer() == "up"
    snap = w.snapshot()
    assert snap["restarts_total"] == 1 and snap["state"] == "serving" and snap["failures_in_a_row"] == 0
    said = " | ".join(line for _prio, line in lines)
    assert "restarting (1 of at most 3 in 600 s)" in said and "inference_hang" in said
    assert "qwen-20261206T120000Z" in said and "serves again" in said


def test_a_failed_restart_is_said_and_the_instance_stays_out():
    host = FakeHost([HUNG, HUNG], restart_error="`docker restart -t 30 vllm-qwen` exited 1: no such container")
    w, lines = watch(host)
    run(w, 2)
    assert w.agent_answer().startswith("down #")
    assert any(p == wd.ERR and "the restart failed" in line for p, line in lines)
    assert "wait_ready" not in host.calls


def test_an_instance_that_does_not_come_back_stays_out_with_the_reason():
    host = FakeHost([HUNG, HUNG], ready=(verdict("starting"), "not ready after 900 s (start_period)"))
    w, lines = watch(host)
    run(w, 2)
    assert w.snapshot()["state"] == "failing" and not w.snapshot()["in_rotation"]
    assert any("not serving" in line and "start_period" in line for _prio, line in lines)


def test_a_crash_at_every_start_ends_after_the_limit_the_runtime_is_stopped_and_the_journal_says_why():
    # Docker's restart policy restarts it: the count grows at every probe; the watchdog never restarts it itself.
    storm = [verdict("down", "cuda_oom", "CUDA out of memory at start-up", running=False, restarting=True,
                     restart_count=n, runtime_status="restarting") for n in range(1, 8)]
    clock = Clock()
    host = FakeHost([HEALTHY] + storm)
    w, lines = watch(host, clock=clock)
    run(w, 5, clock)
    assert "restart" not in host.calls
    assert host.calls.count("stop") == 1
    snap = w.snapshot()
    assert snap["state"] == "gave_up" and not snap["in_rotation"]
    assert "3 restarts in the last 600 s (limit 3)" in snap["reason"] and "cuda_oom" in snap["reason"]
    crit = [line for p, line in lines if p == wd.CRIT]
    assert len(crit) == 1 and "gave up" in crit[0] and "stopped" in crit[0]
    assert w.agent_answer().startswith("down #watchdog gave_up: 3 restarts")
    run(w, 2, clock)
    assert host.calls.count("stop") == 1 and len([1 for p, _line in lines if p == wd.CRIT]) == 1


def test_the_watchdogs_own_restarts_count_and_a_hang_after_each_one_ends_in_giving_up_without_a_stop():
    clock = Clock()
    host = FakeHost([HUNG] * 12)
    w, lines = watch(host, clock=clock)
    run(w, 12, clock)
    assert host.calls.count("restart") == 3 and "stop" not in host.calls
    assert w.snapshot()["state"] == "gave_up"


def test_a_runtime_restart_earlier_in_the_window_does_not_make_a_hang_given_up_a_stop():
    # Docker restarted it once (an engine death), then it hangs after each of the watchdog's restarts.
    clock = Clock()
    died = verdict("starting", restart_count=1)
    host = FakeHost([HEALTHY, died, HEALTHY] + [HUNG] * 8)
    w, _lines = watch(host, clock=clock)
    run(w, 11, clock)
    assert host.calls.count("restart") == 2 and w.snapshot()["state"] == "gave_up"
    assert "stop" not in host.calls and "stopped" not in w.snapshot()["reason"]


def test_restarts_older_than_the_window_no_longer_count():
    clock = Clock()
    host = FakeHost([HUNG] * 6 + [HUNG] * 2)
    w, _lines = watch(host, clock=clock)
    run(w, 6, clock)
    assert host.calls.count("restart") == 3
    clock.now += 600
    run(w, 2, clock)
    assert host.calls.count("restart") == 4 and w.snapshot()["state"] == "serving"


def test_a_given_up_instance_comes_back_once_it_serves_and_may_be_restarted_again():
    clock = Clock()
    host = FakeHost([HUNG] * 8 + [HEALTHY, HUNG, HUNG])
    w, lines = watch(host, clock=clock)
    run(w, 9, clock)
    assert w.snapshot()["state"] == "serving" and w.agent_answer() == "up"
    assert any("restarts allowed again" in line for _prio, line in lines)
    run(w, 2, clock)
    assert host.calls.count("restart") == 4


def test_a_stopped_instance_is_never_started_and_said_once():
    stopped = verdict("down", running=False, runtime_status="exited")
    host = FakeHost([HEALTHY, stopped, stopped, stopped])
    w, lines = watch(host)
    run(w, 4)
    assert "restart" not in host.calls and w.snapshot()["state"] == "stopped"
    assert len([line for _prio, line in lines if "does not start a stopped instance" in line]) == 1


def test_a_starting_instance_is_out_but_left_to_start():
    host = FakeHost([verdict("starting")] * 4)
    w, _lines = watch(host)
    run(w, 4)
    assert "restart" not in host.calls and w.agent_answer().startswith("down #watchdog starting")


@pytest.mark.parametrize("code", ["api_key_rejected", "model_not_served", "illegal_instruction"])
def test_a_failure_a_restart_cannot_fix_holds_the_instance_out_without_restarting_it(code):
    host = FakeHost([verdict("unhealthy", code, "refused")] * 4)
    w, lines = watch(host)
    run(w, 4)
    assert "restart" not in host.calls and w.snapshot()["state"] == "misconfigured"
    assert len([line for p, line in lines if p == wd.ERR and "not restarted" in line]) == 1


def test_the_agent_answer_is_one_safe_line_whatever_the_server_said():
    host = FakeHost([verdict("unhealthy", "inference_hang", "evil\r\nup\n#; drain \x00 " + "x" * 500)])
    w, _lines = watch(host)
    w.step()
    answer = w.agent_answer()
    assert answer.startswith("down #") and len(answer) <= 6 + wd.AGENT_REASON_MAX
    assert all(c.isalnum() or c in " _.:()/-#" for c in answer)


def test_state_survives_a_restart_of_the_watchdog_and_has_no_key(tmp_path):
    config = dict(SETTINGS, instances=[INSTANCE], state_file=str(tmp_path / "state.json"),
                  textfile_dir=str(tmp_path))
    host = FakeHost([HUNG] * 2 + [verdict("down", "x", "key %s leaked" % KEY, running=False, restarting=True,
                                          restart_count=c) for c in range(1, 6)])
    first = wd.Watchdog(config, actions=host, out=open(os.devnull, "w"))
    for _step in range(7):
        first.watches["qwen"].step()
    first.save()
    text = (tmp_path / "state.json").read_text()
    assert KEY not in text
    assert json.loads(text)["instances"]["qwen"]["state"] == "gave_up"
    again = wd.Watchdog(config, actions=FakeHost([]), out=open(os.devnull, "w"))
    assert again.watches["qwen"].snapshot()["state"] == "gave_up"
    assert again.watches["qwen"].agent_answer().startswith("down #watchdog gave_up")
    metrics = (tmp_path / wd.METRICS_FILE).read_text()
    assert 'inferops_watchdog_gave_up{vllm_instance="qwen"} 1' in metrics
    assert 'inferops_watchdog_restarts_total{vllm_instance="qwen"} 1' in metrics
    assert 'inferops_watchdog_in_rotation{vllm_instance="qwen"} 0' in metrics


def test_the_journal_never_gets_the_key(tmp_path):
    out = tmp_path / "out"
    config = dict(SETTINGS, instances=[INSTANCE], state_file=str(tmp_path / "state.json"))
    host = FakeHost([verdict("unhealthy", "inference_hang", "Authorization: Bearer %s" % KEY)] * 2)
    with open(str(out), "w") as handle:
        dog = wd.Watchdog(config, actions=host, out=handle)
        dog.watches["qwen"].step()
        dog.watches["qwen"].step()
    text = out.read_text()
    assert "out of rotation" in text and "restarting" in text and KEY not in text
    assert all(line.startswith("<") for line in text.splitlines())


def test_the_agent_port_answers_haproxys_question(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = dict(SETTINGS, instances=[INSTANCE], state_file=str(tmp_path / "s.json"), agent_address="127.0.0.1",
                  agent_port=port)
    dog = wd.Watchdog(config, actions=FakeHost([HUNG]), out=open(os.devnull, "w"))
    server = dog.listen()
    threading.Thread(target=dog.agent, args=(server,), daemon=True).start()

    def ask(question):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(question)
            return conn.makefile("rb").readline()
    try:
        assert ask(b"qwen\n") == b"up\n"
        dog.watches["qwen"].step()
        assert ask(b"qwen\n").startswith(b"down #watchdog failing")
        assert ask(b"other\n") == b"\n"
        assert ask(b"\xff\xfe\n") == b"\n"
    finally:
        dog.stopping.set()


def test_runs_with_a_plain_python3_from_the_installed_module_utils_and_names_a_taken_port(tmp_path):
    # Exactly the files the vllm role installs, under DIR/ansible_collections/...
    tasks = yaml.safe_load(open(os.path.join(ROOT, "roles", "vllm", "tasks", "watchdog.yml")))
    flat = [t for task in tasks for t in [task] + task.get("block", [])]
    files = [t for t in flat if t["name"] == "Install the watchdog's Python files"][0]["loop"]
    root = tmp_path / "lib"
    target = root / "ansible_collections" / "inferops" / "vllm" / "plugins" / "module_utils"
    target.mkdir(parents=True)
    for name in files:
        shutil.copy(os.path.join(os.path.dirname(wd.__file__), name), str(target / name))
    python3 = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "LANG": "C"}
    module = "ansible_collections.inferops.vllm.plugins.module_utils._watchdog"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = tmp_path / "watchdog.json"
        path.write_text(json.dumps({"instances": [INSTANCE], "state_file": str(tmp_path / "s.json"),
                                    "agent_address": "127.0.0.1", "agent_port": port}))
        # -s: no user site-packages; Ansible must not be needed on the host.
        proc = subprocess.run([python3, "-s", "-m", module, "--config", str(path)], env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "cannot listen on 127.0.0.1:%d" % port in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    path.write_text(json.dumps({"instances": [], "interval": "often"}))
    proc = subprocess.run([python3, "-s", "-m", module, "--config", str(path)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "interval" in proc.stderr and "Traceback" not in proc.stderr


def test_host_actions_read_the_first_key_the_instance_accepts_from_its_own_file(tmp_path):
    keys = tmp_path / "serve-config.yaml"
    actions = wd.HostActions(SETTINGS)
    instance = dict(INSTANCE, keys_file=str(keys))
    assert actions.api_key(instance) is None
    keys.write_text(json.dumps({"api-key": [KEY, "sk-second"]}))
    assert actions.api_key(instance) == KEY and actions.secrets == {KEY, "sk-second"}
    for junk in ("not json", "[]", '{"api-key": "one"}', '{"api-key": [1, null]}'):
        keys.write_text(junk)
        assert actions.api_key(instance) is None
    assert actions.api_key(INSTANCE) is None


def test_restart_and_stop_commands_name_the_container_or_the_unit():
    actions = wd.HostActions(dict(SETTINGS, stop_timeout=45))
    assert actions._systemctl_or_docker(INSTANCE, "restart") == ["docker", "restart", "-t", "45", "vllm-qwen"]
    assert actions._systemctl_or_docker(dict(INSTANCE, backend="venv"), "stop") == [
        "systemctl", "stop", "vllm-qwen.service"]


def test_a_good_configuration_gets_its_defaults():
    config = wd.load_config(json.dumps({"instances": [dict(INSTANCE, keys_file="/etc/vllm/secrets/qwen/x")]}))
    assert config["interval"] == 5.0 and config["agent_port"] == 7655 and config["max_restarts"] == 3
    assert config["instances"][0]["tls"] is False


@pytest.mark.parametrize("bad, named", [
    ({"interval": float("nan")}, "interval"),
    ({"interval": 0}, "interval"),
    ({"max_restarts": 10 ** 400}, "max_restarts"),
    ({"max_restarts": 2.5}, "max_restarts"),
    ({"failures_before_restart": True}, "failures_before_restart"),
    ({"agent_port": 70000}, "agent_port"),
    ({"agent_address": "0.0.0.0; rm -rf /"}, "agent_address"),
    ({"state_file": "../../etc/passwd"}, "state_file"),
    ({"state_file": "/var/lib/../../etc/x"}, "state_file"),
    ({"textfile_dir": "/tmp/a\nb"}, "textfile_dir"),
    ({"surprise": 1}, "surprise"),
    ({"instances": {"qwen": {}}}, "instances"),
    ({"instances": [dict(INSTANCE, name="../etc")]}, "instances[0].name"),
    ({"instances": [dict(INSTANCE, port="8000")]}, "instances[0].port"),
    ({"instances": [dict(INSTANCE, backend="podman")]}, "instances[0].backend"),
    ({"instances": [dict(INSTANCE, model="a\nb")]}, "instances[0].model"),
    ({"instances": [dict(INSTANCE, keys_file="relative/key")]}, "instances[0].keys_file"),
    ({"instances": [dict(INSTANCE, api_key="sk-inline")]}, "instances[0]"),
    ({"instances": [dict(INSTANCE, model=None)]}, "model or served_model_name"),
    ({"instances": [INSTANCE, INSTANCE]}, "appears twice"),
    ({"probe_timeout": 600, "interval": 5}, "probe_timeout"),
])
def test_bad_configurations_are_refused_naming_the_field(bad, named):
    with pytest.raises(wd.ConfigError) as caught:
        wd.load_config(json.dumps(dict({"instances": [INSTANCE]}, **bad)))
    assert named in str(caught.value)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=4), max_leaves=20)
FIELDS = st.sampled_from(sorted(set(wd.SETTINGS) | set(wd.PATHS) | {"instances", "agent_address"}))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(FIELDS, JSON, max_size=4), st.lists(st.dictionaries(
    st.sampled_from(["name", "backend", "port", "tls", "model", "served_model_name", "keys_file"]), JSON),
    max_size=3))
def test_any_json_is_either_accepted_whole_or_refused_with_a_config_error(config, instances):
    config = dict(config, instances=instances) if "instances" not in config else config
    try:
        loaded = wd.load_config(json.dumps(config))
    except wd.ConfigError as exc:
        assert str(exc)
        return
    for name, (kind, low, high, _default) in wd.SETTINGS.items():
        assert isinstance(loaded[name], kind) and low <= loaded[name] <= high and math.isfinite(loaded[name])
    for instance in loaded["instances"]:
        assert instance["backend"] in wd.BACKENDS and 1 <= instance["port"] <= 65535


def test_text_that_is_not_a_json_object_is_refused():
    for text in ("", "[]", "null", "{", "\x00"):
        with pytest.raises(wd.ConfigError):
            wd.load_config(text)


def test_a_held_instance_is_not_probed_and_its_failures_start_again_from_zero():
    host = FakeHost([HUNG, HUNG, HUNG])
    w, lines = watch(host)
    w.step()
    host.hold = True
    run(w, 3)
    assert host.calls == ["probe"] and w.agent_answer() == "up" and w.snapshot()["state"] == "held"
    assert len([line for _prio, line in lines if "held by a planned operation" in line]) == 1
    host.hold = False
    w.step()
    assert "restart" not in host.calls
    w.step()
    assert "restart" in host.calls


def test_a_hold_file_lasts_what_it_says_from_its_writing_and_never_past_a_day(tmp_path):
    actions = wd.HostActions(dict(SETTINGS, hold_dir=str(tmp_path)))
    hold = tmp_path / "hold-qwen"
    assert not actions.held(INSTANCE)
    hold.write_text("600\n")
    assert actions.held(INSTANCE)
    os.utime(str(hold), (0, time.time() - 601))
    assert not actions.held(INSTANCE)
    for junk in ("nan", "inf", "-5", "soon", ""):
        hold.write_text(junk)
        assert not actions.held(INSTANCE), junk
    hold.write_text("1e12")
    os.utime(str(hold), (0, time.time() - 86401))
    assert not actions.held(INSTANCE)
    os.utime(str(hold), (0, time.time() - 100))
    assert actions.held(INSTANCE)
