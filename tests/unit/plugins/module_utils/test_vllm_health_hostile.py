"""vllm_health's parsers against broken and hostile input (issue 12): the HTTP client, the JSON shapes, the metrics
and the runtime state raise their own errors only, and what they return is bounded and masked.

The property tests say which errors are documented; the examples are the crashes and leaks found before."""

import json
import math
import os
import re
import stat
import threading
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _runtime
from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_client as vc
from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_health as vh
from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_metrics as vm
from hostile_servers import Listener

KEY = "sk-" + "0123456789abcdefghijklmnopqrstuvwxyz"
PROPERTY = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)


def leaked_pieces(text, secret=KEY, size=8):
    return [secret[i:i + size] for i in range(len(secret) - size + 1) if secret[i:i + size] in text]


# ---- a server that answers raw bytes ----

class RawServer(Listener):
    """Reads each request, answers `head` (bytes, or a function of the request that gives them), then sends
    `forever` again and again until the client goes."""

    def __init__(self, head, forever=None):
        self.head, self.forever = head, forever
        self.requests = []
        super(RawServer, self).__init__(backlog=8)

    def handle(self, conn):
        threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        try:
            self.requests.append(conn.recv(65536))
            if not self.requests[-1]:  # the tcp probe: connects and goes
                return
            conn.sendall(self.head(self.requests[-1]) if callable(self.head) else self.head)
            while self.forever:
                conn.sendall(self.forever)
        except OSError:
            pass
        finally:
            conn.close()


@pytest.fixture
def raw():
    servers = []

    def make(head, forever=None):
        servers.append(RawServer(head, forever))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def fetch(server, seconds=3.0, **kwargs):
    endpoint = vc.Endpoint("http://127.0.0.1:%d" % server.port, **kwargs)
    return endpoint.request("GET", "/health", time.monotonic() + seconds, auth=True)


# ---- the HTTP client ----

@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\xb2\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nabc",  # '\xb2' is '\xb2' in Latin-1: isdigit() but not int()
    b"HTTP/1.1 2\xb20 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc",
])
def test_a_malformed_response_is_a_protocol_error(raw, head):
    with pytest.raises(vc.ProbeError) as err:
        fetch(raw(head))
    assert err.value.stage == "protocol"


def test_a_unicode_digit_in_content_length_is_refused(raw):
    # int() reads Arabic-Indic digits: a length of "\u0663" (3) must not pass as a number.
    with pytest.raises(vc.ProbeError, match="Content-Length"):
        fetch(raw("HTTP/1.1 200 OK\r\nContent-Length: \u0663\r\n\r\nabc".encode("utf-8")))


def test_non_ascii_headers_are_read(raw):
    response = fetch(raw(b"HTTP/1.1 200 OK\r\nX-Name: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\nok"))
    assert response.status == 200 and response.body == b"ok"


@pytest.mark.parametrize("head, forever, says", [
    (b"HTTP/1.1 200 OK\r\n\r\n", b"x" * 65536, "the body is larger than 16 MiB"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + b"x" * 65536 + b"\r\n",
     "the body is larger than 16 MiB"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"f" * 65536, "a chunk size line longer than 4 KiB"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", b"x" * 65536,
     "the body (1000000000000 bytes) is larger than 16 MiB"),
    (b"HTTP/1.1 200 OK\r\nX-Endless: ", b"x" * 65536, "the response header is larger than 64 KiB"),
])
def test_an_endless_answer_stops_at_a_size_cap_not_the_deadline(raw, head, forever, says):
    started = time.monotonic()
    with pytest.raises(vc.ProbeError) as err:
        fetch(raw(head, forever), seconds=4.0)
    assert time.monotonic() - started < 2.0
    assert str(err.value) == "protocol: " + says


def test_a_status_line_that_echoes_the_key_is_masked_before_it_is_cut(raw):
    with pytest.raises(vc.ProbeError) as err:
        fetch(raw(("HTTQ " + "x" * 60 + KEY + "\r\n\r\n").encode()), api_key=KEY)
    assert "********" in str(err.value) and leaked_pieces(str(err.value)) == []


def test_a_non_ascii_path_is_percent_encoded(raw):
    server = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    endpoint = vc.Endpoint("http://127.0.0.1:%d/v\u00e9 l" % server.port)
    assert endpoint.request("GET", "/health", time.monotonic() + 3).status == 200
    assert server.requests[0].startswith(b"GET /v%C3%A9%20l/health HTTP/1.1\r\n")


@pytest.mark.parametrize("url", ["http://a..b:8000", "http://" + "\u00e9" * 70 + ":8000", "http://" + "a" * 64 + ".x",
                                 "http://h:99999", "http://h:port", "http://[::1", "ftp://h", "http://", "h:8000"])
def test_a_bad_url_is_a_config_error_naming_the_url(url):
    with pytest.raises(ValueError, match="^url: "):
        vh.Config(url)


def test_port_zero_is_refused_not_probed_as_port_80():
    with pytest.raises(ValueError, match=r"^url: 'http://127.0.0.1:0' names port 0; give the port the server"):
        vh.Config("http://127.0.0.1:0")


def test_an_idn_host_is_sent_as_punycode():
    endpoint = vc.Endpoint("http://b\u00fccher.example:8000")
    assert endpoint.host == "xn--bcher-kva.example"


def test_a_non_ascii_key_is_a_config_error_that_does_not_show_the_key():
    with pytest.raises(ValueError) as err:
        vh.Config("http://127.0.0.1:8000", api_key="s\u00e9cret-key")
    assert str(err.value).startswith("api_key: ") and "cret" not in str(err.value)


def test_a_probe_of_an_idn_invalid_host_never_reaches_the_socket():
    # Before: Endpoint accepted it and socket.create_connection raised UnicodeError in the tcp probe.
    with pytest.raises(ValueError, match="not a valid host name"):
        vh.probe(vh.Config("http://a..b:8000", timeout=1.0), with_gpus=False)


# ---- a whole probe against answers made up by hypothesis ----

PATHS = ["/health", "/version", "/v1/models", "/metrics", "/v1/completions"]
BODIES = (st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode())
          | st.sampled_from([b'{"version": "0.33.0"}', b'{"data": [{"id": "m"}]}', b'{"data": [{"id": 5}]}',
                             b"vllm:num_requests_waiting NaN\nvllm:kv_cache_usage_perc +Inf\n",
                             b'vllm:e2e_request_latency_seconds_bucket{x="1"} 1\n', b"data: {}\n\n",
                             b"[" * 5000, ("x" * 150 + KEY).encode(), json.dumps({"version": "v" * 95 + KEY}).encode(),
                             json.dumps({"data": [{"id": "m" * 95 + KEY}]}).encode()]))
ANSWERS = st.fixed_dictionaries(dict((path, st.tuples(st.sampled_from([200, 200, 401, 404, 500, 503]), BODIES,
                                                      st.booleans())) for path in PATHS))


def http_answer(status, body, chunked):
    if chunked:
        head = b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n" % status
        return head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


@pytest.fixture(scope="module")
def scripted():
    """A server that answers each path what the `script` dict of the test holds."""
    script = {}
    server = RawServer(lambda request: http_answer(*script[request.split(b" ")[1].decode()]))
    yield server, script
    server.close()


@settings(PROPERTY, max_examples=100)
@given(ANSWERS, st.sampled_from([None, "m"]))
def test_a_probe_of_any_answers_gives_a_strict_json_report_without_the_key(scripted, answers, model):
    server, script = scripted
    script.clear()
    script.update(answers)
    report = vh.probe(vh.Config("http://127.0.0.1:%d" % server.port, api_key=KEY, model=model, timeout=5.0),
                      with_gpus=False)
    assert report["status"] in vh.STATUSES
    assert all(check["ok"] in (True, False) for check in report["checks"].values())
    text = json.dumps(report, allow_nan=False)
    assert leaked_pieces(text) == []


class FakeSocket(object):
    def __init__(self, chunks):
        self.chunks = list(chunks)

    def settimeout(self, _seconds):
        pass

    def recv(self, _size):
        return self.chunks.pop(0) if self.chunks else b""


def read_all(chunks, first_event=False):
    reader = vc._Reader(FakeSocket(chunks), time.monotonic() + 60)
    status, headers = reader.head()
    body, _event = reader.body(headers, time.monotonic() if first_event else None)
    return status, headers, body


def assert_a_response_or_a_probe_error(chunks, first_event):
    try:
        status, _headers, body = read_all(chunks, first_event)
    except vc.ProbeError as exc:
        assert exc.stage in ("response", "body", "protocol")
        return
    assert 0 <= status <= 999 and isinstance(body, bytes) and len(body) <= vc.MAX_BODY


@PROPERTY
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_any_bytes_from_a_server_give_a_response_or_a_probe_error(chunks, first_event):
    assert_a_response_or_a_probe_error(chunks, first_event)


HEADER_VALUES = st.sampled_from(["0", "3", "12", "-1", "\u0663", "\xb2", " 5", "5, 5", "1e3", "chunked",
                                 "gzip, chunked", "CHUNKED", ""]) | st.text(max_size=8)
CHUNK_SIZES = st.sampled_from(["0", "3", "a", "A;ext=1", "-1", "\xb2", "zz", "", "ffffffffffffffffffff", " 3 ", "0x3"])


@st.composite
def http_responses(draw):
    """Responses shaped like HTTP, so that the property reaches the header and chunk parsers."""
    status = draw(st.sampled_from(["200", "503", "2\xb20", "99", "1000", "abc", ""]))
    lines = ["HTTP/1.1 %s OK" % status]
    for name in draw(st.lists(st.sampled_from(["Content-Length", "Transfer-Encoding", "X-Other", ""]), max_size=3)):
        lines.append("%s: %s" % (name, draw(HEADER_VALUES)))
    body = []
    for _chunk in range(draw(st.integers(0, 3))):
        body.append("%s\r\n%s\r\n" % (draw(CHUNK_SIZES), draw(st.text(max_size=20))))
    raw = ("\r\n".join(lines) + "\r\n\r\n" + "".join(body)).encode("utf-8", "surrogatepass")
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=4)))
    return [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]


@PROPERTY
@given(http_responses(), st.booleans())
def test_any_http_shaped_answer_gives_a_response_or_a_probe_error(chunks, first_event):
    assert_a_response_or_a_probe_error(chunks, first_event)


@PROPERTY
@given(st.text(max_size=60) | st.builds(lambda host, path: "http://%s:8000/%s" % (host, path),
                                        st.text(max_size=70), st.text(max_size=10)))
def test_any_url_gives_an_endpoint_or_a_value_error(url):
    try:
        endpoint = vc.Endpoint(url)
    except ValueError as exc:
        assert str(exc).startswith("url: ")
        return
    endpoint.host.encode("ascii")
    endpoint.base_path.encode("ascii")
    assert 0 < endpoint.port < 65536


@PROPERTY
@given(st.text(max_size=40))
def test_any_key_gives_an_endpoint_or_a_value_error_without_the_key(key):
    try:
        vc.Endpoint("http://127.0.0.1:8000", api_key=key)
    except ValueError as exc:
        assert str(exc).startswith("api_key: ")
        assert key not in str(exc) or len(key) < 2


# ---- JSON shapes ----

VERSION_LIKE = JSON | st.dictionaries(st.just("version"), JSON, min_size=1)
MODELS_LIKE = JSON | st.fixed_dictionaries({"data": JSON | st.lists(JSON | st.fixed_dictionaries({"id": JSON}))})


@PROPERTY
@given(VERSION_LIKE)
def test_any_json_gives_a_version_string_or_none(data):
    version = vh.version_of(data)
    assert version is None or (isinstance(version, str) and version)


@PROPERTY
@given(MODELS_LIKE)
def test_any_json_gives_a_list_of_model_ids(data):
    ids = vh.model_ids(data)
    assert isinstance(ids, list) and all(isinstance(i, str) and i for i in ids)


@PROPERTY
@given(st.binary(max_size=200) | st.builds(lambda n: b"[" * n, st.integers(0, 200000)))
def test_any_body_gives_json_or_a_value_error(body):
    try:
        vc.Response(200, {}, body, {}).json()
    except ValueError:
        pass


def test_deeply_nested_json_is_a_value_error():
    # json.loads raises RecursionError (not a ValueError) on this.
    with pytest.raises(ValueError, match="nested"):
        vc.Response(200, {}, b"[" * 100000 + b"]" * 100000, {}).json()


# ---- metrics ----

NAMES = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
         "vllm:prompt_tokens_total", "vllm:generation_tokens", "vllm:time_to_first_token_seconds_bucket",
         "vllm:time_to_first_token_seconds_count", "vllm:time_to_first_token_seconds_sum",
         "vllm:e2e_request_latency_seconds_bucket", "up"]
VALUES = st.sampled_from(["NaN", "+Inf", "-Inf", "1", "0", "-3", "1e308", "x", ""]) | st.floats().map(repr)
LABEL_VALUES = st.sampled_from(["0.1", "1.0", "+Inf", "NaN", "-Inf", "abc", "", "1e400"]) | st.text(max_size=5)


@st.composite
def metrics_texts(draw):
    lines = []
    for _line in range(draw(st.integers(0, 12))):
        name = draw(st.sampled_from(NAMES))
        if draw(st.booleans()):
            family = name.rsplit("_", 1)[0] if name.endswith(("_bucket", "_count", "_sum")) else name
            kind = draw(st.sampled_from(["gauge", "counter", "histogram", "summary", "untyped", "bogus"]))
            lines.append("# TYPE %s %s" % (family, kind))
        labels = draw(st.dictionaries(st.sampled_from(["le", "model_name", "engine"]), LABEL_VALUES, max_size=3))
        text = ",".join('%s="%s"' % (k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
                        for k, v in sorted(labels.items()))
        lines.append("%s%s %s" % (name, "{%s}" % text if labels else "", draw(VALUES)))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n# EOF\n"]))


def finite_or_none(summary):
    for key, value in summary.items():
        if key != "sources":
            assert value is None or (isinstance(value, (int, float)) and math.isfinite(value)), (key, value)


@PROPERTY
@given(metrics_texts() | st.text(max_size=200))
def test_any_metrics_text_gives_finite_numbers_or_a_metrics_error(text):
    try:
        summary = vm.summarize(text)
    except vm.MetricsError:
        return
    finite_or_none(summary)
    json.dumps(summary, allow_nan=False)
    vm.threshold_reasons(summary, vh.DEFAULT_THRESHOLDS)


@pytest.mark.parametrize("line", [
    'vllm:e2e_request_latency_seconds_bucket{model_name="m"} 3',  # no le
    'vllm:e2e_request_latency_seconds_bucket{le="soon"} 3',
    'vllm:e2e_request_latency_seconds_bucket{le="NaN"} 3',
])
def test_a_bucket_without_a_numeric_bound_is_ignored(line):
    text = "# TYPE vllm:e2e_request_latency_seconds histogram\n" + line + "\n" + \
        'vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 3\nvllm:e2e_request_latency_seconds_count 3\n'
    summary = vm.summarize(text)
    assert summary["e2e_count"] == 3 and summary["e2e_p99_s"] is not None


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf"])
def test_a_non_finite_gauge_is_null(value):
    summary = vm.summarize("vllm:num_requests_waiting %s\nvllm:num_requests_running 1\n" % value)
    assert summary["num_requests_waiting"] is None and summary["num_requests_running"] == 1
    assert vm.threshold_reasons(summary, vh.DEFAULT_THRESHOLDS) == []


# ---- runtime state ----

@PROPERTY
@given(JSON | st.fixed_dictionaries({}, optional={
    "State": JSON | st.fixed_dictionaries({}, optional=dict((k, JSON) for k in (
        "Running", "Status", "Restarting", "OOMKilled", "ExitCode", "Health", "StartedAt", "Pid"))),
    "RestartCount": JSON, "HostConfig": JSON | st.fixed_dictionaries({"DeviceRequests": JSON | st.lists(
        JSON | st.fixed_dictionaries({"DeviceIDs": JSON}))})}))
def test_any_docker_inspect_gives_a_well_typed_state(attrs):
    well_typed(_runtime.docker_state_from("c", attrs), "docker")


SHOW_KEYS = ["LoadState", "ActiveState", "SubState", "NRestarts", "ExecMainCode", "ExecMainStatus", "ExecMainPID",
             "Environment", "Result", ""]


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(SHOW_KEYS), st.text(max_size=12) | st.sampled_from(
    ["loaded", "active", "running", "auto-restart", "oom-kill", "3", "-1", "\xb2", "\u0663", "99999999999999999999",
     "CUDA_VISIBLE_DEVICES=0,1 X=1"])), max_size=10) | st.lists(st.text(max_size=30), max_size=5).map(
    lambda lines: [tuple(line.partition("=")[::2]) for line in lines]))
def test_any_systemctl_show_gives_a_well_typed_state(pairs):
    out = "\n".join("%s=%s" % pair for pair in pairs)
    well_typed(_runtime.systemd_state_from("u.service", out), "systemd")


def well_typed(state, kind):
    assert state["type"] == kind
    for key in ("exists", "running", "restarting", "oom_killed"):
        assert isinstance(state[key], bool), key
    assert isinstance(state["restart_count"], int) and not isinstance(state["restart_count"], bool)
    assert state["restart_count"] >= 0
    assert state["exit_code"] is None or (isinstance(state["exit_code"], int) and not isinstance(state["exit_code"],
                                                                                                 bool))
    for key in ("exec_main_code",) if kind == "systemd" else ():
        assert state[key] is None or (isinstance(state[key], int) and not isinstance(state[key], bool)), key
    assert state["pid"] is None or (isinstance(state["pid"], int) and state["pid"] > 0)
    assert isinstance(state["status"], str)
    for key in ("health", "started_at"):
        assert state.get(key) is None or isinstance(state[key], str), key
    assert state["gpus"] is None or all(isinstance(g, str) and g for g in state["gpus"])
    # What vh reports and compares with these values works for every state.
    "%s %s: %s, %d restart(s)" % (state["type"], state["name"], state["status"], state["restart_count"])
    json.dumps(state, allow_nan=False)
    evidence = vh._sigill_evidence(state)
    assert evidence is None or isinstance(evidence, str)


@pytest.mark.parametrize("attrs", [
    {"State": [], "RestartCount": "3"},
    {"State": {"Running": True, "ExitCode": "x", "Health": "ok", "Pid": "12"}, "HostConfig": []},
    {"State": {"Status": 5}, "HostConfig": {"DeviceRequests": [None, {"DeviceIDs": [0, "1"]}]}},
    [], None,
])
def test_odd_docker_values_give_a_well_typed_state(attrs):
    well_typed(_runtime.docker_state_from("c", attrs), "docker")


@pytest.mark.parametrize("out", ["NRestarts=abc\nExecMainPID=x\n", "NRestarts=\xb2\n", "NRestarts=-1\nExecMainPID=-5",
                                 "ExecMainStatus=\u0663\n", "garbage", "ExecMainCode=\u0662\nExecMainStatus=4\n",
                                 "ExecMainCode=True\nExecMainStatus=4\n", "ExecMainCode=2.0\nExecMainStatus=4.0\n"])
def test_odd_systemd_values_give_a_well_typed_state(out):
    state = _runtime.systemd_state_from("u.service", "LoadState=loaded\nActiveState=failed\n" + out)
    well_typed(state, "systemd")
    assert vh._sigill_evidence(state) is None


def ascii_number(text):
    """The number an API's string stands for: ASCII digits, a sign, blanks around them."""
    return int(text.strip()) if re.match(r"-?[0-9]{1,18}\Z", text.strip()) else None


EXIT_CODE = st.sampled_from([132, "132", " 132", 132.0, True, 4, -4, 137, 0, 1, "\u0661\u0663\u0662", None]) | \
    st.integers() | st.text(max_size=6) | JSON


@PROPERTY
@given(EXIT_CODE, JSON | st.booleans(), JSON | st.booleans())
def test_any_docker_exit_code_gives_a_sigill_only_for_132_of_a_stopped_container(exit_code, running, restarting):
    state = _runtime.docker_state_from("c", {"State": {"ExitCode": exit_code, "Running": running,
                                                       "Restarting": restarting}})
    well_typed(state, "docker")
    is_132 = (isinstance(exit_code, int) and not isinstance(exit_code, bool) and exit_code == 132) or (
        isinstance(exit_code, str) and ascii_number(exit_code) == 132)
    assert (vh._sigill_evidence(state) is not None) is (is_132 and (running is not True or restarting is True))


# What systemctl show may hold for ExecMainCode and ExecMainStatus: CLD_* codes, signal and exit numbers, and junk.
MAIN_VALUE = st.sampled_from(["0", "1", "2", "3", "4", "-1", "132", " 2", "2 ", "0x2", "\u0662", "\xb2", "",
                              "99999999999999999999"]) | st.text(max_size=8) | st.integers().map(str)


@PROPERTY
@given(MAIN_VALUE, MAIN_VALUE, st.sampled_from(["failed/failed", "activating/auto-restart", "active/running",
                                                "inactive/dead"]))
def test_any_exec_main_code_and_status_give_a_well_typed_state_and_a_sigill_only_when_killed_by_4(code, status, where):
    # One line each (splitlines() also breaks at \r, \x1c, \u2028...).
    assume(all(("<%s>" % value).splitlines() == ["<%s>" % value] for value in (code, status)))
    active, sub = where.split("/")
    out = "LoadState=loaded\nActiveState=%s\nSubState=%s\nExecMainCode=%s\nExecMainStatus=%s\n" % (
        active, sub, code, status)
    state = _runtime.systemd_state_from("u.service", out)
    well_typed(state, "systemd")
    killed_by_4 = ascii_number(code) in (2, 3) and ascii_number(status) == 4 and where != "active/running"
    assert (vh._sigill_evidence(state) is not None) is killed_by_4


def test_a_systemd_state_keeps_what_it_can_read():
    state = _runtime.systemd_state_from("u.service", "LoadState=loaded\nActiveState=active\nSubState=auto-restart\n"
                                        "NRestarts=4\nExecMainCode=1\nExecMainStatus=1\nExecMainPID=0\n"
                                        "Environment=A=1 CUDA_VISIBLE_DEVICES=2,3\n")
    got = (state["exists"], state["running"], state["restarting"], state["restart_count"], state["exit_code"],
           state["exec_main_code"], state["pid"], state["gpus"], state["status"])
    assert got == (True, False, True, 4, 1, 1, None, ["2", "3"], "active/auto-restart")


def test_systemctl_show_is_asked_for_how_the_main_process_ended(monkeypatch):
    calls = []

    def run(argv, timeout):
        calls.append(argv)
        return 0, "LoadState=loaded\nActiveState=failed\nSubState=failed\nExecMainCode=3\nExecMainStatus=4\n", ""

    monkeypatch.setattr(_runtime, "_run", run)
    state, lines = _runtime.systemd_state("vllm.service", 0, 5)
    assert lines == [] and len(calls) == 1
    assert {"ExecMainCode", "Result"} <= set(calls[0][-1].split("=", 1)[1].split(","))
    assert (state["exec_main_code"], state["exit_code"]) == (3, 4)


# ---- log files ----

def tail_in_a_thread(path, lines=10, seconds=3.0):
    got = {}
    thread = threading.Thread(target=lambda: got.setdefault("lines", _runtime.tail(path, lines)), daemon=True)
    thread.start()
    thread.join(seconds)
    return got.get("lines", "still reading after %.0f s" % seconds)


def test_a_fifo_as_log_file_does_not_block(tmp_path):
    fifo = str(tmp_path / "log")
    os.mkfifo(fifo)
    try:
        assert tail_in_a_thread(fifo) == []
    finally:
        # Lets a reader that did block go (opening a FIFO for writing without a reader fails with ENXIO).
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_as_log_file_is_not_read():
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    assert tail_in_a_thread("/dev/zero") == []


def test_a_directory_or_a_missing_file_has_no_lines(tmp_path):
    assert _runtime.tail(str(tmp_path), 10) == [] and _runtime.tail(str(tmp_path / "none"), 10) == []


def test_zero_lines_means_none(tmp_path):
    log = tmp_path / "log"
    log.write_text("a\nb\n")
    assert _runtime.tail(str(log), 0) == [] and _runtime.tail(str(log), 1) == ["b"]


def test_a_huge_file_is_read_from_its_end_only(tmp_path, monkeypatch):
    monkeypatch.setattr(_runtime, "TAIL_BYTES", 64)
    log = tmp_path / "log"
    log.write_text("api_key=" + KEY + "\n" + "".join("line %02d\n" % i for i in range(20)))
    got = _runtime.tail(str(log), 100)
    # The read starts inside a line: that piece is dropped, it could be the end of a secret.
    assert got == ["line %02d" % i for i in range(12, 20)]


def test_a_long_line_is_cut_at_a_blank_after_the_known_secrets_are_masked(tmp_path):
    log = tmp_path / "log"
    words = " ".join("w%05d" % i for i in range(40000))  # 280 KB, a logged prompt
    log.write_text("start\n" + words[:_runtime.LINE_EDGE - 10] + " " + KEY + " " + words + "\nend\n")
    got = _runtime.tail(str(log), 10, secrets=[KEY])
    assert got[0] == "start" and got[-1] == "end"
    assert len(got[1]) <= 2 * _runtime.LINE_EDGE + 10 and " [...] " in got[1]
    assert "********" in got[1] and leaked_pieces(got[1]) == []
    assert all(word.startswith("w") and len(word) == 6 for word in got[1].split() if word not in ("[...]",
                                                                                                  "********"))


@PROPERTY
@given(st.binary(max_size=3000), st.integers(0, 50))
def test_any_log_file_gives_bounded_lines(tmp_path_factory, content, lines):
    log = tmp_path_factory.mktemp("log") / "log"
    log.write_bytes(content)
    got = _runtime.tail(str(log), lines)
    assert isinstance(got, list) and len(got) <= lines
    assert all(isinstance(line, str) and len(line) <= 2 * _runtime.LINE_EDGE + 10 for line in got)


class FakeContainer(object):
    attrs = {"State": {"Running": True, "Status": "running"}, "RestartCount": 1}

    def logs(self, **kwargs):
        assert kwargs["stream"] is True and kwargs["follow"] is False  # a bounded read, not a follow
        return iter([b"old line\nloading ", ("shards " + KEY + " done\n").encode(), b"x" * 100000 + b"\n"])


class FakeDocker(object):
    def __init__(self, failure=None):
        self.failure = failure
        self.containers = self

    def get(self, _name):
        if self.failure:
            raise self.failure
        return FakeContainer()


@pytest.mark.skipif(_runtime.docker is None, reason="no docker SDK")
def test_docker_logs_are_masked_and_clipped(monkeypatch):
    monkeypatch.setattr(_runtime.docker, "from_env", lambda timeout: FakeDocker())
    state, lines = _runtime.read("docker", "c", 2, 5.0, secrets=[KEY])
    assert state["running"] is True and state["restart_count"] == 1
    assert lines[0] == "loading shards ******** done" and len(lines[1]) <= 2 * _runtime.LINE_EDGE + 10


@pytest.mark.skipif(_runtime.docker is None, reason="no docker SDK")
def test_a_docker_read_timeout_is_a_runtime_error(monkeypatch):
    import requests

    # requests' errors are not DockerExceptions: the SDK lets a read timeout through as is.
    slow = FakeDocker(requests.exceptions.ReadTimeout("slow"))
    monkeypatch.setattr(_runtime.docker, "from_env", lambda timeout: slow)
    with pytest.raises(_runtime.RuntimeErrorInfo, match="Docker API: slow"):
        _runtime.read("docker", "c", 2, 5.0)
