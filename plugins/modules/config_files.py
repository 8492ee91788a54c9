#!/usr/bin/python
# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: config_files
short_description: Write a service's configuration files, directories and leftovers in one pass, each checked first
version_added: 0.3.0
author: inferops maintainers (@inferops)
description:
  - Brings a set of files to the given content, mode and owner, makes a set of directories exist with the given mode
    and owner, and removes leftover files; each only where it differs.
  - One module run for the whole set. On the idempotent path each M(ansible.builtin.template) costs two module runs
    on the host; a role that writes a dozen files pays that a dozen times.
  - Each changed file is staged beside its destination with its mode and owner, and checked with its O(files[].validate)
    command. Only when every check passed are the staged files renamed into place (atomic per file). A file its
    tool refuses therefore leaves every destination as it was, and the error quotes what the tool said.
  - Nothing is written through a symlink. A symlink at a file's path is replaced; one at a directory's path, or a
    directory where a file should be removed, is refused.
  - Render the content on the controller, with the M(ansible.builtin.template) lookup.
extends_documentation_fragment:
  - inferops.vllm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports what would change, and runs no check. A file whose owner or group does not exist yet (its package
        would create it in the same run) counts as changed.
  diff_mode:
    support: full
    details: The content of each changed file before and after, its mode and owner in the header.
notes:
  - Set C(no_log) on the task when a file holds secrets; the content is part of the task's arguments.
options:
  files:
    description: The files, each with its whole content.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute, normalised path of the file. A missing parent directory is created 0755.
        type: str
        required: true
      content:
        description: The file's text.
        type: str
        required: true
      mode:
        description: Octal mode, as a string (V("0640")).
        type: raw
        default: "0644"
      owner:
        description: User owning the file.
        type: str
        default: root
      group:
        description: Group owning the file.
        type: str
        default: root
      validate:
        description:
          - Command checking the new file before it replaces the old one, with exactly one C(%s) for the staged
            file's path (V(promtool check config %s)). Run without a shell; a non-zero exit refuses the file.
        type: str
  directories:
    description: Directories that must exist with exactly this mode and owner (created, or their mode and owner set).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute, normalised path of the directory. Missing parents are created 0755.
        type: str
        required: true
      mode:
        description: Octal mode, as a string (V("0755")).
        type: raw
        default: "0755"
      owner:
        description: User owning the directory.
        type: str
        default: root
      group:
        description: Group owning the directory.
        type: str
        default: root
  absent:
    description: Files that must not exist (a file left by an earlier configuration).
    type: list
    elements: str
    default: []
  report_existing:
    description:
      - Files to look for, before anything is written; RV(existing) lists those that are there. A role that
        removes what an earlier configuration left (a unit, a rules file) learns here whether there is any, in
        the same module run. A directory at one of these paths is not reported.
    type: list
    elements: str
    default: []
    version_added: 0.4.0
"""

EXAMPLES = r"""
- name: Write the blackbox exporter's files
  inferops.vllm.config_files:
    files:
      - path: /etc/prometheus/blackbox.yml
        content: "{{ lookup('ansible.builtin.template', 'blackbox.yml.j2') }}"
        validate: prometheus-blackbox-exporter --config.check --config.file=%s
      - path: /etc/default/prometheus-blackbox-exporter
        content: "{{ lookup('ansible.builtin.template', 'blackbox-exporter.defaults.j2') }}"
  register: blackbox_files
  notify: Apply the blackbox exporter's files

# In the handlers: restart when the flags changed, otherwise a reload reads the new probe modules.
- name: Apply the blackbox exporter's files
  ansible.builtin.systemd_service:
    name: prometheus-blackbox-exporter
    state: "{{ 'restarted' if '/etc/default/prometheus-blackbox-exporter' in blackbox_files.changed_paths else 'reloaded' }}"
"""

RETURN = r"""
changed_paths:
  description: The paths that changed (or would, in check mode), directories first, then files, then removals.
  returned: success
  type: list
  elements: str
  sample: [/etc/prometheus/blackbox.yml]
existing:
  description: Those of O(report_existing) that were there, not as a directory, before this run wrote anything (a symlink counts).
  returned: success
  type: list
  elements: str
  sample: [/etc/systemd/system/inferops-vllm-watchdog.service]
  version_added: 0.4.0
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.inferops.vllm.plugins.module_utils import _config_files, _files


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="str", required=True),
                content=dict(type="str", required=True),
                mode=dict(type="raw", default="0644"),
                owner=dict(type="str", default="root"),
                group=dict(type="str", default="root"),
                validate=dict(type="str"),
            )),
            directories=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="str", required=True),
                mode=dict(type="raw", default="0755"),
                owner=dict(type="str", default="root"),
                group=dict(type="str", default="root"),
            )),
            absent=dict(type="list", elements="str", default=[]),
            report_existing=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        files, directories, absent = _config_files.plan(p["files"], p["directories"], p["absent"])
        existing = _config_files.existing(p["report_existing"])
        changed, diffs = _config_files.apply(files, directories, absent, module.check_mode, module._diff)
    except (_config_files.ConfigError, _files.FileError) as exc:
        module.fail_json(msg=str(exc))
    result = dict(changed=bool(changed), changed_paths=changed, existing=existing)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
