"""/metrics: the content type, the metrics the collection reads (plugins/module_utils/_vllm_metrics.py) with their
types and labels, request_success's finished_reason, counters that move with traffic; and every metric the
emulator exports exists on the real server with the same type, labels and buckets; the capture of the real
server's /metrics that tests/monitoring holds the alert rules to is still what the server exports."""

import os
import time

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_metrics
from conformance_setup import KEYS
from vllm_client import generate, metrics, request, total, wait_until

KINDS = dict([(names[0], "gauge") for names in _vllm_metrics.GAUGES.values()] +
             [(names[0], "counter") for names in _vllm_metrics.COUNTERS.values()] +
             [(names[0], "histogram") for names in _vllm_metrics.HISTOGRAMS.values()])
LEGACY = [name for group in (_vllm_metrics.GAUGES, _vllm_metrics.COUNTERS, _vllm_metrics.HISTOGRAMS)
          for names in group.values() for name in names[1:]]
LABELS = {"engine": "0", "model_name": "tiny"}
# What the monitoring role's rules may read: vLLM's families, the HTTP server's, the process's.
MONITORED = ("vllm:", "http_request", "process_")


def test_metrics_are_prometheus_text_1_0(main):
    response, _families = metrics(main)
    assert response.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_metric_the_collection_reads_exists_with_its_type_and_labels(main, name):
    family = metrics(main)[1][name]
    assert family.type == KINDS[name]
    for sample in family.samples:
        labels = dict((k, v) for k, v in sample.labels.items() if k != "le")
        assert labels == LABELS, sample


def test_legacy_names_are_gone(main):
    families = metrics(main)[1]
    assert [name for name in LEGACY if name in families] == []


def test_request_success_has_every_finished_reason_from_the_start(main):
    family = metrics(main)[1]["vllm:request_success"]
    assert family.type == "counter"
    reasons = sorted(s.labels["finished_reason"] for s in family.samples if s.name.endswith("_total"))
    assert reasons == sorted(["stop", "length", "abort", "error", "repetition"])


def test_counters_move_with_traffic(main):
    before = metrics(main)[1]
    out = generate(main, "/v1/completions", {"model": "tiny", "prompt": "one two three", "max_tokens": 7}, KEYS[0])
    prompt_tokens = out.json()["usage"]["prompt_tokens"]

    def moved():
        after = metrics(main)[1]
        return after if total(after, "vllm:request_success", finished_reason="length") > total(
            before, "vllm:request_success", finished_reason="length") else None

    after = wait_until(moved)
    assert after, "request_success{finished_reason=length} did not move"

    def delta(name, suffix="_total", **labels):
        return total(after, name, suffix, **labels) - total(before, name, suffix, **labels)

    assert delta("vllm:request_success", finished_reason="length") == 1
    assert delta("vllm:generation_tokens") == 7
    assert delta("vllm:prompt_tokens") == prompt_tokens
    assert delta("vllm:prefix_cache_queries") == prompt_tokens
    for name in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                 "vllm:request_time_per_output_token_seconds", "vllm:request_queue_time_seconds"):
        assert delta(name, "_count") == 1, name
    assert delta("vllm:inter_token_latency_seconds", "_count") == 6


def shape(families, prefixes=("vllm:", "http_requests", "process_start_time_seconds")):
    """name -> (type, label names, histogram buckets) of the families the collection and its alert rules read."""
    found = {}
    for name, family in families.items():
        if name.startswith(prefixes):
            found[name] = (family.type, sorted(set(k for s in family.samples for k in s.labels if k != "le")),
                           sorted(set(s.labels["le"] for s in family.samples if "le" in s.labels)))
    return found


def http_counts(families):
    family = families.get("http_requests")
    return {} if family is None else {(s.labels["handler"], s.labels["method"], s.labels["status"]): s.value
                                      for s in family.samples if s.name == "http_requests_total"}


def test_http_requests_are_counted_as_vllms_instrumentator_counts_them(main):
    """The error-rate and availability alerts divide these counters: what counts, under which handler and status."""
    before = http_counts(metrics(main)[1])
    generate(main, "/v1/completions", {"model": "tiny", "prompt": "one two", "max_tokens": 2}, KEYS[0])
    request(main.url + "/v1/completions", "POST", {"model": "no-such-model", "prompt": "one"}, KEYS[0])
    request(main.url + "/v1/models", key=KEYS[0])
    request(main.url + "/v1/models")                      # 401: the API-key check answers first, uncounted
    request(main.url + "/v1/no-such-route", key=KEYS[0])  # no route: handler "none"
    for path in ("/health", "/version", "/ping", "/load"):
        request(main.url + path)                          # excluded handlers
    expected = {("/v1/completions", "POST", "2xx"): 1, ("/v1/completions", "POST", "4xx"): 1,
                ("/v1/models", "GET", "2xx"): 1, ("none", "GET", "4xx"): 1}

    def moved():
        after = http_counts(metrics(main)[1])
        delta = {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}
        return delta if delta == expected else None

    assert wait_until(moved) == expected, http_counts(metrics(main)[1])


def test_process_start_time_is_exported(main):
    family = metrics(main)[1]["process_start_time_seconds"]
    assert family.type == "gauge"
    assert 1.7e9 < family.samples[0].value <= time.time()


@pytest.mark.both_servers
def test_every_metric_the_emulator_exports_is_on_the_real_server(real_main, emulator_main):
    real, emulated = shape(metrics(real_main)[1]), shape(metrics(emulator_main)[1])
    assert sorted(set(emulated) - set(real)) == []
    assert dict((name, real[name]) for name in emulated) == emulated


def test_the_monitoring_fixture_is_what_the_real_server_exports(real_main):
    """tests/monitoring holds the alert rules to a capture of the real server's /metrics: it must still be what the
    real server exports (names, types, label names, buckets), or the rules are checked against a stale list."""
    from prometheus_client.parser import text_string_to_metric_families
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "monitoring", "fixtures",
                        "real-vllm-0.32.0.metrics")
    with open(path) as handle:
        captured = shape({f.name: f for f in text_string_to_metric_families(handle.read())}, MONITORED)
    # The capture was taken after a completion, a 404 and a 400; a completion makes the live server's HTTP families
    # and histograms carry samples too.
    generate(real_main, "/v1/completions", {"model": "tiny", "prompt": "one two", "max_tokens": 3}, KEYS[0])
    live = shape(metrics(real_main)[1], MONITORED)
    assert sorted(set(live) ^ set(captured)) == []
    assert {name: live[name][0] for name in captured} == {name: shape[0] for name, shape in captured.items()}
    assert {name: live[name][2] for name in captured} == {name: shape[2] for name, shape in captured.items()}
    assert {name: live[name][1] for name in captured} == {name: shape[1] for name, shape in captured.items()}
