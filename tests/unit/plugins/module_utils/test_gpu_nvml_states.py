"""NVML states real hosts show, through the real nvidia-ml-py module with its calls answered by FakeNvml.

Each state names what it is on real hardware: NOT_SUPPORTED readings on vGPU and some SKUs, a process list NVML will
not give (NO_PERMISSION for an unprivileged user under MIG or in a container), NVML_VALUE_NOT_AVAILABLE as a
process's memory, MIG enabled now or pending a reset, pages pending retirement and rows pending remapping, and GPUs
whose NVML index order is not their PCI order. A state gpu_select cannot judge is a reason, never a guess.
"""

import types

import pynvml
import pytest
from test_gpu_parsers_hostile import TOTAL, FakeNvml, nvml_error, uuid_of

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select as gs
from ansible_collections.inferops.vllm.plugins.module_utils import _nvml


def proc(pid, used):
    return types.SimpleNamespace(pid=pid, usedGpuMemory=used)


def select(obs, **constraints):
    return gs.select(obs, gs.Constraints(**constraints))


def reasons(obs, index):
    return [d for d in obs["devices"] if d.get("index") == index][0]["reasons"]


# ---- process memory NVML cannot give ----

@pytest.mark.parametrize("used", [pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value, (1 << 64) - 1, None])
def test_a_process_memory_nvml_does_not_have_is_none_not_16_exbibytes(monkeypatch, used):
    # NVML_VALUE_NOT_AVAILABLE (2**64-1): nvidia-ml-py >= 11 passes None, older bindings the raw number.
    FakeNvml(monkeypatch, count=1, answers={("nvmlDeviceGetComputeRunningProcesses", 0): [proc(4242, used)]})
    device = _nvml.snapshot(timeout=5)["devices"][0]
    assert device["processes"] == [{"pid": 4242, "used_memory_mib": None}]


def test_a_real_process_memory_is_read_in_mib(monkeypatch):
    FakeNvml(monkeypatch, count=1, answers={("nvmlDeviceGetComputeRunningProcesses", 0): [proc(7, 2296 * _nvml.MIB)]})
    assert _nvml.snapshot(timeout=5)["devices"][0]["processes"] == [{"pid": 7, "used_memory_mib": 2296}]


# ---- a process list NVML will not give ----

@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NO_PERMISSION, pynvml.NVML_ERROR_NOT_SUPPORTED])
def test_processes_nvml_will_not_list_leave_the_gpu_selectable_but_never_proven_idle(monkeypatch, code):
    # Every GPU of a container that may not list processes: the GPUs answer everything else.
    FakeNvml(monkeypatch, count=2, faults={("nvmlDeviceGetComputeRunningProcesses", i): nvml_error(code)
                                           for i in range(2)})
    obs = gs.read_nvml(5, with_topology=False)
    assert all("error" not in d and d["processes"] == [] for d in obs["devices"])
    assert obs["devices"][0]["processes_error"].startswith("NVML error %d: " % code)
    assert select(obs)["gpus"] == [0]  # GPU 1 holds 1000 MiB more
    with pytest.raises(gs.SelectionError) as err:
        select(obs, require_idle=True)
    assert ("GPU 0: its compute processes could not be listed (NVML error %d: " % code) in str(err.value)
    assert "so idleness cannot be proven" in str(err.value)


def test_other_nvml_users_still_see_such_a_gpu_as_unreadable_by_default(monkeypatch):
    # vllm_serve, vllm_health and the reclaim runbook read snapshot() as before.
    FakeNvml(monkeypatch, count=1, faults={("nvmlDeviceGetComputeRunningProcesses", 0):
                                           nvml_error(pynvml.NVML_ERROR_NO_PERMISSION)})
    assert "error" in _nvml.snapshot(timeout=5)["devices"][0]


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_UNKNOWN, pynvml.NVML_ERROR_TIMEOUT, pynvml.NVML_ERROR_GPU_IS_LOST])
def test_a_process_list_that_fails_otherwise_still_makes_the_gpu_unreadable(monkeypatch, code):
    FakeNvml(monkeypatch, count=2, faults={("nvmlDeviceGetComputeRunningProcesses", 0): nvml_error(code)})
    obs = gs.read_nvml(5, with_topology=False)
    assert obs["devices"][0]["error"].startswith("NVML error %d" % code)
    assert select(obs)["gpus"] == [1]


# ---- readings some SKUs and vGPU do not support ----

def test_unsupported_utilization_fails_max_utilization_instead_of_passing_as_idle(monkeypatch):
    # GPU 0 is the emptiest, but cannot say how busy it is (vGPU, MIG): were that read as 0%, it would be chosen.
    FakeNvml(monkeypatch, count=2, faults={("nvmlDeviceGetUtilizationRates", 0):
                                           nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)})
    obs = gs.read_nvml(5, with_topology=False)
    assert obs["devices"][0]["utilization_gpu"] is None
    assert select(obs, max_utilization=50)["gpus"] == [1]
    assert reasons(obs, 0) == ["utilization unknown (the GPU does not report it), so max_utilization 50% cannot "
                               "be checked"]
    assert select(obs)["gpus"] == [0]  # without max_utilization it is not needed


def test_an_unknown_utilization_ranks_after_a_known_one_at_equal_free_memory():
    devices = [dict(index=i, uuid=uuid_of(i), memory_free_mib=TOTAL, utilization_gpu=util, processes=[])
               for i, util in ((0, 5), (1, None), (2, 0))]
    obs = {"backend": "nvml", "devices": devices, "topology": None, "processes_visible": True}
    assert select(obs, count=3, prefer_topology=False)["gpus"] == [2, 0, 1]


@pytest.mark.parametrize("call", ["nvmlDeviceGetTemperature", "nvmlDeviceGetTotalEccErrors",
                                  "nvmlDeviceGetPersistenceMode", "nvmlDeviceGetRetiredPagesPendingStatus",
                                  "nvmlDeviceGetRemappedRows"])
def test_other_unsupported_readings_are_unknown_and_do_not_block_the_gpu(monkeypatch, call):
    FakeNvml(monkeypatch, count=2, faults={(call, 0): nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)})
    obs = gs.read_nvml(5, with_topology=False)
    assert "error" not in obs["devices"][0] and select(obs)["gpus"] == [0]


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NO_PERMISSION, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                                  pynvml.NVML_ERROR_UNKNOWN])
def test_retirement_readings_nvml_refuses_are_unknown_not_a_lost_gpu(monkeypatch, code):
    faults = {("nvmlDeviceGetRetiredPagesPendingStatus", 0): nvml_error(code),
              ("nvmlDeviceGetRemappedRows", 0): nvml_error(code)}
    FakeNvml(monkeypatch, count=1, faults=faults)
    device = gs.read_nvml(5, with_topology=False)["devices"][0]
    assert (device["retired_pages_pending"], device["remapped_rows_pending"], device["remapped_rows_failure"]) == (
        None, None, None)


def test_persistence_mode_off_is_reported_and_not_a_reason(monkeypatch):
    FakeNvml(monkeypatch, count=1, answers={("nvmlDeviceGetPersistenceMode", 0): 0})
    obs = gs.read_nvml(5, with_topology=False)
    assert obs["devices"][0]["persistence_mode"] is False and select(obs)["gpus"] == [0]


# ---- memory awaiting retirement ----

@pytest.mark.parametrize("answers, reason", [
    ({("nvmlDeviceGetRetiredPagesPendingStatus", 0): 1},
     "memory pages are pending retirement (reset the GPU to retire them)"),
    ({("nvmlDeviceGetRemappedRows", 0): (0, 1, 1, 0)},
     "a memory row remapping is pending (reset the GPU to apply it)"),
    ({("nvmlDeviceGetRemappedRows", 0): (0, 8, 0, 1)},
     "a memory row remapping failed (the GPU needs service)"),
], ids=["pages pending retirement (pre-Ampere)", "row remap pending (Ampere+)", "row remap failed"])
def test_a_gpu_whose_memory_awaits_retirement_is_not_chosen(monkeypatch, answers, reason):
    FakeNvml(monkeypatch, count=2, answers=answers)
    obs = gs.read_nvml(5, with_topology=False)
    assert select(obs)["gpus"] == [1]
    assert reasons(obs, 0) == [reason]
    # The same switch as for ECC errors turns it off.
    assert select(gs.read_nvml(5, with_topology=False), skip_ecc_errors=False)["gpus"] == [0]


# ---- MIG ----

def raising(code):
    """An NVML answer that is the error `code`, whatever it is asked."""
    def answer(*args):
        raise pynvml.NVMLError(code)
    return answer


def mig_answers(parent, slots):
    """A MIG-enabled GPU `parent` with MIG devices in `slots` ({slot: used MiB})."""
    def mig_device(handle, slot):
        if slot not in slots:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return types.SimpleNamespace(index="%d/%d" % (parent, slot))

    answers = {("nvmlDeviceGetMigMode", parent): [1, 1], ("nvmlDeviceGetMaxMigDeviceCount", parent): 7,
               ("nvmlDeviceGetMigDeviceHandleByIndex", parent): mig_device}
    for slot, used in slots.items():
        name = "%d/%d" % (parent, slot)
        answers[("nvmlDeviceGetMemoryInfo", name)] = types.SimpleNamespace(
            total=20096 * _nvml.MIB, used=used * _nvml.MIB, free=(20096 - used) * _nvml.MIB)
        answers[("nvmlDeviceGetUUID", name)] = "MIG-%08d-0000-0000-0000-00000000000%d" % (parent, slot)
        answers[("nvmlDeviceGetName", name)] = "NVIDIA H100 80GB HBM3 MIG 2g.20gb"
        answers[("nvmlDeviceGetComputeRunningProcesses", name)] = []
    return answers


def test_a_mig_enabled_gpu_is_never_handed_out_whole_and_its_mig_devices_are(monkeypatch):
    answers = mig_answers(0, {0: 17, 3: 9000})
    answers[("nvmlDeviceGetUtilizationRates", 0)] = raising(pynvml.NVML_ERROR_NOT_SUPPORTED)  # what NVML says under MIG
    FakeNvml(monkeypatch, count=2, answers=answers)
    obs = gs.read_nvml(5, with_topology=False)
    parent = obs["devices"][0]
    assert parent["mig_enabled"] and [m["uuid"][-1] for m in parent["mig_devices"]] == ["0", "3"]
    assert select(obs)["gpus"] == [1] and reasons(obs, 0) == ["MIG enabled (set mig: use to select its MIG devices)"]
    obs = gs.read_nvml(5, with_topology=False)
    result = select(obs, mig="use", min_free_memory_mib=15000, exclude=["1"])
    assert result["ids"] == [parent["mig_devices"][0]["uuid"]] and result["gpus"] == [0]


def test_a_gpu_with_mig_enabled_pending_a_reset_is_not_handed_out_whole(monkeypatch):
    # `nvidia-smi -i 0 -mig 1` on a GPU in use: MIG takes effect at its next reset, and a whole-GPU workload with it.
    FakeNvml(monkeypatch, count=2, answers={("nvmlDeviceGetMigMode", 0): [0, 1]})
    obs = gs.read_nvml(5, with_topology=False)
    assert obs["devices"][0]["mig_enabled"] is False and obs["devices"][0]["mig_enabled_pending"] is True
    for mig in ("skip", "use"):
        obs = gs.read_nvml(5, with_topology=False)
        assert select(obs, mig=mig)["gpus"] == [1]
        assert reasons(obs, 0) == ["MIG mode is enabled pending a GPU reset, so it is not handed out whole"]


def test_mig_being_disabled_pending_a_reset_is_still_mig(monkeypatch):
    answers = mig_answers(0, {})
    answers[("nvmlDeviceGetMigMode", 0)] = [1, 0]
    FakeNvml(monkeypatch, count=2, answers=answers)
    obs = gs.read_nvml(5, with_topology=False)
    assert select(obs)["gpus"] == [1] and obs["devices"][0]["mig_enabled"]


def test_a_mig_device_whose_processes_cannot_be_listed_is_not_proven_idle(monkeypatch):
    answers = mig_answers(0, {0: 17})
    answers[("nvmlDeviceGetComputeRunningProcesses", "0/0")] = raising(pynvml.NVML_ERROR_NO_PERMISSION)
    FakeNvml(monkeypatch, count=1, answers=answers)
    obs = gs.read_nvml(5, with_topology=False)
    assert select(obs, mig="use")["gpus"] == [0]
    with pytest.raises(gs.SelectionError, match="its compute processes could not be listed"):
        select(gs.read_nvml(5, with_topology=False), mig="use", require_idle=True)


# ---- one GPU failing while the others answer, on an 8-GPU host ----

@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_TIMEOUT, pynvml.NVML_ERROR_UNKNOWN])
@pytest.mark.parametrize("call", ["nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUUID",
                                  "nvmlDeviceGetMigMode"])
def test_one_failing_gpu_of_eight_is_explained_and_the_seven_others_stay(monkeypatch, call, code):
    FakeNvml(monkeypatch, count=8, faults={(call, 7): nvml_error(code)})
    obs = gs.read_nvml(5, with_topology=True)
    result = select(obs, count=7)
    assert sorted(result["gpus"]) == list(range(7))
    assert reasons(obs, 7) == ["unreadable: NVML error %d: %s" % (code, pynvml.NVMLError(code))]


# ---- NVML indices, PCI order and CUDA's order ----

def test_gpus_are_named_by_their_nvml_index_whatever_the_pci_order(monkeypatch):
    # Bus ids in the reverse order of the indices: the result names indices, never list positions or bus order.
    FakeNvml(monkeypatch, count=4, answers=dict((("nvmlDeviceGetPciInfo", i), types.SimpleNamespace(
        busId="00000000:%02X:00.0" % (0xF0 - i))) for i in range(4)))
    obs = gs.read_nvml(5, with_topology=False)
    obs["devices"].reverse()
    assert select(obs, count=2, prefer_topology=False)["gpus"] == [0, 1]


def test_mixed_gpu_models_warn_that_cuda_may_number_them_otherwise():
    devices = [{"index": 0, "uuid": uuid_of(0), "name": "NVIDIA GeForce RTX 4090"},
               {"index": 1, "uuid": uuid_of(1), "name": "NVIDIA GeForce RTX 3060"},
               {"index": 2, "error": "NVML error 15: GPU is lost"}]
    warning = gs.cuda_order_warning(devices, "index")
    assert warning.startswith("this host mixes GPU models (NVIDIA GeForce RTX 3060, NVIDIA GeForce RTX 4090)")
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in warning and "id_type: uuid" in warning
    assert gs.cuda_order_warning(devices, "uuid") is None
    assert gs.cuda_order_warning([devices[0], dict(devices[0], index=1, uuid=uuid_of(1))], "index") is None


# ---- no GPU at all ----

def test_nvml_listing_no_gpu_says_so(monkeypatch):
    FakeNvml(monkeypatch, count=0)
    obs = gs.read_nvml(5, with_topology=True)
    with pytest.raises(gs.SelectionError) as err:
        select(obs)
    assert str(err.value) == "1 GPU(s) requested, but the nvml backend found no GPU on this host"
