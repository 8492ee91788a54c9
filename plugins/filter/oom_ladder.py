# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: oom_ladder
short_description: The settings oom_recover.yml tries, in order, for an instance that runs out of GPU memory
version_added: 0.3.0
author: inferops maintainers (@inferops)
description:
  - Steps an instance's settings down in the seeds' order. First C(gpu_memory_utilization), by O(step_gpu_memory_utilization)
    (rounded to two decimals) while it stays at or above O(floor_gpu_memory_utilization). Then C(max_num_seqs), halved
    while the half is at or above O(floor_max_num_seqs). Then C(max_model_len), halved while the half is at or above
    O(floor_max_model_len). Each stage takes 20 steps at most.
  - Each step keeps the lower values of the stages before it, so a setting is the whole of what changes.
  - The ladder is empty when every setting is already at its floor.
  - A value that is not a finite number in range (a text that is not a number, NaN, a negative number, true or
    false) is an error that names the field, rather than a ladder of settings vLLM would refuse.
options:
  _input:
    description:
      - The instance's settings now, overrides included (C(gpu_memory_utilization), C(max_num_seqs), C(max_model_len)
        and C(name), used in messages). A setting it lacks starts from vLLM's default or the start value below.
    type: dict
    required: true
  floor_gpu_memory_utilization:
    description: Lowest gpu_memory_utilization to try, above 0 and at most 1.
    type: float
    default: 0.5
  step_gpu_memory_utilization:
    description: How much gpu_memory_utilization drops per step, above 0 and below 1.
    type: float
    default: 0.1
  floor_max_num_seqs:
    description: Lowest max_num_seqs to try, at least 1.
    type: int
    default: 16
  floor_max_model_len:
    description: Lowest max_model_len to try, at least 1.
    type: int
    default: 2048
  start_max_num_seqs:
    description: max_num_seqs to start halving from when the instance does not set it.
    type: int
    default: 256
  start_max_model_len:
    description: max_model_len to start halving from when the instance does not set it.
    type: int
    default: 32768
"""

EXAMPLES = r"""
- name: The settings to try
  ansible.builtin.set_fact:
    candidates: "{{ {'name': 'chat', 'gpu_memory_utilization': 0.7, 'max_num_seqs': 64} | inferops.vllm.oom_ladder(floor_max_model_len=8192) }}"

# [{"gpu_memory_utilization": 0.6}, {"gpu_memory_utilization": 0.5},
#  {"gpu_memory_utilization": 0.5, "max_num_seqs": 32}, {"gpu_memory_utilization": 0.5, "max_num_seqs": 16},
#  {"gpu_memory_utilization": 0.5, "max_num_seqs": 16, "max_model_len": 16384},
#  {"gpu_memory_utilization": 0.5, "max_num_seqs": 16, "max_model_len": 8192}]
"""

RETURN = r"""
_value:
  description: The settings to try, in order, each to be combined over the instance's.
  type: list
  elements: dict
"""

import math

from ansible.errors import AnsibleFilterError

# What the runbook's Jinja allowed each stage, kept so that a small step does not make a ladder of hundreds of redeploys.
MAX_STEPS = 20
# The former Jinja's tolerance: 0.6 - 0.1 is 0.49999... in binary and must still reach a floor of 0.5.
EPSILON = 0.0001


def _shown(value):
    # A hostile value can be long: the message names it, it need not repeat all of it.
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(field, value, integer):
    # Numbers given with -e arrive as text: "0.8" and "128" are numbers, as Jinja's float and int filters read them.
    if isinstance(value, bool):
        raise AnsibleFilterError("oom_ladder: %s: %s is true or false, not a number" % (field, value))
    if isinstance(value, str):
        try:
            value = int(value) if integer and value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            raise AnsibleFilterError("oom_ladder: %s: %s is not a number" % (field, _shown(value)))
    if not isinstance(value, (int, float)):
        raise AnsibleFilterError("oom_ladder: %s: %s is not a number (%s)" % (field, _shown(value), type(value).__name__))
    if isinstance(value, float) and not math.isfinite(value):
        raise AnsibleFilterError("oom_ladder: %s: %s is not a finite number" % (field, value))
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise AnsibleFilterError("oom_ladder: %s: %s is not a whole number" % (field, value))
        return int(value)
    return float(value)


def _at_least_one(field, value):
    value = _number(field, value, integer=True)
    if value < 1:
        raise AnsibleFilterError("oom_ladder: %s: %d is below 1" % (field, value))
    return value


def _fraction(field, value, upper_open=False):
    value = _number(field, value, integer=False)
    if not 0 < value <= 1 or (upper_open and value == 1):
        raise AnsibleFilterError("oom_ladder: %s: %s is out of range (above 0 and %s 1)"
                                 % (field, value, "below" if upper_open else "at most"))
    return value


def oom_ladder(instance, floor_gpu_memory_utilization=0.5, step_gpu_memory_utilization=0.1, floor_max_num_seqs=16,
               floor_max_model_len=2048, start_max_num_seqs=256, start_max_model_len=32768):
    if not isinstance(instance, dict):
        raise AnsibleFilterError("oom_ladder: expects the instance's settings (a dict), got %s" % type(instance).__name__)
    name = instance.get("name")
    # A name with control characters would break the message it is in (the runbook checks no names before this).
    prefix = "%s." % name if isinstance(name, str) and name and name.isprintable() else "instance."

    def own(key, start_field, start):
        # A setting the instance has is named as the instance's; one it lacks starts from the runbook's variable.
        if instance.get(key) is not None:
            return prefix + key, instance[key]
        return start_field, start

    floor_u = _fraction("floor_gpu_memory_utilization", floor_gpu_memory_utilization)
    step_u = _fraction("step_gpu_memory_utilization", step_gpu_memory_utilization, upper_open=True)
    floor_s = _at_least_one("floor_max_num_seqs", floor_max_num_seqs)
    floor_m = _at_least_one("floor_max_model_len", floor_max_model_len)
    util = _fraction(*own("gpu_memory_utilization", "gpu_memory_utilization", 0.9))
    seqs = _at_least_one(*own("max_num_seqs", "start_max_num_seqs", start_max_num_seqs))
    mlen = _at_least_one(*own("max_model_len", "start_max_model_len", start_max_model_len))

    ladder = []
    steps = 0
    while steps < MAX_STEPS and util - step_u >= floor_u - EPSILON:
        # As Jinja's round did: to two decimals, Python's rounding, so 0.9 - 0.1 is 0.8 and not 0.8000000000000002.
        util = round((util - step_u) * 100, 0) / 100
        ladder.append({"gpu_memory_utilization": util})
        steps += 1
    steps = 0
    while steps < MAX_STEPS and seqs // 2 >= floor_s:
        seqs //= 2
        ladder.append({"gpu_memory_utilization": util, "max_num_seqs": seqs})
        steps += 1
    steps = 0
    while steps < MAX_STEPS and mlen // 2 >= floor_m:
        mlen //= 2
        ladder.append({"gpu_memory_utilization": util, "max_num_seqs": seqs, "max_model_len": mlen})
        steps += 1
    return ladder


class FilterModule(object):
    def filters(self):
        return {"oom_ladder": oom_ladder}
