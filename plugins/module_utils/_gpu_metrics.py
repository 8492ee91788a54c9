# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU metrics for the node exporter's textfile collector, read through NVML, on hosts without dcgm-exporter.

Run on a timer (installed by the monitoring role) as a plain python3 program, without Ansible:

    PYTHONPATH=DIR python3 -m ansible_collections.inferops.vllm.plugins.module_utils._gpu_metrics --output FILE

where DIR holds ansible_collections/inferops/vllm/plugins/module_utils/{_nvml.py,_gpu_metrics.py}. So this file
imports nothing from Ansible, and from the collection only _nvml.

Exit status: 0 when the metrics were written (also when NVML did not answer: inferops_gpu_collector_success 0 is
the signal), 2 on bad arguments or an output that cannot be written (one line on stderr names the path).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import errno
import math
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

from ansible_collections.inferops.vllm.plugins.module_utils import _nvml

PROG = "inferops-gpu-metrics"
JOURNALCTL = ["journalctl", "-k", "-b", "-o", "cat", "--no-pager", "-q"]
# The kernel log of one boot is read up to this size, its start first: past it, Xid counters stop growing rather
# than shrink (a counter that shrinks reads as a reset, and every Xid left would be counted again).
MAX_KERNEL_LOG = 8 * 1024 * 1024
KERNEL_LOG_TIMEOUT = 10.0
# Distinct (PCI bus id, Xid) series kept: a flood of odd lines cannot explode the series Prometheus stores.
MAX_XID_SERIES = 256

# name, type, help: the order in which the families are written.
FAMILIES = [
    ("inferops_gpu_collector_success", "gauge",
     "1 when NVML answered (nvmlInit and the device count), 0 otherwise; then no NVML-based metric is written."),
    ("inferops_gpu_collector_last_run_timestamp_seconds", "gauge", "Unix time of the collector's last run."),
    ("inferops_gpu_devices", "gauge", "Number of GPUs NVML reports."),
    ("inferops_gpu_up", "gauge", "1 when the GPU could be read through NVML, 0 when NVML failed on it (lost GPU, "
                                 "unreadable answer)."),
    ("inferops_gpu_info", "gauge", "Identity of a readable GPU (always 1): NVML index, UUID, name, PCI bus id."),
    ("inferops_gpu_memory_used_bytes", "gauge", "GPU memory in use, bytes (MiB resolution)."),
    ("inferops_gpu_memory_total_bytes", "gauge", "GPU memory in total, bytes (MiB resolution)."),
    ("inferops_gpu_utilization_ratio", "gauge",
     "Fraction of the last sample period in which a kernel ran on the GPU (0 to 1)."),
    ("inferops_gpu_temperature_celsius", "gauge", "GPU core temperature, degrees Celsius."),
    ("inferops_gpu_power_usage_watts", "gauge", "GPU board power draw, watts."),
    ("inferops_gpu_power_limit_watts", "gauge", "Power limit the driver enforces on the GPU, watts."),
    ("inferops_gpu_ecc_uncorrected_volatile_errors_total", "counter",
     "Uncorrected ECC errors since the driver last loaded (volatile counter)."),
    ("inferops_gpu_throttle_active", "gauge",
     "1 when this reason currently holds the GPU clocks down (NVML clocks event reasons), else 0."),
    ("inferops_gpu_xid_errors_total", "counter",
     "Xid events in the kernel log of this boot, by GPU PCI bus id and Xid code."),
    ("inferops_gpu_xid_source_up", "gauge", "1 when the kernel log could be read for Xid events, 0 otherwise."),
]

# Label value of each throttle reason, and the suffix of its nvidia-ml-py constant.
THROTTLE_REASONS = [
    ("gpu_idle", "GpuIdle"),
    ("applications_clocks_setting", "ApplicationsClocksSetting"),
    ("sw_power_cap", "SwPowerCap"),
    ("hw_slowdown", "HwSlowdown"),
    ("sync_boost", "SyncBoost"),
    ("sw_thermal_slowdown", "SwThermalSlowdown"),
    ("hw_thermal_slowdown", "HwThermalSlowdown"),
    ("hw_power_brake_slowdown", "HwPowerBrakeSlowdown"),
    ("display_clock_setting", "DisplayClockSetting"),
]

# `NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.`; drivers before r450
# leave out `PCI:`, and some add the function (`.0`). Every part is bounded, so a line costs linear time.
XID_LINE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9a-fA-F]{1,8}):([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})"
                      r"(?:\.([0-7]))?\): ?(\d{1,5}),")


def bit_of(suffix):
    """The bit of a clocks event reason, from nvidia-ml-py's own constants (its older Throttle name as fallback)."""
    pynvml = _nvml.pynvml
    for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
        bit = getattr(pynvml, prefix + suffix, None)
        if isinstance(bit, int):
            return bit
    return None


def escape_label(value):
    """A label value in the Prometheus text format: backslash, double quote and newline escaped; text that is not
    valid UTF-8 (a lone surrogate) replaced, since the file is UTF-8."""
    text = value if isinstance(value, str) else str(value)
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value):
    """The value as the text format writes it, or None for a value that must not be written (missing, NaN, inf)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    try:
        as_float = float(value)  # an int past float's range raises OverflowError: a reader would see +Inf
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(as_float):
        return None
    return str(value) if isinstance(value, int) else repr(as_float)


class _Samples:
    """Samples gathered per family, so that each family is written as one block under its HELP and TYPE."""

    def __init__(self):
        self.by_family = dict((name, []) for name, _kind, _help in FAMILIES)

    def add(self, name, value, labels=()):
        text = _number(value)
        if text is None:
            return
        if labels:
            label_text = ",".join('%s="%s"' % (key, escape_label(val)) for key, val in labels)
            self.by_family[name].append("%s{%s} %s" % (name, label_text, text))
        else:
            self.by_family[name].append("%s %s" % (name, text))

    def text(self):
        lines = []
        for name, kind, help_text in FAMILIES:
            if not self.by_family[name]:
                continue
            lines.append("# HELP %s %s" % (name, help_text.replace("\\", "\\\\").replace("\n", "\\n")))
            lines.append("# TYPE %s %s" % (name, kind))
            lines.extend(self.by_family[name])
        return "\n".join(lines) + "\n"


def _device_samples(samples, device, reason_bits):
    gpu = (("gpu", str(device["index"])),)
    if device.get("error"):
        samples.add("inferops_gpu_up", 0, gpu)
        return
    samples.add("inferops_gpu_up", 1, gpu)
    samples.add("inferops_gpu_info", 1, gpu + (("uuid", device.get("uuid", "")), ("name", device.get("name", "")),
                                               ("pci_bus_id", device.get("pci_bus_id", ""))))
    for name, key in (("inferops_gpu_memory_used_bytes", "memory_used_mib"),
                      ("inferops_gpu_memory_total_bytes", "memory_total_mib")):
        if device.get(key) is not None:
            samples.add(name, device[key] * _nvml.MIB, gpu)
    if device.get("utilization_gpu") is not None:
        samples.add("inferops_gpu_utilization_ratio", device["utilization_gpu"] / 100.0, gpu)
    samples.add("inferops_gpu_temperature_celsius", device.get("temperature_c"), gpu)
    samples.add("inferops_gpu_power_usage_watts", device.get("power_usage_w"), gpu)
    samples.add("inferops_gpu_power_limit_watts", device.get("power_limit_w"), gpu)
    samples.add("inferops_gpu_ecc_uncorrected_volatile_errors_total", device.get("ecc_uncorrected_volatile"), gpu)
    reasons = device.get("clocks_event_reasons")
    if reasons is not None:
        for label, bit in reason_bits:
            samples.add("inferops_gpu_throttle_active", 1 if reasons & bit else 0, gpu + (("reason", label),))


def render(snapshot, xid_counts, xid_source_ok, now):
    """The metrics file. `snapshot`: _nvml.snapshot()'s answer, or None when NVML did not answer; `xid_counts`:
    parse_xid()'s answer; `xid_source_ok`: whether the kernel log could be read; `now`: unix time."""
    samples = _Samples()
    samples.add("inferops_gpu_collector_success", 1 if snapshot is not None else 0)
    samples.add("inferops_gpu_collector_last_run_timestamp_seconds", now)
    if snapshot is not None:
        samples.add("inferops_gpu_devices", snapshot.get("count"))
        reason_bits = [(label, bit_of(suffix)) for label, suffix in THROTTLE_REASONS]
        reason_bits = [(label, bit) for label, bit in reason_bits if bit is not None]
        for device in sorted(snapshot.get("devices") or [], key=lambda d: d["index"]):
            _device_samples(samples, device, reason_bits)
    # The kernel log does not come from NVML: Xids are written also when NVML fails, which is when a GPU that
    # fell off the bus (Xid 79) matters most.
    samples.add("inferops_gpu_xid_source_up", 1 if xid_source_ok else 0)
    if xid_source_ok:
        for (bus_id, xid), count in sorted(xid_counts.items()):
            samples.add("inferops_gpu_xid_errors_total", count, (("pci_bus_id", bus_id), ("xid", xid)))
    return samples.text()


def parse_xid(text):
    """{(pci_bus_id, xid): count} of the Xid lines in `text`, one event per line at most. The bus id is written the
    way NVML writes it (`00000000:3B:00.0`), so that it matches inferops_gpu_info's label."""
    counts = {}
    if not isinstance(text, str):
        return counts
    for line in text.splitlines():
        match = XID_LINE.search(line)
        if match is None:
            continue
        domain, bus, device, function, xid = match.groups()
        key = ("%08X:%02X:%02X.%s" % (int(domain, 16), int(bus, 16), int(device, 16), function or "0"),
               str(int(xid)))
        if key in counts:
            counts[key] += 1
        elif len(counts) < MAX_XID_SERIES:
            counts[key] = 1
    return counts


def _read_file(path, limit):
    """The start of a regular file, up to `limit` bytes; never waits on a FIFO or a device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return handle.read(limit)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # already gone, or what is left of it is not ours
        pass


def _run_bounded(argv, timeout, limit):
    """The start of argv's output, up to `limit` bytes, within `timeout` seconds, or an OSError.

    (_command.run does this for the modules; the collector keeps to _nvml and itself, the two files the monitoring
    role installs.) The command runs in a session of its own, so the deadline kills its whole group.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    timed_out = threading.Event()

    def expire():
        timed_out.set()
        _kill_group(proc)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        data = proc.stdout.read(limit)
        if len(data) >= limit:
            _kill_group(proc)  # the rest is beyond the limit
            proc.wait()
            return data
        proc.wait()
    finally:
        timer.cancel()
        proc.stdout.close()
    if timed_out.is_set():
        raise OSError(errno.ETIMEDOUT, "`%s` did not finish within %ss" % (" ".join(argv), timeout))
    if proc.returncode != 0:
        raise OSError(errno.EIO, "`%s` exited with %s" % (" ".join(argv), proc.returncode))
    return data


def read_kernel_log(path=None, timeout=KERNEL_LOG_TIMEOUT, limit=MAX_KERNEL_LOG):
    """(text, error): the kernel log of this boot (journalctl), or of `path`; error is None or one line saying why
    it could not be read."""
    try:
        data = _read_file(path, limit) if path else _run_bounded(JOURNALCTL, timeout, limit)
    except (OSError, ValueError) as exc:
        return "", "%s: %s" % (path or "journalctl", getattr(exc, "strerror", None) or exc)
    return data.decode("utf-8", "replace"), None


def collect(nvml_timeout=10.0, kernel_log=None, now=None, warn=None):
    """The metrics text of one run. `warn(line)` hears why NVML or the kernel log could not be read."""
    warn = warn or (lambda line: None)
    try:
        snapshot = _nvml.snapshot(timeout=nvml_timeout)
    except _nvml.NvmlError as exc:
        warn("NVML: %s" % exc)
        snapshot = None
    log_text, log_error = read_kernel_log(kernel_log)
    if log_error:
        warn("kernel log: %s" % log_error)
    return render(snapshot, parse_xid(log_text), log_error is None, time.time() if now is None else now)


class OutputError(Exception):
    """The metrics file cannot be written; the message names the path."""


def write_atomically(path, text):
    """Replaces `path` by a rename, so the node exporter never reads half a file. A directory or a symlink at
    `path` is refused: something else is there."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError("%s is a directory; --output takes a file path" % path)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise OutputError("%s is a symlink; refusing to replace it (remove it, or name the file itself)" % path)
    directory = os.path.dirname(os.path.abspath(path))
    # Not *.prom: the textfile collector reads only those, so it never sees the file half-written.
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path), suffix=".tmp")
    except OSError as exc:
        raise OutputError("%s cannot be written: %s" % (path, exc.strerror or exc))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), 0o644)
        os.rename(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise OutputError("%s cannot be written: %s" % (path, exc.strerror or exc))
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0 or value > 3600:
        raise argparse.ArgumentTypeError("expected a number of seconds above 0 and at most 3600, got %r" % text)
    return value


def _parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Write GPU metrics read through NVML (and Xid events from the kernel log) in the "
                               "Prometheus text format, for the node exporter's textfile collector.")
    parser.add_argument("--output", metavar="FILE",
                        help="the file to write, atomically, mode 0644 (default: standard output)")
    parser.add_argument("--kernel-log", metavar="FILE",
                        help="read Xid events from this file instead of `%s`" % " ".join(JOURNALCTL))
    parser.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=10.0,
                        help="how long NVML may take to answer (default: 10)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)  # exits 2 on bad arguments
    if args.output is not None and not args.output.strip():
        _parser().error("--output: an empty path")

    def warn(line):
        sys.stderr.write("%s: %s\n" % (PROG, line.replace("\n", " ")))

    try:
        text = collect(nvml_timeout=args.timeout, kernel_log=args.kernel_log, warn=warn)
        if args.output is None:
            sys.stdout.write(text)
        else:
            write_atomically(args.output, text)
    except OutputError as exc:
        warn(str(exc))
        return 2
    except Exception as exc:  # pylint: disable=broad-except
        # A timer's log is read line by line: one line that says what failed, never a traceback.
        warn("unexpected error, nothing written: %s: %s" % (type(exc).__name__, exc))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
