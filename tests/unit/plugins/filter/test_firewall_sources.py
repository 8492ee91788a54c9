"""The vllm role's firewall sources: addresses and networks of both families accepted, merged and split as nftables
takes them; host names, host bits, blanks, newlines and other hostile values refused, naming the field or host."""

import ipaddress

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import given, settings as hsettings, strategies as st

from ansible_collections.inferops.vllm.plugins.filter.firewall_sources import firewall_sources


def test_users_networks_and_inventory_hosts_are_split_by_family_and_merged():
    got = firewall_sources(["10.20.0.0/16", "fd00::/64", "10.20.1.0/24", "2001:db8::5"],
                           {"gw-1": "10.0.0.7", "mon-1": "10.0.0.9"})
    assert got == {"ipv4": ["10.0.0.7", "10.0.0.9", "10.20.0.0/16"], "ipv6": ["2001:db8::5", "fd00::/64"]}


def test_nothing_listed_is_two_empty_families():
    assert firewall_sources([]) == {"ipv4": [], "ipv6": []}
    assert firewall_sources([], {}) == {"ipv4": [], "ipv6": []}


@pytest.mark.parametrize("value", ["gw.example", "10.0.0.256", "10.0.0.0/33", "", " 10.0.0.1", "10.0.0.1\n",
                                   "10.0.0.1\n} ; flush ruleset", "fe80::1%eth0", "10.0.0.1/32 10.0.0.2", 5, None,
                                   ["10.0.0.1"], "x" * 5000])
def test_a_value_that_is_no_address_is_refused_naming_the_field(value):
    with pytest.raises(AnsibleFilterError) as raised:
        firewall_sources([value])
    message = str(raised.value)
    assert "vllm_firewall_sources" in message and "such as 10.0.0.7" in message
    assert len(message) < 300


def test_host_bits_are_refused_with_both_readings():
    wanted = r"10\.0\.0\.5/24' has host bits set; write the network \(10\.0\.0\.0/24\) or the address alone \(10\.0\.0\.5\)"
    with pytest.raises(AnsibleFilterError, match=wanted):
        firewall_sources(["10.0.0.5/24"])


def test_an_inventory_host_known_by_name_only_is_refused_naming_it_and_the_fix():
    with pytest.raises(AnsibleFilterError) as raised:
        firewall_sources(["10.0.0.0/8"], {"gw-2": "gw2.example.com"})
    assert "host gw-2" in str(raised.value) and "vllm_firewall_address" in str(raised.value)


@pytest.mark.parametrize("value", ["::ffff:10.0.0.7", "::ffff:10.0.0.0/120", "::ffff:0:0/96"])
def test_ipv4_written_as_ipv6_is_refused(value):
    with pytest.raises(AnsibleFilterError, match="IPv4 written as IPv6"):
        firewall_sources([value])


def test_a_host_may_have_several_addresses_and_one_not_in_the_inventory_is_named():
    assert firewall_sources([], {"gw-1": ["10.0.0.7", "fd00::7"]}) == {"ipv4": ["10.0.0.7"], "ipv6": ["fd00::7"]}
    with pytest.raises(AnsibleFilterError, match="host 'gw-9' .* is not a host of the inventory"):
        firewall_sources([], {"gw-9": None})
    with pytest.raises(AnsibleFilterError, match="vllm_firewall_address is an address or a list"):
        firewall_sources([], {"gw-1": []})


@pytest.mark.parametrize("sources, hosts", [("10.0.0.1", {}), ({"a": "10.0.0.1"}, {}), ([], ["10.0.0.1"])])
def test_the_wrong_shapes_are_refused(sources, hosts):
    with pytest.raises(AnsibleFilterError):
        firewall_sources(sources, hosts)


def networks_of(version, longest):
    """Any network of that IP version, built from an address and a prefix length (host bits cleared)."""
    return st.tuples(st.ip_addresses(v=version), st.integers(0, longest)).map(
        lambda pair: ipaddress.ip_network("%s/%d" % pair, strict=False))


MAPPED = ipaddress.ip_network("::ffff:0:0/96")
NETWORKS = st.one_of(networks_of(4, 32),
                     networks_of(6, 128).filter(lambda network: not network.subnet_of(MAPPED)))


@hsettings(max_examples=200, deadline=None)
@given(st.lists(NETWORKS, max_size=12))
def test_the_result_covers_exactly_what_was_given_and_holds_no_overlap(networks):
    got = firewall_sources([str(network) for network in networks])
    for family, version in (("ipv4", 4), ("ipv6", 6)):
        parsed = [ipaddress.ip_network(text) for text in got[family]]
        assert all(network.version == version for network in parsed)
        assert sorted(parsed) == parsed
        assert not any(a.overlaps(b) for i, a in enumerate(parsed) for b in parsed[i + 1:])
        wanted = [network for network in networks if network.version == version]
        # Every address given is inside the result, and the result holds nothing that was not given.
        assert all(any(network.subnet_of(p) for p in parsed) for network in wanted)
        assert sum(p.num_addresses for p in parsed) == sum(
            n.num_addresses for n in ipaddress.collapse_addresses(wanted))


@hsettings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), NETWORKS.map(str), st.ip_addresses().map(str),
                 st.tuples(st.ip_addresses(), st.integers(-1, 130)).map(lambda pair: "%s/%d" % pair)))
def test_any_text_is_an_address_of_the_result_or_refused(text):
    try:
        got = firewall_sources([text])
    except AnsibleFilterError as error:
        assert "vllm_firewall_sources" in str(error)
        return
    network = ipaddress.ip_network(text)
    assert got["ipv%d" % network.version] and "\n" not in "".join(got["ipv4"] + got["ipv6"])
