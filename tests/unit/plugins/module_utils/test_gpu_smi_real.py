"""The nvidia-smi backend on real outputs (tests/unit/fixtures/nvidia_smi, each file with its source), and on
synthetic ones, labelled as such, for what no published output shows (16 GPUs, odd spacing).

A real output of another query is read through the fields it shares with gpu_select's query: its header (or the
query's field list) names each column, and the cells of gpu_select's fields are taken verbatim, in gpu_select's
order. Whatever nvidia-smi printed, the backend gives GPUs as they are, a GPU explained as unreadable, or an error
that says what nvidia-smi said and what to do: never a guess.
"""

import os
import re

import pytest
from test_gpu_parsers_hostile import row

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select as gs

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "fixtures",
                        "nvidia_smi")
# nvidia-smi's other names for the fields gpu_select queries.
ALIASES = {"gpu_uuid": "uuid", "gpu_name": "name", "gpu_bus_id": "pci.bus_id", "used_gpu_memory": "used_memory"}


def fixture(name):
    """({key: value} of the file's `# key: value` lines, the output after them)."""
    meta, lines = {}, []
    with open(os.path.join(FIXTURES, name)) as handle:
        for line in handle.read().splitlines():
            match = re.match(r"# ([a-z]+): (.*)\Z", line)
            if match and not lines:
                meta[match.group(1)] = match.group(2)
            else:
                lines.append(line)
    assert meta["source"].startswith("https://github.com/"), name
    return meta, "\n".join(lines) + "\n"


def query_fields(meta, text):
    """The field of each column: from the header line when the output has one (then dropped), else from the
    command's --query-*= list."""
    lines = text.splitlines()
    if "noheader" not in meta["command"]:
        names = [re.sub(r" \[[^]]*\]\Z", "", c) for c in lines[0].split(", ")]
        return [ALIASES.get(n, n) for n in names], lines[1:]
    names = re.search(r"--query-[a-z-]+=([^ ]+)", meta["command"]).group(1).split(",")
    return [ALIASES.get(n, n) for n in names], lines


def project(fields, line, wanted):
    """The cells of `wanted` fields, verbatim, joined as nvidia-smi joins them."""
    cells = dict(zip(fields, line.split(", ")))
    assert len(line.split(", ")) == len(fields), "the output's columns do not match its fields"
    return ", ".join(cells[f] for f in wanted)


# Fields whose value may be a switch that is off (False).
SWITCHES = ("mig.mode.current", "persistence_mode", "mig.mode.pending", "retired_pages.pending", "remapped_rows.pending",
            "remapped_rows.failure")
REAL_CSV = sorted(n for n in os.listdir(FIXTURES) if n.endswith(".csv") and "compute-apps" not in n)


def test_every_fixture_names_its_source_and_command():
    for name in os.listdir(FIXTURES):
        if name != "README.md":
            meta, text = fixture(name)
            assert meta["command"].startswith(("nvidia-smi", "/usr/bin/nvidia-smi")) and text.strip(), name


@pytest.mark.parametrize("name", REAL_CSV)
def test_every_real_cell_of_a_field_gpu_select_queries_reads_as_a_value_or_absent(name):
    meta, text = fixture(name)
    fields, rows = query_fields(meta, text)
    shared = [f for f in fields if f in gs.SMI_FIELDS]
    assert shared, name
    for line in rows:
        for field in shared:
            cell = project(fields, line, [field])
            value = gs._cell(field, cell)  # pylint: disable=protected-access
            if cell in gs.ABSENT:
                assert value is None
            else:
                assert value is not None and value is not False or field in SWITCHES


def test_real_values_read_as_printed():
    cell = gs._cell  # pylint: disable=protected-access
    assert [cell("memory.total", "2004"), cell("utilization.gpu", "0"), cell("temperature.gpu", "44")] == [2004, 0, 44]
    assert cell("utilization.gpu", "[Not Supported]") is None and cell("mig.mode.current", "[N/A]") is None
    assert cell("uuid", "GPU-22b2c6ac-2d49-4863-197c-9c469071178a") == "GPU-22b2c6ac-2d49-4863-197c-9c469071178a"
    assert cell("name", "NVIDIA GeForce RTX 3080 Ti") == "NVIDIA GeForce RTX 3080 Ti"
    assert cell("memory.free", "81022 MiB") == 81022 and cell("mig.mode.current", "Disabled") is False


# ---- a real H100 with MIG enabled, idle and under load ----

def h100_mig():
    meta, text = fixture("nvidia-gpu-exporter_h100-mig-590.48.01_query-gpu.csv")
    fields, rows = query_fields(meta, text)
    return [project(fields, line, gs.SMI_FIELDS) for line in rows]


def test_the_real_h100_mig_rows_read_as_the_gpu_reported_them_units_and_all():
    idle, load = h100_mig()
    assert idle == ("0, GPU-00000000-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 00000000:00:09.0, "
                    "81559 MiB, 59 MiB, 81022 MiB, [N/A], 42, 0, Enabled, Enabled, Enabled, [N/A], [N/A], [N/A]")
    [device] = gs.parse_smi_gpus(idle + "\n", "nvidia-smi")
    assert "error" not in device
    assert (device["index"], device["memory_total_mib"], device["memory_used_mib"], device["memory_free_mib"],
            device["utilization_gpu"], device["temperature_c"], device["ecc_uncorrected_volatile"],
            device["mig_enabled"], device["persistence_mode"]) == (0, 81559, 59, 81022, None, 42, 0, True, True)
    [device] = gs.parse_smi_gpus(load + "\n", "nvidia-smi")
    assert device["memory_used_mib"] == 11125 and device["memory_free_mib"] == 69956


def test_the_real_h100_mig_gpu_is_never_handed_out_whole_and_its_processes_count():
    load = h100_mig()[1]
    meta, text = fixture("nvidia-gpu-exporter_h100-mig-590.48.01_query-compute-apps-load.csv")
    fields, rows = query_fields(meta, text)
    apps = "\n".join(project(fields, line, ["uuid", "pid", "used_memory"]) for line in rows)
    devices = gs.parse_smi_gpus(load + "\n", "nvidia-smi")
    gs.parse_smi_apps(apps, devices)
    assert devices[0]["processes"] == [{"pid": 21180, "used_memory_mib": 2296}, {"pid": 21181, "used_memory_mib": 1272},
                                       {"pid": 21198, "used_memory_mib": 7484}]
    obs = {"backend": "nvidia-smi", "devices": devices, "topology": None, "processes_visible": True}
    for mig, reason in (("skip", "MIG enabled (set mig: use to select its MIG devices)"),
                        ("use", "MIG enabled; MIG devices are read only through the nvml backend")):
        with pytest.raises(gs.SelectionError) as err:
            gs.select(obs, gs.Constraints(mig=mig))
        assert "GPU 0: %s" % reason in str(err.value)


# ---- nvidia-smi failing as a whole ----

def smi(rc, out, err=""):
    def run_command(argv, timeout):
        return rc, out, err
    return run_command


@pytest.mark.parametrize("name, advice", [
    ("gputil-55_driver-library-mismatch.txt", "reboot the host, or reload the nvidia kernel modules"),
    ("gpustack-2078_query-gpu-nvml-unknown-error.txt", "NVML could not start"),
    ("dra-driver-1008_no-supported-gpus.txt", "no GPU is bound to the NVIDIA driver"),
    ("open-gpu-kernel-modules-862_no-devices.txt", "the NVIDIA driver sees no GPU"),
    ("owod-81_gpu-is-lost.txt", "a GPU fell off the bus or needs a reset"),
    ("nvidia-container-toolkit-69_unknown-error.txt", "a GPU fell off the bus or needs a reset"),
])
def test_nvidia_smi_failing_as_a_whole_is_an_error_saying_what_it_printed_and_what_to_do(monkeypatch, name, advice):
    meta, text = fixture(name)
    # Where the source does not show the exit status, both a failing and a zero one are tried.
    for rc in ([int(meta["rc"])] if meta["rc"].isdigit() else [0, 6, 15]):
        for read in (lambda: gs.read_nvidia_smi(1), lambda: gs.read_docker("nvidia/cuda:12.4.1-base", 1)):
            monkeypatch.setattr(gs, "run_command", smi(rc, text))
            with pytest.raises(gs.BackendError) as err:
                read()
            message = str(err.value)
            assert text.strip().splitlines()[0][:60] in message and advice in message, message


def test_a_lost_gpus_line_among_real_rows_is_one_unreadable_gpu_and_the_others_stay():
    lost = fixture("owod-81_gpu-is-lost.txt")[1].strip()
    idle = h100_mig()[0]
    # Synthetic: the real lost-GPU line between the real H100 row and a synthetic second GPU.
    devices = gs.parse_smi_gpus("\n".join([idle, lost, row(1, used=20000)]), "nvidia-smi")
    obs = {"backend": "nvidia-smi", "devices": devices, "topology": None, "processes_visible": True}
    assert gs.select(obs, gs.Constraints())["gpus"] == [1]
    assert devices[1]["index"] is None and "GPU is lost" in devices[1]["error"]


# ---- synthetic: what no published output shows ----

def sixteen(used=lambda i: 0):
    """Synthetic: 16 H100 rows as gpu_select's query prints them (index 10 to 15 sort before 2 as text)."""
    return "\n".join(row(i, used=used(i)) for i in range(16)) + "\n"


def test_sixteen_gpus_are_ranked_by_index_as_numbers_not_text():
    obs = {"backend": "nvidia-smi", "devices": gs.parse_smi_gpus(sixteen(), "nvidia-smi"), "topology": None,
           "processes_visible": True}
    assert [d["index"] for d in obs["devices"]] == list(range(16))
    assert gs.select(obs, gs.Constraints(count=3))["gpus"] == [15, 14, 13]
    obs = {"backend": "nvidia-smi", "devices": gs.parse_smi_gpus(sixteen(lambda i: 100 * (i % 3)), "nvidia-smi"),
           "topology": None, "processes_visible": True}
    result = gs.select(obs, gs.Constraints(count=4, exclude=["15", "12"], id_type="index"))
    assert result["gpus"] == [9, 6, 3, 0] and result["ids"] == ["9", "6", "3", "0"]


@pytest.mark.parametrize("separator", [",", " , ", ",  ", "\t, ", ",\t"])
def test_any_spacing_around_the_commas_reads_the_same(separator):
    # Synthetic: the same row with other spacing.
    line = row(11, used=1000).replace(", ", separator)
    [device] = gs.parse_smi_gpus(line + "\n", "nvidia-smi")
    assert "error" not in device and device["index"] == 11 and device["memory_used_mib"] == 1000


def test_a_trailing_comma_adds_no_field_but_two_do():
    # Synthetic.
    [device] = gs.parse_smi_gpus(row(3) + ",\n", "nvidia-smi")
    assert "error" not in device and device["persistence_mode"] is True
    [device] = gs.parse_smi_gpus(row(3) + ", ,\n" + row(4), "nvidia-smi")[:1]
    assert device["index"] is None and "a line with 17 fields" in device["error"]


@pytest.mark.parametrize("cells", [{"memory.free": "81559MiB"}, {"utilization.gpu": "35 %"},
                                   {"memory.used": "0 MiB", "memory.total": "81559 MiB"}])
def test_values_printed_with_their_unit_read_as_the_number(cells):
    # Synthetic: a row as nvidia-smi prints it without nounits.
    [device] = gs.parse_smi_gpus(row(0, cells=cells) + "\n", "nvidia-smi")
    assert "error" not in device


@pytest.mark.parametrize("cells", [{"memory.free": "81559 GiB"}, {"utilization.gpu": "35 MiB"},
                                   {"temperature.gpu": "42 C"}, {"index": "0 MiB"}, {"memory.free": "MiB"}])
def test_a_unit_that_is_not_the_fields_own_is_unreadable(cells):
    # Synthetic.
    [device] = gs.parse_smi_gpus(row(0, cells=cells) + "\n", "nvidia-smi")
    assert device["error"].startswith("nvidia-smi printed ")


def test_process_lines_with_units_and_odd_spacing():
    # Synthetic.
    devices = gs.parse_smi_gpus(row(0) + "\n", "nvidia-smi")
    gs.parse_smi_apps("%s,4242,20480 MiB\n%s, 4243, [N/A]\n" % (devices[0]["uuid"], devices[0]["uuid"]), devices)
    assert devices[0]["processes"] == [{"pid": 4242, "used_memory_mib": 20480}, {"pid": 4243, "used_memory_mib": None}]
