# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: health_table
short_description: The vllm role's health table, one line per instance checked
version_added: 0.3.0
author: inferops maintainers (@inferops)
description:
  - Formats the outcome the vllm role keeps per instance (C(vllm_results)) as a table, a header line then one line
    per instance of C(vllm_instances) whose result holds a health verdict (from inferops.vllm.vllm_health), in the
    order of C(vllm_instances). Instances the run did not wait for (such as C(state=absent)) have no line.
  - The GPUs shown are those the instance was given (the result's C(gpus)), not those the health check read, since a
    health check that does not know the instance's GPUs (systemd and venv backends) reads every GPU of the host.
  - Each cell is one line whatever it holds. Control characters (line breaks, escape sequences, Unicode line
    separators and format characters) are shown escaped (a line break as C(\n)).
options:
  _input:
    description: The instances (the vllm role's C(vllm_instances)); each a dict with C(name), C(port), C(model).
    type: list
    elements: dict
    required: true
  results:
    description:
      - The vllm role's C(vllm_results), by instance name. Of each result, C(health) (inferops.vllm.vllm_health's
        verdict; its C(status) and C(checks.inference.ttft_ms) are shown) and C(gpus) (the GPU ids the instance
        was given) are read.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Health table
  ansible.builtin.debug:
    msg: "{{ vllm_instances | inferops.vllm.health_table(vllm_results | default({})) }}"

# ["instance         status     port  ttft_ms  gpus       model",
#  "chat             healthy    8000  41       0,1        /models/llama"]
"""

RETURN = r"""
_value:
  description: The header line, then one line per instance with a verdict (instance, status, port, ttft_ms, gpus, model).
  type: list
  elements: str
"""

import math
import unicodedata

from ansible.errors import AnsibleFilterError

ROW = "%-16s %-10s %-5s %-8s %-10s %s"
HEADER = ROW % ("instance", "status", "port", "ttft_ms", "gpus", "model")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _one_line(value):
    # Cc: C0/C1 controls (newline, ESC of terminal sequences); Zl/Zp: Unicode line and paragraph separators, which
    # some viewers break lines at; Cf: bidi overrides, which reorder what the row shows.
    text = str(value)
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            code = ord(char)
            out.append("\\x%02x" % code if code < 0x100 else "\\u%04x" % code if code < 0x10000 else "\\U%08x" % code)
        else:
            out.append(char)
    return "".join(out)


def _cell(value, missing="-"):
    if value is None or (isinstance(value, str) and not value):
        return missing
    return _one_line(value)


def _ttft(verdict):
    checks = verdict.get("checks")
    inference = checks.get("inference") if isinstance(checks, dict) else None
    ttft = inference.get("ttft_ms") if isinstance(inference, dict) else None
    if isinstance(ttft, bool):
        return _cell(ttft)
    if isinstance(ttft, (int, float)):
        return "%.0f" % ttft if math.isfinite(ttft) else "-"
    return _cell(ttft)


def _gpus(gpus):
    if isinstance(gpus, (list, tuple)):
        return _cell(",".join(str(gpu) for gpu in gpus))
    return _cell(gpus)


def health_table(instances, results=None):
    results = {} if results is None else results
    if not isinstance(instances, (list, tuple)):
        raise AnsibleFilterError("health_table: expects the list of instances, got %s" % type(instances).__name__)
    if not isinstance(results, dict):
        raise AnsibleFilterError("health_table: results must be a dict by instance name (the vllm role's vllm_results),"
                                 " got %s" % type(results).__name__)
    lines = [HEADER]
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise AnsibleFilterError("health_table: vllm_instances[%d] is not a dict of settings, got %s"
                                     % (index, type(instance).__name__))
        name = instance.get("name")
        # A name that is not a string cannot be a key of the results the role keeps; unhashable ones would raise.
        result = results.get(name) if isinstance(name, str) else None
        if not isinstance(result, dict) or result.get("health") is None:
            continue
        verdict = result["health"] if isinstance(result["health"], dict) else {}
        lines.append(ROW % (_cell(name), _cell(verdict.get("status"), "?"), _cell(instance.get("port")), _ttft(verdict),
                            _gpus(result.get("gpus")), _cell(instance.get("model"))))
    return lines


class FilterModule(object):
    def filters(self):
        return {"health_table": health_table}
