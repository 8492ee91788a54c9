# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The desired state of one vLLM instance, built from vllm_serve's options: its command line, environment,
mounts, secret files and the hash that tells whether a running instance matches.

Secrets never go on a command line or into the environment (both show in `ps` and `docker inspect`): API keys
reach vLLM through a `--config` file (vLLM's YAML config; JSON is YAML) and the Hugging Face token through
HF_TOKEN_PATH, both files 0600 in the instance's secrets directory.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import posixpath

from ansible_collections.inferops.vllm.plugins.module_utils import _docker_gpus, _vllm_flags
from ansible_collections.inferops.vllm.plugins.module_utils._redact import MASK

SECRETS_IN_CONTAINER = "/run/secrets/vllm"
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
INSTANCE_ENV = "INFEROPS_VLLM_INSTANCE"
LABEL_PREFIX = "io.inferops.vllm."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class SpecError(ValueError):
    pass


DEFAULT_LOG_DIR = "/var/log/vllm"


def _flag(name, value):
    return ["--" + name, str(value)]


class Spec(object):
    """Everything about the instance that does not depend on where it runs."""

    def __init__(self, params):
        self.p = params
        self.name = params["name"]
        self.backend = params["backend"]
        self.container_name = "vllm-%s" % self.name
        self.unit_name = "vllm-%s.service" % self.name
        self.secrets_dir = posixpath.join(params["config_dir"], "secrets", self.name)
        self.env_file = posixpath.join(params["config_dir"], "%s.env" % self.name)
        self.log_file = posixpath.join(params.get("log_dir") or DEFAULT_LOG_DIR, "%s.log" % self.name)
        # UUIDs in the form NVML prints ("GPU-"/"MIG-", lower-case hex), whatever case they were typed in: every
        # backend (DeviceRequests, `docker run --gpus`, CUDA_VISIBLE_DEVICES), the config hash and the result then
        # name a GPU one way. Indices stay as they are.
        self.gpus = [_docker_gpus.canonical_id(str(g)) for g in params["gpus"] or []]
        self.warnings = []
        self.mounts = []  # (host path, container path, mode)
        # The vLLM release the instance runs, as far as the options tell; vllm_serve may ask the host's vLLM.
        self.release = _vllm_flags.Release(params.get("vllm_version") or _vllm_flags.release_from_image(
            params.get("image")), "the options")

    # ---- paths inside the process's view ----

    def _inside(self, host_path):
        """Where a host path appears to vLLM: through model_path_map (longest prefix) in a container."""
        if self.backend == "venv":
            return host_path
        best = None
        for host_prefix, container_prefix in (self.p["model_path_map"] or {}).items():
            prefix = host_prefix.rstrip("/")
            if host_path == prefix or host_path.startswith(prefix + "/"):
                if best is None or len(prefix) > len(best[0]):
                    best = (prefix, container_prefix.rstrip("/"))
        if best:
            return best[1] + host_path[len(best[0]):]
        return host_path

    @property
    def secrets_inside(self):
        return self.secrets_dir if self.backend == "venv" else SECRETS_IN_CONTAINER

    def model_is_local(self):
        return self.p["model"].startswith("/")

    def check_model_files(self, exists=os.path.exists, isdir=os.path.isdir):
        """A local model must be a directory with config.json and its tokenizer (seed 004's TypeError)."""
        model = self.p["model"]
        if not self.model_is_local():
            return
        if not isdir(model):
            raise SpecError("model: %s is not a directory on this host; give a hub id (org/name) or the host path of "
                            "a downloaded model" % model)
        if not exists(posixpath.join(model, "config.json")):
            raise SpecError("model: %s has no config.json; is it the model's top directory?" % model)
        if not any(exists(posixpath.join(model, f)) for f in TOKENIZER_FILES):
            raise SpecError("model: %s has no tokenizer files (tokenizer.json or tokenizer.model): vLLM would fail "
                            "with \"TypeError: not a string\". Copy them from the original model (seed 004)" % model)

    def model_argument(self):
        """The model as vLLM is given it: a local path as the process sees it."""
        return self._inside(self.p["model"]) if self.model_is_local() else self.p["model"]

    def served_model(self):
        """The model id vLLM announces in /v1/models and expects in requests: served_model_name, else the model
        argument, which for a mapped local model is the path inside the container, not the host's."""
        return self.p["served_model_name"] or self.model_argument()

    def local_url(self):
        """Where the server answers on its own host: the address it is bound or published to, loopback for all."""
        p = self.p
        address = p.get("host") if self.backend == "venv" else p.get("publish_address")
        if not address or address in ("0.0.0.0", "::"):
            address = "127.0.0.1"
        if ":" in address:
            address = "[%s]" % address
        return "%s://%s:%d" % ("https" if p.get("ssl_certfile") else "http", address, p["port"])

    def paths(self):
        """The instance's names and paths on its host, for the health check, diagnosis and runbooks."""
        found = {"url": self.local_url(), "secrets_dir": self.secrets_dir, "container": None, "unit": None,
                 "env_file": None, "log_file": None}
        if self.backend in ("docker", "systemd"):
            found["container"] = self.container_name
        if self.backend in ("systemd", "venv"):
            found["unit"] = self.unit_name
            found["env_file"] = self.env_file
        if self.backend == "venv":
            found["log_file"] = self.log_file
        return found

    # ---- the command line ----

    def serve_args(self):
        """vLLM's arguments after `vllm serve` (the container command): model first, no secrets."""
        p = self.p
        argv = [self.model_argument()]
        if p["served_model_name"]:
            argv += _flag("served-model-name", p["served_model_name"])
        argv += _flag("host", p["host"]) + _flag("port", p["port"])
        argv += _flag("tensor-parallel-size", self.tensor_parallel_size())
        if p["pipeline_parallel_size"] != 1:
            argv += _flag("pipeline-parallel-size", p["pipeline_parallel_size"])
        argv += _flag("gpu-memory-utilization", p["gpu_memory_utilization"])
        for option, flag in (("max_model_len", "max-model-len"), ("max_num_seqs", "max-num-seqs"),
                             ("max_num_batched_tokens", "max-num-batched-tokens"), ("quantization", "quantization"),
                             ("dtype", "dtype"), ("kv_cache_dtype", "kv-cache-dtype")):
            if p[option] is not None:
                argv += _flag(flag, p[option])
        for option, flag in (("enable_prefix_caching", "enable-prefix-caching"),
                             ("enable_chunked_prefill", "enable-chunked-prefill")):
            if p[option] is not None:
                argv.append(("--" if p[option] else "--no-") + flag)
        for option, flag in (("enforce_eager", "enforce-eager"), ("trust_remote_code", "trust-remote-code"),
                             ("enable_ssl_refresh", "enable-ssl-refresh")):
            if p[option]:
                argv.append("--" + flag)
        if p.get("shutdown_timeout"):
            # On SIGTERM vLLM lets the requests in flight finish for this long (0, its default, aborts them).
            argv += _flag("shutdown-timeout", p["shutdown_timeout"])
        if p["download_dir"]:
            argv += _flag("download-dir", self._inside(p["download_dir"]))
        for option, flag in (("ssl_certfile", "ssl-certfile"), ("ssl_keyfile", "ssl-keyfile"),
                             ("ssl_ca_certs", "ssl-ca-certs")):
            if p[option]:
                argv += _flag(flag, self._inside(p[option]))
        argv += _vllm_flags.extra_argv(p["extra_args"], self.release)
        if p["api_keys"]:
            argv += _flag("config", posixpath.join(self.secrets_inside, "serve-config.yaml"))
        return argv

    def tensor_parallel_size(self):
        p = self.p
        if p["tensor_parallel_size"]:
            return p["tensor_parallel_size"]
        return max(1, len(self.gpus) // p["pipeline_parallel_size"])

    def check_parallelism(self):
        tp, pp = self.tensor_parallel_size(), self.p["pipeline_parallel_size"]
        if self.gpus and tp * pp != len(self.gpus):
            raise SpecError("tensor_parallel_size (%d) x pipeline_parallel_size (%d) = %d, but %d GPU(s) are given "
                            "(%s): they must be equal" % (tp, pp, tp * pp, len(self.gpus), ", ".join(self.gpus)))
        if not self.gpus:
            raise SpecError("gpus: no GPUs given; vLLM needs at least one (use inferops.vllm.gpu_select)")

    # ---- environment and secrets ----

    def environment(self):
        """Non-secret environment of the vLLM process (values may show in `docker inspect`)."""
        env = dict((str(k), str(v)) for k, v in (self.p["env"] or {}).items())
        for name in env:
            if name in ("VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
                option = "api_keys" if name == "VLLM_API_KEY" else "hf_token"
                raise SpecError("env: %s is a secret: pass it with the option %s, which keeps it out of the "
                                "environment and `docker inspect`" % (name, option))
        env[INSTANCE_ENV] = self.name
        if self.p["hf_token"]:
            env["HF_TOKEN_PATH"] = posixpath.join(self.secrets_inside, "hf_token")
        if self.backend == "venv":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            if self.p["hf_cache"]:
                env["HF_HOME"] = self.p["hf_cache"]
        return env

    def secret_files(self):
        """{file name: content} for the secrets directory (written 0600, owned by the service user)."""
        files = {}
        if self.p["api_keys"]:
            files["serve-config.yaml"] = json.dumps({"api-key": list(self.p["api_keys"])}) + "\n"
        if self.p["hf_token"]:
            files["hf_token"] = self.p["hf_token"] + "\n"
        return files

    def secrets_digest(self, salt):
        """A salted digest of the secrets, so that a changed key restarts the instance without the label or the
        unit carrying anything an attacker could test keys against offline."""
        digest = hashlib.sha256(salt)
        for name, content in sorted(self.secret_files().items()):
            digest.update(name.encode() + b"\0" + content.encode() + b"\0")
        return digest.hexdigest()[:16]

    # ---- mounts (container backends) ----

    def container_mounts(self):
        p = self.p
        mounts = []
        if p["hf_cache"]:
            mounts.append((p["hf_cache"], HF_CACHE_IN_CONTAINER, "rw"))
        if self.model_is_local():
            mounts.append((p["model"], self._inside(p["model"]), "ro"))
        if p["download_dir"]:
            mounts.append((p["download_dir"], self._inside(p["download_dir"]), "rw"))
        # TLS files: their directories, so that an atomic swap (rename) is seen with --enable-ssl-refresh.
        for option in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
            if p[option]:
                host_dir = posixpath.dirname(p[option])
                entry = (host_dir, posixpath.dirname(self._inside(p[option])), "ro")
                if entry not in mounts:
                    mounts.append(entry)
        if self.secret_files():
            mounts.append((self.secrets_dir, SECRETS_IN_CONTAINER, "ro"))
        return mounts

    def health_start_period(self, params_count):
        """Seconds a Docker HEALTHCHECK waits before failures count: big models load for 10-15 minutes."""
        if self.p["health_start_period"]:
            return self.p["health_start_period"]
        billions = (params_count or 8e9) / 1e9
        return int(min(1800, max(120, 60 + 10 * billions)))

    def healthcheck_code(self):
        """Python for the container's HEALTHCHECK (run inside the container, where vLLM images have python3 but not
        always curl)."""
        if self.p["ssl_certfile"]:
            connect = "http.client.HTTPSConnection('127.0.0.1',%d,timeout=5,context=ssl._create_unverified_context())"
        else:
            connect = "http.client.HTTPConnection('127.0.0.1',%d,timeout=5)"
        return ("import http.client,ssl,sys;c=" + connect + ";c.request('GET','/health');"
                "sys.exit(0 if c.getresponse().status==200 else 1)") % self.p["port"]

    def healthcheck_command(self):
        return ["CMD", "python3", "-c", self.healthcheck_code()]

    # ---- comparison ----

    def summary(self, image, env):
        """What diff mode shows: image, arguments, GPUs, environment with values masked."""
        return {"image": image, "args": self.serve_args(), "gpus": self.gpus,
                "env": dict((k, MASK) for k in sorted(env)), "backend": self.backend}

    def config_hash(self, image, env, extra, secrets_digest):
        material = json.dumps({"image": image, "args": self.serve_args(), "gpus": self.gpus, "env": env,
                               "extra": extra, "secrets": secrets_digest}, sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()[:16]
