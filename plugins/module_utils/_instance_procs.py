# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which GPU processes belong to a vLLM instance: vllm_serve marks every instance's environment with
INFEROPS_VLLM_INSTANCE=<name>, children inherit it, and the host can read it in /proc/<pid>/environ, containers
included. Nothing is ever matched by a process name pattern."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_spec import INSTANCE_ENV

# Enough of a command line to tell the workload; a message quoting several processes stays readable.
COMMAND_WIDTH = 120
# A command line can be megabytes; what is read of it is bounded, and redacted before it is cut to COMMAND_WIDTH.
COMMAND_READ = 16384


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


def _read(pid, what, proc, limit):
    try:
        with open(os.path.join(proc, str(pid), what), "rb") as handle:
            return handle.read(limit)
    except (IOError, OSError):
        return b""


def describe(process, proc="/proc"):
    """A GPU process of NVML's (pid, used_memory_mib) with what /proc tells of it: its name, its command line
    (secrets masked, cut to COMMAND_WIDTH characters) and the vLLM instance it belongs to, None where unknown (a
    process gone, or of another PID namespace)."""
    pid = process["pid"]
    name = _read(pid, "comm", proc, 256).decode("utf-8", "replace").strip()
    command = _read(pid, "cmdline", proc, COMMAND_READ).replace(b"\0", b" ").decode("utf-8", "replace").strip()
    # Arguments can hold newlines; the message quoting this stays one line.
    command = " ".join(redact(command).split())
    if len(command) > COMMAND_WIDTH:
        command = command[:COMMAND_WIDTH - 3] + "..."
    return {"pid": pid, "name": name or None, "command": command or None, "instance": instance_of(pid, proc),
            "used_memory_mib": process.get("used_memory_mib")}


def split_processes(devices, name, proc="/proc"):
    """For each device, its processes split into (this instance's, everyone else's)."""
    split = {}
    for device in devices:
        ours, others = [], []
        for process in device.get("processes", []):
            (ours if instance_of(process["pid"], proc) == name else others).append(process)
        split[device["index"]] = (ours, others)
    return split
