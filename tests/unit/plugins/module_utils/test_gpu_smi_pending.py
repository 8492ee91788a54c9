"""The nvidia-smi fallback reads what NVML's path uses to skip a GPU: MIG enabled pending a reset, memory pages
pending retirement, a row remapping pending or failed (--query-gpu fields mig.mode.pending, retired_pages.pending,
remapped_rows.pending, remapped_rows.failure), and reaches the same verdicts.

Real outputs come from tests/unit/fixtures/nvidia_smi (each file names its source). Outputs no published capture
shows (a GPU answering "Yes", a driver refusing one of these fields) are constructed here, not captured, and each
test says so.
"""

import pytest
from test_gpu_parsers_hostile import FakeNvml, row, uuid_of
from test_gpu_smi_real import fixture, project, query_fields
from vllm_serve_fakes import Exited, FakeModule

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_ledger as gl
from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select as gs
from ansible_collections.inferops.vllm.plugins.modules import gpu_select

PENDING = ("mig.mode.pending", "retired_pages.pending", "remapped_rows.pending", "remapped_rows.failure")
KEYS = {"mig.mode.pending": "mig_enabled_pending", "retired_pages.pending": "retired_pages_pending",
        "remapped_rows.pending": "remapped_rows_pending", "remapped_rows.failure": "remapped_rows_failure"}
# nvidia-smi's own words, as its real outputs print them: 'Field "device_minor" is not a valid field to query.'
REFUSAL = 'Field "%s" is not a valid field to query.\n\n'


def test_the_new_fields_are_part_of_the_query_after_the_old_ones():
    assert gs.SMI_FIELDS[-4:] == PENDING and set(gs.SMI_OPTIONAL) == set(PENDING)
    assert gs.SMI_QUERY == ["--query-gpu=" + ",".join(gs.SMI_FIELDS), "--format=csv,noheader,nounits"]


# ---- real outputs ----

def real_row(name, index=0):
    meta, text = fixture(name)
    fields, rows = query_fields(meta, text)
    return project(fields, rows[index], gs.SMI_FIELDS)


def test_a_real_h200_reads_nothing_pending_and_is_chosen():
    line = real_row("nvidia-gpu-exporter_h200-580.173.02_query-gpu.csv")
    assert line.endswith(", Disabled, Enabled, Disabled, [N/A], No, No")
    [device] = gs.parse_smi_gpus(line + "\n", "nvidia-smi")
    assert "error" not in device and "unchecked" not in device
    # Hopper remaps rows; it has no page retirement: [N/A] is None, as NVML's NOT_SUPPORTED.
    assert [device[KEYS[f]] for f in PENDING] == [False, None, False, False]
    assert (device["memory_total_mib"], device["memory_free_mib"], device["utilization_gpu"]) == (143771, 143156, 0)
    obs = {"backend": "nvidia-smi", "devices": [device], "topology": None, "processes_visible": True}
    assert gs.select(obs, gs.Constraints())["gpus"] == [0]


def test_the_real_h100_mig_gpu_reads_mig_enabled_and_pending():
    [device] = gs.parse_smi_gpus(real_row("nvidia-gpu-exporter_h100-mig-590.48.01_query-gpu.csv") + "\n", "nvidia-smi")
    assert "error" not in device and device["mig_enabled"] is True and device["mig_enabled_pending"] is True
    assert [device[KEYS[f]] for f in PENDING[1:]] == [None, None, None]


def test_a_real_refusal_of_a_field_gpu_select_cannot_do_without_names_it_and_the_fix(monkeypatch):
    meta, text = fixture("cohdi-composable-resource-operator-37_field-not-valid.txt")
    monkeypatch.setattr(gs, "run_command", lambda argv, timeout: (int(meta["rc"]), text, ""))
    with pytest.raises(gs.BackendError) as err:
        gs.read_nvidia_smi(1)
    message = str(err.value)
    assert 'Field "device_minor" is not a valid field to query.' in message
    assert "does not know the field device_minor" in message and "update the NVIDIA driver" in message


# ---- constructed rows: the same verdicts as NVML ----

NVML_STATES = [
    # (what nvidia-smi prints for GPU 0, what NVML answers for GPU 0, the reason)
    ({"retired_pages.pending": "Yes"}, {("nvmlDeviceGetRetiredPagesPendingStatus", 0): 1},
     "memory pages are pending retirement (reset the GPU to retire them)"),
    ({"remapped_rows.pending": "Yes"}, {("nvmlDeviceGetRemappedRows", 0): (0, 1, 1, 0)},
     "a memory row remapping is pending (reset the GPU to apply it)"),
    ({"remapped_rows.failure": "Yes"}, {("nvmlDeviceGetRemappedRows", 0): (0, 8, 0, 1)},
     "a memory row remapping failed (the GPU needs service)"),
    ({"mig.mode.pending": "Enabled"}, {("nvmlDeviceGetMigMode", 0): [0, 1]},
     "MIG mode is enabled pending a GPU reset, so it is not handed out whole"),
]


@pytest.mark.parametrize("cells, answers, reason", NVML_STATES)
def test_nvidia_smi_skips_a_gpu_for_what_nvml_skips_it_for(monkeypatch, cells, answers, reason):
    # Constructed, not captured: GPU 0 (the emptiest, so the one chosen were it trusted) in the state NVML reports.
    text = "\n".join([row(0, cells=cells), row(1, used=1000), row(2, used=2000)]) + "\n"
    smi = {"backend": "nvidia-smi", "devices": gs.parse_smi_gpus(text, "nvidia-smi"), "topology": None,
           "processes_visible": True}
    FakeNvml(monkeypatch, count=3, answers=answers)
    nvml = gs.read_nvml(5, with_topology=False)
    for mig in ("skip", "use"):
        for obs in (smi, nvml):
            assert gs.select(obs, gs.Constraints(mig=mig))["gpus"] == [1]
            assert reason in obs["devices"][0]["reasons"]
        assert [d["reasons"] for d in smi["devices"]] == [d["reasons"] for d in nvml["devices"]]


@pytest.mark.parametrize("cells", [{"retired_pages.pending": "Yes"}, {"remapped_rows.pending": "Yes"},
                                   {"remapped_rows.failure": "Yes"}])
def test_skip_ecc_errors_false_lets_memory_health_pass_but_never_mig_pending(cells):
    # Constructed, not captured.
    obs = {"backend": "nvidia-smi", "devices": gs.parse_smi_gpus(row(0, cells=cells) + "\n", "nvidia-smi"),
           "topology": None, "processes_visible": True}
    assert gs.select(obs, gs.Constraints(skip_ecc_errors=False))["gpus"] == [0]
    obs["devices"] = gs.parse_smi_gpus(row(0, cells={"mig.mode.pending": "Enabled"}) + "\n", "nvidia-smi")
    with pytest.raises(gs.SelectionError, match="MIG mode is enabled pending a GPU reset"):
        gs.select(obs, gs.Constraints(skip_ecc_errors=False))


@pytest.mark.parametrize("absent", ["[N/A]", "[Not Supported]", "N/A"])
@pytest.mark.parametrize("field", PENDING)
def test_not_applicable_is_none_as_nvml_not_supported_is(field, absent):
    # Constructed from the markers real outputs print for a mechanism a GPU does not have.
    [device] = gs.parse_smi_gpus(row(0, cells={field: absent}) + "\n", "nvidia-smi")
    assert "error" not in device and device[KEYS[field]] is None and "unchecked" not in device
    obs = {"backend": "nvidia-smi", "devices": [device], "topology": None, "processes_visible": True}
    assert gs.select(obs, gs.Constraints())["gpus"] == [0]


@pytest.mark.parametrize("value", ["Maybe", "Enabled", "1", "[Unknown Error]", "ERR!", "yes"])
@pytest.mark.parametrize("field", PENDING[1:])
def test_a_state_that_is_not_yes_or_no_is_unreadable_not_read_as_no(field, value):
    # Constructed, not captured.
    obs = {"backend": "nvidia-smi", "devices": gs.parse_smi_gpus(row(0, cells={field: value}) + "\n" + row(1, used=9),
                                                                 "nvidia-smi"), "topology": None, "processes_visible": True}
    assert gs.select(obs, gs.Constraints())["gpus"] == [1]
    assert obs["devices"][0]["reasons"] == ["unreadable: nvidia-smi printed %s %r" % (field, value)]


@pytest.mark.parametrize("value", ["Yes", "Pending", "[Unknown Error]"])
def test_mig_pending_other_than_enabled_or_disabled_is_unreadable(value):
    # Constructed, not captured.
    devices = gs.parse_smi_gpus(row(0, cells={"mig.mode.pending": value}) + "\n", "nvidia-smi")
    assert devices[0]["error"] == "nvidia-smi printed mig.mode.pending %r" % value


# ---- an older nvidia-smi that does not know a field ----

class OldSmi(object):
    """Constructed, not captured: an nvidia-smi that refuses, as nvidia-smi refuses any field it does not know
    (exit status 2, REFUSAL on standard output), the first field of `unknown` in the query."""

    def __init__(self, unknown, rows, apps=""):
        self.unknown, self.rows, self.apps, self.queries = unknown, rows, apps, []

    def __call__(self, argv, timeout):
        query = [a for a in argv if a.startswith("--query-")][0]
        if query.startswith("--query-compute-apps="):
            return 0, self.apps, ""
        fields = query.split("=", 1)[1].split(",")
        self.queries.append(fields)
        for field in fields:
            if field in self.unknown:
                return 2, REFUSAL % field, ""
        return 0, "\n".join(", ".join(r[f] for f in fields) for r in self.rows) + "\n", ""


def cells_of(index, used=0, changes=None):
    return dict(zip(gs.SMI_FIELDS, row(index, used, changes).split(", ")))


def test_a_driver_without_row_remapping_leaves_it_unchecked_and_the_gpus_usable(monkeypatch):
    # Constructed, not captured: a driver that knows page retirement but not row remapping.
    smi = OldSmi(["remapped_rows.pending", "remapped_rows.failure"],
                 [cells_of(0, changes={"retired_pages.pending": "Yes"}),
                  cells_of(1, used=5000, changes={"retired_pages.pending": "No"})])
    monkeypatch.setattr(gs, "run_command", smi)
    obs = gs.read_nvidia_smi(1)
    # One run per refused field, then the query without both; every other field is still asked.
    assert [len(q) for q in smi.queries] == [16, 15, 14]
    assert smi.queries[-1] == [f for f in gs.SMI_FIELDS if not f.startswith("remapped_rows.")]
    expected = ["failed memory row remapping (remapped_rows.failure): this nvidia-smi does not know the field",
                "memory row remapping pending (remapped_rows.pending): this nvidia-smi does not know the field"]
    assert obs["unchecked"] == expected
    for device in obs["devices"]:
        assert device["unchecked"] == expected
        # Unknown, never read as "No".
        assert device["remapped_rows_pending"] is None and device["remapped_rows_failure"] is None
    assert obs["devices"][0]["retired_pages_pending"] is True and obs["devices"][1]["retired_pages_pending"] is False
    # What it could check still counts: GPU 0, the emptiest, has pages pending retirement.
    assert gs.select(obs, gs.Constraints())["gpus"] == [1]
    assert obs["devices"][0]["reasons"] == ["memory pages are pending retirement (reset the GPU to retire them)"]
    lines = gs.explain(obs["devices"])
    assert lines[1] == "GPU 1: eligible (76559 MiB free; not checked: %s; not checked: %s)" % tuple(expected)


def test_a_driver_that_knows_none_of_the_fields_is_asked_five_times_and_checks_the_rest(monkeypatch):
    smi = OldSmi(list(PENDING), [cells_of(0, changes={"ecc.errors.uncorrected.volatile.total": "2"}), cells_of(1)])
    monkeypatch.setattr(gs, "run_command", smi)
    obs = gs.read_nvidia_smi(1)
    assert [len(q) for q in smi.queries] == [16, 15, 14, 13, 12]
    assert len(obs["unchecked"]) == 4 and all(what in " ".join(obs["unchecked"]) for what in PENDING)
    assert gs.select(obs, gs.Constraints())["gpus"] == [1]
    assert obs["devices"][0]["reasons"] == ["2 uncorrected volatile ECC error(s)"]


def test_a_driver_refusing_a_field_it_was_not_asked_for_again_is_an_error_not_a_loop(monkeypatch):
    # Constructed, not captured: a wrapper that refuses remapped_rows.pending whatever the query.
    calls = []

    def run_command(argv, timeout):
        calls.append(argv)
        return 2, REFUSAL % "remapped_rows.pending", ""
    monkeypatch.setattr(gs, "run_command", run_command)
    with pytest.raises(gs.BackendError, match="does not know the field remapped_rows.pending"):
        gs.read_nvidia_smi(1)
    assert len(calls) == 2


def test_the_docker_backend_runs_each_retry_in_a_container_of_its_own_and_removes_them_all(monkeypatch):
    smi = OldSmi(["remapped_rows.pending"], [cells_of(0)])
    names, removed = [], []

    def run_command(argv, timeout):
        if argv[1] == "rm":
            removed.extend(argv[3:])
            return 0, "", ""
        names.append(argv[argv.index("--name") + 1])
        return smi(argv, timeout)
    monkeypatch.setattr(gs, "run_command", run_command)
    obs = gs.read_docker("nvidia/cuda:12.4.1-base", 1)
    assert len(names) == 2 == len(set(names)) and obs["unchecked"] and not removed
    smi.rows = []  # no GPU line at all now: the backend fails, and both containers are removed
    names[:] = []
    with pytest.raises(gs.BackendError):
        gs.read_docker("nvidia/cuda:12.4.1-base", 1)
    assert removed == names and len(names) == 2


def test_nvml_has_nothing_unchecked(monkeypatch):
    FakeNvml(monkeypatch, count=1)
    obs = gs.read_nvml(5, with_topology=False)
    assert obs["unchecked"] == [] and "unchecked" not in obs["devices"][0]
    assert obs["devices"][0]["uuid"] == uuid_of(0)


# ---- what the modules say ----

def select_params(**overrides):
    params = dict(count=1, min_free_memory=0, max_utilization=None, exclude=[], require_idle=False,
                  skip_ecc_errors=True, mig="skip", prefer_topology=None, id_type="index", backend="nvidia-smi",
                  docker_image=None, docker_pull=False, timeout=1)
    params.update(overrides)
    return params


def test_gpu_select_returns_and_warns_what_it_could_not_check(monkeypatch):
    monkeypatch.setattr(gs, "run_command", OldSmi(["remapped_rows.pending"], [cells_of(0), cells_of(1, used=10)]))
    module = FakeModule(select_params())
    with pytest.raises(Exited) as done:
        gpu_select.GpuSelector(module).run()
    result = done.value.result
    assert "failed" not in result and result["gpus"] == [0]
    assert result["unchecked"] == ["memory row remapping pending (remapped_rows.pending): this nvidia-smi does not "
                                   "know the field"]
    [warning] = module.warnings
    assert warning.startswith("nvidia-smi could not check every GPU for: memory row remapping pending "
                              "(remapped_rows.pending)") and "update the NVIDIA driver" in warning


def test_gpu_select_fails_naming_the_pending_state_of_every_gpu(monkeypatch):
    rows = [cells_of(0, changes={"remapped_rows.pending": "Yes"}), cells_of(1, changes={"mig.mode.pending": "Enabled"})]
    monkeypatch.setattr(gs, "run_command", OldSmi([], rows))
    module = FakeModule(select_params())
    with pytest.raises(Exited) as done:
        gpu_select.GpuSelector(module).run()
    result = done.value.result
    assert result["failed"] and result["unchecked"] == [] and module.warnings == []
    assert "GPU 0: a memory row remapping is pending (reset the GPU to apply it)" in result["msg"]
    assert "GPU 1: MIG mode is enabled pending a GPU reset, so it is not handed out whole" in result["msg"]


def test_gpu_assign_reports_what_it_could_not_check_and_still_refuses_what_it_could(monkeypatch):
    smi = OldSmi(["remapped_rows.pending", "remapped_rows.failure"],
                 [cells_of(0, changes={"retired_pages.pending": "Yes"}), cells_of(1), cells_of(2)])
    monkeypatch.setattr(gs, "run_command", smi)

    def observe():
        return gs.read_nvidia_smi(1)
    ledger, report = gl.assign({}, [gl.Claim("chat", count=1)], observe)
    assert ledger == {"chat": ["2"]} and len(report["health_unchecked"]) == 2
    assert "remapped_rows.pending" in report["health_unchecked"][1]
    with pytest.raises(gl.LedgerError, match="GPU 0 it is unhealthy: memory pages are pending retirement"):
        gl.assign({}, [gl.Claim("embed", pinned=["0"])], observe)
    # Nothing read, nothing unchecked.
    assert gl.assign({"chat": ["2"]}, [gl.Claim("chat", count=1)], observe)[1]["health_unchecked"] == []
