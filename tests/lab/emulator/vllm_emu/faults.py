"""Fault injection for the emulator, changeable while it runs.

Sources, later ones winning:
- env VLLM_EMULATOR_FAULTS: JSON ({"load_delay": 5}) or a comma list (`hang,slow_ttft=2`);
- the lab host's fault file /etc/inferops-lab/vllm-faults.json: {"<port>": {...}, "*": {...}}. It lives on the
  host (and is mounted read-only into GPU containers), so a test can change a running instance's faults and
  they survive a container being recreated.

Faults:
  load_delay: seconds     model loading takes this long (progress lines in the log)
  hang: true              /health stays 200, inference never answers (vllm#17972)
  engine_dead: true       /health 503, inference 500, then the server exits 0 within 5 s (vLLM's watchdog)
  oom: "startup"|"request"  CUDA out of memory: the engine fails to start (exit 1), or dies on the next request
                          (then as engine_dead)
  oom_above: {"gpu_memory_utilization": 0.8, "max_num_seqs": 128, "max_model_len": 8192}
                          crash with CUDA OOM at startup while a setting is above its limit
  address_in_use: true    fail to bind: "[Errno 98] Address already in use"
  tokenizer_error: true   fail loading the tokenizer as images with sentencepiece do: "TypeError: not a string"
                          (a local model without tokenizer files fails as the real CPU image does, without this)
  slow_ttft: seconds      delay before the first token
  queue: n                n requests waiting in the scheduler queue
  orphan_workers: true    GPU workers outlive the API server when it is killed

A hang, an engine death and an OOM on a request are states of one process: set in the fault file (which
records when), they apply only to servers that were already running then, so a restart clears them, as it
does with the real thing. The other faults are conditions of the host or the configuration and persist.
"""

import json
import os
import time

FAULT_FILE = os.environ.get("VLLM_EMULATOR_FAULT_FILE", "/etc/inferops-lab/vllm-faults.json")


def _parse_env(text):
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        return json.loads(text)
    faults = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not key:
            continue
        if not sep:
            faults[key] = True
            continue
        try:
            faults[key] = json.loads(value)
        except ValueError:
            faults[key] = value
    return faults


def _transient(name, value):
    return name in ("hang", "engine_dead") or (name == "oom" and value == "request")


class Faults:
    def __init__(self, port):
        self.port = str(port)
        self.from_env = _parse_env(os.environ.get("VLLM_EMULATOR_FAULTS"))
        self.started = time.time()
        self._cache = (None, {})

    def current(self):
        try:
            mtime = os.stat(FAULT_FILE).st_mtime_ns
        except OSError:
            return dict(self.from_env)
        if self._cache[0] != mtime:
            try:
                with open(FAULT_FILE) as handle:
                    table = json.load(handle)
            except (OSError, ValueError):
                table = {}
            merged = dict(table.get("*", {}))
            merged.update(table.get(self.port, {}))
            set_at = merged.pop("_set_at", None)
            if set_at is not None and set_at < self.started:
                merged = dict((k, v) for k, v in merged.items() if not _transient(k, v))
            self._cache = (mtime, merged)
        faults = dict(self.from_env)
        faults.update(self._cache[1])
        return faults

    def get(self, name, default=None):
        return self.current().get(name, default)
