#!/usr/bin/python
# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vllm_serve
short_description: Keep one vLLM instance in its desired state (docker, systemd or venv), idempotently
version_added: 0.1.0
author: inferops maintainers (@inferops)
description:
  - Runs one vLLM OpenAI-compatible server, named O(name), with structured options rather than a free command line.
  - "Backends: V(docker) uses the Docker SDK (GPUs as DeviceRequests, so no C(--gpus) quoting; C(--init); shared
    memory; a restart policy; the Hugging Face cache as a volume; a HEALTHCHECK whose start period suits the model
    size; labels holding a hash of the configuration). V(systemd) installs a unit whose C(ExecStart) runs
    C(docker run), with C(--gpus) quoted for systemd's parser. V(venv) installs a unit that runs the C(vllm) of a
    virtualenv with C(CUDA_VISIBLE_DEVICES)."
  - "Validates before it changes anything, and says what to change: flags removed from vLLM (with their
    replacement), C(tensor_parallel_size x pipeline_parallel_size) against the GPUs, a local model's tokenizer
    files, and a memory plan (weights per GPU against free memory x O(gpu_memory_utilization) on the chosen GPUs,
    naming the smallest tensor-parallel size that fits). GPUs held by other processes are refused."
  - Secrets never reach a command line, the environment, C(ps), C(docker inspect), unit files or the task output.
    API keys go to vLLM through a C(--config) file and the Hugging Face token through C(HF_TOKEN_PATH), both
    0600 in the instance's secrets directory, C(<config_dir>/secrets/<name>), 0700 and owned by whoever runs vLLM.
    A symlink in the place of any file written is replaced, never followed.
  - Idempotent. A changed configuration (arguments, environment, image, GPUs, keys) recreates the container or
    rewrites the unit and restarts it. Diff mode shows the arguments, the environment (values masked) and the
    image.
extends_documentation_fragment:
  - inferops.vllm.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
requirements:
  - docker (the Docker SDK for Python) for the V(docker) backend.
  - nvidia-ml-py (C(pynvml)) for the GPU and memory checks (skipped with a warning without it).
options:
  name:
    description: Instance name; the container is C(vllm-<name>), the unit C(vllm-<name>.service).
    type: str
    required: true
  state:
    description:
      - V(present) configures the instance and starts it when it is new; V(started) also keeps it running;
        V(stopped) keeps it configured and stopped; V(restarted) restarts it; V(absent) removes it and its files.
    type: str
    choices: [present, started, stopped, restarted, absent]
    default: started
  backend:
    description: How the instance runs.
    type: str
    choices: [docker, systemd, venv]
    default: docker
  model:
    description: Hub id (V(org/name)) or the host path of a downloaded model.
    type: str
  served_model_name:
    description: Name clients use in requests (vLLM's C(--served-model-name)).
    type: str
  image:
    description: vLLM image for the V(docker) and V(systemd) backends.
    type: str
    default: vllm/vllm-openai:v0.33.0
  pull:
    description: Pull O(image) when it is V(missing), V(always), or V(never).
    type: str
    choices: [missing, always, never]
    default: missing
  gpus:
    description: GPU indices or UUIDs (from M(inferops.vllm.gpu_select)).
    type: list
    elements: str
  tensor_parallel_size:
    description: Default is the number of GPUs divided by O(pipeline_parallel_size).
    type: int
  pipeline_parallel_size:
    description: Pipeline-parallel size.
    type: int
    default: 1
  gpu_memory_utilization:
    description: Share of each GPU's memory vLLM takes (vLLM needs that much free at start).
    type: float
    default: 0.9
  max_model_len:
    description: Context length.
    type: int
  max_num_seqs:
    description: Concurrent sequences.
    type: int
  max_num_batched_tokens:
    description: Tokens per batch.
    type: int
  quantization:
    description: vLLM's C(--quantization) (V(fp8), V(awq), V(gptq), ...).
    type: str
  dtype:
    description: vLLM's C(--dtype).
    type: str
  kv_cache_dtype:
    description: vLLM's C(--kv-cache-dtype).
    type: str
  enable_prefix_caching:
    description: C(--enable-prefix-caching) (true), C(--no-enable-prefix-caching) (false), or vLLM's default.
    type: bool
  enable_chunked_prefill:
    description: C(--enable-chunked-prefill) (true), C(--no-enable-chunked-prefill) (false), or vLLM's default.
    type: bool
  enforce_eager:
    description: C(--enforce-eager).
    type: bool
    default: false
  trust_remote_code:
    description: C(--trust-remote-code).
    type: bool
    default: false
  download_dir:
    description: Host directory for downloaded weights (mounted into containers).
    type: path
  hf_cache:
    description: Host directory for the Hugging Face cache (mounted at C(/root/.cache/huggingface) in containers).
    type: path
    default: /var/lib/vllm/hf-cache
  host:
    description: Address vLLM binds to inside its container (or on the host for V(venv)).
    type: str
    default: 0.0.0.0
  port:
    description: Port vLLM listens on (and the published host port for containers).
    type: int
    default: 8000
  publish_address:
    description: Host address the container port is published on.
    type: str
    default: 0.0.0.0
  api_keys:
    description: API keys for C(/v1/*); several are valid at once, which allows rotation without downtime.
    type: list
    elements: str
    default: []
  hf_token:
    description: Hugging Face token, for gated models.
    type: str
  ssl_certfile:
    description: Host path of the TLS certificate (its directory is mounted into containers).
    type: path
  ssl_keyfile:
    description: Host path of the TLS key.
    type: path
  ssl_ca_certs:
    description: Host path of the CA bundle for client certificates.
    type: path
  enable_ssl_refresh:
    description: Reload the certificate files when they change, without a restart.
    type: bool
    default: false
  env:
    description: Extra environment (not secrets; those have their own options).
    type: dict
    default: {}
  extra_args:
    description:
      - More C(vllm serve) flags, as a mapping of flag name to value (C(max-loras) to V(4), C(enable-lora) to
        V(true), C(compilation-config) to a mapping, which goes as JSON). V(false) gives the flag's negation
        (C(--no-enable-lora)) where vLLM has one, and leaves the flag out otherwise.
      - Checked against the flags of the vLLM release the host runs (see O(vllm_version)), from a catalog generated
        from vLLM's own parser; flags vLLM removed are refused with what replaced them.
    type: dict
    default: {}
  vllm_version:
    description:
      - The vLLM release the instance runs (V(0.33.0)), whose flags O(extra_args) are checked against.
      - By default it is read from the image's tag (V(vllm/vllm-openai:v0.33.0)), else from the vLLM installed in
        the image or in O(venv_path).
      - A release without a catalog in this collection (RV(flag_catalog)) is checked against the newest catalog
        before it, and unknown flags then only warn.
    type: str
  flag_check:
    description: V(strict) refuses flags the release does not have; V(warn) only warns (for builds with extra flags).
    type: str
    choices: [strict, warn]
    default: strict
  model_params:
    description: Number of parameters (V(70B), V(8.03B), V(125M)) for the memory plan; read from a local model's
      files when not given, else estimated from the model's name.
    type: raw
  model_path_map:
    description: Host path prefix to container path prefix, for local models, caches and TLS files (seed 004).
    type: dict
    default: {}
  ipc_host:
    description: Share the host's IPC namespace (vLLM needs large shared memory); else O(shm_size_mib).
    type: bool
    default: true
  shm_size_mib:
    description: Shared memory size when O(ipc_host) is false.
    type: int
    default: 16384
  restart_policy:
    description: Docker restart policy (V(docker) backend).
    type: str
    choices: ["no", on-failure, always, unless-stopped]
    default: unless-stopped
  health_start_period:
    description: Seconds the HEALTHCHECK waits for the model to load; default grows with the model's size.
    type: int
  stop_timeout:
    description:
      - Seconds to wait for a graceful stop before killing (also the container's own stop timeout, so any
        C(docker stop) waits as long).
      - Must exceed O(shutdown_timeout).
    type: int
    default: 30
  shutdown_timeout:
    description:
      - Seconds vLLM lets the requests in flight finish when it is stopped (C(--shutdown-timeout)); new requests are
        refused meanwhile. V(0), vLLM's default, aborts them at once (streams end with C(finish_reason) V(abort)).
    type: int
    default: 0
  log_max_size:
    description: Docker log rotation size (json-file driver).
    type: str
    default: 100m
  service_user:
    description: User the V(venv) backend runs as, and owner of the instance's files.
    type: str
    default: root
  venv_path:
    description: Virtualenv holding C(bin/vllm) for the V(venv) backend.
    type: path
    default: /opt/vllm
  config_dir:
    description: Where the instance's env file and secrets directory live.
    type: path
    default: /etc/vllm
  log_dir:
    description: Where the V(venv) backend's unit appends the instance's output, as C(<log_dir>/<name>.log) (the
      other backends log to Docker). The directory must exist and be writable by O(service_user).
    type: path
    default: /var/log/vllm
  check_gpus:
    description: Refuse GPUs that other processes hold, and check the memory plan against NVML's free memory.
    type: bool
    default: true
notes:
  - Runs on the GPU host. The docker backend needs the NVIDIA container toolkit (or anything registering Docker's
    C(nvidia) device driver).
"""

EXAMPLES = r"""
- name: Pick GPUs
  inferops.vllm.gpu_select:
    count: 2
    min_free_memory: 70GiB
  register: selection

- name: Serve Llama 3.3 70B in fp8 on them
  inferops.vllm.vllm_serve:
    name: llama-70b
    model: meta-llama/Llama-3.3-70B-Instruct
    model_params: 70.6B
    quantization: fp8
    gpus: "{{ selection.gpus }}"
    max_model_len: 32768
    port: 8000
    api_keys: "{{ vllm_api_keys }}"
    hf_token: "{{ vault_hf_token }}"

- name: A local model under systemd, paths mapped into the container
  inferops.vllm.vllm_serve:
    name: local-8b
    backend: systemd
    model: /ceph/models/Llama-3.1-8B-Instruct
    model_path_map:
      /ceph/models: /models
    gpus: ["3"]

- name: Remove an instance
  inferops.vllm.vllm_serve:
    name: old-model
    state: absent
"""

RETURN = r"""
instance:
  description:
    - The instance's names and paths on its host, so that health checks, diagnosis and runbooks need not
      recompute them. A name a backend does not use is null.
    - C(url) is where the server answers on its own host (loopback when it listens on every address).
  returned: always
  type: dict
  sample: {url: "https://127.0.0.1:8000", container: vllm-llama-70b, unit: null, env_file: null, log_file: null,
           secrets_dir: /etc/vllm/secrets/llama-70b}
container:
  description: The container (id, name, status), for the V(docker) backend.
  returned: backend docker, unless absent
  type: dict
unit:
  description: The systemd unit, for the V(systemd) and V(venv) backends.
  returned: backend systemd or venv
  type: str
  sample: vllm-llama-70b.service
command:
  description: The effective command line; it carries no secret.
  returned: unless absent
  type: list
  elements: str
  sample: [meta-llama/Llama-3.3-70B-Instruct, --host, 0.0.0.0, --port, "8000", --config, /run/secrets/vllm/serve-config.yaml]
gpus:
  description: The instance's GPUs.
  returned: unless absent
  type: list
  elements: str
memory_plan:
  description: Weights in total and per GPU, and per GPU the free memory, vLLM's budget (total memory x
    O(gpu_memory_utilization), which must be free at start) and what the budget leaves for the KV cache (GiB).
  returned: when the GPUs and the model size were known
  type: dict
  sample: {weights_gib: 65.8, weights_per_gpu_gib: 32.9, gpus: [{index: 4, free_gib: 79.6, budget_gib: 71.7,
           kv_cache_gib: 37.3}]}
interrupts:
  description:
    - Whether this run stops, restarts or recreates the running instance (in check mode, whether it would), so
      that a caller can drain it at a gateway first. A start of a stopped instance does not interrupt it.
  returned: unless absent
  type: bool
config_hash:
  description: Hash of the desired configuration (salted for the secrets).
  returned: unless absent
  type: str
served_model:
  description: The model id the server announces in C(/v1/models) and expects in requests, for health checks and
    clients. It is O(served_model_name) when set, else the model as vLLM is given it, which for a local model
    mapped by O(model_path_map) is the path inside the container.
  returned: unless absent
  type: str
  sample: /models/Llama-3.1-8B-Instruct
flag_catalog:
  description: The vLLM release the instance runs, where that was read from, and the catalog its flags were checked
    against.
  returned: unless absent
  type: dict
  sample: {vllm_version: 0.33.0, source: the image tag, catalog: 0.33.0}
"""

import json
import os
import re

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.inferops.vllm.plugins.module_utils import (
    _command, _files, _instance_procs, _nvml, _systemd, _validate, _vllm_docker, _vllm_flags, _vllm_input,
    _vllm_planner, _vllm_spec, _vllm_units,
)
from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact

VERSION_CODE = "import importlib.metadata as m; print(m.version('vllm'))"
# In an image, vLLM may live in the system Python or in a virtualenv: ask the Python of the `vllm` command first.
VERSION_IN_IMAGE = ('code="$0"; for py in "$(sed -n "1s/^#!//p" "$(command -v vllm)" 2>/dev/null)" python3; do '
                    '[ -n "$py" ] && $py -c "$code" 2>/dev/null && exit 0; done; exit 1')
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_spec import LABEL_PREFIX


class VllmServe(object):
    """Reads the instance's current state, compares it with the wanted one, and acts only outside check mode."""

    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.check_mode = module.check_mode
        self.spec = _vllm_spec.Spec(self.p)
        self.changed = False
        self.result = {}
        self.diff = {"before": {}, "after": {}}
        self.plan = None
        self.params_count = None

    def fail(self, msg, **extra):
        # Docker's and systemd's answers can quote what they were given; the keys are masked in every shape.
        secrets = list(self.p.get("api_keys") or []) + [self.p.get("hf_token")]
        self.module.fail_json(msg=redact(msg, secrets, shapes=False), changed=self.changed, **extra)

    # ---- validation, before anything changes ----

    def release(self):
        """The vLLM release the instance runs: the option, the image's tag, or asked of the installed vLLM."""
        p = self.p
        if p["vllm_version"]:
            return _vllm_flags.Release(p["vllm_version"], "vllm_version")
        if p["backend"] == "venv":
            argv = [os.path.join(p["venv_path"], "bin", "python"), "-c", VERSION_CODE]
            source = "the vLLM in %s" % p["venv_path"]
        else:
            tagged = _vllm_flags.release_from_image(p["image"])
            if tagged:
                return _vllm_flags.Release(tagged, "the tag of %s" % p["image"])
            argv = ["docker", "run", "--rm", "--network", "none", "--pull", "never", "--entrypoint", "/bin/sh",
                    p["image"], "-c", VERSION_IN_IMAGE, VERSION_CODE]
            source = "the vLLM in %s" % p["image"]
        try:
            rc, out, _err = _command.run(argv, timeout=60)
        except _command.CommandError:
            rc, out = 1, ""
        found = _vllm_flags.release_from_text(out) if rc == 0 else None
        return _vllm_flags.Release(found, source if found else "not read: %s could not be asked; set vllm_version" %
                                   source)

    def validate(self):
        p = self.p
        if not p["model"]:
            self.fail("model is required unless state is absent")
        release = self.spec.release = self.release()
        if release.warning:
            self.module.warn(release.warning)
        self.result["flag_catalog"] = {"vllm_version": release.version, "source": release.source,
                                       "catalog": release.catalog_version}
        self.result["served_model"] = self.spec.served_model()
        try:
            for warning in _vllm_flags.check_extra_args(p["extra_args"], release,
                                                        strict=p["flag_check"] == "strict"):
                self.module.warn(warning)
            for warning in _vllm_flags.check_env(p["env"]):
                self.module.warn(warning)
            self.spec.check_parallelism()
            self.spec.check_model_files()
            self.spec.environment()
        except (_vllm_flags.FlagError, _vllm_spec.SpecError) as exc:
            self.fail(str(exc))
        for option in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
            if p[option] and not os.path.isfile(p[option]):
                self.fail("%s: %s does not exist on this host" % (option, p[option]))
        if bool(p["ssl_certfile"]) != bool(p["ssl_keyfile"]):
            self.fail("ssl_certfile and ssl_keyfile go together")
        if p["backend"] == "docker" and _vllm_docker.docker is None:
            self.module.fail_json(msg=missing_required_lib("docker"), exception=_vllm_docker.DOCKER_IMPORT_ERROR)
        if p["backend"] == "venv":
            try:
                _files.owner_ids(p["service_user"])
            except ValueError as exc:
                self.fail(str(exc))
            if not os.path.exists(os.path.join(p["venv_path"], "bin", "vllm")):
                self.fail("venv_path: %s/bin/vllm does not exist; install vLLM into that virtualenv first" %
                          p["venv_path"])
        self.check_memory()

    def model_size(self):
        """(parameters, weight bytes) from model_params, a local model's files, or the model's name."""
        p = self.p
        try:
            if p["model_params"] is not None:
                return _vllm_planner.parse_params(p["model_params"]), None
        except _vllm_planner.PlanError as exc:
            self.fail(str(exc))
        if self.spec.model_is_local():
            params, weight_bytes = _vllm_planner.params_from_local_model(p["model"])
            if params or weight_bytes:
                return params, weight_bytes
        name = p["model"].rstrip("/").split("/")[-1]
        match = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name)
        if match:
            self.module.warn("memory plan: the model size (%sB parameters) was read from its name; set model_params "
                             "to be exact" % match.group(1))
            return float(match.group(1)) * 1e9, None
        return None, None

    def check_memory(self):
        p = self.p
        params, weight_bytes = self.model_size()
        self.params_count = params or (weight_bytes / 2.0 if weight_bytes else None)
        if not p["check_gpus"] or p["state"] == "stopped":
            # Stopping needs no free memory: it is how memory gets freed.
            return
        try:
            snap = _nvml.snapshot(timeout=10)
        except _nvml.NvmlError as exc:
            self.module.warn("GPU checks skipped: %s" % exc)
            return
        devices = snap["devices"]
        chosen = []
        for ref in self.spec.gpus:
            match = [d for d in devices if str(d["index"]) == ref or d.get("uuid") == ref]
            if not match:
                self.fail("gpus: GPU %s does not exist on this host (GPUs here: %s)" % (
                    ref, ", ".join(str(d["index"]) for d in devices)))
            if "error" in match[0]:
                self.fail("gpus: GPU %s cannot be read: %s" % (ref, match[0]["error"]))
            chosen.append(match[0])
        split = _instance_procs.split_processes(chosen, self.spec.name)
        view = []
        for device in chosen:
            ours = split[device["index"]][0]
            # This instance's own memory would be freed by the restart a change implies.
            reclaimable = sum(proc.get("used_memory_mib") or 0 for proc in ours)
            view.append({"index": device["index"], "memory_total_mib": device["memory_total_mib"],
                         "memory_free_mib": min(device["memory_total_mib"], device["memory_free_mib"] + reclaimable)})
        if params is None and weight_bytes is None:
            self.module.warn("memory plan skipped: the model size is unknown; set model_params (e.g. 70B)")
            try:
                _vllm_planner.plan(view, p["gpu_memory_utilization"], self.spec.tensor_parallel_size(),
                                   p["pipeline_parallel_size"], weight_bytes=0)
            except _vllm_planner.PlanError as exc:
                self.fail(str(exc))
            return
        try:
            self.plan = _vllm_planner.plan(view, p["gpu_memory_utilization"], self.spec.tensor_parallel_size(),
                                           p["pipeline_parallel_size"], params=params, weight_bytes=weight_bytes,
                                           dtype=p["dtype"], quantization=p["quantization"])
        except _vllm_planner.PlanError as exc:
            self.fail(str(exc))

    # ---- files ----

    def owner(self):
        return _files.owner_ids(self.p["service_user"]) if self.p["backend"] == "venv" else (0, 0)

    def secrets_dir(self):
        """The instance's secrets directory, 0700 and owned by who runs vLLM; an older, looser one is tightened."""
        uid, gid = self.owner()
        try:
            return _files.ensure_dir(self.spec.secrets_dir, 0o700, uid, gid, self.check_mode)
        except _files.FileError as exc:
            self.fail("config_dir: the secrets directory %s" % exc)

    def salt(self):
        path = os.path.join(self.spec.secrets_dir, ".salt")
        # Read without following a symlink: anything but the salt file itself is replaced by a new salt.
        current = (_files.read(path) or "").strip()
        if current:
            return current.encode()
        value = os.urandom(16).hex()
        uid, gid = self.owner()
        if not self.check_mode:
            _files.write(path, value + "\n", 0o600, uid, gid, dir_mode=0o700)
        return value.encode()

    def write_files(self, environment):
        uid, gid = self.owner()
        wanted = self.spec.secret_files()
        changed = False
        for name, content in wanted.items():
            changed |= _files.write(os.path.join(self.spec.secrets_dir, name), content, 0o600, uid, gid,
                                    self.check_mode, dir_mode=0o700)
        for name in ("serve-config.yaml", "hf_token"):
            if name not in wanted:
                changed |= _files.remove(os.path.join(self.spec.secrets_dir, name), self.check_mode)
        if self.p["backend"] in ("systemd", "venv"):
            reader = "systemd" if self.p["backend"] == "venv" else "docker"
            changed |= _files.write(self.spec.env_file, _vllm_units.env_file_content(environment, reader), 0o600,
                                    uid, gid, self.check_mode)
        if self.p["hf_cache"] and self.p["backend"] != "venv" and not self.check_mode \
                and not os.path.isdir(self.p["hf_cache"]):
            os.makedirs(self.p["hf_cache"], 0o755)
        return changed

    # ---- run ----

    def check_input(self):
        """Refuses hostile or broken values before anything is read or touched (the checks the vllm role also runs
        on its instances)."""
        try:
            _vllm_input.check(self.p)
        except _validate.InputError as exc:
            self.fail(str(exc))

    def run(self):
        p = self.p
        self.check_input()
        if p["state"] == "absent":
            return self.absent()
        self.validate()
        environment = self.spec.environment()
        image = p["image"]
        # Its own change: a tightened directory needs no restart, unlike a changed secrets file.
        self.changed |= self.secrets_dir()
        extra = {"ipc_host": p["ipc_host"], "shm": p["shm_size_mib"], "restart": p["restart_policy"],
                 "publish": p["publish_address"], "hf_cache": p["hf_cache"], "log": p["log_max_size"],
                 "user": p["service_user"], "venv": p["venv_path"], "stop": p["stop_timeout"]}
        try:
            secrets_digest = self.spec.secrets_digest(self.salt())
            config_hash = self.spec.config_hash(image, environment, extra, secrets_digest)
            summary = self.spec.summary(image, environment)
            files_changed = self.write_files(environment)
        except _files.FileError as exc:
            self.fail(str(exc))
        health_start = self.spec.health_start_period(self.params_count)
        if p["backend"] == "docker":
            self.docker(image, environment, config_hash, summary, health_start, files_changed)
        else:
            self.unit(image, config_hash, summary, health_start, files_changed)
        self.changed |= files_changed
        self.result.update(command=self.spec.serve_args(), gpus=self.spec.gpus, config_hash=config_hash,
                           memory_plan=self.plan)
        return self.finish()

    def finish(self):
        kwargs = dict(changed=self.changed, instance=self.spec.paths(), **self.result)
        if self.module._diff:
            kwargs["diff"] = self.diff
        self.module.exit_json(**kwargs)

    def docker(self, image, environment, config_hash, summary, health_start, files_changed):
        p = self.p
        labels = {LABEL_PREFIX + "instance": self.spec.name, LABEL_PREFIX + "config-hash": config_hash,
                  LABEL_PREFIX + "summary": json.dumps(summary, sort_keys=True)}
        try:
            backend = _vllm_docker.DockerInstance(self.spec, image, environment, labels)
            container = backend.current()
            self.diff["before"] = backend.current_summary(container) if container else {}
            self.diff["after"] = summary
            stale = container is not None and backend.current_hash(container) != config_hash
            running = container is not None and backend.is_running(container)
            self.result["interrupts"] = running and (stale or p["state"] in ("stopped", "restarted") or files_changed)
            if (container is None or stale) and not backend.check_image():
                if p["pull"] == "never":
                    self.fail("image %s is not on this host and pull is never" % image)
                self.changed = True
                if not self.check_mode:
                    backend.pull()
            elif p["pull"] == "always" and not self.check_mode:
                backend.pull()
            if container is None or stale:
                self.changed = True
                if not self.check_mode:
                    if stale:
                        backend.remove(container, p["stop_timeout"])
                    container = backend.create(health_start)
                    if p["state"] != "stopped":
                        backend.start(container)
            elif p["state"] == "started" and not backend.is_running(container):
                self.changed = True
                if not self.check_mode:
                    backend.start(container)
            elif p["state"] == "stopped" and backend.is_running(container):
                self.changed = True
                if not self.check_mode:
                    backend.stop(container, p["stop_timeout"])
            elif p["state"] == "restarted" or (files_changed and backend.is_running(container)):
                # The secrets files are read at start: a new key needs a restart even when nothing else changed.
                self.changed = True
                if not self.check_mode:
                    backend.restart(container, p["stop_timeout"])
            if container is not None and not self.check_mode:
                container.reload()
            self.result["container"] = backend.describe(container)
        except _vllm_docker.DockerBackendError as exc:
            self.fail(str(exc))

    def unit(self, image, config_hash, summary, health_start, files_changed):
        p = self.p
        unit = self.spec.unit_name
        path = os.path.join("/etc/systemd/system", unit)
        content = _vllm_units.unit_content(self.spec, image, health_start, config_hash)
        try:
            _systemd.verify(unit, content)
            before = _files.read(path) or ""
            self.diff["before"] = {"unit": before}
            self.diff["after"] = {"unit": content, "summary": summary}
            unit_changed = _files.write(path, content, 0o644, 0, 0, self.check_mode)
            self.changed |= unit_changed
            active = _systemd.unit_state(unit)["active"]
            self.result["interrupts"] = active and (unit_changed or files_changed or
                                                    p["state"] in ("stopped", "restarted"))
            if self.check_mode:
                self.changed |= files_changed or p["state"] == "restarted"
                self.result["unit"] = unit
                return
            if unit_changed:
                _systemd.systemctl("daemon-reload")
            state = _systemd.unit_state(unit)
            if not state["enabled"]:
                _systemd.systemctl("enable", unit)
                self.changed = True
            if p["state"] == "stopped":
                if state["active"]:
                    _systemd.systemctl("stop", unit)
                    self.changed = True
            elif p["state"] == "restarted" or ((unit_changed or files_changed) and state["active"]):
                _systemd.systemctl("restart", unit)
                self.changed = True
            elif not state["active"] and (p["state"] == "started" or unit_changed):
                _systemd.systemctl("start", unit)
                self.changed = True
        except (_systemd.SystemdError, _files.FileError) as exc:
            self.fail(str(exc))
        self.result["unit"] = unit

    def absent(self):
        p = self.p
        spec = self.spec
        try:
            if p["backend"] == "docker":
                if _vllm_docker.docker is None:
                    self.module.fail_json(msg=missing_required_lib("docker"),
                                          exception=_vllm_docker.DOCKER_IMPORT_ERROR)
                backend = _vllm_docker.DockerInstance(spec, p["image"], {}, {})
                container = backend.current()
                if container is not None:
                    self.changed = True
                    self.diff["before"] = backend.current_summary(container)
                    if not self.check_mode:
                        backend.remove(container, p["stop_timeout"])
            else:
                path = os.path.join("/etc/systemd/system", spec.unit_name)
                if os.path.exists(path):
                    self.changed = True
                    if not self.check_mode:
                        _systemd.systemctl("disable", "--now", spec.unit_name, check=False)
                        os.unlink(path)
                        _systemd.systemctl("daemon-reload")
        except (_vllm_docker.DockerBackendError, _systemd.SystemdError) as exc:
            self.fail(str(exc))
        try:
            for name in ("serve-config.yaml", "hf_token", ".salt"):
                self.changed |= _files.remove(os.path.join(spec.secrets_dir, name), self.check_mode)
            self.changed |= _files.remove(spec.env_file, self.check_mode)
        except _files.FileError as exc:
            self.fail(str(exc))
        if not self.check_mode and os.path.isdir(spec.secrets_dir) and not os.path.islink(spec.secrets_dir) \
                and not os.listdir(spec.secrets_dir):
            os.rmdir(spec.secrets_dir)
        return self.finish()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "started", "stopped", "restarted", "absent"],
                       default="started"),
            backend=dict(type="str", choices=["docker", "systemd", "venv"], default="docker"),
            model=dict(type="str"),
            served_model_name=dict(type="str"),
            image=dict(type="str", default="vllm/vllm-openai:v0.33.0"),
            pull=dict(type="str", choices=["missing", "always", "never"], default="missing"),
            gpus=dict(type="list", elements="str"),
            tensor_parallel_size=dict(type="int"),
            pipeline_parallel_size=dict(type="int", default=1),
            gpu_memory_utilization=dict(type="float", default=0.9),
            max_model_len=dict(type="int"),
            max_num_seqs=dict(type="int"),
            max_num_batched_tokens=dict(type="int", no_log=False),
            quantization=dict(type="str"),
            dtype=dict(type="str"),
            kv_cache_dtype=dict(type="str"),
            enable_prefix_caching=dict(type="bool"),
            enable_chunked_prefill=dict(type="bool"),
            enforce_eager=dict(type="bool", default=False),
            trust_remote_code=dict(type="bool", default=False),
            download_dir=dict(type="path"),
            hf_cache=dict(type="path", default="/var/lib/vllm/hf-cache"),
            host=dict(type="str", default="0.0.0.0"),
            port=dict(type="int", default=8000),
            publish_address=dict(type="str", default="0.0.0.0"),
            api_keys=dict(type="list", elements="str", default=[], no_log=True),
            hf_token=dict(type="str", no_log=True),
            ssl_certfile=dict(type="path"),
            ssl_keyfile=dict(type="path", no_log=False),
            ssl_ca_certs=dict(type="path"),
            enable_ssl_refresh=dict(type="bool", default=False),
            env=dict(type="dict", default={}),
            extra_args=dict(type="dict", default={}),
            vllm_version=dict(type="str"),
            flag_check=dict(type="str", choices=["strict", "warn"], default="strict"),
            model_params=dict(type="raw"),
            model_path_map=dict(type="dict", default={}),
            ipc_host=dict(type="bool", default=True),
            shm_size_mib=dict(type="int", default=16384),
            restart_policy=dict(type="str", choices=["no", "on-failure", "always", "unless-stopped"],
                                default="unless-stopped"),
            health_start_period=dict(type="int"),
            stop_timeout=dict(type="int", default=30),
            shutdown_timeout=dict(type="int", default=0),
            log_max_size=dict(type="str", default="100m"),
            service_user=dict(type="str", default="root"),
            venv_path=dict(type="path", default="/opt/vllm"),
            config_dir=dict(type="path", default="/etc/vllm"),
            log_dir=dict(type="path", default="/var/log/vllm"),
            check_gpus=dict(type="bool", default=True),
        ),
        required_if=[("state", "present", ["model", "gpus"]), ("state", "started", ["model", "gpus"]),
                     ("state", "restarted", ["model", "gpus"]), ("state", "stopped", ["model", "gpus"])],
        supports_check_mode=True,
    )
    VllmServe(module).run()


if __name__ == "__main__":
    main()
