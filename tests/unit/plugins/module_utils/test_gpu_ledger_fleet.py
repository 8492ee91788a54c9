"""The GPU ledger on fleet hosts: 8 and 16 GPUs, many instances of 1, 2, 4 and 8 GPUs, pins by index, GPU UUID and
MIG UUID mixed with picks, and GPUs that are lost, unhealthy or run MIG. All observations here are synthetic.

What must hold: one GPU is one GPU whatever it is named by; no GPU is handed out (picked, or newly pinned) when it
is lost, unhealthy or MIG-enabled, and a pin on one is refused naming the GPU and the fix; the same input gives the
same ledger; a second run changes nothing.
"""

import copy

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_gpu_ledger import gpu, host, no_sharing, observer
from test_gpu_select import h100_topology

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_ledger as gl
from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select as gs


def uuid(index):
    return gpu(index)["uuid"]


def mig_uuid(parent, slot):
    return "MIG-%08d-0000-0000-0000-00000000000%d" % (parent, slot)


# The states a fleet's GPU can be in that make it unfit to hand out (synthetic, as _nvml and nvidia-smi read them).
def lost(index):
    return {"index": index, "error": "NVML error 15: GPU is lost"}


def unhealthy(kind):
    def make(index):
        device = gpu(index)
        device.update({"ecc": {"ecc_uncorrected_volatile": 2}, "pages": {"retired_pages_pending": True},
                       "rows": {"remapped_rows_pending": True}, "failed": {"remapped_rows_failure": True},
                       "mig": {"mig_enabled": True, "utilization_gpu": None, "mig_devices": [{
                           "uuid": mig_uuid(index, 0), "name": "3g.40gb", "memory_total_mib": 40192,
                           "memory_used_mib": 0, "memory_free_mib": 40192, "processes": []}]},
                       "pending": {"mig_enabled_pending": True}}[kind])
        return device
    return make


UNFIT = {"lost": lost, "ecc": unhealthy("ecc"), "pages": unhealthy("pages"), "rows": unhealthy("rows"),
         "failed": unhealthy("failed"), "mig": unhealthy("mig"), "pending": unhealthy("pending")}


def fleet_host(n=8, unfit=None, topology=True):
    """n idle GPUs, unfit={index: state}; with the H100-like topology of test_gpu_select."""
    obs = host(n)
    for index, state in (unfit or {}).items():
        obs["devices"][index] = UNFIT[state](index)
    obs["topology"] = h100_topology(n) if topology else None
    return obs


def index_of(name):
    """The index of a GPU named by index or by one of these tests' UUIDs; a MIG UUID as it is."""
    return int(name) if name.isdigit() else int(name[4:12]) if name.startswith("GPU-") else name


def held(ledger):
    """{GPU index: [instance, ...]} with every name of a GPU (index, UUID) read as its index."""
    owners = {}
    for name, gpus in ledger.items():
        for g in gpus:
            owners.setdefault(index_of(g), []).append(name)
    return owners


# ---- one GPU, two names ----

def test_an_instance_holding_a_gpu_by_index_moves_when_another_pins_it_by_uuid(tmp_path):
    claims = [gl.Claim("chat"), gl.Claim("embed", pinned=[uuid(7)])]
    ledger, report = gl.assign({"chat": ["7"]}, claims, observer(fleet_host()), proc=str(tmp_path))
    assert ledger["embed"] == [uuid(7)] and ledger["chat"] != ["7"]
    assert report["moved"]["chat"]["from"] == ["7"]
    assert all(len(names) == 1 for names in held(ledger).values())


def test_two_instances_pinning_one_gpu_by_index_and_by_uuid_are_refused(tmp_path):
    claims = [gl.Claim("a", pinned=["3"]), gl.Claim("b", pinned=[uuid(3)])]
    with pytest.raises(gl.LedgerError) as err:
        gl.assign({}, claims, observer(fleet_host()), proc=str(tmp_path))
    assert "GPU 3 = %s is pinned by a and b" % uuid(3) in str(err.value)


def test_a_pin_by_index_on_a_gpu_an_unlisted_instance_holds_by_uuid_is_refused(tmp_path):
    with pytest.raises(gl.LedgerError) as err:
        gl.assign({"old": [uuid(5)]}, [gl.Claim("new", pinned=["5"])], observer(fleet_host()), proc=str(tmp_path))
    assert "GPU 5 is pinned by new, but the ledger gives it (as %s) to old" % uuid(5) in str(err.value)


def test_excluding_a_gpu_by_uuid_moves_the_instance_holding_it_by_index(tmp_path):
    ledger, report = gl.assign({"chat": ["2"]}, [gl.Claim("chat")], observer(fleet_host()), exclude=[uuid(2)],
                               proc=str(tmp_path))
    assert ledger["chat"] != ["2"] and report["moved"]["chat"]["from"] == ["2"]


def test_unchanged_names_of_one_form_are_not_read_again(tmp_path):
    observe = observer(fleet_host())
    ledger = {"a": [uuid(1)], "b": [uuid(2), uuid(3)]}
    again, report = gl.assign(ledger, [gl.Claim("a", pinned=[uuid(1)]), gl.Claim("b", count=2)], observe,
                              exclude=[uuid(4)], proc=str(tmp_path))
    assert again == ledger and observe.calls == []


def test_instances_sharing_a_gpu_that_are_no_longer_listed_keep_it(tmp_path):
    # Two instances that shared GPU 3 on purpose (share_gpus), then left the inventory: they may still run.
    ledger, report = gl.assign({"a": ["3"], "b": ["3"]}, [gl.Claim("c")], observer(fleet_host()), proc=str(tmp_path))
    assert ledger["a"] == ledger["b"] == ["3"] and ledger["c"] != ["3"]
    assert report["unlisted"] == {"a": ["3"], "b": ["3"]}


# ---- pins on GPUs that cannot take them ----

@pytest.mark.parametrize("state, fragment", [
    ("lost", "GPU 3 it cannot be read (NVML error 15: GPU is lost): it fell off the bus or needs a reset. Reset it "
             "(nvidia-smi -r -i 3) or reboot the host, or pin another GPU"),
    ("mig", "GPU 3 it has MIG enabled, so no process can use it whole. Pin one of its MIG devices (MIG-..., "
            "nvidia-smi -L lists them), or disable MIG (nvidia-smi -i 3 -mig 0, then reset the GPU)"),
    ("pending", "GPU 3 it has MIG enabled pending a reset, so no process can use it whole"),
    ("ecc", "GPU 3 it is unhealthy: 2 uncorrected volatile ECC error(s). Reset it (nvidia-smi -r -i 3)"),
    ("pages", "GPU 3 it is unhealthy: memory pages are pending retirement (reset the GPU to retire them)"),
    ("rows", "GPU 3 it is unhealthy: a memory row remapping is pending (reset the GPU to apply it)"),
    ("failed", "GPU 3 it is unhealthy: a memory row remapping failed (the GPU needs service)"),
])
def test_a_new_pin_on_a_gpu_that_cannot_take_it_is_refused_naming_the_gpu_and_the_fix(tmp_path, state, fragment):
    for name in ("3", uuid(3)) if state != "lost" else ("3",):
        with pytest.raises(gl.LedgerError) as err:
            gl.assign({}, [gl.Claim("chat", pinned=["1", name])], observer(fleet_host(unfit={3: state})),
                      proc=str(tmp_path))
        assert str(err.value).startswith("instances[chat].gpus: ")
        assert fragment.replace("GPU 3", "GPU %s" % name, 1) in str(err.value)


def test_a_pin_on_a_gpu_the_host_does_not_have_is_refused(tmp_path):
    with pytest.raises(gl.LedgerError) as err:
        gl.assign({}, [gl.Claim("chat", pinned=["9"])], observer(fleet_host(unfit={2: "lost"})), proc=str(tmp_path))
    assert str(err.value) == ("instances[chat].gpus: GPU 9 it is not a GPU of this host (nvml sees GPUs 0, 1, 2, 3, "
                              "4, 5, 6, 7). Pin one that exists (nvidia-smi -L lists them)")


def test_a_pin_on_a_mig_device_of_a_mig_gpu_is_taken_and_an_unknown_one_refused(tmp_path):
    obs = fleet_host(unfit={3: "mig"})
    ledger = gl.assign({}, [gl.Claim("small", pinned=[mig_uuid(3, 0)])], observer(obs), proc=str(tmp_path))[0]
    assert ledger == {"small": [mig_uuid(3, 0)]}
    with pytest.raises(gl.LedgerError, match="GPU %s it is not a GPU of this host" % mig_uuid(3, 5)):
        gl.assign({}, [gl.Claim("small", pinned=[mig_uuid(3, 5)])], observer(obs), proc=str(tmp_path))


def test_a_pin_already_in_the_ledger_stays_when_its_gpu_goes_bad(tmp_path):
    # The instance was placed when the GPU was fine: a later run for another instance does not fail over it.
    claims = [gl.Claim("chat", pinned=["3"]), gl.Claim("embed")]
    ledger, report = gl.assign({"chat": ["3"]}, claims, observer(fleet_host(unfit={3: "ecc"})), proc=str(tmp_path))
    assert ledger["chat"] == ["3"] and ledger["embed"] not in (["3"],)


def test_new_pins_stand_unchecked_when_the_gpus_cannot_be_read(tmp_path):
    def observe():
        raise gs.BackendError("no backend could read the GPUs: nvml: the nvidia-ml-py library is not installed")
    ledger, report = gl.assign({}, [gl.Claim("chat", pinned=["3"])], observe, proc=str(tmp_path))
    assert ledger == {"chat": ["3"]} and report["unchecked"].startswith("no backend could read the GPUs")
    with pytest.raises(gl.LedgerError, match="the GPUs could not be read to pick some for embed: no backend"):
        gl.assign({}, [gl.Claim("chat", pinned=["3"]), gl.Claim("embed")], observe, proc=str(tmp_path))


# ---- picks ----

@pytest.mark.parametrize("state", sorted(UNFIT))
def test_a_gpu_that_is_lost_unhealthy_or_mig_is_never_picked(tmp_path, state):
    # GPU 7 would be picked first on an idle host.
    ledger = gl.assign({}, [gl.Claim("chat", count=7)], observer(fleet_host(unfit={7: state})),
                       proc=str(tmp_path))[0]
    assert sorted(ledger["chat"], key=int) == [str(i) for i in range(7)]
    with pytest.raises(gl.LedgerError, match="no GPUs for chat"):
        gl.assign({}, [gl.Claim("chat", count=8)], observer(fleet_host(unfit={7: state})), proc=str(tmp_path))


def test_a_gpu_whose_processes_cannot_be_listed_is_not_picked_and_the_failure_says_why(tmp_path):
    obs = fleet_host(n=2)
    obs["devices"][1]["processes_error"] = "NVML error 4: Insufficient Permissions"
    assert gl.assign({}, [gl.Claim("chat")], observer(obs), proc=str(tmp_path))[0] == {"chat": ["0"]}
    with pytest.raises(gl.LedgerError) as err:
        gl.assign({}, [gl.Claim("chat", count=2)], observer(obs), proc=str(tmp_path))
    assert ("GPU 1 its compute processes could not be listed (NVML error 4: Insufficient Permissions), so another "
            "workload on it cannot be ruled out") in str(err.value)


def test_the_ledger_reads_the_topology_so_several_gpus_are_picked_close_together(monkeypatch):
    seen = {}

    def observe(backend, timeout, **kwargs):
        seen.update(kwargs, backend=backend)
        return fleet_host(), []
    monkeypatch.setattr(gs, "observe", observe)
    gl.read_gpus(7)
    assert seen == {"backend": "auto", "with_topology": True}


def test_instances_of_more_gpus_are_picked_first_so_small_ones_do_not_split_a_switch(tmp_path):
    # Two GPUs per PCIe switch, (0, 1) and (2, 3); 1 and 3 the emptiest. In the inventory's order, a would take 3
    # and c 1, leaving b to straddle both switches.
    obs = fleet_host(n=4)
    for device in obs["devices"]:
        used = 0 if device["index"] in (1, 3) else 500
        device.update(memory_used_mib=used, memory_free_mib=device["memory_total_mib"] - used)
    claims = [gl.Claim("a"), gl.Claim("c"), gl.Claim("b", count=2)]
    ledger = gl.assign({}, claims, observer(obs), proc="/nonexistent")[0]
    assert sorted(ledger["b"]) in (["0", "1"], ["2", "3"])


def test_sixteen_gpus_are_named_and_ordered_as_numbers(tmp_path):
    obs = fleet_host(n=16)
    ledger = gl.assign({}, [gl.Claim("a", count=8), gl.Claim("b", count=4), gl.Claim("c", count=2),
                            gl.Claim("d", count=1), gl.Claim("e", pinned=["10"])], observer(obs), proc=str(tmp_path))[0]
    assert ledger["e"] == ["10"] and all(len(names) == 1 for names in held(ledger).values())
    assert sorted(len(v) for v in ledger.values()) == [1, 1, 2, 4, 8]
    with pytest.raises(gl.LedgerError) as err:
        gl.assign(ledger, [gl.Claim(n, count=len(g)) if n != "e" else gl.Claim("e", pinned=["10"])
                           for n, g in ledger.items()] + [gl.Claim("f", count=2)], observer(obs), proc=str(tmp_path))
    holders = [part.split(" held")[0] for part in str(err.value).rsplit("(", maxsplit=1)[-1].split("; ")]
    assert holders == sorted(holders, key=lambda h: int(h.split()[1]))  # GPU 2 before GPU 10


# ---- properties: fleets of 8 and 16 GPUs ----

COUNTS = st.sampled_from([1, 1, 2, 2, 4, 8])


@st.composite
def fleets(draw):
    n = draw(st.sampled_from([8, 16]))
    unfit = draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(sorted(UNFIT)), max_size=3))
    specs = []
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["pick", "pick", "pick", "index", "uuid"]))
        if kind == "pick":
            specs.append(gl.Claim("i%d" % i, count=draw(COUNTS)))
        else:
            gpus = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2, unique=True))
            specs.append(gl.Claim("i%d" % i, pinned=[str(g) if kind == "index" else uuid(g) for g in gpus]))
    return n, unfit, specs


@settings(max_examples=200, deadline=None)
@given(fleets())
def test_property_fleet_ledgers_share_nothing_hand_out_nothing_unfit_and_are_stable(tmp_path_factory, fleet):
    n, unfit, claims = fleet
    proc = str(tmp_path_factory.getbasetemp())
    obs = fleet_host(n, unfit)
    try:
        ledger, report = gl.assign({}, claims, observer(copy.deepcopy(obs)), proc=proc)
    except gl.LedgerError as exc:
        event("refused")
        message = str(exc)
        assert "pinned by" in message or "no GPUs for" in message or message.startswith("instances["), message
        if message.startswith("instances["):
            # Refused only for a pin on an unfit GPU, which the message names.
            assert any("GPU %s it " % g in message for c in claims for g in c.pinned or [] if index_of(g) in unfit)
        return
    event("assigned")
    no_sharing(ledger, claims)
    assert all(len(names) == 1 for names in held(ledger).values())
    for claim in claims:
        gpus = ledger[claim.name]
        assert gpus == claim.pinned if claim.pinned else len(gpus) == claim.count
    # Nothing handed out is unfit.
    assert not set(held(ledger)) & set(unfit)
    # The same input gives the same ledger; a second run changes nothing and reads no GPU.
    assert gl.assign({}, claims, observer(copy.deepcopy(obs)), proc=proc)[0] == ledger
    observe = observer(copy.deepcopy(obs))
    again, report = gl.assign(ledger, list(reversed(claims)), observe, proc=proc)
    assert again == ledger and report["picked"] == {} and report["moved"] == {}
    names = [g for gpus in ledger.values() for g in gpus]
    if all(g.isdigit() for g in names) or all(g.startswith("GPU-") for g in names):
        assert observe.calls == []
