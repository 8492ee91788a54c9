"""The Prometheus range-query client: what it sends (basic auth in a header only), what it refuses to read, and
how each failure reads. Servers here are local and scripted; tests/monitoring/test_prometheus_charts.py asks the
real Prometheus."""

import base64
import http.server
import json
import math
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostile_servers import Hostile

from ansible_collections.inferops.vllm.plugins.module_utils import _prometheus_query
from ansible_collections.inferops.vllm.plugins.module_utils._prometheus_query import (
    Prometheus, QueryError, parse_matrix, promql_string)

PASSWORD = "s3cret-Prom-pass-4242"


class Scripted(object):
    """A local HTTP server answering every request with (status, body); it keeps the requests it saw."""

    def __init__(self, status, body, content_type="application/json"):
        self.seen = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the name http.server calls
                outer.seen.append((self.path, dict(self.headers)))
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(status, body, **kwargs):
        server = Scripted(status, body, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def matrix(*series):
    return {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": labels, "values": values} for labels, values in series]}}


def test_query_range_sends_the_query_and_basic_auth_and_reads_the_matrix(scripted):
    server = scripted(200, matrix(({"gpu": "0"}, [[1700000000, "1.5"], [1700000030, "NaN"], [1700000060, "+Inf"]])))
    client = Prometheus(server.url + "/", username="oncall", password=PASSWORD)
    series = client.query_range('up{host="a"}', 1700000000, 1700003600, 30)
    assert series[0][0] == {"gpu": "0"}
    points = series[0][1]
    assert points[0] == (1700000000.0, 1.5) and math.isnan(points[1][1]) and points[2][1] == math.inf
    path, headers = server.seen[0]
    assert path.startswith("/api/v1/query_range?query=up%7Bhost%3D%22a%22%7D&start=1700000000.000")
    assert headers["Authorization"] == "Basic " + base64.b64encode(("oncall:" + PASSWORD).encode()).decode()
    assert PASSWORD not in path


def test_a_refused_connection_is_fatal_and_names_the_url():
    client = Prometheus("http://127.0.0.1:1", timeout=2)
    with pytest.raises(QueryError) as caught:
        client.query_range("up", 0, 60, 15)
    assert caught.value.fatal
    assert "http://127.0.0.1:1/api/v1/query_range" in str(caught.value) and "connect" in str(caught.value)


def test_refused_credentials_are_fatal_and_the_password_is_masked(scripted):
    # A server that echoes what it was sent must not put the password or its header value in the message.
    token = base64.b64encode(("oncall:" + PASSWORD).encode()).decode()
    server = scripted(401, b"Unauthorized: Basic " + token.encode() + b" for oncall:" + PASSWORD.encode(),
                      content_type="text/plain")
    client = Prometheus(server.url, username="oncall", password=PASSWORD)
    with pytest.raises(QueryError) as caught:
        client.query_range("up", 0, 60, 15)
    message = str(caught.value)
    assert caught.value.fatal and "HTTP 401" in message
    assert PASSWORD not in message and token not in message and PASSWORD[:6] not in message


def test_a_bad_query_skips_that_query_only(scripted):
    server = scripted(400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"})
    with pytest.raises(QueryError) as caught:
        Prometheus(server.url).query_range("up{", 0, 60, 15)
    assert not caught.value.fatal
    assert "HTTP 400" in str(caught.value) and "parse error at char 3" in str(caught.value)


def test_something_that_is_not_prometheus_is_fatal(scripted):
    server = scripted(200, b"<html>login</html>\n" * 3, content_type="text/html")
    with pytest.raises(QueryError) as caught:
        Prometheus(server.url).query_range("up", 0, 60, 15)
    assert caught.value.fatal and "not Prometheus's JSON" in str(caught.value) and "<html>login" in str(caught.value)


def test_a_silent_server_is_given_up_on_at_the_timeout():
    server = Hostile("silent")
    try:
        started = time.monotonic()
        with pytest.raises(QueryError) as caught:
            Prometheus("http://127.0.0.1:%d" % server.port, timeout=0.5).query_range("up", 0, 60, 15)
        assert time.monotonic() - started < 3
        assert caught.value.fatal and "deadline" in str(caught.value)
    finally:
        server.close()


def test_an_answer_larger_than_the_bound_is_refused(scripted, monkeypatch):
    monkeypatch.setattr(_prometheus_query._vllm_client, "MAX_BODY", 1000)
    server = scripted(200, matrix(({}, [[1700000000 + i, "1"] for i in range(200)])))
    with pytest.raises(QueryError) as caught:
        Prometheus(server.url).query_range("up", 0, 60, 15)
    assert "larger than" in str(caught.value)


@pytest.mark.parametrize("url, field", [
    ("ftp://prometheus:9090", "url:"), ("http://user:pw@prometheus:9090", "url:"), ("prometheus:9090", "url:"),
    ("http://[::1", "url:"),
])
def test_unusable_urls_are_refused_naming_the_option(url, field):
    with pytest.raises(ValueError) as caught:
        Prometheus(url)
    assert str(caught.value).startswith(field)
    assert "pw@" not in str(caught.value) or "inside the URL" in str(caught.value)


def test_credentials_are_checked_without_showing_the_password():
    with pytest.raises(ValueError, match="^password:"):
        Prometheus("http://p:9090", username="oncall", password="caf\u00e9-" + PASSWORD)
    with pytest.raises(ValueError, match="^username:"):
        Prometheus("http://p:9090", username="on:call", password=PASSWORD)
    with pytest.raises(ValueError, match="^password:"):
        Prometheus("http://p:9090", username="oncall", password="")
    with pytest.raises(ValueError, match="^ca_path:"):
        Prometheus("https://p:9090", ca_path="/nonexistent/ca.pem")


@pytest.mark.parametrize("answer, words", [
    (None, "status"), ({"status": "error"}, "status"),
    ({"status": "success", "data": {"resultType": "vector", "result": []}}, "matrix"),
    (matrix(({}, [[1, 2]])), "not a text"), (matrix(({}, [["1", "2"]])), "not a number"),
    (matrix(({}, [[1, "two"]])), "not a number"), (matrix(({}, [[1]])), "pair"),
    (matrix(({"a": 1}, [])), "label"), ({"status": "success", "data": {"resultType": "matrix", "result": [5]}},
                                        "not an object"),
])
def test_malformed_answers_say_what_is_wrong(answer, words):
    with pytest.raises(QueryError, match=words):
        parse_matrix(answer)


def test_too_many_series_or_points_are_refused():
    with pytest.raises(QueryError, match="series"):
        parse_matrix(matrix(*[({"gpu": str(i)}, []) for i in range(_prometheus_query.MAX_SERIES + 1)]))
    with pytest.raises(QueryError, match="points"):
        parse_matrix(matrix(({}, [[i, "1"] for i in range(_prometheus_query.MAX_POINTS + 1)])))


JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=30)
VALUE_TEXT = st.sampled_from(["NaN", "+Inf", "-Inf", "1e308", "-1e308", "1e400", "5e-324", "0", "-0"]) | \
    st.floats().map(repr) | st.text(max_size=12)


@settings(max_examples=300, deadline=None)
@given(answer=JSON)
def test_any_json_is_parsed_or_refused_with_a_query_error(answer):
    try:
        series = parse_matrix(answer)
    except QueryError:
        return
    assert isinstance(series, list)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.tuples(st.floats(allow_nan=False, allow_infinity=False), VALUE_TEXT), max_size=30),
       labels=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=5))
def test_any_value_text_is_a_float_or_a_clear_refusal(values, labels):
    answer = matrix((labels, [[t, v] for t, v in values]))
    try:
        series = parse_matrix(answer)
    except QueryError as exc:
        assert "not a number" in str(exc)
        return
    assert series[0][0] == labels
    assert all(isinstance(v, float) for _t, v in series[0][1])


@given(st.text(max_size=100))
def test_promql_strings_cannot_end_the_literal(text):
    literal = promql_string(text)
    assert literal[0] == literal[-1] == '"'
    assert json.loads(literal) == text
    inner = literal[1:-1].replace("\\\\", "")
    assert '"' not in inner.replace('\\"', "") and "\n" not in literal
