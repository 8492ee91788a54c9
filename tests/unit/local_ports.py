"""A free local port for the test servers, one way for every test that starts one."""
import contextlib
import random
import socket


def free_port():
    """A port nothing listens on, below the kernel's ephemeral range. A port from that range (what bind(0) gives) may
    be taken by any outgoing connection between this check and the server's own bind: an emulator once failed to
    start with EADDRINUSE in the unit stage, where two workers run tests that open many connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            ephemeral_low = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _attempt in range(500):
        port = random.randint(10000, max(10001, ephemeral_low - 1))
        with contextlib.closing(socket.socket()) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port between 10000 and %d" % ephemeral_low)
