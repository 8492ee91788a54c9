"""The vllm role's health table: one line per checked instance, its own GPUs, whatever the strings hold."""

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import given, settings as hsettings, strategies as st

from ansible_collections.inferops.vllm.plugins.filter.health_table import HEADER, health_table

CHAT = {"name": "chat", "model": "/models/llama", "port": 8000}
CODE = {"name": "code", "model": "/models/coder", "port": 8001}
EIGHT = [{"index": i, "uuid": "GPU-%d" % i} for i in range(8)]


def verdict(status="healthy", ttft=41.7, gpus=None):
    return {"status": status, "checks": {"inference": {"ok": True, "ttft_ms": ttft}}, "gpus": gpus or []}


def results(verdicts, assigned=None):
    """vllm_results as the role records it: per instance its health verdict and the GPUs it was given."""
    assigned = assigned or {}
    return {name: {"health": health, "gpus": assigned.get(name), "ready": True} for name, health in verdicts.items()}


def test_header_and_one_row_per_instance_in_the_instances_order():
    lines = health_table([CHAT, CODE], results({"code": verdict("degraded", 950.2), "chat": verdict()},
                                               {"chat": ["0", "1"], "code": ["2"]}))
    assert lines == [
        "instance         status     port  ttft_ms  gpus       model",
        "chat             healthy    8000  42       0,1        /models/llama",
        "code             degraded   8001  950      2          /models/coder",
    ]
    assert lines[0] == HEADER


def test_the_gpus_are_the_instances_own_not_every_gpu_the_health_check_saw():
    # A systemd instance's health check reads NVML and lists all eight GPUs of the host.
    lines = health_table([CHAT, CODE], results({"chat": verdict(gpus=EIGHT), "code": verdict(gpus=EIGHT)},
                                               {"chat": ["4", "5"], "code": ["GPU-6f1e2d3c"]}))
    assert lines[1].split()[4] == "4,5" and lines[2].split()[4] == "GPU-6f1e2d3c"
    assert "0,1,2,3,4,5,6,7" not in "\n".join(lines)


def test_gpu_ids_given_as_numbers_are_shown_too():
    assert health_table([CHAT], results({"chat": verdict()}, {"chat": [0, 3]}))[1].split()[4] == "0,3"


def test_an_instance_without_gpus_recorded_shows_a_dash():
    for assigned in ({}, {"chat": []}, {"chat": None}):
        assert health_table([CHAT], results({"chat": verdict(gpus=EIGHT)}, assigned))[1].split()[4] == "-"


def test_an_instance_without_a_verdict_has_no_row():
    only_code = health_table([CODE], results({"code": verdict()}))[1]
    assert health_table([CHAT, CODE], results({"code": verdict()})) == [HEADER, only_code]
    # A stopped instance is recorded, but the run did not wait for it: no verdict, no row.
    assert health_table([CHAT, CODE], dict(results({"code": verdict()}), chat={"health": None, "gpus": ["0"]})) == [
        HEADER, only_code]
    assert health_table([CHAT, CODE]) == [HEADER]


@pytest.mark.parametrize("checked, ttft", [
    ({"status": "down", "checks": {"inference": {"ok": False, "ttft_ms": None}}}, "-"),
    ({"status": "down", "checks": {"inference": {"ok": False}}}, "-"),
    ({"status": "down", "checks": {}}, "-"),
    ({"status": "down", "checks": None}, "-"),
    ({"status": "down"}, "-"),
    ({"status": "down", "checks": {"inference": {"ttft_ms": float("nan")}}}, "-"),
    ({"status": "down", "checks": {"inference": {"ttft_ms": 0}}}, "0"),
    ({"status": "down", "checks": {"inference": {"ttft_ms": "12\n34"}}}, "12\\n34"),
])
def test_a_missing_ttft_is_a_dash(checked, ttft):
    assert health_table([CHAT], results({"chat": checked}))[1].split()[3] == ttft


def test_a_verdict_without_status_or_not_a_dict_shows_a_question_mark():
    for checked in ({}, {"status": None}, "failed", 3):
        row = health_table([CHAT], results({"chat": checked}))[1]
        assert row.split()[:4] == ["chat", "?", "8000", "-"], row


@pytest.mark.parametrize("hostile, shown", [
    ("/models/x\nchat healthy 8000 1 0 /models/y", "/models/x\\nchat healthy 8000 1 0 /models/y"),
    ("m\r\x1b[2Jcleared", "m\\r\\x1b[2Jcleared"),
    ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
    ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
    ("tab\tbed\x00nul\x7fdel\x85nel", "tab\\tbed\\x00nul\\x7fdel\\x85nel"),
    ("caf\u00e9 \u6a21\u578b", "caf\u00e9 \u6a21\u578b"),
])
def test_control_characters_are_escaped_so_each_row_is_one_line(hostile, shown):
    instance = dict(CHAT, model=hostile)
    lines = health_table([instance], results({"chat": verdict(status="up\nEVIL")}, {"chat": ["0\n1"]}))
    assert len(lines) == 2 and len("\n".join(lines).splitlines()) == 2
    assert lines[1].endswith(" " + shown)
    assert "up\\nEVIL" in lines[1] and "0\\n1" in lines[1]


def test_what_cannot_be_a_table_is_a_filter_error():
    with pytest.raises(AnsibleFilterError, match="expects the list of instances, got dict"):
        health_table(CHAT)
    with pytest.raises(AnsibleFilterError, match="results must be a dict by instance name .*, got list"):
        health_table([CHAT], [verdict()])
    with pytest.raises(AnsibleFilterError, match=r"vllm_instances\[1\] is not a dict of settings, got str"):
        health_table([CHAT, "code"], {})


TEXTS = st.text(max_size=40)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXTS, st.lists(TEXTS, max_size=3))


@hsettings(max_examples=300, deadline=None)
@given(name=st.text(min_size=1, max_size=20), model=VALUES, port=VALUES, status=VALUES, ttft=VALUES, gpus=VALUES)
def test_any_values_give_one_line_per_checked_instance(name, model, port, status, ttft, gpus):
    instance = {"name": name, "model": model, "port": port}
    checked = {"status": status, "checks": {"inference": {"ttft_ms": ttft}}}
    lines = health_table([instance], {name: {"health": checked, "gpus": gpus}})
    assert len(lines) == 2
    assert all(isinstance(line, str) and len(line.splitlines()) == 1 for line in lines), lines
