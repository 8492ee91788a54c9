"""Helpers for tests that run against the lab (`make lab-up`): commands inside a lab host, emulator
containers, and reaching their ports from the test process."""

import contextlib
import json
import socket
import subprocess
import time
import uuid

EMULATOR_IMAGE = "inferops/vllm-emulator:0.33.0"
CUDA_IMAGE = "inferops/cuda-base:12.2-lab"


class LabHost:
    def __init__(self, name):
        self.name = name
        self.ip = subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name],
                                 capture_output=True, text=True, check=True).stdout.strip()

    def run(self, *cmd, check=True, input=None, timeout=60):
        result = subprocess.run(["docker", "exec", "-i", self.name] + list(cmd), capture_output=True, text=True,
                                input=input, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError("`%s` in %s exited %d:\n%s%s" % (
                " ".join(cmd), self.name, result.returncode, result.stdout, result.stderr))
        return result

    def sh(self, script, check=True, timeout=60):
        return self.run("/bin/bash", "-c", script, check=check, timeout=timeout)

    def python(self, code, timeout=60):
        """Runs Python on the lab host and returns what it printed as JSON."""
        return json.loads(self.run("python3", "-", input=code, timeout=timeout).stdout)

    def read(self, path):
        return self.run("cat", path).stdout

    def write(self, path, text):
        self.run("/bin/sh", "-c", 'cat > "$0"', path, input=text)

    def nvml(self):
        """Every GPU as the real pynvml on the host sees it."""
        return self.python(NVML_DUMP)

    def emulator(self, args, gpus=None, port=None, env=None, name=None, extra=()):
        """Starts an emulator container (like vllm/vllm-openai) publishing `port`; returns its name."""
        name = name or "emu-%s" % uuid.uuid4().hex[:8]
        cmd = ["docker", "run", "-d", "--name", name]
        if gpus is not None:
            cmd += ["--gpus", '"device=%s"' % ",".join(str(g) for g in gpus)]
        if port:
            cmd += ["-p", "%d:%d" % (port, port)]
        for key, value in (env or {}).items():
            cmd += ["-e", "%s=%s" % (key, value)]
        cmd += list(extra) + [EMULATOR_IMAGE] + list(args)
        if port and "--port" not in args:
            cmd += ["--port", str(port)]
        self.run(*cmd)
        return name

    def logs(self, container):
        result = self.run("docker", "logs", container, check=False)
        return result.stdout + result.stderr

    def container_state(self, container):
        out = self.run("docker", "inspect", "-f", "{{json .State}}", container).stdout
        return json.loads(out)

    def wait_log(self, container, text, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            logs = self.logs(container)
            if text in logs:
                return logs
            time.sleep(0.2)
        raise AssertionError("%r never appeared in the logs of %s:\n%s" % (text, container, self.logs(container)))

    def wait_exit(self, container, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.container_state(container)
            if not state["Running"]:
                return state
            time.sleep(0.2)
        raise AssertionError("%s still running after %ss" % (container, timeout))

    def remove(self, *containers):
        if containers:
            self.run("docker", "rm", "-f", *containers, check=False)

    def wait_port(self, port, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with contextlib.suppress(OSError):
                with socket.create_connection((self.ip, port), timeout=1):
                    return
            time.sleep(0.2)
        raise AssertionError("%s:%d never accepted a connection" % (self.ip, port))

    def set_fault(self, port, **faults):
        settings = ["%s=%s" % (key, json.dumps(value)) for key, value in faults.items()]
        self.run("inferops-lab", "vllm-fault", "--clear", str(port), *settings)


NVML_DUMP = r"""
import json
import pynvml as n

def attempt(call, *args):
    try:
        return call(*args)
    except n.NVMLError as exc:
        return {"nvml_error": exc.value, "message": str(exc)}

n.nvmlInit()
gpus = []
for i in range(n.nvmlDeviceGetCount()):
    h = n.nvmlDeviceGetHandleByIndex(i)
    mem = n.nvmlDeviceGetMemoryInfo(h)
    util = attempt(n.nvmlDeviceGetUtilizationRates, h)
    mig = attempt(n.nvmlDeviceGetMigMode, h)
    migs = []
    if isinstance(mig, list) and mig[0]:
        for slot in range(n.nvmlDeviceGetMaxMigDeviceCount(h)):
            m = attempt(n.nvmlDeviceGetMigDeviceHandleByIndex, h, slot)
            if isinstance(m, dict):
                continue
            mm = n.nvmlDeviceGetMemoryInfo(m)
            migs.append({"uuid": n.nvmlDeviceGetUUID(m), "total": mm.total, "used": mm.used,
                         "parent_uuid": n.nvmlDeviceGetUUID(n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m))})
    gpus.append({
        "index": n.nvmlDeviceGetIndex(h),
        "uuid": n.nvmlDeviceGetUUID(h),
        "name": n.nvmlDeviceGetName(h),
        "memory": {"total": mem.total, "used": mem.used, "free": mem.free},
        "utilization": util if isinstance(util, dict) else {"gpu": util.gpu, "memory": util.memory},
        "temperature": n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
        "processes": [{"pid": p.pid, "used": p.usedGpuMemory} for p in n.nvmlDeviceGetComputeRunningProcesses(h)],
        "ecc_uncorrected_volatile": n.nvmlDeviceGetTotalEccErrors(
            h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC),
        "mig_mode": mig,
        "mig_devices": migs,
        "persistence": n.nvmlDeviceGetPersistenceMode(h),
        "pci_bus_id": n.nvmlDeviceGetPciInfo(h).busId,
    })
topology = {}
if len(gpus) > 1:
    h0 = n.nvmlDeviceGetHandleByIndex(0)
    for i in range(1, len(gpus)):
        topology[i] = n.nvmlDeviceGetTopologyCommonAncestor(h0, n.nvmlDeviceGetHandleByIndex(i))
print(json.dumps({"driver": n.nvmlSystemGetDriverVersion(), "gpus": gpus, "topology_from_0": topology,
                  "by_uuid_index": n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByUUID(gpus[0]["uuid"]))}))
n.nvmlShutdown()
"""
