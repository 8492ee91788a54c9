#!/usr/bin/python
# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vllm_diagnose
short_description: Collect a host's vLLM incident diagnostics into a directory, secrets masked
version_added: 0.1.0
author: inferops maintainers (@inferops)
description:
  - For each instance, the full M(inferops.vllm.vllm_health) report, the tail of its logs (docker logs, journal or
    log file) and its C(docker inspect) or unit status; for the host, C(nvidia-smi -q), the tail of dmesg with NVIDIA
    Xid lines marked, the driver, Docker and vLLM image versions, disk and memory.
  - Every file is written 0600, with API keys, tokens and secret-looking values masked.
  - Returns each instance's status and the host's top diagnosis with the runbook to run next.
extends_documentation_fragment:
  - inferops.vllm.attributes
attributes:
  check_mode:
    support: none
  diff_mode:
    support: none
options:
  dest:
    description:
      - Directory to write into. A missing one is created 0700.
      - An existing one must be a directory of the user the module runs as, private (no access for group and
        others, as C(chmod 0700) leaves it), and not a symlink; anything else is refused before any probe runs.
      - A file or symlink already in it under the name of a file written here is replaced, never written through.
      - Every directory above it, and every symlink on the way, must be root's or this user's, and one that others
        may write into must be sticky (as C(/tmp) is); otherwise its owner could redirect O(dest), and it is
        refused before any probe runs.
    type: path
    required: true
  instances:
    description: The instances, as in the vllm role's vllm_instances (name, port, backend, model, tls).
    type: list
    elements: dict
    default: []
  api_keys:
    description: Keys to probe with and to mask wherever they appear.
    type: list
    elements: str
    default: []
  health_timeout:
    description: Seconds each instance's health probe may take.
    type: float
    default: 5
  log_lines:
    description: Log lines kept per instance.
    type: int
    default: 500
"""

EXAMPLES = r"""
- name: Diagnostics of this host
  inferops.vllm.vllm_diagnose:
    dest: /var/log/vllm/diag-now
    instances: "{{ vllm_instances }}"
    api_keys: "{{ vllm_api_keys }}"
  register: diag
"""

RETURN = r"""
files:
  description: Names of the files written in O(dest).
  returned: always
  type: list
  elements: str
statuses:
  description: Each instance's status (healthy, degraded, starting, unhealthy, down).
  returned: always
  type: dict
top:
  description: The first diagnosis found (code, message, evidence, runbook), or code V(none).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.inferops.vllm.plugins.module_utils import _diagnose, _validate


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            instances=dict(type="list", elements="dict", default=[]),
            api_keys=dict(type="list", elements="str", default=[], no_log=True),
            health_timeout=dict(type="float", default=5),
            log_lines=dict(type="int", default=500),
        ),
        supports_check_mode=False,
    )
    p = module.params
    instances = []
    try:
        _validate.single_line("dest", p["dest"])
        _validate.number("health_timeout", p["health_timeout"], 0, 3600, above_minimum=True)
        _validate.number("log_lines", p["log_lines"], 1, 100000)
        for index, instance in enumerate(p["instances"]):
            field = "instances[%d]" % index
            if "name" not in instance or "port" not in instance:
                raise _validate.InputError("%s: each item needs a name and a port, got %s" % (
                    field, sorted(str(key) for key in instance)))
            port = instance["port"]
            if isinstance(port, str) and port.isdigit() and len(port) <= 5:
                port = int(port)  # a templated port arrives as text
            # The name becomes the name of files under dest: a plain token, never a path.
            instances.append(dict(instance, name=_validate.instance_name(field + ".name", instance["name"]),
                                  port=_validate.port(field + ".port", port)))
    except _validate.InputError as exc:
        module.fail_json(msg=str(exc))
    try:
        files, statuses, top = _diagnose.collect(p["dest"], instances, p["api_keys"],
                                                 health_timeout=p["health_timeout"], log_lines=p["log_lines"])
    except _diagnose.DestError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=True, files=files, statuses=statuses, top=top, dest=p["dest"])


if __name__ == "__main__":
    main()
