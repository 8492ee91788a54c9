"""One way to start, watch and stop a vLLM server, whichever it is: the real vLLM (inferops/vllm-cpu, on this
machine's dockerd) or the emulator (inferops/vllm-emulator, in a lab host, with a fake GPU). Both serve the same
model directory, the tiny Llama of the real image, at /models/tiny, and read extra files from /conf."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import labctl  # noqa: E402
from labhost import EMULATOR_IMAGE, LabHost  # noqa: E402

MODEL = "/models/tiny"
NO_TOKENIZER = "/models/notok"
REAL_IMAGE = labctl.real_tags()["real"]


class Server:
    """A `vllm serve` container: its URL, its logs, its end."""

    def __init__(self, backend, name, port):
        self.backend = backend
        self.kind = backend.kind
        self.name = name
        self.port = port
        self.url = "http://%s:%d" % (backend.address, port) if port else None
        self.stopped = False

    def docker(self, *args, check=True):
        return self.backend.docker(*args, check=check)

    def logs(self):
        """stdout and stderr as `docker logs` keeps them: (stdout, stderr)."""
        result = self.docker("logs", self.name, check=False)
        return result.stdout, result.stderr

    def merged_logs(self):
        """Both streams in the order the lines were written (by Docker's timestamps)."""
        result = self.docker("logs", "-t", self.name, check=False)
        stamped = []
        for stream, text in enumerate((result.stdout, result.stderr)):
            for index, line in enumerate(text.splitlines()):
                stamp, _space, rest = line.partition(" ")
                # RFC 3339 with the fraction's trailing zeros cut: pad it, or "…32.00435Z" sorts wrong.
                seconds, _dot, fraction = stamp.rstrip("Z").partition(".")
                stamped.append((seconds, fraction.ljust(9, "0"), stream, index, rest))
        return [entry[-1] for entry in sorted(stamped)]

    def state(self):
        return json.loads(self.docker("inspect", "-f", "{{json .State}}", self.name).stdout)

    def wait_exit(self, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.state()
            if not state["Running"]:
                return state["ExitCode"]
            time.sleep(0.3)
        raise AssertionError("%s (%s) still running after %d s" % (self.name, self.kind, timeout))

    def wait_ready(self, timeout):
        """Until /health answers 200; fails at once, with the logs, if the server exits first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            if not self.state()["Running"]:
                raise AssertionError("%s (%s) exited while starting:\n%s" % (self.name, self.kind, self.tail()))
            time.sleep(0.5)
        raise AssertionError("%s (%s) not healthy after %d s:\n%s" % (self.name, self.kind, timeout, self.tail()))

    def tail(self):
        return "\n".join(self.merged_logs()[-40:])

    def terminate(self):
        self.stopped = True
        self.docker("kill", "-s", "TERM", self.name)

    def remove(self):
        self.docker("rm", "-f", self.name, check=False)


class Backend:
    """Starts servers of one image (`image`, named after `kind`) through the backend's `docker`."""

    kind = image = None

    def run_server(self, options, args, port, network):
        """`docker run` of the image with `options`, on `port` or in the network of the container `network`."""
        name = "conformance-%s-%s" % (self.kind, uuid.uuid4().hex[:8])
        cmd = ["run", "-d", "--name", name] + options
        if network:
            cmd += ["--network", "container:" + network]
        elif port:
            cmd += ["-p", "%d:%d" % (port, port)]
        self.docker(*(cmd + [self.image] + list(args) + (["--port", str(port)] if port else [])))
        return Server(self, name, port if not network else None)

    def blocker(self, port):
        """A container listening on `port`, whose network a server can share to find the port taken."""
        name = "conformance-blocker-%s" % uuid.uuid4().hex[:8]
        self.docker("run", "-d", "--name", name, "--entrypoint", "python3", self.image, "-m", "http.server",
                    str(port))
        return name


class RealBackend(Backend):
    """The real vLLM on this machine's dockerd; /conf and the tokenizer-less model are host directories."""

    kind = "real"
    image = REAL_IMAGE
    address = "127.0.0.1"
    ready_timeout = 300

    def __init__(self, files):
        self.files = files

    @staticmethod
    def check():
        if subprocess.run(["docker", "image", "inspect", REAL_IMAGE], capture_output=True,
                          check=False).returncode != 0:
            return "the real vLLM image %s is missing: build it with `tests/lab/labctl.py real-image`" % REAL_IMAGE
        return None

    def docker(self, *args, check=True, timeout=120):
        result = subprocess.run(["docker"] + list(args), capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError("`docker %s` exited %d: %s" % (" ".join(args), result.returncode, result.stderr))
        return result

    def start(self, args, port=None, network=None, gpu=None):
        # Unpinned: vLLM's CPU build pins every server's worker to core 0, where several servers starve each other.
        return self.run_server(["--ipc=host", "-e", "VLLM_CPU_OMP_THREADS_BIND=nobind", "-v",
                                "%s:/conf:ro" % self.files.conf, "-v",
                                "%s:%s:ro" % (self.files.no_tokenizer, NO_TOKENIZER)], args, port, network)


class EmulatorBackend(Backend):
    """The emulator in a lab host, on one of its fake GPUs; the model and /conf copied into the host."""

    kind = "emulator"
    image = EMULATOR_IMAGE
    ready_timeout = 60
    root = "/srv/conformance"

    def __init__(self, files, host_name):
        self.host = LabHost(host_name)
        self.address = self.host.ip
        self.host.run("rm", "-rf", self.root)
        self.host.run("mkdir", "-p", self.root)
        for source, target in ((files.model, "tiny"), (files.no_tokenizer, "notok"), (files.conf, "conf")):
            subprocess.run(["docker", "cp", source, "%s:%s/%s" % (host_name, self.root, target)], check=True,
                           capture_output=True)
        self.host.run("chmod", "-R", "a+rX", self.root)

    @staticmethod
    def check():
        hosts = lab_hosts()
        if not hosts:
            return "no lab host is running: start the lab with `make lab-up`"
        return None

    def docker(self, *args, check=True, timeout=120):
        return self.host.run("docker", *args, check=check, timeout=timeout)

    def start(self, args, port=None, network=None, gpu=7):
        """`gpu`: a GPU of its own (an instance takes --gpu-memory-utilization, 0.92, of it), not GPU 0, which the
        lab gives a foreign workload."""
        return self.run_server(["--gpus", '"device=%d"' % gpu, "-v", "%s/tiny:%s:ro" % (self.root, MODEL),
                                "-v", "%s/notok:%s:ro" % (self.root, NO_TOKENIZER),
                                "-v", "%s/conf:/conf:ro" % self.root], args, port, network)


def lab_hosts():
    result = subprocess.run(["docker", "ps", "--filter", "label=inferops.lab=host", "--format", "{{.Names}}"],
                            capture_output=True, text=True, check=False)
    return sorted(result.stdout.split())


class Files:
    """The model directory from the real image (so both servers load the same one), a copy without its tokenizer
    files, and /conf."""

    def __init__(self, top, conf):
        self.model = os.path.join(top, "tiny")
        self.no_tokenizer = os.path.join(top, "notok")
        self.conf = os.path.join(top, "conf")
        name = "conformance-model-%s" % uuid.uuid4().hex[:8]
        subprocess.run(["docker", "create", "--name", name, REAL_IMAGE], check=True, capture_output=True)
        try:
            subprocess.run(["docker", "cp", "%s:%s" % (name, MODEL), self.model], check=True, capture_output=True)
        finally:
            subprocess.run(["docker", "rm", name], capture_output=True, check=False)
        os.makedirs(self.no_tokenizer)
        for entry in os.listdir(self.model):
            if not entry.startswith("tokenizer") and entry != "chat_template.jinja":
                with open(os.path.join(self.model, entry), "rb") as src:
                    with open(os.path.join(self.no_tokenizer, entry), "wb") as dst:
                        dst.write(src.read())
        os.makedirs(self.conf)
        for filename, text in conf.items():
            with open(os.path.join(self.conf, filename), "w") as handle:
                handle.write(text)
        for path in (self.model, self.no_tokenizer, self.conf):
            os.chmod(path, 0o755)
