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
  - "Masks API keys, tokens and passwords in vLLM's logged arguments (the C(api_key) list), command lines and
    C(docker inspect) argv (C(--api-key), C(--hf-token), C(--password)), C(NAME=value) and C(name: value) pairs
    whose name says key, token, secret or password, every C(Authorization) scheme and other credential headers,
    URL passwords and query tokens, PEM private keys, and tokens known by their shape (Hugging Face, OpenAI,
    GitHub, GitLab, Slack, AWS, Google, JWT)."
  - "Any secret given in O(secrets) is masked wherever it appears, longest first, and so is a piece of it that a
    cut left behind (six characters or more)."
  - Each line is handled on its own, in time linear in its length.
options:
  _input:
    description: The text.
    type: str
    required: true
  secrets:
    description: Known secret values to mask wherever they appear. A single string is one secret.
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
    return _redact(str(text), secrets)


class FilterModule(object):
    def filters(self):
        return {"redact": redact}
