"""The vllm role's firewall rules (templates/vllm-firewall.nft.j2) as Debian's nft reads them: every shape of the
role's ports and sources gives rules the kernel accepts (nft --check asks it, so these run as root only), and the
rules hold exactly the ports and sources given. What they do to connections is proved in the lab
(tests/integration/test_monitoring_lab.py)."""
import os
import subprocess

import jinja2
import pytest

from ansible_collections.inferops.vllm.plugins.filter.firewall_sources import firewall_sources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TEMPLATE = os.path.join(ROOT, "roles", "vllm", "templates", "vllm-firewall.nft.j2")
NFT = os.path.join(ROOT, "build", "tools", "bin", "nft")


def rendered(ports, sources, hosts=None):
    with open(TEMPLATE) as handle:
        template = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined).from_string(handle.read())
    return template.render(ansible_managed="Ansible managed", _vllm_firewall_ports=ports,
                           _vllm_firewall_sources=firewall_sources(sources, hosts or {}))


def nft_check(text, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("nft --check asks the kernel, which answers root only")
    if not os.path.exists(NFT):
        pytest.fail("%s is missing: run tools/fetch-prometheus-tools.sh" % NFT)
    path = tmp_path / "vllm-firewall.nft"
    path.write_text(text)
    return subprocess.run([NFT, "--check", "--file", str(path)], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("ports, sources, hosts", [
    ([8000, 8011], ["10.20.0.0/16", "fd00::/64"], {"gw-1": "10.0.0.7", "mon-1": "10.0.0.9"}),
    ([8000], [], {}),
    ([], [], {}),
    ([8000], ["2001:db8::1"], {}),
    (list(range(8000, 8200)), ["10.0.0.0/8", "192.168.1.1", "0.0.0.0/0"], {"gw": "172.17.0.2"}),
])
def test_every_shape_of_ports_and_sources_is_accepted_by_nft(ports, sources, hosts, tmp_path):
    text = rendered(ports, sources, hosts)
    result = nft_check(text, tmp_path)
    assert result.returncode == 0, result.stderr + text


def test_the_rules_hold_the_ports_and_sources_and_reset_everyone_else():
    text = rendered([8000, 8011], ["10.20.0.0/16", "fd00::/64"], {"gw-1": "10.0.0.7"})
    assert "elements = { 8000, 8011 }" in text
    assert "elements = { 10.0.0.7, 10.20.0.0/16 }" in text and "elements = { fd00::/64 }" in text
    assert "reject with tcp reset" in text and 'iif "lo" accept' in text
    # The table is replaced whole: created if missing, deleted, created anew, in one nft transaction.
    assert text.index("delete table inet inferops_vllm") < text.index("table inet inferops_vllm {")


def test_a_rule_nft_refuses_is_reported(tmp_path):
    # The check is real: the same rules with a port out of range fail it.
    result = nft_check(rendered([8000], []).replace("8000 }", "80000 }"), tmp_path)
    assert result.returncode != 0 and "80000" in result.stderr
