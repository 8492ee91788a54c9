"""The vllm role's first check: each instance and the role settings through vllm_serve's own input checks."""

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import given, settings as hsettings, strategies as st

from ansible_collections.inferops.vllm.plugins.filter.instance_problems import instance_problems

GOOD = {"name": "chat", "model": "/models/tiny", "port": 8000}
SETTINGS = {"vllm_image": "vllm/vllm-openai:v0.33.0", "vllm_log_dir": "/var/log/vllm", "vllm_api_keys": ["k1"]}


def test_good_instances_and_settings_have_no_problem():
    instances = [GOOD, dict(GOOD, name="code", port=8001, gpus=[0, "GPU-1234abcd"], env={"VLLM_LOGGING_LEVEL": "INFO"},
                            extra_args={"max-num-seqs": 8}, image="inferops/vllm-cpu:0.32.0", gpu_count=2)]
    assert instance_problems(instances, SETTINGS) == []


@pytest.mark.parametrize("change, problem", [
    ({"name": "x/../victim"}, "vllm_instances[0].name: 'x/../victim' is not an instance name"),
    ({"model": "m\nExecStartPre=/bin/sh"}, "vllm_instances[0].model: the value has a control character ('\\n'"),
    ({"port": 0}, "vllm_instances[0].port: 0 is not a TCP port"),
    ({"image": "--privileged"}, "vllm_instances[0].image: '--privileged' is not an image reference"),
    ({"gpus": [0, 0]}, "vllm_instances[0].gpus: GPU 0 is listed twice"),
    ({"env": {"LD PRELOAD": "x"}}, "vllm_instances[0].env: 'LD PRELOAD' is not an environment variable name"),
    ({"extra_args": {"tokenizer": ["x", "--api-key", "SECRET-123"]}},
     "vllm_instances[0].extra_args.tokenizer: a value starting with '--api-key' would be read as a flag"),
    ({"gpu_memory_utilization": float("nan")}, "vllm_instances[0].gpu_memory_utilization: nan is not a finite"),
    ({"pipeline_parallel_size": 0}, "vllm_instances[0].pipeline_parallel_size: 0 is out of range"),
    ({"gpu_count": 0}, "vllm_instances[0].gpu_count: 0 is out of range"),
    ({"api_keys": ["good", "bad\r\nX-Injected: 1"]}, "vllm_instances[0].api_keys[1]: the value has a control"),
])
def test_each_bad_instance_value_is_named_with_its_index(change, problem):
    problems = instance_problems([dict(GOOD, **change)], SETTINGS)
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    assert "SECRET-123" not in problems[0] and "X-Injected" not in problems[0]


@pytest.mark.parametrize("name, value, problem", [
    ("vllm_log_dir", "/var/log/vllm\n/etc/shadow {", "vllm_log_dir: the value has a control character"),
    ("vllm_image", "vllm openai", "vllm_image: 'vllm openai' is not an image reference"),
    ("vllm_api_keys", ["ok", "k\n"], "vllm_api_keys[1]: the value has a control character"),
])
def test_bad_role_settings_are_named_once_whatever_the_number_of_instances(name, value, problem):
    problems = instance_problems([GOOD, dict(GOOD, name="b", port=8001)], dict(SETTINGS, **{name: value}))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_every_bad_instance_is_reported_not_only_the_first():
    problems = instance_problems([dict(GOOD, port=-1), GOOD, dict(GOOD, name="..")], {})
    assert [p.split(":")[0] for p in problems] == ["vllm_instances[0].port", "vllm_instances[2].name"]


def test_what_is_not_a_list_of_instances_is_a_filter_error():
    with pytest.raises(AnsibleFilterError, match="expects the list of instances, got dict"):
        instance_problems({"name": "x"})
    assert instance_problems(["chat"]) == ["vllm_instances[0]: each instance is a dict of settings, got str"]


VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                   st.lists(st.text(max_size=10), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2))


@hsettings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "model", "port", "image", "gpus", "env", "extra_args", "api_keys",
                                        "gpu_memory_utilization", "max_model_len", "gpu_count", "model_path_map"]),
                       VALUES))
def test_any_instance_gives_a_list_of_messages(instance):
    problems = instance_problems([instance], {})
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
