# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Will the model fit? The seeds' rule, checked before anything changes:

    weights per GPU = parameters x bytes per parameter / (tensor parallel x pipeline parallel)

compared with vLLM's budget on each chosen GPU, which is vLLM's own rule: total memory x gpu_memory_utilization,
and that much must be free when vLLM starts (else it stops with "Free memory on device ... is less than desired
GPU memory utilization"). What the weights and a reserve for activations leave of the budget is the KV cache.
70B in bf16 on 40 GB GPUs needs TP >= 4 (seed 004)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re

GIB = 1024.0 ** 3
MIB = 1024.0 ** 2
RESERVE_GIB = 1.5  # activations, CUDA graphs and at least some KV cache
BYTES_PER_PARAM = {"awq": 0.5, "awq_marlin": 0.5, "gptq": 0.5, "gptq_marlin": 0.5, "bitsandbytes": 0.5,
                   "mxfp4": 0.5, "fp8": 1.0, "modelopt": 1.0, "float32": 4.0, "float": 4.0}
TP_SIZES = (1, 2, 4, 8, 16)


class PlanError(ValueError):
    pass


def parse_params(value):
    """70000000000, 7e10, "70B", "8b", "125M" -> a number of parameters."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([bBmMkK]?)\s*$", str(value))
    if not match:
        raise PlanError("model_params: %r is not a parameter count; use 70B, 8.03B, 125M or a number" % (value,))
    scale = {"b": 1e9, "m": 1e6, "k": 1e3, "": 1.0}[match.group(2).lower()]
    return float(match.group(1)) * scale


def params_from_local_model(path):
    """Weights in bytes from a local model directory (safetensors index), else parameters from config.json."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as handle:
            total = json.load(handle).get("metadata", {}).get("total_size")
        if total:
            return None, float(total)
    config = os.path.join(path, "config.json")
    if os.path.exists(config):
        with open(config) as handle:
            data = json.load(handle)
        if data.get("num_parameters"):
            return float(data["num_parameters"]), None
        hidden, layers, vocab = data.get("hidden_size"), data.get("num_hidden_layers"), data.get("vocab_size")
        if hidden and layers and vocab:
            return 12.0 * layers * hidden * hidden + 2.0 * vocab * hidden, None
    return None, None


def bytes_per_param(dtype, quantization):
    if quantization:
        return BYTES_PER_PARAM.get(quantization, 2.0)
    return BYTES_PER_PARAM.get(dtype or "auto", 2.0)


def plan(gpus, gpu_memory_utilization, tensor_parallel_size, pipeline_parallel_size, params=None,
         weight_bytes=None, dtype=None, quantization=None):
    """The memory plan per GPU, or PlanError saying what to change, with the numbers.

    gpus: [{"index", "memory_total_mib", "memory_free_mib"}] as NVML reports them (free memory of other
    processes already taken out)."""
    if weight_bytes is None:
        weight_bytes = params * bytes_per_param(dtype, quantization)
    shards = tensor_parallel_size * pipeline_parallel_size
    per_gpu = weight_bytes / shards
    reserve = RESERVE_GIB * GIB
    report = {"weights_gib": round(weight_bytes / GIB, 2), "weights_per_gpu_gib": round(per_gpu / GIB, 2),
              "gpus": []}
    problems = []
    for gpu in gpus:
        total = gpu["memory_total_mib"] * MIB
        free = gpu["memory_free_mib"] * MIB
        budget = total * gpu_memory_utilization
        report["gpus"].append({"index": gpu["index"], "free_gib": round(free / GIB, 2),
                               "budget_gib": round(budget / GIB, 2),
                               "kv_cache_gib": round((budget - per_gpu - reserve) / GIB, 2)})
        if free < budget:
            numbers = (gpu["index"], free / GIB, gpu_memory_utilization, budget / GIB, total / GIB,
                       (total - free) / GIB)
            problems.append(
                "GPU %s has %.1f GiB free, but gpu_memory_utilization %s asks vLLM for %.1f GiB of its %.1f GiB at "
                "start (other processes hold %.1f GiB): free the GPU, pick another (gpu_select), or lower "
                "gpu_memory_utilization" % numbers)
        elif per_gpu + reserve > budget:
            numbers = (gpu["index"], per_gpu / GIB, RESERVE_GIB, budget / GIB, total / GIB, gpu_memory_utilization)
            problems.append("GPU %s: %.1f GiB of weights per GPU + %.1f GiB reserve > vLLM's budget of %.1f GiB "
                            "(%.1f GiB total x %s)" % numbers)
    if problems:
        smallest = None
        tightest = min(g["memory_total_mib"] * MIB for g in gpus) * gpu_memory_utilization
        for tp in TP_SIZES:
            if weight_bytes / (tp * pipeline_parallel_size) + reserve <= tightest:
                smallest = tp
                break
        hint = ""
        if smallest is not None and smallest > tensor_parallel_size:
            hint = " The smallest tensor_parallel_size that fits on such GPUs is %d (%d GPUs)." % (
                smallest, smallest * pipeline_parallel_size)
        elif smallest is None:
            hint = " It does not fit even at tensor_parallel_size %d: quantize (fp8 halves it, awq quarters it)." % (
                TP_SIZES[-1])
        raise PlanError("the model does not fit: %.1f GiB of weights over %d GPU(s) = %.1f GiB each. %s.%s" % (
            weight_bytes / GIB, shards, per_gpu / GIB, "; ".join(problems), hint))
    return report
