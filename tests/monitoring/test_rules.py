"""The monitoring role's alert and recording rules, rendered by the role's own task file and checked by Debian's
promtool (tools/fetch-prometheus-tools.sh puts it in build/tools/bin):

- `promtool test rules` runs every case in tests/monitoring/rules; each alert must have a case where it fires and
  one where it stays silent, and each alert with a `for:` a silent case before the firing one;
- every metric a rule selects is exported by the real vLLM (its /metrics, captured from the real-vLLM lab), by the
  collection's GPU collector, by Debian's node exporter, by Debian's blackbox exporter or by NVIDIA's dcgm-exporter
  with the role's counters file (fixtures/dcgm-exporter.metrics);
- every alert names a runbook or docs section that exists;
- bad thresholds are refused before anything is written.
"""
import glob
import os
import re
import shutil
import subprocess

import pytest
import yaml

from monitoring_sources import collector_metric_names, node_exporter_text, vllm_histogram_buckets
from promql import (BAD_SETTINGS, HERE, ROOT, VARIANTS, WITH_DCGM, exported_metric_names, refused,
                    rendered_variant, rules_of, selected_metrics, tool)

RULE_TESTS = os.path.join(HERE, "rules")
ROLE = os.path.join(ROOT, "roles", "monitoring")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Every rule file, the dcgm-exporter mapping included (loaded only with monitoring_gpu_metrics dcgm; the
    others do not depend on it): each check below covers it too. Rendered once for the session (promql.py)."""
    assert VARIANTS["dcgm"] == WITH_DCGM == {"monitoring_gpu_metrics": "dcgm", "monitoring_dcgm_version": "3.3.9"}
    dest = rendered_variant(tmp_path_factory, "dcgm")
    files = sorted(glob.glob(os.path.join(str(dest), "*.rules.yml")))
    assert [os.path.basename(f) for f in files] == ["inferops-dcgm.rules.yml", "inferops-gateway.rules.yml",
                                                    "inferops-gpu.rules.yml", "inferops-slo.rules.yml",
                                                    "inferops-vllm.rules.yml"]
    return dest


def alert_rules(directory):
    return [rule for rule in rules_of(directory) if "alert" in rule]


def test_promtool_checks_every_rule_file(rendered):
    for path in sorted(glob.glob(os.path.join(str(rendered), "*.rules.yml"))):
        result = subprocess.run([tool("promtool"), "check", "rules", path], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def strip_annotations(source, dest):
    """The unit tests of behaviour compare labels only: promtool compares annotations too, whole, so the cases
    that check the annotations' text run on the full files (rules/annotations.test.yml)."""
    os.makedirs(dest)
    for path in glob.glob(os.path.join(str(source), "*.rules.yml")):
        with open(path) as handle:
            document = yaml.safe_load(handle)
        for group in document["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
        with open(os.path.join(dest, os.path.basename(path)), "w") as handle:
            yaml.safe_dump(document, handle, sort_keys=False)


@pytest.fixture(scope="module")
def unit_test_dir(rendered, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("promtool-tests"))
    shutil.copytree(str(rendered), os.path.join(work, "full"))
    strip_annotations(rendered, os.path.join(work, "bare"))
    for path in glob.glob(os.path.join(RULE_TESTS, "*.test.yml")):
        shutil.copy(path, work)
    return work


def test_promtool_unit_tests_pass(unit_test_dir):
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(unit_test_dir, "*.test.yml")))
    assert files, "no promtool test files in %s" % RULE_TESTS
    result = subprocess.run([tool("promtool"), "test", "rules"] + files, cwd=unit_test_dir, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


def alert_cases():
    """(alertname, group index, eval seconds, fires) of every alert case in the promtool test files."""
    cases = []
    for path in sorted(glob.glob(os.path.join(RULE_TESTS, "*.test.yml"))):
        with open(path) as handle:
            document = yaml.safe_load(handle)
        for index, group in enumerate(document["tests"]):
            for case in group.get("alert_rule_test") or []:
                cases.append((case["alertname"], "%s#%d" % (os.path.basename(path), index),
                              duration_seconds(case["eval_time"]), bool(case.get("exp_alerts"))))
    return cases


def duration_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(text)):
        total += int(number) * units[unit]
    return total


def test_every_alert_fires_in_one_case_and_stays_silent_in_another(rendered):
    cases = alert_cases()
    alerts = {rule["alert"]: rule for rule in alert_rules(rendered)}
    fired = {name for name, _group, _at, fires in cases if fires}
    silent = {name for name, _group, _at, fires in cases if not fires}
    assert sorted(set(alerts) - fired) == [], "alerts with no case where they fire"
    assert sorted(set(alerts) - silent) == [], "alerts with no case where they stay silent"
    assert sorted({name for name, _g, _a, _f in cases} - set(alerts)) == [], "cases for alerts that do not exist"
    # The `for:` edge: a case in the same test group where the alert is still silent before it fires.
    missing_edge = []
    for name, rule in alerts.items():
        if not rule.get("for"):
            continue
        last_firing = {}
        for case_name, group, at, fires in cases:
            if case_name == name and fires:
                last_firing[group] = max(at, last_firing.get(group, at))
        silent_before = [group for case_name, group, at, fires in cases
                         if case_name == name and not fires and group in last_firing and at < last_firing[group]]
        if not silent_before:
            missing_edge.append(name)
    assert missing_edge == [], "alerts with a for: and no silent case before the firing one in the same group"


def test_every_alert_names_a_runbook_that_exists(rendered):
    with open(os.path.join(ROOT, "docs", "monitoring.md")) as handle:
        anchors = {re.sub(r"[^a-z0-9 _-]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                   for line in handle if line.startswith("#")}
    problems = []
    for rule in alert_rules(rendered):
        runbook = rule.get("annotations", {}).get("runbook", "")
        if not runbook:
            problems.append("%s: no runbook annotation" % rule["alert"])
        for part in filter(None, (p.strip() for p in runbook.split(";"))):
            path, _hash, anchor = part.partition("#")
            if not os.path.isfile(os.path.join(ROOT, path)):
                problems.append("%s: %s does not exist" % (rule["alert"], path))
            elif anchor and anchor not in anchors:
                problems.append("%s: %s has no section #%s" % (rule["alert"], path, anchor))
        if not rule.get("annotations", {}).get("summary"):
            problems.append("%s: no summary" % rule["alert"])
        if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            problems.append("%s: severity is not critical, warning or info" % rule["alert"])
    assert problems == []


def test_selected_metrics_parser():
    assert selected_metrics('sum by (job, le) (rate(vllm:x_bucket{job="vllm",le=~"10(\\\\.0)?"}[5m])) > 0.5'
                            ' and on (host) up offset 15m unless time() - y > 1e9') == {"vllm:x_bucket", "up", "y"}


def test_rules_select_only_metrics_that_real_exporters_export(rendered):
    recorded = {rule["record"] for rule in rules_of(rendered) if "record" in rule}
    exported = exported_metric_names() | recorded
    unknown = {}
    for rule in rules_of(rendered):
        for name in selected_metrics(rule["expr"]) - exported:
            unknown.setdefault(name, []).append(rule.get("alert") or rule.get("record"))
    assert unknown == {}, "rules select metrics no exporter exports"


def test_the_node_exporter_reads_the_collectors_file_whole():
    text = node_exporter_text(tool)
    assert re.search(r"^node_textfile_scrape_error 0$", text, re.M), text[-2000:]
    assert collector_metric_names(tool) == collector_metric_names()


def test_latency_buckets_are_the_real_servers(rendered):
    with open(os.path.join(ROLE, "vars", "main.yml")) as handle:
        declared = yaml.safe_load(handle)["monitoring_vllm_e2e_latency_buckets"]
    assert [float(b) for b in declared] == vllm_histogram_buckets("vllm:e2e_request_latency_seconds")


def test_a_threshold_is_overridden_by_name_and_the_others_keep_their_defaults(tmp_path_factory):
    assert VARIANTS["threshold"] == {"monitoring_alert_thresholds": {"vllm_requests_waiting": 120}}
    by_name = {rule["alert"]: rule for rule in alert_rules(rendered_variant(tmp_path_factory, "threshold"))}
    assert by_name["VllmQueueBacklog"]["expr"].rstrip().endswith("> 120")
    assert by_name["VllmKvCacheNearlyFull"]["expr"].rstrip().endswith("> 0.95")


@pytest.mark.parametrize("extra, named", BAD_SETTINGS)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path_factory, extra, named):
    result, failure, dest = refused(tmp_path_factory, extra, named)
    assert result["returncode"] != 0
    assert named in failure, failure
    assert "Traceback" not in result["stdout"] + result["stderr"]
    assert not dest.exists()
