# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small HTTP/1.1 client for probing vLLM servers with absolute deadlines.

Socket timeouts bound each read, not a whole request: a server that sends headers and then trickles or stalls
can hold an ordinary client (curl, requests) for ever. Here every step (connect, TLS handshake, send, each read)
gets only the time left before the request's deadline, so a probe always returns within its budget.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import ssl
import time

try:
    from urllib.parse import urlsplit
except ImportError:  # pragma: no cover - Python 2
    from urlparse import urlsplit


class ProbeError(Exception):
    """The request did not complete. `stage` says where: connect, tls, send, response, body."""

    def __init__(self, stage, message):
        super(ProbeError, self).__init__("%s: %s" % (stage, message))
        self.stage = stage


class Response(object):
    def __init__(self, status, headers, body, timings):
        self.status = status
        self.headers = headers
        self.body = body
        self.timings = timings

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def text(self):
        return self.body.decode("utf-8", "replace")


class Endpoint(object):
    """Where a vLLM server listens, and how to talk to it (TLS, client certificate, API key)."""

    def __init__(self, url, api_key=None, validate_certs=True, ca_path=None, client_cert=None, client_key=None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url: %r is not an http(s) URL such as http://127.0.0.1:8000" % url)
        self.url = url.rstrip("/")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        self.api_key = api_key
        self.context = self._tls_context(validate_certs, ca_path, client_cert, client_key) if self.tls else None

    @staticmethod
    def _tls_context(validate_certs, ca_path, client_cert, client_key):
        context = ssl.create_default_context(cafile=ca_path if validate_certs else None)
        if not validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if client_cert:
            context.load_cert_chain(client_cert, client_key)
        return context

    def connect(self, deadline, handshake=True):
        """A connected (and, for https unless handshake is false, handshaken) socket, and the connect time in ms;
        raises ProbeError("connect"/"tls")."""
        started = time.monotonic()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=_left(deadline, "connect"))
        except ProbeError:
            raise
        except (OSError, socket.timeout) as exc:
            raise ProbeError("connect", _describe(exc))
        connected = time.monotonic()
        if self.context is None or not handshake:
            return sock, (connected - started) * 1000
        try:
            sock.settimeout(_left(deadline, "tls"))
            tls = self.context.wrap_socket(sock, server_hostname=self.host)
        except ProbeError:
            sock.close()
            raise
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise ProbeError("tls", "certificate verification failed: %s" % getattr(exc, "verify_message", exc))
        except (OSError, socket.timeout, ssl.SSLError) as exc:
            sock.close()
            raise ProbeError("tls", _describe(exc))
        return tls, (connected - started) * 1000

    def request(self, method, path, deadline, body=None, auth=False, first_event=False):
        """Sends one request and reads the whole response before `deadline` (a time.monotonic() value).

        With first_event, the time until the first server-sent event ("data: ...") is measured: for a streamed
        completion, that is the time to first token."""
        started = time.monotonic()
        sock, connect_ms = self.connect(deadline)
        try:
            payload = b"" if body is None else json.dumps(body).encode("utf-8")
            headers = ["%s %s%s HTTP/1.1" % (method, self.base_path, path), "Host: %s:%d" % (self.host, self.port),
                       "User-Agent: inferops-vllm-health", "Accept: */*", "Connection: close"]
            if body is not None:
                headers += ["Content-Type: application/json", "Content-Length: %d" % len(payload)]
            if auth and self.api_key:
                headers.append("Authorization: Bearer %s" % self.api_key)
            try:
                sock.settimeout(_left(deadline, "send"))
                sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + payload)
            except (OSError, socket.timeout) as exc:
                raise ProbeError("send", _describe(exc))
            reader = _Reader(sock, deadline)
            status, response_headers = reader.head()
            first_byte_ms = (time.monotonic() - started) * 1000
            body_bytes, first_event_ms = reader.body(response_headers, started if first_event else None)
        finally:
            sock.close()
        timings = {"connect_ms": round(connect_ms, 1), "first_byte_ms": round(first_byte_ms, 1),
                   "total_ms": round((time.monotonic() - started) * 1000, 1)}
        if first_event:
            timings["first_event_ms"] = None if first_event_ms is None else round(first_event_ms, 1)
        return Response(status, response_headers, body_bytes, timings)


def _left(deadline, stage):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ProbeError(stage, "no answer before the deadline")
    return remaining


def _describe(exc):
    if isinstance(exc, socket.timeout):
        return "no answer before the deadline"
    return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__


class _Reader(object):
    def __init__(self, sock, deadline):
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.closed = False

    def _fill(self, stage):
        try:
            self.sock.settimeout(_left(self.deadline, stage))
            chunk = self.sock.recv(65536)
        except ProbeError:
            raise
        except (OSError, socket.timeout) as exc:
            raise ProbeError(stage, _describe(exc))
        if not chunk:
            self.closed = True
        self.buffer += chunk
        return chunk

    def head(self):
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill("response") or len(self.buffer) > 65536:
                raise ProbeError("response", "the connection closed before a complete HTTP response header"
                                 if self.closed else "the response header is too large")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("iso-8859-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ProbeError("response", "not an HTTP response: %r" % lines[0][:80])
        headers = {}
        for line in lines[1:]:
            name, _sep, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def body(self, headers, event_clock):
        first_event_ms = None

        def note_event():
            if event_clock is not None and first_event_ms is None and b"data:" in self.buffer:
                return (time.monotonic() - event_clock) * 1000
            return first_event_ms

        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    if not self._fill("body"):
                        raise ProbeError("body", "the connection closed inside a chunked body")
                size_line, self.buffer = self.buffer.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                while len(self.buffer) < size + 2:
                    if not self._fill("body"):
                        raise ProbeError("body", "the connection closed inside a chunk")
                body += self.buffer[:size]
                self.buffer = self.buffer[size + 2:]
                if event_clock is not None and first_event_ms is None and b"data:" in body:
                    first_event_ms = (time.monotonic() - event_clock) * 1000
                if size == 0:
                    return body, first_event_ms
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            while len(self.buffer) < int(length):
                if not self._fill("body"):
                    raise ProbeError("body", "the connection closed after %d of %s bytes" % (len(self.buffer), length))
                first_event_ms = note_event()
            return self.buffer[:int(length)], note_event()
        while self._fill("body"):
            first_event_ms = note_event()
        return self.buffer, note_event()
