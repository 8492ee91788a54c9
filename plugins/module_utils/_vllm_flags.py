# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vLLM's command line, per version: the flags vllm_serve may pass, the ones vLLM removed (with what replaced
them), and the environment variables that are gone. An unknown flag makes `vllm serve` exit at once, so
vllm_serve refuses it before changing anything."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

# Flags of `vllm serve` in 0.33 that extra_args may carry (structured options have their own parameters).
KNOWN_FLAGS = frozenset("""
allowed-headers allowed-methods allowed-origins allow-credentials api-server-count block-size chat-template
chat-template-content-format calculate-kv-scales code-revision collect-detailed-traces compilation-config
config-format cpu-offload-gb data-parallel-size data-parallel-rank data-parallel-start-rank data-parallel-address
data-parallel-rpc-port disable-cascade-attn disable-custom-all-reduce disable-fastapi-docs disable-frontend-multiprocessing
disable-log-requests disable-log-stats disable-mm-preprocessor-cache disable-sliding-window disable-uvicorn-access-log
distributed-executor-backend enable-auto-tool-choice enable-chunked-prefill enable-eplb enable-expert-parallel
enable-lora enable-lora-bias enable-log-outputs enable-prompt-tokens-details enable-request-id-headers
enable-server-load-tracking enable-sleep-mode enable-tokenizer-info-endpoint enforce-eager expert-placement-strategy
fully-sharded-loras generation-config hf-config-path hf-overrides
ignore-patterns kv-cache-memory kv-events-config kv-transfer-config limit-mm-per-prompt load-format
logits-processors long-lora-scaling-factors lora-dtype lora-modules max-cpu-loras max-log-len max-logprobs max-long-partial-prefills
max-lora-rank max-loras max-num-partial-prefills max-parallel-loading-workers max-seq-len-to-capture middleware
mm-processor-kwargs model-impl model-loader-extra-config num-gpu-blocks-override num-lookahead-slots
otlp-traces-endpoint override-attention-dtype override-generation-config
override-pooler-config preemption-mode prefix-caching-hash-algo pt-load-map-location reasoning-parser
response-role return-tokens-as-token-ids revision root-path rope-scaling rope-theta scheduler-cls scheduling-policy
seed served-model-name-suffix show-hidden-metrics-for-version skip-tokenizer-init speculative-config
structured-outputs-config swap-space tokenizer tokenizer-mode tokenizer-revision tool-call-parser tool-parser-plugin
uvicorn-log-level worker-cls worker-extension-cls async-scheduling stream-interval
""".split())

# Flags vllm_serve sets from its own options: extra_args must not carry them.
STRUCTURED = {
    "model": "model", "served-model-name": "served_model_name", "host": "host", "port": "port",
    "tensor-parallel-size": "tensor_parallel_size", "pipeline-parallel-size": "pipeline_parallel_size",
    "gpu-memory-utilization": "gpu_memory_utilization", "max-model-len": "max_model_len",
    "max-num-seqs": "max_num_seqs", "max-num-batched-tokens": "max_num_batched_tokens",
    "quantization": "quantization", "dtype": "dtype", "kv-cache-dtype": "kv_cache_dtype",
    "enable-prefix-caching": "enable_prefix_caching", "enable-chunked-prefill": "enable_chunked_prefill",
    "enforce-eager": "enforce_eager", "trust-remote-code": "trust_remote_code", "download-dir": "download_dir",
    "api-key": "api_keys", "ssl-certfile": "ssl_certfile", "ssl-keyfile": "ssl_keyfile",
    "ssl-ca-certs": "ssl_ca_certs", "enable-ssl-refresh": "enable_ssl_refresh", "config": "(managed by vllm_serve)",
}

# Removed flags -> (the vLLM version that removed them, what to use instead).
REMOVED = {
    "speculative-model": ("0.10", "--speculative-config '{\"model\": ..., \"num_speculative_tokens\": N}'"),
    "num-speculative-tokens": ("0.10", "--speculative-config '{\"num_speculative_tokens\": N, ...}'"),
    "guided-decoding-backend": ("0.11", "--structured-outputs-config '{\"backend\": ...}'"),
    "use-v2-block-manager": ("0.7", "nothing: the v2 block manager is the only one"),
    "num-scheduler-steps": ("0.10", "nothing: multi-step scheduling was removed with the V0 engine"),
    "swap-space-gb": ("0.6", "--swap-space"),
}

# Environment variables vLLM no longer reads (unknown VLLM_* variables only warn, so these are warnings).
GONE_ENV = {
    "VLLM_USE_V1": "VLLM_USE_V1 is gone since vLLM 0.11.1 (the V1 engine is the only one); remove it",
    "VLLM_ATTENTION_BACKEND_V0": "VLLM_ATTENTION_BACKEND_V0 is gone with the V0 engine; remove it",
}

_FLAG_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class FlagError(ValueError):
    pass


def normalize(flag):
    name = str(flag).strip()
    name = name[2:] if name.startswith("--") else name
    return name.replace("_", "-")


def check_extra_args(extra_args, strict=True):
    """Checks extra_args ({flag: value}); returns warnings. Raises FlagError with what to change."""
    warnings = []
    for flag in extra_args or {}:
        name = normalize(flag)
        if not _FLAG_NAME.match(name):
            raise FlagError("extra_args: %r is not a flag name (use e.g. max-loras: 4)" % flag)
        if name in REMOVED:
            version, instead = REMOVED[name]
            raise FlagError("extra_args: --%s was removed from vLLM in %s; use %s instead" % (name, version, instead))
        if name in STRUCTURED:
            raise FlagError("extra_args: --%s is set by the option %s, not through extra_args" % (
                name, STRUCTURED[name]))
        if name.startswith("no-") and name[3:] in KNOWN_FLAGS:
            continue
        if name not in KNOWN_FLAGS:
            message = "extra_args: --%s is not a flag of vLLM 0.33's `vllm serve`" % name
            if strict:
                raise FlagError(message + " (vLLM would exit at once; set flag_check: warn if your vLLM has it)")
            warnings.append(message)
    return warnings


def check_env(env):
    return [GONE_ENV[name] for name in sorted(env or {}) if name in GONE_ENV]


def extra_argv(extra_args):
    """argv for extra_args: true -> --flag, false -> --no-flag, lists -> --flag a b, dicts -> JSON."""
    import json

    argv = []
    for flag in sorted(extra_args or {}):
        name, value = normalize(flag), extra_args[flag]
        if value is True:
            argv.append("--" + name)
        elif value is False:
            argv.append("--no-" + name)
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            argv += ["--" + name] + [str(v) for v in value]
        elif isinstance(value, dict):
            argv += ["--" + name, json.dumps(value, sort_keys=True, separators=(",", ":"))]
        else:
            argv += ["--" + name, str(value)]
    return argv
