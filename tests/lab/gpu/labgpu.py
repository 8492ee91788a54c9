"""The lab's simulated GPUs: the state file, the claim files, and a ctypes reader of the fake NVML.

Test infrastructure only (tests/lab). Shared by the `inferops-lab` CLI, the fake `nvidia-smi`, the stand-in
runtime hook and the vLLM emulator, inside lab hosts and inside containers. Standard library only.

Layout, as on a Debian host with the driver installed:
- /etc/inferops-lab/gpus.json: the GPUs and the faults set on them (driver loaded, ECC, MIG, persistence...).
- /var/lib/inferops-lab/claims/<pidns>-<pid>.json: one file per process that uses GPU memory.
- /usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1: the fake NVML (driver directory), with the
  usual /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 link that `inferops-lab hide nvml` removes.
"""

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import tempfile

STATE_PATH = os.environ.get("INFEROPS_LAB_STATE", "/etc/inferops-lab/gpus.json")
CLAIMS_DIR = os.environ.get("INFEROPS_LAB_CLAIMS", "/var/lib/inferops-lab/claims")
DRIVER_DIR = "/usr/lib/x86_64-linux-gnu/nvidia/current"
DRIVER_NVML = os.path.join(DRIVER_DIR, "libnvidia-ml.so.1")
LINKED_NVML = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
DRIVER_SMI = "/usr/lib/nvidia/current/nvidia-smi"
LINKED_SMI = "/usr/bin/nvidia-smi"
MIB = 1024 * 1024

H100_MEMORY_MIB = 81559
H100_NAME = "NVIDIA H100 80GB HBM3"


def default_state(host="lab", gpu_count=8):
    """A realistic 8x H100 SXM host: two NUMA nodes, two GPUs per PCIe switch, persistence on."""
    gpus = []
    for index in range(gpu_count):
        bus = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)[index % 8] + 0x100 * (index // 8)
        gpus.append({
            "index": index,
            "uuid": _uuid(host, index),
            "name": H100_NAME,
            "serial": "16522%08d" % (int(_digest(host, index)[:8], 16) % 10 ** 8),
            "pci_bus_id": "00000000:%02X:00.0" % (bus & 0xFF),
            "memory_total_mib": H100_MEMORY_MIB,
            "memory_used_mib": 0,
            "memory_stuck_mib": 0,
            "utilization_gpu": 0,
            "utilization_memory": 0,
            "temperature_c": 31 + index % 4,
            "persistence_mode": True,
            "mig_capable": True,
            "mig_mode": False,
            "ecc_uncorrected_volatile": 0,
            "ecc_corrected_volatile": 0,
            "power_usage_w": 70 + 5 * (index % 4),
            "power_limit_w": 700,  # an H100 SXM's
            "clocks_event_reasons": 0,  # a bitmask of nvmlClocksEventReason* bits
            "numa_node": 0 if index < gpu_count // 2 else 1,
            "pci_switch": index // 2,
            "host_bridge": index // 2,
            "lost": False,
            "mig_devices": [],
        })
    return {
        "driver_loaded": True,
        "driver_version": "535.247.01",
        "cuda_driver_version": 12020,
        "faults": {"nvidia_smi_hang": False},
        "gpus": gpus,
    }


def _digest(*parts):
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()


def _uuid_text(prefix, digest):
    return "%s-%s-%s-%s-%s-%s" % (prefix, digest[:8], digest[8:12], digest[12:16], digest[16:20], digest[20:32])


def _uuid(host, index):
    """Stable per host and index, in NVIDIA's GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx form."""
    return _uuid_text("GPU", _digest(host, index))


def mig_uuid(gpu_uuid, slot):
    return _uuid_text("MIG", _digest(gpu_uuid, "mig", slot))


def load_state(path=STATE_PATH):
    with open(path) as handle:
        return json.load(handle)


@contextlib.contextmanager
def edit_state(path=STATE_PATH):
    """Read-modify-write of the state under an exclusive lock; the file is replaced atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load_state(path)
        yield state
        save_state(state, path)


def save_state(state, path=STATE_PATH):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gpus.")
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def find_gpu(state, ref):
    """The state entry for an index or a UUID, or raise KeyError."""
    for gpu in state["gpus"]:
        if str(gpu["index"]) == str(ref) or gpu["uuid"] == ref:
            return gpu
    raise KeyError("no GPU %r in %s" % (ref, STATE_PATH))


def start_time(pid="self"):
    """Field 22 of /proc/PID/stat, the process start time: it tells a recycled PID from the original."""
    with open("/proc/%s/stat" % pid) as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[19])


def claim_path(pid=None):
    pid = pid or os.getpid()
    return os.path.join(CLAIMS_DIR, "%d-%d.json" % (os.stat("/proc/self/ns/pid").st_ino, pid))


_held_claims = {}


def write_claim(gpu_memory_mib, utilization=0, name=None, owner=None):
    """Record that this process uses `gpu_memory_mib` ({uuid: MiB}) until it exits or drops the claim.

    The process keeps an exclusive flock on its claim file: the fake NVML counts the claim only while the lock
    is held, so the memory is released when the process dies, even by SIGKILL, as with the real driver."""
    if not os.path.isdir(CLAIMS_DIR):
        os.makedirs(CLAIMS_DIR, exist_ok=True)
        os.chmod(CLAIMS_DIR, 0o1777)
    claim = {
        "pidns": os.stat("/proc/self/ns/pid").st_ino,
        "pid": os.getpid(),
        "starttime": start_time(),
        "name": name or os.path.basename(os.readlink("/proc/self/exe")),
        "owner": owner,
        "gpus": gpu_memory_mib,
        "utilization": utilization,
    }
    path = claim_path()
    fd, tmp = tempfile.mkstemp(dir=CLAIMS_DIR, prefix=".claim.")
    fcntl.flock(fd, fcntl.LOCK_EX)  # taken before the rename, so the claim is never seen unlocked
    os.write(fd, json.dumps(claim).encode())
    os.fchmod(fd, 0o644)
    os.replace(tmp, path)
    old = _held_claims.pop(path, None)
    if old is not None:
        os.close(old)
    _held_claims[path] = fd
    return path


def drop_claim():
    path = claim_path()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = _held_claims.pop(path, None)
    if fd is not None:
        os.close(fd)


# ---- reading through NVML, like the real tools do ----

class NvmlError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class _Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class _Process(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


class _PciInfo(ctypes.Structure):
    _fields_ = [("busIdLegacy", ctypes.c_char * 16), ("domain", ctypes.c_uint), ("bus", ctypes.c_uint),
                ("device", ctypes.c_uint), ("pciDeviceId", ctypes.c_uint), ("pciSubSystemId", ctypes.c_uint),
                ("busId", ctypes.c_char * 32)]


NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_DRIVER_NOT_LOADED = 9


class Nvml:
    """Just the NVML calls the lab's own tools need. Loads the library the way the driver's tools do."""

    def __init__(self, paths=(LINKED_NVML, "libnvidia-ml.so.1", DRIVER_NVML)):
        self.lib = None
        for path in paths:
            try:
                self.lib = ctypes.CDLL(path)
                break
            except OSError:
                continue
        if self.lib is None:
            raise NvmlError(12, "NVML Shared Library Not Found")
        self.lib.nvmlErrorString.restype = ctypes.c_char_p
        self._check(self.lib.nvmlInitWithFlags(0))

    def _check(self, code):
        if code:
            raise NvmlError(code, self.lib.nvmlErrorString(code).decode())

    def close(self):
        self.lib.nvmlShutdown()

    def _string(self, fn, *args, size=96):
        buf = ctypes.create_string_buffer(size)
        self._check(fn(*args, buf, ctypes.c_uint(size)))
        return buf.value.decode()

    def driver_version(self):
        return self._string(self.lib.nvmlSystemGetDriverVersion)

    def cuda_version(self):
        value = ctypes.c_int()
        self._check(self.lib.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(value)))
        return "%d.%d" % (value.value // 1000, value.value % 1000 // 10)

    def count(self):
        value = ctypes.c_uint()
        self._check(self.lib.nvmlDeviceGetCount_v2(ctypes.byref(value)))
        return value.value

    def handle(self, index):
        handle = ctypes.c_void_p()
        self._check(self.lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)))
        return handle

    def mig_handles(self, handle):
        count = ctypes.c_uint()
        if self.lib.nvmlDeviceGetMaxMigDeviceCount(handle, ctypes.byref(count)):
            return []
        found = []
        for slot in range(count.value):
            mig = ctypes.c_void_p()
            if self.lib.nvmlDeviceGetMigDeviceHandleByIndex(handle, ctypes.c_uint(slot), ctypes.byref(mig)) == 0:
                found.append(mig)
        return found

    def _optional(self, call):
        """The value, or None where NVML says the field is not supported (nvidia-smi prints [N/A])."""
        try:
            return call()
        except NvmlError as exc:
            if exc.code == NVML_ERROR_NOT_SUPPORTED:
                return None
            raise

    def device(self, handle):
        """Everything the lab tools print about one GPU (or MIG device)."""
        lib = self.lib
        memory = _Memory()
        self._check(lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)))
        info = {
            "name": self._string(lib.nvmlDeviceGetName, handle),
            "uuid": self._string(lib.nvmlDeviceGetUUID, handle),
            "memory_total": memory.total // MIB,
            "memory_used": memory.used // MIB,
            "memory_free": memory.free // MIB,
            "processes": self.processes(handle),
        }
        is_mig = ctypes.c_uint()
        self._check(lib.nvmlDeviceIsMigDeviceHandle(handle, ctypes.byref(is_mig)))
        if is_mig.value:
            return info

        index = ctypes.c_uint()
        self._check(lib.nvmlDeviceGetIndex(handle, ctypes.byref(index)))
        pci = _PciInfo()
        self._check(lib.nvmlDeviceGetPciInfo_v3(handle, ctypes.byref(pci)))
        temperature = ctypes.c_uint()
        self._check(lib.nvmlDeviceGetTemperature(handle, 0, ctypes.byref(temperature)))
        persistence = ctypes.c_int()
        self._check(lib.nvmlDeviceGetPersistenceMode(handle, ctypes.byref(persistence)))
        ecc = ctypes.c_ulonglong()
        self._check(lib.nvmlDeviceGetTotalEccErrors(handle, 1, 0, ctypes.byref(ecc)))

        def utilization():
            value = _Utilization()
            self._check(lib.nvmlDeviceGetUtilizationRates(handle, ctypes.byref(value)))
            return value

        def mig_mode():
            current, pending = ctypes.c_uint(), ctypes.c_uint()
            self._check(lib.nvmlDeviceGetMigMode(handle, ctypes.byref(current), ctypes.byref(pending)))
            return current.value, pending.value

        def unsigned(call, kind=ctypes.c_uint):
            value = kind()
            self._check(call(handle, ctypes.byref(value)))
            return value.value

        util = self._optional(utilization)
        power = self._optional(lambda: unsigned(lib.nvmlDeviceGetPowerUsage))
        limit = self._optional(lambda: unsigned(lib.nvmlDeviceGetEnforcedPowerLimit))
        info.update({
            "index": index.value,
            "serial": self._string(lib.nvmlDeviceGetSerial, handle, size=32),
            "pci_bus_id": pci.busId.decode(),
            "temperature": temperature.value,
            "persistence_mode": bool(persistence.value),
            "ecc_uncorrected_volatile": ecc.value,
            "utilization_gpu": util.gpu if util else None,
            "utilization_memory": util.memory if util else None,
            "mig_mode": self._optional(mig_mode),
            "power_usage_w": None if power is None else power / 1000,
            "power_limit_w": None if limit is None else limit / 1000,
            "clocks_event_reasons": self._optional(
                lambda: unsigned(lib.nvmlDeviceGetCurrentClocksEventReasons, ctypes.c_ulonglong)),
            "mig_devices": [self.device(mig) for mig in self.mig_handles(handle)],
        })
        return info

    def processes(self, handle):
        count = ctypes.c_uint(0)
        code = self.lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, ctypes.byref(count), None)
        if code == 0:
            return []
        if code != NVML_ERROR_INSUFFICIENT_SIZE:
            self._check(code)
        count.value = count.value * 2 + 5
        procs = (_Process * count.value)()
        self._check(self.lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, ctypes.byref(count), procs))
        return [{"pid": p.pid, "used_memory": p.usedGpuMemory // MIB} for p in procs[:count.value]]

    def devices(self):
        return [self.device(self.handle(i)) for i in range(self.count())]
