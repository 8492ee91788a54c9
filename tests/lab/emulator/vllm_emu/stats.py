"""vLLM's periodic stats line (`Engine 000: Avg prompt throughput: ...`), every VLLM_LOG_STATS_INTERVAL seconds
unless --disable-log-stats; at DEBUG (so not shown) while the engine has been idle for two intervals."""

import os
import threading
import time

from . import log


def start(metrics):
    interval = float(os.environ.get("VLLM_LOG_STATS_INTERVAL", "10") or 10)
    threading.Thread(target=_loop, args=(metrics, interval), daemon=True, name="stats").start()


def _loop(metrics, interval):
    last = metrics.snapshot()
    last_rates = (0.0, 0.0)
    while True:
        time.sleep(interval)
        now = metrics.snapshot()
        prompt, generation, running, waiting, kv, queries, hits = now
        rates = ((prompt - last[0]) / interval, (generation - last[1]) / interval)
        idle = not any(rates + last_rates)
        last, last_rates = now, rates
        if idle:
            continue
        parts = "Engine 000: Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, " \
                "Running: %d reqs, Waiting: %d reqs, GPU KV cache usage: %.1f%%" % (
                    rates[0], rates[1], running, waiting, kv * 100)
        if queries:
            parts += ", Prefix cache hit rate: %.1f%%" % (100.0 * hits / queries)
        log.info("loggers.py:283", parts)
