"""Redaction throughput on ordinary logs and on hostile lines, and how it grows with the line length.

Runs on the controller, no lab needed: `python benchmarks/redact_bench.py [--runs 5]`. Prints a Markdown table.
A linear redactor takes about twice as long when the line doubles; the old quadratic one took four times as long.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "build", "collections"))

from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact  # noqa: E402

KEY = "Zq7vN2xK9pL4mW8rT1yB6cD3"
ORDINARY = ("INFO 12-01 06:00:00 [loggers.py:123] Engine 000: Avg prompt throughput: 12.3 tokens/s, "
            "Running: 1 reqs, Waiting: 0 reqs, GPU KV cache usage: 0.4%\n")
HOSTILE = {
    "one long prompt (letters)": "a",
    "spaces": " ",
    "api_key= repeated": "api_key=",
    "--api-key repeated": "--api-key ",
    "Authorization: repeated": "Authorization: ",
    "URL userinfo repeated": "https://u:",
    "quotes": "'",
    "unclosed lists after a name": "token: [",
    "JWT-like runs": "eyJ-",
}


def timed(text, runs):
    samples = []
    for _run in range(runs):
        started = time.perf_counter()
        redact(text, secrets=[KEY])
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print("| input | 100 KB (ms) | 200 KB (ms) | 400 KB (ms) | 400 KB / 100 KB |")
    print("| --- | --- | --- | --- | --- |")
    cases = dict(HOSTILE, **{"ordinary log lines": ORDINARY})
    for name, unit in cases.items():
        times = [timed(unit * (size // len(unit)), args.runs) for size in (100000, 200000, 400000)]
        cells = ["%.1f" % (seconds * 1000) for seconds in times] + ["%.1f" % (times[2] / times[0])]
        print("| %s | %s |" % (name, " | ".join(cells)))


if __name__ == "__main__":
    main()
