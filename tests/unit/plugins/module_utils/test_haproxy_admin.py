"""HAProxy's admin socket as the gateway's drain uses it: `show stat` read from a capture of Debian's HAProxy 2.6
(the gateway's backend, one server draining, one coming up), names that could carry a second command refused,
and any answer either read or refused with the module's own error. tests/gateway runs it against the real HAProxy."""
import os
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _haproxy_admin as admin

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "haproxy", "show-stat-vllm-servers-2.6.csv")


def captured():
    with open(FIXTURE) as handle:
        return handle.read()


def test_show_stat_of_the_real_haproxy_gives_each_servers_status_and_sessions():
    assert admin.parse_stat(captured()) == {
        ("vllm", "gw-a"): {"status": "DRAIN", "sessions": 0, "weight": 1},
        ("vllm", "gw-b"): {"status": "UP 1/2", "sessions": 0, "weight": 1}}


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
