# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which GPU processes belong to a vLLM instance: vllm_serve marks every instance's environment with
INFEROPS_VLLM_INSTANCE=<name>, children inherit it, and the host can read it in /proc/<pid>/environ, containers
included. Nothing is ever matched by a process name pattern."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.inferops.vllm.plugins.module_utils._vllm_spec import INSTANCE_ENV


def instance_of(pid, proc="/proc"):
    """The instance name marked in the process's environment, or None (also when the process is gone)."""
    try:
        with open(os.path.join(proc, str(pid), "environ"), "rb") as handle:
            entries = handle.read().split(b"\0")
    except (IOError, OSError):
        return None
    marker = (INSTANCE_ENV + "=").encode()
    for entry in entries:
        if entry.startswith(marker):
            return entry[len(marker):].decode("utf-8", "replace")
    return None


def split_processes(devices, name, proc="/proc"):
    """For each device, its processes split into (this instance's, everyone else's)."""
    split = {}
    for device in devices:
        ours, others = [], []
        for process in device.get("processes", []):
            (ours if instance_of(process["pid"], proc) == name else others).append(process)
        split[device["index"]] = (ours, others)
    return split
