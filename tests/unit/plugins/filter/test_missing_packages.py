"""missing_packages: which wanted packages dpkg shows as installed, never claiming one it cannot tell about."""

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import given, settings, strategies as st

from ansible_collections.inferops.vllm.plugins.filter.missing_packages import missing_packages

# What dpkg-query --show --showformat='${Package}\t${db:Status-Abbrev}\n' printed on a Debian 12 lab host (cut):
# installed, removed with its configuration left ("rc "), half-configured ("iF "), and a held one ("hi ").
DPKG = {"rc": 0, "stdout": "\n".join([
    "docker.io\tii ", "prometheus\tii ", "prometheus-node-exporter\trc ", "python3-docker\tiF ",
    "containerd\thi ", "libc6\tii ", "python3-requests\tii "])}


def test_only_installed_packages_count_as_there():
    wanted = ["docker.io", "prometheus-node-exporter", "python3-docker", "containerd", "libc6", "nftables"]
    assert missing_packages(wanted, DPKG) == ["prometheus-node-exporter", "python3-docker", "containerd", "nftables"]


def test_all_there_is_an_empty_list():
    assert missing_packages(["docker.io", "python3-requests"], DPKG) == []


@pytest.mark.parametrize("name", ["docker.io=20.10.24+dfsg1-1+b3", "docker.io/bookworm-backports", "docker*",
                                  "libc6:amd64", "Docker.io", " docker.io"])
def test_a_name_with_a_version_release_wildcard_or_odd_form_is_left_to_the_package_manager(name):
    assert missing_packages([name], DPKG) == [name]


@pytest.mark.parametrize("dpkg", [{"skipped": True, "changed": False}, {"rc": 127, "stdout": "docker.io\tii "},
                                  None, "", {"rc": 0}, {"rc": 0, "stdout": None}])
def test_without_a_dpkg_reading_every_package_is_missing(dpkg):
    assert missing_packages(["docker.io", "libc6"], dpkg) == ["docker.io", "libc6"]


@pytest.mark.parametrize("wanted", ["docker.io", None, {"docker.io": 1}])
def test_a_wanted_value_that_is_not_a_list_is_an_error(wanted):
    with pytest.raises(AnsibleFilterError, match="give a list of package names"):
        missing_packages(wanted, DPKG)


NAMES = st.from_regex(r"[a-z0-9][a-z0-9.+-]{0,12}", fullmatch=True)
STATUSES = st.sampled_from(["ii ", "rc ", "iU ", "iF ", "hi ", "un ", "ii R", "pi "])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(NAMES, STATUSES, max_size=12), st.lists(st.one_of(NAMES, st.text(max_size=10)), max_size=8))
def test_a_package_is_reported_there_only_when_dpkg_says_exactly_ii(statuses, wanted):
    dpkg = {"rc": 0, "stdout": "\n".join("%s\t%s" % item for item in statuses.items())}
    missing = missing_packages(wanted, dpkg)
    assert missing == [w for w in wanted if statuses.get(w) != "ii "]
