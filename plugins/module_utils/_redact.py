# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Removing secrets from text that leaves the host: log excerpts, command lines, inspect output.

vLLM logs its non-default arguments at start-up, API keys included, so log evidence is never returned as is.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

MASK = "********"

_PATTERNS = (
    # Python reprs of parsed args: 'api_key': ['k1', 'k2'] or api_key=['k1'] or 'hf_token': 'x'
    (re.compile(r"""((?:api_key|hf_token|token|password)['"]?\s*[:=]\s*)(\[[^\]]*\]|'[^']*'|"[^"]*")""",
                re.IGNORECASE), r"\1'" + MASK + "'"),
    # Command lines: --api-key k1 k2 (several values until the next flag), --hf-token x
    (re.compile(r"(--(?:api-key|hf-token)(?:=|\s+))((?:(?!--)\S+\s*)+)", re.IGNORECASE), r"\1" + MASK + " "),
    # Environment: VLLM_API_KEY=x, HF_TOKEN=x, and any NAME=value whose name says key, token, secret or password
    # (except the *_PATH variables that only point at secret files).
    (re.compile(r"\b((?![A-Z0-9_]*_PATH=)[A-Z0-9_]*(?:API_KEY|TOKEN|SECRET|PASSWORD)[A-Z0-9_]*\s*=\s*)[^\s\",]+"),
     r"\1" + MASK),
    # HTTP headers
    (re.compile(r"(Authorization:\s*Bearer\s+)\S+", re.IGNORECASE), r"\1" + MASK),
    # Hugging Face tokens wherever they appear
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"), MASK),
)


def redact(text, secrets=()):
    """`text` with known secrets (values given) and secret-shaped strings masked."""
    if not text:
        return text
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
