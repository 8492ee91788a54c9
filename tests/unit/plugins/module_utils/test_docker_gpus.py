import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _docker_gpus as dg
from docker_cli_gpus import parse_gpus_value

UUID = "GPU-857e9af9-ea7a-d81c-6d34-dc36cc629378"
MIG = "MIG-c499bdaa-75f3-a380-8d34-076b172fe964"


def test_argv_carries_its_own_quotes():
    assert dg.gpus_argv([4, 5]) == '"device=4,5"'


def test_docker_reads_our_argv_as_exactly_the_ids():
    assert parse_gpus_value(dg.gpus_argv([4, 5])) == (0, ["4", "5"])


def test_unquoted_form_is_what_docker_refuses():
    # The seed 004 incident, reproduced by the oracle: the value without its quotes.
    with pytest.raises(ValueError, match="cannot set both Count and DeviceIDs"):
        parse_gpus_value("device=4,5")


def test_shell_form_is_single_quoted_argv():
    assert dg.gpus_shell(["4", "5"]) == "'\"device=4,5\"'"


def test_uuids_and_mig_uuids_are_accepted():
    assert dg.gpus_argv([UUID, MIG]) == '"device=%s,%s"' % (UUID, MIG)


def test_device_requests_need_no_quoting():
    assert dg.device_requests([4, "5"]) == [{"driver": "nvidia", "device_ids": ["4", "5"], "capabilities": [["gpu"]]}]


@pytest.mark.parametrize("bad", ["4,5", '4"', "gpu0", "", " ", "GPU-nothex", True, "-1", "1 2"])
def test_malformed_ids_are_refused_with_the_id_named(bad):
    with pytest.raises(dg.GpuIdError) as err:
        dg.gpus_argv([bad])
    assert repr(bad) in str(err.value)


def test_empty_list_is_refused():
    with pytest.raises(dg.GpuIdError, match="no GPU IDs"):
        dg.gpus_argv([])


gpu_ids = st.one_of(
    st.integers(min_value=0, max_value=999).map(str),
    st.uuids().map(lambda u: "GPU-%s" % u),
    st.uuids().map(lambda u: "MIG-%s" % u),
)


@given(st.lists(gpu_ids, min_size=1, max_size=16))
def test_any_valid_ids_round_trip_through_dockers_parser(ids):
    assert parse_gpus_value(dg.gpus_argv(ids)) == (0, ids)


@given(st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=4))
def test_no_id_can_break_the_quoting(ids):
    """Any input either is refused, or reaches docker as exactly the IDs given."""
    try:
        value = dg.gpus_argv(ids)
    except dg.GpuIdError:
        return
    assert parse_gpus_value(value) == (0, [i.strip() for i in ids])
