# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: instance_problems
short_description: What is wrong with vLLM instance settings, checked as inferops.vllm.vllm_serve checks them
version_added: 0.2.0
author: inferops maintainers (@inferops)
description:
  - Runs inferops.vllm.vllm_serve's input checks on each instance (instance names as plain tokens, no line breaks
    or control characters in texts that reach a unit file, an env file, a command line or a header, env names,
    ports, finite numbers in range, GPU ids once, image references, C(extra_args) values that cannot carry flags)
    and the role settings that reach files, so a play refuses bad input before it touches any host.
  - Each problem names the field (C(vllm_instances[1].port)), what is wrong and the fix. Values of secrets are
    never shown.
options:
  _input:
    description: The instances (the vllm role's C(vllm_instances)).
    type: list
    elements: dict
    required: true
  settings:
    description:
      - Role settings, by variable name. Texts are checked for control characters, C(vllm_image) as an image
        reference, lists (C(vllm_api_keys)) item by item. Each is checked once, not again for every instance
        that inherits it.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Refuse bad instance settings before anything changes
  ansible.builtin.assert:
    that: problems | length == 0
    fail_msg: "{{ problems | join('; ') }}"
    quiet: true
  vars:
    problems: "{{ vllm_instances | inferops.vllm.instance_problems(settings={'vllm_image': vllm_image}) }}"
"""

RETURN = r"""
_value:
  description: One message per instance or setting that fails a check; empty when all pass.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.inferops.vllm.plugins.module_utils import _validate, _vllm_input


def _settings_problems(settings):
    problems = []
    for name, value in sorted(settings.items()):
        try:
            if name == "vllm_image":
                _validate.image_reference(name, value)
            elif isinstance(value, (list, tuple)):
                _validate.texts(name, value)
            elif not isinstance(value, (dict, bool)):
                _validate.single_line(name, value)
        except _validate.InputError as exc:
            problems.append(str(exc))
    return problems


def instance_problems(instances, settings=None):
    settings = settings or {}
    if not isinstance(instances, (list, tuple)):
        raise AnsibleFilterError("instance_problems: expects the list of instances, got %s" % type(instances).__name__)
    if not isinstance(settings, dict):
        raise AnsibleFilterError("instance_problems: settings must be a dict, got %s" % type(settings).__name__)
    problems = _settings_problems(settings)
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            problems.append("vllm_instances[%d]: each instance is a dict of settings, got %s"
                            % (index, type(instance).__name__))
            continue
        params = dict(instance)
        if params.get("gpus") is not None and isinstance(params["gpus"], (list, tuple)):
            params["gpus"] = [str(gpu) if isinstance(gpu, int) and not isinstance(gpu, bool) else gpu
                              for gpu in params["gpus"]]
        try:
            _vllm_input.check(params, prefix="vllm_instances[%d]." % index)
            _validate.number("vllm_instances[%d].gpu_count" % index, params.get("gpu_count"), 1)
            if not isinstance(params.get("watchdog", False), bool):
                raise _validate.InputError("vllm_instances[%d].watchdog: %s is not true or false"
                                           % (index, _validate._shown(params["watchdog"])))
        except _validate.InputError as exc:
            problems.append(str(exc))
    return problems


class FilterModule(object):
    def filters(self):
        return {"instance_problems": instance_problems}
