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
    naming the smallest tensor-parallel size that fits). A new instance is refused GPUs that processes of other
    workloads hold, unless O(share_gpus)."
  - Secrets never reach a command line, the environment, C(ps), C(docker inspect), unit files or the task output.
    API keys go to vLLM through a C(--config) file and the Hugging Face token through C(HF_TOKEN_PATH), both
    0600 in the instance's secrets directory, C(<config_dir>/secrets/<name>), 0700 and owned by whoever runs vLLM.
    A symlink in the place of any file written is replaced, never followed.
  - Idempotent. A changed configuration (arguments, environment, image, GPUs, keys) recreates the container or
    rewrites the unit and restarts it. Diff mode shows the arguments, the environment (values masked) and the
    image, and names the fields that differ (RV(changed_fields)).
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
    description:
      - GPU indices or UUIDs (from M(inferops.vllm.gpu_select)).
      - A UUID's C(GPU-)/C(MIG-) prefix and hex digits may be in any case; the instance is given it, and RV(gpus)
        returns it, in the form NVML prints (the prefix in capitals, the hex digits in lower case).
      - List each GPU once. The same name twice is refused, and with O(check_gpus) a GPU named both by its index and
        by its UUID too.
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
      - Seconds to wait for a graceful stop before killing.
      - With the V(docker) and V(systemd) backends the container keeps it as its own stop timeout (Docker's
        C(StopTimeout); the unit's C(docker run) passes C(--stop-timeout)), so any other C(docker stop),
        C(docker restart) or the Docker daemon's shutdown waits as long. A V(docker) container whose own stop timeout
        differs is recreated; one created by an earlier version of this module has none, so it is recreated once. A
        V(systemd) unit written by an earlier version lacks C(--stop-timeout) in its C(ExecStart), so it is rewritten
        once and its running instance restarted.
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
  watchdog_hold:
    description:
      - Seconds to hold the host's watchdog (the vllm role's) off this instance when this run acts on it (starts,
        stops, restarts, recreates or removes it), so that it does not read a planned stop as a failure and restart
        the instance meanwhile. The hold is the file C(hold-<name>) in O(watchdog_hold_dir), written before the first
        action; the watchdog honours it for this many seconds from its writing, at most 30 minutes.
      - The caller removes it once the instance serves (the vllm role does, after its health gate); should an action
        fail, the module removes it at once. Nothing is written in check mode, when nothing is to be done, or where
        O(watchdog_hold_dir) does not exist (no watchdog on the host). V(0) holds nothing.
    type: int
    default: 0
  watchdog_hold_dir:
    description: Where the host's watchdog looks for holds (its C(hold_dir)).
    type: path
    default: /run/inferops-vllm-watchdog
  check_gpus:
    description:
      - Check the GPUs through NVML before the instance starts, that they exist, that the memory plan fits their free
        memory, and that no process of another workload holds them (see O(share_gpus)).
      - It also refuses a GPU listed twice in O(gpus), once by its index and once by its UUID (only NVML tells that
        they are one GPU).
      - Without NVML (no C(pynvml), no driver answer) the checks are skipped with a warning.
    type: bool
    default: true
  share_gpus:
    description:
      - Start even when processes of other workloads or other instances hold these GPUs.
      - Without it, vllm_serve refuses to place a new instance on a GPU that a process not of this instance holds,
        naming each process (PID, name, command line, vLLM instance, memory), also in check mode. An instance that
        exists already (started, restarted or recreated in place, as the runbooks do) only gets a warning naming them;
        refusing its restart beside a workload that came later would turn a restart into an outage.
      - A process is this instance's when its environment carries C(INFEROPS_VLLM_INSTANCE=<name>), as every process
        vllm_serve starts does.
    type: bool
    default: false
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
  description: The instance's GPUs, UUIDs in the form NVML prints (C(GPU-) or C(MIG-), lower-case hex).
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
watchdog_hold:
  description: The watchdog hold this run wrote (see O(watchdog_hold)), for the caller to remove once the instance
    serves; null when it wrote none.
  returned: always
  type: str
  sample: /run/inferops-vllm-watchdog/hold-llama-70b
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
changed_fields:
  description:
    - The fields that differ between the instance as it is and as wanted, sorted; empty when it matches.
    - For the V(docker) backend, the fields of the summary in diff mode (C(image), C(args), C(gpus), C(env),
      C(backend)) and the container's own C(stop_timeout); for the V(systemd) and V(venv) backends, the unit's
      directives (C(ExecStart), C(TimeoutStartSec), ...). C(config_hash) differs too whenever the configuration
      does, including the settings and secrets that no other field shows. Every field, for a new instance or one
      removed.
  returned: in diff mode
  type: list
  elements: str
  sample: [args, config_hash]
flag_catalog:
  description: The vLLM release the instance runs, where that was read from, and the catalog its flags were checked
    against.
  returned: unless absent
  type: dict
  sample: {vllm_version: 0.33.0, source: the image tag, catalog: 0.33.0}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_manager import VllmServe


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
            watchdog_hold=dict(type="int", default=0),
            watchdog_hold_dir=dict(type="path", default="/run/inferops-vllm-watchdog"),
            check_gpus=dict(type="bool", default=True),
            share_gpus=dict(type="bool", default=False),
        ),
        required_if=[("state", "present", ["model", "gpus"]), ("state", "started", ["model", "gpus"]),
                     ("state", "restarted", ["model", "gpus"]), ("state", "stopped", ["model", "gpus"])],
        supports_check_mode=True,
    )
    VllmServe(module).run()


if __name__ == "__main__":
    main()
