"""monitoring_gpu_metrics: dcgm, with NVIDIA's dcgm-exporter (not installed by the role):

- the counters file the role writes parses the way dcgm-exporter reads it (Go's encoding/csv, '#' comments, three
  trimmed fields, a known Prometheus type: NVIDIA/dcgm-exporter internal/pkg/counters/counter_config.go and
  variables.go) and enables every field the GPU alerts need, the clock event reasons one named for the DCGM version;
- the fixture of dcgm-exporter's /metrics (fixtures/dcgm-exporter.metrics) is what that file makes the exporter
  export, in the shape of its renderer, and every dcgm-exporter series of the promtool cases (rules/dcgm.test.yml,
  run by test_rules.py) is one of the fixture's;
- the recording rules select only fields the counters file enables, for every DCGM version;
- Prometheus scrapes dcgm-exporter on the GPU hosts as job `dcgm`, and bad options are refused.
"""
import csv
import io
import json
import os
import re
import subprocess

import pytest
import yaml

from monitoring_sources import DCGM_EXPORTER_METRICS
from promql import HERE, render as render_rules, selected_metrics
from test_prometheus_config import INVENTORY, jobs, load, render as render_config

# The fields the GPU alerts and dashboards need (docs/gpu-metrics.md, "Using dcgm-exporter").
REQUIRED = {"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP",
            "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_XID_ERRORS"}
OLD_REASONS, NEW_REASONS = "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
# internal/pkg/counters/variables.go: promMetricType.
PROM_TYPES = {"gauge", "counter", "histogram", "summary", "label"}
# internal/pkg/rendermetrics/render_metrics.go, gpuMetricsFormat (no MIG, Hostname on, no label fields).
GPU_LABELS = ["gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname"]
# Prometheus's own labels of a scraped series.
TARGET_LABELS = {"job", "instance", "host"}
DCGM = {"monitoring_gpu_metrics": "dcgm", "monitoring_dcgm_version": "3.3.9"}


def render_counters(tmp_path, extra=None):
    out = tmp_path / "out"
    out.mkdir()
    args = dict(DCGM, out=str(out))
    args.update(extra or {})
    result = subprocess.run(["ansible-playbook", os.path.join(HERE, "render-dcgm.yml"), "-i", "localhost,",
                             "-e", json.dumps(args)], capture_output=True, text=True, timeout=300, check=False)
    return result, out


def counters(text):
    """(field, type, help) of each row, read the way dcgm-exporter reads its file."""
    reader = csv.reader(io.StringIO(text))
    rows = []
    for record in reader:
        if not record or record[0].startswith("#"):
            continue
        rows.append(tuple(field.strip(" ") for field in record))
    return rows


def families(text):
    """{name: (type, help, [(labels in order, value)])} of a /metrics text, parsed by hand to keep label order."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"# (HELP|TYPE) (\S+) ?(.*)$", line)
        if match:
            entry = found.setdefault(match.group(2), {"samples": []})
            entry[match.group(1)] = match.group(3)
            continue
        if not line or line.startswith("#"):
            continue
        match = re.match(r'^([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\} (\S+)$', line)
        assert match, line
        labels = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(2))
        found[match.group(1)]["samples"].append((labels, match.group(3)))
    return found


def fixture():
    with open(DCGM_EXPORTER_METRICS) as handle:
        return families(handle.read())


@pytest.mark.parametrize("version, reasons", [("3.1.8", OLD_REASONS), ("3.2.6", OLD_REASONS),
                                              ("3.3.0", NEW_REASONS), ("3.3.9", NEW_REASONS),
                                              ("4.2.3", NEW_REASONS)])
def test_the_counters_file_parses_and_enables_every_required_field(tmp_path, version, reasons):
    result, out = render_counters(tmp_path, {"monitoring_dcgm_version": version})
    assert result.returncode == 0, result.stdout[-3000:]
    text = (out / "counters.csv").read_text()
    # Go's csv reader wants the same number of fields on every record: three, "2 commas" (dcgm-exporter README).
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert line.count(",") == 2, line
    rows = counters(text)
    assert all(len(row) == 3 for row in rows)
    assert {row[1] for row in rows} <= PROM_TYPES
    fields = [row[0] for row in rows]
    assert len(fields) == len(set(fields))
    assert REQUIRED | {reasons} <= set(fields)
    assert ({OLD_REASONS, NEW_REASONS} - {reasons}).isdisjoint(fields)
    # The ECC count is a counter, the last Xid a gauge (etc/default-counters.csv).
    assert dict((row[0], row[1]) for row in rows)["DCGM_FI_DEV_XID_ERRORS"] == "gauge"
    assert dict((row[0], row[1]) for row in rows)["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"] == "counter"


def test_the_drop_in_points_the_unit_at_the_counters_file(tmp_path):
    result, out = render_counters(tmp_path, {"monitoring_dcgm_counters_file": "/etc/dcgm-exporter/x.csv"})
    assert result.returncode == 0, result.stdout[-3000:]
    lines = [line for line in (out / "dropin.conf").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["[Service]", "Environment=DCGM_EXPORTER_COLLECTORS=/etc/dcgm-exporter/x.csv"]


def test_the_fixture_is_what_the_counters_file_makes_dcgm_exporter_export(tmp_path):
    result, out = render_counters(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = counters((out / "counters.csv").read_text())
    exported = fixture()
    # One family per row, named after the field, with the row's type and help.
    assert sorted(exported) == sorted(row[0] for row in rows)
    for field, kind, text in rows:
        assert exported[field]["TYPE"] == kind
        assert exported[field]["HELP"] == text
        for labels, value in exported[field]["samples"]:
            names = [name for name, _value in labels]
            assert names[:len(GPU_LABELS)] == GPU_LABELS, (field, names)
            extra = names[len(GPU_LABELS):]
            assert extra == (["err_code", "err_msg"] if field == "DCGM_FI_DEV_XID_ERRORS" else []), (field, names)
            float(value)


def test_every_dcgm_series_of_the_promtool_cases_is_one_the_exporter_exports():
    exported = fixture()
    by_gpu = {}
    for name, family in exported.items():
        for labels, _value in family["samples"]:
            by_gpu[(name, dict(labels)["gpu"])] = dict(labels)
    with open(os.path.join(HERE, "rules", "dcgm.test.yml")) as handle:
        cases = yaml.safe_load(handle)["tests"]
    seen = 0
    for case in cases:
        for series in case["input_series"]:
            match = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\}$", series["series"])
            name, labels = match.group(1), dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="([^"]*)"', match.group(2)))
            if name.startswith("vllm:") or name == "up":
                continue
            assert name in exported, name
            assert set(labels) >= TARGET_LABELS and labels["job"] == "dcgm"
            own = {key: value for key, value in labels.items() if key not in TARGET_LABELS}
            assert own == by_gpu[(name, own["gpu"])], series["series"]
            seen += 1
    assert seen >= 20


@pytest.mark.parametrize("version, reasons", [("3.2.6", OLD_REASONS), ("3.3.9", NEW_REASONS)])
def test_the_rules_select_only_fields_the_counters_file_enables(tmp_path, version, reasons):
    result = render_rules(tmp_path / "rules", {"monitoring_gpu_metrics": "dcgm", "monitoring_dcgm_version": version})
    assert result.returncode == 0, result.stdout[-3000:]
    with open(str(tmp_path / "rules" / "inferops-dcgm.rules.yml")) as handle:
        mapping = [rule for group in yaml.safe_load(handle)["groups"] for rule in group["rules"]]
    selected = set()
    for rule in mapping:
        selected |= selected_metrics(rule["expr"])
    result, out = render_counters(tmp_path, {"monitoring_dcgm_version": version})
    assert result.returncode == 0, result.stdout[-3000:]
    enabled = {row[0] for row in counters((out / "counters.csv").read_text())}
    assert selected - {"up"} <= enabled
    assert reasons in selected


def test_without_dcgm_there_are_no_dcgm_rules(tmp_path):
    result = render_rules(tmp_path / "rules")
    assert result.returncode == 0, result.stdout[-3000:]
    assert not (tmp_path / "rules" / "inferops-dcgm.rules.yml").exists()
    assert (tmp_path / "rules" / "inferops-gpu.rules.yml").exists()


def test_prometheus_scrapes_dcgm_exporter_on_the_gpu_hosts(tmp_path):
    hosts = yaml.safe_load(yaml.safe_dump(INVENTORY))
    hosts["all"]["children"]["gpu_hosts"]["hosts"]["gpu-c"]["monitoring_dcgm_exporter_port"] = 9500
    result, out = render_config(tmp_path, DCGM, hosts)
    assert result.returncode == 0, result.stdout[-4000:]
    config = jobs(load(out, "prometheus.yml"))
    assert config["dcgm"] == {"job_name": "dcgm", "static_configs": [
        {"targets": ["10.0.0.5:9400"], "labels": {"host": "gpu-a"}},
        {"targets": ["gpu-b.internal:9400"], "labels": {"host": "gpu-b"}},
        {"targets": ["10.0.0.7:9500"], "labels": {"host": "gpu-c"}}]}
    # The node exporters stay scraped (host metrics), under their own job.
    assert [c["labels"]["host"] for c in config["node"]["static_configs"]] == ["gpu-a", "gpu-b", "gpu-c"]


def test_without_dcgm_there_is_no_dcgm_job(tmp_path):
    result, out = render_config(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "dcgm" not in jobs(load(out, "prometheus.yml"))


@pytest.mark.parametrize("extra, named", [
    ({"monitoring_dcgm_version": ""}, "monitoring_dcgm_version"),
    ({"monitoring_dcgm_version": "latest"}, "monitoring_dcgm_version"),
    ({"monitoring_dcgm_version": "3.3\n"}, "monitoring_dcgm_version"),
    ({"monitoring_dcgm_counters_file": "etc/x.csv"}, "monitoring_dcgm_counters_file"),
    ({"monitoring_dcgm_counters_file": "/etc/x.csv\nExecStart=/bin/sh"}, "monitoring_dcgm_counters_file"),
    ({"monitoring_dcgm_exporter_service": "dcgm exporter"}, "monitoring_dcgm_exporter_service"),
    ({"monitoring_dcgm_exporter_port": "9400"}, "monitoring_dcgm_exporter_port"),
    ({"monitoring_dcgm_exporter_port": 70000}, "monitoring_dcgm_exporter_port"),
])
def test_bad_dcgm_options_are_refused_before_anything_is_written(tmp_path, extra, named):
    result, out = render_counters(tmp_path, extra)
    assert result.returncode != 0
    assert named in result.stdout, result.stdout[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (out / "counters.csv").exists()


def test_the_rules_refuse_dcgm_without_a_version(tmp_path):
    result = render_rules(tmp_path / "rules", {"monitoring_gpu_metrics": "dcgm"})
    assert result.returncode != 0
    assert "monitoring_dcgm_version" in result.stdout, result.stdout[-3000:]
    assert not (tmp_path / "rules").exists()
