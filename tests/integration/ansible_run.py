"""Runs this collection's modules and playbooks against lab hosts through the real ansible CLI."""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INVENTORY = os.path.join(ROOT, "inventories", "lab")


def ansible_env(**extra):
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "build", "collections"),
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               # Molecule exports ANSIBLE_FORCE_COLOR, which wins over NOCOLOR: colour codes would split the
               # messages the tests read.
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_DEPRECATION_WARNINGS="0")
    env.update(extra)
    return env


class ModuleRun(dict):
    """A module's result, with the wall time of the `ansible` call that produced it."""

    elapsed = 0.0

    @property
    def failed(self):
        return bool(self.get("failed"))


def run_module(host, module, args=None, check=False, timeout=120, diff=False):
    """Runs `module` on a lab host, or on the controller itself when host is "localhost"."""
    inventory = ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable] \
        if host == "localhost" else ["-i", INVENTORY]
    cmd = ["ansible", host] + inventory + ["-m", module, "-a", json.dumps(args or {})]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), timeout=timeout, check=False)
    elapsed = time.monotonic() - started
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("`%s` did not print JSON (rc %d):\n%s\n%s" % (" ".join(cmd), proc.returncode,
                                                                           proc.stdout, proc.stderr))
    result = ModuleRun(report["plays"][0]["tasks"][0]["hosts"][host])
    result.elapsed = elapsed
    result.stderr = proc.stderr  # what an action plugin showed while the task ran
    return result
