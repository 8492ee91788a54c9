# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vLLM's /metrics, parsed with prometheus_client's parser, under current and legacy metric names."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import traceback

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    text_string_to_metric_families = None
    PROMETHEUS_IMPORT_ERROR = traceback.format_exc()
else:
    PROMETHEUS_IMPORT_ERROR = None

# Our name -> vLLM's names, newest first (the seeds' runbooks still use the legacy ones).
GAUGES = {
    "num_requests_running": ("vllm:num_requests_running",),
    "num_requests_waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}
COUNTERS = {
    "prompt_tokens_total": ("vllm:prompt_tokens",),
    "generation_tokens_total": ("vllm:generation_tokens",),
    "num_preemptions_total": ("vllm:num_preemptions",),
}
HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds",),
    "tpot": ("vllm:request_time_per_output_token_seconds", "vllm:time_per_output_token_seconds"),
    "e2e": ("vllm:e2e_request_latency_seconds",),
}


class MetricsError(Exception):
    """/metrics cannot be read (not Prometheus text, no vLLM metric, no parser): the only error summarize raises."""


def _families(text):
    if text_string_to_metric_families is None:
        raise MetricsError("the prometheus_client library is not installed on this host "
                           "(pip install prometheus-client, or apt install python3-prometheus-client)")
    try:
        return dict((f.name, f) for f in text_string_to_metric_families(text))
    except Exception as exc:  # pylint: disable=broad-except
        # The parser is another project's code fed a server's text: besides ValueError it raises whatever its
        # indexing hits on malformed lines (IndexError, KeyError...). Every one of them means the same here.
        # The message quotes the server's line whole: whoever reports it masks secrets first, then cuts.
        raise MetricsError("/metrics is not valid Prometheus text: %s" % (str(exc) or type(exc).__name__))


def _finite(value):
    """A number for the report, or None: NaN and infinities are not JSON, and compare false with any threshold."""
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _pick(families, names):
    for name in names:
        family = families.get(name) or families.get(name + "_total")
        if family is not None:
            return name, family
    return None, None


def _sum(family, suffix=""):
    """The sum over the family's label sets; None when a value is not finite (the sum would not be either)."""
    return _finite(sum(s.value for s in family.samples if s.name.endswith(suffix) and not s.name.endswith("_created")))


def quantile(family, q):
    """histogram_quantile over the whole life of the server (all label sets summed); None without samples.

    A bucket without a numeric `le` bound is not a bucket and is left out; a count that is not finite makes the
    quantile unknown (None)."""
    buckets = {}
    for sample in family.samples:
        if sample.name.endswith("_bucket"):
            try:
                bound = float(sample.labels.get("le", "nan"))
            except ValueError:
                continue
            if math.isnan(bound):
                continue
            buckets[bound] = buckets.get(bound, 0.0) + sample.value
    if not buckets or not all(math.isfinite(count) for count in buckets.values()):
        return None
    # Odd bounds (-Inf, 1e308) can still make the interpolation overflow.
    return _finite(_interpolate(buckets, q))


def _interpolate(buckets, q):
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return bounds[-1]


def summarize(text):
    """The numbers vllm_health reports and checks, with the metric name each one came from."""
    families = _families(text)
    summary, sources = {}, {}
    for key, names in GAUGES.items():
        name, family = _pick(families, names)
        summary[key] = None if family is None else _sum(family)
        sources[key] = name
    for key, names in COUNTERS.items():
        name, family = _pick(families, names)
        summary[key] = None if family is None else _sum(family, "_total")
        sources[key] = name
    for key, names in HISTOGRAMS.items():
        name, family = _pick(families, names)
        summary[key + "_p99_s"] = None if family is None else quantile(family, 0.99)
        summary[key + "_count"] = None if family is None else _sum(family, "_count")
        sources[key] = name
    summary["sources"] = sources
    if not any(sources.values()):
        raise MetricsError("/metrics carries no vLLM metric (vllm:*): is this a vLLM server?")
    return summary


def threshold_reasons(summary, thresholds):
    """Why a serving instance counts as degraded (seed 001's alert thresholds)."""
    reasons = []
    checks = (
        ("num_requests_waiting", "max_waiting", "%d requests waiting > %d", 1),
        ("kv_cache_usage", "max_kv_cache_usage", "KV cache %.0f%% used > %.0f%%", 100),
        ("ttft_p99_s", "max_ttft_p99", "TTFT p99 %.2f s > %.2f s", 1),
        ("tpot_p99_s", "max_tpot_p99", "time per output token p99 %.3f s > %.3f s", 1),
    )
    for key, limit_key, text, scale in checks:
        value, limit = summary.get(key), thresholds.get(limit_key)
        if value is not None and limit is not None and value > limit:
            reasons.append(text % (value * scale, limit * scale))
    return reasons
