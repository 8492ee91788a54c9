"""The vllm role's per-instance options are vllm_serve's (tools/role_instance_spec.py), and the role passes none the
spec does not declare."""

import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLE = os.path.join(ROOT, "roles", "vllm")


def _instance_options():
    with open(os.path.join(ROLE, "meta", "argument_specs.yml")) as handle:
        spec = yaml.safe_load(handle)
    return spec["argument_specs"]["main"]["options"]["vllm_instances"]["options"]


def _serve_tasks(tasks):
    """Every task of a task list (blocks included) that runs vllm_serve."""
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        if "inferops.vllm.vllm_serve" in task or "vllm_serve" in task:
            yield task
        for key in ("block", "rescue", "always"):
            yield from _serve_tasks(task.get(key))


def test_instance_options_match_vllm_serve():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "role_instance_spec.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_instance_key_the_role_passes_to_vllm_serve_is_declared():
    path = os.path.join(ROLE, "tasks", "instance.yml")
    with open(path) as handle:
        text = handle.read()
    tasks = list(_serve_tasks(yaml.safe_load(text)))
    values = [str(v) for t in tasks for v in (t.get("inferops.vllm.vllm_serve") or t.get("vllm_serve") or {}).values()]
    # Should the task not be found (its form changed), every _vllm_i key of the file is held to the spec instead.
    keys = set(re.findall(r"_vllm_i\.(\w+)", "\n".join(values) if values else text))
    assert keys, "no _vllm_i key passed to vllm_serve in %s" % path
    missing = sorted(keys - set(_instance_options()))
    assert not missing, "instance.yml passes %s to vllm_serve, which vllm_instances does not declare" % missing


def test_every_declared_instance_option_reaches_vllm_serve_or_the_role():
    """An option the spec accepts but the role drops would be silently ignored."""
    with open(os.path.join(ROLE, "tasks", "instance.yml")) as handle:
        read = set(re.findall(r"_vllm_i\.(\w+)", handle.read()))
    with open(os.path.join(ROLE, "tasks", "assignments.yml")) as handle:
        ledger = handle.read()
    with open(os.path.join(ROLE, "tasks", "watchdog.yml")) as handle:
        watchdog = handle.read()
    ignored = sorted(name for name in _instance_options()
                     if name not in read and name not in ledger and "instance.%s" % name not in watchdog)
    assert not ignored, "vllm_instances declares %s, which the role never reads" % ignored
