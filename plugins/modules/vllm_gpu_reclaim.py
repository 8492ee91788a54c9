#!/usr/bin/python
# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vllm_gpu_reclaim
short_description: Free a stopped vLLM instance's GPUs, touching nothing of other workloads
version_added: 0.1.0
author: inferops maintainers (@inferops)
description:
  - For the GPUs of a stopped vLLM instance, reads the processes through NVML and kills those that still belong to
    that instance (orphaned workers), identified by the C(INFEROPS_VLLM_INSTANCE) mark vllm_serve puts in every
    instance's environment. Processes of other workloads are never touched, and nothing is matched by name.
  - When memory stays held with no process, resets exactly those GPUs with C(nvidia-smi --gpu-reset -i N),
    turning persistence mode off first (nvidia-persistenced otherwise holds the GPU) and restoring it afterwards.
    A reset is refused, with the PIDs named, when another workload's process uses the GPU.
extends_documentation_fragment:
  - inferops.vllm.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
requirements:
  - nvidia-ml-py (C(pynvml)), and C(nvidia-smi) for resets.
options:
  instance:
    description: The instance whose processes may be killed (vllm_serve's O(inferops.vllm.vllm_serve#module:name)).
    type: str
    required: true
  gpus:
    description: The instance's GPUs (indices or UUIDs).
    type: list
    elements: str
    required: true
  kill:
    description: Kill the instance's remaining processes on those GPUs (SIGTERM, then SIGKILL after O(grace)).
    type: bool
    default: true
  reset:
    description: Reset GPUs whose memory stays held with no process.
    type: bool
    default: true
  grace:
    description: Seconds between SIGTERM and SIGKILL.
    type: int
    default: 10
  tolerance_mib:
    description: Memory (MiB) held without a process that is still considered free (driver overhead).
    type: int
    default: 0
  timeout:
    description: Seconds each NVML read or nvidia-smi call may take.
    type: float
    default: 10
"""

EXAMPLES = r"""
- name: Stop the instance first
  inferops.vllm.vllm_serve:
    name: llama-70b
    state: stopped
    gpus: [4, 5]
    model: meta-llama/Llama-3.3-70B-Instruct

- name: Free its GPUs
  inferops.vllm.vllm_gpu_reclaim:
    instance: llama-70b
    gpus: [4, 5]
  register: reclaimed
"""

RETURN = r"""
killed:
  description: PIDs of the instance's processes that were killed.
  returned: always
  type: list
  elements: int
reset:
  description: Indices of the GPUs that were reset.
  returned: always
  type: list
  elements: int
gpus:
  description: Per GPU, the memory used, memory held with no process, the instance's and other workloads' PIDs, and
    whether it was reset.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_reclaim, _nvml, _validate


def main():
    module = AnsibleModule(
        argument_spec=dict(
            instance=dict(type="str", required=True),
            gpus=dict(type="list", elements="str", required=True),
            kill=dict(type="bool", default=True),
            reset=dict(type="bool", default=True),
            grace=dict(type="int", default=10),
            tolerance_mib=dict(type="int", default=0),
            timeout=dict(type="float", default=10),
        ),
        supports_check_mode=True,
    )
    if _nvml.pynvml is None:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=_nvml.PYNVML_IMPORT_ERROR)
    p = module.params
    try:
        _validate.instance_name("instance", p["instance"])
        _validate.gpu_ids("gpus", p["gpus"])
        _validate.number("grace", p["grace"], 0, 3600)
        _validate.number("tolerance_mib", p["tolerance_mib"], 0)
        _validate.number("timeout", p["timeout"], 0, 3600, above_minimum=True)
    except _validate.InputError as exc:
        module.fail_json(msg=str(exc), changed=False)
    try:
        report = _gpu_reclaim.reclaim(p["instance"], p["gpus"], kill=p["kill"], reset=p["reset"], grace=p["grace"],
                                      tolerance_mib=p["tolerance_mib"], timeout=p["timeout"],
                                      check_mode=module.check_mode)
    except _gpu_reclaim.ReclaimError as exc:
        module.fail_json(msg=str(exc), changed=False)
    module.exit_json(**report)


if __name__ == "__main__":
    main()
