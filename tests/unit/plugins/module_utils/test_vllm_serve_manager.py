"""vllm_serve's run end to end with a fake backend, a faked NVML snapshot and a fake /proc: the plan is executed
only outside check mode and the results keep their keys."""

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _nvml, _vllm_serve_manager
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_backends import Actual
from vllm_serve_fakes import Exited, FakeBackend, FakeModule, params, process_dir, snapshot_of


@pytest.fixture
def proc(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    process_dir(proc, 4242, "python3", ["python3", "train.py", "--api-key", "sk-trainer-" + "z" * 30])
    process_dir(proc, 5151, "pt_main_thread", ["vllm", "serve", "qwen"], instance="qwen")
    process_dir(proc, 6161, "pt_main_thread", ["vllm", "serve", "llama"], instance="llama")
    return proc


def run(tmp_path, proc, snapshot, actual, kind="unit", check_mode=False, diff=False, before=None, **overrides):
    module = FakeModule(params(tmp_path, **overrides), check_mode=check_mode, diff=diff)
    backends = []

    def backend_for(spec, image, wanted=None):
        backends.append(FakeBackend(spec, image, wanted or {}, kind, actual, before))
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
                           "gpus", "config_hash", "memory_plan"}
    assert result["memory_plan"]["gpus"][0]["index"] == 0


def test_a_units_start_in_check_mode_is_reported_as_before_plans(tmp_path, proc):
    # Kept as it was: check mode reports a unit's rewrite or a restart asked for, not the start of a stopped unit.
    result, module, backend = run(tmp_path, proc, snapshot_of({}), Actual(True, False, True), check_mode=True)
    assert backend.done == [] and result["interrupts"] is False
    # The secrets files are new here, which is a change of their own.
    assert result["changed"] is True


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
