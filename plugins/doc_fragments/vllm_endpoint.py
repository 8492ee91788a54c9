# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a module reaches a vLLM server: its URL, API key and TLS settings. The argument spec that goes with it is
_vllm_client.ENDPOINT_ARGUMENTS, so the documentation and the checks of these options are written once."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the server, for example V(http://127.0.0.1:8000) or V(https://10.0.0.5:8443).
      - The vllm role passes what inferops.vllm.vllm_serve returned as C(instance.url).
    type: str
    required: true
  api_key:
    description: API key for C(/v1/*) (vLLM's C(--api-key)). Sent in a header only, and masked in every message.
    type: str
  validate_certs:
    description: Verify the server's TLS certificate.
    type: bool
    default: true
  ca_path:
    description: CA bundle to verify the server with (a private CA).
    type: path
  client_cert:
    description: Client certificate for servers that require one (C(--ssl-cert-reqs 2)).
    type: path
  client_key:
    description: Private key of O(client_cert).
    type: path
"""
