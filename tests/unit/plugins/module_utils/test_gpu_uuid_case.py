"""GPU UUIDs match regardless of case: NVML and nvidia-smi print "GPU-" and lower-case hex, users copy UUIDs from
tools that print capitals. Pins, exclusions and ledger entries in any case name the same GPU; what is returned and
stored is the form NVML gives."""

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gpu_parsers_hostile import observe_smi, row, uuid_of
from vllm_serve_fakes import Exited, FakeModule

from ansible_collections.inferops.vllm.plugins.module_utils import _docker_gpus as dg
from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_ledger as gl
from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select as gs
from ansible_collections.inferops.vllm.plugins.modules import gpu_assign
from docker_cli_gpus import parse_gpus_value

TOTAL = 81559
# Real UUIDs' shape (hex with letters), as NVML prints them.
UUIDS = ["GPU-6f4a3c1e-52b1-4d39-8f8e-9d6a0c1b2e3f", "GPU-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901",
         "GPU-ab12cd34-ef56-ab78-cd90-efabcdef0123", "GPU-deadbeef-cafe-f00d-babe-0123456789ab"]
MIG = "MIG-c499bdaa-75f3-a380-8d34-076b172fe964"


def gpu(index, used=0, procs=(), mig_devices=()):
    return {"index": index, "uuid": UUIDS[index], "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": TOTAL,
            "memory_used_mib": used, "memory_free_mib": TOTAL - used, "utilization_gpu": 0,
            "ecc_uncorrected_volatile": 0, "mig_enabled": bool(mig_devices), "mig_devices": list(mig_devices),
            "processes": [{"pid": p, "used_memory_mib": 1000} for p in procs], "persistence_mode": True}


def host(n=4):
    return {"backend": "nvml", "devices": [gpu(i) for i in range(n)], "topology": None, "processes_visible": True}


def observer(observation):
    return lambda: copy.deepcopy(observation)


def recase(text, flips):
    """`text` with the letters at the positions `flips` picks swapped to the other case."""
    chars = list(text)
    for position in flips:
        position %= len(chars)
        chars[position] = chars[position].swapcase()
    return "".join(chars)


FLIPS = st.lists(st.integers(0, 200), max_size=40)
uuids = st.uuids().map(str)
ids = st.one_of(uuids.map(lambda u: "GPU-" + u), uuids.map(lambda u: "MIG-" + u),
                st.tuples(uuids, st.integers(0, 14), st.integers(0, 7)).map(lambda t: "MIG-GPU-%s/%d/%d" % t))


# ---- the canonical form (the parser/validator: _docker_gpus) ----

@given(ids, FLIPS)
def test_any_case_of_a_uuid_is_the_form_nvml_prints_and_one_key(canonical, flips):
    typed = recase(canonical, flips)
    assert dg.canonical_id(typed) == canonical
    assert dg.canonical_id(dg.canonical_id(typed)) == dg.canonical_id(typed)
    assert dg.id_key(typed) == dg.id_key(canonical) == canonical
    assert dg.normalize_ids([typed]) == [canonical]
    assert parse_gpus_value(dg.gpus_argv([typed])) == (0, [canonical])


@given(st.lists(st.one_of(ids, st.integers(0, 999).map(str)), min_size=1, max_size=8), FLIPS)
def test_ids_in_any_case_round_trip_through_dockers_parser_in_nvmls_form(canonical, flips):
    typed = [recase(i, flips) for i in canonical]
    assert dg.device_requests(typed)[0]["device_ids"] == canonical
    assert parse_gpus_value(dg.gpus_argv(typed)) == (0, canonical)


@given(st.text(max_size=30))
def test_canonical_id_of_anything_is_text_or_the_value_itself_and_idempotent(text):
    once = dg.canonical_id(text)
    assert dg.canonical_id(once) == once and once.lower() == text.lower() or once == text


@pytest.mark.parametrize("name", ["3", 3, None, "gpu0", "", "nvidia0"])
def test_what_is_not_a_uuid_is_left_as_it_is(name):
    assert dg.canonical_id(name) == name


@pytest.mark.parametrize("bad", ["GPU-6F4A3C1E", "GPU-zz4a3c1e-52b1-4d39-8f8e-9d6a0c1b2e3f", "gpu0"])
def test_a_malformed_uuid_in_any_case_is_still_refused_as_typed(bad):
    with pytest.raises(dg.GpuIdError) as err:
        dg.gpus_argv([bad])
    assert repr(bad) in str(err.value)


# ---- gpu_select ----

@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3), FLIPS, st.sampled_from(["index", "uuid"]))
def test_excluding_a_uuid_in_any_case_excludes_that_gpu(index, flips, id_type):
    obs = host()
    typed = recase(UUIDS[index], flips)
    result = gs.select(obs, gs.Constraints(count=3, exclude=[typed], id_type=id_type, prefer_topology=False))
    assert index not in result["gpus"] and obs["devices"][index]["reasons"] == ["excluded"]
    # What comes back is what NVML gave.
    assert set(result["uuids"]) == set(UUIDS) - set([UUIDS[index]])
    if id_type == "uuid":
        assert result["ids"] == result["uuids"]


def test_an_upper_case_mig_uuid_excludes_that_mig_device():
    mig = {"uuid": MIG, "name": "1g.10gb", "memory_total_mib": 9984, "memory_used_mib": 0, "memory_free_mib": 9984,
           "processes": []}
    obs = {"backend": "nvml", "devices": [gpu(0, mig_devices=[mig])], "topology": None, "processes_visible": True}
    with pytest.raises(gs.SelectionError) as err:
        gs.select(obs, gs.Constraints(mig="use", exclude=[MIG.upper()]))
    assert "MIG %s: excluded" % MIG in str(err.value)


def test_excluding_a_gpu_that_is_not_there_still_names_it_as_typed():
    with pytest.raises(gs.SelectionError, match="exclude: GPU-FFFFFFFF-0000-0000-0000-000000000000 does not exist"):
        gs.select(host(), gs.Constraints(exclude=["GPU-FFFFFFFF-0000-0000-0000-000000000000"]))


def test_two_indices_claiming_one_uuid_in_two_cases_are_not_trusted():
    # Constructed, not captured: GPU 5 claims GPU 0's UUID in capitals.
    obs = observe_smi("\n".join([row(0), row(5, cells={"uuid": uuid_of(0).upper()}), row(1, used=30000)]))
    assert gs.select(obs, gs.Constraints())["gpus"] == [1]
    assert obs["devices"][0]["reasons"][0].startswith("unreadable: listed more than once")
    assert obs["devices"][1]["reasons"][0].startswith("unreadable: listed more than once")


def test_a_process_line_naming_its_gpu_in_capitals_still_counts_against_idleness():
    obs = observe_smi(row(0) + "\n" + row(1, used=20000))
    gs.parse_smi_apps("%s, 4242, 1000\n" % obs["devices"][0]["uuid"].upper(), obs["devices"])
    assert gs.select(obs, gs.Constraints(require_idle=True))["gpus"] == [1]


# ---- the ledger ----

@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3), FLIPS, FLIPS)
def test_a_pin_in_any_case_is_stored_as_nvml_prints_it_and_is_one_gpu_with_its_index(index, flips, other_flips):
    typed = recase(UUIDS[index], flips)
    claims = [gl.Claim("embed", pinned=[typed]), gl.Claim("chat", count=3)]
    ledger, report = gl.assign({}, claims, observer(host()))
    assert ledger["embed"] == [UUIDS[index]] and report["assignments"]["embed"] == [UUIDS[index]]
    assert str(index) not in ledger["chat"]
    # The same GPU pinned by another instance, by its index or by its UUID in another case, is one GPU.
    for name in (str(index), recase(UUIDS[index], other_flips)):
        with pytest.raises(gl.LedgerError, match="is pinned by chat and embed"):
            gl.assign({}, [gl.Claim("embed", pinned=[typed]), gl.Claim("chat", pinned=[name])], observer(host()))
    # Typed in another case in the next run, it is the pin the ledger holds: not moved, and not new, so not checked
    # again (the GPU has since turned unhealthy: a new pin on it would be refused).
    later = host()
    later["devices"][index]["remapped_rows_pending"] = True
    again, report = gl.assign(ledger, [gl.Claim("embed", pinned=[recase(UUIDS[index], other_flips)]),
                                       gl.Claim("chat", count=3)], observer(later))
    assert again == ledger and report["moved"] == {} and report["picked"] == {}


def test_a_ledger_written_in_capitals_is_read_in_nvmls_form_and_holds_its_gpus():
    text = json.dumps({"chat": [UUIDS[1].upper(), "gpu-" + UUIDS[2][4:].upper()]})
    ledger = gl.parse(text, "/etc/vllm/gpu-assignments.json")
    assert ledger == {"chat": [UUIDS[1], UUIDS[2]]}
    new, report = gl.assign(ledger, [gl.Claim("embed", count=1)], observer(host()))
    assert new["embed"] == ["3"] and new["chat"] == [UUIDS[1], UUIDS[2]] and report["unlisted"] == {"chat": ledger["chat"]}
    with pytest.raises(gl.LedgerError, match="is pinned by embed, but the ledger gives it to chat"):
        gl.assign(ledger, [gl.Claim("embed", pinned=[UUIDS[1]])], observer(host()))


def test_one_gpu_in_two_cases_in_one_ledger_entry_is_listed_twice():
    with pytest.raises(gl.LedgerError, match="GPU %s is listed twice; fix or remove the ledger" % UUIDS[0]):
        gl.parse(json.dumps({"chat": [UUIDS[0], UUIDS[0].upper()]}), "/etc/vllm/gpu-assignments.json")


def test_exclude_in_capitals_keeps_the_gpu_from_being_picked():
    ledger, report = gl.assign({}, [gl.Claim("chat", count=1)], observer(host()), exclude=[UUIDS[3].upper()])
    assert ledger["chat"] == ["2"]
    # A kept assignment on an excluded GPU moves.
    ledger, report = gl.assign({"chat": ["3"]}, [gl.Claim("chat", count=1)], observer(host()),
                               exclude=[UUIDS[3].upper()])
    assert ledger["chat"] == ["2"] and report["moved"] == {"chat": {"from": ["3"], "to": ["2"]}}


def test_a_pin_in_capitals_on_an_unhealthy_gpu_is_refused_naming_it():
    obs = host()
    obs["devices"][1]["remapped_rows_pending"] = True
    with pytest.raises(gl.LedgerError, match=r"instances\[embed\].gpus: GPU %s it is unhealthy" % UUIDS[1]):
        gl.assign({}, [gl.Claim("embed", pinned=[UUIDS[1].upper()])], observer(obs))


# ---- gpu_assign's input ----

def assign_params(gpus):
    item = dict(name="embed", gpus=gpus, gpu_count=None, tensor_parallel_size=1, pipeline_parallel_size=1,
                min_free_memory=None, state="started", share_gpus=False)
    return dict(path="/nonexistent", instances=[item], min_free_memory=0, require_idle=False, exclude=[], timeout=1)


def test_gpu_assign_takes_pins_in_any_case_in_nvmls_form():
    [claim] = gpu_assign.claims_from(FakeModule(assign_params([UUIDS[0].upper(), "gpu-" + UUIDS[1][4:], "3"])))
    assert claim.pinned == [UUIDS[0], UUIDS[1], "3"]


def test_gpu_assign_refuses_one_gpu_pinned_twice_in_two_cases():
    with pytest.raises(Exited) as done:
        gpu_assign.claims_from(FakeModule(assign_params([UUIDS[0], UUIDS[0].upper()])))
    assert done.value.result["failed"]
    assert done.value.result["msg"] == "instances[embed].gpus: GPU %s is listed twice" % UUIDS[0]
