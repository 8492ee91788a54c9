"""gpu_select on fleet hosts of 8 and 16 GPUs (synthetic observations): GPUs lost, unhealthy, under MIG (or pending
it), not reporting utilization or not listing their processes, mixed with healthy ones of any load.

Properties: every GPU chosen passes every constraint by an independent reading of the rules; the answer depends
only on the GPUs, not on the order they were listed in, and is the same every time; ties go to the higher index.
"""

import copy

from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_gpu_select import TOTAL, gpu, h100_topology

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_select as gs

STATES = ["ok"] * 16 + ["lost", "ecc", "pages", "rows", "failed", "mig", "pending", "no_util", "no_procs"]


def device(index, state, used, util, procs):
    d = gpu(index, used=used, util=util, procs=procs)
    if state == "lost":
        return {"index": index, "error": "NVML error 15: GPU is lost"}
    d.update({"ok": {}, "ecc": {"ecc_uncorrected_volatile": 1}, "pages": {"retired_pages_pending": True},
              "rows": {"remapped_rows_pending": True}, "failed": {"remapped_rows_failure": True},
              "mig": {"mig_enabled": True, "utilization_gpu": None}, "pending": {"mig_enabled_pending": True},
              "no_util": {"utilization_gpu": None},
              "no_procs": {"processes": [], "processes_error": "NVML error 4: Insufficient Permissions"}}[state])
    return d


def fits(d, c):
    """The rules, read independently of _gpu_select."""
    if "error" in d or d.get("mig_enabled") or d.get("mig_enabled_pending"):
        return False
    if str(d["index"]) in c["exclude"] or d["memory_free_mib"] < c["min_free_memory_mib"]:
        return False
    if c["skip_ecc_errors"] and (d["ecc_uncorrected_volatile"] or d.get("retired_pages_pending")
                                 or d.get("remapped_rows_pending") or d.get("remapped_rows_failure")):
        return False
    if c["max_utilization"] is not None and (d["utilization_gpu"] is None or d["utilization_gpu"] > c["max_utilization"]):
        return False
    return not (c["require_idle"] and (d["processes"] or d.get("processes_error")))


@st.composite
def fleets(draw):
    n = draw(st.sampled_from([8, 16]))
    devices = [device(i, draw(st.sampled_from(STATES)), draw(st.sampled_from([0, 0, 0, 500, 20000, 60000, TOTAL])),
                      draw(st.sampled_from([0, 0, 5, 50, 100])), draw(st.sampled_from([[], [], [], [4242]])))
               for i in range(n)]
    constraints = dict(count=draw(st.sampled_from([1, 2, 4, 8])),
                       min_free_memory_mib=draw(st.sampled_from([0, 0, 20000, 40000])),
                       max_utilization=draw(st.sampled_from([None, None, 50])),
                       require_idle=draw(st.sampled_from([False, False, True])),
                       skip_ecc_errors=draw(st.sampled_from([True, True, False])),
                       exclude=draw(st.lists(st.sampled_from([str(i) for i in range(n)]), max_size=2, unique=True)),
                       prefer_topology=draw(st.booleans()))
    order = draw(st.permutations(range(n)))
    return devices, constraints, order, h100_topology(n) if constraints["prefer_topology"] else None


def select(devices, constraints, topology):
    obs = {"backend": "nvml", "devices": copy.deepcopy(devices), "topology": topology, "processes_visible": True}
    return gs.select(obs, gs.Constraints(**constraints))


@settings(max_examples=150, deadline=None)
@given(fleets())
def test_property_fleet_selection_fits_every_rule_and_depends_only_on_the_gpus(fleet):
    devices, constraints, order, topology = fleet
    fitting = [d for d in devices if fits(d, constraints)]
    try:
        result = select(devices, constraints, topology)
    except gs.SelectionError as exc:
        event("none fit")
        assert len(fitting) < constraints["count"], str(exc)
        assert all("GPU %d: " % d["index"] in str(exc) for d in devices)
        return
    event("selected %d of %d" % (constraints["count"], len(devices)))
    assert len(set(result["gpus"])) == constraints["count"]
    assert set(result["gpus"]) <= set(d["index"] for d in fitting)
    assert select(devices, constraints, topology) == result
    assert select([devices[i] for i in order], constraints, topology) == result
    if not constraints["prefer_topology"] or constraints["count"] == 1:
        # Most free memory, then the lowest known utilization (unknown last), then the higher index.
        best = sorted(fitting, key=lambda d: (-d["memory_free_mib"], 101 if d["utilization_gpu"] is None
                                              else d["utilization_gpu"], -d["index"]))
        assert result["gpus"] == [d["index"] for d in best[:constraints["count"]]]
