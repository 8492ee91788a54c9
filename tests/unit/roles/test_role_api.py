"""The roles' API is what their argument_specs declare: callers (playbooks, other roles, Molecule scenarios) reach a
role through declared entry points and public variables, and the vllm role hands back one documented fact."""

import glob
import os
import re

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PRIVATE_VLLM = re.compile(r"(?<![\w./])_vllm_\w+\b(?!\.py)")
COLLECTION_ROLE = re.compile(r"^inferops\.vllm\.(\w+)$")


def _caller_files():
    """YAML and templates outside roles/vllm that could reach into it."""
    paths = []
    for pattern in ("playbooks/**/*.yml", "extensions/**/*.yml", "roles/**/*.yml", "roles/**/*.j2", "docs/**/*.md",
                    "README.md", "inventories/**/*.yml"):
        paths += glob.glob(os.path.join(ROOT, pattern), recursive=True)
    inside = os.path.join(ROOT, "roles", "vllm") + os.sep
    return sorted(p for p in set(paths) if not p.startswith(inside))


def _tasks(items):
    for task in items or []:
        if isinstance(task, dict):
            yield task
            for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
                yield from _tasks(task.get(key))


def _entry_points(role):
    with open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")) as handle:
        return set(yaml.safe_load(handle)["argument_specs"])


def test_no_private_vllm_variable_is_used_outside_the_vllm_role():
    used = {}
    for path in _caller_files():
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                for name in PRIVATE_VLLM.findall(line):
                    used.setdefault(name, []).append("%s:%d" % (os.path.relpath(path, ROOT), number))
    assert not used, "the vllm role's private variables used by callers (use its entry points and vllm_results): %s" % used


def test_every_tasks_from_names_an_entry_point_the_role_declares():
    undeclared = []
    paths = [p for p in glob.glob(os.path.join(ROOT, "**", "*.yml"), recursive=True)
             if not os.path.relpath(p, ROOT).startswith((".venv", "build", "tests"))]
    for path in sorted(paths):
        with open(path, encoding="utf-8") as handle:
            try:
                content = yaml.safe_load(handle)
            except yaml.YAMLError:
                continue
        if not isinstance(content, list):
            continue
        for task in _tasks(content):
            for key in ("ansible.builtin.include_role", "ansible.builtin.import_role"):
                call = task.get(key)
                if not isinstance(call, dict) or "tasks_from" not in call:
                    continue
                role = COLLECTION_ROLE.match(str(call.get("name", "")))
                if role and call["tasks_from"] not in _entry_points(role.group(1)):
                    undeclared.append("%s: %s tasks_from=%s" % (os.path.relpath(path, ROOT), call["name"], call["tasks_from"]))
    assert not undeclared, "entry points missing from the roles' meta/argument_specs.yml: %s" % undeclared


def test_the_vllm_role_sets_no_fact_but_its_documented_result():
    others = []
    for path in sorted(glob.glob(os.path.join(ROOT, "roles", "vllm", "tasks", "*.yml"))):
        with open(path) as handle:
            for task in _tasks(yaml.safe_load(handle)):
                facts = task.get("ansible.builtin.set_fact")
                if facts is not None and set(facts) != {"vllm_results"}:
                    others.append("%s: %s" % (os.path.basename(path), sorted(facts)))
    assert not others, others
    with open(os.path.join(ROOT, "roles", "vllm", "meta", "argument_specs.yml")) as handle:
        described = " ".join(yaml.safe_load(handle)["argument_specs"]["main"]["description"])
    for field in ("gpus", "backend", "changed", "served_model", "instance", "health", "ready"):
        assert "C(%s)" % field in described, "vllm_results' field %s is not documented in the main entry point" % field
