"""The runbooks' shared preamble (playbooks/runbooks/tasks/preamble.yml), run by the real ansible-playbook against
localhost: it refuses what the steps after it would misread, and lets every valid call through. Only the preamble
runs: nothing on this machine is touched."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
RUNBOOKS = os.path.join(ROOT, "playbooks", "runbooks")
PLAY = """
- name: The runbook's preamble alone
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    vllm_instances: [{name: chat, model: m, port: 8000}, {name: code, model: m, port: 8001}]
  tasks:
    - name: Preamble
      ansible.builtin.import_tasks: %s
      vars:
        _runbook: %s
"""


def preamble(tmp_path, runbook, *extra):
    # The preamble reads <runbook>.meta.yml next to the playbook that imports it.
    shutil.copy(os.path.join(RUNBOOKS, runbook + ".meta.yml"), tmp_path)
    play = tmp_path / "play.yml"
    play.write_text(PLAY % (os.path.join(RUNBOOKS, "tasks", "preamble.yml"), runbook))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", str(play)]
    return subprocess.run(command + list(extra), capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize("runbook, extra", [
    ("restart", []),  # every instance: the default of restart.yml
    ("restart", ["-e", '{"instances": ["code"]}']),
    ("reset", ["-e", '{"instances": ["chat", "code"]}']),
])
def test_valid_calls_pass(tmp_path, runbook, extra):
    result = preamble(tmp_path, runbook, *extra)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("runbook, extra, said", [
    ("restart", ["-e", "instances=chat"], 'give a list of instance names, such as -e \'{"instances": ["chat"]}\''),
    ("restart", ["-e", '{"instances": ["chat", "nope"]}'], "instances ['nope'] are not among this host's"),
    ("reset", [], "instances"),
])
def test_what_the_steps_would_misread_is_refused_with_the_fix(tmp_path, runbook, extra, said):
    result = preamble(tmp_path, runbook, *extra)
    assert result.returncode != 0
    assert said in result.stdout, result.stdout
