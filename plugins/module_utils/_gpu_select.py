# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Least-loaded healthy GPU selection, and the backends that observe the GPUs.

Backends, in the order `auto` tries them: NVML in-process, the nvidia-smi CSV query, and nvidia-smi inside
`docker run --gpus all <image>`. Each is bounded by a timeout. A backend either returns what it observed or
raises BackendError saying what it ran and what came back: nothing here ever invents a GPU index.

Ranking follows nvitop: most free memory first, then lowest utilization, then the higher index, which keeps
low indices (often shared, interactive GPUs) free. The same input always gives the same answer.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import itertools
import re
import uuid

from ansible_collections.inferops.vllm.plugins.module_utils import _command, _docker_gpus, _nvml

# The last four are what NVML's path reads as mig_enabled_pending, retired_pages_pending, remapped_rows_pending and
# remapped_rows_failure, so that both backends skip the same GPUs. Each name is one nvidia-smi documents: checked in
# the `nvidia-smi --help-query-gpu` of driver 580.173.02 ("retired_pages.pending", "remapped_rows.pending",
# "remapped_rows.failure" and "mig.mode.pending", with their values Yes/No and Enabled/Disabled), captured in
# github.com/utkuozdemir/nvidia_gpu_exporter internal/captures/linux-x86_64__nvidia-h200__580.173.02.txt (commit
# 18a7dc5a4958bed2161a23188c1a5cf280dff31b), whose query rows (and those of its H100 capture for driver 590.48.01)
# are fixtures in tests/unit/fixtures/nvidia_smi.
SMI_FIELDS = ("index", "uuid", "name", "pci.bus_id", "memory.total", "memory.used", "memory.free",
              "utilization.gpu", "temperature.gpu", "ecc.errors.uncorrected.volatile.total", "mig.mode.current",
              "persistence_mode", "mig.mode.pending", "retired_pages.pending", "remapped_rows.pending",
              "remapped_rows.failure")
# Fields an older nvidia-smi may not know (MIG and row remapping came with Ampere; which driver first knows each
# field was not confirmed): such a driver refuses the whole query naming the first field it does not know, and the
# query is run again without it. What each one checks is then unchecked, never taken as fine: see _smi_result.
SMI_OPTIONAL = {
    "mig.mode.pending": ("mig_enabled_pending", "MIG mode pending a reset"),
    "retired_pages.pending": ("retired_pages_pending", "memory pages pending retirement"),
    "remapped_rows.pending": ("remapped_rows_pending", "memory row remapping pending"),
    "remapped_rows.failure": ("remapped_rows_failure", "failed memory row remapping"),
}


def smi_query(fields=SMI_FIELDS):
    return ["--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"]


SMI_QUERY = smi_query()
SMI_APPS = ["--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits"]
EXHAUSTIVE_LIMIT = 20000  # candidate sets examined for topology before falling back to a greedy choice
UNREADABLE = "unreadable"


class BackendError(Exception):
    """A backend could not observe the GPUs."""


class SelectionError(Exception):
    """The GPUs were observed, but the request cannot be met. The message explains each GPU."""


def run_command(argv, timeout):
    """(rc, stdout, stderr) of argv within `timeout` seconds, or BackendError naming the command."""
    try:
        return _command.run(argv, timeout)
    except _command.CommandError as exc:
        raise BackendError(str(exc))


# ---- backends ----

def read_nvml(timeout, with_topology):
    try:
        # A GPU whose processes NVML will not list is still read: its `processes_error` keeps it from passing as idle.
        snap = _nvml.snapshot(timeout=timeout, with_topology=with_topology, processes_optional=True)
    except _nvml.NvmlError as exc:
        raise BackendError(str(exc))
    return {"backend": "nvml", "driver_version": snap["driver_version"], "devices": snap["devices"],
            "topology": snap["topology"], "processes_visible": True, "unchecked": []}


# What nvidia-smi prints for a value this GPU does not have (no ECC, no MIG, MIG hiding utilization): absent,
# not an error. Any other bracketed text, or ERR!, is nvidia-smi failing to read the GPU: what a GPU that fell off
# the bus or needs a reset prints ([Unknown Error], [GPU requires reset]), so nothing else on its row is trusted.
ABSENT = ("[N/A]", "N/A", "[Not Supported]", "")
_NUMBER = re.compile(r"[0-9]{1,15}\Z")  # re's \d would let other scripts' digits through; 15 digits bound int()
# The UUID ends up in CUDA_VISIBLE_DEVICES and `--gpus device=...`, where a comma or a quote would name other GPUs.
_UUID = re.compile(r"GPU-[0-9A-Za-z-]{1,64}\Z")
_SWITCH = {"Enabled": True, "Disabled": False}
_YES_NO = {"Yes": True, "No": False}
_SWITCHES = {"mig.mode.current": _SWITCH, "persistence_mode": _SWITCH, "mig.mode.pending": _SWITCH,
             "retired_pages.pending": _YES_NO, "remapped_rows.pending": _YES_NO, "remapped_rows.failure": _YES_NO}
_NUMERIC = ("index", "memory.total", "memory.used", "memory.free", "utilization.gpu", "temperature.gpu",
            "ecc.errors.uncorrected.volatile.total")
# Without these the GPU cannot be named, told apart from the others, or matched to its processes.
_REQUIRED = ("index", "uuid")
# The unit nvidia-smi prints after a value when `nounits` is not in effect (an older nvidia-smi in a container
# image, a wrapper): "81559 MiB", "35 %". The value is the same; any other suffix is not read.
_UNITS = {"memory.total": "MiB", "memory.used": "MiB", "memory.free": "MiB", "utilization.gpu": "%",
          "used_memory": "MiB"}


def _without_unit(field, text):
    unit = _UNITS.get(field)
    if unit and text.endswith(unit):
        return text[:-len(unit)].rstrip()
    return text


def _cells(line):
    """The cells of one CSV line of nvidia-smi. Its separator is ", ", but a value never holds a comma (the
    fields queried are numbers, UUIDs, bus ids, switches and product names), so any spacing around commas is read
    the same, and one trailing comma adds no cell."""
    cells = [c.strip() for c in line.split(",")]
    if len(cells) > 1 and cells[-1] == "" and line.rstrip().endswith(","):
        cells.pop()
    return cells


def _cell(field, text):
    """The value of one --query-gpu cell; None when absent. ValueError when nvidia-smi could not read it."""
    if text in ABSENT:
        if field in _REQUIRED:
            raise ValueError(field)
        return None
    if field in _NUMERIC:
        number = _without_unit(field, text)
        if not _NUMBER.match(number):
            raise ValueError(field)
        return int(number)
    if field in _SWITCHES:
        # Any other text (an unknown state, an error) says nothing about the GPU, so it is not read as "No".
        if text not in _SWITCHES[field]:
            raise ValueError(field)
        return _SWITCHES[field][text]
    if field == "uuid" and not _UUID.match(text):
        raise ValueError(field)
    if text == "ERR!" or (text.startswith("[") and text.endswith("]")):
        raise ValueError(field)
    return text


def _smi_device(cells, fields=SMI_FIELDS):
    """A device from the cells of one --query-gpu row of `fields`; with `error` (and no stats) when any cell is
    unreadable. An optional field that was not queried reads as None, and `unchecked` says so."""
    row, unreadable = dict((f, None) for f in SMI_OPTIONAL), []
    for field, text in zip(fields, cells):
        try:
            row[field] = _cell(field, text)
        except ValueError:
            row[field] = None
            unreadable.append("%s %r" % (field, text[:80]))
    identity = {"index": row["index"], "uuid": row["uuid"], "name": row["name"], "pci_bus_id": row["pci.bus_id"]}
    if unreadable:
        return dict(identity, error="nvidia-smi printed " + ", ".join(unreadable), processes=[])
    device = dict(
        identity, memory_total_mib=row["memory.total"], memory_used_mib=row["memory.used"],
        memory_free_mib=row["memory.free"], utilization_gpu=row["utilization.gpu"],
        temperature_c=row["temperature.gpu"], ecc_uncorrected_volatile=row["ecc.errors.uncorrected.volatile.total"],
        persistence_mode=bool(row["persistence_mode"]), mig_enabled=bool(row["mig.mode.current"]),
        mig_devices=[], processes=[])
    # [N/A] or [Not Supported] is None, as NVML's NOT_SUPPORTED is: the GPU has no such mechanism (pages are retired
    # before Ampere, rows remapped from Ampere on; no MIG on most GPUs).
    for field, (key, what) in sorted(SMI_OPTIONAL.items()):
        device[key] = row[field]
        if field not in fields:
            device.setdefault("unchecked", []).append(
                "%s (%s): this nvidia-smi does not know the field" % (what, field))
    return device


def parse_smi_gpus(text, command, fields=SMI_FIELDS):
    """Devices from `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits` output.

    A row that cannot be read becomes a device with `error`, so that it is explained and never chosen while the
    others stay selectable. BackendError only when no line at all is a row of the query."""
    devices, seen, rows, first_bad = [], set(), 0, None
    for line in text.splitlines():
        line = line.strip()
        # The same row printed twice is one reading of one GPU, which must not be chosen twice.
        if not line or line in seen:
            continue
        seen.add(line)
        cells = _cells(line)
        if len(cells) != len(fields):
            # Such as "Unable to determine the device handle for GPU 0000:3B:00.0: GPU is lost": a GPU is missing,
            # but which index it had, nvidia-smi does not say.
            problem = "a line with %d fields, expected %d: %r" % (len(cells), len(fields), line[:200])
            first_bad = first_bad or problem
            devices.append({"index": None, "uuid": None, "error": "nvidia-smi printed " + problem, "processes": []})
            continue
        rows += 1
        devices.append(_smi_device(cells, fields))
    if not rows:
        if first_bad:
            raise BackendError("`%s` printed %s" % (command, first_bad))
        raise BackendError("`%s` listed no GPUs" % command)
    return devices


def _pid_or_mib(text, field=None):
    text = _without_unit(field, text)
    return int(text) if _NUMBER.match(text) else None


def parse_smi_apps(text, devices):
    """Adds each --query-compute-apps line to its GPU's `processes`. A line naming a GPU counts as a process even
    when the rest cannot be read (pid None): a hidden process would make a busy GPU look idle."""
    by_uuid = dict((_docker_gpus.id_key(d["uuid"]), d) for d in devices if d.get("uuid"))
    for line in text.splitlines():
        cells = _cells(line)
        device = by_uuid.get(_docker_gpus.id_key(cells[0]))
        if device is None:
            continue
        device["processes"].append({
            "pid": _pid_or_mib(cells[1]) if len(cells) > 1 else None,
            "used_memory_mib": _pid_or_mib(cells[2], "used_memory") if len(cells) > 2 else None,
        })


# What nvidia-smi prints when it cannot reach the GPUs at all, and what the operator can do about it. Real outputs
# of each are in tests/unit/fixtures/nvidia_smi.
SMI_FAILURES = (
    ("Driver/library version mismatch", "the loaded NVIDIA kernel module and the NVML library are of different "
     "versions, as after a driver upgrade without a reboot: reboot the host, or reload the nvidia kernel modules"),
    ("No devices were found", "the NVIDIA driver sees no GPU: check that the GPUs are bound to the nvidia driver "
     "(lspci -k) and the kernel log (dmesg) for NVRM and Xid errors"),
    ("No supported GPUs were found", "no GPU is bound to the NVIDIA driver, or the driver does not support them: "
     "check lspci -k and the kernel log (dmesg)"),
    ("couldn't communicate with the NVIDIA driver", "the NVIDIA driver is not loaded: load it (modprobe nvidia) or "
     "install it for the running kernel"),
    ("Unable to determine the device handle", "a GPU fell off the bus or needs a reset: see the kernel log (dmesg, "
     "Xid 79) and reset the GPU (nvidia-smi -r) or reboot"),
    ("Failed to initialize NVML", "NVML could not start; the kernel log (dmesg) shows the driver's side"),
)


def _smi_failure(text):
    """The advice for the first failure nvidia-smi's output shows, as " (...)", or ""."""
    for marker, advice in SMI_FAILURES:
        if marker in text:
            return " (%s)" % advice
    return ""


# What nvidia-smi prints, exit status 2, when the query names a field it does not know: 'Field "device_minor" is not
# a valid field to query.' (a real output: tests/unit/fixtures/nvidia_smi). Some reports show typographic quotes.
_UNKNOWN_FIELD = re.compile(r"Field [\"\u201c]([A-Za-z0-9_.]{1,80})[\"\u201d] is not a valid field to query")


def _unknown_field(text):
    match = _UNKNOWN_FIELD.search(text)
    return match.group(1) if match else None


def _smi_result(argv_prefix, timeout):
    """The devices nvidia-smi lists; `argv_prefix()` gives the command before the query, for each run. A driver
    that does not know an optional field is asked again without it (one more run per such field, each answered at
    once); the devices then say what could not be checked."""
    fields = list(SMI_FIELDS)
    while True:
        query = smi_query(fields)
        argv = argv_prefix() + query
        command = " ".join(argv)
        rc, out, err = run_command(argv, timeout)
        unknown = _unknown_field(out + err)
        if unknown in fields and unknown in SMI_OPTIONAL:
            fields.remove(unknown)
            continue
        if rc != 0 and unknown:
            raise BackendError("`%s` exited %d: %s (this nvidia-smi does not know the field %s, which gpu_select "
                               "needs: update the NVIDIA driver, or install nvidia-ml-py for the nvml backend)"
                               % (command, rc, (out + err).strip()[:500], unknown))
        if rc != 0:
            raise BackendError("`%s` exited %d: %s%s" % (command, rc, (out + err).strip()[:500],
                                                         _smi_failure(out + err)))
        try:
            return parse_smi_gpus(out, command, fields)
        except BackendError as exc:
            raise BackendError(str(exc) + _smi_failure(out + err))


def unchecked(devices):
    """What could not be checked on any readable GPU, each once, in order: [] when everything was."""
    seen = []
    for device in devices:
        for what in device.get("unchecked", []) if "error" not in device else []:
            if what not in seen:
                seen.append(what)
    return seen


def read_nvidia_smi(timeout, executable="nvidia-smi"):
    devices = _smi_result(lambda: [executable], timeout)
    rc, out, err = run_command([executable] + SMI_APPS, timeout)
    if rc != 0:
        raise BackendError("`%s %s` exited %d: %s" % (executable, " ".join(SMI_APPS), rc, (out + err).strip()[:500]))
    parse_smi_apps(out, devices)
    return {"backend": "nvidia-smi", "devices": devices, "topology": None, "processes_visible": True,
            "unchecked": unchecked(devices)}


def read_docker(image, timeout, pull=False, executable="docker"):
    if not image:
        raise BackendError("skipped: the docker backend runs only when docker_image is given")
    names = []

    def prefix():
        # A name of its own for each run: a query nvidia-smi refused is run again while the first container may
        # still be on its way out.
        names.append("inferops-gpu-select-%s" % uuid.uuid4().hex[:12])
        return [executable, "run", "--rm", "--name", names[-1], "--gpus", "all", "--pull",
                "always" if pull else "never", "--entrypoint", "nvidia-smi", image]
    try:
        devices = _smi_result(prefix, timeout)
    except BackendError:
        # A killed `docker run` can leave its container behind; remove it, quietly.
        try:
            run_command([executable, "rm", "-f"] + names, timeout)
        except BackendError:
            pass
        raise
    # Processes of other PID namespaces are invisible from inside a container.
    return {"backend": "docker", "devices": devices, "topology": None, "processes_visible": False,
            "unchecked": unchecked(devices)}


def observe(backend, timeout, docker_image=None, docker_pull=False, with_topology=False):
    """The GPUs as the first working backend sees them, and what each backend tried: (observation, attempts)."""
    order = ["nvml", "nvidia-smi", "docker"] if backend == "auto" else [backend]
    readers = {
        "nvml": lambda: read_nvml(timeout, with_topology),
        "nvidia-smi": lambda: read_nvidia_smi(timeout),
        "docker": lambda: read_docker(docker_image, timeout, pull=docker_pull),
    }
    attempts = []
    for name in order:
        try:
            observation = readers[name]()
        except BackendError as exc:
            attempts.append({"backend": name, "ok": False, "error": str(exc)})
            continue
        attempts.append({"backend": name, "ok": True, "error": None})
        return observation, attempts
    error = BackendError("no backend could read the GPUs: " + "; ".join(
        "%s: %s" % (a["backend"], a["error"]) for a in attempts))
    error.attempts = attempts
    raise error


# ---- selection ----

class Constraints(object):
    def __init__(self, count=1, min_free_memory_mib=0, max_utilization=None, exclude=(), require_idle=False,
                 skip_ecc_errors=True, mig="skip", prefer_topology=None, id_type="index"):
        self.count = count
        self.min_free_memory_mib = min_free_memory_mib
        self.max_utilization = max_utilization
        self.exclude = [str(e) for e in exclude]
        self.require_idle = require_idle
        self.skip_ecc_errors = skip_ecc_errors
        self.mig = mig
        self.prefer_topology = count > 1 if prefer_topology is None else prefer_topology
        self.id_type = id_type


def check_exclude(devices, constraints):
    """Every name in `exclude` must be a GPU (or MIG device) that exists here; a UUID in any case names it."""
    known = set()
    for device in devices:
        known.update(_docker_gpus.id_key(name) for name in (device.get("index"), device.get("uuid")) if name is not None)
        known.update(_docker_gpus.id_key(m["uuid"]) for m in device.get("mig_devices", []))
    unknown = [e for e in constraints.exclude if _docker_gpus.id_key(e) not in known]
    if unknown:
        indices = [d["index"] for d in devices if d.get("index") is not None]
        raise SelectionError("exclude: %s do%s not exist on this host (GPUs here: indices %s, or their UUIDs)" % (
            ", ".join(unknown), "es" if len(unknown) == 1 else "", ", ".join(str(i) for i in indices)))


def health_reasons(device):
    """Why a readable GPU is unfit whatever its load: uncorrected ECC errors, memory waiting for a reset to retire
    pages or remap rows, a row remapping that failed. [] when none (or when the GPU cannot tell)."""
    reasons = []
    ecc = device.get("ecc_uncorrected_volatile")
    if ecc:
        reasons.append("%d uncorrected volatile ECC error(s)" % ecc)
    if device.get("retired_pages_pending"):
        reasons.append("memory pages are pending retirement (reset the GPU to retire them)")
    if device.get("remapped_rows_pending"):
        reasons.append("a memory row remapping is pending (reset the GPU to apply it)")
    if device.get("remapped_rows_failure"):
        reasons.append("a memory row remapping failed (the GPU needs service)")
    return reasons


def _load_reasons(device, constraints, processes_visible):
    """Why a GPU or MIG device cannot take the workload; [] when it can."""
    reasons = []
    free = device.get("memory_free_mib")
    if free is None:
        reasons.append("free memory unknown")
    elif free < constraints.min_free_memory_mib:
        reasons.append("%d MiB free < min_free_memory %d MiB" % (free, constraints.min_free_memory_mib))
    util = device.get("utilization_gpu")
    if constraints.max_utilization is not None:
        if util is None:
            # NVML does not report it under MIG and on some vGPU: unknown is not idle.
            reasons.append("utilization unknown (the GPU does not report it), so max_utilization %d%% cannot be "
                           "checked" % constraints.max_utilization)
        elif util > constraints.max_utilization:
            reasons.append("utilization %d%% > max_utilization %d%%" % (util, constraints.max_utilization))
    if constraints.require_idle:
        if not processes_visible:
            reasons.append("compute processes are not visible to this backend, so idleness cannot be proven")
        elif device.get("processes_error"):
            reasons.append("its compute processes could not be listed (%s), so idleness cannot be proven"
                           % device["processes_error"])
        elif device.get("processes"):
            reasons.append("%d compute process(es) running (pid %s)" % (len(device["processes"]), ", ".join(
                "?" if p["pid"] is None else str(p["pid"]) for p in device["processes"])))
    return reasons


def _unreadable(device, devices):
    """Why the GPU cannot be trusted to be the GPU it says it is; None when it can."""
    if "error" in device:
        return device["error"]
    if not isinstance(device.get("index"), int):
        return "no index was read, so it cannot be named"
    if not device.get("uuid"):
        return "no UUID was read, so it cannot be told apart or named"
    # One GPU listed twice with different readings (or two GPUs claiming one index or UUID): choosing it could
    # give the same GPU twice, or the wrong one.
    key = _docker_gpus.id_key(device["uuid"])
    twins = [d for d in devices if d.get("index") == device["index"] or _docker_gpus.id_key(d.get("uuid")) == key]
    if len(twins) > 1:
        return "listed more than once (index %s, UUID %s): which reading is this GPU's cannot be told" % (
            device["index"], device["uuid"])
    return None


def evaluate(observation, constraints):
    """Annotates every device with `eligible` and `reasons`; returns the candidates (dicts with `kind`)."""
    candidates = []
    # UUIDs are compared regardless of case: NVML prints them in lower case, other tools and users do not.
    excluded = set(_docker_gpus.id_key(e) for e in constraints.exclude)
    for device in observation["devices"]:
        reasons = []
        unreadable = _unreadable(device, observation["devices"])
        if unreadable:
            reasons.append("unreadable: %s" % unreadable)
        elif str(device["index"]) in excluded or _docker_gpus.id_key(device["uuid"]) in excluded:
            reasons.append("excluded")
        else:
            if constraints.skip_ecc_errors:
                reasons += health_reasons(device)
            if not device.get("mig_enabled") and device.get("mig_enabled_pending"):
                # It runs whole now, as MIG after its next reset: a whole-GPU workload would not survive that.
                reasons.append("MIG mode is enabled pending a GPU reset, so it is not handed out whole")
            elif device.get("mig_enabled"):
                if constraints.mig == "skip":
                    reasons.append("MIG enabled (set mig: use to select its MIG devices)")
                elif observation["backend"] != "nvml":
                    reasons.append("MIG enabled; MIG devices are read only through the nvml backend")
                elif constraints.count > 1:
                    reasons.append("MIG enabled; a process uses one MIG device, and count is %d" % constraints.count)
                else:
                    for mig in device.get("mig_devices", []):
                        mig_reasons = list(reasons)
                        if _docker_gpus.id_key(mig["uuid"]) in excluded:
                            mig_reasons.append("excluded")
                        mig_reasons += _load_reasons(mig, constraints, observation["processes_visible"])
                        mig["eligible"], mig["reasons"] = not mig_reasons, mig_reasons
                        if not mig_reasons:
                            candidates.append(dict(mig, kind="mig", index=device["index"], parent_uuid=device["uuid"],
                                                   utilization_gpu=None))
                    reasons.append("MIG enabled: its MIG devices are the candidates")
            else:
                reasons += _load_reasons(device, constraints, observation["processes_visible"])
        device["eligible"] = not reasons
        device["reasons"] = reasons
        if not reasons:
            candidates.append(dict(device, kind="gpu"))
    return candidates


# Where a GPU does not report its utilization (MIG, some vGPU), it ranks after every GPU that does: never as idle.
UNKNOWN_UTILIZATION = 101


def _utilization(candidate):
    util = candidate.get("utilization_gpu")
    return UNKNOWN_UTILIZATION if util is None else util


def rank_key(candidate):
    return (-candidate["memory_free_mib"], _utilization(candidate), -candidate["index"], candidate.get("uuid") or "")


def _worst_level(indices, topology):
    worst = 0
    for a, b in itertools.combinations(indices, 2):
        level = topology.get(a, {}).get(b)
        worst = max(worst, 99 if level is None else level)
    return worst


def _set_score(chosen, topology, positions):
    """Lower is better: the farthest pair's topology level first; then, since tensor-parallel shards are equal,
    the tightest GPU (least free memory, then highest utilization); then the ranking."""
    indices = [c["index"] for c in chosen]
    return (_worst_level(indices, topology),
            -min(c["memory_free_mib"] for c in chosen),
            max(_utilization(c) for c in chosen),
            sorted(positions[c["uuid"]] for c in chosen))


def choose(candidates, count, topology, prefer_topology):
    """The `count` candidates to use. With a topology and prefer_topology, the set whose farthest pair is the
    closest (NVML common-ancestor level); otherwise simply the best ranked."""
    ranked = sorted(candidates, key=rank_key)
    if len(ranked) < count:
        return None
    if count == 1 or not prefer_topology or not topology:
        return ranked[:count]
    positions = dict((c["uuid"], pos) for pos, c in enumerate(ranked))
    combos = 1
    for k in range(count):
        combos = combos * (len(ranked) - k) // (k + 1)
    if combos <= EXHAUSTIVE_LIMIT:
        best = min(itertools.combinations(ranked, count), key=lambda combo: _set_score(combo, topology, positions))
        return sorted(best, key=rank_key)
    # Too many sets to try: grow a set from each candidate by adding the GPU that keeps the set closest.
    best = None
    for seed in ranked:
        chosen = [seed]
        while len(chosen) < count:
            rest = [c for c in ranked if c not in chosen]
            chosen.append(min(rest, key=lambda c: _set_score(chosen + [c], topology, positions)))
        score = _set_score(chosen, topology, positions)
        if best is None or score < best[0]:
            best = (score, chosen)
    return sorted(best[1], key=rank_key)


def explain(devices):
    lines = []
    for device in devices:
        # A GPU whose index could not be read is still listed: "?", its reason says what nvidia-smi printed.
        name = "?" if device.get("index") is None else device["index"]
        if device.get("eligible"):
            lines.append("GPU %s: eligible (%s MiB free%s)" % (name, device.get("memory_free_mib"), "".join(
                "; not checked: %s" % what for what in device.get("unchecked", []))))
        else:
            lines.append("GPU %s: %s" % (name, "; ".join(device.get("reasons", []))))
        for mig in device.get("mig_devices", []):
            if "eligible" in mig:
                state = "eligible" if mig["eligible"] else "; ".join(mig["reasons"])
                lines.append("  MIG %s: %s" % (mig["uuid"], state))
    return lines


def cuda_order_warning(devices, id_type):
    """A warning where GPU indices may name other GPUs to CUDA, or None. NVML, nvidia-smi and Docker number GPUs in
    PCI bus order; CUDA numbers them fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, which differs only where the
    models differ (same models tie, and ties go in PCI order)."""
    if id_type != "index":
        return None
    models = sorted(set(d["name"] for d in devices if "error" not in d and d.get("name")))
    if len(models) < 2:
        return None
    return ("this host mixes GPU models (%s): CUDA numbers GPUs fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID is "
            "set, so an index in cuda_visible_devices may name another GPU to CUDA. Set CUDA_DEVICE_ORDER=PCI_BUS_ID "
            "for the workload, or use id_type: uuid (docker --gpus uses NVML's numbering and is not affected)"
            % ", ".join(models))


def select(observation, constraints):
    """The selection for `constraints` from what a backend observed. Raises SelectionError explaining why not."""
    if constraints.count < 1:
        raise SelectionError("count must be at least 1, got %d" % constraints.count)
    devices = observation["devices"]
    if not devices:
        raise SelectionError("%d GPU(s) requested, but the %s backend found no GPU on this host" % (
            constraints.count, observation.get("backend")))
    check_exclude(devices, constraints)
    candidates = evaluate(observation, constraints)
    topology = observation.get("topology")
    chosen = choose(candidates, constraints.count, topology, constraints.prefer_topology)
    if chosen is None:
        raise SelectionError("%d GPU(s) requested, %d eligible on this host:\n  %s" % (
            constraints.count, len(candidates), "\n  ".join(explain(devices))))
    picked = set((c["kind"], c["uuid"]) for c in chosen)
    for device in devices:
        device["selected"] = ("gpu", device.get("uuid")) in picked
        for mig in device.get("mig_devices", []):
            mig["selected"] = ("mig", mig["uuid"]) in picked
        if device["eligible"] and not device["selected"]:
            device["reasons"] = ["eligible, not needed: others ranked higher"]
    ids = []
    for c in chosen:
        if c["kind"] == "mig" or constraints.id_type == "uuid":
            ids.append(c["uuid"])
        else:
            ids.append(str(c["index"]))
    worst = _worst_level([c["index"] for c in chosen], topology) if topology and len(chosen) > 1 else None
    return {
        "gpus": [c["index"] for c in chosen],
        "uuids": [c["uuid"] for c in chosen],
        "ids": ids,
        "topology": _nvml.TOPOLOGY_NAMES.get(worst) if worst is not None else None,
    }
