# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Known vLLM failure signatures in server logs, and the start-up phase, for vllm_health and vllm_diagnose.

Each signature maps log evidence to a diagnosis: a stable code, what it means and what to do, and the runbook
(playbook or docs section) that fixes it. The texts are what real vLLM prints (0.32/0.33, plus what older
releases printed where a real log shows it); tests/unit/fixtures/vllm_logs holds real excerpts for each code.

Root cause first. A failing vLLM prints its error several times (the `raise` source line, the exception line,
each process's traceback) and then generic tails ("Engine core initialization failed", EngineDeadError). `scan`
returns one diagnosis per code, ordered by:

1. specific before generic: engine_dead (the engine died, cause unknown) only ever comes after a specific code;
2. the current run before earlier ones: lines before the last start banner (a restarted server's tail) belong to
   a run that is over, so what they show ranks after what the current run shows, and once the current run serves
   they are not reported at all;
3. then the fixed order of SIGNATURES, which follows how a start-up proceeds and what causes what: the command
   line (unrecognized_arguments), the port (address_in_use), the model's identity and files (unknown_quantization,
   model_gated before model_not_found since a gated repo also ends in vLLM's "Invalid repository ID", then
   tokenizer_error, max_model_len_exceeds_model), the platform (cuda_driver_insufficient before no_gpu since an
   old or absent driver also hides the GPUs, then world_size_exceeds_gpus, then gpu_unsupported: the GPU cannot run
   the model's dtype, its quantization or any kernel of this build, then illegal_instruction: the CPU cannot run an
   instruction of this build, and the worker it kills ends in engine_dead), shared memory (shm_too_small before
   nccl_error, which a small /dev/shm also causes), then memory: gpu_memory_in_use (others hold the memory, so an
   OOM that follows is its consequence), vLLM's own KV-cache verdicts kv_cache_too_small and
   max_seq_len_exceeds_kv_cache (explicit checks made after the weights loaded, naming the setting to change;
   a CUDA OOM in the same lines is a retry or another rank failing, and the OOM fix, lowering
   gpu_memory_utilization, would make the verdict worse), then the raw cuda_oom, then nccl_error.

Long lines (a logged prompt) are searched only in their first and last 4 KiB, and every pattern is linear, so a
hostile line costs little. Evidence and messages are redacted and capped at 500 characters.

Start-up phases (`progress`): initialising (banner, `non-default args:`, `Resolved architecture`, `Using max model
len`, engine config), loading (`Starting to load model`, checkpoint shards, `Loading weights took`, `Model loading
took`), profiling (torch.compile, `Available KV cache memory`, `KV cache size: N tokens`), warming_up (`Warming up
model`, CUDA graph capture, `init engine (profile, create kv cache, warmup model) took`), serving (`Starting vLLM
server on http…`, `Application startup complete`), and failed: a failure signature after the last phase line (the
start-up, or the server, died there; `error` names the root cause). Only a line's message, after what a collector
puts before it (a journal prefix, a compose service, a `docker logs -t` or CI timestamp), the process tag (coloured
or not) and the logger header, is matched, so a phrase inside an args dump or a logged prompt does not move the
phase.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools
import os
import re

from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact

RUNBOOKS = "playbooks/runbooks/"
DOCS = "docs/runbooks.md#"

EVIDENCE_MAX = 500
_EDGE = 4096
# Redacted beyond each cut of a long line, so that a secret shorter than this that crosses the cut is masked whole.
_MARGIN = 2048
_GAP = r"[^\n]{0,160}?"  # a bounded gap between two parts of one message: no quadratic backtracking

# Codes that only say the engine died, not why: they rank after any specific code.
GENERIC = ("engine_dead",)

_OOM_FIX = ("Lower gpu_memory_utilization, then max_num_seqs, then max_model_len (oom_recover.yml steps them "
            "down), or use a smaller or quantized model.")
_KV_FIX = ("Raise gpu_memory_utilization (towards 0.95, if nothing else uses the GPU) or lower max_model_len, or "
           "use a smaller model, a quantized one or more GPUs (tensor_parallel_size). Lowering "
           "gpu_memory_utilization (oom_recover.yml) makes this worse.")


def _sig(code, patterns, message, runbook):
    return (code, re.compile("|".join("(?:%s)" % p for p in patterns)), message, runbook)


# (code, pattern, message, runbook), in root-cause order (see the module docstring). A code may have several
# entries: the first entry of a code that matches gives the message.
SIGNATURES = (
    _sig("unrecognized_arguments",
         [r": error: (unrecognized arguments: [^\n]{1,400}|argument [^\n]{1,400}"
          r"|the following arguments are required: [^\n]{1,400})"],
         "vLLM refused its command line: a flag unknown to this vLLM release (such as the removed --swap-space, "
         "--speculative-model or --guided-decoding-backend), or a missing or invalid value. Fix extra_args "
         "(vllm_serve names the replacement of removed flags).", DOCS + "flags"),
    _sig("address_in_use",
         [r"\[Errno (?:98|48)\] " + _GAP + r"[Aa]ddress already in use", r"\bEADDRINUSE\b"],
         "Another process already listens on the server's port: a stale server of this instance or another "
         "service. Free the port or move the instance (port).", RUNBOOKS + "diagnose.yml"),
    _sig("unknown_quantization",
         [r"Unknown quantization method"],
         "This vLLM release does not know the quantization method (quantization, or the model's "
         "quantization_config): pick one it lists, or a vLLM release that supports the checkpoint.",
         DOCS + "quantization"),
    _sig("model_gated",
         [r"GatedRepoError", r"Cannot access gated repo", r"access a gated repo", r"Access to model " + _GAP +
          r" is restricted", r"is gated\. You must be authenticated", r"public gated repositories"],
         "The model is gated on the Hugging Face hub: accept its licence on the model page with an account, and "
         "give the host that account's token (vllm_hf_token).", DOCS + "model-access"),
    _sig("model_not_found",
         [r"Invalid repository ID or local directory specified",
          r"Repo id must (?:be in the form|use alphanumeric)", r"HFValidationError", r"RepositoryNotFoundError",
          r"Repository Not Found for url", r"404 Client Error",
          r"does not appear to have a file named config\.json", r"is not a local folder and is not a valid model "
          r"identifier", r"Incorrect path_or_model_id", r"OSError: Model not found"],
         "The model does not exist at that hub id or local path (as seen from inside the container: "
         "model_path_map), or it is a private repository the host has no token for (vllm_hf_token).",
         DOCS + "model-access"),
    _sig("model_not_found",
         [r"401 Client Error"],
         "The hub answered 401 without naming a gated repository: a repository that does not exist answers 401 "
         "to a request without a token, so check the model id first; a private or gated model needs "
         "vllm_hf_token.", DOCS + "model-access"),
    _sig("tokenizer_error",
         [r"Couldn't instantiate the backend tokenizer", r"Can't load tokenizer", r"TypeError: not a string",
          r"Failed to load the tokenizer", r"No tokenizer file found", r"Tokenizer class \w{1,100} does not exist",
          r"tokenizer\.model" + _GAP + r"(?:not found|No such file)"],
         "The model's tokenizer cannot be loaded: tokenizer.json / tokenizer.model / tokenizer_config.json are "
         "missing from the model directory, or need a package (sentencepiece, tiktoken) the image lacks.",
         DOCS + "model-files"),
    _sig("max_model_len_exceeds_model",
         [r"User-specified max_model_len \(\d+\) is greater than the derived max_model_len"],
         "max_model_len is larger than the model's own context length (max_position_embeddings in its "
         "config.json): lower max_model_len to it or below.", DOCS + "max-model-len-exceeds-model"),
    _sig("cuda_driver_insufficient",
         [r"CUDA driver version is insufficient for CUDA runtime version", r"NVIDIA driver on your system is too old",
          r"\bError 804\b", r"forward compatibility was attempted on non supported HW",
          r"unsupported display driver / cuda driver combination", r"unsatisfied condition: cuda>="],
         "The NVIDIA driver is too old for the CUDA in the vLLM image (CUDA error 804 or 'insufficient driver'): "
         "install a driver branch that supports it (nvidia_driver), or use an image built for an older CUDA.",
         DOCS + "driver"),
    _sig("cuda_driver_insufficient",
         [r"Found no NVIDIA driver"],
         "No NVIDIA driver is loaded where vLLM runs: on a host, install or load it (nvidia_driver); in a "
         "container, the container got no GPU (its GPU request, DeviceRequests).", DOCS + "driver"),
    _sig("no_gpu",
         [r"Failed to infer device type", r"No CUDA GPUs are available", r"No platform detected",
          r"Device string must not be empty"],
         "vLLM found no usable GPU: check the container's GPU request (gpus, DeviceRequests), "
         "CUDA_VISIBLE_DEVICES, and that this is a CUDA build of vLLM for this machine.", DOCS + "gpus"),
    _sig("world_size_exceeds_gpus",
         [r"World size \(\d+\) is larger than the number of available GPUs",
          r"number of required GPUs exceeds the total number of available GPUs",
          r"Cannot provide a placement group requiring", r"Tensor parallel size may exceed available GPUs"],
         "tensor_parallel_size x pipeline_parallel_size asks for more GPUs than the instance sees: lower "
         "tensor_parallel_size, or give the instance that many GPUs (gpus, gpu_count).",
         DOCS + "world-size-exceeds-gpus"),
    _sig("gpu_unsupported",
         [r"Bfloat16 is only supported on GPUs with compute capability"],
         "The GPU has no bfloat16 (compute capability below 8.0: V100, T4, RTX 20xx, P40), the dtype the model asks "
         "for: set dtype to half (float16) for the instance.", DOCS + "gpu-unsupported"),
    _sig("gpu_unsupported",
         [r"(?:quantization method|Quantization scheme) [^\n]{0,40}?is not supported for\W{0,6}the current GPU"],
         "The model's quantization needs a newer GPU than this one (vLLM names the minimum compute capability): "
         "use a checkpoint with a quantization this GPU supports (or none), or a newer GPU.",
         DOCS + "gpu-unsupported"),
    _sig("gpu_unsupported",
         [r"no kernel image is available for execution on the device",
          r"with CUDA capability sm_\d{2,3} is not compatible with the current PyTorch installation",
          r"GPUs with compute capability below \d\.\d are not supported"],
         "This vLLM build has no kernels for the GPU's architecture: an image or wheel built before the GPU's "
         "generation (RTX 50xx and B200 need a CUDA 12.8+ build) or a GPU older than vLLM supports. Use a vLLM image "
         "built for this GPU (vllm_image) or build vLLM for its compute capability.", DOCS + "gpu-unsupported"),
    # A process of vLLM killed by SIGILL (signal 4 on Linux): the CPU met an instruction it cannot execute. Python
    # reports a child killed by signal N as exit code -N (multiprocessing's Process.exitcode and subprocess's
    # returncode, through os.waitstatus_to_exitcode); a process that exits by itself has a code of 0-255, so -4 is
    # SIGILL and nothing else. -9 (SIGKILL, the OOM killer's) and other codes stay the generic engine_dead. vLLM
    # 0.32's worker monitor reads the code as soon as the worker's pipe closes, often before the worker can be
    # reaped, and then prints "exit code: None": in the real logs (fixtures *_bf16_worker_sigill_*) only Python's
    # faulthandler names the signal.
    _sig("illegal_instruction",
         [
             # vllm/v1/executor/multiproc_executor.py (0.32): "Worker proc %s died unexpectedly (exit code: %s), "
             # "shutting down executor." with proc.name ("VllmWorker-<rank>") and proc.exitcode.
             r"Worker proc \S{1,80} died unexpectedly \(exit code: -4\)",
             # vllm/executor/multiproc_worker_utils.py (V0): "Worker %s pid %s died, exit code: %s".
             r"Worker \S{1,80} pid \d{1,10} died, exit code: -4\b",
             # vllm/v1/utils.py (0.32), API servers and engine cores: f"Process {proc.name} (PID: {proc.pid}) died
             # with exit code {proc.exitcode}".
             r"\) died with exit code -4\b",
             # vllm/model_executor/models/registry.py (0.32) inspects a model in a subprocess and chains Python's
             # CalledProcessError, whose text for a signal is "Command '...' died with <Signals.SIGILL: 4>.".
             r"died with <Signals\.SIGILL: 4>",
             # CPython's faulthandler (PYTHONFAULTHANDLER=1, -X faulthandler): "Fatal Python error: Illegal
             # instruction".
             r"Fatal Python error: Illegal instruction",
             # A shell that started vLLM names its child's death by strsignal(SIGILL): bash "bash: line 1: 4242
             # Illegal instruction     (core dumped) vllm serve ...", dash (and an interactive shell) the line
             # "Illegal instruction", " (core dumped)" added when a core was written. Not CUDA's "an illegal
             # instruction was encountered", a GPU kernel's fault.
             r"\b\d{1,10} Illegal instruction\b",
             r"(?:^|[\s|:])Illegal instruction(?: {1,12}\(core dumped\))?\s{0,4}$",
         ],
         "A vLLM process was killed by SIGILL: the CPU cannot execute an instruction that this vLLM build, or the "
         "kernels of the model's dtype, use (a build for a newer CPU, such as AVX-512 on an AVX2 host; on a CPU "
         "build, bfloat16, whose attention runs AMX kernels wherever the CPU reports AMX tiles). Compare the CPU's "
         "flags (lscpu) with what the build needs; on a CPU build set dtype to float32 (or float16); else use a "
         "vLLM build for this CPU.",
         DOCS + "gpu-unsupported"),
    _sig("shm_too_small",
         [r"Insufficient space in /dev/shm", r"creating shared memory segment /dev/shm",
          r"unable to write to file </torch_" + _GAP + r"No space left on device"],
         "/dev/shm is too small for vLLM's shared-memory queues (a container's default is 64 MiB): keep ipc_host "
         "true (vllm_serve's default) or raise shm_size_mib.", DOCS + "shared-memory"),
    _sig("gpu_memory_in_use",
         # The second reads the message when a terminal wrapped it after the numbers.
         [r"Free memory on device" + _GAP + r" is less than (?:the )?(?:desired GPU memory utilization|"
          r"engine's budget)", r"on startup is less than (?:the )?(?:desired GPU memory utilization|engine's budget)"],
         "At start-up the GPU had less free memory than gpu_memory_utilization asks for: other processes hold "
         "it (stale workers of this instance, which reset.yml removes, or another workload on the same GPU, "
         "which needs moving or a lower gpu_memory_utilization).", RUNBOOKS + "reset.yml"),
    _sig("kv_cache_too_small",
         [r"No available memory for the cache blocks", r"Available KV cache memory: -\d"],
         "The weights fit but no memory is left for the KV cache (vLLM's own check after profiling). " + _KV_FIX,
         DOCS + "kv-cache-too-small"),
    _sig("max_seq_len_exceeds_kv_cache",
         [r"max seq len \(\d+\)" + _GAP + r"larger than the (?:maximum number of tokens that can be stored in KV "
          r"cache|available KV cache memory)", r"estimated maximum model length is \d+",
          r"max seq len is too large"],
         "The KV cache cannot hold one request of max_model_len tokens: lower max_model_len (to the estimate vLLM "
         "gives) or raise gpu_memory_utilization; lowering gpu_memory_utilization makes it worse.",
         DOCS + "max-seq-len-exceeds-kv-cache"),
    _sig("cuda_oom",
         [r"CUDA out of memory", r"OutOfMemoryError", r"CUDA (?:driver )?error: out of memory",
          r"Failed to load model - not enough GPU memory", r"Cuda failure 'out of memory'",
          r"CUBLAS_STATUS_ALLOC_FAILED"],
         "The GPU ran out of memory (CUDA OOM). " + _OOM_FIX, RUNBOOKS + "oom_recover.yml"),
    _sig("nccl_error",
         [r"NCCL error", r"nccl(?:InternalError|SystemError|UnhandledCudaError|RemoteError|InvalidUsage)",
          r"Watchdog caught collective operation timeout"],
         "NCCL (communication between the GPUs) failed: check shared memory (ipc_host), the GPUs' interconnect "
         "(NCCL_P2P_DISABLE=1 to test) and tensor_parallel_size; reset.yml clears GPUs left in a bad state.",
         RUNBOOKS + "reset.yml"),
    _sig("engine_dead",
         [r"EngineDeadError", r"EngineCore encountered (?:a fatal error|an issue)", r"Engine core initialization "
          r"failed", r"EngineCore failed to start", r"(?:Worker|Engine core) proc \S{1,80} died unexpectedly",
          r"WorkerProc (?:initialization failed|failed to start)", r"AsyncLLM output_handler failed",
          r"Engine loop has died", r"Engine process failed to start", r"EngineCore hit an exception",
          # vllm/v1/utils.py (0.32), wait_for_completion_or_failure, raised as RuntimeError and logged by
          # logger.exception("Exception occurred while running API servers: %s"): f"Process {proc.name} (PID:
          # {proc.pid}) died with exit code {proc.exitcode}" (an API server, engine core or the DP coordinator;
          # exitcode an int or None) and f"Engine core process {failed_proc_name} died unexpectedly." (a name such
          # as EngineCore_DP0, or "Actor <ref>" under Ray). Every exit code: one that names the cause (-4) also
          # matches a specific code, which ranks first.
          r"Process \S{1,80} \(PID: \d{1,10}\) died with exit code (?:-?\d{1,10}|None)\b",
          r"Engine core process " + _GAP + r" died unexpectedly"],
         "The engine core died. This is the generic tail: the cause is the diagnosis listed before this one, or, "
         "when none is, earlier in the log or in a worker's own output (diagnose.yml collects it). The server "
         "cannot serve until restarted (reset.yml), once the cause is fixed.",
         RUNBOOKS + "reset.yml"),
)

# What makes a diagnosis redundant: a gated repository also ends in vLLM's "Invalid repository ID".
SUPERSEDES = {"model_gated": ("model_not_found",)}


def describe(code):
    """(message, runbook) of the first entry of `code` in SIGNATURES: the text of a diagnosis that other evidence
    (a container's or unit's state) makes, so that it reads as the one the logs give."""
    for name, _pattern, message, runbook in SIGNATURES:
        if name == code:
            return message, runbook
    raise KeyError(code)


# Numbers and names worth quoting in the message (the last line of the code that has them), so the fix can be
# read off the diagnosis without opening the log.
_DETAILS = {
    "unrecognized_arguments": (re.compile(r": error: ([^\n]{1,300})"), "Refused: %s."),
    "max_model_len_exceeds_model": (re.compile(
        r"max_model_len \((\d+)\) is greater than the derived max_model_len \((?:[a-z_]{1,40}=)?(\d{1,12})"),
        "It asks for %s; the model allows %s."),
    "max_seq_len_exceeds_kv_cache": (re.compile(
        r"(?:estimated maximum model length is|that can be stored in KV cache \()\s?(\d+)"),
        "The KV cache holds about %s tokens."),
    "world_size_exceeds_gpus": (re.compile(r"World size \((\d+)\) is larger than the number of available GPUs "
                                           r"\((\d+)\)"), "It needs %s GPUs and sees %s."),
    "unknown_quantization": (re.compile(r"Unknown quantization method: ([\w.-]{1,60})"), "Method: %s."),
    "gpu_memory_in_use": (re.compile(r"Free memory on device[^(\n]{0,40}\(([\d.]{1,10})/([\d.]{1,10}) GiB\)"),
                          "Free at start: %s of %s GiB."),
    "shm_too_small": (re.compile(r"(\d+ [KMG]iB) required, (\d+ [KMG]iB) free"), "Needed %s, had %s."),
    "gpu_unsupported": (re.compile(r"Your ([^\n]{1,60}?) GPU has compute capability (\d{1,2}\.\d)"),
                        "The GPU (%s) has compute capability %s."),
}

# A terminal colour code around the process tag (vLLM colours it on a TTY), raw or pasted as "^[[0;36m".
_ANSI = r"(?:(?:\x1b|\^\[)\[[\d;]{0,16}m)?"
# Where a line's message starts: after a journal prefix ("Aug 17 18:42:18 host vllm[8052]: "), a compose/CI prefix
# ("vllm-1  | "), a timestamp (`docker logs -t`, CI, Docker Desktop: "2025-03-10T15:07:20.1Z ",
# "[2025-03-10T15:07:20Z] ", "2025-06-12 20:49:44 "), the process tag ("(APIServer pid=1) ") and vLLM's logger header
# ("INFO 11-30 23:18:47 [entry.py:140] ", with the year in some builds), or uvicorn's ("INFO:     ").
_PREFIX = re.compile(
    r"\s{0,8}(?:\w{3,5}\.? {1,2}\d{1,2} \d\d:\d\d:\d\d [\w.-]{1,64} [\w.@/-]{1,64}(?:\[\d{1,10}\])?: )?"
    r"(?:[\w.-]{0,64}\s{0,8}\|\s)?"
    r"\s{0,8}(?:\[?\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?\]?\s{1,4})?"
    r"\s{0,8}" + _ANSI + r"(?:\([^()\n]{0,100}pid=\d+[^()\n]{0,100}\)" + _ANSI + r"\s{0,8})?"
    r"(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (?:\d{4}-)?\d\d-\d\d [\d:.]{5,15} \[?[^\]\s]{1,120}\]\s?"
    r"|(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):\s{1,10})?")

_PHASES = (
    ("initialising", re.compile(
        # 0.32+ prints its banner as block-character art; with VLLM_DISABLE_LOG_LOGO=1 as "vLLM server version",
        # and releases up to 0.5 or so as "vLLM API server version".
        r"[\u2580-\u259f][\u2580-\u259f ]{0,80}version \S|vLLM (?:API )?server version "
        r"|non-default args:|Resolved architecture:|Using max model len"
        r"|Initializing an? (?:V1 )?LLM engine")),
    ("loading", re.compile(
        r"Starting to load model|Loading (?:safetensors|pt) checkpoint shards:|Loading (?:model )?weights took"
        r"|Model loading took")),
    ("profiling", re.compile(
        r"Available KV cache memory:|(?:\w{1,8} )?KV cache size: [\d,]+ tokens|Memory profiling takes"
        r"|# (?:GPU|CPU|cuda|cpu) blocks:|Dynamo bytecode transform time|torch\.compile take"
        r"|Compiling a graph for|Directly load the compiled graph")),
    ("warming_up", re.compile(
        r"Warming up model|Capturing (?:CUDA graphs?|cudagraphs?)|Graph capturing finished"
        r"|init engine \(profile, create kv cache, warmup model\) took")),
    ("serving", re.compile(r"Starting vLLM (?:API )?server(?: \d+)? on |Application startup complete")),
)
PHASES = tuple(name for name, _pattern in _PHASES) + ("failed",)

# Where a run of the server starts: what comes before belongs to an earlier run (a restarted container's tail).
_RUN_START = re.compile(r"[\u2580-\u259f][\u2580-\u259f ]{0,80}version \S|vLLM (?:API )?server version "
                        r"|non-default args:")

_USER_DATA = ("Received request ", "Generated response ")

_PROGRESS = re.compile(r"Loading (?:safetensors|pt) checkpoint shards:\s{0,8}(\d{1,3})% Completed \| (\d{1,6})/"
                       r"(\d{1,6})")


def _window(line, secrets=None):
    """The part of a line worth searching: all of it, or its first and last few KiB. With `secrets` (a list, maybe
    empty) it comes redacted: each edge is redacted with a margin before it is cut, so a secret across the cut is
    masked whole, and the work stays bounded by the window whatever the line's length."""
    if not isinstance(line, str):
        line = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
    if secrets is None:
        return line[:_EDGE] + " [...] " + line[-_EDGE:] if len(line) > 2 * _EDGE else line
    return _redacted_window(line, tuple(secret for secret in secrets if secret))


@functools.lru_cache(maxsize=2048)
def _redacted_window(line, secrets):
    # Cached: scan() and progress() look at the same lines several times in one probe.
    if len(line) <= 2 * (_EDGE + _MARGIN):
        masked = redact(line, secrets)
        return masked[:_EDGE] + " [...] " + masked[-_EDGE:] if len(masked) > 2 * _EDGE else masked
    head = redact(line[:_EDGE + _MARGIN], secrets)[:_EDGE]
    tail = redact(line[-(_EDGE + _MARGIN):], secrets)[-_EDGE:]
    return head + " [...] " + tail


def _message(text):
    """The message of a log line, without its prefixes, leading blanks kept (tracebacks indent)."""
    return text[_PREFIX.match(text).end():]


def _is_source(message):
    """A source line quoted in a traceback (`raise ValueError(`, a string literal), not the error itself."""
    return message.startswith(("raise ", '"', "'", 'f"', "f'"))


def _evidence(text, pattern, secrets):
    """The evidence line, redacted, cut to EVIDENCE_MAX around the match."""
    masked = redact(text.strip(), secrets)
    if len(masked) <= EVIDENCE_MAX:
        return masked
    # Cut after masking: a slice of masked text cannot hold a secret the masked text does not.
    match = pattern.search(masked)
    start = max(0, (match.start() if match else 0) - 100)
    return masked[start:start + EVIDENCE_MAX]


def _detail(code, text):
    """The groups of the code's detail pattern in `text`, or None."""
    found = _DETAILS.get(code)
    match = found[0].search(text) if found else None
    return match.groups() if match else None


def _run_start(lines):
    """Index of the line where the last run of the server starts (0 when none shows)."""
    start = 0
    for index, line in enumerate(lines):
        text = _window(line)
        if _RUN_START.match(_message(text).lstrip()):
            start = index
    return start


def scan(lines, secrets=()):
    """Diagnoses from log lines (oldest first), root cause first: one per code, its best line as evidence."""
    lines = list(lines)
    hits = {}  # code -> [entry rank, line index, text, pattern, is_source]
    details = {}  # code -> the groups of its detail pattern, from the last line that has them
    for index, line in enumerate(lines):
        text = _window(line, secrets)
        said = None
        for rank, (code, pattern, _message_text, _runbook) in enumerate(SIGNATURES):
            if not pattern.search(text):
                continue
            if said is None:
                said = _message(text).lstrip()
                # A logged prompt or output (--enable-log-requests/-outputs) is what users wrote, not server state.
                if said.startswith(_USER_DATA):
                    break
                source = _is_source(said)
            details[code] = _detail(code, text) or details.get(code)
            best = hits.get(code)
            # The first entry of a code wins; among its lines the last, but an error line before a source line.
            if best is None or rank < best[0] or (rank == best[0] and (best[4] or not source)):
                hits[code] = [rank, index, text, pattern, source]
    for code, superseded in SUPERSEDES.items():
        if code in hits:
            for other in superseded:
                hits.pop(other, None)
    current = _run_start(lines) if hits else 0
    if current and any(_phase(_window(line)) == "serving" for line in lines[current:]):
        # The server was restarted and serves again: what an earlier run ended with (a planned stop logs
        # EngineDeadError too) is history, not a diagnosis of this one.
        hits = dict((code, hit) for code, hit in hits.items() if hit[1] >= current)
    order = []
    for code, (rank, index, text, pattern, _source) in hits.items():
        order.append(((code in GENERIC, index < current, rank), code))
    found = []
    for _key, code in sorted(order):
        rank, _index, text, pattern, _source = hits[code]
        _code, _pattern, message, runbook = SIGNATURES[rank]
        if details.get(code):
            message += " " + _DETAILS[code][1] % tuple(g.strip()[:300] for g in details[code])
        message = redact(message, secrets)
        found.append({"code": code, "message": message[:EVIDENCE_MAX],
                      "evidence": _evidence(text, pattern, secrets), "runbook": runbook})
    return found


def _phase(text):
    message = _message(text).lstrip()
    for name, pattern in _PHASES:
        if pattern.match(message):
            return name
    return None


def progress(lines, secrets=()):
    """What the logs say about start-up: the phase reached and the last checkpoint-loading percentage.

    None when the lines show nothing of it. Otherwise {"phase", "loading", "error"}: phase is one of PHASES,
    "failed" when a failure signature follows the last phase line (error is then its root-cause code).
    """
    lines = list(lines)
    phase = None
    last = -1
    loading = None
    for index, line in enumerate(lines):
        text = _window(line, secrets)
        name = _phase(text)
        if name is None:
            continue
        phase, last = name, index
        if name == "loading":
            for match in _PROGRESS.finditer(text):
                loading = {"percent": int(match.group(1)), "shards_loaded": int(match.group(2)),
                           "shards_total": int(match.group(3)),
                           "line": redact(text.strip(), secrets)[:EVIDENCE_MAX]}
    error = None
    # The last phase line itself may be the failure ("Available KV cache memory: -2.14 GiB").
    if scan(lines[max(last, 0):]):
        phase = "failed"
        error = scan(lines[_run_start(lines):])[0]["code"]
    if phase is None and loading is None:
        return None
    return {"phase": phase, "loading": loading, "error": error}


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
