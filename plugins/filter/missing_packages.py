# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: missing_packages
short_description: The packages of a list that dpkg does not show as installed
version_added: 0.3.0
author: inferops maintainers (@inferops)
description:
  - Reads what C(dpkg-query --show --showformat='${Package}\t${db:Status-Abbrev}\n') printed (registered by the
    internal role C(inferops.vllm.package_index)) and returns the wanted packages it does not show as installed.
  - A role skips its package task when none is missing, sparing the package manager's run (about a second on a
    small host) on every run after the first.
  - It never claims a package is there when it cannot tell. A name with a version, a release or a wildcard
    (C(docker-ce=5:27.*), C(pkg/bookworm-backports)), and every name when dpkg was not read (a skipped task, a
    host without dpkg), is returned as missing, so the package manager decides.
options:
  _input:
    description: The packages a role wants, as it passes them to the package manager.
    type: list
    elements: str
    required: true
  dpkg:
    description: The registered result of C(inferops.vllm.package_index)'s dpkg query (C(package_index_dpkg)).
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Install the node exporter
  ansible.builtin.apt:
    name: prometheus-node-exporter
  when: "['prometheus-node-exporter'] | inferops.vllm.missing_packages(package_index_dpkg) | length > 0"
"""

RETURN = r"""
_value:
  description: The wanted packages, in their order, that are not shown as installed.
  type: list
  elements: str
"""

import re

from ansible.errors import AnsibleFilterError

# dpkg's abbreviated status: desired "i" (install) and current "i" (installed), no error flag.
_INSTALLED = re.compile(r"^([a-z0-9][a-z0-9.+-]*)\tii $", re.M)
_PLAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]*\Z")


def missing_packages(wanted, dpkg):
    if isinstance(wanted, str) or not isinstance(wanted, (list, tuple)):
        raise AnsibleFilterError("missing_packages: give a list of package names, not %r" % (wanted,))
    names = [str(name) for name in wanted]
    output = dpkg.get("stdout") if isinstance(dpkg, dict) and not dpkg.get("skipped") and dpkg.get("rc") == 0 \
        else None
    if not isinstance(output, str):
        return names
    installed = set(_INSTALLED.findall(output))
    return [name for name in names if not (_PLAIN_NAME.match(name) and name in installed)]


class FilterModule(object):
    def filters(self):
        return {"missing_packages": missing_packages}
