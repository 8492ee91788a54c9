# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: firewall_sources
short_description: The addresses allowed through the vllm role's firewall, checked and split into IPv4 and IPv6
version_added: 0.3.0
author: inferops maintainers (@inferops)
description:
  - Reads the networks and addresses a user lists, and the addresses of the inventory hosts that may reach the
    instances (gateways, the monitoring host), and returns them as nftables takes them, one list per family.
  - An address is an IPv4 or IPv6 address or network in CIDR notation. A network with host bits set (C(10.0.0.5/24))
    is refused rather than widened, since the user may have meant a single address.
  - A value that is not one (a host name, text with spaces or newlines, an empty value, a prefix out of range) is an
    error naming the field or the host and the fix, so nothing is written from it.
options:
  _input:
    description: Addresses and networks the user lists (the role's C(vllm_firewall_sources)).
    type: list
    elements: str
    required: true
  hosts:
    description:
      - "Inventory hosts that may reach the instances, as a dict: C({inventory name: address})."
      - Their address must be an IP address; a name cannot go into the firewall's sets.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: The firewall's sources
  ansible.builtin.debug:
    msg: "{{ ['10.20.0.0/16', 'fd00::/64'] | inferops.vllm.firewall_sources({'gw-1': '10.0.0.7'}) }}"
# {"ipv4": ["10.0.0.7", "10.20.0.0/16"], "ipv6": ["fd00::/64"]}
"""

RETURN = r"""
_value:
  description:
    - The sources by family, sorted, with overlapping and adjacent networks merged (nftables refuses overlapping
      elements in a set); a single address has no prefix length.
  type: dict
  contains:
    ipv4:
      description: IPv4 addresses and networks.
      type: list
      elements: str
    ipv6:
      description: IPv6 addresses and networks.
      type: list
      elements: str
"""

import ipaddress

from ansible.errors import AnsibleFilterError
from ansible.module_utils.six import string_types


def _shown(value):
    # A hostile value can be long: the message names it, it need not repeat all of it.
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _network(value, where, fix):
    # A zone index (fe80::1%eth0) names an interface, which an nftables set cannot hold.
    if not isinstance(value, string_types) or not value or value != value.strip() or "%" in value:
        raise AnsibleFilterError("firewall_sources: %s: %s is not an IP address or network; %s" % (where, _shown(value), fix))
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        if "has host bits set" in str(error):
            single = value.split("/", 1)[0]
            raise AnsibleFilterError(
                "firewall_sources: %s: %s has host bits set; write the network (%s) or the address alone (%s)"
                % (where, _shown(value), ipaddress.ip_network(value, strict=False), single))
        raise AnsibleFilterError("firewall_sources: %s: %s is not an IP address or network; %s" % (where, _shown(value), fix))


def firewall_sources(sources, hosts=None):
    if not isinstance(sources, list):
        raise AnsibleFilterError("firewall_sources: vllm_firewall_sources is a list of addresses or networks, got %s"
                                 % type(sources).__name__)
    if hosts is None:
        hosts = {}
    if not isinstance(hosts, dict):
        raise AnsibleFilterError("firewall_sources: hosts is {inventory name: address}, got %s" % type(hosts).__name__)
    networks = [_network(value, "vllm_firewall_sources", "give addresses or networks such as 10.0.0.7 or 10.0.0.0/24")
                for value in sources]
    for name in sorted(hosts):
        networks.append(_network(
            hosts[name], "host %s (in vllm_firewall_hosts)" % name,
            "set that host's vllm_firewall_address (or monitoring_scrape_address) to its IP address, or list its "
            "network in vllm_firewall_sources"))
    result = {}
    for family, version in (("ipv4", 4), ("ipv6", 6)):
        # Merged, because nftables refuses overlapping elements in an interval set.
        merged = ipaddress.collapse_addresses(network for network in networks if network.version == version)
        result[family] = [str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)
                          for network in merged]
    return result


class FilterModule(object):
    def filters(self):
        return {"firewall_sources": firewall_sources}
