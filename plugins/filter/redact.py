# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: redact
short_description: Mask secrets in text that leaves a host (logs, docker inspect, command lines)
version_added: 0.1.0
author: inferops maintainers (@inferops)
description:
  - "Masks API keys and tokens in vLLM's logged arguments (the C(api_key) list), C(--api-key) and C(--hf-token)
    values, C(NAME=value) pairs whose name says key, token, secret or password, C(Authorization) Bearer headers,
    and Hugging Face tokens (C(hf_...)), plus any secret given in O(secrets)."
options:
  _input:
    description: The text.
    type: str
    required: true
  secrets:
    description: Known secret values to mask wherever they appear.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Keep a log excerpt without its keys
  ansible.builtin.copy:
    content: "{{ logs.stdout | inferops.vllm.redact(secrets=vllm_api_keys) }}"
    dest: /tmp/diag/vllm.log
    mode: "0600"
"""

RETURN = r"""
_value:
  description: The text with secrets replaced by C(********).
  type: str
"""

from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact as _redact


def redact(text, secrets=None):
    return _redact(str(text), [s for s in (secrets or []) if s])


class FilterModule(object):
    def filters(self):
        return {"redact": redact}
