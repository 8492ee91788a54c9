"""vllm_serve's run end to end with a fake backend, a faked NVML snapshot and a fake /proc: the plan is executed
only outside check mode, the results keep their keys, and GPUs that other workloads hold are refused (share_gpus
lets the instance start beside them)."""

import os

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _files, _nvml, _vllm_serve_manager
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_backends import Actual
from vllm_serve_fakes import SECRET, Exited, FakeBackend, FakeModule, params, process_dir, snapshot_of


@pytest.fixture
def proc(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    process_dir(proc, 4242, "python3", ["python3", "train.py", "--api-key", "sk-trainer-" + "z" * 30])
    process_dir(proc, 5151, "pt_main_thread", ["vllm", "serve", "qwen"], instance="qwen")
    process_dir(proc, 6161, "pt_main_thread", ["vllm", "serve", "llama"], instance="llama")
    return proc


def run(tmp_path, proc, snapshot, actual, kind="unit", check_mode=False, diff=False, before=None, on_action=None,
        **overrides):
    module = FakeModule(params(tmp_path, **overrides), check_mode=check_mode, diff=diff)
    backends = []

    def backend_for(spec, image, wanted=None):
        backends.append(FakeBackend(spec, image, wanted or {}, kind, actual, before))
        backends[-1].on_action = on_action
        return backends[-1]

    serve = _vllm_serve_manager.VllmServe(module, snapshot=snapshot, proc=str(proc))
    original = _vllm_serve_manager.backend_for
    _vllm_serve_manager.backend_for = backend_for
    try:
        with pytest.raises(Exited) as exited:
            serve.run()
    finally:
        _vllm_serve_manager.backend_for = original
    return exited.value.result, module, backends[0] if backends else None


MISSING = Actual(False, False, False)
RUNNING = Actual(True, True, True)
OTHERS = {0: [{"pid": 4242, "used_memory_mib": 20480}], 1: [{"pid": 5151, "used_memory_mib": 30000}]}


@pytest.mark.parametrize("check_mode", [False, True])
def test_starting_on_gpus_other_workloads_hold_is_refused_naming_each_process_and_the_fix(tmp_path, proc, check_mode):
    result, module, backend = run(tmp_path, proc, snapshot_of(OTHERS), MISSING, check_mode=check_mode,
                                  gpus=["0", "1"])
    message = result["msg"]
    assert result["failed"] is True and backend.done == []
    assert "GPU 0: PID 4242 (python3, `python3 train.py --api-key ********`; 20480 MiB)" in message
    assert "GPU 1: PID 5151 (pt_main_thread, of vLLM instance qwen, `vllm serve qwen`; 30000 MiB)" in message
    assert "stop that workload, pick other GPUs, or set share_gpus: true" in message
    assert "sk-trainer" not in message
    # Nothing was written before the refusal: the next run still sees the files to change and restarts for them.
    assert not (tmp_path / "etc" / "llama.env").exists()


def test_share_gpus_starts_beside_other_workloads(tmp_path, proc):
    result, module, backend = run(tmp_path, proc, snapshot_of(OTHERS), MISSING, gpus=["0", "1"], share_gpus=True)
    assert "failed" not in result and backend.done == ["create", "start"]
    assert result["changed"] is True and result["interrupts"] is False
    assert not [w for w in module.warnings if "other workloads" in w]


def test_this_instances_own_processes_are_not_another_workload(tmp_path, proc):
    actual = Actual(True, True, False)
    result, module, backend = run(tmp_path, proc, snapshot_of({0: [{"pid": 6161, "used_memory_mib": 70000}]}),
                                  actual)
    assert "failed" not in result and backend.done == ["create", "restart"]
    assert result["interrupts"] is True


def test_a_running_instance_left_running_beside_another_workload_only_warns(tmp_path, proc):
    first, module, backend = run(tmp_path, proc, snapshot_of({}), MISSING)
    assert backend.done == ["create", "start"]
    result, module, backend = run(tmp_path, proc, snapshot_of({0: [{"pid": 4242, "used_memory_mib": None}]}),
                                  RUNNING)
    assert "failed" not in result and backend.done == [] and result["changed"] is False
    assert [w for w in module.warnings if w.startswith("gpus: instance llama runs beside processes of other")] == [
        "gpus: instance llama runs beside processes of other workloads on its GPUs (GPU 0: PID 4242 (python3, "
        "`python3 train.py --api-key ********`; memory unknown)); it was left running. Stop that workload, pick "
        "other GPUs, or set share_gpus: true"]


def test_an_existing_instance_restarted_in_place_beside_another_workload_warns_and_restarts(tmp_path, proc):
    # A runbook's restart after a workload arrived on the instance's GPU: refusing it would leave the instance down.
    result, module, backend = run(tmp_path, proc, snapshot_of({0: [{"pid": 4242, "used_memory_mib": 1}]}), RUNNING,
                                  state="restarted")
    assert "failed" not in result and backend.done == ["restart"]
    assert any(w.startswith("gpus: instance llama is (re)started beside processes of other workloads") and
               "PID 4242" in w for w in module.warnings)


def test_a_process_gone_from_proc_is_still_named_by_its_pid(tmp_path, proc):
    result, module, backend = run(tmp_path, proc, snapshot_of({0: [{"pid": 999, "used_memory_mib": 5}]}), MISSING)
    assert "GPU 0: PID 999 (a process /proc does not show; 5 MiB)" in result["msg"]


def test_without_nvml_the_gpu_checks_are_skipped_with_a_warning(tmp_path, proc):
    def snapshot(timeout):
        raise _nvml.NvmlError("the nvidia-ml-py library (import pynvml) is not installed on this host")
    result, module, backend = run(tmp_path, proc, snapshot, MISSING)
    assert "failed" not in result and backend.done == ["create", "start"] and result["memory_plan"] is None
    assert "GPU checks skipped: the nvidia-ml-py library (import pynvml) is not installed on this host" in \
        module.warnings


@pytest.mark.parametrize("overrides", [{"check_gpus": False}, {"state": "stopped"}])
def test_no_snapshot_without_check_gpus_or_to_stop(tmp_path, proc, overrides):
    def snapshot(timeout):
        raise AssertionError("NVML read")
    result, module, backend = run(tmp_path, proc, snapshot, RUNNING, **overrides)
    assert "failed" not in result
    # The secrets files are new: a running instance reads them at start, so it restarts unless it is to stop.
    assert backend.done == (["stop"] if overrides.get("state") == "stopped" else ["restart"])


def test_check_mode_plans_but_executes_nothing_and_tells_the_interruption(tmp_path, proc):
    result, module, backend = run(tmp_path, proc, snapshot_of({}), Actual(True, True, False), kind="docker",
                                  check_mode=True)
    assert backend.done == [] and result["changed"] is True and result["interrupts"] is True
    assert not (tmp_path / "etc" / "secrets" / "llama" / "serve-config.yaml").exists()
    assert set(result) == {"changed", "instance", "flag_catalog", "served_model", "interrupts", "unit", "command",
                           "gpus", "config_hash", "memory_plan", "watchdog_hold"}
    assert result["watchdog_hold"] is None
    assert result["memory_plan"]["gpus"][0]["index"] == 0


@pytest.mark.parametrize("actual, state", [(Actual(True, False, True), "started"), (RUNNING, "stopped")])
def test_check_mode_reports_a_units_start_or_stop_and_does_neither(tmp_path, proc, actual, state):
    # The files exist already (a real run first), so only the start or the stop is left to report.
    run(tmp_path, proc, snapshot_of({}), actual, state=state)
    result, module, backend = run(tmp_path, proc, snapshot_of({}), actual, state=state, check_mode=True)
    assert backend.done == [] and result["changed"] is True
    unchanged, module, backend = run(tmp_path, proc, snapshot_of({}), RUNNING, check_mode=True)
    assert backend.done == [] and unchanged["changed"] is False


def test_diff_mode_names_the_fields_that_differ(tmp_path, proc):
    before = {"image": "vllm/vllm-openai:v0.32.0", "args": [], "gpus": ["0"], "env": {}, "backend": "systemd"}
    result, module, backend = run(tmp_path, proc, snapshot_of({}), Actual(True, True, False), diff=True,
                                  before=before)
    assert result["diff"]["before"] == before
    assert result["changed_fields"] == ["args", "env", "image"]
    assert backend.done == ["create", "restart"]


def test_absent_removes_an_existing_instance_and_its_files(tmp_path, proc):
    first, module, backend = run(tmp_path, proc, snapshot_of({}), MISSING)
    assert (tmp_path / "etc" / "secrets" / "llama" / "serve-config.yaml").exists()
    result, module, backend = run(tmp_path, proc, snapshot_of({}), RUNNING, state="absent", diff=True,
                                  before={"image": "x"})
    assert backend.done == ["remove"] and result["changed"] is True
    assert result["changed_fields"] == ["image"]
    assert not (tmp_path / "etc" / "secrets" / "llama").exists()


def test_a_long_command_line_is_redacted_then_cut(tmp_path):
    from ansible_collections.inferops.vllm.plugins.module_utils import _instance_procs
    process_dir(tmp_path, 77, "python3", ["python3", "-c", "x" * 200, "--api-key", SECRET])
    described = _instance_procs.describe({"pid": 77, "used_memory_mib": 3}, proc=str(tmp_path))
    assert len(described["command"]) == _instance_procs.COMMAND_WIDTH and described["command"].endswith("...")
    assert described["command"].startswith("python3 -c xxx")
    assert described == dict(described, pid=77, name="python3", instance=None, used_memory_mib=3)
    process_dir(tmp_path, 78, "python3", ["python3", "--api-key", SECRET], instance="other")
    assert _instance_procs.describe({"pid": 78}, proc=str(tmp_path)) == {
        "pid": 78, "name": "python3", "command": "python3 --api-key ********", "instance": "other",
        "used_memory_mib": None}


# ---- the watchdog hold ----

STOPPED = Actual(True, False, True)


def hold_dir(tmp_path):
    directory = tmp_path / "run-watchdog"
    directory.mkdir()
    return directory


def test_the_watchdog_is_held_off_before_the_first_action_and_the_hold_is_left_for_the_health_gate(tmp_path, proc):
    directory = hold_dir(tmp_path)
    seen = []
    result, _module, backend = run(tmp_path, proc, snapshot_of({}), RUNNING, state="restarted", watchdog_hold=330,
                                   on_action=lambda name: seen.append((directory / "hold-llama").read_text()))
    assert backend.done == ["restart"] and seen == ["330\n"]
    assert result["watchdog_hold"] == str(directory / "hold-llama")
    assert (directory / "hold-llama").read_text() == "330\n"


def test_an_earlier_hold_with_the_same_content_is_renewed(tmp_path, proc):
    directory = hold_dir(tmp_path)
    (directory / "hold-llama").write_text("330\n")
    os.utime(str(directory / "hold-llama"), (1000, 1000))
    run(tmp_path, proc, snapshot_of({}), STOPPED, watchdog_hold=330)
    assert os.stat(str(directory / "hold-llama")).st_mtime > 1000


@pytest.mark.parametrize("case", ["nothing to do", "check mode", "no watchdog", "not asked"])
def test_no_hold_is_written_when_nothing_acts_on_a_watched_instance(tmp_path, proc, case):
    directory = tmp_path / "run-watchdog"
    if case != "no watchdog":
        directory.mkdir()
    actual = RUNNING if case == "nothing to do" else STOPPED
    if case == "nothing to do":
        run(tmp_path, proc, snapshot_of({}), MISSING)  # writes its files: the next run finds all as wanted
    result, _module, backend = run(tmp_path, proc, snapshot_of({}), actual, check_mode=case == "check mode",
                                   watchdog_hold=0 if case == "not asked" else 330)
    assert result["watchdog_hold"] is None and "failed" not in result
    assert not (directory / "hold-llama").exists()
    assert backend.done == ([] if case in ("nothing to do", "check mode") else ["start"])


def test_a_failed_action_removes_the_hold_so_the_watchdog_takes_over(tmp_path, proc):
    directory = hold_dir(tmp_path)

    def fail(name):
        raise _files.FileError("start of llama: refused by the fake")

    result, _module, _backend = run(tmp_path, proc, snapshot_of({}), STOPPED, watchdog_hold=330, on_action=fail)
    assert result["failed"] is True and "refused by the fake" in result["msg"]
    assert not (directory / "hold-llama").exists() and result.get("watchdog_hold") is None


def test_removing_an_instance_holds_the_watchdog_off_it_too(tmp_path, proc):
    directory = hold_dir(tmp_path)
    result, _module, backend = run(tmp_path, proc, snapshot_of({}), RUNNING, state="absent", watchdog_hold=60)
    assert backend.done and result["watchdog_hold"] == str(directory / "hold-llama")


def test_a_hostile_hold_is_refused_before_anything_is_touched(tmp_path, proc):
    directory = hold_dir(tmp_path)
    for value in (-1, 86401):
        result, _module, backend = run(tmp_path, proc, snapshot_of({}), STOPPED, watchdog_hold=value)
        assert result["failed"] is True and "watchdog_hold" in result["msg"] and backend is None
    result, _module, backend = run(tmp_path, proc, snapshot_of({}), STOPPED, watchdog_hold=5,
                                   watchdog_hold_dir=str(directory) + "\nExecStart=/bin/sh")
    assert result["failed"] is True and "watchdog_hold_dir" in result["msg"] and backend is None
