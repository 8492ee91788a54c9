import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_ledger as gl

TOTAL = 81559


def gpu(index, used=0, procs=()):
    return {"index": index, "uuid": "GPU-%08d-0000-0000-0000-000000000000" % index, "name": "NVIDIA H100 80GB HBM3",
            "memory_total_mib": TOTAL, "memory_used_mib": used, "memory_free_mib": TOTAL - used,
            "utilization_gpu": 0, "ecc_uncorrected_volatile": 0, "mig_enabled": False, "mig_devices": [],
            "processes": [{"pid": p, "used_memory_mib": 1000} for p in procs], "persistence_mode": True}


def host(n=8, **busy):
    """n idle GPUs; busy={"g3": [pid, ...]} puts processes on GPU 3."""
    devices = []
    for i in range(n):
        procs = busy.get("g%d" % i, ())
        devices.append(gpu(i, used=1000 * len(procs), procs=procs))
    return {"backend": "nvml", "devices": devices, "topology": None, "processes_visible": True}


def observer(observation):
    calls = []

    def observe():
        calls.append(1)
        return observation
    observe.calls = calls
    return observe


def no_sharing(ledger, claims):
    """No GPU shared by two instances unless each says share_gpus. Instances not among the claims keep what the
    ledger gave them, shared or not: only the run's own instances are held to it."""
    sharing = dict((c.name, c.share_gpus) for c in claims)
    owners = {}
    for name, gpus in ledger.items():
        for g in gpus:
            owners.setdefault(g, []).append(name)
    for g, names in owners.items():
        if all(n not in sharing for n in names):
            continue
        assert len(names) == 1 or all(sharing.get(n) for n in names), "GPU %s shared by %s" % (g, names)


def fake_proc(tmp_path, pid, instance=None):
    directory = tmp_path / str(pid)
    directory.mkdir()
    env = b"PATH=/usr/bin\0" + (("INFEROPS_VLLM_INSTANCE=%s\0" % instance).encode() if instance else b"")
    (directory / "environ").write_bytes(env)


# ---- the incident: a picked TP=2 instance took GPU 7, then a pinned one was placed on 7 too ----

def test_pinned_gpu_is_reserved_before_anything_is_picked_whatever_the_order(tmp_path):
    picked = gl.Claim("chat", count=2)
    pinned = gl.Claim("embed", pinned=["7"])
    for order in ([picked, pinned], [pinned, picked]):
        ledger, report = gl.assign({}, order, observer(host()), proc=str(tmp_path))
        assert ledger["embed"] == ["7"]
        assert "7" not in ledger["chat"] and len(ledger["chat"]) == 2
        no_sharing(ledger, order)


def test_a_picked_instance_on_a_gpu_pinned_later_moves_and_the_pin_wins(tmp_path):
    before = {"chat": ["6", "7"]}
    claims = [gl.Claim("chat", count=2), gl.Claim("embed", pinned=["7"])]
    ledger, report = gl.assign(before, claims, observer(host()), proc=str(tmp_path))
    assert ledger["embed"] == ["7"]
    assert "7" not in ledger["chat"]
    assert report["moved"]["chat"]["from"] == ["6", "7"]


def test_every_order_of_pinned_and_picked_instances_shares_no_gpu_and_keeps_gpus_across_runs(tmp_path):
    claims = [gl.Claim("a", count=2), gl.Claim("b", pinned=["7"]), gl.Claim("c", count=1),
              gl.Claim("d", pinned=["0", "1"]), gl.Claim("e", count=3)]
    for order in itertools.permutations(claims):
        first = gl.assign({}, list(order), observer(host(10)), proc=str(tmp_path))[0]
        no_sharing(first, order)
        assert first["b"] == ["7"] and first["d"] == ["0", "1"]
        assert sorted(len(first[n]) for n in "ace") == [1, 2, 3]
        # A second run keeps every GPU and reads no GPU at all.
        observe = observer(host())
        again, report = gl.assign(first, list(order), observe, proc=str(tmp_path))
        assert again == first and report["picked"] == {} and report["moved"] == {}
        assert observe.calls == []


def test_two_instances_pinning_one_gpu_are_refused_unless_both_share(tmp_path):
    claims = [gl.Claim("a", pinned=["3"]), gl.Claim("b", pinned=["3", "4"])]
    with pytest.raises(gl.LedgerError) as err:
        gl.assign({}, claims, observer(host()), proc=str(tmp_path))
    assert "GPU 3 is pinned by a and b" in str(err.value) and "share_gpus" in str(err.value)
    claims = [gl.Claim("a", pinned=["3"], share_gpus=True), gl.Claim("b", pinned=["3", "4"])]
    with pytest.raises(gl.LedgerError):
        gl.assign({}, claims, observer(host()), proc=str(tmp_path))
    claims = [gl.Claim("a", pinned=["3"], share_gpus=True), gl.Claim("b", pinned=["3", "4"], share_gpus=True)]
    ledger = gl.assign({}, claims, observer(host()), proc=str(tmp_path))[0]
    assert ledger == {"a": ["3"], "b": ["3", "4"]}


def test_a_gpu_a_foreign_process_uses_is_not_picked_and_the_failure_names_it(tmp_path):
    fake_proc(tmp_path, 4242)  # a training job: no instance marker
    fake_proc(tmp_path, 5151, "chat")  # chat's own orphan: its GPU stays pickable for chat
    observation = host(n=2, g0=[4242], g1=[5151])
    ledger = gl.assign({}, [gl.Claim("chat")], observer(observation), proc=str(tmp_path))[0]
    assert ledger == {"chat": ["1"]}
    with pytest.raises(gl.LedgerError) as err:
        gl.assign({}, [gl.Claim("other")], observer(observation), proc=str(tmp_path))
    assert "GPU 0 used by PID 4242 of another workload" in str(err.value)


def test_an_instance_missing_from_the_inventory_keeps_its_gpus_until_made_absent(tmp_path):
    before = {"old": ["5"], "chat": ["2"]}
    ledger, report = gl.assign(before, [gl.Claim("chat"), gl.Claim("new")], observer(host()), proc=str(tmp_path))
    assert ledger["old"] == ["5"] and report["unlisted"] == {"old": ["5"]}
    assert ledger["new"] != ["5"] and ledger["chat"] == ["2"]
    ledger, report = gl.assign(ledger, [gl.Claim("old", state="absent"), gl.Claim("chat")], observer(host()),
                               proc=str(tmp_path))
    assert "old" not in ledger and report["released"] == ["old"]


def test_a_pin_on_a_gpu_an_unlisted_instance_holds_is_refused_naming_it(tmp_path):
    with pytest.raises(gl.LedgerError) as err:
        gl.assign({"old": ["5"]}, [gl.Claim("new", pinned=["5"])], observer(host()), proc=str(tmp_path))
    assert "GPU 5 is pinned by new, but the ledger gives it to old" in str(err.value)


def test_a_new_count_or_an_excluded_gpu_moves_the_instance(tmp_path):
    ledger, report = gl.assign({"chat": ["2"]}, [gl.Claim("chat", count=2)], observer(host()), proc=str(tmp_path))
    assert len(ledger["chat"]) == 2 and report["moved"]["chat"]["from"] == ["2"]
    ledger, report = gl.assign({"chat": ["2"]}, [gl.Claim("chat")], observer(host()), exclude=["2"], proc=str(tmp_path))
    assert ledger["chat"] != ["2"] and "chat" in report["moved"]


def test_a_later_instance_keeps_its_gpus_when_an_earlier_one_is_picked_anew(tmp_path):
    # b keeps 7 and 6 from the ledger; a, new, must not take them though it comes first and they are the best.
    ledger = gl.assign({"b": ["7", "6"]}, [gl.Claim("a", count=2), gl.Claim("b", count=2)], observer(host()),
                       proc=str(tmp_path))[0]
    assert ledger["b"] == ["7", "6"] and not set(ledger["a"]) & {"6", "7"}


def test_not_enough_gpus_says_which_instance_holds_each(tmp_path):
    with pytest.raises(gl.LedgerError) as err:
        gl.assign({}, [gl.Claim("a", pinned=["0"]), gl.Claim("b", count=2)], observer(host(n=2)), proc=str(tmp_path))
    assert "no GPUs for b" in str(err.value) and "GPU 0 held by instance a" in str(err.value)


def test_duplicate_names_are_refused(tmp_path):
    with pytest.raises(gl.LedgerError, match="a listed more than once"):
        gl.assign({}, [gl.Claim("a"), gl.Claim("a")], observer(host()), proc=str(tmp_path))


# ---- the ledger file ----

@pytest.mark.parametrize("text, fragment", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "holds a list"),
    ('{"../etc": ["1"]}', "is not an instance name"),
    ('{"a": "1"}', "are not a list"),
    ('{"a": ["1; rm -rf /"]}', "is not a GPU"),
    ('{"a": ["1", "1"]}', "listed twice"),
])
def test_a_broken_ledger_is_an_error_naming_the_file_never_a_guess(text, fragment):
    with pytest.raises(gl.LedgerError) as err:
        gl.parse(text, "/etc/vllm/gpu-assignments.json")
    assert fragment in str(err.value) and "/etc/vllm/gpu-assignments.json" in str(err.value)


def test_the_ledger_is_written_as_the_role_wrote_it_before():
    ledger = {"b": ["1"], "a": ["0", "3"]}
    assert gl.render(ledger) == json.dumps(ledger, indent=4, sort_keys=True) + "\n"
    assert gl.parse(gl.render(ledger), "x") == ledger
    assert gl.parse("", "x") == {} and gl.parse(None, "x") == {}


claim_specs = st.lists(
    st.tuples(st.one_of(st.none(), st.lists(st.integers(0, 7), min_size=1, max_size=2, unique=True)),
              st.integers(1, 2), st.booleans()),
    min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(specs=claim_specs, prior=st.dictionaries(st.sampled_from("abcdefg"),
                                                st.lists(st.integers(0, 7).map(str), min_size=1, max_size=2,
                                                         unique=True), max_size=4),
       data=st.data())
def test_property_no_gpu_is_ever_shared_and_a_second_run_changes_nothing(tmp_path_factory, specs, prior, data):
    proc = str(tmp_path_factory.getbasetemp())
    claims = []
    for i, (pinned, count, absent) in enumerate(specs):
        claims.append(gl.Claim("i%d" % i, pinned=[str(g) for g in pinned] if pinned else None, count=count,
                               state="absent" if absent and i % 2 else "started"))
    order = data.draw(st.permutations(claims))
    try:
        ledger, report = gl.assign(prior, order, observer(host()), proc=proc)
    except gl.LedgerError as exc:
        # Only for a real conflict: two pins on one GPU, or not enough free GPUs.
        assert "pinned by" in str(exc) or "no GPUs for" in str(exc), str(exc)
        return
    no_sharing(ledger, order)
    for claim in order:
        if claim.state == "absent":
            assert claim.name not in ledger
        elif claim.pinned:
            assert ledger[claim.name] == claim.pinned
        else:
            assert len(ledger[claim.name]) == claim.count
    again, report = gl.assign(ledger, list(reversed(order)), observer(host()), proc=proc)
    assert again == ledger and report["picked"] == {}
