"""oom_recover.yml's step-down ladder: each step, the floors, an exhausted ladder, and bad values named."""

import ast

import jinja2
import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import given, settings as hsettings, strategies as st

from ansible_collections.inferops.vllm.plugins.filter.oom_ladder import oom_ladder

U, S, M = "gpu_memory_utilization", "max_num_seqs", "max_model_len"

# The Jinja oom_instance.yml computed the ladder with before this filter, verbatim but for `cur`, which the
# playbook combined from the instance and its overrides: the filter must give what it gave for every good input.
FORMER_JINJA = """
{%- set out = [] -%}
{%- set util = cur.gpu_memory_utilization | default(0.9) | float -%}
{%- set seqs = cur.max_num_seqs | default(start_max_num_seqs | default(256)) | int -%}
{%- set mlen = cur.max_model_len | default(start_max_model_len | default(32768)) | int -%}
{%- set floor_u = floor_gpu_memory_utilization | default(0.5) | float -%}
{%- set step_u = step_gpu_memory_utilization | default(0.1) | float -%}
{%- set state = namespace(u=util, s=seqs, m=mlen) -%}
{%- for _ in range(20) if state.u - step_u >= floor_u - 0.0001 -%}
{%- set state.u = ((state.u - step_u) * 100) | round / 100 -%}
{%- set _ = out.append({'gpu_memory_utilization': state.u}) -%}
{%- endfor -%}
{%- for _ in range(20) if (state.s // 2) >= (floor_max_num_seqs | default(16) | int) -%}
{%- set state.s = state.s // 2 -%}
{%- set _ = out.append({'gpu_memory_utilization': state.u, 'max_num_seqs': state.s}) -%}
{%- endfor -%}
{%- for _ in range(20) if (state.m // 2) >= (floor_max_model_len | default(2048) | int) -%}
{%- set state.m = state.m // 2 -%}
{%- set _ = out.append({'gpu_memory_utilization': state.u, 'max_num_seqs': state.s, 'max_model_len': state.m}) -%}
{%- endfor -%}
{{ out }}
"""


def former(cur, **runbook_vars):
    return ast.literal_eval(jinja2.Environment().from_string(FORMER_JINJA).render(cur=cur, **runbook_vars))


def test_defaults_step_each_setting_in_the_seeds_order_down_to_its_floor():
    ladder = oom_ladder({"name": "chat"})
    assert ladder == [
        {U: 0.8}, {U: 0.7}, {U: 0.6}, {U: 0.5},
        {U: 0.5, S: 128}, {U: 0.5, S: 64}, {U: 0.5, S: 32}, {U: 0.5, S: 16},
        {U: 0.5, S: 16, M: 16384}, {U: 0.5, S: 16, M: 8192}, {U: 0.5, S: 16, M: 4096}, {U: 0.5, S: 16, M: 2048},
    ]
    assert ladder == former({"name": "chat"})


@pytest.mark.parametrize("instance, runbook_vars, ladder", [
    # The lab's fault test: 0.15 must be reached exactly, so 0.2 - 0.05 is rounded and not 0.15000000000000002.
    ({U: 0.3, S: 4, M: 1024}, {"floor_gpu_memory_utilization": 0.1, "step_gpu_memory_utilization": 0.05},
     [{U: 0.25}, {U: 0.2}, {U: 0.15}, {U: 0.1}]),
    # Settings the instance has are its start; floors met exactly are tried, a half below the floor is not.
    ({U: 0.6, S: 40, M: 5000}, {"floor_max_num_seqs": 10, "floor_max_model_len": 2500},
     [{U: 0.5}, {U: 0.5, S: 20}, {U: 0.5, S: 10}, {U: 0.5, S: 10, M: 2500}]),
    # Below the floor already: that stage takes no step, the later ones keep the value as it is.
    ({U: 0.45, S: 32, M: 2048}, {}, [{U: 0.45, S: 16}]),
    # start_* apply only where the instance does not set the value.
    ({U: 0.5}, {"start_max_num_seqs": 64, "start_max_model_len": 8192},
     [{U: 0.5, S: 32}, {U: 0.5, S: 16}, {U: 0.5, S: 16, M: 4096}, {U: 0.5, S: 16, M: 2048}]),
    # Odd values halve down (floor division), as before.
    ({U: 0.5, S: 33, M: 2048}, {}, [{U: 0.5, S: 16}]),
    # Numbers given with -e are text.
    ({U: "0.6", S: "32", M: "2048"}, {"floor_gpu_memory_utilization": "0.5", "floor_max_num_seqs": "16"},
     [{U: 0.5}, {U: 0.5, S: 16}]),
])
def test_each_step_and_floor(instance, runbook_vars, ladder):
    assert oom_ladder(instance, **runbook_vars) == ladder
    assert former(instance, **runbook_vars) == ladder


def test_a_ladder_at_every_floor_is_exhausted_and_empty():
    assert oom_ladder({U: 0.5, S: 16, M: 2048}) == []
    assert oom_ladder({U: 0.5, S: 31, M: 4095}) == []


def test_each_stage_takes_twenty_steps_at_most():
    ladder = oom_ladder({U: 1.0, S: 1, M: 1}, floor_gpu_memory_utilization=0.01, step_gpu_memory_utilization=0.01)
    assert len(ladder) == 20 and ladder[-1] == {U: 0.8}
    ladder = oom_ladder({U: 0.5, S: 2 ** 30, M: 1}, floor_max_num_seqs=1)
    assert len(ladder) == 20 and ladder[-1] == {U: 0.5, S: 2 ** 10}


def test_each_step_is_the_whole_setting_and_a_new_dict():
    ladder = oom_ladder({U: 0.6, S: 32, M: 4096})
    assert ladder == [{U: 0.5}, {U: 0.5, S: 16}, {U: 0.5, S: 16, M: 2048}]
    ladder[0]["x"] = 1
    assert "x" not in ladder[1]


@pytest.mark.parametrize("instance, runbook_vars, message", [
    ({"name": "chat", U: "lots"}, {}, "oom_ladder: chat.gpu_memory_utilization: 'lots' is not a number"),
    ({"name": "chat", U: float("nan")}, {}, "oom_ladder: chat.gpu_memory_utilization: nan is not a finite number"),
    ({"name": "chat", U: "inf"}, {}, "oom_ladder: chat.gpu_memory_utilization: inf is not a finite number"),
    ({"name": "chat", U: 1.5}, {}, "oom_ladder: chat.gpu_memory_utilization: 1.5 is out of range"),
    ({"name": "chat", U: 0}, {}, "oom_ladder: chat.gpu_memory_utilization: 0.0 is out of range"),
    ({"name": "chat", U: True}, {}, "oom_ladder: chat.gpu_memory_utilization: True is true or false"),
    ({"name": "chat", S: -8}, {}, "oom_ladder: chat.max_num_seqs: -8 is below 1"),
    ({"name": "chat", S: 12.5}, {}, "oom_ladder: chat.max_num_seqs: 12.5 is not a whole number"),
    ({"name": "chat", M: [4096]}, {}, "oom_ladder: chat.max_model_len: [4096] is not a number (list)"),
    ({"name": "chat", M: "4096\nExecStartPre=x"}, {}, "oom_ladder: chat.max_model_len: '4096\\nExecStartPre=x' is not a number"),
    ({U: "x"}, {}, "oom_ladder: instance.gpu_memory_utilization: 'x' is not a number"),
    ({}, {"floor_gpu_memory_utilization": -0.5}, "oom_ladder: floor_gpu_memory_utilization: -0.5 is out of range"),
    ({}, {"floor_gpu_memory_utilization": "nan"}, "oom_ladder: floor_gpu_memory_utilization: nan is not a finite"),
    ({}, {"step_gpu_memory_utilization": 0}, "oom_ladder: step_gpu_memory_utilization: 0.0 is out of range"),
    ({}, {"step_gpu_memory_utilization": -0.1}, "oom_ladder: step_gpu_memory_utilization: -0.1 is out of range"),
    ({}, {"step_gpu_memory_utilization": 1}, "oom_ladder: step_gpu_memory_utilization: 1.0 is out of range (above 0 and below 1)"),
    ({}, {"floor_max_num_seqs": 0}, "oom_ladder: floor_max_num_seqs: 0 is below 1"),
    ({}, {"floor_max_model_len": -2048}, "oom_ladder: floor_max_model_len: -2048 is below 1"),
    ({}, {"floor_max_model_len": None}, "oom_ladder: floor_max_model_len: None is not a number (NoneType)"),
    ({}, {"start_max_num_seqs": "many"}, "oom_ladder: start_max_num_seqs: 'many' is not a number"),
    ({}, {"start_max_model_len": 0}, "oom_ladder: start_max_model_len: 0 is below 1"),
])
def test_a_bad_value_is_an_error_naming_its_field(instance, runbook_vars, message):
    with pytest.raises(AnsibleFilterError) as exc:
        oom_ladder(instance, **runbook_vars)
    assert str(exc.value).startswith(message), str(exc.value)


def test_a_setting_of_null_is_one_the_instance_does_not_set():
    assert oom_ladder({U: None, S: None, M: None}) == oom_ladder({})


def test_what_is_not_an_instance_is_an_error():
    with pytest.raises(AnsibleFilterError, match="expects the instance's settings"):
        oom_ladder(["chat"])


FRACTIONS = st.floats(min_value=0.01, max_value=1.0)


@hsettings(max_examples=500, deadline=None)
@given(util=FRACTIONS, seqs=st.integers(1, 4096), mlen=st.integers(1, 2 ** 20), floor_u=FRACTIONS,
       step_u=st.floats(min_value=0.001, max_value=0.99), floor_s=st.integers(1, 512), floor_m=st.integers(1, 65536),
       absent=st.sets(st.sampled_from([U, S, M])))
def test_the_filter_gives_what_the_former_jinja_gave(util, seqs, mlen, floor_u, step_u, floor_s, floor_m, absent):
    instance = {key: value for key, value in ((U, util), (S, seqs), (M, mlen)) if key not in absent}
    runbook_vars = {"floor_gpu_memory_utilization": floor_u, "step_gpu_memory_utilization": step_u,
                    "floor_max_num_seqs": floor_s, "floor_max_model_len": floor_m}
    assert oom_ladder(instance, **runbook_vars) == former(instance, **runbook_vars)


def test_a_hostile_name_or_a_long_value_does_not_reach_the_message_whole():
    with pytest.raises(AnsibleFilterError) as exc:
        oom_ladder({"name": "chat\nINJECTED", S: "x" * 5000})
    message = str(exc.value)
    assert message.startswith("oom_ladder: instance.max_num_seqs: 'xxx") and "INJECTED" not in message
    assert len(message) < 200
