import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select as gs
from ansible_collections.inferops.vllm.plugins.module_utils import _sizes

TOTAL = 81559


def gpu(index, used=0, util=0, ecc=0, mig=False, procs=(), mig_devices=()):
    return {"index": index, "uuid": "GPU-%08d-0000-0000-0000-000000000000" % index, "name": "NVIDIA H100 80GB HBM3",
            "memory_total_mib": TOTAL, "memory_used_mib": used, "memory_free_mib": TOTAL - used,
            "utilization_gpu": None if mig else util, "ecc_uncorrected_volatile": ecc, "mig_enabled": mig,
            "mig_devices": list(mig_devices), "processes": [{"pid": p, "used_memory_mib": 1000} for p in procs],
            "persistence_mode": True}


def observation(devices, topology=None, backend="nvml", processes_visible=True):
    return {"backend": backend, "devices": devices, "topology": topology, "processes_visible": processes_visible}


def h100_topology(n=8):
    """Two GPUs per PCIe switch, two NUMA nodes of n/2 GPUs."""
    def level(a, b):
        if a == b:
            return 0
        if a // 2 == b // 2:
            return 10
        if (a < n // 2) == (b < n // 2):
            return 40
        return 50
    return dict((a, dict((b, level(a, b)) for b in range(n))) for a in range(n))


def pick(devices, topology=None, **kwargs):
    return gs.select(observation(copy.deepcopy(devices), topology), gs.Constraints(**kwargs))


def test_most_free_memory_first_then_lowest_utilization_then_higher_index():
    devices = [gpu(0, used=20000), gpu(1, util=30), gpu(2, util=5), gpu(3, util=5)]
    assert pick(devices, count=3, prefer_topology=False)["gpus"] == [3, 2, 1]


def test_busy_gpu_0_is_left_alone_the_seed_004_incident():
    devices = [gpu(0, used=60000, procs=[4242]), gpu(1, used=50000, procs=[4243])] + [gpu(i) for i in range(2, 8)]
    result = pick(devices, count=2, min_free_memory_mib=30000, prefer_topology=False)
    assert result["gpus"] == [7, 6]


def test_filters_each_say_why():
    devices = [gpu(0, procs=[11]), gpu(1, ecc=2), gpu(2, mig=True), gpu(3, util=90), gpu(4, used=70000), gpu(5), gpu(6)]
    obs = observation(devices)
    result = gs.select(obs, gs.Constraints(count=1, min_free_memory_mib=20000, max_utilization=50, exclude=["6"],
                                           require_idle=True))
    reasons = dict((d["index"], d["reasons"]) for d in obs["devices"])
    assert result["gpus"] == [5]
    assert reasons[0] == ["1 compute process(es) running (pid 11)"]
    assert reasons[1] == ["2 uncorrected volatile ECC error(s)"]
    assert reasons[2] == ["MIG enabled (set mig: use to select its MIG devices)"]
    assert reasons[3] == ["utilization 90% > max_utilization 50%"]
    assert reasons[4] == ["11559 MiB free < min_free_memory 20000 MiB"]
    assert reasons[6] == ["excluded"]


def test_not_enough_gpus_lists_every_gpu_and_its_reason():
    devices = [gpu(0, used=80000), gpu(1, ecc=1), gpu(2)]
    with pytest.raises(gs.SelectionError) as err:
        pick(devices, count=2, min_free_memory_mib=10000)
    message = str(err.value)
    assert message.startswith("2 GPU(s) requested, 1 eligible on this host:")
    assert "GPU 0: 1559 MiB free < min_free_memory 10000 MiB" in message
    assert "GPU 1: 1 uncorrected volatile ECC error(s)" in message
    assert "GPU 2: eligible" in message


def test_exclude_naming_a_missing_gpu_is_an_error():
    with pytest.raises(gs.SelectionError, match=r"exclude: 9 does not exist on this host \(GPUs here: indices 0, 1"):
        pick([gpu(0), gpu(1)], exclude=["9"])


def test_exclude_by_uuid():
    devices = [gpu(0), gpu(1)]
    assert pick(devices, exclude=[devices[1]["uuid"]])["gpus"] == [0]


def test_count_below_one_is_refused():
    with pytest.raises(gs.SelectionError, match="count must be at least 1, got 0"):
        pick([gpu(0)], count=0)


def test_topology_prefers_gpus_on_one_switch_over_the_two_best_ranked():
    # 7 and 5 are the emptiest, but cross switches; 3 and 2 share one.
    devices = [gpu(0, used=30000), gpu(1, used=30000), gpu(2, used=100), gpu(3, used=50), gpu(4, used=9000),
               gpu(5, used=20), gpu(6, used=9000), gpu(7, used=10)]
    assert pick(devices, count=2, prefer_topology=False)["gpus"] == [7, 5]
    result = pick(devices, h100_topology(), count=2)
    assert result["gpus"] == [3, 2] and result["topology"] == "single"


def test_topology_keeps_four_gpus_within_one_numa_node_when_it_can():
    devices = [gpu(i, used=10 * i) for i in range(8)]
    result = pick(devices, h100_topology(), count=4)
    assert sorted(result["gpus"]) == [0, 1, 2, 3] and result["topology"] == "node"


def test_greedy_topology_for_large_hosts_still_stays_on_a_switch():
    n = 32
    topology = h100_topology(n)
    devices = [gpu(i, used=(i * 7919) % 5000) for i in range(n)]
    result = pick(devices, topology, count=2)
    assert result["topology"] == "single"


def test_mig_use_picks_one_mig_device_by_uuid():
    migs = [{"uuid": "MIG-%08d-0000-0000-0000-000000000000" % s, "name": "3g.40gb", "memory_total_mib": 40192,
             "memory_used_mib": used, "memory_free_mib": 40192 - used, "processes": []} for s, used in ((0, 9000), (1, 0))]
    devices = [gpu(0, used=70000), gpu(1, mig=True, mig_devices=migs)]
    result = pick(devices, mig="use", min_free_memory_mib=30000)
    assert result["uuids"] == [migs[1]["uuid"]] and result["ids"] == [migs[1]["uuid"]] and result["gpus"] == [1]


def test_mig_use_with_count_above_one_explains():
    devices = [gpu(0, mig=True, mig_devices=[])]
    with pytest.raises(gs.SelectionError, match="a process uses one MIG device, and count is 2"):
        pick(devices, mig="use", count=2)


def test_uuid_ids():
    devices = [gpu(0), gpu(1)]
    assert pick(devices, id_type="uuid")["ids"] == [devices[1]["uuid"]]


def test_unreadable_gpu_is_reported_not_dropped():
    obs = observation([gpu(0), {"index": 1, "error": "NVML error 15: GPU is lost"}])
    assert gs.select(obs, gs.Constraints())["gpus"] == [0]
    assert obs["devices"][1]["reasons"] == ["unreadable: NVML error 15: GPU is lost"]


def test_require_idle_without_visible_processes_does_not_guess():
    obs = observation([gpu(0)], backend="docker", processes_visible=False)
    with pytest.raises(gs.SelectionError, match="idleness cannot be proven"):
        gs.select(obs, gs.Constraints(require_idle=True))


def test_parse_nvidia_smi_csv():
    text = ("0, GPU-a, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 81559, 20480, 61079, 35, 32, 0, Disabled, Enabled, "
            "Disabled, [N/A], No, No\n"
            "1, GPU-b, NVIDIA H100 80GB HBM3, 00000000:2A:00.0, 81559, 0, 81559, [N/A], 33, [N/A], Enabled, Enabled, "
            "Enabled, [N/A], No, No\n")
    devices = gs.parse_smi_gpus(text, "nvidia-smi")
    assert devices[0]["memory_free_mib"] == 61079 and devices[0]["utilization_gpu"] == 35
    assert devices[1]["mig_enabled"] is True and devices[1]["utilization_gpu"] is None
    assert devices[1]["ecc_uncorrected_volatile"] is None
    gs.parse_smi_apps("GPU-a, 4242, 20480\n", devices)
    assert devices[0]["processes"] == [{"pid": 4242, "used_memory_mib": 20480}]


def test_parse_rejects_unexpected_output():
    with pytest.raises(gs.BackendError, match="expected 16"):
        gs.parse_smi_gpus("0, 1, 2\n", "nvidia-smi")
    with pytest.raises(gs.BackendError, match="listed no GPUs"):
        gs.parse_smi_gpus("\n", "nvidia-smi")


def test_run_command_is_bounded_by_its_timeout():
    with pytest.raises(gs.BackendError, match="did not finish within 0.3s"):
        gs.run_command(["sleep", "5"], 0.3)


def test_missing_executable_is_a_backend_error():
    with pytest.raises(gs.BackendError, match="could not start"):
        gs.run_command(["/nonexistent/nvidia-smi"], 1)


def failing(message):
    def reader(*args, **kwargs):
        raise gs.BackendError(message)
    return reader


def test_auto_reports_every_failed_backend(monkeypatch):
    monkeypatch.setattr(gs, "read_nvml", failing("no pynvml"))
    monkeypatch.setattr(gs, "read_nvidia_smi", failing("not found"))
    with pytest.raises(gs.BackendError) as err:
        gs.observe("auto", 1)
    assert str(err.value) == ("no backend could read the GPUs: nvml: no pynvml; nvidia-smi: not found; "
                              "docker: skipped: the docker backend runs only when docker_image is given")
    assert [a["backend"] for a in err.value.attempts] == ["nvml", "nvidia-smi", "docker"]


@pytest.mark.parametrize("text, mib", [(40960, 40960), ("40GiB", 40960), ("40 GiB", 40960), ("40G", 40960),
                                       ("512MiB", 512), ("1.5GiB", 1536), ("80GB", 76293), ("4096", 4096),
                                       ("1TiB", 1048576)])
def test_sizes(text, mib):
    assert _sizes.to_mib(text, "min_free_memory") == mib


@pytest.mark.parametrize("bad", ["40GX", "forty", "-1", "", True, -5, "1e3GiB"])
def test_malformed_sizes_name_the_field_and_the_forms(bad):
    with pytest.raises(_sizes.SizeError, match="min_free_memory: .*"):
        _sizes.to_mib(bad, "min_free_memory")


# ---- properties ----

gpu_states = st.lists(
    st.builds(lambda used, util, ecc, procs: (used, util, ecc, procs),
              st.integers(0, TOTAL), st.integers(0, 100), st.sampled_from([0, 0, 0, 1]),
              st.lists(st.integers(100, 99999), max_size=2)),
    min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(gpu_states, st.integers(1, 4), st.integers(0, TOTAL), st.one_of(st.none(), st.integers(0, 100)),
       st.booleans(), st.booleans(), st.data())
def test_any_selection_satisfies_every_constraint(states, count, min_free, max_util, idle, topo, data):
    devices = [gpu(i, used=u, util=ut, ecc=e, procs=p) for i, (u, ut, e, p) in enumerate(states)]
    exclude = data.draw(st.lists(st.sampled_from([str(d["index"]) for d in devices]), max_size=2, unique=True))
    constraints = dict(count=count, min_free_memory_mib=min_free, max_utilization=max_util, require_idle=idle,
                       exclude=exclude, prefer_topology=topo)
    topology = h100_topology(len(devices)) if topo else None
    eligible = [d for d in devices if d["memory_free_mib"] >= min_free
                and (max_util is None or d["utilization_gpu"] <= max_util)
                and not (idle and d["processes"]) and not d["ecc_uncorrected_volatile"]
                and str(d["index"]) not in exclude]
    try:
        result = pick(devices, topology, **constraints)
    except gs.SelectionError:
        assert len(eligible) < count
        return
    assert len(result["gpus"]) == count == len(set(result["gpus"]))
    assert set(result["gpus"]) <= set(d["index"] for d in eligible)
    assert pick(devices, topology, **constraints) == result  # deterministic
    if not topo:
        best = sorted(eligible, key=gs.rank_key)[:count]
        assert result["gpus"] == [d["index"] for d in best]
