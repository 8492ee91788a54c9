"""What other programs left on the host, read as whatever shape it has: a container of our name that someone else
made (labels, state), and a process environment in /proc."""

import json

from hypothesis import given, settings, strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _instance_procs
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_docker import DockerInstance
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_spec import INSTANCE_ENV, LABEL_PREFIX

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=10)


class Container(object):
    def __init__(self, labels, attrs):
        self.labels = labels
        self.attrs = attrs


def test_a_summary_label_nested_past_the_recursion_limit_reads_as_no_summary():
    container = Container({LABEL_PREFIX + "summary": "[" * 100000 + "]" * 100000}, {})
    assert DockerInstance.current_summary(container) == {}


def test_a_state_that_is_not_an_object_is_not_running():
    assert DockerInstance.is_running(Container({}, {"State": ["running"]})) is False
    assert DockerInstance.is_running(Container({}, {"State": {"Running": "yes"}})) is False
    assert DockerInstance.is_running(Container({}, {"State": {"Running": True}})) is True


@settings(max_examples=300, deadline=None)
@given(labels=st.one_of(JSON, st.dictionaries(st.sampled_from([LABEL_PREFIX + "summary", LABEL_PREFIX + "config-hash"]),
                                              st.one_of(JSON, st.text(max_size=30).map(json.dumps)))),
       attrs=st.one_of(JSON, st.fixed_dictionaries({"State": JSON})))
def test_any_labels_and_state_read_as_a_hash_a_summary_and_a_running_flag(labels, attrs):
    container = Container(labels, attrs)
    assert DockerInstance.current_hash(container) is None or isinstance(DockerInstance.current_hash(container), str)
    assert isinstance(DockerInstance.current_summary(container), dict)
    assert DockerInstance.is_running(container) in (True, False)


@settings(max_examples=300, deadline=None)
@given(environ=st.binary(max_size=300), name=st.text(max_size=10))
def test_any_process_environment_gives_a_name_or_none(tmp_path_factory, environ, name):
    proc = tmp_path_factory.mktemp("proc")
    (proc / "42").mkdir()
    marker = (INSTANCE_ENV + "=").encode() + name.encode("utf-8", "surrogatepass")
    (proc / "42" / "environ").write_bytes(environ + b"\0" + marker)
    found = _instance_procs.instance_of(42, proc=str(proc))
    assert found is None or isinstance(found, str)
