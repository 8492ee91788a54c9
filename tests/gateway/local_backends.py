"""vLLM emulators and Debian's HAProxy as plain processes on this machine, for the gateway's tests: no Docker, no
lab host. The emulator is the lab's (tests/lab/emulator), staged with the flag catalog as the image build stages it,
over the lab's fake NVML built here with gcc, and with a fault file a test may write (its `hang`, `engine_dead`...).
"""
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from local_ports import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LAB = os.path.join(ROOT, "tests", "lab")
# Debian's HAProxy, unpacked by tools/fetch-prometheus-tools.sh (the unit stage runs it).
HAPROXY = os.path.join(ROOT, "build", "tools", "bin", "haproxy")
MODEL = "facebook/opt-125m"


_BUILT = []


def fake_nvml():
    """The lab's fake NVML, built with gcc once for this process (each Emulators copies it)."""
    if not _BUILT:
        build = tempfile.mkdtemp(prefix="inferops-fake-nvml-")
        atexit.register(shutil.rmtree, build, True)
        library = os.path.join(build, "libnvidia-ml.so.1")
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1", "-o", library,
                        os.path.join(LAB, "gpu", "libnvidia-ml.c"), os.path.join(LAB, "gpu", "json_min.c"),
                        "-lpthread"], check=True, timeout=120)
        _BUILT.append(library)
    return _BUILT[0]


class Emulators:
    """Emulated vLLM servers, each `vllm serve` on its own port, sharing one fake host of 8 GPUs."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.processes = {}
        self.fault_file = os.path.join(workdir, "vllm-faults.json")
        self._write_faults({})
        stage = os.path.join(workdir, "emulator")
        shutil.copytree(os.path.join(LAB, "emulator"), stage)
        shutil.copy2(os.path.join(ROOT, "plugins", "module_utils", "_vllm_flag_catalog.py"),
                     os.path.join(stage, "vllm_emu", "flag_catalog.py"))
        self.command = [sys.executable, os.path.join(stage, "vllm")]
        shutil.copy2(fake_nvml(), os.path.join(workdir, "libnvidia-ml.so.1"))
        sys.path.insert(0, os.path.join(LAB, "gpu"))
        try:
            import labgpu
        finally:
            sys.path.pop(0)
        state = os.path.join(workdir, "gpus.json")
        labgpu.save_state(labgpu.default_state("gateway-test"), state)
        os.makedirs(os.path.join(workdir, "claims"), exist_ok=True)
        self.env = dict(os.environ, LD_LIBRARY_PATH=workdir, INFEROPS_LAB_STATE=state,
                        INFEROPS_LAB_CLAIMS=os.path.join(workdir, "claims"),
                        VLLM_EMULATOR_FAULT_FILE=self.fault_file, PYTHONPATH=os.path.join(LAB, "gpu"))

    def start(self, name, key, gpu, *extra, port=None):
        """Starts an emulator on `port` (a free one by default: the same one again for a restart)."""
        port = port or free_port()
        log = open(os.path.join(self.workdir, "%s.log" % name), "w")
        env = dict(self.env, CUDA_VISIBLE_DEVICES=str(gpu))
        process = subprocess.Popen(self.command + ["serve", MODEL, "--port", str(port), "--api-key", key,
                                                   "--gpu-memory-utilization", "0.3", "--max-model-len", "2048"] + list(extra),
                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = (process, port)
        return port

    def wait_healthy(self, timeout=90):
        deadline = time.monotonic() + timeout
        for name, (process, port) in self.processes.items():
            while True:
                assert process.poll() is None, "emulator %s exited: %s" % (name, self.log(name)[-2000:])
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=2) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                assert time.monotonic() < deadline, "emulator %s not healthy: %s" % (name, self.log(name)[-2000:])
                time.sleep(0.3)

    def log(self, name):
        with open(os.path.join(self.workdir, "%s.log" % name)) as handle:
            return handle.read()

    def _write_faults(self, faults):
        tmp = self.fault_file + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(faults, handle)
        os.replace(tmp, self.fault_file)

    def set_fault(self, name, faults):
        """Faults of one server (the lab's fault file, keyed by port); {} clears them."""
        current = json.load(open(self.fault_file))
        current[str(self.processes[name][1])] = faults
        self._write_faults(current)

    def stop(self, name):
        process, _port = self.processes[name]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def close(self):
        for name in list(self.processes):
            self.stop(name)
