"""package_index's nvml_bindings entry point, run by ansible-playbook on this machine (connection local) with stand-in
interpreters whose `-c 'import pynvml'` succeeds or fails: an interpreter is remembered in package_index_nvml_found
only when this call found or installed the bindings, never on an earlier call's install result."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: What an earlier call that installed the bindings leaves registered
      ansible.builtin.set_fact:
        _package_index_nvml_installed: {changed: true}
    - name: An interpreter without the bindings, installing them not allowed
      ansible.builtin.include_role:
        name: inferops.vllm.package_index
        tasks_from: nvml_bindings
      vars:
        package_index_python: "%(without)s"
        package_index_install_nvml: false
    - name: An interpreter with them
      ansible.builtin.include_role:
        name: inferops.vllm.package_index
        tasks_from: nvml_bindings
      vars:
        package_index_python: "%(with)s"
        package_index_install_nvml: false
    - name: Write down what was remembered
      ansible.builtin.copy:
        content: "{{ package_index_nvml_found | default([]) | to_json }}"
        dest: "%(report)s"
        mode: "0600"
"""


def interpreter(tmp_path, name, rc):
    path = tmp_path / name
    path.write_text("#!/bin/sh\nexit %d\n" % rc)
    path.chmod(0o755)
    return str(path)


def test_only_the_interpreter_that_has_them_is_remembered(tmp_path):
    interpreters = {"without": interpreter(tmp_path, "python-without", 1),
                    "with": interpreter(tmp_path, "python-with", 0), "report": str(tmp_path / "found.json")}
    playbook = tmp_path / "nvml.yml"
    playbook.write_text(PLAYBOOK % interpreters)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "build", "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), str(playbook),
                           "-i", "localhost,", "-e", "ansible_python_interpreter=%s" % sys.executable],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "found.json").read_text()) == [interpreters["with"]]
