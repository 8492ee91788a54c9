# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_serve's GPU checks through NVML: the instance's GPUs exist and can be read, and the memory plan fits their
free memory.

A process is the instance's own when /proc/<pid>/environ carries its INFEROPS_VLLM_INSTANCE marker
(_instance_procs): its memory counts as free, since a change restarts it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.inferops.vllm.plugins.module_utils import _instance_procs, _nvml, _vllm_planner
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_plan import Refused


class GpuCheck(object):
    def __init__(self, spec, warn, snapshot=_nvml.snapshot, proc="/proc"):
        self.spec = spec
        self.p = spec.p
        self.warn = warn
        self.snapshot = snapshot
        self.proc = proc

    def chosen(self, devices):
        chosen = []
        for ref in self.spec.gpus:
            match = [d for d in devices if str(d["index"]) == ref or d.get("uuid") == ref]
            if not match:
                raise Refused("gpus: GPU %s does not exist on this host (GPUs here: %s)" % (
                    ref, ", ".join(str(d["index"]) for d in devices)))
            if "error" in match[0]:
                raise Refused("gpus: GPU %s cannot be read: %s" % (ref, match[0]["error"]))
            chosen.append(match[0])
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
            ours = split[device["index"]][0]
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
