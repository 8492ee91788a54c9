"""Signature matching, on log lines from the seeds' runbooks and from vLLM 0.33."""

import socket

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _log_signatures as ls
from ansible_collections.inferops.vllm.plugins.module_utils._redact import MASK, redact

SEED_LINES = [
    # seed 000
    ("RuntimeError: CUDA error: out of memory", "cuda_oom"),
    ("OSError: [Errno 48] Address already in use", "address_in_use"),
    ("RuntimeError: CUDA initialization: CUDA driver version is insufficient for CUDA runtime version",
     "cuda_driver_insufficient"),
    ("HTTPError: 404 Client Error", "model_not_found"),
    ("OSError: Model not found", "model_not_found"),
    # seed 001
    ('ValueError: The model\'s max seq len is too large', "max_seq_len_exceeds_kv_cache"),
    ("torch.cuda.OutOfMemoryError during loading", "cuda_oom"),
    ("Worker crashed (remote process exited)", "engine_dead"),
    # seed 004
    ("TypeError: not a string", "tokenizer_missing"),
    # vLLM 0.33 (and the lab emulator, which prints them)
    ("(EngineCore_DP0 pid=1) ERROR 11-22 19:57:53 [core.py:708] ValueError: Free memory on device cuda:0 "
     "(59.65/79.65 GiB) on startup is less than desired GPU memory utilization (0.9, 71.68 GiB). Decrease GPU "
     "memory utilization or reduce GPU memory used by other processes.", "gpu_memory_in_use"),
    ("ValueError: To serve at least one request with the models's max seq len (131072), (40.00 GiB KV cache is "
     "needed, which is larger than the available KV cache memory (9.50 GiB). Based on the available memory, the "
     "estimated maximum model length is 31104.", "max_seq_len_exceeds_kv_cache"),
    ("huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-lab)", "model_gated"),
    ("NCCL error: unhandled system error, NCCL version 2.21.5", "nccl_error"),
    ("vllm serve: error: unrecognized arguments: --speculative-model small", "unrecognized_arguments"),
    ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.", "engine_dead"),
    ("RuntimeError: No CUDA GPUs are available", "no_gpu"),
]


@pytest.mark.parametrize("line, code", SEED_LINES)
def test_each_known_failure_is_recognised(line, code):
    assert [d["code"] for d in ls.scan([line])] == [code]


def test_every_diagnosis_points_to_a_runbook():
    for line, _code in SEED_LINES:
        for found in ls.scan([line]):
            assert found["runbook"].startswith(("playbooks/runbooks/", "docs/runbooks.md#"))


def test_ordinary_lines_diagnose_nothing():
    lines = ["(APIServer pid=1) INFO:     127.0.0.1:40000 - \"GET /health HTTP/1.1\" 200 OK",
             "(APIServer pid=1) INFO 11-22 [api_server.py:1896] vLLM API server version 0.33.0"]
    assert ls.scan(lines) == []


def test_refused_flags_are_named_and_evidence_is_redacted():
    lines = ["INFO non-default args: {'model': 'm', 'api_key': ['s3cret-key', 'other']}",
             "vllm serve: error: unrecognized arguments: --guided-decoding-backend xgrammar --api-key s3cret-key"]
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


def test_progress_and_phase():
    lines = ["(APIServer pid=1) INFO [api_server.py:1896] vLLM API server version 0.33.0",
             "(EngineCore_DP0 pid=1) INFO [gpu_model_runner.py:2602] Starting to load model m...",
             "Loading safetensors checkpoint shards:  20% Completed | 1/5 [00:01<?, ?it/s]",
             "Loading safetensors checkpoint shards:  40% Completed | 2/5 [00:02<?, ?it/s]"]
    loading = {"percent": 40, "shards_loaded": 2, "shards_total": 5, "line": lines[-1]}
    assert ls.progress(lines) == {"phase": "loading", "loading": loading}
    assert ls.progress(lines + ["INFO:     Application startup complete."])["phase"] == "serving"
    assert ls.progress(["nothing"]) is None


def test_port_holder_names_the_listening_process():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        import os
        pid, comm = ls.port_holder(listener.getsockname()[1])
        assert pid == os.getpid() and comm
    finally:
        listener.close()
