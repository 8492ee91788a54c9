# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: docker_gpus
short_description: Quote GPU IDs for C(docker run --gpus), correctly
version_added: 0.1.0
author: inferops maintainers (@inferops)
description:
  - Turns a list of GPU indices or UUIDs into the value of C(docker run --gpus), quoted for where it goes.
  - docker's CLI reads the value as one CSV record, so C(device=4,5) must reach it with its double quotes.
    Unquoted, the daemon refuses it with C(cannot set both Count and DeviceIDs on device request).
  - Roles use this filter; no template builds the quoting by hand.
options:
  _input:
    description: GPU indices (C(4)), GPU UUIDs (C(GPU-...)) or MIG UUIDs (C(MIG-...)).
    type: list
    elements: raw
    required: true
  form:
    description:
      - V(argv) gives the single argv element, quotes included (for C(command) argv lists, the Docker CLI
        from code).
      - V(shell) gives it quoted for a POSIX shell.
      - V(systemd) gives one word of a systemd C(ExecStart=) line.
      - V(device_requests) gives the Docker Engine API structure (no quoting needed), as used by
        C(community.docker.docker_container)'s O(community.docker.docker_container#module:device_requests).
    type: str
    default: argv
    choices: [argv, shell, systemd, device_requests]
"""

EXAMPLES = r"""
- name: Start a container on GPUs 4 and 5 from an argv list
  ansible.builtin.command:
    argv: [docker, run, -d, --gpus, "{{ [4, 5] | inferops.vllm.docker_gpus }}", my/image]

- name: Show the command for a human
  ansible.builtin.debug:
    msg: "docker run --gpus {{ selection.gpus | inferops.vllm.docker_gpus('shell') }} my/image"
"""

RETURN = r"""
_value:
  description: The quoted value (a string), or the DeviceRequests list for O(form=device_requests).
  type: raw
  sample: '"device=4,5"'
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.inferops.vllm.plugins.module_utils._docker_gpus import (
    GpuIdError,
    device_requests,
    gpus_argv,
    gpus_shell,
    gpus_systemd,
)

_FORMS = {"argv": gpus_argv, "shell": gpus_shell, "systemd": gpus_systemd, "device_requests": device_requests}


def docker_gpus(ids, form="argv"):
    if form not in _FORMS:
        raise AnsibleFilterError("docker_gpus: form must be one of %s, got %r" % (", ".join(sorted(_FORMS)), form))
    try:
        return _FORMS[form](ids)
    except GpuIdError as exc:
        raise AnsibleFilterError("docker_gpus: %s" % exc)


class FilterModule(object):
    def filters(self):
        return {"docker_gpus": docker_gpus}
