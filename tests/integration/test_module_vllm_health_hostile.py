"""The vllm_health module itself (through ansible) keeps its budget against servers that misbehave on purpose."""

import pytest

from ansible_run import run_module
from hostile_servers import Hostile


@pytest.mark.parametrize("behaviour, scheme", [("silent", "http"), ("headers-then-stall", "http"),
                                               ("tls-stall", "https")])
def test_module_returns_within_its_budget(behaviour, scheme):
    server = Hostile(behaviour)
    try:
        result = run_module("localhost", "inferops.vllm.vllm_health",
                            {"url": "%s://127.0.0.1:%d" % (scheme, server.port), "timeout": 3, "fail_on": "never"})
    finally:
        server.close()
    assert result["status"] == "unhealthy"
    assert result["elapsed_ms"] < 4000
    assert result.elapsed < 15  # the whole ansible run, start-up included
