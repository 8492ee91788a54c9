# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU state through NVML (nvidia-ml-py), shared by gpu_select and vllm_health.

NVML calls go into the driver and can block when the driver is wedged, so every read runs in a worker thread
bounded by a deadline: the caller gets an answer or a timeout, never a hang.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import traceback

try:
    import pynvml
except ImportError:
    pynvml = None
    PYNVML_IMPORT_ERROR = traceback.format_exc()
else:
    PYNVML_IMPORT_ERROR = None

MIB = 1024 * 1024
# NVML_VALUE_NOT_AVAILABLE as an unsigned long long: what NVML puts in a process's usedGpuMemory when it cannot say
# (Windows WDDM, some vGPU and MIG setups). nvidia-ml-py turns it into None since 11.x; older bindings pass it on.
NOT_AVAILABLE = (1 << 64) - 1

# nvmlDeviceGetTopologyCommonAncestor levels, closest first.
TOPOLOGY_NAMES = {0: "internal", 10: "single", 20: "multiple", 30: "hostbridge", 40: "node", 50: "system"}


class NvmlError(Exception):
    """NVML is missing, failed, or did not answer in time. `code` is NVML's return code when there is one."""

    def __init__(self, message, code=None):
        super(NvmlError, self).__init__(message)
        self.code = code


def run_with_deadline(func, timeout, what):
    """Runs func() in a daemon thread; raises NvmlError if it does not finish within `timeout` seconds."""
    outcome = {}

    def target():
        try:
            outcome["value"] = func()
        except Exception as exc:  # pylint: disable=broad-except
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="inferops-nvml")
    worker.daemon = True
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise NvmlError("%s did not answer within %ss (a wedged driver?)" % (what, timeout))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _nvml_error(exc, doing):
    code = getattr(exc, "value", None)
    return NvmlError("NVML %s failed: %s (NVML error %s)" % (doing, exc, code), code=code)


def _optional(call, *args):
    """The value, or None where NVML says the device does not support it (as nvidia-smi prints [N/A])."""
    try:
        return call(*args)
    except pynvml.NVMLError as exc:
        if getattr(exc, "value", None) == pynvml.NVML_ERROR_NOT_SUPPORTED:
            return None
        raise


def _extra(call, *args):
    """A reading the GPU selection does not depend on (power, clock event reasons): None where NVML cannot give it
    (not supported, no permission under vGPU, missing from an older driver), so that such a failure never makes a
    GPU unreadable for gpu_select or vllm_health. A lost GPU stays lost."""
    try:
        return _optional(call, *args)
    except pynvml.NVMLError as exc:
        if getattr(exc, "value", None) == pynvml.NVML_ERROR_GPU_IS_LOST:
            raise
        return None


def _watts(call, handle):
    milliwatts = _extra(call, handle)
    return None if milliwatts is None else int(milliwatts) / 1000.0


def _clocks_event_reasons(handle):
    """The bitmask of why the clocks are held down (the nvmlClocksEventReason* bits), or None. Drivers before r535
    and older bindings know the call only by its former name, CurrentClocksThrottleReasons, with the same bits."""
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        call = getattr(pynvml, name, None)
        if call is None:  # a binding that predates the name
            continue
        try:
            reasons = _optional(call, handle)
        except pynvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise
            if code == pynvml.NVML_ERROR_FUNCTION_NOT_FOUND:  # a driver that predates the name
                continue
            return None
        return None if reasons is None else int(reasons)
    return None


def _mib(value):
    """Bytes as whole MiB; None where NVML has no value (None, or NVML_VALUE_NOT_AVAILABLE read as a number)."""
    if value is None:
        return None
    value = int(value)
    return None if value < 0 or value >= NOT_AVAILABLE else value // MIB


def _processes(handle):
    found = []
    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
        found.append({"pid": int(proc.pid), "used_memory_mib": _mib(getattr(proc, "usedGpuMemory", None))})
    return found


def _listed_processes(device, handle, optional):
    """Fills device["processes"]. With `optional`, a GPU whose processes NVML will not list (no permission, as
    for an unprivileged user under MIG or in some containers; not supported, as under some vGPU) stays readable:
    its processes are [] and `processes_error` says why, so that nothing reads it as idle."""
    try:
        device["processes"] = _processes(handle)
    except pynvml.NVMLError as exc:
        code = getattr(exc, "value", None)
        if not optional or code not in (pynvml.NVML_ERROR_NO_PERMISSION, pynvml.NVML_ERROR_NOT_SUPPORTED):
            raise
        device["processes"] = []
        device["processes_error"] = "NVML error %s: %s" % (code, exc)


def _retirement(handle):
    """(pages pending retirement, rows pending remapping, a row remapping failed): each True, False, or None where
    NVML cannot tell (pre-Ampere GPUs retire pages, Ampere and later remap rows; the other call is not supported).
    A pending retirement or remapping takes effect only at the next GPU reset; a failed remapping needs service."""
    call = getattr(pynvml, "nvmlDeviceGetRetiredPagesPendingStatus", None)
    pages = _extra(call, handle) if call is not None else None
    call = getattr(pynvml, "nvmlDeviceGetRemappedRows", None)
    rows = _extra(call, handle) if call is not None else None
    pending = failure = None
    if rows is not None:
        try:
            pending, failure = bool(rows[2]), bool(rows[3])
        except (IndexError, TypeError):  # a binding of another shape: unknown, not a reason
            pending = failure = None
    return (None if pages is None else bool(pages)), pending, failure


def _mig_devices(handle, processes_optional):
    devices = []
    count = _optional(pynvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
    for slot in range(count):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError as exc:
            if getattr(exc, "value", None) == pynvml.NVML_ERROR_NOT_FOUND:
                continue
            raise
        memory = pynvml.nvmlDeviceGetMemoryInfo(mig)
        device = {
            "uuid": _text(pynvml.nvmlDeviceGetUUID(mig)),
            "name": _text(pynvml.nvmlDeviceGetName(mig)),
            "memory_total_mib": int(memory.total) // MIB,
            "memory_used_mib": int(memory.used) // MIB,
            "memory_free_mib": int(memory.free) // MIB,
        }
        _listed_processes(device, mig, processes_optional)
        devices.append(device)
    return devices


def _device(index, handle, processes_optional=False):
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    utilization = _optional(pynvml.nvmlDeviceGetUtilizationRates, handle)
    # [current, pending]: a GPU set to MIG by `nvidia-smi -mig 1` runs whole until its next reset, then as MIG.
    mig = _optional(pynvml.nvmlDeviceGetMigMode, handle)
    mig_enabled = bool(mig and mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE)
    ecc = _optional(pynvml.nvmlDeviceGetTotalEccErrors, handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                    pynvml.NVML_VOLATILE_ECC)
    pages_pending, rows_pending, rows_failure = _retirement(handle)
    device = {
        "index": index,
        "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
        "name": _text(pynvml.nvmlDeviceGetName(handle)),
        "pci_bus_id": _text(pynvml.nvmlDeviceGetPciInfo(handle).busId),
        "memory_total_mib": int(memory.total) // MIB,
        "memory_used_mib": int(memory.used) // MIB,
        "memory_free_mib": int(memory.free) // MIB,
        "utilization_gpu": None if utilization is None else int(utilization.gpu),
        "temperature_c": _optional(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU),
        "ecc_uncorrected_volatile": None if ecc is None else int(ecc),
        "persistence_mode": bool(_optional(pynvml.nvmlDeviceGetPersistenceMode, handle)),
        "mig_enabled": mig_enabled,
        "mig_enabled_pending": bool(mig and mig[1] == pynvml.NVML_DEVICE_MIG_ENABLE),
        "mig_devices": _mig_devices(handle, processes_optional) if mig_enabled else [],
        "retired_pages_pending": pages_pending,
        "remapped_rows_pending": rows_pending,
        "remapped_rows_failure": rows_failure,
        "power_usage_w": _watts(pynvml.nvmlDeviceGetPowerUsage, handle),
        "power_limit_w": _watts(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle),
        "clocks_event_reasons": _clocks_event_reasons(handle),
    }
    _listed_processes(device, handle, processes_optional)
    return device


# What nvidia-ml-py, a ctypes binding, raises when the driver answers with something it cannot convert (a name
# that is not UTF-8, a value out of range): that GPU's answer is unreadable, like an NVML error.
UNREADABLE_ANSWER = (ValueError, TypeError, OverflowError)


def _read(index, processes_optional=False):
    """(device, handle) for one GPU; a GPU that cannot be read (fallen off the bus, ...) is reported with `error`
    and no handle, not silently dropped."""
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return _device(index, handle, processes_optional), handle
    except pynvml.NVMLError as exc:
        return {"index": index, "error": "NVML error %s: %s" % (getattr(exc, "value", None), exc)}, None
    except UNREADABLE_ANSWER as exc:  # UnicodeDecodeError is a ValueError
        return {"index": index, "error": "NVML gave an unreadable answer (%s: %s)" % (type(exc).__name__, exc)}, None


def _level(a, b):
    """nvmlDeviceGetTopologyCommonAncestor, or None (read as the farthest) where it cannot be had for the pair."""
    try:
        return pynvml.nvmlDeviceGetTopologyCommonAncestor(a, b)
    except (pynvml.NVMLError,) + UNREADABLE_ANSWER:
        return None


def _topology(handles):
    """Pairwise common-ancestor levels, {i: {j: level}}, among the GPUs in `handles` ({index: handle}): those that
    could be read. A lost GPU's handle would fail every pair it is in, and it cannot be chosen anyway."""
    matrix = dict((i, {}) for i in handles)
    for i in handles:
        for j in handles:
            if i == j:
                matrix[i][j] = 0
            elif j < i:
                matrix[i][j] = matrix[j][i]
            else:
                matrix[i][j] = _level(handles[i], handles[j])
    return matrix


def _snapshot(indices, with_topology, processes_optional=False):
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise _nvml_error(exc, "initialisation (nvmlInit)")
    try:
        count = pynvml.nvmlDeviceGetCount()
        wanted = range(count) if indices is None else [i for i in indices if 0 <= i < count]
        devices, handles = [], {}
        for index in wanted:
            device, handle = _read(index, processes_optional)
            devices.append(device)
            if handle is not None:
                handles[index] = handle
        return {
            "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
            "count": count,
            "devices": devices,
            "topology": _topology(handles) if with_topology and len(handles) > 1 else None,
        }
    except pynvml.NVMLError as exc:
        raise _nvml_error(exc, "query")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def snapshot(timeout=10.0, indices=None, with_topology=False, processes_optional=False):
    """Every GPU (or those in `indices`) as a dict of plain values, read through NVML within `timeout` seconds.

    By default a GPU whose compute processes NVML will not list is unreadable (`error`); with `processes_optional`
    it is read, with `processes_error` saying why its `processes` are empty (see _listed_processes)."""
    if pynvml is None:
        raise NvmlError("the nvidia-ml-py library (import pynvml) is not installed on this host")
    try:
        return run_with_deadline(lambda: _snapshot(indices, with_topology, processes_optional), timeout, "NVML")
    except NvmlError:
        raise
    except Exception as exc:  # pylint: disable=broad-except
        # A ctypes binding over a broken driver can raise anything; callers are promised NvmlError only.
        raise NvmlError("NVML query failed: %s: %s" % (type(exc).__name__, exc))
