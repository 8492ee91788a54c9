"""Servers that misbehave on purpose, to prove that probes keep their deadlines: "silent" accepts and never
answers; "headers-then-stall" sends headers and stalls in the body; "trickle" sends a byte every 100 ms;
"tls-stall" accepts and never completes a TLS handshake."""

import socket
import threading
import time


class Hostile(object):
    def __init__(self, behaviour):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
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
        self.listener.close()
        for conn in self.held:
            conn.close()
