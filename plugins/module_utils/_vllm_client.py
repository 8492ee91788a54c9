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
import re
import socket
import ssl
import time

from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact

try:
    from urllib.parse import quote, urlsplit
except ImportError:  # pragma: no cover - Python 2
    from urllib import quote
    from urlparse import urlsplit

# A larger answer is not vLLM's (its /metrics is some hundred KiB): a server that sends without end must not fill
# this host's memory before the deadline comes.
# The options of modules that reach a vLLM server, documented once in the inferops.vllm.vllm_endpoint doc fragment.
ENDPOINT_ARGUMENTS = dict(
    url=dict(type="str", required=True),
    api_key=dict(type="str", no_log=True),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
    client_cert=dict(type="path"),
    client_key=dict(type="path", no_log=False),
)

MAX_BODY = 16 * 1024 * 1024
MAX_HEAD = 64 * 1024
# ASCII digits only: str.isdigit() and int() also take "\xb2" or Arabic-Indic digits, which are no HTTP number.
_NUMBER = re.compile(r"[0-9]{1,18}\Z")
_STATUS = re.compile(r"[0-9]{3}\Z")
_CHUNK_SIZE = re.compile(r"[0-9A-Fa-f]{1,16}\Z")
_EXCERPT = 120


class ProbeError(Exception):
    """The request did not complete. `stage` says where: connect, tls, send, response, body (the server did not
    answer or stopped before the deadline), or protocol (what it sent is not a usable HTTP response)."""

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
        """The body as JSON; ValueError (and only that) when it is not."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except RecursionError:
            raise ValueError("the JSON is nested too deeply to read")

    def text(self):
        return self.body.decode("utf-8", "replace")


class Endpoint(object):
    """Where a vLLM server listens, and how to talk to it (TLS, client certificate, API key)."""

    def __init__(self, url, api_key=None, validate_certs=True, ca_path=None, client_cert=None, client_key=None):
        """Raises ValueError naming the option (url, api_key) that cannot work."""
        example = "an http(s) URL such as http://127.0.0.1:8000"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:  # a port out of range or not a number, an unclosed [IPv6
            raise ValueError("url: %r is not %s (%s)" % (url, example, exc))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url: %r is not %s" % (url, example))
        if port == 0:
            # urlsplit reads ":0" as port 0, and `port or 80` would then probe port 80 without a word.
            raise ValueError("url: %r names port 0; give the port the server listens on (1-65535)" % url)
        self.url = url.rstrip("/")
        self.tls = parts.scheme == "https"
        self.host = _ascii_host(url, parts.hostname)
        self.port = port or (443 if self.tls else 80)
        # The request line is ASCII: a path in other characters goes percent-encoded, as browsers send it.
        self.base_path = quote(parts.path.rstrip("/").encode("utf-8", "surrogatepass"), safe="/%:@!$&'()*+,;=~")
        if api_key is not None and not _is_header_text(api_key):
            # Never the key itself in the message: it would reach the task output.
            raise ValueError("api_key: the key holds characters other than printable ASCII, which an HTTP "
                             "Authorization header cannot carry (vLLM compares the header's bytes); use an ASCII key")
        self.api_key = api_key
        self.context = self._tls_context(validate_certs, ca_path, client_cert, client_key) if self.tls else None

    def redact(self, text):
        """Server text with this endpoint's key masked: a server may echo what it was sent."""
        return redact(text, [self.api_key] if self.api_key else [])

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
            host = "[%s]" % self.host if ":" in self.host else self.host
            headers = ["%s %s%s HTTP/1.1" % (method, self.base_path, path), "Host: %s:%d" % (host, self.port),
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
            reader = _Reader(sock, deadline, self.redact)
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


def _ascii_host(url, host):
    """The host as sockets, TLS and the Host header take it: IDNA (punycode) for a non-ASCII name."""
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        # An empty label (a..b) or one over 63 characters: the socket module would raise this at connect time.
        raise ValueError("url: %r: %r is not a valid host name (%s)" % (url, host, exc))
    if not ascii_host.strip(".") or any(c.isspace() or ord(c) < 33 or ord(c) == 127 for c in ascii_host):
        raise ValueError("url: %r: %r is not a valid host name" % (url, host))
    return ascii_host


def _is_header_text(value):
    return all(32 <= ord(c) < 127 for c in value)


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
    """Reads one HTTP/1.1 response from a socket (anything with settimeout and recv), each read bounded by the
    deadline and the whole by MAX_HEAD and MAX_BODY. Raises ProbeError, nothing else."""

    def __init__(self, sock, deadline, redact_text=None):
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()
        self.closed = False
        self.redact = redact_text or (lambda text: text)

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

    def _quote(self, raw):
        """Server bytes fit for a message: masked first, then cut, so that a cut cannot keep part of the key."""
        text = self.redact(bytes(raw).decode("iso-8859-1"))
        return repr(text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else ""))

    def head(self):
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD:
                raise ProbeError("protocol", "the response header is larger than %d KiB" % (MAX_HEAD // 1024))
            if not self._fill("response"):
                raise ProbeError("response", "the connection closed before a complete HTTP response header")
        end = self.buffer.index(b"\r\n\r\n")
        head, self.buffer = bytes(self.buffer[:end]), self.buffer[end + 4:]
        lines = head.decode("iso-8859-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not _STATUS.match(parts[1]):
            raise ProbeError("protocol", "not an HTTP response: %s" % self._quote(head.split(b"\r\n", 1)[0]))
        headers = {}
        for line in lines[1:]:
            name, _sep, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def body(self, headers, event_clock):
        """The body, and the ms from event_clock to the first server-sent event ("data:"), if one came."""
        self.event_clock = event_clock
        self.first_event_ms = None
        if "chunked" in [c.strip() for c in headers.get("transfer-encoding", "").lower().split(",")]:
            return self._chunked(), self.first_event_ms
        length = headers.get("content-length")
        if length is not None:
            if not _NUMBER.match(length):
                raise ProbeError("protocol", "Content-Length %s is not a number of bytes" % self._quote(
                    length.encode("iso-8859-1")))
            length = int(length)
            if length > MAX_BODY:
                raise ProbeError("protocol", "the body (%d bytes) is larger than %s" % (length, _MIB))
            while len(self.buffer) < length:
                seen = len(self.buffer)
                if not self._fill("body"):
                    raise ProbeError("body", "the connection closed after %d of %d bytes" % (len(self.buffer),
                                                                                             length))
                self._note_event(self.buffer, seen)
            del self.buffer[length:]
        else:
            while True:
                seen = len(self.buffer)
                if len(self.buffer) > MAX_BODY:
                    raise ProbeError("protocol", "the body is larger than %s" % _MIB)
                if not self._fill("body"):
                    break
                self._note_event(self.buffer, seen)
        self._note_event(self.buffer, 0)
        return bytes(self.buffer), self.first_event_ms

    def _note_event(self, data, seen):
        """Notes the first "data:" in data[seen - 4:], so that each byte is looked at about once."""
        if self.event_clock is not None and self.first_event_ms is None and b"data:" in data[max(0, seen - 4):]:
            self.first_event_ms = (time.monotonic() - self.event_clock) * 1000

    def _chunked(self):
        body = bytearray()
        while True:
            while b"\r\n" not in self.buffer:
                if len(self.buffer) > 4096:
                    raise ProbeError("protocol", "a chunk size line longer than 4 KiB")
                if not self._fill("body"):
                    raise ProbeError("body", "the connection closed inside a chunked body")
            end = self.buffer.index(b"\r\n")
            size_line, self.buffer = bytes(self.buffer[:end]), self.buffer[end + 2:]
            size = size_line.split(b";")[0].strip().decode("iso-8859-1")
            if not _CHUNK_SIZE.match(size):
                raise ProbeError("protocol", "chunk size %s is not a hexadecimal number" % self._quote(size_line))
            size = int(size, 16)
            if len(body) + size > MAX_BODY:
                raise ProbeError("protocol", "the body is larger than %s" % _MIB)
            while len(self.buffer) < size + 2:
                if not self._fill("body"):
                    raise ProbeError("body", "the connection closed inside a chunk")
            seen = len(body)
            body += self.buffer[:size]
            del self.buffer[:size + 2]
            self._note_event(body, seen)
            if size == 0:
                return bytes(body)


_MIB = "%d MiB" % (MAX_BODY // (1024 * 1024))
