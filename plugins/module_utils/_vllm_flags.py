# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vLLM's command line, per release: which flags `vllm serve` has (the catalog generated from vLLM's own parser,
_vllm_flag_catalog), the ones vLLM removed with what replaced them, and environment variables that are gone.
An unknown flag makes `vllm serve` exit 2 at once, so vllm_serve refuses it before changing anything."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import math
import re

from ansible_collections.inferops.vllm.plugins.module_utils._vllm_flag_catalog import RELEASES

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
    "shutdown-timeout": "shutdown_timeout",
}

# Flags that users carry over from older vLLM releases -> (what to do instead, the flags that advice names).
# A flag counts as removed only for a release whose catalog lacks it; a test checks that every flag named in the
# advice exists in each release where the old flag is gone.
REMOVED = {
    "speculative-model": ("--speculative-config '{\"model\": ..., \"num_speculative_tokens\": N}'",
                          ["speculative-config"]),
    "num-speculative-tokens": ("--speculative-config '{\"num_speculative_tokens\": N, ...}'", ["speculative-config"]),
    "guided-decoding-backend": ("--structured-outputs-config '{\"backend\": ...}'", ["structured-outputs-config"]),
    "use-v2-block-manager": ("nothing: the v2 block manager is the only one", []),
    "num-scheduler-steps": ("nothing: multi-step scheduling went with the V0 engine", []),
    "swap-space": ("nothing: the V1 engine recomputes preempted requests (to offload the KV cache to CPU memory, "
                   "see --kv-offloading-size)", ["kv-offloading-size"]),
    "swap-space-gb": ("nothing: the V1 engine recomputes preempted requests (to offload the KV cache to CPU memory, "
                      "see --kv-offloading-size)", ["kv-offloading-size"]),
    "preemption-mode": ("nothing: the V1 engine always recomputes preempted requests", []),
    "num-lookahead-slots": ("nothing: speculative decoding is set with --speculative-config",
                            ["speculative-config"]),
    "max-seq-len-to-capture": ("--max-cudagraph-capture-size", ["max-cudagraph-capture-size"]),
    "rope-scaling": ("--hf-overrides with the model config's RoPE settings", ["hf-overrides"]),
    "rope-theta": ("--hf-overrides with the model config's RoPE settings", ["hf-overrides"]),
    "task": ("--runner (generate, pooling) and --convert", ["runner", "convert"]),
    "device": ("nothing: the platform is detected; install the vLLM build for the device", []),
    "disable-log-requests": ("nothing: requests are not logged unless --enable-log-requests is given",
                             ["enable-log-requests"]),
    "worker-use-ray": ("--distributed-executor-backend ray", ["distributed-executor-backend"]),
    "engine-use-ray": ("nothing: the engine no longer runs as a Ray actor", []),
    "disable-frontend-multiprocessing": ("nothing: the V1 engine always runs in its own process", []),
}

# Environment variables vLLM no longer reads (unknown VLLM_* variables only warn, so these are warnings).
GONE_ENV = {
    "VLLM_USE_V1": "VLLM_USE_V1 is gone since vLLM 0.11.1 (the V1 engine is the only one); remove it",
    "VLLM_ATTENTION_BACKEND_V0": "VLLM_ATTENTION_BACKEND_V0 is gone with the V0 engine; remove it",
}

_FLAG_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


class FlagError(ValueError):
    pass


def _key(version):
    return tuple(int(part) for part in _VERSION.match(version).groups())


SUPPORTED = sorted(RELEASES, key=_key)


def normalize(flag):
    name = str(flag).strip()
    name = name[2:] if name.startswith("--") else name
    return name.replace("_", "-")


def release_from_text(text):
    """'v0.33.0', '0.32.0+cpu', 'vllm/vllm-openai:v0.33.0', '0.33.1.dev4+gabc' -> '0.33.0' etc., or None."""
    match = _VERSION.search(str(text or ""))
    return "%s.%s.%s" % match.groups() if match else None


def release_from_image(image):
    """The release an image's tag names (vllm/vllm-openai:v0.33.0), or None (latest, a digest, no tag)."""
    tail = str(image or "").rsplit("/", 1)[-1]
    if "@" in tail or ":" not in tail:
        return None
    return release_from_text(tail.split(":", 1)[1])


class Release(object):
    """The catalog a host's vLLM is checked against: its own, or (with a warning) the newest one before it."""

    def __init__(self, version, source):
        self.version = release_from_text(version)
        self.source = source
        self.warning = None
        if self.version in RELEASES:
            self.catalog_version = self.version
        else:
            older = [v for v in SUPPORTED if self.version and _key(v) <= _key(self.version)]
            self.catalog_version = (older or SUPPORTED)[-1]
            self.warning = (
                "vLLM %s (%s) has no flag catalog in this collection (it has %s): extra_args are checked against "
                "%s's flags, and unknown ones only warn" % (
                    version or "of unknown release", source, ", ".join(SUPPORTED), self.catalog_version))
        self.catalog = RELEASES[self.catalog_version]

    @property
    def exact(self):
        return self.warning is None

    def has(self, flag):
        return flag in self.catalog["flags"]


def check_extra_args(extra_args, release, strict=True):
    """Checks extra_args ({flag: value}) against the release's flags; returns warnings. Raises FlagError saying
    what to change."""
    warnings = []
    strict = strict and release.exact
    label = "vLLM %s" % release.catalog_version
    for flag, value in sorted((extra_args or {}).items(), key=lambda item: str(item[0])):
        name = normalize(flag)
        if not _FLAG_NAME.match(name):
            raise FlagError("extra_args: %r is not a flag name (write it as e.g. max-loras: 4; a JSON setting such as "
                            "compilation-config takes a mapping as its value)" % (flag,))
        if name in STRUCTURED:
            raise FlagError("extra_args: --%s is set by the option %s, not through extra_args" % (
                name, STRUCTURED[name]))
        if name in REMOVED and not release.has(name):
            raise FlagError("extra_args: %s has no --%s (vLLM removed it); use %s instead" % (
                label, name, REMOVED[name][0]))
        kind = release.catalog["flags"].get(name)
        if kind is None:
            message = "extra_args: --%s is not a flag of %s's `vllm serve`" % (name, label)
            if strict:
                raise FlagError(message + " (vLLM would exit 2 at once; set vllm_version to the release the host "
                                          "runs, or flag_check: warn for a build with extra flags)")
            warnings.append(message)
            continue
        problem = _value_problem(kind, value)
        if problem:
            raise FlagError("extra_args: --%s %s" % (name, problem))
    return warnings


def _value_problem(kind, value):
    if kind == "switch":
        return None if isinstance(value, bool) else "is a switch: give true or false, not %r" % (value,)
    if isinstance(value, bool):
        return "takes a value, not %s" % str(value).lower()
    if isinstance(value, (list, tuple)) and kind not in ("values",):
        return "takes one value, not a list"
    if isinstance(value, float) and math.isnan(value):
        return "cannot be NaN"
    return None


def check_env(env):
    return [GONE_ENV[name] for name in sorted(env or {}) if name in GONE_ENV]


def extra_argv(extra_args, release):
    """argv for extra_args: true -> --flag, false -> the flag's negation (or nothing where off is its default),
    lists -> --flag a b, mappings -> JSON."""
    argv = []
    for flag in sorted(extra_args or {}, key=str):
        name, value = normalize(flag), extra_args[flag]
        if value is True:
            argv.append("--" + name)
        elif value is False:
            negation = release.catalog["negations"].get(name)
            if negation:
                argv.append("--" + negation)
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            argv += ["--" + name] + [str(v) for v in value]
        elif isinstance(value, dict):
            argv += ["--" + name, json.dumps(value, sort_keys=True, separators=(",", ":"))]
        else:
            argv += ["--" + name, str(value)]
    return argv
