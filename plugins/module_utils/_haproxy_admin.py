# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy's runtime API (its admin socket), as the gateway's drain and re-admit use it: a server's status and its
sessions in flight, from `show stat`; whether it is drained or in maintenance, from `show servers state`; and
`set server <backend>/<server> state drain|ready|maint`."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import csv
import re
import socket
import time

MAX_ANSWER = 4 * 1024 * 1024
STATES = ("drain", "ready", "maint")
# `show stat <backend> 4 -1`: servers only (type 4), of that backend.
_SERVERS = 4
# HAProxy's proxy and server names; anything else (a `;` starts a second command) never reaches the socket.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\Z")
# srv_admin_state bits of `show servers state` (HAProxy's enum srv_admin) that `set server ... state` sets: a
# maintenance and a drain. A drained server whose checks fail shows DOWN in `show stat`, not DRAIN: only these bits
# tell that it is still drained.
FORCED_MAINT = 0x01
FORCED_DRAIN = 0x08


class HaproxyAdminError(Exception):
    pass


def command(path, text, timeout=5.0):
    """Sends one command line to the admin socket at `path` and returns HAProxy's answer (it closes after it)."""
    if "\n" in text or "\r" in text:
        raise HaproxyAdminError("a command is one line")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        try:
            conn.connect(path)
            conn.sendall(text.encode("ascii") + b"\n")
            chunks, size = [], 0
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise HaproxyAdminError("%s: the answer to %r passed %d bytes" % (path, text, MAX_ANSWER))
                chunks.append(chunk)
        except (OSError, socket.timeout) as exc:
            raise HaproxyAdminError("%s: %s: %s" % (path, text, exc))
    finally:
        conn.close()
    return b"".join(chunks).decode("utf-8", "replace")


def parse_stat(text):
    """`show stat` CSV -> {(proxy, server): {"status": str, "sessions": int, "weight": int}}."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise HaproxyAdminError("not an answer to show stat: %r" % text[:200])
    header = lines[0][2:].split(",")
    try:
        columns = {name: header.index(name) for name in ("pxname", "svname", "scur", "status", "weight")}
    except ValueError as exc:
        raise HaproxyAdminError("show stat lacks a column: %s" % exc)
    found = {}
    for fields in csv.reader(line for line in lines[1:] if line.strip()):
        if len(fields) < len(header):
            raise HaproxyAdminError("a short show stat line: %r" % ",".join(fields)[:200])
        line = ",".join(fields)
        try:
            sessions = int(fields[columns["scur"]] or 0)
            weight = int(fields[columns["weight"]] or 0)
        except ValueError:
            raise HaproxyAdminError("show stat has a non-number where a count goes: %r" % line[:200])
        found[(fields[columns["pxname"]], fields[columns["svname"]])] = {
            "status": fields[columns["status"]], "sessions": sessions, "weight": weight}
    return found


def parse_servers_state(text):
    """`show servers state` (format 1) -> {(backend, server): srv_admin_state bits}."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or lines[0].strip() != "1" or not lines[1].startswith("# "):
        raise HaproxyAdminError("not an answer to show servers state (format 1): %r" % text[:200])
    header = lines[1][2:].split()
    try:
        columns = [header.index(name) for name in ("be_name", "srv_name", "srv_admin_state")]
    except ValueError as exc:
        raise HaproxyAdminError("show servers state lacks a column: %s" % exc)
    found = {}
    for line in lines[2:]:
        fields = line.split()
        if len(fields) < len(header):
            raise HaproxyAdminError("a short show servers state line: %r" % line[:200])
        backend, server, admin = (fields[column] for column in columns)
        if not admin.isdigit():
            raise HaproxyAdminError("show servers state has a non-number as srv_admin_state: %r" % line[:200])
        found[(backend, server)] = int(admin)
    return found


def admin_states(path, backend, timeout=5.0):
    """{server: srv_admin_state bits} of one backend."""
    check_name("backend", backend)
    states = parse_servers_state(command(path, "show servers state %s" % backend, timeout))
    return dict((server, admin) for (proxy, server), admin in states.items() if proxy == backend)


def needs_change(admin, state):
    """Whether a server with these srv_admin_state bits is not yet in `state`: drained (and not in maintenance, which
    a drain ends), in maintenance, or ready (neither)."""
    drained, in_maintenance = bool(admin & FORCED_DRAIN), bool(admin & FORCED_MAINT)
    return {"drain": not drained or in_maintenance, "maint": not in_maintenance,
            "ready": drained or in_maintenance}[state]


def check_name(what, name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise HaproxyAdminError("%s is 1 to 128 of A-Z a-z 0-9 _ . : - (HAProxy's names), not %r" % (what, name))


def servers(path, backend, timeout=5.0):
    """{server: {"status", "sessions", "weight"}} of one backend."""
    check_name("backend", backend)
    stats = parse_stat(command(path, "show stat %s %d -1" % (backend, _SERVERS), timeout))
    return dict((server, value) for (proxy, server), value in stats.items() if proxy == backend)


def set_state(path, backend, server, state, timeout=5.0):
    if state not in STATES:
        raise HaproxyAdminError("state is one of %s, not %r" % (", ".join(STATES), state))
    check_name("backend", backend)
    check_name("server", server)
    answer = command(path, "set server %s/%s state %s" % (backend, server, state), timeout).strip()
    if answer:
        raise HaproxyAdminError("set server %s/%s state %s: %s" % (backend, server, state, answer))


def wait_idle(path, backend, server, deadline_seconds, interval=0.5, clock=time.monotonic, sleep=time.sleep):
    """Waits until the server has no session in flight; returns how many it still had when time ran out (0: idle)."""
    last = _poll(path, backend, server, lambda current: current["sessions"] == 0, deadline_seconds, interval, clock,
                 sleep)
    return last["sessions"]


def _poll(path, backend, server, done, deadline_seconds, interval, clock, sleep):
    """Reads the server's `show stat` row until `done(row)` or the deadline; returns the last row read."""
    deadline = clock() + deadline_seconds
    while True:
        current = servers(path, backend).get(server)
        if current is None:
            raise HaproxyAdminError("backend %s has no server %s" % (backend, server))
        if done(current) or clock() >= deadline:
            return current
        sleep(interval)


def counts_as_up(status):
    """Whether HAProxy sends new requests to a server `show stat` reports as `status`: UP (also "UP 1/2", failing
    checks but not yet out) or "no check" (a server without checks). DOWN, "DOWN 1/2" (passing checks, not yet
    back), DRAIN, MAINT and NOLB take none."""
    return status == "no check" or status == "UP" or status.startswith("UP ")


def wait_up(path, backend, server, deadline_seconds, interval=0.5, clock=time.monotonic, sleep=time.sleep):
    """Waits until HAProxy's checks count the server up (it takes new requests again); returns its last status,
    which is not up when time ran out."""
    last = _poll(path, backend, server, lambda current: counts_as_up(current["status"]), deadline_seconds, interval,
                 clock, sleep)
    return last["status"]
