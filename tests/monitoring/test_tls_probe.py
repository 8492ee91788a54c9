"""The certificate probe end to end, with Debian's real binaries: the blackbox exporter running the module
configuration the role renders, against `openssl s_server` (and a TLS server that wants an API key) with
certificates that expire in a known number of days; then Prometheus with the role's rendered scrape configuration
and rules, scraping that exporter through the `tls` job, with CertificateExpiringSoon active for a certificate that
expires in 7 days and not for one that expires in 30; and with an instance and a gateway signed by two CAs (the
role's monitoring_prometheus_vllm_ca_src and monitoring_prometheus_gateway_ca_src), each probed with its own, and a
gateway from a third CA failing its probe.

CertificateExpiringSoon has `for: 10m`: here it is seen pending (its expression holds, evaluated by Prometheus on
the probe's real series); the promtool cases in rules/ cover the 10 minutes before it fires."""
import contextlib
import http.server
import json
import re
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest

from local_ports import free_port
from monitoring_sources import blackbox_exporter, certificate, running, scrape, tls_server
from promql import VARIANTS as RULES_VARIANTS
from promql import rendered_variant, tool
from test_prometheus_config import VARIANTS, load, render, variant

DAY = 86400


def not_after(cert):
    text = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", cert], check=True, capture_output=True,
                          text=True).stdout
    return ssl.cert_time_to_seconds(text.strip().split("=", 1)[1])


def samples(text, name):
    """{labels text: value} of the samples of `name` in an exporter's answer."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            head, _sep, value = line.rpartition(" ")
            found[head[len(name):]] = float(value)
    return found


def probe_once(exporter_port, module, target):
    query_string = urllib.parse.urlencode({"module": module, "target": target})
    return scrape("http://127.0.0.1:%d/probe?%s" % (exporter_port, query_string))


@pytest.fixture(scope="module")
def rendered_insecure(tmp_path_factory):
    """The role's configurations without a CA (test_prometheus_config.py's defaults, rendered once)."""
    _result, case = variant(tmp_path_factory, "defaults")
    return case / "out"


@pytest.mark.parametrize("days", [7, 30])
def test_the_roles_module_reports_the_certificates_expiry(rendered_insecure, tmp_path, days):
    module = next(iter(load(rendered_insecure, "blackbox.yml")["modules"]))
    cert, key = certificate(str(tmp_path), days)
    expiry = not_after(cert)
    assert abs(expiry - (time.time() + days * DAY)) < 120
    with tls_server(cert, key) as port, \
            blackbox_exporter(tool("prometheus-blackbox-exporter"), str(rendered_insecure / "blackbox.yml")) as bbx:
        text = probe_once(bbx, module, "127.0.0.1:%d" % port)
    assert samples(text, "probe_success") == {"": 1.0}, text
    assert samples(text, "probe_ssl_earliest_cert_expiry") == {"": expiry}, text


class _NeedsKey(http.server.BaseHTTPRequestHandler):
    """What an instance started with an API key answers to a request without one."""

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        self.send_response(401)
        self.end_headers()
        self.wfile.write(b'{"error": "Unauthorized"}')

    def log_message(self, *args):
        pass


def test_the_probe_needs_no_api_key(rendered_insecure, tmp_path):
    """A TLS handshake is all the probe does, so an endpoint that answers 401 to every request is probed all the
    same; an HTTP probe of /health would depend on what the server guards."""
    cert, key = certificate(str(tmp_path), 7)
    server = http.server.HTTPServer(("127.0.0.1", 0), _NeedsKey)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with blackbox_exporter(tool("prometheus-blackbox-exporter"),
                               str(rendered_insecure / "blackbox.yml")) as bbx:
            text = probe_once(bbx, "tls_connect", "127.0.0.1:%d" % server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert samples(text, "probe_success") == {"": 1.0}, text
    assert samples(text, "probe_ssl_earliest_cert_expiry") == {"": not_after(cert)}, text


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("ca"))
    return certificate(work, 60, name="inferops-test-ca")


def test_with_the_instances_ca_the_probe_verifies(ca, tmp_path, tmp_path_factory):
    # Rendered once with test_prometheus_config.py's, which only reads its out/.
    assert VARIANTS["vllm-ca"] == {"monitoring_prometheus_vllm_ca_src": "ca.crt"}
    _result, rendered = variant(tmp_path_factory, "vllm-ca")
    out = rendered / "out"
    # Where the role's CA task puts the CA: the tls directory it was rendered with.
    with open(ca[0]) as source, open(str(rendered / "tls" / "vllm-ca.crt"), "w") as dest:
        dest.write(source.read())
    signed = certificate(str(tmp_path), 7, ca=ca)
    (tmp_path / "stranger").mkdir()
    stranger = certificate(str(tmp_path / "stranger"), 7, name="127.0.0.1")
    with tls_server(*signed) as good, tls_server(*stranger) as bad, \
            blackbox_exporter(tool("prometheus-blackbox-exporter"), str(out / "blackbox.yml")) as bbx:
        verified = probe_once(bbx, "tls_connect", "127.0.0.1:%d" % good)
        refused = probe_once(bbx, "tls_connect", "127.0.0.1:%d" % bad)
    assert samples(verified, "probe_success") == {"": 1.0}, verified
    assert samples(verified, "probe_ssl_earliest_cert_expiry") == {"": not_after(signed[0])}, verified
    # A certificate the CA did not sign fails the handshake: no expiry, and probe_success 0.
    assert samples(refused, "probe_success") == {"": 0.0}, refused
    assert samples(refused, "probe_ssl_earliest_cert_expiry") == {}, refused


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory):
    """The role's rule files with its defaults, rendered once for the session (promql.py), for the tests that run
    Prometheus with them."""
    assert RULES_VARIANTS["defaults"] == {}
    return rendered_variant(tmp_path_factory, "defaults")


def query(port, promql):
    answer = json.loads(scrape("http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode(
        {"query": promql}))))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for(port, promql, predicate, deadline=60.0):
    end = time.monotonic() + deadline
    while True:
        result = query(port, promql)
        if predicate(result):
            return result
        if time.monotonic() > end:
            raise AssertionError("%s never met the expectation; last answer: %s" % (promql, result))
        time.sleep(0.2)


def evaluations(port):
    """{rule group: how many times Prometheus has evaluated it}, from its own /metrics."""
    text = scrape("http://127.0.0.1:%d/metrics" % port)
    return {group: float(count) for group, count in
            re.findall(r'^prometheus_rule_group_iterations_total\{rule_group="([^"]+)"\} (\S+)$', text, re.M)}


def wait_for_evaluations(port, since, count, deadline=60.0):
    """Waits until Prometheus has evaluated every rule group of `since` (evaluations()) `count` times more."""
    end = time.monotonic() + deadline
    while True:
        now = evaluations(port)
        if all(now.get(group, 0) - before >= count for group, before in since.items()):
            return
        if time.monotonic() > end:
            raise AssertionError("fewer than %d evaluations of %s: %s" % (count, since, now))
        time.sleep(0.2)


@contextlib.contextmanager
def prometheus_probing(tmp_path, rules_dir, instances, gateways=None, cas=(), **options):
    """The role rendered for a monitoring host and one vLLM host with TLS serving `instances` ({name: port} on this
    machine), and `gateways` ({inventory name: port}) when given; each of `cas` ((CA pair, file name)) placed where
    the role's CA tasks put it; then the blackbox exporter and Prometheus run on what was rendered (rules every
    500 ms, scrapes every second). Yields Prometheus's port, once it is ready, and the rendered out/."""
    exporter_port, prometheus_port = free_port(), free_port()
    children = {
        "monitoring_hosts": {"hosts": {"mon-1": {"ansible_connection": "local"}}},
        "vllm_hosts": {"hosts": {"gpu-a": {
            "monitoring_scrape_address": "127.0.0.1", "vllm_tls_cert_src": "files/a.crt",
            "vllm_instances": [{"name": name, "port": port} for name, port in instances.items()]}}},
    }
    if gateways:
        children["gateway_hosts"] = {"hosts": {name: {"monitoring_scrape_address": "127.0.0.1", "gateway_port": port}
                                               for name, port in gateways.items()}}
    result, out = render(tmp_path, dict({
        "monitoring_prometheus_scrape_interval": "1s", "monitoring_prometheus_evaluation_interval": "500ms",
        "monitoring_prometheus_rules_dir": str(rules_dir),
        "monitoring_prometheus_listen_address": "127.0.0.1:%d" % prometheus_port,
        "monitoring_blackbox_listen_address": "127.0.0.1:%d" % exporter_port,
    }, **options), hosts={"all": {"children": children}})
    assert result.returncode == 0, result.stdout[-4000:]
    for source_ca, placed in cas:
        with open(source_ca[0]) as source, open(str(tmp_path / "tls" / placed), "w") as dest:
            dest.write(source.read())
    listen = "--web.listen-address=127.0.0.1:%d" % exporter_port
    assert listen in (out / "blackbox.defaults").read_text()
    with tempfile.TemporaryDirectory() as data, \
            running([tool("prometheus-blackbox-exporter"), "--config.file=%s" % (out / "blackbox.yml"), listen]), \
            running([tool("prometheus"), "--config.file=%s" % (out / "prometheus.yml"), "--storage.tsdb.path=%s" % data,
                     "--web.listen-address=127.0.0.1:%d" % prometheus_port]):
        scrape("http://127.0.0.1:%d/-/ready" % prometheus_port, deadline=30)
        yield prometheus_port


def test_prometheus_scrapes_the_probe_and_the_rule_holds_for_the_certificate_that_expires_soon(ca, rules_dir,
                                                                                               tmp_path):
    signed_soon = certificate(str(tmp_path), 7, ca=ca)
    (tmp_path / "later").mkdir()
    signed_later = certificate(str(tmp_path / "later"), 30, ca=ca)
    (tmp_path / "gateway").mkdir()
    gateway = certificate(str(tmp_path / "gateway"), 7, ca=ca)
    with tls_server(*signed_soon) as soon, tls_server(*signed_later) as later, tls_server(*gateway) as gw, \
            prometheus_probing(tmp_path, rules_dir, {"soon": soon, "later": later}, cas=[(ca, "vllm-ca.crt")],
                               monitoring_prometheus_vllm_ca_src="ca.crt", monitoring_tls_probe_targets=[
                                   {"address": "127.0.0.1:%d" % gw, "name": "gateway", "host": "gw-1"}]) as prometheus_port:
        expiry = wait_for(prometheus_port, 'probe_ssl_earliest_cert_expiry{job="tls"}', lambda result: len(result) == 3)
        success = query(prometheus_port, 'probe_success{job="tls"}')
        pending = wait_for(prometheus_port, 'ALERTS{alertname="CertificateExpiringSoon"}', lambda result: len(result) >= 2)
        # Several evaluations later, still only those two: the 30-day certificate never matched.
        groups = evaluations(prometheus_port)
        assert groups, "Prometheus evaluated no rule group"
        wait_for_evaluations(prometheus_port, groups, 3)
        pending_later = query(prometheus_port, 'ALERTS{alertname="CertificateExpiringSoon"}')
    by_target = {series["metric"]["instance"]: series for series in expiry}
    assert sorted(by_target) == sorted("127.0.0.1:%d" % port for port in (soon, later, gw))
    assert {t: float(s["value"][1]) for t, s in by_target.items()} == {
        "127.0.0.1:%d" % soon: not_after(signed_soon[0]), "127.0.0.1:%d" % later: not_after(signed_later[0]),
        "127.0.0.1:%d" % gw: not_after(gateway[0])}
    labels = {t: {k: v for k, v in s["metric"].items() if k not in ("__name__", "instance")}
              for t, s in by_target.items()}
    assert labels == {
        "127.0.0.1:%d" % soon: {"job": "tls", "host": "gpu-a", "vllm_instance": "soon"},
        "127.0.0.1:%d" % later: {"job": "tls", "host": "gpu-a", "vllm_instance": "later"},
        "127.0.0.1:%d" % gw: {"job": "tls", "host": "gw-1", "endpoint": "gateway"}}
    assert sorted(float(s["value"][1]) for s in success) == [1.0, 1.0, 1.0], success
    for answer in (pending, pending_later):
        assert sorted((s["metric"]["instance"], s["metric"]["alertstate"], s["metric"]["severity"])
                      for s in answer) == sorted([("127.0.0.1:%d" % soon, "pending", "warning"),
                                                  ("127.0.0.1:%d" % gw, "pending", "warning")]), answer


def test_each_endpoint_is_probed_with_the_ca_that_signs_it(ca, rules_dir, tmp_path):
    """The instances' CA signs the instance, another CA the gateway (monitoring_prometheus_gateway_ca_src), as the
    role is given them: both probes succeed and report their expiry, each verified with its own CA, and under the
    same job; a gateway whose certificate a third CA signed fails its probe (no expiry) and TlsProbeFailing is
    pending for it alone."""
    for name in ("gateway-ca", "stranger-ca", "instance", "gateway", "stranger"):
        (tmp_path / name).mkdir()
    gateway_ca = certificate(str(tmp_path / "gateway-ca"), 60, name="inferops-test-gateway-ca")
    stranger_ca = certificate(str(tmp_path / "stranger-ca"), 60, name="inferops-test-stranger-ca")
    instance = certificate(str(tmp_path / "instance"), 30, ca=ca)
    gateway = certificate(str(tmp_path / "gateway"), 20, ca=gateway_ca)
    stranger = certificate(str(tmp_path / "stranger"), 20, ca=stranger_ca)
    with tls_server(*instance) as vllm, tls_server(*gateway) as gw, tls_server(*stranger) as other, \
            prometheus_probing(tmp_path, rules_dir, {"chat": vllm}, {"gw-1": gw, "gw-2": other},
                               cas=[(ca, "vllm-ca.crt"), (gateway_ca, "gateway-ca.crt")],
                               monitoring_prometheus_vllm_ca_src="ca.crt",
                               monitoring_prometheus_gateway_ca_src="gateway-ca.crt") as prometheus_port:
        success = wait_for(prometheus_port, 'probe_success{job="tls"}', lambda result: len(result) == 3)
        expiry = query(prometheus_port, 'probe_ssl_earliest_cert_expiry{job="tls"}')
        failing = wait_for(prometheus_port, 'ALERTS{alertname="TlsProbeFailing"}', lambda result: result)
    instance_target, gateway_target, stranger_target = ("127.0.0.1:%d" % port for port in (vllm, gw, other))
    by_target = {series["metric"]["instance"]: series for series in success}
    assert {t: float(s["value"][1]) for t, s in by_target.items()} == {
        instance_target: 1.0, gateway_target: 1.0, stranger_target: 0.0}, success
    # All three under job tls, with their target's labels and no __param_module.
    assert {t: {k: v for k, v in s["metric"].items() if k not in ("__name__", "instance")}
            for t, s in by_target.items()} == {
        instance_target: {"job": "tls", "host": "gpu-a", "vllm_instance": "chat"},
        gateway_target: {"job": "tls", "host": "gw-1", "endpoint": "gateway"},
        stranger_target: {"job": "tls", "host": "gw-2", "endpoint": "gateway"}}
    # The gateway's expiry is reported (CertificateExpiringSoon sees it); the stranger's, which did not verify, not.
    assert {s["metric"]["instance"]: float(s["value"][1]) for s in expiry} == {
        instance_target: not_after(instance[0]), gateway_target: not_after(gateway[0])}, expiry
    assert [(s["metric"]["instance"], s["metric"]["alertstate"]) for s in failing] == [
        (stranger_target, "pending")], failing
