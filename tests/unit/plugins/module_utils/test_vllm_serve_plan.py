"""vllm_serve's plan as a table: every state x every actual instance x files changed, for both backend kinds.

The expected actions were read off the module as it was before plans (one if/elif chain per backend); the expected
`interrupts` comes from that module's own formulas, which name no action, so both are checked against an oracle
that is not the plan's code."""

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_serve_plan as plan

STATES = ("started", "stopped", "restarted", "present", "absent")
# name: (exists, running, current)
ACTUAL = {
    "missing": (False, False, False),
    "running current": (True, True, True),
    "stopped current": (True, False, True),
    "running stale": (True, True, False),
    "stopped stale": (True, False, False),
}

# (state, actual): (docker, docker with files changed, unit, unit with files changed)
C, S, R, X, RM = "create", "start", "restart", "stop", "remove"
EXPECTED = {
    ("started", "missing"): ([C, S], [C, S], [C, S], [C, S]),
    ("stopped", "missing"): ([C], [C], [C], [C]),
    ("restarted", "missing"): ([C, S], [C, S], [C, R], [C, R]),
    ("present", "missing"): ([C, S], [C, S], [C, S], [C, S]),
    ("absent", "missing"): ([], [], [], []),

    ("started", "running current"): ([], [R], [], [R]),
    ("stopped", "running current"): ([X], [X], [X], [X]),
    ("restarted", "running current"): ([R], [R], [R], [R]),
    ("present", "running current"): ([], [R], [], [R]),
    ("absent", "running current"): ([RM], [RM], [RM], [RM]),

    ("started", "stopped current"): ([S], [S], [S], [S]),
    ("stopped", "stopped current"): ([], [], [], []),
    ("restarted", "stopped current"): ([R], [R], [R], [R]),
    ("present", "stopped current"): ([], [], [], []),
    ("absent", "stopped current"): ([RM], [RM], [RM], [RM]),

    ("started", "running stale"): ([RM, C, S], [RM, C, S], [C, R], [C, R]),
    ("stopped", "running stale"): ([RM, C], [RM, C], [C, X], [C, X]),
    ("restarted", "running stale"): ([RM, C, S], [RM, C, S], [C, R], [C, R]),
    ("present", "running stale"): ([RM, C, S], [RM, C, S], [C, R], [C, R]),
    ("absent", "running stale"): ([RM], [RM], [RM], [RM]),

    ("started", "stopped stale"): ([RM, C, S], [RM, C, S], [C, S], [C, S]),
    ("stopped", "stopped stale"): ([RM, C], [RM, C], [C], [C]),
    ("restarted", "stopped stale"): ([RM, C, S], [RM, C, S], [C, R], [C, R]),
    ("present", "stopped stale"): ([RM, C, S], [RM, C, S], [C, S], [C, S]),
    ("absent", "stopped stale"): ([RM], [RM], [RM], [RM]),
}


def test_the_table_covers_every_state_and_actual_instance():
    assert set(EXPECTED) == set((state, actual) for state in STATES for actual in ACTUAL)


def interrupts_before_plans(state, exists, running, current, files_changed):
    """The module's formulas before plans: docker's and the units' read the same for these inputs."""
    if state == "absent":
        return running
    stale = exists and not current
    return running and (stale or state in ("stopped", "restarted") or files_changed)


@pytest.mark.parametrize("kind", ["docker", "unit"])
@pytest.mark.parametrize("files_changed", [False, True])
@pytest.mark.parametrize("state, actual", sorted(EXPECTED))
def test_the_plan_and_whether_it_interrupts(kind, files_changed, state, actual):
    exists, running, current = ACTUAL[actual]
    docker, docker_files, unit, unit_files = EXPECTED[(state, actual)]
    expected = {("docker", False): docker, ("docker", True): docker_files,
                ("unit", False): unit, ("unit", True): unit_files}[(kind, files_changed)]
    actions = plan.lifecycle(kind, state, exists, running, current, files_changed)
    assert actions == expected
    assert plan.interrupts(actions, running) is interrupts_before_plans(state, exists, running, current,
                                                                        files_changed)
    assert plan.starts(actions) is (S in expected or R in expected)
    assert plan.changes(actions) is bool(expected)


@pytest.mark.parametrize("actions, pull, present, expected", [
    ([C, S], "missing", False, ["pull", C, S]),
    ([RM, C, S], "missing", False, ["pull", RM, C, S]),
    ([C, S], "missing", True, [C, S]),
    ([C, S], "always", True, ["pull", C, S]),
    ([], "always", True, ["pull"]),
    ([R], "missing", True, [R]),
    ([C], "never", True, [C]),
])
def test_the_image_is_pulled_when_missing_for_a_new_container_or_always(actions, pull, present, expected):
    assert plan.with_pull(actions, pull, present, "vllm/vllm-openai:v0.33.0") == expected


def test_a_missing_image_with_pull_never_is_refused_naming_it():
    with pytest.raises(plan.Refused, match=r"^image vllm/vllm-openai:v0\.33\.0 is not on this host and pull is never$"):
        plan.with_pull([C, S], "never", False, "vllm/vllm-openai:v0.33.0")


def test_pulling_alone_is_no_change():
    assert plan.changes(["pull"]) is False
    assert plan.changes(["pull", C]) is True


def test_changed_fields_name_what_differs_in_either_summary():
    before = {"image": "a", "args": ["x"], "gpus": ["0"], "config_hash": "1"}
    after = {"image": "a", "args": ["y"], "gpus": ["0"], "env": {}, "config_hash": "2"}
    assert plan.changed_fields(before, after) == ["args", "config_hash", "env"]
    assert plan.changed_fields(after, dict(after)) == []
    assert plan.changed_fields({}, {"image": "a"}) == ["image"]


def test_unit_fields_are_its_directives_and_its_hash():
    content = ("# Managed by inferops.vllm.vllm_serve; edit the task, not this file. config-hash: abc123\n"
               "[Unit]\nDescription=x\n\n[Service]\nExecStart=/usr/bin/docker run a=b\nTimeoutStartSec=300\n")
    fields = plan.unit_fields(content)
    assert fields == {"config_hash": "abc123", "Description": ["x"], "ExecStart": ["/usr/bin/docker run a=b"],
                      "TimeoutStartSec": ["300"]}
    changed = plan.unit_fields(content.replace("300", "600").replace("abc123", "def456"))
    assert plan.changed_fields(fields, changed) == ["TimeoutStartSec", "config_hash"]
    assert plan.unit_fields("") == {} and plan.unit_fields(None) == {}
