# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Known vLLM failure signatures in server logs, and the model-loading progress, for vllm_health.

Each signature maps log evidence to a diagnosis: a stable code, what it means and what to do, and the runbook
(playbook or docs section) that fixes it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact

RUNBOOKS = "playbooks/runbooks/"
DOCS = "docs/runbooks.md#"

# (code, pattern, message, runbook)
SIGNATURES = (
    ("cuda_oom", re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory"),
     "The GPU ran out of memory (CUDA OOM). Lower gpu_memory_utilization, then max_num_seqs, then "
     "max_model_len.", RUNBOOKS + "oom_recover.yml"),
    ("gpu_memory_in_use", re.compile(r"Free memory on device .* is less than desired GPU memory utilization"),
     "Other processes hold the GPU memory this instance needs: stale workers of this instance, or another "
     "workload on the same GPU.", RUNBOOKS + "reset.yml"),
    ("max_seq_len_exceeds_kv_cache", re.compile(
        r"max seq len \(\d+\).*(larger than the (maximum number of tokens that can be stored in KV cache|"
        r"available KV cache memory))|estimated maximum model length is \d+|max seq len is too large"),
     "max_model_len does not fit in the KV cache. Lower max_model_len (or raise gpu_memory_utilization).",
     RUNBOOKS + "oom_recover.yml"),
    ("address_in_use", re.compile(r"\[Errno (98|48)\] (error while attempting to bind.*: )?[Aa]ddress already in use"),
     "Another process already listens on the server's port.", RUNBOOKS + "diagnose.yml"),
    ("tokenizer_missing", re.compile(r"TypeError: not a string|Can't load tokenizer|tokenizer\.model.*(not found|"
                                     r"No such file)"),
     "The model's tokenizer files are missing (tokenizer.model / tokenizer.json).", DOCS + "model-files"),
    ("cuda_driver_insufficient", re.compile(r"CUDA driver version is insufficient for CUDA runtime version|"
                                            r"Found no NVIDIA driver on your system"),
     "The NVIDIA driver is too old for the CUDA runtime in the vLLM image, or not loaded.", DOCS + "driver"),
    ("model_not_found", re.compile(r"RepositoryNotFoundError|404 Client Error|[Mm]odel not found|is not a local folder and is not a "
                                   r"valid model identifier|Incorrect path_or_model_id|does not appear to have a file "
                                   r"named config\.json"),
     "The model does not exist at that hub id or path.", DOCS + "model-access"),
    ("model_gated", re.compile(r"GatedRepoError|401 Client Error|Cannot access gated repo|Access to model .* is "
                               r"restricted"),
     "The model is gated: the host needs an HF token with access to it.", DOCS + "model-access"),
    ("nccl_error", re.compile(r"NCCL error|ncclInternalError|ncclSystemError|NCCL WARN"),
     "NCCL (multi-GPU communication) failed; check the GPUs' interconnect, shared memory (ipc host) and the "
     "tensor-parallel size.", RUNBOOKS + "reset.yml"),
    ("unrecognized_arguments", re.compile(r"error: (unrecognized arguments: .*|the following arguments are required: "
                                          r".*|argument --\S+: .*)"),
     "vLLM refused its command line (a flag unknown to this vLLM version, such as the removed --speculative-model "
     "or --guided-decoding-backend, or a missing or invalid argument).", DOCS + "flags"),
    ("engine_dead", re.compile(r"EngineDeadError|EngineCore encountered a fatal error|Engine core initialization "
                               r"failed|remote process exited|died unexpectedly"),
     "The engine core died; the API server cannot serve until it is restarted.", RUNBOOKS + "reset.yml"),
    ("no_gpu", re.compile(r"No CUDA GPUs are available"),
     "The server saw no GPU: check the container's GPU request (--gpus / DeviceRequests) or CUDA_VISIBLE_DEVICES.",
     DOCS + "gpus"),
)

_PROGRESS = re.compile(r"Loading safetensors checkpoint shards:\s*(\d+)% Completed \| (\d+)/(\d+)")
_PHASES = (
    ("serving", re.compile(r"Application startup complete|Uvicorn running on")),
    ("profiling", re.compile(r"Available KV cache memory|GPU KV cache size|Memory profiling")),
    ("loading", re.compile(r"Starting to load model|Loading safetensors checkpoint shards|Loading weights")),
    ("initialising", re.compile(r"vLLM API server version|Automatically detected platform")),
)


def scan(lines, secrets=()):
    """Diagnoses from log lines (newest last): one per signature, with the last matching line as evidence."""
    found = {}
    for line in lines:
        for code, pattern, message, runbook in SIGNATURES:
            match = pattern.search(line)
            if match:
                text = message
                if code == "unrecognized_arguments":
                    text = "%s Refused: %s" % (message, redact(match.group(1).strip(), secrets))
                found[code] = {"code": code, "message": text, "evidence": redact(line.strip(), secrets)[:500],
                               "runbook": runbook}
    return [found[code] for code, _pattern, _message, _runbook in SIGNATURES if code in found]


def progress(lines):
    """What the logs say about start-up: the phase reached and the last checkpoint-loading percentage."""
    phase = None
    loading = None
    for line in lines:
        match = _PROGRESS.search(line)
        if match:
            loading = {"percent": int(match.group(1)), "shards_loaded": int(match.group(2)),
                       "shards_total": int(match.group(3)), "line": line.strip()}
        for name, pattern in _PHASES:
            if pattern.search(line):
                phase = name
                break
    if phase is None and loading is None:
        return None
    return {"phase": phase, "loading": loading}


def port_holder(port, proc="/proc"):
    """(pid, command) of the process listening on TCP `port` on this host, or None. Reads /proc directly."""
    inodes = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            with open(os.path.join(proc, table)) as handle:
                next(handle)
                for row in handle:
                    fields = row.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add("socket:[%s]" % inode)
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    if not inodes:
        return None
    for pid in sorted((p for p in os.listdir(proc) if p.isdigit()), key=int):
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            for fd in os.listdir(fd_dir):
                if os.readlink(os.path.join(fd_dir, fd)) in inodes:
                    with open(os.path.join(proc, pid, "comm")) as handle:
                        return int(pid), handle.read().strip()
        except OSError:
            continue
    return None
