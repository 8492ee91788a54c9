"""The GPU metrics collector (issue 15): what it writes for the node exporter, read back with prometheus_client's own
parser, from a fake NVML behind the real nvidia-ml-py module (its constants stay NVIDIA's)."""

import math
import os
import shutil
import stat
import subprocess
import sys
import time
import types

import pynvml
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_metrics as gm
from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select, _nvml

MODULE_UTILS = os.path.dirname(os.path.abspath(gm.__file__))
MIB = 1024 * 1024

# Xid lines as drivers print them, with the sources they were checked against:
# - NVIDIA, "Xid Errors" (https://docs.nvidia.com/deploy/xid-errors/index.html): `NVRM: Xid (0000:03:00): 14,
#   Channel 00000001`, the form of older drivers, without `PCI:`.
# - NVIDIA/open-gpu-kernel-modules#1150 (journalctl -k, driver 590): `kernel: NVRM: Xid (PCI:0000:dc:00): 45,
#   pid=1818990, name=python3, Ch 00000001 caused by previous Xid 149`.
# - leptonai/gpud#46 (dmesg --ctime): `NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>', name=<unknown>, Graphics SM
#   Warp Exception ...` and `NVRM: Xid (PCI:0000:cb:00): 109, pid=1797828, name=pt_main_thread, Ch 00000008, ...`.
# - NVIDIA/NVSentinel#155: `NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus`, and the multi-line
#   "has fallen off the bus" notice without an Xid, which is not an Xid line.
KERNEL_LOG = """\
[    4.211034] nvidia: module license 'NVIDIA' taints kernel.
NVRM: GPU at PCI:0000:3b:00: GPU-b850f46d-d5ea-c752-ddf3-c4453e44d3f7
NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.
NVRM: Xid (PCI:0000:dc:00): 45, pid=1818990, name=python3, Ch 00000001 caused by previous Xid 149
NVRM: Xid (PCI:0000:dc:00): 45, pid=1818990, name=python3, Ch 00000002 caused by previous Xid 149
[Fri Aug 30 11:43:09 2024] NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp \
Exception on (GPC 7, TPC 7, SM 0): Illegal Instruction Parameter
[Fri Aug 30 11:43:14 2024] NVRM: Xid (PCI:0000:cb:00): 109, pid=1797828, name=pt_main_thread, Ch 00000008, \
errorString CTX SWITCH TIMEOUT, Info 0x58005
Mar 27 00:13:33 localhost kernel: [18296.507578] NVRM: Xid (PCI:0000:01:00): 31, Ch 00000009, engmask 00000101
NVRM: Xid (0000:03:00): 14, Channel 00000001
[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0
               NVRM: (PCI ID: 10de:26b5) installed in this system has
               NVRM: fallen off the bus and is not responding to commands.
"""
KERNEL_LOG_XIDS = {("00000000:3B:00.0", "79"): 1, ("00000000:DC:00.0", "45"): 2, ("00000000:CB:00.0", "13"): 1,
                   ("00000000:CB:00.0", "109"): 1, ("00000000:01:00.0", "31"): 1, ("00000000:03:00.0", "14"): 1}

REASON_LABELS = ["gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown", "sync_boost",
                 "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "display_clock_setting"]


def h100(index, **values):
    """One GPU's NVML answers; a value that is an exception is raised instead."""
    gpu = {"uuid": "GPU-%08d-52b1-4d39-8f8e-9d6a0c1b2e3f" % index, "name": "NVIDIA H100 80GB HBM3",
           "bus_id": "00000000:%02X:00.0" % (0x18 + index), "total_mib": 81559, "used_mib": 1000 * index,
           "utilization": 35, "temperature": 31 + index, "power_mw": 123456, "limit_mw": 700000, "ecc": 0,
           "reasons": 0}
    gpu.update(values)
    return gpu


def nvml_error(code):
    return pynvml.NVMLError(code)


class FakeNvml(object):
    """nvidia-ml-py's device calls answered from `gpus`; `init_error` is raised by nvmlInit."""

    def __init__(self, monkeypatch, gpus, init_error=None):
        self.gpus = gpus
        self.init_error = init_error
        answers = {
            "nvmlInit": self.init, "nvmlShutdown": lambda: None, "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlSystemGetDriverVersion": lambda: "535.247.01",
            "nvmlDeviceGetHandleByIndex": self.handle,
            "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(
                total=self.get(h, "total_mib") * MIB, used=self.get(h, "used_mib") * MIB,
                free=(self.get(h, "total_mib") - self.get(h, "used_mib")) * MIB),
            "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=self.get(h, "utilization"), memory=0),
            "nvmlDeviceGetMigMode": lambda h: [0, 0],
            "nvmlDeviceGetTotalEccErrors": self.ecc,
            "nvmlDeviceGetUUID": lambda h: self.get(h, "uuid"),
            "nvmlDeviceGetName": lambda h: self.get(h, "name"),
            "nvmlDeviceGetPciInfo": lambda h: types.SimpleNamespace(busId=self.get(h, "bus_id")),
            "nvmlDeviceGetTemperature": self.temperature,
            "nvmlDeviceGetPersistenceMode": lambda h: 1,
            "nvmlDeviceGetComputeRunningProcesses": lambda h: [],
            "nvmlDeviceGetPowerUsage": lambda h: self.get(h, "power_mw"),
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: self.get(h, "limit_mw"),
            "nvmlDeviceGetCurrentClocksEventReasons": lambda h: self.get(h, "reasons"),
            "nvmlDeviceGetCurrentClocksThrottleReasons": lambda h: self.get(h, "throttle_reasons", "reasons"),
        }
        for call, answer in answers.items():
            monkeypatch.setattr(pynvml, call, answer)
        monkeypatch.setattr(_nvml, "pynvml", pynvml)

    def init(self):
        if self.init_error is not None:
            raise self.init_error

    def handle(self, index):
        if self.gpus[index].get("lost"):
            raise nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return types.SimpleNamespace(index=index)

    def get(self, handle, key, fallback=None):
        gpu = self.gpus[handle.index]
        value = gpu[key] if key in gpu else gpu[fallback]
        if isinstance(value, Exception):
            raise value
        return value

    def ecc(self, handle, error_type, counter_type):
        assert (error_type, counter_type) == (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)
        return self.get(handle, "ecc")

    def temperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self.get(handle, "temperature")


def parse(text):
    """{(sample name, ((label, value), ...)): value} and {family name: type}, through prometheus_client's parser."""
    samples, types_ = {}, {}
    for family in text_string_to_metric_families(text):
        types_[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, "duplicate series %r" % (key,)
            samples[key] = sample.value
    return samples, types_


def series(samples, metric, **labels):
    return samples.get((metric, tuple(sorted(labels.items()))))


def of_gpu(samples, gpu):
    """The names of the series labelled with this GPU."""
    return sorted(name for name, labels in samples if ("gpu", gpu) in labels)


def run_collect(tmp_path, log=KERNEL_LOG, **kwargs):
    kernel_log = tmp_path / "kern.log"
    kernel_log.write_text(log)
    return gm.collect(nvml_timeout=5, kernel_log=str(kernel_log), now=1700000000.5, **kwargs)


# ---- every metric ----

def test_every_metric_of_a_healthy_host(monkeypatch, tmp_path):
    busy = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    FakeNvml(monkeypatch, [h100(0, ecc=3), h100(1, reasons=busy)])
    samples, types_ = parse(run_collect(tmp_path))
    assert types_ == {
        "inferops_gpu_collector_success": "gauge", "inferops_gpu_collector_last_run_timestamp_seconds": "gauge",
        "inferops_gpu_devices": "gauge", "inferops_gpu_up": "gauge", "inferops_gpu_info": "gauge",
        "inferops_gpu_memory_used_bytes": "gauge", "inferops_gpu_memory_total_bytes": "gauge",
        "inferops_gpu_utilization_ratio": "gauge", "inferops_gpu_temperature_celsius": "gauge",
        "inferops_gpu_power_usage_watts": "gauge", "inferops_gpu_power_limit_watts": "gauge",
        # prometheus_client names a counter's family without its _total suffix
        "inferops_gpu_ecc_uncorrected_volatile_errors": "counter", "inferops_gpu_throttle_active": "gauge",
        "inferops_gpu_xid_errors": "counter", "inferops_gpu_xid_source_up": "gauge"}
    assert series(samples, "inferops_gpu_collector_success") == 1
    assert series(samples, "inferops_gpu_collector_last_run_timestamp_seconds") == 1700000000.5
    assert series(samples, "inferops_gpu_devices") == 2
    assert series(samples, "inferops_gpu_up", gpu="1") == 1
    assert series(samples, "inferops_gpu_info", gpu="1", uuid="GPU-00000001-52b1-4d39-8f8e-9d6a0c1b2e3f",
                  name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:19:00.0") == 1
    assert series(samples, "inferops_gpu_memory_used_bytes", gpu="1") == 1000 * MIB
    assert series(samples, "inferops_gpu_memory_total_bytes", gpu="1") == 81559 * MIB
    assert series(samples, "inferops_gpu_utilization_ratio", gpu="1") == 0.35
    assert series(samples, "inferops_gpu_temperature_celsius", gpu="1") == 32
    assert series(samples, "inferops_gpu_power_usage_watts", gpu="1") == 123.456
    assert series(samples, "inferops_gpu_power_limit_watts", gpu="1") == 700
    assert series(samples, "inferops_gpu_ecc_uncorrected_volatile_errors_total", gpu="0") == 3
    assert series(samples, "inferops_gpu_ecc_uncorrected_volatile_errors_total", gpu="1") == 0
    active = dict((reason, series(samples, "inferops_gpu_throttle_active", gpu="1", reason=reason))
                  for reason in REASON_LABELS)
    assert active == dict((reason, 1 if reason in ("sw_power_cap", "hw_thermal_slowdown") else 0)
                          for reason in REASON_LABELS)
    assert all(series(samples, "inferops_gpu_throttle_active", gpu="0", reason=r) == 0 for r in REASON_LABELS)
    xids = dict((dict(labels)["pci_bus_id"], dict(labels)["xid"]) for name, labels in samples
                if name == "inferops_gpu_xid_errors_total")
    assert len(xids) == 5 and series(samples, "inferops_gpu_xid_errors_total", pci_bus_id="00000000:DC:00.0",
                                     xid="45") == 2
    assert series(samples, "inferops_gpu_xid_source_up") == 1


def test_each_family_has_a_help_line_that_says_what_it_is(monkeypatch, tmp_path):
    FakeNvml(monkeypatch, [h100(0)])
    text = run_collect(tmp_path)
    helps = dict(line.split(" ", 3)[2:] for line in text.splitlines() if line.startswith("# HELP "))
    assert sorted(helps) == sorted(name for name, _kind, _help in gm.FAMILIES)
    assert all(len(words.split()) >= 4 for words in helps.values())


def test_reason_bits_are_nvidia_ml_pys_own():
    bits = dict((label, gm.bit_of(suffix)) for label, suffix in gm.THROTTLE_REASONS)
    assert [label for label, _suffix in gm.THROTTLE_REASONS] == REASON_LABELS
    assert bits["hw_slowdown"] == pynvml.nvmlClocksEventReasonHwSlowdown
    assert bits["display_clock_setting"] == pynvml.nvmlClocksThrottleReasonDisplayClockSetting
    assert sorted(bits.values()) == [1 << n for n in range(9)]


# ---- what NVML cannot say ----

@pytest.mark.parametrize("key, metric", [
    ("utilization", "inferops_gpu_utilization_ratio"), ("temperature", "inferops_gpu_temperature_celsius"),
    ("power_mw", "inferops_gpu_power_usage_watts"), ("limit_mw", "inferops_gpu_power_limit_watts"),
    ("ecc", "inferops_gpu_ecc_uncorrected_volatile_errors_total"), ("reasons", "inferops_gpu_throttle_active")])
def test_a_reading_nvml_does_not_support_is_left_out_not_written_as_zero(monkeypatch, tmp_path, key, metric):
    unsupported = nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
    FakeNvml(monkeypatch, [h100(0), h100(1, **{key: unsupported})])
    samples, _types = parse(run_collect(tmp_path))
    assert metric in of_gpu(samples, "0") and metric not in of_gpu(samples, "1")
    assert series(samples, "inferops_gpu_up", gpu="1") == 1


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NO_PERMISSION, pynvml.NVML_ERROR_UNKNOWN,
                                  pynvml.NVML_ERROR_FUNCTION_NOT_FOUND])
def test_a_power_reading_that_fails_leaves_the_gpu_readable_for_selection(monkeypatch, code):
    FakeNvml(monkeypatch, [h100(0, power_mw=nvml_error(code), limit_mw=nvml_error(code))])
    device = _nvml.snapshot(timeout=5)["devices"][0]
    assert "error" not in device and device["power_usage_w"] is None and device["power_limit_w"] is None
    assert _gpu_select.select(_gpu_select.read_nvml(5, with_topology=False), _gpu_select.Constraints())["gpus"] == [0]


def test_clock_reasons_fall_back_to_the_throttle_call_of_older_drivers(monkeypatch, tmp_path):
    older_driver = nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    FakeNvml(monkeypatch, [h100(0, reasons=older_driver, throttle_reasons=pynvml.nvmlClocksThrottleReasonGpuIdle)])
    samples, _types = parse(run_collect(tmp_path))
    assert series(samples, "inferops_gpu_throttle_active", gpu="0", reason="gpu_idle") == 1
    assert series(samples, "inferops_gpu_throttle_active", gpu="0", reason="sw_power_cap") == 0


def test_clock_reasons_fall_back_on_bindings_that_predate_the_event_name(monkeypatch):
    FakeNvml(monkeypatch, [h100(0, reasons=pynvml.nvmlClocksEventReasonSyncBoost)])
    monkeypatch.delattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons")
    assert _nvml.snapshot(timeout=5)["devices"][0]["clocks_event_reasons"] == pynvml.nvmlClocksEventReasonSyncBoost


def test_a_lost_gpu_is_down_with_no_other_series(monkeypatch, tmp_path):
    FakeNvml(monkeypatch, [h100(0), h100(1, lost=True), h100(2, power_mw=nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST))])
    samples, _types = parse(run_collect(tmp_path))
    assert series(samples, "inferops_gpu_devices") == 3
    assert [series(samples, "inferops_gpu_up", gpu=g) for g in "012"] == [1, 0, 0]
    assert of_gpu(samples, "1") == of_gpu(samples, "2") == ["inferops_gpu_up"]


def test_an_unreadable_answer_makes_the_gpu_down(monkeypatch, tmp_path):
    not_utf8 = UnicodeDecodeError("utf-8", b"\xffH100", 0, 1, "invalid start byte")
    FakeNvml(monkeypatch, [h100(0, name=not_utf8), h100(1)])
    samples, _types = parse(run_collect(tmp_path))
    assert [series(samples, "inferops_gpu_up", gpu=g) for g in "01"] == [0, 1]


@pytest.mark.parametrize("how", ["nvmlInit fails", "no nvidia-ml-py", "a wedged driver"])
def test_nvml_down_writes_only_the_collector_and_xid_metrics(monkeypatch, tmp_path, how):
    FakeNvml(monkeypatch, [h100(0)], init_error=nvml_error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    if how == "no nvidia-ml-py":
        monkeypatch.setattr(_nvml, "pynvml", None)
    elif how == "a wedged driver":
        monkeypatch.setattr(pynvml, "nvmlInit", lambda: time.sleep(3))
    heard = []
    started = time.monotonic()
    kernel_log = tmp_path / "kern.log"
    kernel_log.write_text(KERNEL_LOG)
    text = gm.collect(nvml_timeout=0.3, kernel_log=str(kernel_log), now=5, warn=heard.append)
    assert time.monotonic() - started < 2
    samples, _types = parse(text)
    assert series(samples, "inferops_gpu_collector_success") == 0
    assert sorted(set(name for name, _labels in samples)) == [
        "inferops_gpu_collector_last_run_timestamp_seconds", "inferops_gpu_collector_success",
        "inferops_gpu_xid_errors_total", "inferops_gpu_xid_source_up"]
    assert len(heard) == 1 and heard[0].startswith("NVML: ")


def test_non_finite_values_are_never_written():
    snapshot = {"count": 1, "devices": [{"index": 0, "uuid": "u", "name": "n", "pci_bus_id": "p",
                                         "memory_used_mib": None, "memory_total_mib": 1, "utilization_gpu": None,
                                         "temperature_c": float("nan"), "power_usage_w": float("inf"),
                                         "power_limit_w": -float("inf"), "ecc_uncorrected_volatile": 10 ** 400,
                                         "clocks_event_reasons": None}]}
    samples, _types = parse(gm.render(snapshot, {}, True, float("nan")))
    assert of_gpu(samples, "0") == ["inferops_gpu_info", "inferops_gpu_memory_total_bytes", "inferops_gpu_up"]
    assert series(samples, "inferops_gpu_collector_last_run_timestamp_seconds") is None


# ---- label values ----

def test_label_values_are_escaped_and_read_back_as_they_were(monkeypatch, tmp_path):
    hostile = 'H100 "SXM"\\\n} evil{x="1"} 1\n# TYPE'
    FakeNvml(monkeypatch, [h100(0, name=hostile, uuid="GPU-\\\\", bus_id='"')])
    text = run_collect(tmp_path)
    assert 'name="H100 \\"SXM\\"\\\\\\n} evil{x=\\"1\\"} 1\\n# TYPE"' in text
    samples, _types = parse(text)
    assert series(samples, "inferops_gpu_info", gpu="0", uuid="GPU-\\\\", name=hostile, pci_bus_id='"') == 1


def test_a_name_that_is_not_valid_utf8_is_written_with_a_replacement():
    assert gm.escape_label("H100\udcff") == "H100?"


# ---- Xid events ----

def test_parse_xid_counts_the_lines_drivers_print():
    assert gm.parse_xid(KERNEL_LOG) == KERNEL_LOG_XIDS


@pytest.mark.parametrize("line", [
    "NVRM: Xid (PCI:0000:3b:00): , GPU has fallen off the bus.",  # no code
    "NVRM: Xid (PCI:0000:3b:00): 79",  # cut before the comma: 7 or 79 cannot be told
    "NVRM: Xid (PCI:zzzz:3b:00): 79, x",
    "NVRM: Xid (PCI:0000:3b): 79, x",
    "NVRM: Xid (PCI:000000000:3b:00): 79, x",  # a domain of nine digits
    "NVRM: xid (PCI:0000:3b:00): 79, x",
    "SXid (PCI:0000:3b:00): 12028, Non-fatal, Link 32",
])
def test_lines_that_are_not_xid_events_count_nothing(line):
    assert gm.parse_xid(line) == {}


def test_one_event_per_line_and_the_function_when_given():
    line = "NVRM: Xid (PCI:0000:3b:00.0): 48, An uncorrectable double bit error NVRM: Xid (PCI:0000:3c:00): 48,"
    assert gm.parse_xid(line) == {("00000000:3B:00.0", "48"): 1}


def test_xid_series_are_capped():
    text = "\n".join("NVRM: Xid (PCI:0000:%02x:00): %d, x" % (bus, xid) for bus in range(64) for xid in range(8))
    counts = gm.parse_xid(text + "\nNVRM: Xid (PCI:0000:00:00): 0, x")
    assert len(counts) == gm.MAX_XID_SERIES and counts[("00000000:00:00.0", "0")] == 2


def test_parse_xid_stays_linear_on_a_hostile_log():
    hostile = "NVRM: Xid (PCI:" * 200000 + "\n" + ("NVRM: Xid (PCI:0000:3b:00): 1" + "1" * 50) * 20000
    started = time.monotonic()
    assert gm.parse_xid(hostile) == {}
    assert time.monotonic() - started < 2


XID_PIECES = st.sampled_from(["NVRM: Xid (", "PCI:", "0000", ":3b", ":00", ".0", "): ", "79", ",", " pid=1", "\n",
                              "\x00", "\ufffd", "(", ")"])
LOG_TEXT = st.lists(st.one_of(st.text(max_size=60), st.lists(XID_PIECES, max_size=12).map("".join))).map("".join)


@settings(max_examples=300, deadline=None)
@given(LOG_TEXT)
def test_parse_xid_never_raises_and_gives_well_formed_keys(text):
    for (bus_id, xid), count in gm.parse_xid(text).items():
        assert len(bus_id) == 16 and xid.isdigit() and count >= 1


def test_an_unreadable_kernel_log_means_source_down_and_no_xid_series(monkeypatch, tmp_path):
    FakeNvml(monkeypatch, [h100(0)])
    heard = []
    text = gm.collect(nvml_timeout=5, kernel_log=str(tmp_path / "missing"), now=1, warn=heard.append)
    samples, _types = parse(text)
    assert series(samples, "inferops_gpu_xid_source_up") == 0
    assert not [name for name, _labels in samples if name == "inferops_gpu_xid_errors_total"]
    assert heard == ["kernel log: %s: No such file or directory" % (tmp_path / "missing")]


def test_a_kernel_log_that_is_not_a_regular_file_is_not_waited_on(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    assert gm.read_kernel_log(fifo) == ("", "%s: not a regular file" % fifo)


def test_the_kernel_log_is_read_up_to_its_limit(tmp_path):
    log = tmp_path / "kern.log"
    log.write_text("NVRM: Xid (PCI:0000:3b:00): 79, x\n" * 1000)
    text, error = gm.read_kernel_log(str(log), limit=340)
    assert error is None and len(text) == 340 and gm.parse_xid(text) == {("00000000:3B:00.0", "79"): 10}


def python_command(code):
    return [sys.executable, "-c", code]


def test_journalctl_is_read_with_the_arguments_of_this_boot(monkeypatch):
    assert gm.JOURNALCTL == ["journalctl", "-k", "-b", "-o", "cat", "--no-pager", "-q"]
    monkeypatch.setattr(gm, "JOURNALCTL", python_command("print('NVRM: Xid (PCI:0000:3b:00): 79, x')"))
    assert gm.read_kernel_log() == ("NVRM: Xid (PCI:0000:3b:00): 79, x\n", None)


def test_journalctl_output_is_bounded_and_its_rest_not_waited_for(monkeypatch):
    endless = "import sys\nwhile True: sys.stdout.write('x' * 65536)"
    monkeypatch.setattr(gm, "JOURNALCTL", python_command(endless))
    started = time.monotonic()
    text, error = gm.read_kernel_log(limit=1024 * 1024, timeout=20)
    assert error is None and len(text) == 1024 * 1024 and time.monotonic() - started < 10


@pytest.mark.parametrize("code, why", [
    ("import time\nprint('NVRM: Xid (PCI:0000:3b:00): 79, x', flush=True)\ntime.sleep(30)", "did not finish within"),
    ("import sys\nsys.exit(1)", "exited with 1")])
def test_journalctl_that_hangs_or_fails_is_source_down(monkeypatch, code, why):
    monkeypatch.setattr(gm, "JOURNALCTL", python_command(code))
    started = time.monotonic()
    text, error = gm.read_kernel_log(timeout=1)
    assert text == "" and why in error and time.monotonic() - started < 5


def test_no_journalctl_is_source_down(monkeypatch):
    monkeypatch.setattr(gm, "JOURNALCTL", ["/nonexistent/journalctl"])
    assert gm.read_kernel_log() == ("", "journalctl: No such file or directory")


# ---- properties: whatever NVML says, the file parses, with the right types ----

TEXT = st.text(max_size=40)
VALUE = st.one_of(st.none(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True, allow_infinity=True))
DEVICE = st.one_of(
    st.builds(lambda i, e: {"index": i, "error": e}, st.integers(0, 15), TEXT.filter(bool)),
    st.fixed_dictionaries({
        "index": st.integers(0, 15), "uuid": TEXT, "name": TEXT, "pci_bus_id": TEXT,
        "memory_used_mib": st.one_of(st.none(), st.integers(0, 2 ** 40)),
        "memory_total_mib": st.one_of(st.none(), st.integers(0, 2 ** 40)),
        "utilization_gpu": st.one_of(st.none(), st.integers(0, 100)), "temperature_c": VALUE,
        "power_usage_w": VALUE, "power_limit_w": VALUE, "ecc_uncorrected_volatile": VALUE,
        "clocks_event_reasons": st.one_of(st.none(), st.integers(0, 2 ** 64 - 1))}))
SNAPSHOT = st.one_of(st.none(), st.builds(
    lambda devices, count: {"count": count, "devices": list(dict((d["index"], d) for d in devices).values())},
    st.lists(DEVICE, max_size=4), st.integers(0, 64)))
# parse_xid's keys are ASCII; texts without lone surrogates keep two keys from becoming one label set.
XIDS = st.dictionaries(st.tuples(*[st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)] * 2),
                       st.integers(1, 2 ** 40), max_size=4)
TYPES = dict((name, kind) for name, kind, _help in gm.FAMILIES)


@settings(max_examples=300, deadline=None)
@given(SNAPSHOT, XIDS, st.booleans(), st.floats(allow_nan=True, allow_infinity=True))
def test_render_always_parses_with_the_declared_types_and_finite_values(snapshot, xids, xid_ok, now):
    text = gm.render(snapshot, xids, xid_ok, now)
    text.encode("utf-8")
    families = list(text_string_to_metric_families(text))
    for family in families:
        declared = TYPES.get(family.name) or TYPES[family.name + "_total"]
        assert family.type == declared
        for sample in family.samples:
            assert math.isfinite(sample.value)
    samples, _types = parse(text)
    assert series(samples, "inferops_gpu_collector_success") == (0 if snapshot is None else 1)
    assert series(samples, "inferops_gpu_xid_source_up") == (1 if xid_ok else 0)
    written = [dict(labels) for name, labels in samples if name == "inferops_gpu_xid_errors_total"]
    assert written == ([] if not xid_ok else [{"pci_bus_id": b, "xid": x} for b, x in sorted(xids)])
    if snapshot is not None:
        for device in snapshot["devices"]:
            assert series(samples, "inferops_gpu_up", gpu=str(device["index"])) == (0 if "error" in device else 1)


# ---- the command line ----

def test_output_is_written_atomically_with_mode_0644(monkeypatch, tmp_path, capsys):
    FakeNvml(monkeypatch, [h100(0)])
    (tmp_path / "kern.log").write_text(KERNEL_LOG)
    output = tmp_path / "gpu.prom"
    output.write_text("old")
    os.chmod(str(output), 0o600)
    old_umask = os.umask(0o077)  # the mode must not depend on the caller's umask
    try:
        rc = gm.main(["--output", str(output), "--kernel-log", str(tmp_path / "kern.log"), "--timeout", "5"])
    finally:
        os.umask(old_umask)
    assert rc == 0 and capsys.readouterr() == ("", "")
    assert stat.S_IMODE(os.stat(str(output)).st_mode) == 0o644
    assert sorted(os.listdir(str(tmp_path))) == ["gpu.prom", "kern.log"]
    samples, _types = parse(output.read_text())
    assert series(samples, "inferops_gpu_up", gpu="0") == 1


def test_without_output_the_metrics_go_to_stdout(monkeypatch, tmp_path, capsys):
    FakeNvml(monkeypatch, [h100(0)], init_error=nvml_error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert gm.main(["--kernel-log", str(tmp_path / "missing")]) == 0
    out, err = capsys.readouterr()
    assert "inferops_gpu_collector_success 0\n" in out
    assert err.splitlines() == [
        "inferops-gpu-metrics: NVML: NVML initialisation (nvmlInit) failed: Driver Not Loaded (NVML error 9)",
        "inferops-gpu-metrics: kernel log: %s: No such file or directory" % (tmp_path / "missing")]


@pytest.mark.parametrize("what", ["directory", "symlink", "missing directory", "read-only directory"])
def test_an_output_that_cannot_be_written_exits_2_naming_it(monkeypatch, tmp_path, capsys, what):
    FakeNvml(monkeypatch, [h100(0)])
    output = tmp_path / "gpu.prom"
    expected = "cannot be written"
    if what == "directory":
        output.mkdir()
        expected = "is a directory"
    elif what == "symlink":
        (tmp_path / "elsewhere").write_text("keep")
        output.symlink_to(tmp_path / "elsewhere")
        expected = "is a symlink"
    elif what == "missing directory":
        output = tmp_path / "nowhere" / "gpu.prom"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only directory")
        os.chmod(str(tmp_path), 0o555)
    try:
        rc = gm.main(["--output", str(output), "--kernel-log", str(tmp_path / "missing")])
    finally:
        os.chmod(str(tmp_path), 0o755)
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err[-1].startswith("inferops-gpu-metrics: %s " % output) and expected in err[-1]
    if what == "symlink":
        assert (tmp_path / "elsewhere").read_text() == "keep"
    assert [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")] == []


@pytest.mark.parametrize("argv", [["--timeout", "0"], ["--timeout", "nan"], ["--timeout", "x"], ["--output", ""],
                                  ["--bogus"], ["--output"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        gm.main(argv)
    assert exc.value.code == 2 and "inferops-gpu-metrics: error: " in capsys.readouterr().err


def test_an_unexpected_failure_is_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(gm, "collect", lambda **kwargs: {}["boom"])
    assert gm.main([]) == 1
    assert capsys.readouterr().err == "inferops-gpu-metrics: unexpected error, nothing written: KeyError: 'boom'\n"


# ---- the layout the monitoring role installs: two files, a plain python3, no Ansible ----

def install_layout(tmp_path):
    """The two files under DIR/ansible_collections/inferops/vllm/plugins/module_utils, as the role installs them."""
    root = tmp_path / "lib"
    target = root / "ansible_collections" / "inferops" / "vllm" / "plugins" / "module_utils"
    target.mkdir(parents=True)
    for name in ("_nvml.py", "_gpu_metrics.py"):
        shutil.copy(os.path.join(MODULE_UTILS, name), str(target / name))
    return root


def test_runs_from_the_two_files_with_a_plain_python3(tmp_path):
    python3 = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    root = install_layout(tmp_path)
    (tmp_path / "kern.log").write_text(KERNEL_LOG)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "LANG": "C"}
    module = "ansible_collections.inferops.vllm.plugins.module_utils._gpu_metrics"
    # -s: no user site-packages; ansible must not be needed, and fails the import if it were.
    check = subprocess.run([python3, "-s", "-c", "import sys; import %s; assert not [m for m in sys.modules if "
                            "m == 'ansible' or m.startswith('ansible.')], sorted(sys.modules)" % module],
                           env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    helped = subprocess.run([python3, "-s", "-m", module, "--help"], env=env, cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=60, check=False)
    assert helped.returncode == 0 and "--kernel-log FILE" in helped.stdout, helped.stderr
    output = tmp_path / "gpu.prom"
    ran = subprocess.run([python3, "-s", "-m", module, "--output", str(output), "--kernel-log",
                          str(tmp_path / "kern.log"), "--timeout", "5"],
                         env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr
    samples, _types = parse(output.read_text())
    assert series(samples, "inferops_gpu_xid_errors_total", pci_bus_id="00000000:3B:00.0", xid="79") == 1
    # No NVML here (nor, on most build machines, nvidia-ml-py): the file says so, and the run still succeeds.
    assert series(samples, "inferops_gpu_collector_success") == 0


# ---- the real nvidia-ml-py over the lab's fake NVML (tests/lab/gpu), as on a lab host ----

LAB_GPU = os.path.join(os.path.dirname(MODULE_UTILS), "..", "tests", "lab", "gpu")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the lab's fake NVML")
def test_the_real_bindings_read_power_throttle_ecc_and_lost_gpus(tmp_path):
    sys.path.insert(0, LAB_GPU)
    try:
        import labgpu
    finally:
        sys.path.remove(LAB_GPU)
    library = tmp_path / "libnvidia-ml.so.1"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1",
                    "-o", str(library), os.path.join(LAB_GPU, "libnvidia-ml.c"), os.path.join(LAB_GPU, "json_min.c"),
                    "-lpthread"], check=True, timeout=120)
    state = labgpu.default_state("lab1")
    gpus = state["gpus"]
    gpus[1]["lost"] = True
    gpus[2].update(ecc_uncorrected_volatile=4, power_usage_w=650.5, power_limit_w=600,
                   clocks_event_reasons=pynvml.nvmlClocksEventReasonSwPowerCap)
    state_path = tmp_path / "gpus.json"
    labgpu.save_state(state, str(state_path))
    env = dict(os.environ, PYTHONPATH=str(install_layout(tmp_path)), LD_LIBRARY_PATH=str(tmp_path),
               INFEROPS_LAB_STATE=str(state_path),
               INFEROPS_LAB_CLAIMS=str(tmp_path / "claims"), INFEROPS_LAB_VISIBLE=str(tmp_path / "none"))
    ran = subprocess.run([sys.executable, "-m", gm.__name__, "--kernel-log", os.devnull, "--timeout", "10"],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    samples, _types = parse(ran.stdout)
    assert series(samples, "inferops_gpu_devices") == 8
    assert [series(samples, "inferops_gpu_up", gpu=str(i)) for i in range(8)] == [1, 0, 1, 1, 1, 1, 1, 1]
    assert series(samples, "inferops_gpu_ecc_uncorrected_volatile_errors_total", gpu="2") == 4
    assert series(samples, "inferops_gpu_power_usage_watts", gpu="2") == 650.5
    assert series(samples, "inferops_gpu_power_limit_watts", gpu="2") == 600
    assert series(samples, "inferops_gpu_power_limit_watts", gpu="3") == 700
    assert [r for r in REASON_LABELS if series(samples, "inferops_gpu_throttle_active", gpu="2", reason=r)] == [
        "sw_power_cap"]
    assert series(samples, "inferops_gpu_info", gpu="2", uuid=gpus[2]["uuid"], name="NVIDIA H100 80GB HBM3",
                  pci_bus_id=gpus[2]["pci_bus_id"]) == 1
