"""The flag catalog against vLLM's own parsers: it must be what a fresh generation gives, and accept exactly the
flags each release's parser has. Needs the real-vLLM image (`tests/lab/labctl.py real-image`) and the releases'
wheels (`tools/vllm_flag_catalog.py --fetch`); a release whose wheel is not at hand is skipped, saying so."""

import os
import random
import sys

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import vllm_flag_catalog  # noqa: E402


@pytest.fixture(scope="module")
def dumps():
    """{release: what its parser says}, one fresh dump per release whose wheel is at hand."""
    image = vllm_flag_catalog.real_image()
    found = {}
    for version in sorted(vllm_flag_catalog.RELEASES):
        wheel = vllm_flag_catalog.wheel_path(version, download=False)
        if wheel is not None:
            found[version] = (wheel, vllm_flag_catalog.dump(wheel, image))
    return found


def test_the_catalog_is_what_vllms_parsers_give(dumps):
    missing = sorted(set(vllm_flag_catalog.RELEASES) - set(dumps))
    if missing:
        pytest.skip("no wheel of vLLM %s at hand: run tools/vllm_flag_catalog.py --fetch" % ", ".join(missing))
    fresh = vllm_flag_catalog.render(dict(
        (version, vllm_flag_catalog.catalog_entry(version, wheel, parsed)) for version, (wheel, parsed) in
        dumps.items()))
    with open(vllm_flag_catalog.CATALOG) as handle:
        assert handle.read() == fresh, "the catalog differs from vLLM's parsers: run tools/vllm_flag_catalog.py"


@pytest.fixture(params=sorted(vllm_flag_catalog.RELEASES))
def parser_flags(request, dumps):
    """(release, every long flag of that release's `vllm serve` parser)."""
    version = request.param
    if version not in dumps:
        pytest.skip("no wheel of vLLM %s at hand: run tools/vllm_flag_catalog.py --fetch" % version)
    flags = set()
    for option in dumps[version][1]["options"]:
        flags.update(option["long"])
        flags.update(option["negative"])
    return version, flags


def test_a_sample_of_the_parsers_flags_is_accepted_and_lookalikes_are_refused(parser_flags):
    version, flags = parser_flags
    release = _vllm_flags.Release(version, "test")
    sample = random.Random(version).sample(sorted(flags), 60)
    for flag in sample:
        value = True if release.catalog["flags"][flag] == "switch" else "1"
        if flag in _vllm_flags.STRUCTURED:
            with pytest.raises(_vllm_flags.FlagError, match="is set by the option"):
                _vllm_flags.check_extra_args({flag: value}, release)
        else:
            assert _vllm_flags.check_extra_args({flag: value}, release) == [], flag
    lookalikes = [flag + "-x" for flag in sample] + ["x-" + flag for flag in sample]
    lookalikes += list(_vllm_flags.REMOVED)
    for flag in sorted(set(lookalikes) - flags):
        with pytest.raises(_vllm_flags.FlagError):
            _vllm_flags.check_extra_args({flag: "1"}, release)
