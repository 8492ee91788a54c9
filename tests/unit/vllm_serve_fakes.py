"""Fakes for vllm_serve's manager: an AnsibleModule, a backend that records the actions, the module's options, a
/proc entry and an NVML snapshot."""

from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_backends import Backend
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_spec import INSTANCE_ENV

MIB = 1024
SECRET = "sk-" + "q" * 40


class Exited(Exception):
    def __init__(self, result):
        super(Exited, self).__init__(result.get("msg"))
        self.result = result


class FakeModule(object):
    def __init__(self, params, check_mode=False, diff=False):
        self.params = params
        self.check_mode = check_mode
        self._diff = diff
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)

    def fail_json(self, **result):
        result["failed"] = True
        raise Exited(result)

    def exit_json(self, **result):
        raise Exited(result)


class FakeBackend(Backend):
    """Stands for the docker or the unit backend: an instance in a given actual state, recording the actions."""

    result_key = "unit"

    def __init__(self, spec, image, wanted, kind, actual, before=None):
        super(FakeBackend, self).__init__(spec, image, wanted)
        self.kind = kind
        self.actual = actual
        self.before = before or {}
        self.done = []
        # Called with each action's name as it runs, to look at the host at that moment (or to make it fail).
        self.on_action = None

    def read(self):
        return self.actual

    def read_removal(self):
        return self.actual

    def diff(self):
        return self.before, self.wanted["summary"]

    def fields(self):
        after = dict(self.wanted.get("summary", {}))
        return self.before, after

    def act(self, name):
        self.done.append(name)
        if self.on_action:
            self.on_action(name)

    def pull(self):
        self.act("pull")

    def remove(self):
        self.act("remove")

    def create(self):
        self.act("create")

    def start(self):
        self.act("start")

    def stop(self):
        self.act("stop")

    def restart(self):
        self.act("restart")

    def describe(self, check_mode):
        return self.spec.unit_name


def params(tmp_path, **overrides):
    base = dict(name="llama", state="started", backend="systemd", model="meta-llama/Llama-3.1-8B-Instruct",
                served_model_name=None, image="vllm/vllm-openai:v0.33.0", pull="missing", gpus=["0"],
                tensor_parallel_size=None, pipeline_parallel_size=1, gpu_memory_utilization=0.9, max_model_len=None,
                max_num_seqs=None, max_num_batched_tokens=None, quantization=None, dtype=None, kv_cache_dtype=None,
                enable_prefix_caching=None, enable_chunked_prefill=None, enforce_eager=False,
                trust_remote_code=False, download_dir=None, hf_cache=str(tmp_path / "hf-cache"), host="0.0.0.0",
                port=8000, publish_address="0.0.0.0", api_keys=[SECRET], hf_token=None, ssl_certfile=None,
                ssl_keyfile=None, ssl_ca_certs=None, enable_ssl_refresh=False, env={}, extra_args={},
                vllm_version="0.33.0", flag_check="strict", model_params="8B", model_path_map={}, ipc_host=True,
                shm_size_mib=16384, restart_policy="unless-stopped", health_start_period=None, stop_timeout=30,
                shutdown_timeout=0, log_max_size="100m", service_user="root", venv_path="/opt/vllm",
                config_dir=str(tmp_path / "etc"), log_dir=str(tmp_path / "log"), check_gpus=True, share_gpus=False,
                watchdog_hold=0, watchdog_hold_dir=str(tmp_path / "run-watchdog"))
    base.update(overrides)
    return base


def process_dir(proc, pid, comm, argv, instance=None):
    directory = proc / str(pid)
    directory.mkdir()
    (directory / "comm").write_bytes(comm.encode() + b"\n")
    (directory / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    environ = [b"PATH=/usr/bin"] + ([(INSTANCE_ENV + "=" + instance).encode()] if instance else [])
    (directory / "environ").write_bytes(b"\0".join(environ) + b"\0")


def snapshot_of(processes):
    def snapshot(timeout):
        assert timeout == 10
        return {"devices": [
            {"index": 0, "uuid": "GPU-0", "memory_total_mib": 80 * MIB, "memory_free_mib": 80 * MIB,
             "processes": processes.get(0, [])},
            {"index": 1, "uuid": "GPU-1", "memory_total_mib": 80 * MIB, "memory_free_mib": 80 * MIB,
             "processes": processes.get(1, [])}]}
    return snapshot
