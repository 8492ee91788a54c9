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

from ansible_collections.inferops.vllm.plugins.module_utils import _docker_gpus, _gpu_select, _instance_procs, _validate

# GPU UUIDs are kept in NVML's form ("GPU-" and lower-case hex) and compared regardless of case: users copy them
# from tools that print them in capitals, and "GPU-6F4A..." and "GPU-6f4a..." are one GPU.
canonical = _docker_gpus.canonical_id
fold = _docker_gpus.id_key


class LedgerError(Exception):
    pass


STATES = ("started", "stopped", "present", "restarted", "absent")


class Claim(object):
    """What one instance of the inventory asks of the ledger."""

    def __init__(self, name, pinned=None, count=1, min_free_memory_mib=0, state="started", share_gpus=False):
        self.name = name
        self.pinned = [canonical(str(g)) for g in pinned] if pinned else None
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
            # In NVML's form before the check, so that one GPU written in two cases is caught as listed twice.
            _validate.gpu_ids("%s: GPUs of %s" % (path, name), [canonical(str(g)) for g in gpus])
        except _validate.InputError as exc:
            raise LedgerError("%s; fix or remove the ledger" % exc)
        ledger[name] = [canonical(str(g)) for g in gpus]
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


def _holders(reservations, key=fold):
    """{GPU: [instance, ...]} from {instance: [GPU, ...]}, each GPU as key(name)."""
    held = {}
    for name, gpus in reservations.items():
        for gpu in gpus:
            held.setdefault(key(gpu), []).append(name)
    return held


def reserve_pinned(claims, key=fold):
    """{instance: GPUs} of the pinned claims; two instances pinning one GPU must both say share_gpus. With `key`
    (a GPU's one name, see _keys) a GPU pinned by index and by UUID is one GPU."""
    pinned = dict((c.name, c.pinned) for c in claims if c.pinned and c.state != "absent")
    sharing = dict((c.name, c.share_gpus) for c in claims)
    shown = {}
    for name, gpus in sorted(pinned.items()):
        for gpu in gpus:
            shown.setdefault(key(gpu), []).append(gpu)
    for gpu, names in sorted(_holders(pinned, key).items()):
        if len(names) > 1 and not all(sharing[n] for n in names):
            raise LedgerError(
                "gpus: GPU %s is pinned by %s; two vLLM instances on one GPU each plan for its whole memory and both "
                "fail. Pin different GPUs, or set share_gpus: true on each of them to share it on purpose"
                % (" = ".join(sorted(set(shown[gpu]), key=_natural)), " and ".join(sorted(names))))
    return pinned


def _natural(name):
    """Sorts GPU names as numbers where they are indices: 2 before 10."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def read_gpus(timeout):
    """The GPUs as gpu_assign reads them: NVML, then nvidia-smi; with NVML's topology, so that an instance of
    several GPUs gets GPUs close together, as gpu_select gives them."""
    return _gpu_select.observe("auto", timeout, with_topology=True)[0]


def _keys(observation):
    """{name: key}: each name of an observed GPU (index, UUID) to one key per GPU (its UUID where it has one), and
    each MIG device UUID to itself, the names folded (fold) so that a UUID in any case finds its GPU. Without an
    observation, folded names are keys: "3" and its UUID are then two GPUs."""
    keys = {}
    for device in observation["devices"] if observation else []:
        if device.get("index") is None and not device.get("uuid"):
            continue
        key = device.get("uuid") or str(device["index"])
        for name in (device.get("index"), device.get("uuid")):
            if name is not None:
                keys[fold(name)] = key
        for mig in device.get("mig_devices", []):
            keys[fold(mig["uuid"])] = mig["uuid"]
    return keys


def _forms(names):
    """How GPUs are named: by index, GPU UUID or MIG UUID."""
    return set("mig" if fold(n).startswith("MIG-") else "uuid" if fold(n).startswith("GPU-") else "index"
               for n in names)


def _find(observation, name):
    """(device, MIG device or None) that `name` names in the observation, or (None, None)."""
    name = fold(name)
    for device in observation["devices"]:
        if name in (str(device.get("index")), fold(device.get("uuid"))):
            return device, None
        for mig in device.get("mig_devices", []):
            if fold(mig["uuid"]) == name:
                return device, mig
    return None, None


def _pin_problem(name, observation):
    """Why GPU `name` cannot be pinned, with what to do about it; None when it can (or cannot be checked)."""
    device, mig = _find(observation, name)
    if device is None:
        if fold(name).startswith("MIG-") and observation.get("backend") != "nvml":
            return None  # only NVML lists MIG devices
        readable = [str(d["index"]) for d in observation["devices"] if isinstance(d.get("index"), int)]
        lost = [d.get("error") for d in observation["devices"] if not isinstance(d.get("index"), int)]
        return ("it is not a GPU of this host (%s sees GPUs %s%s). Pin one that exists (nvidia-smi -L lists "
                "them)" % (observation.get("backend"), ", ".join(readable) or "none",
                           "; and one it cannot read: %s" % "; ".join(lost) if lost else ""))
    index = device.get("index")
    if mig is not None:
        return None
    if "error" in device:
        return ("it cannot be read (%s): it fell off the bus or needs a reset. Reset it (nvidia-smi -r -i %s) or "
                "reboot the host, or pin another GPU" % (device["error"], index))
    if device.get("mig_enabled") or device.get("mig_enabled_pending"):
        return ("it has MIG enabled%s, so no process can use it whole. Pin one of its MIG devices (MIG-..., "
                "nvidia-smi -L lists them), or disable MIG (nvidia-smi -i %s -mig 0, then reset the GPU)"
                % ("" if device.get("mig_enabled") else " pending a reset", index))
    health = _gpu_select.health_reasons(device)
    if health:
        return ("it is unhealthy: %s. Reset it (nvidia-smi -r -i %s), or have it serviced if that does not clear it, "
                "or pin another GPU" % ("; ".join(health), index))
    return None


def check_pins(claims, observation):
    """Refuses a pin on a GPU that is not there, cannot be read, runs MIG or is unhealthy, naming it and the fix."""
    for claim in claims:
        for gpu in claim.pinned or []:
            problem = _pin_problem(gpu, observation)
            if problem:
                raise LedgerError("instances[%s].gpus: GPU %s %s" % (claim.name, gpu, problem))


def _display(key, observation):
    """The name a GPU key is shown by: its index where the observation has one."""
    for device in observation["devices"] if observation else []:
        if fold(key) in (fold(device.get("uuid")), str(device.get("index"))) and device.get("index") is not None:
            return str(device["index"])
    return key


def _held_by_others(observation, name, proc):
    """{GPU index: why}: GPUs on which a process that is not this instance's runs, or whose processes could not be
    listed (then another workload cannot be ruled out): never picked for it."""
    held = {}
    for device in observation["devices"]:
        if device.get("index") is None:
            continue
        others = [p for p in device.get("processes", []) if _instance_procs.instance_of(p["pid"], proc) != name]
        if device.get("processes_error"):
            held[str(device["index"])] = ("its compute processes could not be listed (%s), so another workload on "
                                          "it cannot be ruled out" % device["processes_error"])
        elif others:
            held[str(device["index"])] = "used by PID %s of another workload" % ", ".join(
                "?" if p["pid"] is None else str(p["pid"]) for p in others)
    return held


def _pick(claim, observation, constraints_base, taken, key, proc):
    held = _held_by_others(observation, claim.name, proc)
    refused_keys = set(taken) | set(key(g) for g in constraints_base["exclude"])
    refused = sorted(set(str(d["index"]) for d in observation["devices"] if d.get("index") is not None and (
        key(str(d["index"])) in refused_keys or str(d["index"]) in held)), key=_natural)
    constraints = _gpu_select.Constraints(
        count=claim.count, min_free_memory_mib=claim.min_free_memory_mib, exclude=refused,
        require_idle=constraints_base["require_idle"])
    # The picker annotates the devices it is given: each claim gets its own copy of the observation.
    view = dict(observation, devices=json.loads(json.dumps(observation["devices"])))
    try:
        return [str(g) for g in _gpu_select.select(view, constraints)["gpus"]]
    except _gpu_select.SelectionError as exc:
        shown = dict((_display(k, observation), names) for k, names in taken.items())
        why = ["GPU %s held by instance %s" % (g, ", ".join(shown[g])) for g in sorted(shown, key=_natural)
               if g in refused]
        why += ["GPU %s %s" % (g, held[g]) for g in sorted(held, key=_natural) if g not in shown]
        raise LedgerError("no GPUs for %s: %s%s" % (claim.name, exc, ("\n  (" + "; ".join(why) + ")") if why else ""))


def _plan(ledger, claims, exclude, key):
    """Pinned GPUs, unlisted instances' GPUs and kept assignments, each GPU as key(name): (taken, assignments,
    unlisted, to_pick, released)."""
    pinned = reserve_pinned(claims, key)
    listed = set(c.name for c in claims)
    unlisted = dict((n, g) for n, g in ledger.items() if n not in listed)
    pins = _holders(pinned, key)
    pin_names = dict((key(g), g) for gpus in pinned.values() for g in gpus)
    taken = dict((gpu, list(names)) for gpu, names in pins.items())
    for name, gpus in sorted(unlisted.items()):
        for gpu in gpus:
            if key(gpu) in pins:
                pin = pin_names[key(gpu)]
                raise LedgerError(
                    "gpus: GPU %s is pinned by %s, but the ledger gives it%s to %s, which is not among this host's "
                    "instances and may still run there. List %s with state: absent once to stop it and free its "
                    "GPUs, or pin another GPU" % (pin, " and ".join(pins[key(gpu)]),
                                                  "" if pin == gpu else " (as %s)" % gpu, name, name))
            taken.setdefault(key(gpu), []).append(name)
    excluded = set(key(e) for e in exclude)
    assignments, to_pick, released = dict(pinned), [], []
    # First every kept assignment, so that a claim picked anew never takes a GPU a later claim keeps.
    for claim in claims:
        if claim.state == "absent":
            if claim.name in ledger:
                released.append(claim.name)
            continue
        if claim.pinned:
            continue
        before = ledger.get(claim.name)
        if before and len(before) == claim.count and not any(key(g) in taken or key(g) in excluded for g in before):
            assignments[claim.name] = before
            for gpu in before:
                taken.setdefault(key(gpu), []).append(claim.name)
        else:
            to_pick.append(claim)
    return taken, assignments, unlisted, to_pick, released


def assign(ledger, claims, observe, exclude=(), require_idle=False, proc="/proc"):
    """The new ledger and a report of what moved. `observe()` reads the GPUs (or raises _gpu_select.BackendError),
    only when something is picked, a pin is new or changed (it is checked), or GPUs are named both by index and
    by UUID (so that one GPU is not taken for two).

    Returns (new_ledger, report) with report = {assignments, picked, moved, released, unlisted, unchecked,
    health_unchecked}: `health_unchecked` lists what the backend could not check on the GPUs it read (an nvidia-smi
    that does not know a field), [] when it checked everything or read nothing."""
    names = [c.name for c in claims]
    duplicates = sorted(set(n for n in names if names.count(n) > 1))
    if duplicates:
        raise LedgerError("instances: %s listed more than once" % ", ".join(duplicates))
    exclude = [canonical(str(e)) for e in exclude]
    taken, assignments, unlisted, to_pick, released = _plan(ledger, claims, exclude, fold)
    new_pins = [c for c in claims if c.pinned and c.state != "absent" and ledger.get(c.name) != c.pinned]
    in_use = [g for c in claims if c.state != "absent" for g in (c.pinned or ledger.get(c.name) or [])]
    in_use += [g for gpus in unlisted.values() for g in gpus] + exclude
    observation, unchecked = None, None
    if to_pick or new_pins or len(_forms(in_use) - set(["mig"])) > 1:
        try:
            observation = observe()
        except _gpu_select.BackendError as exc:
            if to_pick:
                raise LedgerError("the GPUs could not be read to pick some for %s: %s" % (
                    ", ".join(c.name for c in to_pick), exc))
            # Pins are the inventory's word: they stand, unchecked, and the report says so.
            unchecked = str(exc)
    if observation is not None:
        check_pins(new_pins, observation)
        keys = _keys(observation)

        def key(name):
            return keys.get(fold(name), fold(name))
        taken, assignments, unlisted, to_pick, released = _plan(ledger, claims, exclude, key)
    else:
        key = fold
    report = {"picked": {}, "moved": {}, "released": released, "unlisted": unlisted, "unchecked": unchecked,
              "health_unchecked": list(observation.get("unchecked", [])) if observation else []}
    base = {"exclude": exclude, "require_idle": require_idle}
    # The instances of most GPUs first (in their order otherwise): a small one picked first could split the set of
    # close GPUs a large one needs.
    for claim in sorted(to_pick, key=lambda c: -c.count):
        gpus = _pick(claim, observation, base, taken, key, proc)
        assignments[claim.name] = gpus
        report["picked"][claim.name] = gpus
        if ledger.get(claim.name):
            report["moved"][claim.name] = {"from": ledger[claim.name], "to": gpus}
        for gpu in gpus:
            taken.setdefault(key(gpu), []).append(claim.name)
    for claim in claims:
        before = ledger.get(claim.name)
        if claim.pinned and claim.state != "absent" and before and before != claim.pinned:
            report["moved"][claim.name] = {"from": before, "to": claim.pinned}
    new_ledger = dict(unlisted)
    new_ledger.update(assignments)
    report["assignments"] = assignments
    return new_ledger, report
