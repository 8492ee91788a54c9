"""Servers that misbehave on purpose, to prove that probes keep their deadlines: "silent" accepts and never
answers; "headers-then-stall" sends headers and stalls in the body; "trickle" sends a byte every 100 ms;
"tls-stall" accepts and never completes a TLS handshake."""

import socket
import threading
import time


class Listener(object):
    """A local TCP server on a free port that hands each connection to handle(), on its accepting thread.
    Subclasses set what handle() needs before calling this __init__: accepting starts at once."""

    def __init__(self, backlog=16):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _addr = self.listener.accept()
            except OSError:
                return
            self.handle(conn)

    def handle(self, conn):
        raise NotImplementedError

    def close(self):
        self.listener.close()


class Hostile(Listener):
    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.held = []
        super(Hostile, self).__init__()

    def handle(self, conn):
        self.held.append(conn)
        if self.behaviour == "headers-then-stall":
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc")
        elif self.behaviour == "trickle":
            conn.recv(65536)
            threading.Thread(target=self.trickle, args=(conn,), daemon=True).start()
        # "silent" and "tls-stall": accept and never say anything

    @staticmethod
    def trickle(conn):
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while True:
                conn.sendall(b"x")
                time.sleep(0.1)
        except OSError:
            pass

    def close(self):
        super(Hostile, self).close()
        for conn in self.held:
            conn.close()
