"""The vllm_health module itself (through ansible) keeps its budget against servers that misbehave on purpose."""

import socket
import threading

import pytest

from ansible_run import run_module


class Hostile(object):
    """Accepts connections, and then: says nothing, or sends headers and stalls, or stalls the TLS handshake."""

    def __init__(self, behaviour):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.behaviour = behaviour
        self.held = []
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            try:
                conn, _addr = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.behaviour == "headers-then-stall":
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc")
                except OSError:
                    pass

    def close(self):
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("behaviour, scheme", [("silent", "http"), ("headers-then-stall", "http"),
                                               ("tls-stall", "https")])
def test_module_returns_within_its_budget(behaviour, scheme):
    server = Hostile(behaviour)
    try:
        result = run_module("localhost", "inferops.vllm.vllm_health",
                            {"url": "%s://127.0.0.1:%d" % (scheme, server.port), "timeout": 3, "fail_on": "never"})
    finally:
        server.close()
    assert result["status"] == "unhealthy"
    assert result["elapsed_ms"] < 4000
    assert result.elapsed < 15  # the whole ansible run, start-up included
