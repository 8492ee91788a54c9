"""Check mode on a host: a read-only command skipped in check mode leaves its result empty, and every task that
reads it then fails or guesses (deploy.yml --check once died parsing the skipped `nvidia-ctk --dry-run`)."""

import glob
import os

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
COMMANDS = ("ansible.builtin.command", "ansible.builtin.shell")


def tasks(items):
    for task in items or []:
        if not isinstance(task, dict):
            continue
        yield task
        for key in ("block", "rescue", "always"):
            yield from tasks(task.get(key))


def task_files():
    paths = glob.glob(os.path.join(ROOT, "roles", "*", "tasks", "*.yml"))
    paths += glob.glob(os.path.join(ROOT, "roles", "*", "handlers", "*.yml"))
    # deploy.yml's own tasks; the runbooks act on running instances and are not run in check mode.
    paths.append(os.path.join(ROOT, "playbooks", "deploy.yml"))
    return sorted(paths)


def test_every_read_only_command_also_runs_in_check_mode():
    offenders = []
    for path in task_files():
        with open(path) as handle:
            content = yaml.safe_load(handle)
        plays = content if isinstance(content, list) else []
        items = []
        for entry in plays:
            if isinstance(entry, dict) and ("hosts" in entry or "import_playbook" in entry):
                for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                    items += entry.get(key) or []
            else:
                items.append(entry)
        for task in tasks(items):
            skipped_on_purpose = "ansible_check_mode" in str(task.get("when", ""))
            if any(c in task for c in COMMANDS) and task.get("changed_when") is False \
                    and "check_mode" not in task and not skipped_on_purpose:
                offenders.append("%s: %s" % (os.path.relpath(path, ROOT), task.get("name")))
    assert not offenders, "read-only commands without check_mode: false:\n  " + "\n  ".join(offenders)


def test_the_test_sees_the_commands_it_checks():
    # Guards the walk above: it must find the read-only commands the roles are known to have.
    found = 0
    for path in task_files():
        with open(path) as handle:
            found += handle.read().count("check_mode: false")
    assert found >= 10
