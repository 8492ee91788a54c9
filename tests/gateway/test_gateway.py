"""The gateway role's HAProxy configuration, rendered by the role's own checks and templates, validated by Debian's
haproxy -c and run by Debian's HAProxy 2.6 on this machine in front of the lab's vLLM emulators (plain processes,
no Docker): the key at the edge on every route the real vLLM has, streams passed through, engine death and
backends gone, the backup upstream, the gateway's own /health, and bad options refused."""
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from ansible_collections.inferops.vllm.plugins.module_utils import _haproxy_admin
from grafana_queries import dashboard, panel_queries
from local_backends import HAPROXY, MODEL, ROOT, Emulators
from local_ports import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
BACKEND_KEY = "backend-key-3f9a7c2e"
CLIENT_KEYS = ["client-key-one-8d41b0", "client-key-two-77c2e9"]
BACKUP_KEY = "backup-key-5b1e60d4"
BACKUP_MODEL = "fallback-llama"
# Every route the real vLLM 0.32 serves, as it lists them when it starts (captured from the real-vLLM lab).
REAL_ROUTES_LOG = os.path.join(ROOT, "tests", "unit", "fixtures", "vllm_logs",
                               "none__real_vllm_cpu_0320_healthy_O0_until_ready.log")
UNAUTHORIZED = b'{"error":"Unauthorized"}'  # vLLM's own 401 body (tests/conformance/test_auth.py)
# HAProxy's /metrics as this configuration exports them, which tests/monitoring holds the gateway's rules to.
GATEWAY_METRICS = os.path.join(ROOT, "tests", "monitoring", "fixtures", "haproxy-2.6-gateway.metrics")


def sample_names(text):
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def real_routes():
    routes = []
    with open(REAL_ROUTES_LOG) as handle:
        for match in re.finditer(r"Route: (\S+), Methods: ([A-Z, ]+)", handle.read()):
            for method in match.group(2).split(", "):
                routes.append((method, re.sub(r"\{[^}]+\}", "x", match.group(1))))
    return routes


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    import trustme

    tmp = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    (tmp / "gateway.crt").write_bytes(issued.cert_chain_pems[0].bytes())
    (tmp / "gateway.key").write_bytes(issued.private_key_pem.bytes())
    (tmp / "ca.crt").write_bytes(ca.cert_pem.bytes())
    return tmp


def host_vars(tmp, certificates, instances, **extra):
    conf = tmp / "conf"
    values = {
        "vllm_instances": instances, "vllm_api_keys": [BACKEND_KEY], "gateway_api_keys": CLIENT_KEYS,
        "gateway_tls_cert_src": str(certificates / "gateway.crt"), "gateway_tls_key_src": str(certificates / "gateway.key"),
        "gateway_listen_address": "127.0.0.1", "gateway_port": free_port(),
        # Requests from this machine are not the monitoring network unless a test says so.
        "gateway_metrics_sources": ["192.0.2.1/32"],
        "gateway_check_interval": "500ms", "gateway_check_fall": 2, "gateway_check_rise": 1,
        # Where this machine has them: HAProxy unpacked under build/, run as root without a chroot of its own.
        "gateway_config_dir": str(conf), "gateway_group": "root", "gateway_user": "root",
        "gateway_chroot_dir": str(tmp), "gateway_admin_socket": str(tmp / "admin.sock"), "gateway_haproxy": HAPROXY,
    }
    values.update(extra)
    return values


def render(tmp, values):
    """Renders for one host `gw` (values: its variables) or for several ({name: variables}), each into the `out`
    of its variables, by default tmp/out."""
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    hosts = values if "gateway_port" not in values else {"gw": values}
    hosts = {name: dict({"out": str(out)}, **variables) for name, variables in hosts.items()}
    inventory = tmp / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"gateway_hosts": {"hosts": hosts}}}}))
    return subprocess.run(["ansible-playbook", os.path.join(HERE, "render-gateway.yml"), "-i", str(inventory)],
                          capture_output=True, text=True, timeout=300, check=False)


def render_gateways(tmp, gateways):
    """Renders several gateways in one ansible-playbook run: gateways is {name: (directory, its variables)}, each
    rendered into directory/out as Gateway(directory, variables) would. Returns {name: Gateway's `rendered`}."""
    for directory, _values in gateways.values():
        (directory / "out").mkdir()
    result = render(tmp, {name: dict(values, out=str(directory / "out"))
                          for name, (directory, values) in gateways.items()})
    assert result.returncode == 0, result.stdout[-4000:]
    return {name: result for name in gateways}


class Gateway:
    def __init__(self, tmp, values, rendered=None):
        """HAProxy on what the role rendered for `values` into tmp/out; `rendered` is the run that rendered it
        already (render_gateways), or it is rendered here."""
        self.tmp, self.values = tmp, values
        result = rendered or render(tmp, values)
        assert result.returncode == 0, result.stdout[-4000:]
        self.render_output = result.stdout + result.stderr
        self.config = tmp / "out" / "haproxy.cfg"
        self.process = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=open(tmp / "haproxy.log", "w"))
        self.url = "https://127.0.0.1:%d" % values["gateway_port"]
        self.context = ssl.create_default_context(
            cafile=os.path.join(os.path.dirname(values["gateway_tls_cert_src"]), "ca.crt"))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", values["gateway_port"]), timeout=1).close()
                break
            except OSError:
                problem = "HAProxy exited" if self.process.poll() is not None else \
                    "HAProxy does not listen" if time.monotonic() > deadline else None
                if problem:
                    self.close()
                    raise AssertionError("%s: %s" % (problem, (tmp / "haproxy.log").read_text()[-2000:]))
                time.sleep(0.1)

    def request(self, path, method="GET", body=None, authorization=None, timeout=30):
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
        request = urllib.request.Request(self.url + path, method=method, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def wait(self, check, timeout=15):
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "gave up waiting"
            time.sleep(0.2)

    def close(self):
        self.process.kill()
        self.process.wait(10)


def instances(emulators, names):
    return [{"name": name, "model": MODEL, "port": emulators.processes[name][1]} for name in names]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, certificates):
    """Two emulated instances behind a gateway, shared by the tests that leave them running; and a second gateway
    in front of them whose gateway_metrics_sources is this machine (the monitoring network), rendered in the same
    run."""
    tmp = tmp_path_factory.mktemp("fleet")
    emulators = Emulators(str(tmp))
    try:
        emulators.start("a", BACKEND_KEY, 0)
        emulators.start("b", BACKEND_KEY, 1)
        emulators.wait_healthy()
        monitored_tmp = tmp / "monitored"
        monitored_tmp.mkdir()
        values = host_vars(tmp, certificates, instances(emulators, ["a", "b"]))
        monitored_values = host_vars(monitored_tmp, certificates, instances(emulators, ["a", "b"]),
                                     gateway_metrics_sources=["127.0.0.1/32"])
        rendered = render_gateways(tmp, {"gw": (tmp, values), "gw-monitored": (monitored_tmp, monitored_values)})
        gateway = Gateway(tmp, values, rendered["gw"])
        try:
            monitored = Gateway(monitored_tmp, monitored_values, rendered["gw-monitored"])
            try:
                gateway.wait(lambda: gateway.request("/health")[0] == 200)
                monitored.wait(lambda: monitored.request("/health")[0] == 200)
                yield gateway, emulators, monitored
            finally:
                monitored.close()
        finally:
            gateway.close()
    finally:
        emulators.close()


def bearer(key):
    return "Bearer %s" % key


def test_every_route_of_the_real_vllm_needs_a_key_but_health_and_ping(fleet):
    gateway = fleet[0]
    routes = real_routes()
    assert len(routes) > 30 and ("POST", "/tokenize") in routes and ("GET", "/metrics") in routes
    for method, path in routes:
        if path in ("/health", "/ping"):
            assert gateway.request(path, method)[0] == 200, (method, path)
            continue
        for authorization in (None, bearer("wrong-key-000000"), bearer(BACKEND_KEY), "Bearer  " + CLIENT_KEYS[0],
                              "Basic " + CLIENT_KEYS[0], CLIENT_KEYS[0], bearer(CLIENT_KEYS[0].upper())):
            expected = (401, b"" if method == "HEAD" else UNAUTHORIZED)
            assert gateway.request(path, method, authorization=authorization) == expected, \
                (method, path, authorization and authorization.split()[0])


def test_each_client_key_reaches_the_instances_with_any_case_of_bearer(fleet):
    gateway = fleet[0]
    for key in CLIENT_KEYS:
        for scheme in ("Bearer", "bearer", "BEARER"):
            status, body = gateway.request("/v1/models", authorization="%s %s" % (scheme, key))
            assert status == 200 and json.loads(body)["data"][0]["id"] == MODEL
    status, body = gateway.request("/v1/completions", "POST", {"model": MODEL, "prompt": "hi", "max_tokens": 4},
                                   authorization=bearer(CLIENT_KEYS[1]))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 4


def test_requests_are_spread_over_the_instances(fleet):
    gateway, emulators = fleet[:2]

    def served(name):
        return emulators.log(name).count("POST /v1/completions")

    before = {name: served(name) for name in ("a", "b")}
    for _request in range(10):
        assert gateway.request("/v1/completions", "POST", {"model": MODEL, "prompt": "hi", "max_tokens": 2},
                               authorization=bearer(CLIENT_KEYS[0]))[0] == 200
    assert all(served(name) > before[name] for name in ("a", "b")), before


def test_a_stream_passes_through_token_by_token(fleet):
    gateway = fleet[0]
    request = urllib.request.Request(
        gateway.url + "/v1/completions", method="POST",
        data=json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 400, "stream": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": bearer(CLIENT_KEYS[0])})
    arrivals = []
    with urllib.request.urlopen(request, timeout=60, context=gateway.context) as response:
        for line in response:
            if line.startswith(b"data: "):
                arrivals.append((time.monotonic(), line))
    assert arrivals[-1][1].strip() == b"data: [DONE]"
    assert len(arrivals) > 400
    # 400 tokens at the emulator's 5 ms each: a buffering proxy would deliver them all at the end.
    assert arrivals[-1][0] - arrivals[0][0] > 1.0


def test_metrics_answer_the_monitoring_network_without_a_key_and_others_only_with_one(fleet):
    gateway, _emulators, monitored = fleet
    assert gateway.values["gateway_metrics_sources"] == ["192.0.2.1/32"]
    assert gateway.request("/metrics") == (401, UNAUTHORIZED)
    status, body = gateway.request("/metrics", authorization=bearer(CLIENT_KEYS[0]))
    assert status == 200 and b"haproxy_backend_active_servers" in body
    assert monitored.values["gateway_metrics_sources"] == ["127.0.0.1/32"]
    status, body = monitored.request("/metrics")
    assert status == 200 and re.search(rb'haproxy_backend_active_servers\{proxy="vllm"\} 2', body), body[-2000:]
    assert monitored.request("/tokenize", "POST") == (401, UNAUTHORIZED)
    # The capture the monitoring role's rules are held to is what this HAProxy exports.
    with open(GATEWAY_METRICS) as handle:
        assert sample_names(body.decode()) == sample_names(handle.read())


def test_the_keys_stay_out_of_ansibles_output_and_the_files_are_private(fleet):
    gateway = fleet[0]
    for secret in CLIENT_KEYS + [BACKEND_KEY]:
        assert secret not in gateway.render_output
    conf = gateway.tmp / "conf"
    assert (conf / "api-keys.lst").read_text().split() == CLIENT_KEYS
    for name in ("api-keys.lst", "gateway.pem"):
        assert os.stat(conf / name).st_mode & 0o777 == 0o640
    assert "PRIVATE KEY" in (conf / "gateway.pem").read_text()


@pytest.fixture
def own_fleet(tmp_path, certificates):
    """Instances a test may break: two primaries, and a backup server with a model name of its own."""
    emulators = Emulators(str(tmp_path))
    try:
        emulators.start("a", BACKEND_KEY, 2)
        emulators.start("b", BACKEND_KEY, 3)
        emulators.start("backup", BACKUP_KEY, 4, "--served-model-name", BACKUP_MODEL)
        emulators.wait_healthy()
        yield emulators
    finally:
        emulators.close()


def model_served(gateway):
    status, body = gateway.request("/v1/models", authorization=bearer(CLIENT_KEYS[0]), timeout=10)
    return status, json.loads(body)["data"][0]["id"] if status == 200 else body


def test_a_dead_engine_leaves_the_rotation_and_the_other_instance_serves(own_fleet, tmp_path, certificates):
    gateway = Gateway(tmp_path, host_vars(tmp_path, certificates, instances(own_fleet, ["a", "b"])))
    try:
        gateway.wait(lambda: gateway.request("/health")[0] == 200)
        own_fleet.set_fault("a", {"engine_dead": True})
        # Checks every 500 ms: out after two failures.
        socket_path = gateway.values["gateway_admin_socket"]
        gateway.wait(lambda: _haproxy_admin.servers(socket_path, "vllm")["gw-a"]["status"].startswith("DOWN"))
        statuses = [gateway.request("/v1/completions", "POST", {"model": MODEL, "prompt": "hi", "max_tokens": 1},
                                    authorization=bearer(CLIENT_KEYS[0]))[0] for _request in range(10)]
        assert statuses == [200] * 10
        assert gateway.request("/health")[0] == 200
    finally:
        gateway.close()


def test_without_a_backend_health_says_so_and_requests_get_503_at_once(own_fleet, tmp_path, certificates):
    gateway = Gateway(tmp_path, host_vars(tmp_path, certificates, instances(own_fleet, ["a", "b"])))
    try:
        gateway.wait(lambda: gateway.request("/health")[0] == 200)
        own_fleet.stop("a")
        own_fleet.stop("b")
        gateway.wait(lambda: gateway.request("/health")[0] == 503)
        assert gateway.request("/ping")[0] == 503
        started = time.monotonic()
        assert gateway.request("/v1/models", authorization=bearer(CLIENT_KEYS[0]))[0] == 503
        assert time.monotonic() - started < 5  # not a hang until a timeout
        assert gateway.request("/v1/models")[0] == 401
    finally:
        gateway.close()


def test_the_backup_takes_the_traffic_only_while_no_instance_is_in_rotation(own_fleet, tmp_path, certificates):
    backup = "http://127.0.0.1:%d" % own_fleet.processes["backup"][1]
    gateway = Gateway(tmp_path, host_vars(tmp_path, certificates, instances(own_fleet, ["a", "b"]),
                                          gateway_backup_url=backup, gateway_backup_api_key=BACKUP_KEY))
    try:
        gateway.wait(lambda: gateway.request("/health")[0] == 200)
        assert [model_served(gateway) for _request in range(4)] == [(200, MODEL)] * 4
        own_fleet.stop("a")
        own_fleet.stop("b")
        gateway.wait(lambda: model_served(gateway) == (200, BACKUP_MODEL))
        # The gateway's health speaks of the vLLM instances, whatever the backup does.
        assert gateway.request("/health")[0] == 503
    finally:
        gateway.close()


BAD_OPTIONS = [
    ({"gateway_api_keys": []}, "gateway_api_keys is a list of at least one key"),
    ({"gateway_api_keys": ["short"]}, "gateway_api_keys is a list of at least one key"),
    ({"gateway_api_keys": ["client-key-one-8d41b0\n    server evil 10.0.0.1:80"]}, "gateway_api_keys is a list"),
    ({"gateway_api_keys": ["client key with spaces"]}, "gateway_api_keys is a list"),
    ({"gateway_port": 70000}, "gateway_port a port"),
    ({"gateway_request_timeout": "15 minutes"}, "gateway_request_timeout"),
    ({"gateway_tls_cert_src": ""}, "set gateway_tls_cert_src and gateway_tls_key_src"),
    ({"vllm_api_keys": ["backend key with spaces"]}, "one key for all of them"),
    ({"vllm_instances": []}, "at least one"),
    ({"gateway_backend_hosts": ["nowhere"]}, "gateway_backend_hosts names inventory hosts"),
    ({"gateway_metrics_sources": ["10.0.0.0/8 || true"]}, "gateway_metrics_sources is a list"),
    ({"gateway_backup_url": "http://llama:8080/v1"}, "gateway_backup_url is empty or http(s)://host:port"),
    ({"gateway_backup_url": "http://llama:8080", "gateway_backup_api_key": "x\ny"}, "gateway_backup_api_key"),
]


def test_bad_options_are_refused_before_anything_is_written(tmp_path, certificates):
    """One inventory host per case, in one run: each fails on its own option, naming it, and writes nothing."""
    hosts = {}
    for index, (extra, _phrase) in enumerate(BAD_OPTIONS):
        case = tmp_path / ("case%d" % index)
        case.mkdir()
        hosts["case%d" % index] = host_vars(case, certificates, [{"name": "a", "model": MODEL, "port": 8000}],
                                            **extra)
    result = render(tmp_path, hosts)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    for secret in CLIENT_KEYS + [BACKEND_KEY]:
        assert secret not in output
    failures = dict(re.findall(r"^fatal: \[(case\d+)\]: FAILED! => *\n((?:    .*\n)+)", result.stdout, re.M))
    for index, (extra, phrase) in enumerate(BAD_OPTIONS):
        name = "case%d" % index
        assert name in failures, (extra, result.stdout[-3000:])
        assert phrase in " ".join(failures[name].split()), (extra, failures[name])
        assert not (tmp_path / name / "conf").exists()
    assert not (tmp_path / "out" / "haproxy.cfg").exists()


def test_a_key_a_rotation_retired_is_refused_unless_let_back_on_purpose(tmp_path, certificates):
    """rotate_api_key.yml leaves salted digests of the keys it retired; a deploy whose inventory still names one
    fails, naming the option and the way out, without the key in its output."""
    import hashlib
    salt = "5f0c9a1e"
    retired = {"salt": salt, "retired_at": "2026-12-06T10:00:00Z",
               "digests": [hashlib.sha256((salt + CLIENT_KEYS[0]).encode()).hexdigest()]}
    hosts = {}
    for name, extra in (("revived", {}), ("allowed", {"gateway_allow_retired_keys": True}),
                        ("current", {"gateway_api_keys": CLIENT_KEYS[1:]})):
        case = tmp_path / name
        (case / "conf").mkdir(parents=True)
        (case / "conf" / "retired-keys.json").write_text(json.dumps(retired))
        hosts[name] = host_vars(case, certificates, [{"name": "a", "model": MODEL, "port": 8000}], **extra)
    result = render(tmp_path, hosts)
    failures = dict(re.findall(r"^fatal: \[(\w+)\]: FAILED! => *\n((?:    .*\n)+)", result.stdout, re.M))
    assert sorted(failures) == ["revived"], result.stdout[-3000:]
    said = " ".join(failures["revived"].split())
    assert "gateway_api_keys holds 1 key(s) that rotate_api_key.yml retired on this gateway on 2026-12-06" in said
    assert "gateway_allow_retired_keys" in said
    for secret in CLIENT_KEYS + [BACKEND_KEY]:
        assert secret not in result.stdout + result.stderr


def render_prometheus(tmp, gateway_ports):
    """The monitoring role's scrape configuration (tests/monitoring/render-prometheus.yml) for a fleet whose only
    gateways are this machine's HAProxies ({inventory name: port})."""
    tools = os.path.join(ROOT, "build", "tools", "bin")
    inventory = tmp / "monitoring.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {
        "monitoring_hosts": {"hosts": {"mon-1": {"ansible_connection": "local"}}},
        "gateway_hosts": {"hosts": {name: {"monitoring_scrape_address": "127.0.0.1", "gateway_port": port}
                                    for name, port in gateway_ports.items()}},
    }}}))
    out = tmp / "monitoring"
    out.mkdir()
    args = {"out": str(out), "promtool": os.path.join(tools, "promtool"), "amtool": os.path.join(tools, "amtool"),
            "blackbox": os.path.join(tools, "prometheus-blackbox-exporter"),
            "monitoring_prometheus_rules_dir": str(tmp / "rules"), "monitoring_prometheus_scrape_interval": "1s"}
    result = subprocess.run(["ansible-playbook", os.path.join(ROOT, "tests", "monitoring", "render-prometheus.yml"),
                             "-i", str(inventory), "-e", json.dumps(args)], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    return out / "prometheus.yml"


@pytest.fixture(scope="module")
def prometheus(fleet, tmp_path_factory):
    """Debian's Prometheus on the monitoring role's configuration for the fleet's two gateways, as inventory hosts
    gw (whose gateway_metrics_sources is another network) and gw-monitored (whose is this machine): its port."""
    gateway, _emulators, monitored = fleet
    tmp = tmp_path_factory.mktemp("monitoring")
    config = render_prometheus(tmp, {"gw": gateway.values["gateway_port"],
                                     "gw-monitored": monitored.values["gateway_port"]})
    port = free_port()
    process = subprocess.Popen([os.path.join(ROOT, "build", "tools", "bin", "prometheus"), "--config.file",
                                str(config), "--storage.tsdb.path", str(tmp / "tsdb"), "--web.listen-address",
                                "127.0.0.1:%d" % port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        process.kill()
        process.wait(10)


def scraped(port, query, count=1):
    """The samples the Prometheus on `port` answers to `query`, once there are `count` (or 20 s pass: the last
    answer)."""
    deadline = time.monotonic() + 20
    result = []
    while time.monotonic() < deadline:
        try:
            url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (port, urllib.request.quote(query))
            with urllib.request.urlopen(url, timeout=5) as response:
                result = json.loads(response.read())["data"]["result"]
            if len(result) >= count:
                return result
        except (OSError, urllib.error.URLError, KeyError):
            pass
        time.sleep(0.2)
    return result


@pytest.mark.parametrize("sources, up", [(["127.0.0.1/32"], "1"), (["192.0.2.1/32"], "0")])
def test_the_monitoring_roles_prometheus_scrapes_the_gateway_when_it_is_a_metrics_source(fleet, prometheus, sources,
                                                                                         up):
    gateways = {"gw": fleet[0], "gw-monitored": fleet[2]}
    host, = [name for name, gateway in gateways.items() if gateway.values["gateway_metrics_sources"] == sources]
    found = scraped(prometheus, 'up{job="gateway",host="%s"}' % host)
    assert [(sample["metric"]["host"], sample["value"][1]) for sample in found] == [(host, up)]
    if up == "1":
        servers = scraped(prometheus, 'haproxy_backend_active_servers{job="gateway",proxy="vllm",host="%s"}' % host)
        assert [sample["value"][1] for sample in servers] == ["2"]
    # Both gateways are targets of the job, each with its own host label.
    both = scraped(prometheus, 'up{job="gateway"}', count=2)
    assert sorted(sample["metric"]["host"] for sample in both) == sorted(gateways)


def test_every_query_of_the_gateways_dashboard_returns_data_after_traffic(fleet, prometheus):
    """Issue 15's proof of a dashboard in place of a Grafana, for the gateways' one (the lab's fleet has no gateway):
    after requests through the monitored gateway, with and without a key, every panel's query, its variables set
    the way Grafana sets them, returns series from the Prometheus that scrapes it with the monitoring role's
    configuration."""
    monitored = fleet[2]
    # Traffic after a first scrape, so that the rates see it happen.
    assert scraped(prometheus, 'up{job="gateway",host="gw-monitored"} == 1')
    for _request in range(3):
        assert monitored.request("/v1/completions", "POST", {"model": MODEL, "prompt": "hi", "max_tokens": 2},
                                 authorization=bearer(CLIENT_KEYS[0]))[0] == 200
    assert monitored.request("/v1/models")[0] == 401

    def label_values(label, selector):
        return sorted({sample["metric"][label] for sample in scraped(prometheus, selector, count=2)})

    board = dashboard("inferops-gateway.json")
    queries = dict(panel_queries(board, label_values))
    by_class, = [expr for where, expr in queries.items() if "Responses/s at the edge by class" in where]

    def classes_seen():
        return {sample["metric"]["code"] for sample in scraped(prometheus, by_class) if float(sample["value"][1]) > 0}

    # Scraped since the traffic: its 401s show in the rates (polled, at most 20 s). Not its 2xx: Prometheus's own
    # scrapes of /metrics, on the same frontend, are 2xx too.
    deadline = time.monotonic() + 20
    while "4xx" not in classes_seen():
        assert time.monotonic() < deadline, scraped(prometheus, by_class)
        time.sleep(0.5)
    found = {where: scraped(prometheus, expr) for where, expr in queries.items()}
    assert len(found) > 12 and [where for where, series in found.items() if not series] == []
    in_rotation, = [series for where, series in found.items() if "Instances in rotation" in where]
    assert [(sample["metric"]["host"], sample["value"][1]) for sample in in_rotation] == [("gw-monitored", "2")]


def gateway_server(gateway, **args):
    """The collection's gateway_server module, run by Ansible on this machine against the test gateway's socket."""
    args.setdefault("socket", gateway.values["gateway_admin_socket"])
    result = subprocess.run(["ansible", "localhost", "-c", "local", "-m", "inferops.vllm.gateway_server", "-a",
                             json.dumps(args), "-e", "ansible_python_interpreter=%s" % sys.executable],
                            capture_output=True, text=True, timeout=120, check=False,
                            env=dict(os.environ, ANSIBLE_CALLBACK_RESULT_FORMAT="json"))
    match = re.search(r"=> (\{.*\})", result.stdout, re.S)
    assert match, result.stdout + result.stderr
    return dict(json.loads(match.group(1)), failed="| FAILED!" in result.stdout)


def test_a_drained_instance_finishes_its_stream_takes_no_new_request_and_comes_back(own_fleet, tmp_path,
                                                                                    certificates):
    gateway = Gateway(tmp_path, host_vars(tmp_path, certificates, instances(own_fleet, ["a", "b"])))
    socket_path = gateway.values["gateway_admin_socket"]
    try:
        gateway.wait(lambda: gateway.request("/health")[0] == 200)
        events = []
        # About 10 s at the emulator's pace (5 ms a token, within the 2048-token context): the drain below starts
        # only after an ansible run, which a busy 2-core machine has seen take most of a 4 s stream.
        tokens = 1900

        def stream():
            request = urllib.request.Request(
                gateway.url + "/v1/completions", method="POST",
                data=json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": tokens, "stream": True}).encode(),
                headers={"Content-Type": "application/json", "Authorization": bearer(CLIENT_KEYS[0])})
            with urllib.request.urlopen(request, timeout=60, context=gateway.context) as response:
                events.extend(line.strip() for line in response if line.startswith(b"data: "))

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        gateway.wait(lambda: any(s["sessions"] for s in _haproxy_admin.servers(socket_path, "vllm").values()))
        busy = [name for name, s in _haproxy_admin.servers(socket_path, "vllm").items() if s["sessions"]][0]
        other = "gw-a" if busy == "gw-b" else "gw-b"
        served_before = own_fleet.log(other[3:]).count("POST /v1/completions")
        drained = gateway_server(gateway, server=busy, state="drain", wait_idle=30)
        # It returned once the stream ended, whole; meanwhile new requests went to the other instance only.
        assert drained["changed"] and drained["before"] == "UP" and drained["sessions_left"] == 0, drained
        assert drained["waited"] > 1.0
        reader.join(30)
        assert events[-1] == b"data: [DONE]" and len(events) > tokens
        for _request in range(6):
            assert gateway.request("/v1/completions", "POST", {"model": MODEL, "prompt": "hi", "max_tokens": 1},
                                   authorization=bearer(CLIENT_KEYS[0]))[0] == 200
        assert own_fleet.log(other[3:]).count("POST /v1/completions") == served_before + 6
        assert _haproxy_admin.servers(socket_path, "vllm")[busy]["status"] == "DRAIN"
        again = gateway_server(gateway, server=busy, state="drain")
        assert not again["changed"]
        ready = gateway_server(gateway, server=busy, state="ready")
        assert ready["changed"] and ready["before"] == "DRAIN"
        assert _haproxy_admin.servers(socket_path, "vllm")[busy]["status"].startswith("UP")
        missing = gateway_server(gateway, server="gw-nope", state="drain")
        assert missing.get("failed") and "has no server gw-nope" in missing["msg"]
        assert not gateway_server(gateway, server="gw-nope", state="drain", missing_ok=True).get("failed")
    finally:
        gateway.close()


def test_a_re_admitted_instance_is_waited_for_until_the_gateways_checks_count_it_up(own_fleet, tmp_path, certificates):
    """A rolling restart drains the next instance only once the last one takes requests again: `ready` with wait_up
    returns when HAProxy's checks pass, and fails, naming the status, when they do not in time."""
    gateway = Gateway(tmp_path, host_vars(tmp_path, certificates, instances(own_fleet, ["a", "b"])))
    socket_path = gateway.values["gateway_admin_socket"]

    def status():
        return _haproxy_admin.servers(socket_path, "vllm")["gw-a"]["status"]

    try:
        gateway.wait(lambda: gateway.request("/health")[0] == 200)
        assert gateway_server(gateway, server="gw-a", state="drain")["changed"]
        # As during its restart: drained, then stopped, so that its checks fail.
        port = own_fleet.processes["a"][1]
        own_fleet.stop("a")
        gateway.wait(lambda: status().startswith("DOWN"))
        refused = gateway_server(gateway, server="gw-a", state="ready", wait_up=2)
        assert refused["failed"] and refused["changed"] and refused["before"].startswith("DOWN"), refused
        assert refused["after"].startswith("DOWN") and refused["waited"] >= 2
        assert "did not count it up within 2 s (wait_up): its status is DOWN" in refused["msg"]
        # Out of the drain all the same (a drained server whose checks fail is DOWN too): it comes back by itself
        # once its checks pass.
        assert _haproxy_admin.admin_states(socket_path, "vllm")["gw-a"] == 0

        # It starts again 3 s after the module took it out of the drain, while it waits: it returns once the checks
        # pass.
        healed = threading.Event()

        def drained():
            return _haproxy_admin.admin_states(socket_path, "vllm")["gw-a"] & _haproxy_admin.FORCED_DRAIN

        def heal():
            gateway.wait(lambda: not drained())
            time.sleep(3)
            own_fleet.start("a", BACKEND_KEY, 2, port=port)
            healed.set()

        assert gateway_server(gateway, server="gw-a", state="drain")["changed"]
        assert drained()
        healer = threading.Thread(target=heal, daemon=True)
        healer.start()
        back = gateway_server(gateway, server="gw-a", state="ready", wait_up=60)
        assert healed.is_set()
        assert not back["failed"] and back["changed"] and back["after"] == "UP", back
        assert back["waited"] > 2
        assert _haproxy_admin.counts_as_up(status())
        # Already up: nothing to change, and no wait.
        again = gateway_server(gateway, server="gw-a", state="ready", wait_up=60)
        assert not again["changed"] and again["after"] == "UP" and again["waited"] < 1
        assert gateway_server(gateway, server="gw-a", state="ready", wait_up=-1)["msg"] == (
            "wait_up is a number of seconds, 0 or more")
    finally:
        gateway.close()


def test_a_hung_instance_leaves_the_rotation_through_its_watchdog_and_the_other_serves(own_fleet, tmp_path,
                                                                                       certificates):
    """The real watchdog (as a plain python3 program, its default interval and probe timeout) answering HAProxy's
    agent check: /health keeps answering 200 for a hung engine, the watchdog's "down" takes it out. No runtime
    here to restart it: that is tested on lab hosts (tests/integration/test_watchdog_lab.py)."""
    agent_port = free_port()
    names = ["a", "b"]
    gateway = Gateway(tmp_path, host_vars(
        tmp_path, certificates, [dict(i, watchdog=True) for i in instances(own_fleet, names)],
        vllm_watchdog_agent_port=agent_port))
    assert 'agent-check agent-port %d agent-inter 500ms agent-send "a\\n"' % agent_port in gateway.config.read_text()
    keys = tmp_path / "serve-config.yaml"
    keys.write_text(json.dumps({"api-key": [BACKEND_KEY]}))
    config = tmp_path / "watchdog.json"
    config.write_text(json.dumps({
        "instances": [{"name": n, "backend": "docker", "port": own_fleet.processes[n][1], "model": MODEL,
                       "keys_file": str(keys)} for n in names],
        "agent_address": "127.0.0.1", "agent_port": agent_port, "state_file": str(tmp_path / "state.json"),
        "diagnostics_dir": str(tmp_path / "diagnostics"), "keep_diagnostics": 0}))
    journal = open(tmp_path / "watchdog.log", "w")
    watchdog = subprocess.Popen([sys.executable, "-s", "-m",
                                 "ansible_collections.inferops.vllm.plugins.module_utils._watchdog", "--config",
                                 str(config)], stdout=journal, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "build", "collections")))
    socket_path = gateway.values["gateway_admin_socket"]

    def status(server):
        return _haproxy_admin.servers(socket_path, "vllm")[server]["status"]
    try:
        gateway.wait(lambda: status("gw-a") == "UP" and status("gw-b") == "UP", timeout=30)
        own_fleet.set_fault("a", {"hang": True})
        hung_at = time.monotonic()
        # /health still answers 200 for the hung engine: only the watchdog can take it out.
        gateway.wait(lambda: status("gw-a").startswith("DOWN"), timeout=20)
        out_after = time.monotonic() - hung_at
        assert out_after <= 15, "out of rotation %.1f s after the hang" % out_after
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % own_fleet.processes["a"][1], timeout=5) as r:
            assert r.status == 200
        statuses = [gateway.request("/v1/completions", "POST", {"model": MODEL, "prompt": "hi", "max_tokens": 1},
                                    authorization=bearer(CLIENT_KEYS[0]), timeout=10)[0] for _request in range(8)]
        assert statuses == [200] * 8
        assert status("gw-b") == "UP"
        state = json.loads((tmp_path / "state.json").read_text())["instances"]
        assert not state["a"]["in_rotation"] and state["b"]["in_rotation"]
        assert "inference_hang" in state["a"]["reason"]
        said = (tmp_path / "watchdog.log").read_text()
        assert re.search(r"^<4>a: out of rotation: unhealthy \(inference_hang", said, re.M), said
        assert BACKEND_KEY not in said and BACKEND_KEY not in (tmp_path / "state.json").read_text()
        print("hung instance out of rotation %.1f s after the hang" % out_after)
    finally:
        watchdog.terminate()
        watchdog.wait(10)
        gateway.close()
