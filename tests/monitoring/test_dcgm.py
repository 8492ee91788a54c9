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
import os
import re

import pytest
import yaml

from monitoring_sources import DCGM_EXPORTER_METRICS
from promql import DCGM_WITHOUT_VERSION, HERE, refused as refused_rules, rendered_variant, selected_metrics
from promql import VARIANTS as RULES_VARIANTS
from renders import case_hosts, failure as host_failure, register, run_playbook, shared, succeeded
from test_prometheus_config import VARIANTS as CONFIG_VARIANTS
from test_prometheus_config import jobs, load, variant as config_variant

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


def render_counters(tmp, cases):
    """Renders the counters file and drop-in for each of `cases` ({name: options}, each over DCGM) in one
    ansible-playbook run: one host per case, named after it, with its options (read by the playbook's
    include_vars, so that they override the role's defaults as -e would) and tmp/NAME/out as its `out`. Returns
    the run's returncode, stdout and stderr."""
    def directories(case):
        (case / "out").mkdir()
        return dict(DCGM, out=str(case / "out"))

    hosts = case_hosts(tmp, cases, directories)
    return run_playbook(os.path.join(HERE, "render-dcgm.yml"), {"all": {"hosts": hosts}}, tmp / "inventory.yml", {})


VERSIONS = [("3.1.8", OLD_REASONS), ("3.2.6", OLD_REASONS), ("3.3.0", NEW_REASONS), ("3.3.9", NEW_REASONS),
            ("4.2.3", NEW_REASONS)]
# The option sets whose files the tests only read, rendered in one run for the whole session: one per version
# (3.3.9 is DCGM's own), and another counters file.
VARIANTS = dict({version: {"monitoring_dcgm_version": version} for version, _reasons in VERSIONS},
                dropin={"monitoring_dcgm_counters_file": "/etc/dcgm-exporter/x.csv"})


DCGM_VARIANTS = register("dcgm-variants", lambda tmp: render_counters(tmp, VARIANTS), 10)


def rendered(tmp_path_factory, name):
    """The `out` of VARIANTS[name] (the test fails here unless it rendered)."""
    directory, result = shared(tmp_path_factory, DCGM_VARIANTS)
    succeeded(result, name)
    return directory / name / "out"


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


@pytest.mark.parametrize("version, reasons", VERSIONS)
def test_the_counters_file_parses_and_enables_every_required_field(tmp_path_factory, version, reasons):
    out = rendered(tmp_path_factory, version)
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


def test_the_drop_in_points_the_unit_at_the_counters_file(tmp_path_factory):
    assert VARIANTS["dropin"] == {"monitoring_dcgm_counters_file": "/etc/dcgm-exporter/x.csv"}
    out = rendered(tmp_path_factory, "dropin")
    lines = [line for line in (out / "dropin.conf").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["[Service]", "Environment=DCGM_EXPORTER_COLLECTORS=/etc/dcgm-exporter/x.csv"]


def test_the_fixture_is_what_the_counters_file_makes_dcgm_exporter_export(tmp_path_factory):
    # DCGM as it is: its version's case.
    assert VARIANTS[DCGM["monitoring_dcgm_version"]] == {"monitoring_dcgm_version": DCGM["monitoring_dcgm_version"]}
    out = rendered(tmp_path_factory, DCGM["monitoring_dcgm_version"])
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
def test_the_rules_select_only_fields_the_counters_file_enables(tmp_path_factory, version, reasons):
    # The rules and the counters file, each rendered once for the session (promql.py's and this file's).
    rules = {"3.2.6": "dcgm-3.2.6", "3.3.9": "dcgm"}[version]
    assert RULES_VARIANTS[rules] == {"monitoring_gpu_metrics": "dcgm", "monitoring_dcgm_version": version}
    with open(str(rendered_variant(tmp_path_factory, rules) / "inferops-dcgm.rules.yml")) as handle:
        mapping = [rule for group in yaml.safe_load(handle)["groups"] for rule in group["rules"]]
    selected = set()
    for rule in mapping:
        selected |= selected_metrics(rule["expr"])
    out = rendered(tmp_path_factory, version)
    enabled = {row[0] for row in counters((out / "counters.csv").read_text())}
    assert selected - {"up"} <= enabled
    assert reasons in selected


def test_without_dcgm_there_are_no_dcgm_rules(tmp_path_factory):
    assert RULES_VARIANTS["defaults"] == {}
    rules = rendered_variant(tmp_path_factory, "defaults")
    assert not (rules / "inferops-dcgm.rules.yml").exists()
    assert (rules / "inferops-gpu.rules.yml").exists()


def test_prometheus_scrapes_dcgm_exporter_on_the_gpu_hosts(tmp_path_factory):
    # test_prometheus_config.py's INVENTORY, where gpu-c sets the port of its dcgm-exporter, with DCGM.
    assert CONFIG_VARIANTS["dcgm"] == DCGM
    _result, case = config_variant(tmp_path_factory, "dcgm")
    config = jobs(load(case / "out", "prometheus.yml"))
    assert config["dcgm"] == {"job_name": "dcgm", "static_configs": [
        {"targets": ["10.0.0.5:9400"], "labels": {"host": "gpu-a"}},
        {"targets": ["gpu-b.internal:9400"], "labels": {"host": "gpu-b"}},
        {"targets": ["10.0.0.7:9500"], "labels": {"host": "gpu-c"}}]}
    # The node exporters stay scraped (host metrics), under their own job.
    assert [c["labels"]["host"] for c in config["node"]["static_configs"]] == ["gpu-a", "gpu-b", "gpu-c"]


def test_without_dcgm_there_is_no_dcgm_job(tmp_path_factory):
    _result, case = config_variant(tmp_path_factory, "defaults")
    assert "dcgm" not in jobs(load(case / "out", "prometheus.yml"))


BAD_OPTIONS = [
    ({"monitoring_dcgm_version": ""}, "monitoring_dcgm_version"),
    ({"monitoring_dcgm_version": "latest"}, "monitoring_dcgm_version"),
    ({"monitoring_dcgm_version": "3.3\n"}, "monitoring_dcgm_version"),
    ({"monitoring_dcgm_counters_file": "etc/x.csv"}, "monitoring_dcgm_counters_file"),
    ({"monitoring_dcgm_counters_file": "/etc/x.csv\nExecStart=/bin/sh"}, "monitoring_dcgm_counters_file"),
    ({"monitoring_dcgm_exporter_service": "dcgm exporter"}, "monitoring_dcgm_exporter_service"),
    ({"monitoring_dcgm_exporter_port": "9400"}, "monitoring_dcgm_exporter_port"),
    ({"monitoring_dcgm_exporter_port": 70000}, "monitoring_dcgm_exporter_port"),
]


# BAD_OPTIONS rendered in one run for the whole session, host caseN for BAD_OPTIONS[N]: each fails on its own.
DCGM_REFUSALS = register("dcgm-refusals", lambda tmp: render_counters(
    tmp, {"case%d" % index: extra for index, (extra, _named) in enumerate(BAD_OPTIONS)}), 2)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    return shared(tmp_path_factory, DCGM_REFUSALS)


@pytest.mark.parametrize("extra, named", BAD_OPTIONS)
def test_bad_dcgm_options_are_refused_before_anything_is_written(refusals, extra, named):
    directory, result = refusals
    host = "case%d" % BAD_OPTIONS.index((extra, named))
    failure = host_failure(result, host)
    assert result["returncode"] != 0
    assert named in failure, failure
    assert "Traceback" not in result["stdout"] + result["stderr"]
    assert not (directory / host / "out" / "counters.csv").exists()


def test_the_rules_refuse_dcgm_without_a_version(tmp_path_factory):
    # Rendered with test_rules.py's refused settings, one run for the session (promql.py).
    assert DCGM_WITHOUT_VERSION == ({"monitoring_gpu_metrics": "dcgm"}, "monitoring_dcgm_version")
    result, failure, rules = refused_rules(tmp_path_factory, *DCGM_WITHOUT_VERSION)
    assert result["returncode"] != 0
    assert "monitoring_dcgm_version" in failure, failure
    assert not rules.exists()
