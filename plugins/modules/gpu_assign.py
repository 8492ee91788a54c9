#!/usr/bin/python
# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: gpu_assign
short_description: Give each vLLM instance of a host its GPUs, and record them in the host's GPU ledger
version_added: 0.2.0
author: inferops maintainers (@inferops)
description:
  - Keeps the host's GPU ledger, a JSON file of which instance holds which GPUs, under a lock, written atomically.
  - Every GPU pinned in O(instances) (their C(gpus)) is reserved first, whatever the order of the list. Two
    instances pinning one GPU is an error unless both set C(share_gpus). A GPU named by its index in one place and
    by its UUID in another is one GPU. UUIDs are compared regardless of case (C(GPU-6F4A...) is C(GPU-6f4a...)) and
    kept in the ledger and the result in the form NVML and C(nvidia-smi) print, C(GPU-) and lower-case hex; a ledger
    written with other cases is rewritten once in that form.
  - A pin new to the ledger (or changed) is checked against the GPUs. One that is not on the host, cannot be read
    (lost, needs a reset), runs MIG (or has MIG enabled pending a reset; pin one of its MIG devices instead), or is
    unhealthy (uncorrected ECC errors, memory pending retirement or remapping, a failed remapping) is refused with
    what to do. A pin already in the ledger is not checked again. When the GPUs cannot be read, pins stand
    unchecked and the module warns.
  - An instance without pinned GPUs keeps the GPUs the ledger gives it, as long as it asks for as many, none of
    them is pinned by another instance, and none is in O(exclude). Otherwise it gets the least-loaded healthy GPUs
    that no other instance holds and no other workload's process uses (the picking of M(inferops.vllm.gpu_select),
    with the GPUs' topology; never a GPU that is lost, unhealthy or runs MIG, nor one whose processes cannot be
    listed), and the result says it moved. Instances needing more GPUs are picked first, so that a small one does not
    split the close GPUs a larger one needs.
  - "An instance in the ledger but not in O(instances) keeps its GPUs (it may still run): set its C(state) to
    V(absent) for one run to free them."
  - The GPUs are read (NVML, then C(nvidia-smi)) only when an instance needs picking, a pin is new or changed, or
    GPUs are named both by index and by UUID; a run that changes nothing reads none.
extends_documentation_fragment:
  - inferops.vllm.attributes
attributes:
  check_mode:
    support: full
    details: Plans the same assignment and writes nothing.
  diff_mode:
    support: full
    details: The ledger before and after.
requirements:
  - nvidia-ml-py (C(pynvml)) or C(nvidia-smi), when an instance needs GPUs picked.
notes:
  - What each refusal and each skipped GPU means, and what to do, is listed in the collection's
    C(docs/gpu-selection.md), with RV(unchecked) and RV(health_unchecked).
options:
  path:
    description: The ledger file. Its directory must exist.
    type: path
    required: true
  instances:
    description:
      - Every vLLM instance of the host, as the vllm role's C(vllm_instances) lists them. Keys other than the
        ones below are ignored.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The instance's name.
        type: str
        required: true
      gpus:
        description: GPUs pinned to the instance, by index or UUID (in any case); nothing is picked for it.
        type: list
        elements: str
      gpu_count:
        description: How many GPUs to pick; defaults to C(tensor_parallel_size) x C(pipeline_parallel_size).
        type: int
      tensor_parallel_size:
        description: Counts towards the default of C(gpu_count).
        type: int
        default: 1
      pipeline_parallel_size:
        description: Counts towards the default of C(gpu_count).
        type: int
        default: 1
      min_free_memory:
        description: Free memory a picked GPU must have, in MiB or with a unit (V(40GiB)); defaults to O(min_free_memory).
        type: raw
      state:
        description: V(absent) frees the instance's GPUs; every other state holds them.
        type: str
        choices: [started, stopped, present, restarted, absent]
        default: started
      share_gpus:
        description: The instance may share a pinned GPU with other instances that also set it.
        type: bool
        default: false
  min_free_memory:
    description: Free memory each picked GPU must have unless the instance says otherwise.
    type: raw
    default: 0
  require_idle:
    description: Pick only GPUs with no compute process at all (not even one of the instance being placed).
    type: bool
    default: false
  exclude:
    description: GPUs never picked, by index or UUID in any case (pinned GPUs are not affected).
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds allowed for reading the GPUs.
    type: float
    default: 10
"""

EXAMPLES = r"""
- name: GPUs of this host's instances, pinned ones first
  inferops.vllm.gpu_assign:
    path: /etc/vllm/gpu-assignments.json
    instances:
      - {name: chat, tensor_parallel_size: 2}
      - {name: embed, gpus: ["7"]}
    min_free_memory: 40GiB
  register: ledger

- name: Serve chat on its GPUs
  inferops.vllm.vllm_serve:
    name: chat
    model: meta-llama/Llama-3.1-8B-Instruct
    gpus: "{{ ledger.assignments.chat }}"
    tensor_parallel_size: 2
    port: 8000
"""

RETURN = r"""
assignments:
  description: The GPUs of each listed instance that is not absent, as texts.
  returned: success
  type: dict
  sample: {chat: ["5", "6"], embed: ["7"]}
picked:
  description: The instances whose GPUs were picked in this run.
  returned: success
  type: dict
  sample: {chat: ["5", "6"]}
moved:
  description: Instances whose GPUs differ from the ledger's (a pin taken by another, a new count, an excluded GPU).
  returned: success
  type: dict
  sample: {chat: {from: ["6", "7"], to: ["5", "6"]}}
released:
  description: Absent instances whose GPUs were freed.
  returned: success
  type: list
  elements: str
unlisted:
  description: Instances the ledger holds GPUs for that are not in O(instances).
  returned: success
  type: dict
unchecked:
  description:
    - Why new pins could not be checked against the GPUs (they could not be read); null when they were, or when
      no GPU needed reading.
    - The pins stand as given and the module warns. A pin that is not on the host, lost, MIG or unhealthy is only
      refused when the GPUs can be read, so rerun once they can.
  returned: success
  type: str
health_unchecked:
  description:
    - What could not be checked on the GPUs that were read, one text per check, naming the C(nvidia-smi) field
      (an older C(nvidia-smi) that does not know C(remapped_rows.pending), for example); empty when everything was
      checked, or no GPU was read.
    - Pins are checked and GPUs picked without those checks, never assuming that they pass; the module warns.
  returned: success
  type: list
  elements: str
  sample: ["memory row remapping pending (remapped_rows.pending): this nvidia-smi does not know the field"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.inferops.vllm.plugins.module_utils import _files, _gpu_ledger, _sizes, _validate


def claims_from(module):
    claims = []
    for index, item in enumerate(module.params["instances"]):
        field = "instances[%d]" % index
        try:
            name = _validate.instance_name(field + ".name", item["name"])
            field = "instances[%s]" % name
            # UUIDs in NVML's form ("GPU-" and lower-case hex) whatever case they were typed in: one GPU written in
            # two cases is listed twice, and the ledger keeps the form NVML prints.
            gpus = [_gpu_ledger.canonical(g) for g in item["gpus"]] if item["gpus"] else None
            pinned = _validate.gpu_ids(field + ".gpus", gpus) if gpus else None
            count = item["gpu_count"]
            if count is None:
                _validate.number(field + ".tensor_parallel_size", item["tensor_parallel_size"], 1, 1024)
                _validate.number(field + ".pipeline_parallel_size", item["pipeline_parallel_size"], 1, 1024)
                count = item["tensor_parallel_size"] * item["pipeline_parallel_size"]
            _validate.number(field + ".gpu_count", count, 1, 1024)
            minimum = item["min_free_memory"]
            minimum = module.params["min_free_memory"] if minimum is None else minimum
            free_mib = _sizes.to_mib(minimum, field + ".min_free_memory")
        except (_validate.InputError, _sizes.SizeError) as exc:
            module.fail_json(msg=str(exc))
        claims.append(_gpu_ledger.Claim(name, pinned, count, free_mib, item["state"], item["share_gpus"]))
    return claims


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            instances=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                gpus=dict(type="list", elements="str"),
                gpu_count=dict(type="int"),
                tensor_parallel_size=dict(type="int", default=1),
                pipeline_parallel_size=dict(type="int", default=1),
                min_free_memory=dict(type="raw"),
                state=dict(type="str", choices=list(_gpu_ledger.STATES), default="started"),
                share_gpus=dict(type="bool", default=False),
            )),
            min_free_memory=dict(type="raw", default=0),
            require_idle=dict(type="bool", default=False),
            exclude=dict(type="list", elements="str", default=[]),
            timeout=dict(type="float", default=10),
        ),
        supports_check_mode=True,
    )
    p = module.params
    claims = claims_from(module)
    path = p["path"]

    def observe():
        return _gpu_ledger.read_gpus(p["timeout"])

    try:
        with _gpu_ledger.locked(path, module.check_mode):
            text = _files.read(path)
            before = _gpu_ledger.parse(text, path)
            after, report = _gpu_ledger.assign(before, claims, observe, p["exclude"], p["require_idle"])
            # A host that never had an instance gets no ledger; an existing one is kept in its form and mode.
            changed = False
            if text is not None or after:
                changed = _files.write(path, _gpu_ledger.render(after), 0o644, 0, 0, module.check_mode)
    except (_gpu_ledger.LedgerError, _files.FileError) as exc:
        module.fail_json(msg=str(exc))
    for name, gpus in sorted(report["unlisted"].items()):
        module.warn("the ledger %s gives GPU(s) %s to %s, which is not among this host's instances; they stay held "
                    "(it may still run): list it with state: absent once to free them" % (path, ", ".join(gpus), name))
    if report["unchecked"]:
        module.warn("the pinned GPUs of %s could not be checked (lost, MIG or unhealthy GPUs are refused when the GPUs "
                    "can be read): %s" % (", ".join(sorted(c.name for c in claims if c.pinned)), report["unchecked"]))
    if report["health_unchecked"]:
        module.warn("the GPUs were read without checking them for: %s. Pins were checked and GPUs picked without "
                    "those checks (never assuming they pass); update the NVIDIA driver, or install nvidia-ml-py, to "
                    "have them checked" % "; ".join(report["health_unchecked"]))
    for name, move in sorted(report["moved"].items()):
        module.warn("%s moves from GPU(s) %s to %s" % (name, ", ".join(move["from"]), ", ".join(move["to"])))
    result = dict(changed=changed, **report)
    if module._diff:
        result["diff"] = {"before": _gpu_ledger.render(before), "after": _gpu_ledger.render(after),
                          "before_header": path, "after_header": path}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
