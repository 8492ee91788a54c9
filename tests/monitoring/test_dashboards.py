"""The monitoring role's Grafana dashboards and provisioning files (Grafana itself does not install here; the lab
test runs every query against the real Prometheus after traffic):

- the dashboards are what tools/grafana_dashboards.py writes, and well formed: unique ids, every panel on the
  grid and on the provisioned datasource, every variable it uses declared;
- every query is valid PromQL to Debian's promtool and selects only metrics the real exporters export or the
  role's rules record;
- the provisioning files the role writes point Grafana at Prometheus, with basic auth when it asks for it, and
  bad options are refused without echoing the password.
"""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from grafana_queries import DASHBOARDS, label_values_selector, substituted
from promql import HERE, ROOT, exported_metric_names, rendered_variant, rules_of, selected_metrics, tool
from renders import case_hosts, failure as host_failure, register, run_playbook, shared, succeeded

# Grafana's own variables, and the values the lab test gives them.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
PASSWORD = "grafana-reads-prometheus-7Qz"


def dashboards():
    found = {}
    for path in sorted(glob.glob(os.path.join(DASHBOARDS, "*.json"))):
        with open(path) as handle:
            found[os.path.basename(path)] = json.load(handle)
    return found


def queries(dashboard):
    """(where, expr) for every panel target and variable query."""
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield "%s / %s" % (panel["title"], target["refId"]), target["expr"]
    for variable in dashboard["templating"]["list"]:
        yield "variable %s" % variable["name"], variable["query"]["query"]


def test_the_dashboards_are_the_generators():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "grafana_dashboards.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_two_dashboards_with_the_issues_panels():
    found = dashboards()
    assert sorted(found) == ["inferops-gateway.json", "inferops-gpu-host.json", "inferops-vllm-fleet.json"]
    fleet = " | ".join(p["title"] for p in found["inferops-vllm-fleet.json"]["panels"]).lower()
    for wanted in ("instances up", "requests/s", "errors", "time to first token", "time per output token",
                   "end-to-end", "waiting", "kv cache", "preemptions", "error budget left"):
        assert wanted in fleet
    gpu = " | ".join(p["title"] for p in found["inferops-gpu-host.json"]["panels"]).lower()
    for wanted in ("utilization", "memory", "temperature", "power", "ecc", "xid", "clocks"):
        assert wanted in gpu
    gateway = " | ".join(p["title"] for p in found["inferops-gateway.json"]["panels"]).lower()
    for wanted in ("gateways up", "instances in rotation", "at the edge", "by backend", "by state", "in flight",
                   "response time", "queued", "retries", "aborted"):
        assert wanted in gateway


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_panel_is_on_the_grid_and_on_the_provisioned_datasource(name, provisioned):
    dashboard = dashboards()[name]
    uid = provisioned["datasource"]["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    occupied = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, "%s overlaps another panel" % panel["title"]
        occupied |= cells
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"] and all(target["datasource"]["uid"] == uid for target in panel["targets"])
    declared = {variable["name"] for variable in dashboard["templating"]["list"]}
    for where, expr in queries(dashboard):
        assert set(re.findall(r"\$(\w+)", expr)) <= declared | set(GRAFANA_BUILTINS), where
    assert all(variable["datasource"]["uid"] == uid for variable in dashboard["templating"]["list"])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """What the role's rules record with its defaults (rendered once for the session, promql.py)."""
    return {rule["record"] for rule in rules_of(rendered_variant(tmp_path_factory, "defaults")) if "record" in rule}


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_query_is_promql_and_selects_only_exported_or_recorded_metrics(name, recorded, tmp_path):
    dashboard = dashboards()[name]
    values = dict(GRAFANA_BUILTINS, **{v["name"]: ".+" for v in dashboard["templating"]["list"]})
    rules, unknown = [], {}
    for index, (where, expr) in enumerate(queries(dashboard)):
        if where.startswith("variable "):
            expr = label_values_selector(expr)[0]
        expr = substituted(expr, values)
        rules.append({"record": "dashboard_query_%d" % index, "expr": expr})
        for metric in selected_metrics(expr) - exported_metric_names() - recorded:
            unknown.setdefault(metric, []).append(where)
    assert unknown == {}, "dashboard queries select metrics no exporter exports"
    path = tmp_path / "queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def render_grafana(tmp, cases):
    """Writes the provisioning files for each of `cases` ({name: options}) in one ansible-playbook run: one host
    per case, named after it, with its options (read by the playbook's include_vars, so that they override the
    role's defaults as -e would) and tmp/NAME as its `out`. Returns the run's returncode, stdout and stderr."""
    hosts = case_hosts(tmp, cases, lambda case: {"out": str(case)})
    return run_playbook(os.path.join(HERE, "render-grafana.yml"), {"all": {"hosts": hosts}}, tmp / "inventory.yml",
                        {})


# The option sets whose files the tests only read, written in one run for the whole session.
VARIANTS = {
    "defaults": {},
    "basic-auth": {
        "monitoring_prometheus_basic_auth_users": {"grafana": "$2y$10$" + "a" * 53},
        "monitoring_prometheus_listen_address": "10.0.0.5:9443",
        "monitoring_prometheus_tls_cert_src": "/nonexistent/web.crt", "monitoring_prometheus_tls_key_src": "x",
        "monitoring_grafana_prometheus_user": "grafana", "monitoring_grafana_prometheus_password": PASSWORD,
        "monitoring_grafana_group": "root"},
}


GRAFANA_VARIANTS = register("grafana-variants", lambda tmp: render_grafana(tmp, VARIANTS), 10)


def variant(tmp_path_factory, name):
    """The run that wrote VARIANTS (the test fails here unless `name`'s host succeeded) and `name`'s `out`."""
    directory, result = shared(tmp_path_factory, GRAFANA_VARIANTS)
    succeeded(result, name)
    return result, directory / name


def read_provisioning(out):
    with open(out / "provisioning" / "datasources" / "inferops.yml") as handle:
        datasources = yaml.safe_load(handle)["datasources"]
    with open(out / "provisioning" / "dashboards" / "inferops.yml") as handle:
        providers = yaml.safe_load(handle)["providers"]
    assert len(datasources) == 1 and len(providers) == 1
    return {"datasource": datasources[0], "provider": providers[0]}


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    _result, out = variant(tmp_path_factory, "defaults")
    files = read_provisioning(out)
    files["out"] = out
    return files


def test_the_provisioning_points_grafana_at_this_prometheus_and_at_the_dashboards(provisioned):
    datasource, provider = provisioned["datasource"], provisioned["provider"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://127.0.0.1:9090"
    assert datasource["jsonData"]["timeInterval"] == "15s" and "basicAuth" not in datasource
    assert provider["type"] == "file" and provider["options"]["path"] == str(provisioned["out"] / "dashboards")
    assert provider["allowUiUpdates"] is False
    assert sorted(os.listdir(provisioned["out"] / "dashboards")) == sorted(dashboards())
    mode = os.stat(provisioned["out"] / "provisioning" / "datasources" / "inferops.yml").st_mode & 0o777
    assert mode == 0o644


def test_basic_auth_and_tls_reach_the_datasource_and_the_password_stays_out_of_the_output(tmp_path_factory):
    assert VARIANTS["basic-auth"]["monitoring_grafana_prometheus_password"] == PASSWORD
    result, tmp_path = variant(tmp_path_factory, "basic-auth")
    assert PASSWORD not in result["stdout"] + result["stderr"]
    datasource = read_provisioning(tmp_path)["datasource"]
    assert datasource["url"] == "https://10.0.0.5:9443"
    assert datasource["basicAuth"] is True and datasource["basicAuthUser"] == "grafana"
    assert datasource["secureJsonData"] == {"basicAuthPassword": PASSWORD}
    assert datasource["jsonData"]["tlsSkipVerify"] is True
    mode = os.stat(tmp_path / "provisioning" / "datasources" / "inferops.yml").st_mode & 0o777
    assert mode == 0o640


BAD_OPTIONS = [
    {"monitoring_grafana_provisioning_dir": "etc/grafana"},
    {"monitoring_grafana_dashboards_dir": "/var/lib/grafana/../../etc"},
    {"monitoring_grafana_prometheus_url": "ftp://prometheus"},
    {"monitoring_grafana_prometheus_user": "grafana"},
    {"monitoring_grafana_prometheus_user": "graf\nana", "monitoring_grafana_prometheus_password": PASSWORD},
    {"monitoring_prometheus_basic_auth_users": {"admin": "$2y$10$" + "a" * 53}},
    {"monitoring_prometheus_basic_auth_users": {"admin": "$2y$10$" + "a" * 53},
     "monitoring_grafana_prometheus_user": "grafana", "monitoring_grafana_prometheus_password": PASSWORD},
]


# BAD_OPTIONS written in one run for the whole session, host caseN for BAD_OPTIONS[N]: each fails on its own.
GRAFANA_REFUSALS = register("grafana-refusals", lambda tmp: render_grafana(
    tmp, {"case%d" % index: extra for index, extra in enumerate(BAD_OPTIONS)}), 1)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    return shared(tmp_path_factory, GRAFANA_REFUSALS)


@pytest.mark.parametrize("extra", BAD_OPTIONS)
def test_bad_options_are_refused_before_anything_is_written(refusals, extra):
    directory, result = refusals
    host = "case%d" % BAD_OPTIONS.index(extra)
    failure = host_failure(result, host)
    assert result["returncode"] != 0
    # The message itself, not the task's source that Ansible shows beside it.
    assert "are set together, and when Prometheus asks for basic auth" in " ".join(failure.split()), failure
    assert PASSWORD not in result["stdout"] + result["stderr"]
    assert "Traceback" not in result["stdout"] + result["stderr"]
    assert not (directory / host / "provisioning").exists()
