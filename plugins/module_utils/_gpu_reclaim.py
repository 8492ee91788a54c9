# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Freeing a stopped vLLM instance's GPUs: kill the processes that are still this instance's (orphaned workers),
never anyone else's, and reset a GPU only when memory stays held with no process, persistence mode handled."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import time

from ansible_collections.inferops.vllm.plugins.module_utils import _command, _docker_gpus, _instance_procs, _nvml
from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact


class ReclaimError(Exception):
    pass


def _snapshot(gpus, timeout):
    """The devices the names in `gpus` name: an index, or a UUID in any case (NVML prints "GPU-" and lower-case hex,
    users copy capitals). Each name must name exactly one device: one that names none, or a UUID that two devices
    report (in any cases: a broken reading), is refused before anything is killed, so that folding cases never
    takes in a GPU that was not meant."""
    try:
        snap = _nvml.snapshot(timeout=timeout)
    except _nvml.NvmlError as exc:
        raise ReclaimError(str(exc))
    devices = snap["devices"]
    chosen, missing = [], []
    for name in gpus:
        key = _docker_gpus.id_key(str(name))
        named = [d for d in devices if key in _docker_gpus.device_keys(d)]
        if not named:
            missing.append(str(name))
        elif len(named) > 1:
            raise ReclaimError(
                "gpus: %s names more than one GPU here (GPUs %s; UUIDs are compared regardless of case): which one "
                "is meant cannot be told, so no process was touched. A broken reading gives one UUID to two GPUs: "
                "check `nvidia-smi -L`, or name the GPU by its index" % (name, ", ".join(str(d["index"]) for d in named)))
        elif not any(d is named[0] for d in chosen):
            chosen.append(named[0])
    if missing:
        raise ReclaimError("gpus: %s not found on this host" % ", ".join(sorted(missing)))
    # In NVML's order, as before.
    return [d for d in devices if any(d is c for c in chosen)]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _kill(pids, grace):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)


def _smi(args, timeout):
    try:
        rc, out, err = _command.run(["nvidia-smi"] + args, timeout)
    except _command.CommandError as exc:
        raise ReclaimError(str(exc))
    return rc, redact((out + err).strip())


def reclaim(instance, gpus, kill=True, reset=True, grace=10, tolerance_mib=0, timeout=10, check_mode=False):
    """What was found on the instance's GPUs and what was done. Raises ReclaimError when a reset is needed but a
    process of another workload holds the GPU, or when a reset fails."""
    report = {"gpus": [], "killed": [], "reset": [], "changed": False}
    devices = _snapshot(gpus, timeout)
    split = _instance_procs.split_processes(devices, instance)
    ours = sorted(set(p["pid"] for d in devices for p in split[d["index"]][0]))
    if ours and kill:
        report["changed"] = True
        report["killed"] = ours
        if not check_mode:
            _kill(ours, grace)
            devices = _snapshot(gpus, timeout)
            split = _instance_procs.split_processes(devices, instance)
    for device in devices:
        mine, others = split[device["index"]]
        in_processes = sum(p.get("used_memory_mib") or 0 for p in mine + others)
        stuck = device["memory_used_mib"] - in_processes
        entry = {"index": device["index"], "uuid": device["uuid"], "memory_used_mib": device["memory_used_mib"],
                 "held_without_process_mib": max(0, stuck), "instance_pids": [p["pid"] for p in mine],
                 "foreign_pids": [p["pid"] for p in others], "persistence_mode": device["persistence_mode"],
                 "reset": False}
        report["gpus"].append(entry)
        if stuck <= tolerance_mib or not reset:
            continue
        if others:
            raise ReclaimError(
                "GPU %s still holds %d MiB with no process, and needs a reset; but PID %s of another workload "
                "uses it, and a reset would kill its work. Stop that workload first (or reset with its owner); "
                "this runbook does not touch other workloads' processes." % (
                    device["index"], stuck, ", ".join(str(p) for p in entry["foreign_pids"])))
        report["changed"] = True
        report["reset"].append(device["index"])
        entry["reset"] = True
        if check_mode:
            continue
        index = str(device["index"])
        if device["persistence_mode"]:
            # nvidia-persistenced holds the GPU and the reset is refused ("In use by another client") until
            # persistence mode is off; it is restored afterwards.
            rc, out = _smi(["-pm", "0", "-i", index], timeout)
            if rc != 0:
                raise ReclaimError("`nvidia-smi -pm 0 -i %s` exited %d: %s" % (index, rc, out))
        try:
            rc, out = _smi(["--gpu-reset", "-i", index], max(timeout, 60))
            if rc != 0:
                raise ReclaimError("`nvidia-smi --gpu-reset -i %s` exited %d: %s" % (index, rc, out))
        finally:
            if device["persistence_mode"]:
                _smi(["-pm", "1", "-i", index], timeout)
    if (report["killed"] or report["reset"]) and not check_mode:
        for entry, device in zip(report["gpus"], _snapshot(gpus, timeout)):
            entry["memory_used_after_mib"] = device["memory_used_mib"]
    return report
