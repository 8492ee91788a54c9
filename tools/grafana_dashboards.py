#!/usr/bin/env python
"""Writes the monitoring role's Grafana dashboards (roles/monitoring/files/grafana/dashboards/*.json) from the panel
lists below, so the layout, ids and datasource references of every panel come out consistent.

  tools/grafana_dashboards.py            rewrite the dashboards
  tools/grafana_dashboards.py --check    exit 1 and name the dashboards that are out of date (used by the tests)

Every query here is run against the lab's Prometheus after traffic (tests/integration/test_monitoring_lab.py) and
must return series there; names must be ones the real exporters export (tests/monitoring/test_dashboards.py).
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "roles", "monitoring", "files", "grafana", "dashboards")
# The uid the role's datasource provisioning file gives Prometheus (templates/grafana/datasource.yml.j2).
DATASOURCE = {"type": "prometheus", "uid": "inferops-prometheus"}
SCHEMA_VERSION = 39
FULL = 24  # Grafana's grid is 24 columns wide

VLLM = 'job="vllm",host=~"$host",vllm_instance=~"$instance"'
API = VLLM + ',handler=~"/v1/.+"'
RATE = "[$__rate_interval]"
BY_INSTANCE = "sum by (host, vllm_instance)"
INSTANCE_LEGEND = "{{host}} {{vllm_instance}}"
GPU = 'host="$host",gpu=~"$gpu"'


def target(expr, legend=""):
    return {"expr": expr, "legendFormat": legend}


def quantiles(histogram, selector):
    return [target("histogram_quantile(%s, sum by (le) (rate(%s_bucket{%s}%s)))" % (q, histogram, selector, RATE),
                   "p%d" % round(float(q) * 100)) for q in ("0.5", "0.95", "0.99")]


def stat(title, unit, targets, description, width=6, thresholds=None):
    return {"type": "stat", "title": title, "description": description, "unit": unit, "targets": targets,
            "width": width, "height": 4, "thresholds": thresholds}


def series(title, unit, targets, description, width=12, thresholds=None):
    return {"type": "timeseries", "title": title, "description": description, "unit": unit, "targets": targets,
            "width": width, "height": 8, "thresholds": thresholds}


def red_above(value):
    return [{"color": "green", "value": None}, {"color": "red", "value": value}]


def red_below(value):
    return [{"color": "red", "value": None}, {"color": "green", "value": value}]


FLEET = {
    "uid": "inferops-vllm-fleet",
    "title": "inferops.vllm / Fleet overview",
    "description": "Every vLLM instance of the fleet: availability, traffic, errors, latency, queue and KV cache.",
    "variables": [
        ("host", 'label_values(up{job="vllm"}, host)', True),
        ("instance", 'label_values(up{job="vllm",host=~"$host"}, vllm_instance)', True),
    ],
    "panels": [
        stat("Instances up", "none", [target("sum(up{%s})" % VLLM)],
             "Instances Prometheus scrapes successfully."),
        stat("Instances down", "none", [target("count(up{%s} == 0) or vector(0)" % VLLM)],
             "Instances whose /metrics does not answer (alert VllmInstanceDown).", thresholds=red_above(1)),
        stat("API requests/s", "reqps", [target("sum(rate(http_requests_total{%s}%s))" % (API, RATE))],
             "Requests to /v1 endpoints, every status."),
        stat("5xx share", "percentunit",
             [target('(sum(rate(http_requests_total{%s,status="5xx"}%s)) or vector(0))'
                     " / sum(rate(http_requests_total{%s}%s))" % (API, RATE, API, RATE))],
             "Share of /v1 requests answered 5xx (alert VllmErrorRateHigh).", thresholds=red_above(0.1)),
        stat("Error budget left (30 d)", "percentunit",
             [target("inferops_slo:error_budget_remaining:ratio30d", "{{slo}}")],
             "Share of each SLO's 30-day error budget not yet spent, fleet-wide (1 = untouched, below 0 = the "
             "objective is missed). Recorded by the role's inferops_slo rules.", width=FULL, thresholds=red_below(0.25)),
        series("API requests/s by instance", "reqps",
               [target("%s (rate(http_requests_total{%s}%s))" % (BY_INSTANCE, API, RATE), INSTANCE_LEGEND)],
               "Requests to /v1 endpoints per instance."),
        series("API errors/s by status", "reqps",
               [target('sum by (host, vllm_instance, status) (rate(http_requests_total{%s,status=~"4xx|5xx"}%s))'
                       % (API, RATE), "{{host}} {{vllm_instance}} {{status}}")],
               "4xx are the clients' mistakes (bad model name, bad key); 5xx are the server's."),
        series("Finished requests/s by reason", "reqps",
               [target("sum by (host, vllm_instance, finished_reason) (rate(vllm:request_success_total{%s}%s))"
                       % (VLLM, RATE), "{{host}} {{vllm_instance}} {{finished_reason}}")],
               "Why the engine finished requests: stop, length, abort (client gone or shutdown), error."),
        series("Generated and prompt tokens/s", "none",
               [target("%s (rate(vllm:generation_tokens_total{%s}%s))" % (BY_INSTANCE, VLLM, RATE),
                       INSTANCE_LEGEND + " generated"),
                target("%s (rate(vllm:prompt_tokens_total{%s}%s))" % (BY_INSTANCE, VLLM, RATE),
                       INSTANCE_LEGEND + " prompt")],
               "Throughput of the engines. Generation at 0 while requests run is a hung engine (VllmHung)."),
        series("Time to first token", "s", quantiles("vllm:time_to_first_token_seconds", VLLM),
               "Fleet-wide percentiles (alert VllmTtftP99High)."),
        series("Time per output token", "s", quantiles("vllm:request_time_per_output_token_seconds", VLLM),
               "Fleet-wide percentiles of each request's mean time per output token (alert VllmTpotP99High)."),
        series("End-to-end request latency", "s", quantiles("vllm:e2e_request_latency_seconds", VLLM),
               "Fleet-wide percentiles (alert VllmE2eLatencyP95High and the latency SLOs)."),
        series("Requests running and waiting", "none",
               [target("%s (vllm:num_requests_running{%s})" % (BY_INSTANCE, VLLM), INSTANCE_LEGEND + " running"),
                target("%s (vllm:num_requests_waiting{%s})" % (BY_INSTANCE, VLLM), INSTANCE_LEGEND + " waiting")],
               "A waiting queue that grows is a fleet short of capacity (alert VllmQueueBacklog)."),
        series("KV cache usage", "percentunit",
               [target("%s (vllm:kv_cache_usage_perc{%s})" % (BY_INSTANCE, VLLM), INSTANCE_LEGEND)],
               "Share of the KV cache blocks in use (alert VllmKvCacheNearlyFull).", thresholds=red_above(0.95)),
        series("Preemptions/s", "none",
               [target("%s (rate(vllm:num_preemptions_total{%s}%s))" % (BY_INSTANCE, VLLM, RATE), INSTANCE_LEGEND)],
               "Requests pushed out of the KV cache to be recomputed (alert VllmPreemptions)."),
        series("Engine restarts in the last hour", "none",
               [target("changes(process_start_time_seconds{%s}[1h])" % VLLM, INSTANCE_LEGEND)],
               "Each change of the server's start time is a restart (alert VllmCrashLooping)."),
    ],
}

GPUS = {
    "uid": "inferops-gpu-host",
    "title": "inferops.vllm / GPUs of a host",
    "description": "The GPUs of one host as the collection's collector reads them through NVML.",
    "variables": [
        ("host", "label_values(inferops_gpu_devices, host)", False),
        ("gpu", 'label_values(inferops_gpu_up{host="$host"}, gpu)', True),
    ],
    "panels": [
        stat("GPUs answering", "none", [target('sum(inferops_gpu_up{host="$host"})')],
             "GPUs NVML reads without error (alert GpuLost)."),
        stat("GPUs the driver lists", "none", [target('inferops_gpu_devices{host="$host"}')],
             "Fewer than the host was built with: alert GpuMissing."),
        stat("Collector age", "s",
             [target('time() - inferops_gpu_collector_last_run_timestamp_seconds{host="$host"}')],
             "Seconds since the collector last wrote its file (alert GpuMetricsCollectorFailing).",
             thresholds=red_above(120)),
        stat("Xid errors in the last hour", "none",
             [target('sum(increase(inferops_gpu_xid_errors_total{host="$host"}[1h])) or vector(0)')],
             "Xid events the driver logged (alert GpuXidError).", thresholds=red_above(1)),
        series("Utilization", "percentunit", [target("inferops_gpu_utilization_ratio{%s}" % GPU, "GPU {{gpu}}")],
               "Share of time a kernel ran (alert GpuUnderused when a GPU serving vLLM idles)."),
        series("Memory used", "bytes",
               [target("inferops_gpu_memory_used_bytes{%s}" % GPU, "GPU {{gpu}} used"),
                target("inferops_gpu_memory_total_bytes{%s}" % GPU, "GPU {{gpu}} total")],
               "vLLM reserves --gpu-memory-utilization of each GPU at start (alert GpuMemoryNearlyFull)."),
        series("Temperature", "celsius", [target("inferops_gpu_temperature_celsius{%s}" % GPU, "GPU {{gpu}}")],
               "Alert GpuTemperatureHigh at 85 C.", thresholds=red_above(85)),
        series("Power", "watt",
               [target("inferops_gpu_power_usage_watts{%s}" % GPU, "GPU {{gpu}} draw"),
                target("inferops_gpu_power_limit_watts{%s}" % GPU, "GPU {{gpu}} limit")],
               "Draw against the enforced limit."),
        series("Uncorrected ECC errors (volatile)", "none",
               [target("inferops_gpu_ecc_uncorrected_volatile_errors_total{%s}" % GPU, "GPU {{gpu}}")],
               "Since the last driver load; any is a reason to drain the GPU (alert GpuUncorrectedEccErrors)."),
        series("GPUs with clocks held back, by reason", "none",
               [target("sum by (reason) (inferops_gpu_throttle_active{%s})" % GPU, "{{reason}}")],
               "Reasons NVML gives for clocks below their maximum; gpu_idle is normal on an idle GPU."),
    ],
}

GW = 'job="gateway",host=~"$host"'
EDGE = GW + ',proxy="vllm_gateway"'  # the gateway role's frontend (roles/gateway/templates/haproxy.cfg.j2)
POOL = GW + ',proxy="vllm"'  # its backend of vLLM instances
SERVER_LEGEND = "{{host}} {{server}}"

GATEWAY = {
    "uid": "inferops-gateway",
    "title": "inferops.vllm / Gateways",
    "description": "The gateways (HAProxy on 7654) in front of the instances: rotation, traffic at the edge, "
                   "refused keys, latency and aborted transfers. Scraped from each gateway's /metrics (job gateway).",
    "variables": [
        ("host", 'label_values(up{job="gateway"}, host)', True),
    ],
    "panels": [
        stat("Gateways up", "none", [target("sum(up{%s})" % GW)],
             "Gateways whose /metrics answers Prometheus."),
        stat("Instances in rotation", "none",
             [target("sum by (host) (haproxy_backend_active_servers{%s})" % POOL, "{{host}}")],
             "Instances that pass their health check (and their watchdog's agent check); 0 on a gateway is "
             "alert GatewayNoBackendInRotation.", thresholds=red_below(1)),
        stat("Requests/s at the edge", "reqps",
             [target("sum(rate(haproxy_frontend_http_requests_total{%s}%s))" % (EDGE, RATE))],
             "Every request the gateways received, refused ones included."),
        stat("4xx share at the edge", "percentunit",
             [target('(sum(rate(haproxy_frontend_http_responses_total{%s,code="4xx"}%s)) or vector(0))'
                     " / sum(rate(haproxy_frontend_http_responses_total{%s}%s))" % (EDGE, RATE, EDGE, RATE))],
             "Mostly requests without a valid key (401 at the edge); a jump after a key rotation is clients "
             "still on a retired key.", thresholds=red_above(0.1)),
        series("Responses/s at the edge by class", "reqps",
               [target("sum by (host, code) (rate(haproxy_frontend_http_responses_total{%s}%s))" % (EDGE, RATE),
                       "{{host}} {{code}}")],
               "What the clients got: 2xx, 4xx (401 for a missing or retired key), 5xx (503 when no instance "
               "is in rotation and there is no backup)."),
        series("Requests/s by backend", "reqps",
               [target("sum by (host, proxy) (rate(haproxy_backend_http_requests_total{%s}%s))" % (GW, RATE),
                       "{{host}} {{proxy}}")],
               "vllm is the instances; backup (when one is configured) takes the traffic only while no instance "
               "is in rotation."),
        series("Instances by state", "none",
               [target("sum by (host, state) (haproxy_server_status{%s})" % POOL, "{{host}} {{state}}")],
               "UP is in rotation; DOWN failed its health checks or its watchdog answered down; DRAIN is a runbook "
               "letting its requests finish before a stop; MAINT was taken out by hand. DOWN or MAINT for long: alert "
               "GatewayBackendOutOfRotation."),
        series("Requests in flight by instance", "none",
               [target("haproxy_server_current_sessions{%s}" % POOL, SERVER_LEGEND)],
               "Open requests per instance; the gateway balances by least connections, so they stay level."),
        series("Response time by instance", "s",
               [target("haproxy_server_response_time_average_seconds{%s}" % POOL, SERVER_LEGEND + " headers"),
                target("haproxy_server_total_time_average_seconds{%s}" % POOL, SERVER_LEGEND + " whole")],
               "HAProxy's averages over each instance's last 1024 requests: time to the response headers (for a "
               "stream, close to the time to first token) and to the end of the response."),
        series("Queued at the gateway", "none",
               [target("haproxy_backend_current_queue{%s}" % POOL, "{{host}}")],
               "Requests waiting for an instance; they wait at most 5 s (timeout queue) before a 503."),
        series("Failed checks and retries/s", "none",
               [target("sum by (host, server) (rate(haproxy_server_check_failures_total{%s}%s))" % (POOL, RATE),
                       SERVER_LEGEND + " failed checks"),
                target("sum by (host) (rate(haproxy_backend_retry_warnings_total{%s}%s))" % (POOL, RATE),
                       "{{host}} retries on another instance")],
               "Health checks an instance failed, and connections retried on another instance after a refusal."),
        series("Aborted transfers/s", "none",
               [target("sum by (host) (rate(haproxy_backend_client_aborts_total{%s}%s))" % (POOL, RATE),
                       "{{host}} by the client"),
                target("sum by (host) (rate(haproxy_backend_server_aborts_total{%s}%s))" % (POOL, RATE),
                       "{{host}} by the instance")],
               "Transfers cut before their end; by the instance is a stream the server broke off (a restart "
               "without a drain, an engine death)."),
    ],
}


def panel_json(panel, panel_id, x, y):
    defaults = {"unit": panel["unit"]}
    if panel["thresholds"]:
        defaults["thresholds"] = {"mode": "absolute", "steps": panel["thresholds"]}
        if panel["type"] == "stat":
            defaults["color"] = {"mode": "thresholds"}
    result = {
        "id": panel_id, "type": panel["type"], "title": panel["title"], "description": panel["description"],
        "datasource": DATASOURCE, "gridPos": {"h": panel["height"], "w": panel["width"], "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [dict(refId=chr(ord("A") + index), datasource=DATASOURCE, range=True, **query)
                    for index, query in enumerate(panel["targets"])],
    }
    if panel["type"] == "stat":
        result["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                             "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    else:
        result["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                             "tooltip": {"mode": "multi", "sort": "desc"}}
    return result


def variable_json(name, query, include_all):
    return {"name": name, "label": name, "type": "query", "datasource": DATASOURCE, "definition": query,
            "query": {"query": query, "refId": "%s-variable" % name}, "refresh": 2, "sort": 1,
            "multi": include_all, "includeAll": include_all, "allValue": ".+" if include_all else None,
            "current": {}, "options": [], "hide": 0}


def dashboard_json(spec):
    panels, x, y, row_height = [], 0, 0, 0
    for panel_id, panel in enumerate(spec["panels"], start=1):
        if x + panel["width"] > FULL:
            x, y, row_height = 0, y + row_height, 0
        panels.append(panel_json(panel, panel_id, x, y))
        x, row_height = x + panel["width"], max(row_height, panel["height"])
    return {
        "uid": spec["uid"], "title": spec["title"], "description": spec["description"], "tags": ["inferops"],
        "editable": False, "graphTooltip": 1, "schemaVersion": SCHEMA_VERSION, "version": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "timezone": "",
        "templating": {"list": [variable_json(*variable) for variable in spec["variables"]]},
        "annotations": {"list": []}, "links": [], "panels": panels,
    }


def rendered():
    """{file name: JSON text} of every dashboard."""
    return {"%s.json" % spec["uid"]: json.dumps(dashboard_json(spec), indent=2, sort_keys=True) + "\n"
            for spec in (FLEET, GPUS, GATEWAY)}


def main(argv):
    check = argv[1:] == ["--check"]
    stale = []
    for name, text in sorted(rendered().items()):
        path = os.path.join(OUT, name)
        current = open(path).read() if os.path.exists(path) else None
        if current == text:
            continue
        stale.append(name)
        if not check:
            os.makedirs(OUT, exist_ok=True)
            with open(path, "w") as handle:
                handle.write(text)
    if check and stale:
        print("dashboards out of date: %s (run tools/grafana_dashboards.py)" % ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
