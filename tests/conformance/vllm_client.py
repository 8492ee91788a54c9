"""HTTP as the checks need it: status, headers and the exact body bytes, Server-Sent Events, Prometheus text."""

import json
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = dict((k.lower(), v) for k, v in headers.items())
        self.body = body

    def json(self):
        return json.loads(self.body)


def request(url, method="GET", body=None, key=None, headers=None, timeout=60):
    sent = dict(headers or {})
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    if key:
        sent["Authorization"] = "Bearer %s" % key
    req = urllib.request.Request(url, data=data, headers=sent, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return Response(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.headers, exc.read())


def generate(server, path, body, key):
    """A generation whose length is its max_tokens: the tiny model's random weights may pick the end token."""
    return request(server.url + path, "POST", dict(body, ignore_eos=True), key)


def open_stream(server, path, body, key, timeout=120):
    req = urllib.request.Request(server.url + path, data=json.dumps(dict(body, stream=True, ignore_eos=True)).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer %s" % key})
    return urllib.request.urlopen(req, timeout=timeout)


def events(response, on_event=None, found=None):
    """The `data:` payloads of a Server-Sent Events body, as text, until the stream ends (appended to `found`)."""
    found = [] if found is None else found
    for raw in response:
        line = raw.decode().rstrip("\r\n")
        if not line:
            continue
        assert line.startswith("data: "), "not an SSE data line: %r" % line
        found.append(line[len("data: "):])
        if on_event:
            on_event(found)
    return found


def metrics(server):
    response = request(server.url + "/metrics")
    assert response.status == 200
    return response, dict((f.name, f) for f in text_string_to_metric_families(response.body.decode()))


def total(families, name, suffix="_total", **labels):
    family = families[name]
    return sum(s.value for s in family.samples if s.name == name + suffix and
               all(s.labels.get(k) == v for k, v in labels.items()))


def wait_until(check, timeout=5.0):
    """The engine publishes its counters a moment after a response: poll for them."""
    deadline = time.time() + timeout
    while True:
        result = check()
        if result or time.time() > deadline:
            return result
        time.sleep(0.2)
