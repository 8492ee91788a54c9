"""vLLM 0.33's Prometheus metrics that the collection reads (names, types, labels, buckets), written the way
prometheus_client writes them (a counter's `_created` as its own gauge family), and moved by the traffic the
emulator serves. Every family here exists on the real server with the same type and labels (tests/conformance).
Besides vLLM's own: the process start time (prometheus_client's process collector) and http_requests_total, which
vLLM's prometheus-fastapi-instrumentator counts, as the alert rules read them."""

import re
import threading
import time

PROCESS_START = time.time()

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                         10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
BLOCK_SIZE = 16
# vLLM's Instrumentator(excluded_handlers=...) (vllm/entrypoints/serve/instrumentator/metrics.py): regular
# expressions searched in the handler's path.
HTTP_EXCLUDED_HANDLERS = ("/metrics", "/health", "/load", "/ping", "/version", "/server_info")
HTTP_HELP = "Total number of requests by method, status and handler."

GAUGES = {
    "vllm:num_requests_running": "Number of requests in model execution batches.",
    "vllm:num_requests_waiting": "Number of requests waiting to be processed.",
    "vllm:kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
}
COUNTERS = {
    "vllm:prefix_cache_queries": "Prefix cache queries, in terms of number of queried tokens.",
    "vllm:prefix_cache_hits": "Prefix cache hits, in terms of number of cached tokens.",
    "vllm:num_preemptions": "Cumulative number of preemption from the engine.",
    "vllm:prompt_tokens": "Number of prefill tokens processed.",
    "vllm:generation_tokens": "Number of generation tokens processed.",
}
SUCCESS = ("vllm:request_success", "Count of successfully processed requests.")
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": ("Histogram of time to first token in seconds.", TTFT_BUCKETS),
    "vllm:inter_token_latency_seconds": ("Histogram of inter-token latency in seconds.", TOKEN_LATENCY_BUCKETS),
    "vllm:request_time_per_output_token_seconds": ("Histogram of time_per_output_token_seconds per request.",
                                                   TOKEN_LATENCY_BUCKETS),
    "vllm:e2e_request_latency_seconds": ("Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS),
    "vllm:request_queue_time_seconds": ("Histogram of time spent in WAITING phase for request.",
                                        REQUEST_LATENCY_BUCKETS),
}


class Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value):
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


def _value(number):
    return repr(float(number))


class Metrics:
    def __init__(self, model_name):
        self.labels = 'engine="0",model_name="%s"' % model_name
        self.lock = threading.Lock()
        self.created = time.time()
        self.counters = {name: 0 for name in COUNTERS}
        self.success = {reason: 0 for reason in FINISHED_REASONS}
        self.histograms = {name: Histogram(spec[1]) for name, spec in HISTOGRAMS.items()}
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.cached_blocks = set()
        self.http = {}
        self.http_created = {}

    def count_http(self, path, templated, method, status):
        """One answered request, as the instrumentator counts it: a path that matches no route is handler "none",
        status codes are grouped (2xx, 4xx...), excluded handlers are not counted."""
        if any(re.search(pattern, path) for pattern in HTTP_EXCLUDED_HANDLERS):
            return
        key = (path if templated else "none", method, "%dxx" % (status // 100))
        with self.lock:
            self.http[key] = self.http.get(key, 0) + 1
            self.http_created.setdefault(key, time.time())

    def add(self, name, amount):
        with self.lock:
            self.counters[name] += amount

    def observe(self, name, value):
        with self.lock:
            self.histograms[name].observe(value)

    def finished(self, reason):
        with self.lock:
            self.success[reason] += 1

    def query_prefix_cache(self, token_ids, enabled):
        """Prefix caching in full blocks: a block hits when the same prefix up to its end was computed before."""
        with self.lock:
            self.counters["vllm:prefix_cache_queries"] += len(token_ids)
            if not enabled:
                return
            hit = True
            for end in range(BLOCK_SIZE, len(token_ids) + 1, BLOCK_SIZE):
                key = hash(tuple(token_ids[:end]))
                if hit and key in self.cached_blocks:
                    self.counters["vllm:prefix_cache_hits"] += BLOCK_SIZE
                else:
                    hit = False
                    self.cached_blocks.add(key)

    def render(self, extra_waiting=0, kv_override=None):
        lines = []

        def family(name, kind, help_text):
            lines.append("# HELP %s %s" % (name, help_text))
            lines.append("# TYPE %s %s" % (name, kind))

        def created(name, help_text, label_sets):
            family(name + "_created", "gauge", help_text)
            for labels in label_sets:
                lines.append("%s_created{%s} %s" % (name, labels, _value(self.created)))

        with self.lock:
            kv = self.kv_cache_usage if kv_override is None else kv_override
            values = {"vllm:num_requests_running": self.running,
                      "vllm:num_requests_waiting": self.waiting + extra_waiting, "vllm:kv_cache_usage_perc": kv}
            for name, help_text in GAUGES.items():
                family(name, "gauge", help_text)
                lines.append("%s{%s} %s" % (name, self.labels, _value(values[name])))
            for name, help_text in COUNTERS.items():
                family(name + "_total", "counter", help_text)
                lines.append("%s_total{%s} %s" % (name, self.labels, _value(self.counters[name])))
                created(name, help_text, [self.labels])
            name, help_text = SUCCESS
            family(name + "_total", "counter", help_text)
            reasons = ['engine="0",finished_reason="%s",%s' % (r, self.labels.split(",", 1)[1])
                       for r in FINISHED_REASONS]
            for reason, labels in zip(FINISHED_REASONS, reasons):
                lines.append("%s_total{%s} %s" % (name, labels, _value(self.success[reason])))
            created(name, help_text, reasons)
            for name, (help_text, _buckets) in HISTOGRAMS.items():
                hist = self.histograms[name]
                family(name, "histogram", help_text)
                for bound, count in zip(hist.buckets, hist.counts):
                    lines.append('%s_bucket{%s,le="%s"} %s' % (name, self.labels, bound, _value(count)))
                lines.append('%s_bucket{%s,le="+Inf"} %s' % (name, self.labels, _value(hist.count)))
                lines.append("%s_count{%s} %s" % (name, self.labels, _value(hist.count)))
                lines.append("%s_sum{%s} %s" % (name, self.labels, _value(hist.sum)))
                created(name, help_text, [self.labels])
            family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.")
            lines.append("process_start_time_seconds %s" % _value(PROCESS_START))
            if self.http:
                for suffix, kind, table in (("_total", "counter", self.http), ("_created", "gauge", self.http_created)):
                    family("http_requests" + suffix, kind, HTTP_HELP)
                    for (handler, method, status), value in sorted(table.items()):
                        lines.append('http_requests%s{handler="%s",method="%s",status="%s"} %s'
                                     % (suffix, handler, method, status, _value(value)))
        return "\n".join(lines) + "\n"

    def snapshot(self):
        """What the periodic stats line reports."""
        with self.lock:
            return (self.counters["vllm:prompt_tokens"], self.counters["vllm:generation_tokens"], self.running,
                    self.waiting, self.kv_cache_usage, self.counters["vllm:prefix_cache_queries"],
                    self.counters["vllm:prefix_cache_hits"])
