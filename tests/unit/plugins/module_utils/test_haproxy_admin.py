"""HAProxy's admin socket as the gateway's drain uses it: `show stat` and `show servers state` read from captures of
Debian's HAProxy 2.6 (the gateway's backend: one server draining, one coming up; and one drained while its checks
fail, one drained, one in maintenance), names that could carry a second command refused,
and any answer either read or refused with the module's own error. tests/gateway runs it against the real HAProxy."""
import os
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _haproxy_admin as admin

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "haproxy")


def captured(name="show-stat-vllm-servers-2.6.csv"):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def test_show_stat_of_the_real_haproxy_gives_each_servers_status_and_sessions():
    assert admin.parse_stat(captured()) == {
        ("vllm", "gw-a"): {"status": "DRAIN", "sessions": 0, "weight": 1},
        ("vllm", "gw-b"): {"status": "UP 1/2", "sessions": 0, "weight": 1}}


def test_a_drained_server_whose_checks_fail_is_down_in_show_stat_and_drained_only_in_its_admin_bits():
    statuses = admin.parse_stat(captured("show-stat-vllm-admin-states-2.6.csv"))
    assert {server: value["status"] for (_backend, server), value in statuses.items()} == {
        "gw-a": "DOWN", "gw-b": "DRAIN", "gw-c": "MAINT"}
    assert admin.parse_servers_state(captured("show-servers-state-vllm-2.6.txt")) == {
        ("vllm", "gw-a"): admin.FORCED_DRAIN, ("vllm", "gw-b"): admin.FORCED_DRAIN, ("vllm", "gw-c"): admin.FORCED_MAINT}


@pytest.mark.parametrize("bits, state, needed", [
    (0, "drain", True), (0, "ready", False), (0, "maint", True),
    (admin.FORCED_DRAIN, "drain", False), (admin.FORCED_DRAIN, "ready", True), (admin.FORCED_DRAIN, "maint", True),
    (admin.FORCED_MAINT, "drain", True), (admin.FORCED_MAINT, "ready", True), (admin.FORCED_MAINT, "maint", False),
    # Bits the runtime API does not set (a maintenance from the configuration, 0x04) leave the decision alone.
    (0x04, "ready", False), (0x04 | admin.FORCED_DRAIN, "drain", False)])
def test_what_needs_a_change_comes_from_the_admin_bits(bits, state, needed):
    assert admin.needs_change(bits, state) is needed


@pytest.mark.parametrize("status, up", [
    ("UP", True), ("UP 1/2", True), ("no check", True), ("DOWN", False), ("DOWN 1/2", False), ("DRAIN", False),
    ("MAINT", False), ("MAINT (via vllm/x)", False), ("NOLB", False), ("", False), ("UPPER", False)])
def test_up_is_what_takes_new_requests(status, up):
    assert admin.counts_as_up(status) is up


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_servers_state_answer_is_read_or_refused_with_the_modules_error(text):
    try:
        result = admin.parse_servers_state(text)
    except admin.HaproxyAdminError:
        return
    assert all(isinstance(bits, int) for bits in result.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789ab -\t", max_size=60), min_size=1, max_size=5))
def test_mangled_servers_state_lines_never_escape_as_other_errors(lines):
    head = captured("show-servers-state-vllm-2.6.txt").splitlines()[:2]
    try:
        admin.parse_servers_state("\n".join(head + lines))
    except admin.HaproxyAdminError:
        pass


@pytest.mark.parametrize("name", ["", "a;disable server vllm/b", "a b", "a\nb", "a/b", "x" * 129, None, 5])
def test_names_that_are_not_haproxys_are_refused_before_the_socket(name):
    with pytest.raises(admin.HaproxyAdminError):
        admin.set_state("/nonexistent", "vllm", name, "drain")
    with pytest.raises(admin.HaproxyAdminError):
        admin.servers("/nonexistent", name)


def test_only_the_three_states():
    with pytest.raises(admin.HaproxyAdminError, match="state is one of drain, ready, maint"):
        admin.set_state("/nonexistent", "vllm", "a", "disable")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_answer_is_read_or_refused_with_the_modules_error(text):
    try:
        result = admin.parse_stat(text)
    except admin.HaproxyAdminError:
        return
    assert all(isinstance(value["sessions"], int) for value in result.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789abc,\"", max_size=12), min_size=1, max_size=5))
def test_mangled_lines_of_a_real_answer_never_escape_as_other_errors(lines):
    header = captured().splitlines()[0]
    try:
        admin.parse_stat("\n".join([header] + lines))
    except admin.HaproxyAdminError:
        pass


def serve_once(path, answer):
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    received = []

    def run():
        conn, _addr = server.accept()
        received.append(conn.recv(1024))
        conn.sendall(answer)
        conn.close()
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, received


def test_an_error_answer_of_set_server_is_the_modules_error(tmp_path):
    path = str(tmp_path / "admin.sock")
    thread, received = serve_once(path, b"No such server.\n\n")
    with pytest.raises(admin.HaproxyAdminError, match="No such server"):
        admin.set_state(path, "vllm", "gpu1-a", "drain")
    thread.join(5)
    assert received == [b"set server vllm/gpu1-a state drain\n"]


def test_a_missing_socket_says_where_it_looked(tmp_path):
    with pytest.raises(admin.HaproxyAdminError, match="admin.sock"):
        admin.servers(str(tmp_path / "admin.sock"), "vllm")


def test_wait_idle_stops_at_its_deadline_with_the_sessions_left(monkeypatch):
    answers = iter([3, 2, 2, 2])
    monkeypatch.setattr(admin, "servers", lambda path, backend: {"a": {"sessions": next(answers), "status": "DRAIN"}})
    now = [0.0]
    left = admin.wait_idle("/x", "vllm", "a", 1.0, interval=0.5, clock=lambda: now[0],
                           sleep=lambda seconds: now.__setitem__(0, now[0] + seconds))
    assert left == 2 and now[0] == 1.0


def test_wait_up_returns_at_the_first_up_or_its_deadline_with_the_last_status(monkeypatch):
    answers = iter(["DOWN", "DOWN 1/2", "UP", "UP"])
    monkeypatch.setattr(admin, "servers", lambda path, backend: {"a": {"sessions": 0, "status": next(answers)}})
    now = [0.0]
    tick = dict(clock=lambda: now[0], sleep=lambda seconds: now.__setitem__(0, now[0] + seconds))
    assert admin.wait_up("/x", "vllm", "a", 10.0, interval=0.5, **tick) == "UP" and now[0] == 1.0
    monkeypatch.setattr(admin, "servers", lambda path, backend: {"a": {"sessions": 0, "status": "DOWN"}})
    now[0] = 0.0
    assert admin.wait_up("/x", "vllm", "a", 2.0, interval=0.5, **tick) == "DOWN" and now[0] == 2.0
    monkeypatch.setattr(admin, "servers", lambda path, backend: {})
    with pytest.raises(admin.HaproxyAdminError, match="backend vllm has no server a"):
        admin.wait_up("/x", "vllm", "a", 2.0, **tick)
