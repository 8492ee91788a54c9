# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's GPU ledger: which vLLM instance holds which GPUs, in one JSON file ({instance: [GPU, ...]}).

Two instances on one GPU both run out of memory, and the second one's failure points at neither. So every
GPU pinned in the inventory is reserved before anything is picked, an instance keeps the GPUs it was given
from one run to the next, an instance no longer listed keeps holding its GPUs until it is made absent (it may
still run), and a GPU is shared only when every instance on it says share_gpus."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fcntl
import json
import os
from contextlib import contextmanager

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select, _instance_procs, _validate


class LedgerError(Exception):
    pass


STATES = ("started", "stopped", "present", "restarted", "absent")


class Claim(object):
    """What one instance of the inventory asks of the ledger."""

    def __init__(self, name, pinned=None, count=1, min_free_memory_mib=0, state="started", share_gpus=False):
        self.name = name
        self.pinned = [str(g) for g in pinned] if pinned else None
        self.count = len(self.pinned) if self.pinned else count
        self.min_free_memory_mib = min_free_memory_mib
        self.state = state
        self.share_gpus = share_gpus


def parse(text, path):
    """The ledger file's content as {instance: [GPU, ...]}; an unreadable ledger is an error, never a guess."""
    if not text or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LedgerError("%s is not JSON (%s); it records which instance holds which GPU. Fix it by hand, or remove "
                          "it to let every instance without pinned gpus be picked again" % (path, exc))
    if not isinstance(data, dict):
        raise LedgerError("%s holds a %s, not a mapping of instance names to GPU lists; fix or remove it"
                          % (path, type(data).__name__))
    ledger = {}
    for name, gpus in data.items():
        try:
            _validate.instance_name("%s: instance" % path, name)
            if not isinstance(gpus, list):
                raise _validate.InputError("%s: the GPUs of %s are not a list" % (path, name))
            _validate.gpu_ids("%s: GPUs of %s" % (path, name), [str(g) for g in gpus])
        except _validate.InputError as exc:
            raise LedgerError("%s; fix or remove the ledger" % exc)
        ledger[name] = [str(g) for g in gpus]
    return ledger


def render(ledger):
    # The form the vllm role wrote with to_nice_json before this module: an upgraded host's ledger stays unchanged.
    return json.dumps(ledger, indent=4, sort_keys=True, separators=(",", ": ")) + "\n"


@contextmanager
def locked(path, check_mode):
    """Holds the ledger's lock: two plays on one host (a deploy and a runbook) must not pick the same GPU."""
    if check_mode and not os.path.exists(path + ".lock"):
        yield
        return
    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise LedgerError("%s.lock could not be opened: %s" % (path, exc.strerror or exc))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _holders(reservations):
    """{GPU: [instance, ...]} from {instance: [GPU, ...]}."""
    held = {}
    for name, gpus in reservations.items():
        for gpu in gpus:
            held.setdefault(gpu, []).append(name)
    return held


def reserve_pinned(claims):
    """{instance: GPUs} of the pinned claims; two instances pinning one GPU must both say share_gpus."""
    pinned = dict((c.name, c.pinned) for c in claims if c.pinned and c.state != "absent")
    sharing = dict((c.name, c.share_gpus) for c in claims)
    for gpu, names in sorted(_holders(pinned).items()):
        if len(names) > 1 and not all(sharing[n] for n in names):
            raise LedgerError(
                "gpus: GPU %s is pinned by %s; two vLLM instances on one GPU each plan for its whole memory and both "
                "fail. Pin different GPUs, or set share_gpus: true on each of them to share it on purpose"
                % (gpu, " and ".join(sorted(names))))
    return pinned


def _device_names(observation):
    names = {}
    for device in observation["devices"] if observation else []:
        for name in (device.get("index"), device.get("uuid")):
            if name is not None:
                names[str(name)] = device
    return names


def _held_by_others(observation, name, proc):
    """GPUs on which a process that is not this instance's runs: never picked for it."""
    held = {}
    for device in observation["devices"]:
        others = [p for p in device.get("processes", []) if _instance_procs.instance_of(p["pid"], proc) != name]
        if others and device.get("index") is not None:
            held[str(device["index"])] = others
    return held


def _pick(claim, observation, constraints_base, taken, proc):
    held = _held_by_others(observation, claim.name, proc)
    known = _device_names(observation)
    refused = sorted(set(g for g in list(taken) + list(held) + constraints_base["exclude"] if g in known))
    constraints = _gpu_select.Constraints(
        count=claim.count, min_free_memory_mib=claim.min_free_memory_mib, exclude=refused,
        require_idle=constraints_base["require_idle"])
    # The picker annotates the devices it is given: each claim gets its own copy of the observation.
    view = dict(observation, devices=json.loads(json.dumps(observation["devices"])))
    try:
        return [str(g) for g in _gpu_select.select(view, constraints)["gpus"]]
    except _gpu_select.SelectionError as exc:
        why = ["GPU %s held by instance %s" % (g, ", ".join(taken[g])) for g in sorted(taken) if g in known]
        why += ["GPU %s used by PID %s of another workload" % (g, ", ".join(str(p["pid"]) for p in held[g]))
                for g in sorted(held) if g not in taken]
        raise LedgerError("no GPUs for %s: %s%s" % (claim.name, exc, ("\n  (" + "; ".join(why) + ")") if why else ""))


def assign(ledger, claims, observe, exclude=(), require_idle=False, proc="/proc"):
    """The new ledger and a report of what moved. `observe()` reads the GPUs, only when something is picked.

    Returns (new_ledger, report) with report = {assignments, picked, moved, released, unlisted}."""
    names = [c.name for c in claims]
    duplicates = sorted(set(n for n in names if names.count(n) > 1))
    if duplicates:
        raise LedgerError("instances: %s listed more than once" % ", ".join(duplicates))
    exclude = [str(e) for e in exclude]
    pinned = reserve_pinned(claims)
    listed = set(names)
    unlisted = dict((n, g) for n, g in ledger.items() if n not in listed)
    taken = _holders(pinned)
    for name, gpus in sorted(unlisted.items()):
        for gpu in gpus:
            if gpu in taken:
                raise LedgerError(
                    "gpus: GPU %s is pinned by %s, but the ledger gives it to %s, which is not among this host's "
                    "instances and may still run there. List %s with state: absent once to stop it and free its "
                    "GPUs, or pin another GPU" % (gpu, " and ".join(taken[gpu]), name, name))
            taken.setdefault(gpu, []).append(name)
    report = {"picked": {}, "moved": {}, "released": [], "unlisted": unlisted}
    assignments = dict(pinned)
    to_pick = []
    # First every kept assignment, so that a claim picked anew never takes a GPU a later claim keeps.
    for claim in claims:
        if claim.state == "absent":
            if claim.name in ledger:
                report["released"].append(claim.name)
            continue
        if claim.pinned:
            continue
        before = ledger.get(claim.name)
        if before and len(before) == claim.count and not any(g in taken or g in exclude for g in before):
            assignments[claim.name] = before
            for gpu in before:
                taken.setdefault(gpu, []).append(claim.name)
        else:
            to_pick.append(claim)
    observation = observe() if to_pick else None
    base = {"exclude": exclude, "require_idle": require_idle}
    for claim in to_pick:
        gpus = _pick(claim, observation, base, taken, proc)
        assignments[claim.name] = gpus
        report["picked"][claim.name] = gpus
        if ledger.get(claim.name):
            report["moved"][claim.name] = {"from": ledger[claim.name], "to": gpus}
        for gpu in gpus:
            taken.setdefault(gpu, []).append(claim.name)
    for claim in claims:
        before = ledger.get(claim.name)
        if claim.pinned and before and before != claim.pinned:
            report["moved"][claim.name] = {"from": before, "to": claim.pinned}
    new_ledger = dict(unlisted)
    new_ledger.update(assignments)
    report["assignments"] = assignments
    return new_ledger, report
