# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_serve's GPU checks through NVML: the instance's GPUs exist and can be read, the memory plan fits their free
memory, and no process of another workload holds them (share_gpus lets the instance start beside such processes).

A process is the instance's own when /proc/<pid>/environ carries its INFEROPS_VLLM_INSTANCE marker
(_instance_procs): its memory counts as free, since a change restarts it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.inferops.vllm.plugins.module_utils import _docker_gpus, _instance_procs, _nvml, _vllm_planner
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_plan import Refused, starts


class GpuCheck(object):
    def __init__(self, spec, warn, snapshot=_nvml.snapshot, proc="/proc"):
        self.spec = spec
        self.p = spec.p
        self.warn = warn
        self.snapshot = snapshot
        self.proc = proc
        # {GPU index: [processes of other workloads, described]}, read by memory(); empty when nothing was read.
        self.held = {}

    def chosen(self, devices):
        """The devices NVML shows for the instance's GPUs, by index or by UUID in any case (NVML prints "GPU-" and
        lower-case hex; the instance may have been given, and its container created with, capitals).

        One GPU named twice, by its index and by its UUID, is refused: the instance would be given the device twice,
        and the memory plan and the tensor-parallel size would count it twice. Only NVML tells that an index and a
        UUID are one GPU; the same name twice is refused with the input's message before this is reached."""
        chosen = []
        named = {}  # position in `devices` -> the name it was first given by
        for ref in self.spec.gpus:
            key = _docker_gpus.id_key(ref)
            match = [i for i, d in enumerate(devices) if key in _docker_gpus.device_keys(d)]
            if not match:
                raise Refused("gpus: GPU %s does not exist on this host (GPUs here: %s)" % (
                    ref, ", ".join(str(d["index"]) for d in devices)))
            first = named.get(match[0])
            if first is not None:
                if _docker_gpus.id_key(first) == key:
                    raise Refused("gpus: GPU %s is listed twice" % key)
                raise Refused("gpus: '%s' and '%s' are the same GPU; list each GPU once" % (first, ref))
            named[match[0]] = ref
            device = devices[match[0]]
            if "error" in device:
                raise Refused("gpus: GPU %s cannot be read: %s" % (ref, device["error"]))
            chosen.append(device)
        return chosen

    def memory(self, params, weight_bytes):
        """The memory plan on the instance's GPUs, or None where it was not made (warned why). Raises Refused."""
        p = self.p
        if not p["check_gpus"] or p["state"] == "stopped":
            # Stopping needs no free memory: it is how memory gets freed.
            return None
        try:
            snap = self.snapshot(timeout=10)
        except _nvml.NvmlError as exc:
            self.warn("GPU checks skipped: %s" % exc)
            return None
        chosen = self.chosen(snap["devices"])
        split = _instance_procs.split_processes(chosen, self.spec.name, proc=self.proc)
        view = []
        for device in chosen:
            ours, others = split[device["index"]]
            if others:
                self.held[device["index"]] = [_instance_procs.describe(process, proc=self.proc) for process in others]
            # This instance's own memory would be freed by the restart a change implies.
            reclaimable = sum(proc.get("used_memory_mib") or 0 for proc in ours)
            view.append({"index": device["index"], "memory_total_mib": device["memory_total_mib"],
                         "memory_free_mib": min(device["memory_total_mib"], device["memory_free_mib"] + reclaimable)})
        try:
            if params is None and weight_bytes is None:
                self.warn("memory plan skipped: the model size is unknown; set model_params (e.g. 70B)")
                _vllm_planner.plan(view, p["gpu_memory_utilization"], self.spec.tensor_parallel_size(),
                                   p["pipeline_parallel_size"], weight_bytes=0)
                return None
            return _vllm_planner.plan(view, p["gpu_memory_utilization"], self.spec.tensor_parallel_size(),
                                      p["pipeline_parallel_size"], params=params, weight_bytes=weight_bytes,
                                      dtype=p["dtype"], quantization=p["quantization"])
        except _vllm_planner.PlanError as exc:
            raise Refused(str(exc))

    def held_text(self):
        gpus = []
        for index in sorted(self.held):
            described = []
            for process in self.held[index]:
                what = process["name"] or "a process /proc does not show"
                if process["instance"]:
                    what += ", of vLLM instance %s" % process["instance"]
                if process["command"]:
                    what += ", `%s`" % process["command"]
                memory = process["used_memory_mib"]
                described.append("PID %s (%s; %s)" % (process["pid"], what,
                                                      "memory unknown" if memory is None else "%d MiB" % memory))
            gpus.append("GPU %s: %s" % (index, ", ".join(described)))
        return "; ".join(gpus)

    def foreign(self, actions, running, exists):
        """Refuses to place a new instance on GPUs that other workloads hold, unless share_gpus. An existing one
        (re)started in place only warns: refusing a runbook's restart beside a workload that came later would turn
        a restart into an outage."""
        if not self.held or self.p["share_gpus"]:
            return
        if starts(actions) and not exists:
            raise Refused(
                "gpus: processes of other workloads hold GPUs of instance %s (%s), and vLLM would compete with them "
                "for memory and compute: stop that workload, pick other GPUs, or set share_gpus: true to start "
                "beside it" % (self.spec.name, self.held_text()))
        if starts(actions):
            self.warn("gpus: instance %s is (re)started beside processes of other workloads on its GPUs (%s); it "
                      "ran there before, so it was not refused. Stop that workload, pick other GPUs, or set "
                      "share_gpus: true" % (self.spec.name, self.held_text()))
            return
        if running:
            self.warn("gpus: instance %s runs beside processes of other workloads on its GPUs (%s); it was left "
                      "running. Stop that workload, pick other GPUs, or set share_gpus: true" % (
                          self.spec.name, self.held_text()))
