#!/usr/bin/env python
"""Streaming time to first token through the gateway against the same instance called directly (issue 14: within
50 ms, median of 20). One lab emulator as a local process, Debian's HAProxy with the role's rendered configuration
in front of it (tests/gateway), requests interleaved, each on a new connection as a client without keep-alive
makes them (the gateway's includes its TLS handshake).

  python benchmarks/gateway_bench.py [--runs 20] [--tokens 16]
"""
import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "gateway"))
sys.path.insert(0, os.path.join(ROOT, "tests", "unit"))

import test_gateway as gw  # noqa: E402
from local_backends import MODEL, Emulators  # noqa: E402


def ttft(url, key, tokens, context=None):
    """Seconds from sending the request to the first token's event."""
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": tokens, "stream": True}).encode()
    request = urllib.request.Request(url + "/v1/completions", method="POST", data=body,
                                     headers={"Content-Type": "application/json", "Authorization": "Bearer " + key})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60, context=context) as response:
        first = None
        for line in response:
            if first is None and line.startswith(b"data: {"):
                first = time.perf_counter() - started
        return first


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    certificates = tmp / "certs"
    certificates.mkdir()
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    (certificates / "gateway.crt").write_bytes(issued.cert_chain_pems[0].bytes())
    (certificates / "gateway.key").write_bytes(issued.private_key_pem.bytes())
    (certificates / "ca.crt").write_bytes(ca.cert_pem.bytes())
    emulators = Emulators(str(tmp))
    emulators.start("a", gw.BACKEND_KEY, 0)
    emulators.wait_healthy()
    gateway = gw.Gateway(tmp, gw.host_vars(tmp, certificates, gw.instances(emulators, ["a"])))
    try:
        gateway.wait(lambda: gateway.request("/health")[0] == 200)
        direct_url = "http://127.0.0.1:%d" % emulators.processes["a"][1]
        for _warm_up in range(3):  # warm both paths
            ttft(direct_url, gw.BACKEND_KEY, args.tokens)
            ttft(gateway.url, gw.CLIENT_KEYS[0], args.tokens, gateway.context)
        direct, through = [], []
        for _run in range(args.runs):
            direct.append(ttft(direct_url, gw.BACKEND_KEY, args.tokens))
            through.append(ttft(gateway.url, gw.CLIENT_KEYS[0], args.tokens, gateway.context))
    finally:
        gateway.close()
        emulators.close()
    result = {
        "machine": "%s, %d cores" % (platform.platform(), os.cpu_count()), "host": socket.gethostname(),
        "date": time.strftime("%Y-%m-%d"), "runs": args.runs, "tokens": args.tokens,
        "direct_ms": {"median": statistics.median(direct) * 1000, "min": min(direct) * 1000,
                      "max": max(direct) * 1000},
        "gateway_ms": {"median": statistics.median(through) * 1000, "min": min(through) * 1000,
                       "max": max(through) * 1000},
    }
    result["difference_of_medians_ms"] = result["gateway_ms"]["median"] - result["direct_ms"]["median"]
    os.makedirs(os.path.join(ROOT, "build", "logs"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "logs", "gateway-bench.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
