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
    is refused rather than widened, since the user may have meant a single address. An IPv4 address written as
    IPv6 (C(::ffff:10.0.0.7)) is refused too, since IPv4 clients never arrive in that form.
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
      - "Inventory hosts that may reach the instances, as a dict: C({inventory name: address or list of addresses})."
      - Each address must be an IP address, the one the host connects from; a name cannot go into the firewall's sets.
        A host whose value is null is not in the inventory, which is an error naming it.
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


IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _shown(value):
    # A hostile value can be long: the message names it, it need not repeat all of it.
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _network(value, where, fix):
    # A zone index (fe80::1%eth0) names an interface, which an nftables set cannot hold.
    if not isinstance(value, string_types) or not value or value != value.strip() or "%" in value:
        raise AnsibleFilterError("firewall_sources: %s: %s is not an IP address or network; %s" % (where, _shown(value), fix))
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise AnsibleFilterError("firewall_sources: %s: %s is not an IP address or network; %s" % (where, _shown(value), fix))
    network = ipaddress.ip_network(str(loose.network_address) + "/%d" % loose.prefixlen)
    if "/" in value and ipaddress.ip_address(value.split("/", 1)[0]) != network.network_address:
        raise AnsibleFilterError(
            "firewall_sources: %s: %s has host bits set; write the network (%s) or the address alone (%s)"
            % (where, _shown(value), network, value.split("/", 1)[0]))
    # An IPv4 client arrives as IPv4, never as ::ffff:a.b.c.d: such an element would match nothing.
    if network.version == 6 and network.subnet_of(IPV4_MAPPED):
        raise AnsibleFilterError("firewall_sources: %s: %s is IPv4 written as IPv6 (in %s); write the IPv4 address or "
                                 "network" % (where, _shown(value), IPV4_MAPPED))
    return network


def _host_networks(name, addresses):
    if addresses is None:
        raise AnsibleFilterError("firewall_sources: host %s (in vllm_firewall_hosts) is not a host of the inventory; "
                                 "correct the name or remove it from vllm_firewall_hosts" % _shown(name))
    if isinstance(addresses, string_types):
        addresses = [addresses]
    if not isinstance(addresses, list) or not addresses:
        raise AnsibleFilterError("firewall_sources: host %s (in vllm_firewall_hosts): its vllm_firewall_address is an "
                                 "address or a list of addresses, got %s" % (name, _shown(addresses)))
    fix = ("set that host's vllm_firewall_address to the IP address (or list of addresses) it connects from, or list "
           "its network in vllm_firewall_sources")
    return [_network(address, "host %s (in vllm_firewall_hosts)" % name, fix) for address in addresses]


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
        networks.extend(_host_networks(name, hosts[name]))
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
