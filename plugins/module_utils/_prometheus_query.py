# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Range queries to Prometheus's HTTP API (/api/v1/query_range), with deadlines and bounded answers.

The connection, TLS and the reading of the answer are _vllm_client's: each step gets only the time left before
the request's deadline, and an answer larger than its MAX_BODY is refused. Basic auth goes in a header built
here, never in the URL, and the password is masked in every message. What Prometheus answers is checked before
use: anything but a matrix of (time, number) pairs is a QueryError that says what came back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import math
import time

from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_client
from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact

try:
    from urllib.parse import urlencode, urlsplit
except ImportError:  # pragma: no cover - Python 2
    from urllib import urlencode
    from urlparse import urlsplit

# An hour at a 15 s step is 241 points; a hostile or misconfigured server must not make the charts unbounded.
MAX_SERIES = 64
MAX_POINTS = 20000
_EXCERPT = 160
# Answers after which no other query can succeed: the address, the credentials or the path is wrong.
_FATAL_STATUS = (401, 403, 404, 407)


class QueryError(Exception):
    """A query that gave no data. `fatal`: no other query to the same server can do better (it cannot be
    reached, refuses the credentials, or is not a Prometheus), so the caller stops asking."""

    def __init__(self, message, fatal=False):
        super(QueryError, self).__init__(message)
        self.fatal = fatal


def promql_string(value):
    """`value` as a PromQL string literal: a label value from an inventory cannot end the literal or the query."""
    return json.dumps(str(value), ensure_ascii=True)


class Prometheus(object):
    def __init__(self, url, username=None, password=None, validate_certs=True, ca_path=None, timeout=10.0):
        """Raises ValueError naming the option (url, username, password) that cannot work."""
        try:
            netloc = urlsplit(str(url)).netloc
        except ValueError as exc:  # an unclosed [IPv6
            raise ValueError("url: %r is not an http(s) URL such as http://prometheus:9090 (%s)" % (url, exc))
        if "@" in netloc:
            # The URL is shown in every message: credentials in it would be shown too.
            raise ValueError("url: give the user and password as username and password, not inside the URL")
        try:
            self.endpoint = _vllm_client.Endpoint(url, validate_certs=validate_certs, ca_path=ca_path)
        except (IOError, OSError) as exc:  # the CA file cannot be read or holds no certificate
            reason = getattr(exc, "strerror", None) or exc
            raise ValueError("ca_path: %s cannot be used as a CA file: %s" % (ca_path, reason))
        self.url = self.endpoint.url
        self.timeout = timeout
        self.secrets = [password] if password else []
        self.authorization = None
        if username or password:
            if not username or ":" in username or not _header_text(username):
                raise ValueError("username: give the basic auth user name, in printable ASCII without ':'")
            if not password or not _header_text(password):
                # Never the password itself in the message.
                raise ValueError("password: basic auth needs a password of printable ASCII characters")
            token = base64.b64encode(("%s:%s" % (username, password)).encode("ascii")).decode("ascii")
            self.authorization = "Basic " + token
            self.secrets.append(token)

    def _redact(self, text):
        return redact(text, self.secrets)

    def get(self, path, params):
        """The decoded JSON answer of GET path?params; QueryError otherwise."""
        target = "%s?%s" % (path, urlencode(params))
        shown = "%s%s" % (self.url, path)
        deadline = time.monotonic() + self.timeout
        try:
            sock, _connect_ms = self.endpoint.connect(deadline)
        except _vllm_client.ProbeError as exc:
            raise QueryError("%s: %s" % (shown, self._redact(str(exc))), fatal=True)
        try:
            host = "[%s]" % self.endpoint.host if ":" in self.endpoint.host else self.endpoint.host
            lines = ["GET %s%s HTTP/1.1" % (self.endpoint.base_path, target),
                     "Host: %s:%d" % (host, self.endpoint.port), "User-Agent: inferops-vllm-charts",
                     "Accept: application/json", "Connection: close"]
            if self.authorization:
                lines.append("Authorization: " + self.authorization)
            try:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
            except (OSError, IOError) as exc:
                raise QueryError("%s: send: %s" % (shown, getattr(exc, "strerror", None) or exc), fatal=True)
            reader = _vllm_client._Reader(sock, deadline, self._redact)
            status, headers = reader.head()
            body, _first = reader.body(headers, None)
        except _vllm_client.ProbeError as exc:
            raise QueryError("%s: %s" % (shown, self._redact(str(exc))), fatal=True)
        finally:
            sock.close()
        return self._decode(shown, status, body)

    def _decode(self, shown, status, body):
        try:
            answer = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            answer = None
        if isinstance(answer, dict) and answer.get("status") == "error":
            kind, reason = self._excerpt(answer.get("errorType")), self._excerpt(answer.get("error"))
            raise QueryError("%s answered HTTP %d, %s: %s" % (shown, status, kind, reason),
                             fatal=status in _FATAL_STATUS)
        if status != 200:
            raise QueryError("%s answered HTTP %d: %s" % (shown, status, self._excerpt(body)),
                             fatal=status in _FATAL_STATUS or answer is None)
        if not isinstance(answer, dict):
            raise QueryError("%s answered HTTP 200 with something that is not Prometheus's JSON: %s"
                             % (shown, self._excerpt(body)), fatal=True)
        return answer

    def _excerpt(self, value):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        text = self._redact(str(value))
        text = "".join(c if c.isprintable() else "?" for c in text)
        return repr(text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else ""))

    def query_range(self, query, start, end, step):
        """[(labels, [(time, value), ...]), ...] of `query` from start to end (seconds since the epoch)."""
        params = [("query", query), ("start", _number(start)), ("end", _number(end)), ("step", _number(step))]
        answer = self.get("/api/v1/query_range", params)
        try:
            return parse_matrix(answer)
        except QueryError as exc:
            raise QueryError("%s/api/v1/query_range for %s: %s" % (self.url, query, exc))


def _number(value):
    return "%.3f" % value


def _header_text(value):
    return all(32 <= ord(c) < 127 for c in value)


def parse_matrix(answer):
    """The series of a query_range answer, as [(labels, [(time, value), ...])]; QueryError when it is not a
    successful matrix answer. Values are floats, NaN and infinities included (the renderer skips them)."""
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise QueryError("the answer's status is not \"success\"")
    data = answer.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise QueryError("the answer holds no matrix (data.resultType and data.result)")
    result = data["result"]
    if len(result) > MAX_SERIES:
        raise QueryError("the answer holds %d series, more than the %d a chart can show" % (len(result), MAX_SERIES))
    series = []
    for index, item in enumerate(result):
        where = "data.result[%d]" % index
        if not isinstance(item, dict):
            raise QueryError("%s is not an object" % where)
        labels = item.get("metric", {})
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise QueryError("%s.metric is not a mapping of label names to texts" % where)
        values = item.get("values", [])
        if not isinstance(values, list):
            raise QueryError("%s.values is not a list" % where)
        if len(values) > MAX_POINTS:
            raise QueryError("%s holds %d points, more than %d" % (where, len(values), MAX_POINTS))
        series.append((labels, [_point(where, position, pair) for position, pair in enumerate(values)]))
    return series


def _point(where, position, pair):
    if not isinstance(pair, list) or len(pair) != 2:
        raise QueryError("%s.values[%d] is not a [time, value] pair" % (where, position))
    when, value = pair
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
        raise QueryError("%s.values[%d]: the time %.40r is not a number" % (where, position, when))
    if not isinstance(value, str):
        raise QueryError("%s.values[%d]: the value %.40r is not a text (Prometheus sends numbers as texts)"
                         % (where, position, value))
    try:
        number = float(value)
    except ValueError:
        raise QueryError("%s.values[%d]: the value %.40r is not a number" % (where, position, value))
    return float(when), number
