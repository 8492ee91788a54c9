"""Hostile and broken GPU readings (issue 12): what a GPU that fell off the bus makes nvidia-smi and NVML say.

The parsers give a result or their own documented error (BackendError, NvmlError; SelectionError from selection),
never a traceback. A GPU that cannot be read is listed with the reason and never chosen; the others stay selectable.
"""

import copy
import types

import pynvml
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select as gs
from ansible_collections.inferops.vllm.plugins.module_utils import _nvml

TOTAL = 81559
ERROR_MARKERS = ["[Unknown Error]", "[GPU requires reset]", "[GPU is lost]", "ERR!", "[Insufficient Permissions]"]
NUMERIC_FIELDS = ["index", "memory.total", "memory.used", "memory.free", "utilization.gpu", "temperature.gpu",
                  "ecc.errors.uncorrected.volatile.total"]


def uuid_of(index):
    return "GPU-%08d-52b1-4d39-8f8e-9d6a0c1b2e3f" % index


def row(index, used=0, cells=None):
    """One --query-gpu line of a healthy GPU, with `cells` ({field: text}) printed instead."""
    values = {"index": str(index), "uuid": uuid_of(index), "name": "NVIDIA H100 80GB HBM3",
              "pci.bus_id": "00000000:%02X:00.0" % (0x18 + index), "memory.total": str(TOTAL),
              "memory.used": str(used), "memory.free": str(TOTAL - used), "utilization.gpu": "0",
              "temperature.gpu": "31", "ecc.errors.uncorrected.volatile.total": "0", "mig.mode.current": "Disabled",
              "persistence_mode": "Enabled", "mig.mode.pending": "Disabled", "retired_pages.pending": "[N/A]",
              "remapped_rows.pending": "No", "remapped_rows.failure": "No"}
    values.update(cells or {})
    return ", ".join(values[f] for f in gs.SMI_FIELDS)


def row_with(index, field, value, used=0):
    return row(index, used, {field: value})


def observe_smi(text, apps=""):
    devices = gs.parse_smi_gpus(text, "nvidia-smi")
    gs.parse_smi_apps(apps, devices)
    return {"backend": "nvidia-smi", "devices": devices, "topology": None, "processes_visible": True}


def not_eligible(obs):
    return [d for d in obs["devices"] if not d["eligible"]]


# ---- nvidia-smi: a GPU that fell off the bus ----

@pytest.mark.parametrize("marker", ERROR_MARKERS)
@pytest.mark.parametrize("field", gs.SMI_FIELDS)
def test_an_error_marker_in_any_field_makes_that_gpu_unreadable_and_the_others_selectable(field, marker):
    # GPU 0 is the emptiest: were its row trusted, it would be the one chosen.
    obs = observe_smi("\n".join([row_with(0, field, marker), row(1, used=20000), row(2, used=30000)]))
    assert gs.select(obs, gs.Constraints(count=2, prefer_topology=False))["gpus"] == [1, 2]
    [bad] = not_eligible(obs)
    assert bad["reasons"] == ["unreadable: nvidia-smi printed %s %r" % (field, marker)]
    assert "error" in bad and bad["index"] == (None if field == "index" else 0)


@pytest.mark.parametrize("value", ["garbage", "-5", "nan", "inf", "1e3", "12.5", "\u0663", "1_000", "0x10", "9" * 40])
@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_a_non_numeric_value_in_a_numeric_field_makes_that_gpu_unreadable(field, value):
    obs = observe_smi("\n".join([row_with(0, field, value), row(1, used=20000)]))
    assert gs.select(obs, gs.Constraints())["gpus"] == [1]
    [bad] = not_eligible(obs)
    assert bad["reasons"] == ["unreadable: nvidia-smi printed %s %r" % (field, value)]


def test_the_reason_names_every_unreadable_field_and_explain_shows_it():
    reset = "[GPU requires reset]"
    line = row(0, cells={"memory.total": reset, "memory.used": reset, "memory.free": reset})
    obs = observe_smi(line + "\n" + row(1, used=20000))
    with pytest.raises(gs.SelectionError) as err:
        gs.select(obs, gs.Constraints(count=2))
    assert ("GPU 0: unreadable: nvidia-smi printed memory.total '[GPU requires reset]', memory.used "
            "'[GPU requires reset]', memory.free '[GPU requires reset]'") in str(err.value)
    assert "GPU 1: eligible (61559 MiB free)" in str(err.value)


@pytest.mark.parametrize("field", ["name", "pci.bus_id", "utilization.gpu", "temperature.gpu",
                                   "ecc.errors.uncorrected.volatile.total", "mig.mode.current", "persistence_mode"])
@pytest.mark.parametrize("absent", ["[N/A]", "N/A", "[Not Supported]"])
def test_a_value_the_gpu_does_not_have_is_absent_not_an_error(field, absent):
    obs = observe_smi(row_with(0, field, absent))
    assert gs.select(obs, gs.Constraints())["gpus"] == [0]
    assert obs["devices"][0]["memory_free_mib"] == TOTAL


def test_unknown_free_memory_is_a_reason_not_a_guess():
    obs = observe_smi(row_with(0, "memory.free", "[N/A]") + "\n" + row(1, used=20000))
    assert gs.select(obs, gs.Constraints())["gpus"] == [1]
    assert obs["devices"][0]["reasons"] == ["free memory unknown"]


@pytest.mark.parametrize("uuid", ["[N/A]", "", "[Unknown Error]", "not-a-uuid", "GPU-a,GPU-b", "GPU-\"x\""])
def test_a_gpu_without_a_readable_uuid_is_never_chosen_with_id_type_uuid(uuid):
    obs = observe_smi(row_with(0, "uuid", uuid) + "\n" + row(1, used=20000))
    result = gs.select(obs, gs.Constraints(id_type="uuid"))
    assert result["ids"] == [uuid_of(1)] and result["gpus"] == [1]
    if "," in uuid:  # no value nvidia-smi prints holds a comma: the row has a field too many
        assert obs["devices"][0]["reasons"][0].startswith("unreadable: nvidia-smi printed a line with 17 fields")
    else:
        assert obs["devices"][0]["reasons"] == ["unreadable: nvidia-smi printed uuid %r" % uuid]


@pytest.mark.parametrize("identity, reason", [
    ({"index": 0}, "no UUID was read, so it cannot be told apart or named"),
    ({"index": 0, "uuid": None}, "no UUID was read, so it cannot be told apart or named"),
    ({"uuid": uuid_of(0)}, "no index was read, so it cannot be named"),
    ({"index": "0", "uuid": uuid_of(0)}, "no index was read, so it cannot be named"),
])
def test_a_device_without_its_identity_is_unreadable_not_a_key_error(identity, reason):
    # The emptiest GPU: were it trusted, it would be the one chosen.
    devices = [dict(identity, memory_free_mib=TOTAL, processes=[]),
               {"index": 1, "uuid": uuid_of(1), "memory_free_mib": 100, "processes": []}]
    obs = {"backend": "nvml", "devices": devices, "topology": None, "processes_visible": True}
    assert gs.select(obs, gs.Constraints(id_type="uuid"))["ids"] == [uuid_of(1)]
    assert devices[0]["reasons"] == ["unreadable: " + reason]


def test_a_line_nvidia_smi_prints_for_a_lost_gpu_is_listed_not_fatal():
    lost = ("Unable to determine the device handle for GPU 0000:3B:00.0: GPU is lost.  "
            "Reboot the system to recover this GPU")
    obs = observe_smi("\n".join([row(0, used=20000), lost, row(2)]))
    assert gs.select(obs, gs.Constraints(count=2))["gpus"] == [2, 0]
    with pytest.raises(gs.SelectionError) as err:
        gs.select(obs, gs.Constraints(count=3))
    assert "GPU ?: unreadable: nvidia-smi printed a line with 1 fields, expected 16: %r" % lost in str(err.value)


@pytest.mark.parametrize("broken", ["missing", "extra"])
def test_a_row_with_missing_or_extra_columns_is_unreadable_and_the_others_stay(broken):
    cells = row(0).split(", ")
    line = ", ".join(cells[:-2] if broken == "missing" else cells + ["1"])
    obs = observe_smi(line + "\n" + row(1, used=20000))
    assert gs.select(obs, gs.Constraints())["gpus"] == [1]
    [bad] = not_eligible(obs)
    assert bad["index"] is None and bad["reasons"][0].startswith("unreadable: nvidia-smi printed a line with")


def test_exclude_cannot_name_a_gpu_whose_index_was_not_read():
    obs = observe_smi(row_with(0, "index", "[Unknown Error]") + "\n" + row(1))
    with pytest.raises(gs.SelectionError, match=r"exclude: None does not exist on this host \(GPUs here: indices 1,"):
        gs.select(obs, gs.Constraints(exclude=["None"]))


# ---- the same GPU listed twice ----

def test_a_gpu_listed_twice_is_chosen_once():
    obs = observe_smi("\n".join([row(0, used=20000), row(1), row(1)]))
    assert [d["index"] for d in obs["devices"]] == [0, 1]
    assert gs.select(copy.deepcopy(obs), gs.Constraints(count=2))["gpus"] == [1, 0]
    only_one = observe_smi(row(1) + "\n" + row(1))
    with pytest.raises(gs.SelectionError, match="2 GPU.s. requested, 1 eligible"):
        gs.select(only_one, gs.Constraints(count=2))


@pytest.mark.parametrize("second", [row(1, used=5), row_with(1, "uuid", uuid_of(5)), row_with(1, "index", "5")],
                         ids=["other readings", "same index, other uuid", "same uuid, other index"])
def test_a_gpu_listed_twice_with_different_readings_is_not_trusted(second):
    obs = observe_smi("\n".join([row(0, used=20000), row(1), second, row(3, used=30000)]))
    assert gs.select(obs, gs.Constraints(count=2))["gpus"] == [0, 3]
    doubled = not_eligible(obs)
    assert len(doubled) == 2
    for device in doubled:
        assert device["reasons"] == ["unreadable: listed more than once (index %s, UUID %s): which reading is "
                                     "this GPU's cannot be told" % (device["index"], device["uuid"])]


# ---- compute processes ----

@pytest.mark.parametrize("line", ["%s, [Insufficient Permissions]", "%s, 4242", "%s, 4242, [N/A], extra",
                                  "%s, [Unknown Error], [Unknown Error]"])
def test_a_process_line_that_cannot_be_read_still_counts_against_idleness(line):
    obs = observe_smi(row(0) + "\n" + row(1, used=20000), apps=line % uuid_of(0) + "\n")
    assert gs.select(obs, gs.Constraints(require_idle=True))["gpus"] == [1]
    assert obs["devices"][0]["reasons"][0].startswith("1 compute process(es) running (pid ")


def test_process_lines_for_no_known_gpu_or_of_garbage_are_ignored():
    obs = observe_smi(row(0), apps="No running processes found\n\n, , \nGPU-unknown, 1, 2\n\xff\x00, 1\n")
    assert gs.select(obs, gs.Constraints(require_idle=True))["gpus"] == [0]


def test_process_lines_for_an_unreadable_gpu_are_kept_with_it():
    obs = observe_smi(row_with(0, "memory.free", "[Unknown Error]") + "\n" + row(1), apps="%s, 77, 100\n" % uuid_of(0))
    assert obs["devices"][0]["processes"] == [{"pid": 77, "used_memory_mib": 100}]


# ---- NVML: a lost GPU ----

class FakeNvml(object):
    """The nvidia-ml-py calls _nvml makes, answered from a table; `faults[(call, index)]` is raised instead, and
    `answers[(call, index)]` (a value, or a function of the call's arguments) answered instead."""

    CALLS = ["nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlSystemGetDriverVersion",
             "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates",
             "nvmlDeviceGetMigMode", "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetUUID", "nvmlDeviceGetName",
             "nvmlDeviceGetPciInfo", "nvmlDeviceGetTemperature", "nvmlDeviceGetPersistenceMode",
             "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetTopologyCommonAncestor",
             "nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex",
             "nvmlDeviceGetRetiredPagesPendingStatus", "nvmlDeviceGetRemappedRows"]

    def __init__(self, monkeypatch, count=4, faults=None, answers=None):
        self.count = count
        self.faults = faults or {}
        self.answers = answers or {}
        for call in self.CALLS:
            monkeypatch.setattr(pynvml, call, self._answer(call))
        monkeypatch.setattr(_nvml, "pynvml", pynvml)

    def _answer(self, call):
        def answer(*args):
            indices = [a.index for a in args if isinstance(a, types.SimpleNamespace)] or [None]
            if call == "nvmlDeviceGetHandleByIndex":
                indices = [args[0]]
            for index in indices:
                fault = self.faults.get((call, index))
                if fault is not None:
                    raise fault()
            if (call, indices[0]) in self.answers:
                given = self.answers[(call, indices[0])]
                return given(*args) if callable(given) else given
            return self._value(call, indices, args)
        return answer

    def _value(self, call, indices, args):
        index = indices[0]
        if call == "nvmlDeviceGetCount":
            return self.count
        if call == "nvmlSystemGetDriverVersion":
            return "535.247.01"
        if call == "nvmlDeviceGetHandleByIndex":
            return types.SimpleNamespace(index=args[0])
        if call == "nvmlDeviceGetMemoryInfo":
            used = 1000 * index * _nvml.MIB
            return types.SimpleNamespace(total=TOTAL * _nvml.MIB, used=used, free=TOTAL * _nvml.MIB - used)
        if call == "nvmlDeviceGetUtilizationRates":
            return types.SimpleNamespace(gpu=0, memory=0)
        if call == "nvmlDeviceGetMigMode":
            return [0, 0]
        if call == "nvmlDeviceGetUUID":
            return uuid_of(index)
        if call == "nvmlDeviceGetName":
            return "NVIDIA H100 80GB HBM3"
        if call == "nvmlDeviceGetPciInfo":
            return types.SimpleNamespace(busId="00000000:%02X:00.0" % (0x18 + index))
        if call == "nvmlDeviceGetComputeRunningProcesses":
            return []
        if call == "nvmlDeviceGetTopologyCommonAncestor":
            a, b = indices
            return 10 if a // 2 == b // 2 else 40
        if call == "nvmlDeviceGetMigDeviceHandleByIndex":
            return types.SimpleNamespace(index="%s/%s" % (index, args[1]))
        if call == "nvmlDeviceGetRemappedRows":
            return (0, 0, 0, 0)
        return 0 if call != "nvmlDeviceGetPersistenceMode" else 1


def nvml_error(code):
    return lambda: pynvml.NVMLError(code)


def not_utf8():
    # What nvidia-ml-py's convertStrBytes raises on a name or UUID that is not UTF-8.
    return UnicodeDecodeError("utf-8", b"\xffH100", 0, 1, "invalid start byte")


@pytest.mark.parametrize("where", ["nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMemoryInfo",
                                   "nvmlDeviceGetTopologyCommonAncestor"])
def test_a_lost_gpu_is_left_out_also_from_the_topology(monkeypatch, where):
    faults = {(where, 1): nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)}
    if where != "nvmlDeviceGetTopologyCommonAncestor":
        # A lost GPU fails every call made with its handle, the topology ones too.
        faults[("nvmlDeviceGetTopologyCommonAncestor", 1)] = nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
    FakeNvml(monkeypatch, count=4, faults=faults)
    obs = gs.read_nvml(5, with_topology=True)
    devices = dict((d["index"], d) for d in obs["devices"])
    if where == "nvmlDeviceGetTopologyCommonAncestor":
        # Read fine, but its place in the topology is unknown: the farthest, never a guess.
        assert "error" not in devices[1] and obs["topology"][0][1] is None and obs["topology"][1][0] is None
    else:
        assert devices[1] == {"index": 1, "error": "NVML error 15: GPU is lost"}
        assert sorted(obs["topology"]) == [0, 2, 3] and all(sorted(r) == [0, 2, 3] for r in obs["topology"].values())
    # 2 and 3 share a switch; 0 shares one with 1 only.
    result = gs.select(obs, gs.Constraints(count=2))
    assert result["gpus"] == [2, 3] and result["topology"] == "single"


def test_a_gpu_whose_name_is_not_utf8_is_unreadable_not_a_traceback(monkeypatch):
    FakeNvml(monkeypatch, count=2, faults={("nvmlDeviceGetName", 0): not_utf8})
    snap = _nvml.snapshot(timeout=5, with_topology=True)
    assert snap["devices"][0]["error"].startswith("NVML gave an unreadable answer (UnicodeDecodeError: ")
    assert snap["devices"][1]["uuid"] == uuid_of(1) and snap["topology"] is None


@pytest.mark.parametrize("call", ["nvmlInit", "nvmlDeviceGetCount", "nvmlSystemGetDriverVersion"])
@pytest.mark.parametrize("fault", [nvml_error(pynvml.NVML_ERROR_UNKNOWN), not_utf8, TypeError, OverflowError],
                         ids=["NVML_ERROR_UNKNOWN", "not UTF-8", "TypeError", "OverflowError"])
def test_whatever_nvml_raises_outside_a_device_is_an_nvml_error(monkeypatch, call, fault):
    FakeNvml(monkeypatch, count=2, faults={(call, None): fault})
    with pytest.raises(_nvml.NvmlError):
        _nvml.snapshot(timeout=5, with_topology=True)
    with pytest.raises(gs.BackendError):
        gs.read_nvml(5, with_topology=True)


# ---- properties: only the documented errors come out ----

CELL = st.one_of(
    st.sampled_from(["0", "1", "3", "81559", "20000", "[N/A]", "N/A", "[Not Supported]", "", "Enabled", "Disabled",
                     uuid_of(0), uuid_of(1), "GPU-a"] + ERROR_MARKERS + ["nan", "-1", "1e9", "9" * 30, "\ufffd"]),
    st.text(max_size=12))
HOSTILE_ROW = st.lists(CELL, min_size=len(gs.SMI_FIELDS) - 2, max_size=len(gs.SMI_FIELDS) + 2).map(", ".join)
# Mostly well-formed rows with a few cells replaced, so that selection is reached, and duplicates are likely.
MUTATED_ROW = st.builds(
    lambda index, used, changes: ", ".join(
        dict(changes).get(f, c) for f, c in zip(gs.SMI_FIELDS, row(index, used).split(", "))),
    st.integers(0, 3), st.integers(0, TOTAL), st.lists(st.tuples(st.sampled_from(gs.SMI_FIELDS), CELL), max_size=2))
SMI_TEXT = st.lists(st.one_of(MUTATED_ROW, MUTATED_ROW, HOSTILE_ROW, st.text(max_size=40)), max_size=6).map(
    "\n".join)
APP_LINE = st.builds(lambda u, pid, mem: ", ".join([u, pid, mem]),
                     st.sampled_from([uuid_of(0), uuid_of(1), uuid_of(3)]), CELL, CELL)
APPS_TEXT = st.lists(st.one_of(APP_LINE, st.text(max_size=30)), max_size=4).map("\n".join)


@settings(max_examples=200, deadline=None)
@given(SMI_TEXT, APPS_TEXT, st.integers(1, 3), st.sampled_from(["index", "uuid"]), st.booleans(), st.booleans())
def test_nvidia_smi_output_gives_devices_or_a_backend_error_and_a_selection_or_its_error(
        text, apps, count, id_type, idle, topo):
    try:
        devices = gs.parse_smi_gpus(text, "nvidia-smi")
    except gs.BackendError:
        return
    gs.parse_smi_apps(apps, devices)
    obs = {"backend": "nvidia-smi", "devices": devices, "topology": None, "processes_visible": True}
    try:
        result = gs.select(obs, gs.Constraints(count=count, id_type=id_type, require_idle=idle, prefer_topology=topo))
    except gs.SelectionError as exc:
        assert str(exc).startswith("%d GPU(s) requested, " % count)
        return
    chosen = [d for d in devices if d.get("selected")]
    assert len(chosen) == count == len(set(result["ids"])) == len(set(result["gpus"])) == len(set(result["uuids"]))
    assert all(isinstance(i, str) and i for i in result["ids"])
    assert all("error" not in d and isinstance(d["index"], int) and d["memory_free_mib"] is not None for d in chosen)
    if idle:
        assert not any(d["processes"] for d in chosen)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), APPS_TEXT)
def test_any_text_at_all_gives_devices_or_a_backend_error(text, apps):
    try:
        devices = gs.parse_smi_gpus(text, "nvidia-smi")
    except gs.BackendError:
        return
    gs.parse_smi_apps(apps, devices)
    gs.explain(devices)


@settings(max_examples=200, deadline=None)
@given(st.integers(-1, 3), SMI_TEXT, st.text(max_size=30), APPS_TEXT)
def test_the_nvidia_smi_and_docker_backends_give_an_observation_or_a_backend_error(rc, out, err, apps):
    answers = {"--query-gpu": (rc, out, err), "--query-compute-apps": (rc, apps, err)}

    def run_command(argv, timeout):
        for flag, answer in answers.items():
            if any(a.startswith(flag) for a in argv):
                return answer
        return 0, "", ""

    saved = gs.run_command
    gs.run_command = run_command
    try:
        for read in (lambda: gs.read_nvidia_smi(1), lambda: gs.read_docker("cuda:12", 1)):
            try:
                obs = read()
            except gs.BackendError:
                continue
            assert obs["devices"] and all(isinstance(d, dict) for d in obs["devices"])
    finally:
        gs.run_command = saved


NVML_CALLS = ["nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUUID", "nvmlDeviceGetName",
              "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetComputeRunningProcesses",
              "nvmlDeviceGetTopologyCommonAncestor", "nvmlDeviceGetTemperature", "nvmlDeviceGetPciInfo"]
NVML_FAULTS = st.sampled_from([nvml_error(c) for c in (pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_UNKNOWN,
                                                       pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_TIMEOUT,
                                                       pynvml.NVML_ERROR_NO_PERMISSION, 12345)]
                              + [not_utf8, ValueError, TypeError, OverflowError])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.lists(st.tuples(st.sampled_from(NVML_CALLS), st.integers(0, 4), NVML_FAULTS), max_size=5),
       st.integers(1, 3), st.booleans())
def test_nvml_faults_in_some_gpus_leave_the_others_selectable(count, faults, wanted, topo):
    with pytest.MonkeyPatch.context() as monkeypatch:
        FakeNvml(monkeypatch, count=count, faults=dict(((call, i), f) for call, i, f in faults))
        # Faults in one GPU's calls never fail the backend whole.
        obs = gs.read_nvml(5, with_topology=topo)
    readable = [d["index"] for d in obs["devices"] if "error" not in d]
    assert [d["index"] for d in obs["devices"]] == list(range(count))
    assert (obs["topology"] is not None) == (topo and len(readable) > 1)
    if obs["topology"] is not None:
        assert sorted(obs["topology"]) == readable
    try:
        result = gs.select(obs, gs.Constraints(count=wanted, prefer_topology=topo))
    except gs.SelectionError:
        assert len(readable) < wanted
        return
    assert len(set(result["gpus"])) == wanted and set(result["gpus"]) <= set(readable)
