"""The monitoring role's Prometheus, web and Alertmanager configurations, rendered from an inventory by the role's
templates and checked by Debian's promtool and amtool: the targets and their labels come from the inventory
(vllm_instances of vllm_hosts, the node exporters of gpu_hosts), instances that serve HTTPS are scraped over HTTPS
under the same job, and bad options are refused by the role's checks before anything is written."""
import json
import os
import shutil
import subprocess

import pytest
import yaml

from monitoring_sources import NEW_KEY
from renders import case_hosts, failure as host_failure, register, run_playbook, shared, succeeded
from test_rules import tool

HERE = os.path.dirname(os.path.abspath(__file__))

INVENTORY = {
    "all": {
        "children": {
            "monitoring_hosts": {"hosts": {"mon-1": {"ansible_connection": "local"}}},
            "gpu_hosts": {
                "hosts": {"gpu-c": {"ansible_host": "10.0.0.7", "monitoring_node_exporter_listen_address": ":9111"}},
                "children": {"vllm_hosts": {"hosts": {
                    "gpu-a": {"ansible_host": "10.0.0.5",
                              "vllm_instances": [{"name": "chat", "port": 8001}, {"name": "embed"},
                                                 {"name": "old", "port": 8002, "state": "absent"},
                                                 {"name": "paused", "port": 8003, "state": "stopped"}]},
                    "gpu-b": {"monitoring_scrape_address": "gpu-b.internal", "vllm_tls_cert_src": "files/b.crt",
                              "vllm_instances": [{"name": "secure", "port": 8443}]},
                }}},
            },
        },
    },
}


def render(tmp_path, extra=None, hosts=None):
    """Renders the configurations for the `hosts` inventory (default INVENTORY) into tmp_path/out."""
    out = tmp_path / "out"
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(hosts or INVENTORY))
    tls = tmp_path / "tls"
    tls.mkdir(exist_ok=True)
    subprocess.run(["openssl", "req", "-x509"] + NEW_KEY + ["-nodes", "-keyout", str(tls / "web.key"),
                                                            "-out", str(tls / "web.crt"), "-days", "2",
                                                            "-subj", "/CN=mon-1"], check=True, capture_output=True)
    args = {"out": str(out), "promtool": tool("promtool"), "amtool": tool("amtool"),
            "blackbox": tool("prometheus-blackbox-exporter"),
            "monitoring_prometheus_tls_dir": str(tls), "monitoring_prometheus_rules_dir": str(tmp_path / "rules")}
    args.update(extra or {})
    out.mkdir()
    result = subprocess.run(["ansible-playbook", os.path.join(HERE, "render-prometheus.yml"), "-i", str(inventory),
                             "-e", json.dumps(args)], capture_output=True, text=True, timeout=300, check=False)
    return result, out


def tools():
    return {"promtool": tool("promtool"), "amtool": tool("amtool"), "blackbox": tool("prometheus-blackbox-exporter")}


def render_cases(tmp, cases):
    """Renders in one ansible-playbook run for one monitoring host per case, named case0, case1...: host caseN
    has the options cases[N] (read by the playbook's include_vars, so that they override the role's defaults as
    -e does in render()) and its own tmp/caseN/out. Returns the CompletedProcess's returncode, stdout and
    stderr."""
    hosts = case_hosts(tmp, {"case%d" % index: extra for index, extra in enumerate(cases)},
                       lambda case: (case / "out").mkdir() or {"out": str(case / "out")})
    inventory = json.loads(json.dumps(INVENTORY))
    inventory["all"]["children"]["monitoring_hosts"] = {"hosts": hosts}
    (tmp / "tls").mkdir()
    args = dict(tools(), monitoring_prometheus_tls_dir=str(tmp / "tls"),
                monitoring_prometheus_rules_dir=str(tmp / "rules"))
    return run_playbook(os.path.join(HERE, "render-prometheus.yml"), inventory, tmp / "inventory.yml", args)


def render_variants(tmp, cases, inventory=None, common=None):
    """What render() does for each of `cases` ({name: options}), in one ansible-playbook run: a monitoring host
    per case, named after it, with its options (read by the playbook's include_vars, so that they override the
    role's defaults as -e does in render()) and, as render() makes them, tmp/NAME/out, tmp/NAME/tls with a web
    certificate and tmp/NAME/rules. The `inventory` (default INVENTORY) gets these monitoring hosts; `common`
    options go to -e, for every host. Returns the run's returncode, stdout and stderr."""
    web = tmp / "web"
    web.mkdir()
    subprocess.run(["openssl", "req", "-x509"] + NEW_KEY + ["-nodes", "-keyout", str(web / "web.key"),
                                                            "-out", str(web / "web.crt"), "-days", "2",
                                                            "-subj", "/CN=mon-1"], check=True, capture_output=True)

    def directories(case):
        (case / "out").mkdir()
        shutil.copytree(str(web), str(case / "tls"))
        return {"out": str(case / "out"), "monitoring_prometheus_tls_dir": str(case / "tls"),
                "monitoring_prometheus_rules_dir": str(case / "rules")}

    hosts = case_hosts(tmp, cases, directories)
    inventory = json.loads(json.dumps(inventory or INVENTORY))
    inventory["all"]["children"]["monitoring_hosts"] = {"hosts": hosts}
    return run_playbook(os.path.join(HERE, "render-prometheus.yml"), inventory, tmp / "inventory.yml",
                        dict(tools(), **(common or {})))


def load(out, name):
    with open(os.path.join(str(out), name)) as handle:
        return yaml.safe_load(handle)


def jobs(config):
    return {job["job_name"]: job for job in config["scrape_configs"]}


# The option sets of the tests that only read what was rendered for INVENTORY, rendered in one run for the whole
# session (render_variants): test_tls_probe.py and test_dcgm.py read theirs too (test_tls_probe.py writes the CA
# and a certificate into the tls directory of vllm-ca, as the role's CA task would: none of these files is read
# here). gpu-c also sets the port of its
# dcgm-exporter, which only the dcgm case's configuration may show.
VARIANTS = {
    "defaults": {},
    "webhook": {"monitoring_alertmanager_webhook_url": "https://hooks.example.internal/T0K3N-in-path"},
    "listen-addresses": {"monitoring_alertmanager_listen_address": "10.1.2.3:9093",
                         "monitoring_prometheus_listen_address": "[::]:9090"},
    "web-tls-auth": {"monitoring_prometheus_tls_cert_src": "web.crt", "monitoring_prometheus_tls_key_src": "web.key",
                     "monitoring_prometheus_basic_auth_users": {"ops": "$2y$10$" + "a" * 53},
                     "monitoring_prometheus_vllm_ca_src": "ca.crt"},
    "vllm-ca": {"monitoring_prometheus_vllm_ca_src": "ca.crt"},
    "vllm-and-gateway-ca": {"monitoring_prometheus_vllm_ca_src": "ca.crt",
                            "monitoring_prometheus_gateway_ca_src": "gateway-ca.crt"},
    "gateway-ca": {"monitoring_prometheus_gateway_ca_src": "gateway-ca.crt"},
    "extra-endpoints": {"monitoring_tls_probe_targets": [
        {"address": "gw.example.internal:7654", "name": "gateway", "host": "gw-1"},
        {"address": "[fd00::9]:443", "name": "edge"},
        {"address": "10.0.0.9:8443", "name": "lb"}], "monitoring_blackbox_listen_address": "0.0.0.0:9200"},
    # test_dcgm.py's
    "dcgm": {"monitoring_gpu_metrics": "dcgm", "monitoring_dcgm_version": "3.3.9"},
}


def variants_inventory():
    inventory = json.loads(json.dumps(INVENTORY))
    inventory["all"]["children"]["gpu_hosts"]["hosts"]["gpu-c"]["monitoring_dcgm_exporter_port"] = 9500
    return inventory


PROMETHEUS_VARIANTS = register("prometheus-variants",
                               lambda tmp: render_variants(tmp, VARIANTS, variants_inventory()), 40)


def variant(tmp_path_factory, name):
    """The case `name` of VARIANTS, rendered once for the session with the others: the run's returncode, stdout
    and stderr (the test fails here unless the case rendered) and the case's directory (its out/, tls/ and
    rules/, as render()'s)."""
    directory, result = shared(tmp_path_factory, PROMETHEUS_VARIANTS)
    succeeded(result, name)
    return result, directory / name


@pytest.fixture(scope="module")
def defaults(tmp_path_factory):
    """The configurations for INVENTORY with no options set, rendered once for the tests that only read them:
    the directory it was rendered in, the run's returncode and stdout, and its output directory."""
    result, directory = variant(tmp_path_factory, "defaults")
    return directory, result, directory / "out"


def test_targets_and_labels_come_from_the_inventory(defaults):
    directory, result, out = defaults
    assert result["returncode"] == 0, result["stdout"][-4000:]
    config = jobs(load(out, "prometheus.yml"))
    assert config["vllm"]["static_configs"] == [
        {"targets": ["10.0.0.5:8001"], "labels": {"host": "gpu-a", "vllm_instance": "chat"}},
        {"targets": ["10.0.0.5:8000"], "labels": {"host": "gpu-a", "vllm_instance": "embed"}}]
    assert config["vllm_https"]["scheme"] == "https"
    assert config["vllm_https"]["static_configs"] == [
        {"targets": ["gpu-b.internal:8443"], "labels": {"host": "gpu-b", "vllm_instance": "secure"}}]
    # Both land in job="vllm", which the rules select.
    assert config["vllm_https"]["relabel_configs"] == [{"target_label": "job", "replacement": "vllm"}]
    assert config["vllm_https"]["tls_config"] == {"insecure_skip_verify": True}
    assert config["node"]["static_configs"] == [
        {"targets": ["10.0.0.5:9100"], "labels": {"host": "gpu-a"}},
        {"targets": ["gpu-b.internal:9100"], "labels": {"host": "gpu-b"}},
        {"targets": ["10.0.0.7:9111"], "labels": {"host": "gpu-c"}}]
    assert config["prometheus"]["static_configs"][0]["targets"] == ["127.0.0.1:9090"]
    assert config["alertmanager"]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    whole = load(out, "prometheus.yml")
    assert whole["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    assert whole["rule_files"] == [str(directory / "rules") + "/*.rules.yml"]
    assert whole["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s"}


def test_without_a_webhook_alerts_go_nowhere_and_with_one_they_go_there(defaults, tmp_path_factory):
    _tmp, result, out = defaults
    assert result["returncode"] == 0, result["stdout"][-4000:]
    assert load(out, "alertmanager.yml")["receivers"] == [{"name": "default"}]
    assert load(out, "web.yml") == {}

    url = "https://hooks.example.internal/T0K3N-in-path"
    assert VARIANTS["webhook"] == {"monitoring_alertmanager_webhook_url": url}
    result, case = variant(tmp_path_factory, "webhook")
    assert load(case / "out", "alertmanager.yml")["receivers"] == [
        {"name": "default", "webhook_configs": [{"url": url, "send_resolved": True}]}]
    assert "T0K3N" not in result["stdout"]


def test_alertmanager_is_reached_on_the_address_it_listens_on(tmp_path_factory):
    _result, case = variant(tmp_path_factory, "listen-addresses")
    whole = load(case / "out", "prometheus.yml")
    assert whole["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["10.1.2.3:9093"]
    assert jobs(whole)["prometheus"]["static_configs"][0]["targets"] == ["127.0.0.1:9090"]


def test_tls_and_basic_auth_on_the_web_interface(tmp_path_factory):
    users = {"ops": "$2y$10$" + "a" * 53}
    assert VARIANTS["web-tls-auth"]["monitoring_prometheus_basic_auth_users"] == users
    result, tmp_path = variant(tmp_path_factory, "web-tls-auth")
    out = tmp_path / "out"
    web = load(out, "web.yml")
    assert web["basic_auth_users"] == users
    assert web["tls_server_config"] == {"cert_file": str(tmp_path / "tls" / "web.crt"),
                                        "key_file": str(tmp_path / "tls" / "web.key")}
    config = jobs(load(out, "prometheus.yml"))
    # With basic auth on, Prometheus does not scrape itself (it would need the password in its own config).
    assert "prometheus" not in config
    assert config["vllm_https"]["tls_config"] == {"ca_file": str(tmp_path / "tls" / "vllm-ca.crt")}
    assert "$2y$10$" not in result["stdout"]


BAD_OPTIONS = [
    ({"monitoring_prometheus_listen_address": "0.0.0.0:9090 --web.enable-admin-api"},
     "monitoring_prometheus_listen_address and monitoring_alertmanager_listen_address are host:port"),
    ({"monitoring_alertmanager_listen_address": "9093"},
     "monitoring_prometheus_listen_address and monitoring_alertmanager_listen_address are host:port"),
    ({"monitoring_prometheus_retention_time": "15 days"}, "are Prometheus durations"),
    ({"monitoring_prometheus_retention_time": "15d\n"}, "are Prometheus durations"),
    ({"monitoring_alertmanager_group_wait": "30s\nARGS=--x"}, "are Prometheus durations"),
    ({"monitoring_alertmanager_webhook_url": "https://hook.example/a\nb"},
     "monitoring_alertmanager_webhook_url is an http:// or https:// URL"),
    ({"monitoring_alertmanager_webhook_url": "https://hook.example/a\n"},
     "monitoring_alertmanager_webhook_url is an http:// or https:// URL"),
    ({"monitoring_alertmanager_webhook_url": "file:///etc/shadow"},
     "monitoring_alertmanager_webhook_url is an http:// or https:// URL"),
    ({"monitoring_prometheus_basic_auth_users": {"ops": "plain-password"}},
     "monitoring_prometheus_basic_auth_users maps user names"),
    ({"monitoring_prometheus_basic_auth_users": {"ops\nx": "$2y$10$" + "a" * 53}},
     "monitoring_prometheus_basic_auth_users maps user names"),
    ({"monitoring_prometheus_basic_auth_users": ["ops"]}, "monitoring_prometheus_basic_auth_users maps user names"),
    ({"monitoring_node_exporter_listen_address": "0.0.0.0:9100 --web.config.file=/x"},
     "monitoring_node_exporter_listen_address is host:port"),
    ({"monitoring_node_exporter_extra_args": ["--collector.systemd --collector.x"]},
     "monitoring_node_exporter_extra_args is one --flag"),
    ({"monitoring_node_exporter_extra_args": ["--a=b\nARGS=--c"]}, "monitoring_node_exporter_extra_args is one --flag"),
    ({"monitoring_gpu_metrics_interval": "30s\nUnit=other.service"}, "monitoring_gpu_metrics_interval is a systemd"),
    ({"monitoring_gpu_metrics_interval": "every 30s"}, "monitoring_gpu_metrics_interval is a systemd"),
    ({"monitoring_prometheus_tls_cert_src": "web.crt"},
     "monitoring_prometheus_tls_cert_src and monitoring_prometheus_tls_key_src are set together"),
]


@pytest.mark.parametrize("extra, named", BAD_OPTIONS)
def test_bad_options_are_refused_before_anything_is_written(refusals, extra, named):
    result, out, failure = refused(refusals, BAD_OPTIONS.index((extra, named)))
    assert result["returncode"] != 0
    assert named in failure, (extra, failure)
    assert "Traceback" not in result["stdout"] + result["stderr"]
    assert os.listdir(str(out)) == []
    assert "plain-password" not in failure and "shadow" not in failure
    assert "plain-password" not in result["stdout"]
    assert "shadow" not in result["stdout"]


# The module a target of the tls job is probed with: Prometheus sends a target's __param_module label as the module
# parameter and keeps no __ label on its series.
VLLM_MODULE = {"__param_module": "tls_connect"}
GATEWAY_MODULE = {"__param_module": "tls_connect_gateway"}

TLS_RELABELLING = [{"source_labels": ["__address__"], "target_label": "__param_target"},
                   {"source_labels": ["__param_target"], "target_label": "instance"},
                   {"target_label": "__address__", "replacement": "127.0.0.1:9115"}]


def test_the_tls_job_probes_every_https_instance_through_the_blackbox_exporter(defaults):
    _tmp, result, out = defaults
    assert result["returncode"] == 0, result["stdout"][-4000:]
    tls = jobs(load(out, "prometheus.yml"))["tls"]
    # The HTTPS instances only, with the labels of their vllm_https target; the plain HTTP ones have no certificate.
    assert tls["static_configs"] == [
        {"targets": ["gpu-b.internal:8443"], "labels": {"host": "gpu-b", "vllm_instance": "secure", **VLLM_MODULE}}]
    assert tls["metrics_path"] == "/probe"
    # Each target names its module; no job-wide one, which Prometheus 2.42 would send instead of the target's.
    assert "params" not in tls
    assert "scheme" not in tls  # the exporter itself is reached over plain HTTP on loopback
    assert tls["relabel_configs"] == TLS_RELABELLING
    # The modules the targets ask for are the ones the exporter's configuration defines: a TLS handshake, unverified
    # without a CA; one for the instances (and the extra endpoints), one for the gateways.
    handshake = {"prober": "tcp", "timeout": "5s", "tcp": {"tls": True, "tls_config": {"insecure_skip_verify": True}}}
    assert load(out, "blackbox.yml") == {"modules": {"tls_connect": handshake, "tls_connect_gateway": handshake}}
    flags = (out / "blackbox.defaults").read_text()
    assert 'ARGS="--config.file=/etc/prometheus/blackbox.yml --web.listen-address=127.0.0.1:9115"' in flags


def test_the_probe_verifies_with_the_instances_ca_when_there_is_one(tmp_path_factory):
    _result, tmp_path = variant(tmp_path_factory, "vllm-ca")
    modules = load(tmp_path / "out", "blackbox.yml")["modules"]
    assert modules["tls_connect"]["tcp"]["tls_config"] == {"ca_file": str(tmp_path / "tls" / "vllm-ca.crt")}
    # Not the gateways: the instances' CA does not sign them.
    assert modules["tls_connect_gateway"]["tcp"]["tls_config"] == {"insecure_skip_verify": True}


def test_the_probe_verifies_the_gateways_with_their_own_ca(tmp_path_factory):
    _result, tmp_path = variant(tmp_path_factory, "vllm-and-gateway-ca")
    modules = load(tmp_path / "out", "blackbox.yml")["modules"]
    assert modules["tls_connect"]["tcp"]["tls_config"] == {"ca_file": str(tmp_path / "tls" / "vllm-ca.crt")}
    assert modules["tls_connect_gateway"]["tcp"]["tls_config"] == {"ca_file": str(tmp_path / "tls" / "gateway-ca.crt")}

    _result, other = variant(tmp_path_factory, "gateway-ca")
    modules = load(other / "out", "blackbox.yml")["modules"]
    assert modules["tls_connect"]["tcp"]["tls_config"] == {"insecure_skip_verify": True}
    assert modules["tls_connect_gateway"]["tcp"]["tls_config"] == {"ca_file": str(other / "tls" / "gateway-ca.crt")}


def test_extra_endpoints_are_probed_with_their_own_labels(tmp_path_factory):
    extra = [{"address": "gw.example.internal:7654", "name": "gateway", "host": "gw-1"},
             {"address": "[fd00::9]:443", "name": "edge"},
             {"address": "10.0.0.9:8443", "name": "lb"}]
    assert VARIANTS["extra-endpoints"] == {"monitoring_tls_probe_targets": extra,
                                           "monitoring_blackbox_listen_address": "0.0.0.0:9200"}
    _result, case = variant(tmp_path_factory, "extra-endpoints")
    out = case / "out"
    tls = jobs(load(out, "prometheus.yml"))["tls"]
    # The extra endpoints are probed with the instances' module (their CA).
    assert tls["static_configs"] == [
        {"targets": ["gpu-b.internal:8443"], "labels": {"host": "gpu-b", "vllm_instance": "secure", **VLLM_MODULE}},
        {"targets": ["gw.example.internal:7654"], "labels": {"host": "gw-1", "endpoint": "gateway", **VLLM_MODULE}},
        {"targets": ["[fd00::9]:443"], "labels": {"host": "fd00::9", "endpoint": "edge", **VLLM_MODULE}},
        {"targets": ["10.0.0.9:8443"], "labels": {"host": "10.0.0.9", "endpoint": "lb", **VLLM_MODULE}}]
    # A wildcard listen address is reached on loopback.
    assert tls["relabel_configs"][-1] == {"target_label": "__address__", "replacement": "127.0.0.1:9200"}
    assert "--web.listen-address=0.0.0.0:9200" in (out / "blackbox.defaults").read_text()


# INVENTORY rendered with vllm_tls_cert_src as an extra var, which overrides gpu-b's: every instance serves plain
# HTTP. Two cases in one run: no other option, and an extra endpoint to probe.
WITHOUT_HTTPS = register("prometheus-without-https", lambda tmp: render_variants(tmp, {
    "plain": {},
    "extra-endpoint": {"monitoring_tls_probe_targets": [{"address": "gw:7654", "name": "gateway"}]},
}, common={"vllm_tls_cert_src": ""}), 9)


@pytest.fixture(scope="module")
def without_https(tmp_path_factory):
    return shared(tmp_path_factory, WITHOUT_HTTPS)


def test_without_https_endpoints_there_is_no_tls_job(without_https):
    directory, result = without_https
    succeeded(result, "plain")
    config = jobs(load(directory / "plain" / "out", "prometheus.yml"))
    assert "tls" not in config
    assert "vllm_https" in config and config["vllm_https"]["static_configs"] == []
    assert len(config["vllm"]["static_configs"]) == 3

    succeeded(result, "extra-endpoint")
    assert jobs(load(directory / "extra-endpoint" / "out", "prometheus.yml"))["tls"]["static_configs"] == [
        {"targets": ["gw:7654"], "labels": {"host": "gw", "endpoint": "gateway", **VLLM_MODULE}}]


TLS_TARGETS_MESSAGE = "monitoring_tls_probe_targets is a list of endpoints"


BAD_TLS_PROBE_OPTIONS = [
    ({"monitoring_tls_probe_targets": [{"address": "gw:7654 --SECRETMARK", "name": "gw"}]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"address": "SECRETMARK", "name": "gw"}]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"address": "https://SECRETMARK:7654", "name": "gw"}]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"address": "SECRETMARK:76543", "name": "gw"}]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"address": "SECRETMARK:0", "name": "gw"}]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"address": "SECRETMARK:7654\n", "name": "gw"}]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"address": "gw:7654", "name": "SECRETMARK gw"}]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"address": "gw:7654", "name": "gw", "host": "SECRETMARK\nx"}]},
     TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"adress": "SECRETMARK:7654", "name": "gw"}]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"address": "gw:7654"}]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"address": 7654, "name": "gw"}]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": ["SECRETMARK:7654"]}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": "SECRETMARK:7654"}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": {"address": "SECRETMARK:7654", "name": "gw"}}, TLS_TARGETS_MESSAGE),
    ({"monitoring_tls_probe_targets": [{"address": "SECRETMARK:7654", "name": "a"},
                                       {"address": "SECRETMARK:7654", "name": "b"}]},
     "monitoring_tls_probe_targets lists an address twice"),
    ({"monitoring_blackbox_listen_address": "127.0.0.1:9115 --SECRETMARK"}, "monitoring_blackbox_listen_address is"),
    ({"monitoring_blackbox_listen_address": "9115"}, "monitoring_blackbox_listen_address is host:port"),
]


# The bad options of test_bad_options_are_refused_before_anything_is_written and the test below, rendered in one
# run, one monitoring host per case (the TLS probe's after the others): each host fails on its own.
REFUSALS = register("prometheus-refusals", lambda tmp: render_cases(
    tmp, [extra for extra, _named in BAD_OPTIONS + BAD_TLS_PROBE_OPTIONS]), 14)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    return shared(tmp_path_factory, REFUSALS)


def refused(refusals, index):
    """What the refusals run gave: its result, host caseN's output directory and what Ansible printed under the
    host's failure (the host did fail: no other line names it fatal)."""
    directory, result = refusals
    host = "case%d" % index
    return result, directory / host / "out", host_failure(result, host)


@pytest.mark.parametrize("extra, named", BAD_TLS_PROBE_OPTIONS)
def test_bad_tls_probe_options_are_refused_without_echoing_them(refusals, extra, named):
    result, out, failure = refused(refusals, len(BAD_OPTIONS) + BAD_TLS_PROBE_OPTIONS.index((extra, named)))
    assert result["returncode"] != 0
    assert named in failure, (extra, failure)
    assert "Traceback" not in result["stdout"] + result["stderr"]
    assert os.listdir(str(out)) == []
    assert "SECRETMARK" not in failure
    # The others' cases are in the same output: where this one's is clean, another case's host echoed its value.
    assert "SECRETMARK" not in result["stdout"] + result["stderr"]


def test_the_gateways_are_scraped_over_https_and_their_certificates_probed(tmp_path):
    inventory = json.loads(json.dumps(INVENTORY))
    inventory["all"]["children"]["gateway_hosts"] = {"hosts": {
        "gw-1": {"ansible_host": "10.0.0.20"},
        "gw-2": {"monitoring_scrape_address": "gw-2.internal", "gateway_port": 8443}}}
    # Extra endpoints that are already a gateway or an instance (as the docs once had a gateway added) are probed
    # once, as that one: with its CA and its labels.
    extra = [{"address": "10.0.0.20:7654", "name": "gw", "host": "gw-1"},
             {"address": "gpu-b.internal:8443", "name": "secure"},
             {"address": "lb.internal:443", "name": "lb"}]
    result, out = render(tmp_path, {"monitoring_prometheus_gateway_ca_src": "gateway-ca.crt",
                                    "monitoring_tls_probe_targets": extra}, hosts=inventory)
    assert result.returncode == 0, result.stdout[-4000:]
    config = jobs(load(out, "prometheus.yml"))
    gateway = config["gateway"]
    assert gateway["scheme"] == "https"
    assert gateway["tls_config"] == {"ca_file": str(tmp_path / "tls" / "gateway-ca.crt")}
    assert gateway["static_configs"] == [{"targets": ["10.0.0.20:7654"], "labels": {"host": "gw-1"}},
                                         {"targets": ["gw-2.internal:8443"], "labels": {"host": "gw-2"}}]
    # The gateways' certificates are probed with the module that verifies them with their CA, under the same job.
    assert config["tls"]["static_configs"] == [
        {"targets": ["gpu-b.internal:8443"], "labels": {"host": "gpu-b", "vllm_instance": "secure", **VLLM_MODULE}},
        {"targets": ["10.0.0.20:7654"], "labels": {"host": "gw-1", "endpoint": "gateway", **GATEWAY_MODULE}},
        {"targets": ["gw-2.internal:8443"], "labels": {"host": "gw-2", "endpoint": "gateway", **GATEWAY_MODULE}},
        {"targets": ["lb.internal:443"], "labels": {"host": "lb.internal", "endpoint": "lb", **VLLM_MODULE}}]
    assert "params" not in config["tls"]
    assert load(out, "blackbox.yml")["modules"]["tls_connect_gateway"]["tcp"]["tls_config"] == {
        "ca_file": str(tmp_path / "tls" / "gateway-ca.crt")}


def test_without_gateways_there_is_no_gateway_job(defaults):
    _tmp, result, out = defaults
    assert result["returncode"] == 0, result["stdout"][-4000:]
    assert "gateway" not in jobs(load(out, "prometheus.yml"))
