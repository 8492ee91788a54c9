"""/metrics: the content type, the metrics the collection reads (plugins/module_utils/_vllm_metrics.py) with their
types and labels, request_success's finished_reason, counters that move with traffic; and every metric the
emulator exports exists on the real server with the same type, labels and buckets; the capture of the real
server's /metrics that tests/monitoring holds the alert rules to is still what the server exports."""

import os

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_metrics
from conformance_setup import KEYS
from vllm_client import generate, metrics, total, wait_until

KINDS = dict([(names[0], "gauge") for names in _vllm_metrics.GAUGES.values()] +
             [(names[0], "counter") for names in _vllm_metrics.COUNTERS.values()] +
             [(names[0], "histogram") for names in _vllm_metrics.HISTOGRAMS.values()])
LEGACY = [name for group in (_vllm_metrics.GAUGES, _vllm_metrics.COUNTERS, _vllm_metrics.HISTOGRAMS)
          for names in group.values() for name in names[1:]]
LABELS = {"engine": "0", "model_name": "tiny"}


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


def shape(families):
    """name -> (type, label names, histogram buckets) of each vLLM family."""
    found = {}
    for name, family in families.items():
        if not name.startswith("vllm:"):
            continue
        labels = sorted(set(k for s in family.samples for k in s.labels if k != "le"))
        buckets = sorted(set(s.labels["le"] for s in family.samples if "le" in s.labels))
        found[name] = (family.type, labels, buckets)
    return found


@pytest.mark.both_servers
def test_every_metric_the_emulator_exports_is_on_the_real_server(real_main, emulator_main):
    real, emulated = shape(metrics(real_main)[1]), shape(metrics(emulator_main)[1])
    assert sorted(set(emulated) - set(real)) == []
    assert dict((name, real[name]) for name in emulated) == emulated


def family_shapes(families, prefixes=("vllm:", "http_request")):
    """name -> (type, label names, histogram buckets) of the families the monitoring rules and dashboards read."""
    found = {}
    for name, family in families.items():
        if name.startswith(prefixes):
            found[name] = (family.type, sorted(set(k for s in family.samples for k in s.labels if k != "le")),
                           sorted(set(s.labels["le"] for s in family.samples if "le" in s.labels)))
    return found


def test_the_monitoring_fixture_is_what_the_real_server_exports(real_main):
    """tests/monitoring holds the alert rules to a capture of the real server's /metrics: it must still be what the
    real server exports (names, types, label names, buckets), or the rules are checked against a stale list."""
    from prometheus_client.parser import text_string_to_metric_families
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "monitoring", "fixtures",
                        "real-vllm-0.32.0.metrics")
    with open(path) as handle:
        captured = family_shapes({f.name: f for f in text_string_to_metric_families(handle.read())})
    # The capture was taken after a completion, a 404 and a 400; a completion makes the live server's HTTP families
    # and histograms carry samples too.
    generate(real_main, "/v1/completions", {"model": "tiny", "prompt": "one two", "max_tokens": 3}, KEYS[0])
    live = family_shapes(metrics(real_main)[1])
    assert sorted(set(live) ^ set(captured)) == []
    assert {name: live[name][0] for name in captured} == {name: shape[0] for name, shape in captured.items()}
    assert {name: live[name][2] for name in captured} == {name: shape[2] for name, shape in captured.items()}
    assert {name: live[name][1] for name in captured} == {name: shape[1] for name, shape in captured.items()}
