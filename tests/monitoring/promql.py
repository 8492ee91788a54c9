"""What the tests of rules and dashboards share: Debian's Prometheus tools, the role's rules rendered by its own
task file, and which metric names a PromQL expression selects and which ones the fleet really exports."""
import glob
import json
import os
import re
import subprocess

import pytest
import yaml

from monitoring_sources import (blackbox_probe_metric_names, collector_metric_names, dcgm_metric_names,
                                gateway_metric_names, node_exporter_metric_names, vllm_metric_names,
                                watchdog_metric_names)
from renders import case_hosts, failure as host_failure, register, run_playbook, shared, succeeded

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = os.path.join(ROOT, "build", "tools", "bin")
# Series Prometheus writes itself for every target.
PROMETHEUS_SERIES = {"up"}
PROMQL_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "inf", "nan"}


def tool(name):
    path = os.path.join(TOOLS, name)
    if not os.access(path, os.X_OK):
        pytest.fail("%s is missing: run tools/fetch-prometheus-tools.sh (make fast and make test do)" % path)
    return path


def render(dest, extra_vars=None):
    """Runs the role's rules task into `dest`; returns the CompletedProcess."""
    args = {"rules_dir": str(dest), "promtool": tool("promtool")}
    args.update(extra_vars or {})
    return subprocess.run(["ansible-playbook", os.path.join(HERE, "render-rules.yml"), "-i", "localhost,",
                           "-e", json.dumps(args)], capture_output=True, text=True, timeout=300, check=False)


def render_cases(tmp, cases):
    """What render() does for each of `cases` ({name: options}), in one ansible-playbook run: one host per case,
    named after it, with its options (read by the playbook's include_vars, so that they override the role's
    defaults as -e does in render()) and tmp/NAME/rules.d as its rules_dir. Returns the run's returncode, stdout
    and stderr."""
    hosts = case_hosts(tmp, cases, lambda case: {"rules_dir": str(case / "rules.d")})
    return run_playbook(os.path.join(HERE, "render-rules.yml"), {"all": {"hosts": hosts}}, tmp / "inventory.yml",
                        {"promtool": tool("promtool")})


# The option sets whose rules the tests only read, rendered in one run for the whole session.
WITH_DCGM = {"monitoring_gpu_metrics": "dcgm", "monitoring_dcgm_version": "3.3.9"}
VARIANTS = {
    "defaults": {},
    "dcgm": WITH_DCGM,
    "dcgm-3.2.6": {"monitoring_gpu_metrics": "dcgm", "monitoring_dcgm_version": "3.2.6"},
    "threshold": {"monitoring_alert_thresholds": {"vllm_requests_waiting": 120}},
}


RULES_VARIANTS = register("rules-variants", lambda tmp: render_cases(tmp, VARIANTS), 16)


def rendered_variant(tmp_path_factory, name):
    """The rules directory of VARIANTS[name], rendered once for the session with the others (the test fails here
    unless it rendered)."""
    directory, result = shared(tmp_path_factory, RULES_VARIANTS)
    succeeded(result, name)
    return directory / name / "rules.d"


# Settings the role refuses (test_rules.py's), and dcgm without its version (test_dcgm.py's): rendered in one run
# for the whole session, one host per case, caseN for REFUSED[N].
BAD_SETTINGS = [
    ({"monitoring_alert_thresholds": {"vllm_requests_waiting": "lots"}}, "monitoring_alert_thresholds"),
    ({"monitoring_alert_thresholds": {"gpu_temprature_celsius": 80}}, "monitoring_alert_thresholds"),
    ({"monitoring_alert_thresholds": {"vllm_error_ratio": 10}}, "monitoring_alert_thresholds"),
    ({"monitoring_alert_thresholds": {"vllm_ttft_p99_seconds": -1}}, "monitoring_alert_thresholds"),
    ({"monitoring_alert_thresholds": {"vllm_kv_cache_usage_ratio": True}}, "monitoring_alert_thresholds"),
    ({"monitoring_alert_gpu_collector_stale_seconds": "2m"}, "monitoring_alert_gpu_collector_stale_seconds"),
    ({"monitoring_slo_latency": [{"name": "p95", "threshold_seconds": "10", "objective": 0.95}]},
     "monitoring_slo_latency"),
    ({"monitoring_slo_latency": [{"name": "p95", "threshold_seconds": 7, "objective": 0.95}]}, "threshold_seconds"),
    ({"monitoring_slo_latency": [{"name": "p95\n- alert: X", "threshold_seconds": 10, "objective": 0.95}]},
     "monitoring_slo_latency"),
    ({"monitoring_slo_latency": [{"name": "p95\n", "threshold_seconds": 10, "objective": 0.95}]},
     "monitoring_slo_latency"),
    ({"monitoring_slo_availability": 99.9}, "monitoring_slo_availability"),
]
DCGM_WITHOUT_VERSION = ({"monitoring_gpu_metrics": "dcgm"}, "monitoring_dcgm_version")
REFUSED = BAD_SETTINGS + [DCGM_WITHOUT_VERSION]


RULES_REFUSALS = register("rules-refusals", lambda tmp: render_cases(
    tmp, {"case%d" % index: options for index, (options, _named) in enumerate(REFUSED)}), 2)


def refused(tmp_path_factory, extra, named):
    """For REFUSED's case (extra, named): the run's returncode, stdout and stderr, what Ansible printed for the
    case's host's failure (the test fails here unless the host failed) and the rules_dir it was given."""
    directory, result = shared(tmp_path_factory, RULES_REFUSALS)
    host = "case%d" % REFUSED.index((extra, named))
    return result, host_failure(result, host), directory / host / "rules.d"


def rules_of(directory):
    for path in sorted(glob.glob(os.path.join(str(directory), "*.rules.yml"))):
        with open(path) as handle:
            for group in yaml.safe_load(handle)["groups"]:
                yield from group["rules"]


def selected_metrics(expr):
    """The metric names a PromQL expression selects (not functions, keywords, label names or durations)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w:.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def exported_metric_names():
    """Every name the real exporters export, and what Prometheus adds itself."""
    return (vllm_metric_names() | collector_metric_names(tool) | node_exporter_metric_names(tool)
            | blackbox_probe_metric_names(tool) | gateway_metric_names() | dcgm_metric_names()
            | watchdog_metric_names(tool) | PROMETHEUS_SERIES)
