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
