#!/usr/bin/python
# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: gpu_select
short_description: Pick the least-loaded healthy NVIDIA GPUs, and explain the choice
version_added: 0.1.0
author: inferops maintainers (@inferops)
description:
  - Reads the GPUs of the host and picks O(count) of them for a workload, least loaded first
    (most free memory, then lowest utilization, then the higher index, so low indices stay free).
  - Skips GPUs that are excluded, have uncorrected volatile ECC errors or memory waiting for a reset to retire
    pages or remap rows (or a failed row remapping), run MIG (or have MIG enabled pending a reset), lack free
    memory, are too busy, or (with O(require_idle)) run compute processes. Every GPU in the result says why it was
    or was not chosen.
  - What a GPU does not report is never read as harmless. A GPU that does not report its utilization (MIG, some
    vGPU) fails O(max_utilization) and ranks after those that do; one whose compute processes NVML will not list
    (no permission, as for an unprivileged user under MIG or in some containers) fails O(require_idle), and is
    otherwise still selectable.
  - A GPU that cannot be read (lost to NVML, a value C(nvidia-smi) prints as C([Unknown Error]) or
    C([GPU requires reset]), no UUID, or listed twice with different readings) is listed as unreadable and never
    chosen; the other GPUs stay selectable.
  - "Backends, tried in order with O(backend=auto): NVML in-process (nvidia-ml-py), the C(nvidia-smi) CSV
    query, and C(nvidia-smi) inside C(docker run --gpus all) when O(docker_image) is given. Each is bounded by
    O(timeout). When none works the module fails and says what each backend tried and why it failed: it never
    returns GPUs it did not observe. Where C(nvidia-smi) cannot reach the GPUs at all (a driver/library version
    mismatch, no devices found, a GPU lost), the failure quotes it and says what to do."
  - With O(count) > 1 it prefers the set of GPUs with the closest interconnect (NVML's topology common
    ancestor); tensor parallelism across a PCIe host bridge is much slower than within a switch or NVLink domain.
  - Returns the choice in the forms consumers need, quoted correctly, including for C(docker run --gpus).
  - Read-only; C(changed) is always false.
extends_documentation_fragment:
  - inferops.vllm.attributes
attributes:
  check_mode:
    support: full
    details: Only reads the GPUs, so it behaves the same in check mode.
  diff_mode:
    support: none
requirements:
  - nvidia-ml-py (C(pynvml)) for the C(nvml) backend; C(nvidia-smi) or C(docker) for the others.
options:
  count:
    description: How many GPUs (or MIG devices) to pick.
    type: int
    default: 1
  min_free_memory:
    description:
      - Free memory each picked GPU must have, in MiB as an integer, or as a size with a unit such as V(40GiB).
    type: raw
    default: 0
  max_utilization:
    description:
      - Highest GPU utilization (percent) a picked GPU may have.
      - A GPU or MIG device that does not report its utilization is not picked when this is set.
    type: int
  exclude:
    description:
      - GPUs never to pick, by index or UUID. Naming a GPU that does not exist is an error.
      - UUIDs match regardless of case (C(GPU-6F4A...) names C(GPU-6f4a...)); the result gives them as NVML prints
        them.
    type: list
    elements: str
    default: []
  require_idle:
    description: Only pick GPUs with no compute processes.
    type: bool
    default: false
  skip_ecc_errors:
    description:
      - Skip GPUs with uncorrected volatile ECC errors, memory pages pending retirement, a row remapping pending
        (each takes effect at the GPU's next reset) or a failed row remapping. The C(nvml) backend reads them
        through NVML, the others through C(nvidia-smi)'s C(retired_pages.pending), C(remapped_rows.pending) and
        C(remapped_rows.failure); an C(nvidia-smi) too old to know one of them leaves it unchecked (see RV(unchecked)).
    type: bool
    default: true
  mig:
    description:
      - V(skip) leaves MIG-enabled GPUs out. A GPU with MIG enabled pending a reset is left out with either
        choice, since it would turn MIG under a whole-GPU workload at its next reset.
      - V(use) picks one MIG device (by UUID) instead of a whole GPU; a process can only use one MIG device,
        so this needs O(count=1) and the C(nvml) backend.
    type: str
    choices: [skip, use]
    default: skip
  prefer_topology:
    description:
      - Among the eligible sets, prefer the GPUs with the closest interconnect. Defaults to true when O(count) > 1.
      - Needs the C(nvml) backend; the others cannot see the topology, and the result then says so in C(topology).
    type: bool
  id_type:
    description:
      - How the picked GPUs are named in C(cuda_visible_devices) and the Docker forms. UUIDs stay stable across
        reboots and re-enumeration; MIG devices are always named by UUID.
      - With V(index), set C(CUDA_DEVICE_ORDER=PCI_BUS_ID) for CUDA programs, so that CUDA numbers GPUs as NVML does.
        The module warns when the host mixes GPU models, where CUDA's default order differs from NVML's.
    type: str
    choices: [index, uuid]
    default: index
  backend:
    description: The backend to use; V(auto) tries them in order.
    type: str
    choices: [auto, nvml, nvidia-smi, docker]
    default: auto
  docker_image:
    description:
      - Image for the C(docker) backend, for example V(nvidia/cuda:12.4.1-base-ubuntu22.04). The NVIDIA container
        toolkit mounts C(nvidia-smi) into it. Without it the C(docker) backend is not tried.
    type: str
  docker_pull:
    description: Let the C(docker) backend pull O(docker_image) when it is missing (otherwise C(--pull never)).
    type: bool
    default: false
  timeout:
    description: Seconds each backend may take before it is abandoned (a wedged driver hangs nvidia-smi).
    type: float
    default: 10
notes:
  - Runs on the GPU host. Uses NVML from the nvidia-ml-py package when it is installed.
  - Every reason a GPU can be skipped for, what it means and what to do, is listed in the collection's
    C(docs/gpu-selection.md).
seealso:
  - name: nvitop's device selection
    description: The ranking convention this module follows.
    link: https://github.com/XuehaiPan/nvitop
"""

EXAMPLES = r"""
- name: Two GPUs with 40 GiB free each, close together
  inferops.vllm.gpu_select:
    count: 2
    min_free_memory: 40GiB
    max_utilization: 50
  register: selection

- name: Start a container on them (argv form keeps the quotes docker needs)
  ansible.builtin.command:
    argv: [docker, run, -d, --gpus, "{{ selection.docker_gpus_argv }}", vllm/vllm-openai:v0.33.0, my/model]

- name: Or through the Docker API, where no quoting is involved
  community.docker.docker_container:
    name: vllm
    image: vllm/vllm-openai:v0.33.0
    device_requests: "{{ selection.docker_device_requests }}"

- name: An idle GPU, never 0, named by UUID, falling back to docker when nvidia-smi is not on the host
  inferops.vllm.gpu_select:
    require_idle: true
    exclude: ["0"]
    id_type: uuid
    docker_image: nvidia/cuda:12.4.1-base-ubuntu22.04
"""

RETURN = r"""
gpus:
  description: Indices of the picked GPUs (for a MIG device, its GPU's index).
  returned: success
  type: list
  elements: int
  sample: [4, 5]
uuids:
  description: UUIDs of the picked GPUs or MIG devices.
  returned: success
  type: list
  elements: str
  sample: [GPU-6f4a3c1e-52b1-4d39-8f8e-9d6a0c1b2e3f, GPU-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901]
cuda_visible_devices:
  description: The value for C(CUDA_VISIBLE_DEVICES) (indices or UUIDs, per O(id_type)).
  returned: success
  type: str
  sample: "4,5"
docker_device_requests:
  description: DeviceRequests for the Docker Engine API, the Docker SDK and C(community.docker.docker_container).
  returned: success
  type: list
  elements: dict
  sample: [{driver: nvidia, device_ids: ["4", "5"], capabilities: [[gpu]]}]
docker_gpus_argv:
  description: The single argv element for C(docker run --gpus), with its literal double quotes.
  returned: success
  type: str
  sample: '"device=4,5"'
docker_gpus_shell:
  description: The same, quoted for a POSIX shell.
  returned: success
  type: str
  sample: "'\"device=4,5\"'"
topology:
  description:
    - For several GPUs, the farthest NVML topology level between two of them (V(single), V(multiple),
      V(hostbridge), V(node), V(system)); null for one GPU or when the backend cannot see the topology.
  returned: success
  type: str
  sample: single
unchecked:
  description:
    - What the backend could not check on the GPUs, one text per check naming the C(nvidia-smi) field, such as an
      C(nvidia-smi) older than C(remapped_rows.pending); empty when everything was checked (always with C(nvml)).
    - Such GPUs stay selectable, since the check is one the driver cannot make, but are never taken to pass it;
      the module warns. Update the driver, or install nvidia-ml-py for the C(nvml) backend.
  returned: when a backend observed the GPUs
  type: list
  elements: str
  sample: ["memory row remapping pending (remapped_rows.pending): this nvidia-smi does not know the field"]
backend:
  description: The backend that observed the GPUs.
  returned: always
  type: str
  sample: nvml
attempts:
  description: What each backend tried, in order, and why it failed.
  returned: always
  type: list
  elements: dict
  sample: [{backend: nvml, ok: false, error: the nvidia-ml-py library (import pynvml) is not installed}]
devices:
  description:
    - Every GPU with its stats, C(selected), C(eligible), and C(reasons) (why it was not picked), each reason one of
      those in C(docs/gpu-selection.md). Among them, C(memory pages are pending retirement ...),
      C(a memory row remapping is pending ...), C(a memory row remapping failed ...) and
      C(MIG mode is enabled pending a GPU reset ...) with either backend; C(utilization unknown ...) when the GPU
      does not report utilization and O(max_utilization) is set; C(its compute processes could not be listed ...,
      so idleness cannot be proven) with O(require_idle), where NVML refuses the process list (NVML error 4, no
      permission; 3, not supported), such a GPU being otherwise selectable.
    - A GPU that could not be read has C(error) instead of its stats, and a null C(index) when even that was
      unreadable.
    - C(mig_enabled_pending), C(retired_pages_pending), C(remapped_rows_pending) and C(remapped_rows_failure) are
      true, false, or null where the GPU cannot tell (it has no such mechanism; pages are retired before Ampere,
      rows remapped from Ampere on) or the backend could not ask (then the GPU's C(unchecked) says which).
    - With the C(nvml) backend, C(processes_error) where NVML would not list the GPU's compute processes.
    - C(unchecked) on a GPU the backend could not fully check, as in RV(unchecked).
  returned: when a backend observed the GPUs
  type: list
  elements: dict
  sample:
    - index: 0
      uuid: GPU-6f4a3c1e-52b1-4d39-8f8e-9d6a0c1b2e3f
      memory_free_mib: 61079
      utilization_gpu: 35
      selected: false
      eligible: false
      reasons: [1 compute process(es) running (pid 4242)]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.inferops.vllm.plugins.module_utils import _docker_gpus, _gpu_select, _nvml, _sizes, _validate


class GpuSelector(object):
    """Observes the GPUs through the first working backend, then selects."""

    def __init__(self, module):
        self.module = module
        self.params = module.params

    def constraints(self):
        p = self.params
        try:
            min_free = _sizes.to_mib(p["min_free_memory"], "min_free_memory")
        except _sizes.SizeError as exc:
            self.module.fail_json(msg=str(exc))
        try:
            _validate.number("timeout", p["timeout"], 0, 3600, above_minimum=True)
            _validate.number("count", p["count"], 1)
            _validate.number("max_utilization", p["max_utilization"], 0, 100)
            if p["docker_image"] is not None:
                _validate.image_reference("docker_image", p["docker_image"])
        except _validate.InputError as exc:
            self.module.fail_json(msg=str(exc))
        return _gpu_select.Constraints(
            count=p["count"], min_free_memory_mib=min_free, max_utilization=p["max_utilization"],
            exclude=p["exclude"], require_idle=p["require_idle"], skip_ecc_errors=p["skip_ecc_errors"],
            mig=p["mig"], prefer_topology=p["prefer_topology"], id_type=p["id_type"])

    def run(self):
        p = self.params
        constraints = self.constraints()
        if p["backend"] == "nvml" and _nvml.pynvml is None:
            self.module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=_nvml.PYNVML_IMPORT_ERROR,
                                  backend="nvml", attempts=[])
        try:
            observation, attempts = _gpu_select.observe(
                p["backend"], p["timeout"], docker_image=p["docker_image"], docker_pull=p["docker_pull"],
                with_topology=constraints.prefer_topology)
        except _gpu_select.BackendError as exc:
            self.module.fail_json(msg=str(exc), backend=None, attempts=getattr(exc, "attempts", []))
        result = {"changed": False, "backend": observation["backend"], "attempts": attempts,
                  "devices": observation["devices"], "unchecked": observation.get("unchecked", [])}
        if result["unchecked"]:
            self.module.warn("%s could not check every GPU for: %s. GPUs were chosen without those checks (never "
                             "assumed to pass them); update the NVIDIA driver, or install nvidia-ml-py for the nvml "
                             "backend, to have them checked" % (observation["backend"], "; ".join(result["unchecked"])))
        try:
            chosen = _gpu_select.select(observation, constraints)
        except _gpu_select.SelectionError as exc:
            self.module.fail_json(msg=str(exc), **result)
        ids = chosen["ids"]
        result.update(
            gpus=chosen["gpus"], uuids=chosen["uuids"], topology=chosen["topology"],
            cuda_visible_devices=",".join(ids),
            docker_device_requests=_docker_gpus.device_requests(ids),
            docker_gpus_argv=_docker_gpus.gpus_argv(ids),
            docker_gpus_shell=_docker_gpus.gpus_shell(ids),
        )
        warning = _gpu_select.cuda_order_warning(observation["devices"], constraints.id_type)
        if warning:
            self.module.warn(warning)
        if constraints.prefer_topology and observation["topology"] is None and constraints.count > 1:
            self.module.warn("prefer_topology needs the nvml backend; %s cannot see the GPU topology, so the "
                             "GPUs were picked by load alone" % observation["backend"])
        self.module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            count=dict(type="int", default=1),
            min_free_memory=dict(type="raw", default=0),
            max_utilization=dict(type="int"),
            exclude=dict(type="list", elements="str", default=[]),
            require_idle=dict(type="bool", default=False),
            skip_ecc_errors=dict(type="bool", default=True),
            mig=dict(type="str", choices=["skip", "use"], default="skip"),
            prefer_topology=dict(type="bool"),
            id_type=dict(type="str", choices=["index", "uuid"], default="index"),
            backend=dict(type="str", choices=["auto", "nvml", "nvidia-smi", "docker"], default="auto"),
            docker_image=dict(type="str"),
            docker_pull=dict(type="bool", default=False),
            timeout=dict(type="float", default=10),
        ),
        required_if=[("backend", "docker", ["docker_image"])],
        supports_check_mode=True,
    )
    GpuSelector(module).run()


if __name__ == "__main__":
    main()
