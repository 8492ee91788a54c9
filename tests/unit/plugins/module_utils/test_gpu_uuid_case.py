"""GPU UUIDs match regardless of case: NVML and nvidia-smi print "GPU-" and lower-case hex, users copy UUIDs from
tools that print capitals. Pins, exclusions and ledger entries in any case name the same GPU; what is returned and
stored is the form NVML gives."""

import copy
import json
import pathlib
import tempfile
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from text_cases import recase
from test_gpu_parsers_hostile import observe_smi, row, uuid_of
from vllm_serve_fakes import Exited, FakeBackend, FakeModule, params, process_dir

from ansible_collections.inferops.vllm.plugins.module_utils import _docker_gpus as dg
from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_ledger as gl
from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_reclaim, _instance_procs, _nvml
from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select as gs
from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_serve_manager, _vllm_units
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_backends import Actual
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_gpus import GpuCheck
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_plan import Refused
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_spec import Spec
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


# ---- only ASCII letters fold ----

@pytest.mark.parametrize("lookalike", ["m\u0131g-", "M\u0130G-", "\uff27PU-", "G\u0420U-"])
def test_a_prefix_with_a_non_ascii_lookalike_letter_is_not_a_uuid_and_names_no_gpu(lookalike):
    # The dotless i upper-cases to "I": folded like that, "m\u0131g-..." would name the real MIG device.
    name = lookalike + MIG[4:]
    assert dg.canonical_id(name) == name and dg.id_key(name) != dg.id_key(MIG)
    with pytest.raises(dg.GpuIdError):
        dg.normalize_ids([name])


# ---- vllm_serve: the instance's GPUs ----

def serve(tmp_path, gpus, actual, processes=None, **overrides):
    """vllm_serve's run on a fake backend with the instance in `actual`, on a host of two GPUs whose NVML UUIDs are
    UUIDS[0] and UUIDS[1]; `processes` {index: [(pid, instance or None)]}."""
    proc = tmp_path / "proc"
    if not proc.exists():
        proc.mkdir()
    listed = {}
    for index, entries in (processes or {}).items():
        for pid, instance in entries:
            if not (proc / str(pid)).exists():
                process_dir(proc, pid, "python3", ["python3", "x.py"], instance=instance)
            listed.setdefault(index, []).append({"pid": pid, "used_memory_mib": 1000})

    def snapshot(timeout):
        return {"devices": [{"index": i, "uuid": UUIDS[i], "memory_total_mib": TOTAL,
                             "memory_free_mib": TOTAL - sum(p["used_memory_mib"] for p in listed.get(i, [])),
                             "processes": listed.get(i, [])} for i in range(2)]}

    module = FakeModule(params(tmp_path, gpus=gpus, **overrides))
    backends = []

    def backend_for(spec, image, wanted=None):
        backends.append(FakeBackend(spec, image, wanted or {}, "docker", actual))
        return backends[-1]

    original = _vllm_serve_manager.backend_for
    _vllm_serve_manager.backend_for = backend_for
    try:
        with pytest.raises(Exited) as exited:
            _vllm_serve_manager.VllmServe(module, snapshot=snapshot, proc=str(proc)).run()
    finally:
        _vllm_serve_manager.backend_for = original
    return exited.value.result, module, backends[0] if backends else None


@settings(max_examples=20, deadline=None)
@given(FLIPS)
def test_vllm_serve_finds_a_gpu_named_in_any_case_and_plans_memory_on_it(flips):
    with tempfile.TemporaryDirectory() as tmp:
        result, module, backend = serve(pathlib.Path(tmp), [recase(UUIDS[1], flips)], Actual(False, False, False))
    assert "failed" not in result, result["msg"]
    assert backend.done == ["create", "start"]
    assert result["memory_plan"]["gpus"][0]["index"] == 1


def test_vllm_serve_refuses_a_gpu_of_another_workload_named_in_capitals(tmp_path):
    result, module, backend = serve(tmp_path, [UUIDS[1].upper()], Actual(False, False, False),
                                    processes={1: [(4242, None)], 0: [(5151, None)]})
    assert result["failed"] and backend.done == [], result["msg"]
    assert "(GPU 1: PID 4242 (python3" in result["msg"] and "5151" not in result["msg"]


def test_an_instance_created_with_capitals_is_left_alone_beside_its_own_processes(tmp_path):
    # The instance runs as created with its UUID in capitals; its own vLLM holds the GPU. Nothing to do: no
    # refusal for a GPU "missing", no warning about another workload, no restart.
    typed = [UUIDS[0].upper(), "gpu-" + UUIDS[1][4:].upper()]
    first, module, backend = serve(tmp_path, typed, Actual(False, False, False))
    assert "failed" not in first, first["msg"]
    again, module, backend = serve(tmp_path, typed, Actual(True, True, True),
                                   processes={0: [(6161, "llama")], 1: [(6161, "llama")]})
    assert "failed" not in again, again["msg"]
    assert backend.done == [] and again["changed"] is False and again["config_hash"] == first["config_hash"]
    assert not [w for w in module.warnings if "other workloads" in w]
    assert [g["index"] for g in again["memory_plan"]["gpus"]] == [0, 1]


# The spec is where vllm_serve's options become what each backend is given: built from GPUs typed in any case, it
# carries NVML's form, so the container's DeviceRequests, the unit's `docker run --gpus`, the venv's
# CUDA_VISIBLE_DEVICES, the result and the config hash name each GPU one way.
@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(ids, st.integers(0, 999).map(str)), min_size=1, max_size=4, unique=True), FLIPS,
       st.sampled_from(["docker", "systemd", "venv"]))
def test_the_spec_gives_every_backend_the_gpus_in_nvmls_form(canonical, flips, backend):
    root = pathlib.PurePosixPath("/nonexistent")
    typed = [recase(i, flips) for i in canonical]
    spec = Spec(params(root, backend=backend, gpus=typed))
    as_nvml = Spec(params(root, backend=backend, gpus=canonical))
    assert spec.gpus == canonical
    env = spec.environment()
    assert env == as_nvml.environment()
    if backend == "venv":
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(canonical)
    if backend == "systemd":
        argv = _vllm_units.docker_run_argv(spec, "vllm/vllm-openai:v0.33.0", 120)
        assert parse_gpus_value(argv[argv.index("--gpus") + 1]) == (0, canonical)
    image = "vllm/vllm-openai:v0.33.0"
    assert spec.summary(image, env) == as_nvml.summary(image, env)
    assert spec.config_hash(image, env, {}, "digest") == as_nvml.config_hash(image, env, {}, "digest")


def test_vllm_serve_returns_and_plans_on_the_gpus_in_nvmls_form(tmp_path):
    typed = ["gpu-" + UUIDS[1][4:].upper(), "0"]
    result, module, backend = serve(tmp_path, typed, Actual(False, False, False))
    assert "failed" not in result, result["msg"]
    assert result["gpus"] == [UUIDS[1], "0"] and backend.spec.gpus == [UUIDS[1], "0"]
    assert backend.wanted["summary"]["gpus"] == [UUIDS[1], "0"]


@pytest.mark.parametrize("uuid_first", [False, True])
def test_vllm_serve_refuses_one_gpu_named_by_its_index_and_by_its_uuid(tmp_path, uuid_first):
    # Given twice, the GPU would be handed to the container twice, and planned for and sized (tensor parallel 2) as
    # two GPUs.
    named = ["1", "gpu-" + UUIDS[1][4:].upper()]
    if uuid_first:
        named.reverse()
    result, module, backend = serve(tmp_path, named, Actual(False, False, False))
    assert result.get("failed") and backend is None, result
    shown = ["1", UUIDS[1]][::-1] if uuid_first else ["1", UUIDS[1]]
    assert result["msg"] == "gpus: '%s' and '%s' are the same GPU; list each GPU once" % tuple(shown)


def test_vllm_serve_refuses_the_same_gpu_twice_with_the_inputs_message(tmp_path):
    # Refused by the input's check before NVML is read; GpuCheck says the same were it reached.
    result, module, backend = serve(tmp_path, ["1", "1"], Actual(False, False, False))
    assert result["msg"] == "gpus: GPU 1 is listed twice"
    check = GpuCheck(types.SimpleNamespace(p={}, name="llama", gpus=[UUIDS[1], UUIDS[1]]), None)
    with pytest.raises(Refused, match="^gpus: GPU %s is listed twice$" % UUIDS[1]):
        check.chosen(host(2)["devices"])


ABSENT = "GPU-ffffffff-0000-0000-0000-000000000000"


def resolved(name, devices):
    """An independent reading of which device a name is: by its number, or by its UUID in lower case."""
    for position, device in enumerate(devices):
        if name.isdigit() and int(name) == device["index"] or name.lower() == device["uuid"].lower():
            return position
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["0", "1", "2", "3", "7"]),
                          st.tuples(st.sampled_from(UUIDS + [ABSENT]), FLIPS).map(lambda t: recase(*t))),
                min_size=1, max_size=6))
def test_the_instances_gpus_are_each_one_device_or_refused_naming_why(named):
    devices = host(4)["devices"]
    check = GpuCheck(types.SimpleNamespace(p={}, name="llama", gpus=[dg.canonical_id(n) for n in named]), None)
    expected, first = [], {}
    for name in named:
        position = resolved(name, devices)
        if position is None:
            expected = "gpus: GPU %s does not exist on this host (GPUs here: 0, 1, 2, 3)" % dg.canonical_id(name)
            break
        if position in first:
            twice = dg.id_key(first[position]) == dg.id_key(name)
            expected = ("gpus: GPU %s is listed twice" % dg.id_key(name) if twice else
                        "gpus: '%s' and '%s' are the same GPU; list each GPU once" % (
                            dg.canonical_id(first[position]), dg.canonical_id(name)))
            break
        first[position] = name
        expected.append(devices[position])
    try:
        chosen = check.chosen(devices)
    except Refused as exc:
        assert str(exc) == expected
        return
    # Never a device twice: each name is its own GPU.
    assert chosen == expected and len(set(d["index"] for d in chosen)) == len(named)


# ---- vllm_gpu_reclaim: whose processes may be killed ----

@pytest.fixture
def reclaim_host(monkeypatch):
    """NVML shows GPUs 0-3; every GPU runs one process of the instance "chat" (PID 100 + index) and one of another
    workload (PID 200 + index). The PIDs signalled are recorded in "killed", not signalled."""
    host = {"devices": [dict(gpu(i), processes=[{"pid": 100 + i, "used_memory_mib": 1000},
                                                {"pid": 200 + i, "used_memory_mib": 1000}], memory_used_mib=2000)
                        for i in range(4)], "killed": []}
    monkeypatch.setattr(_nvml, "snapshot", lambda timeout: {"devices": copy.deepcopy(host["devices"])})
    monkeypatch.setattr(_instance_procs, "instance_of", lambda pid, proc="/proc": "chat" if pid < 200 else None)
    monkeypatch.setattr(_gpu_reclaim, "_kill", lambda pids, grace: host["killed"].extend(pids))
    return host


# The fixture's fakes hold for every example: nothing here changes them.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 3), FLIPS)
def test_reclaim_by_uuid_in_any_case_kills_only_that_gpus_instance_processes(reclaim_host, index, flips):
    del reclaim_host["killed"][:]
    report = _gpu_reclaim.reclaim("chat", [recase(UUIDS[index], flips)], reset=False)
    assert report["killed"] == reclaim_host["killed"] == [100 + index]
    # Reported as NVML gives it.
    assert [(g["index"], g["uuid"]) for g in report["gpus"]] == [(index, UUIDS[index])]


def test_reclaim_of_one_gpu_named_twice_in_two_ways_kills_its_processes_once(reclaim_host):
    report = _gpu_reclaim.reclaim("chat", [UUIDS[2].upper(), "2", "gpu-" + UUIDS[0][4:]], reset=False)
    assert reclaim_host["killed"] == report["killed"] == [100, 102] and [g["index"] for g in report["gpus"]] == [0, 2]


def test_reclaim_of_a_gpu_not_on_the_host_names_it_as_typed_and_kills_nothing(reclaim_host):
    absent = "GPU-FFFFFFFF-0000-0000-0000-000000000000"
    with pytest.raises(_gpu_reclaim.ReclaimError, match="^gpus: %s not found on this host$" % absent):
        _gpu_reclaim.reclaim("chat", ["1", absent], reset=False)
    assert reclaim_host["killed"] == []


@pytest.mark.parametrize("named", [UUIDS[1], UUIDS[1].upper(), "1"])
def test_reclaim_refuses_a_uuid_two_gpus_claim_in_two_cases(reclaim_host, named):
    # A broken reading: GPU 2 claims GPU 1's UUID in capitals. Folding cases must not widen the kill to GPU 2's
    # processes: the UUID names no one GPU, and nothing is touched. By its index, GPU 1 is one GPU.
    reclaim_host["devices"][2]["uuid"] = UUIDS[1].upper()
    if named == "1":
        assert _gpu_reclaim.reclaim("chat", [named], reset=False)["killed"] == reclaim_host["killed"] == [101]
        return
    with pytest.raises(_gpu_reclaim.ReclaimError, match=r"^gpus: %s names more than one GPU here \(GPUs 1, 2; " % named):
        _gpu_reclaim.reclaim("chat", ["0", named], reset=False)
    assert reclaim_host["killed"] == []
