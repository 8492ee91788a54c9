"""/metrics: the content type, the metrics the collection reads (plugins/module_utils/_vllm_metrics.py) with their
types and labels, request_success's finished_reason, counters that move with traffic; and every metric the
emulator exports exists on the real server with the same type, labels and buckets."""

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
