"""The flag catalog (generated from vLLM's parsers by tools/vllm_flag_catalog.py) and the checks built on it.

Whether the catalog matches a fresh generation is checked in tests/conformance (it needs the real-vLLM image)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_flags
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_flag_catalog import RELEASES

V032 = _vllm_flags.Release("0.32.0", "test")
V033 = _vllm_flags.Release("0.33.0", "test")


def test_the_catalog_holds_the_supported_releases():
    assert {"0.32.0", "0.33.0"} <= set(RELEASES)
    for entry in RELEASES.values():
        assert len(entry["flags"]) > 300
        assert set(entry["flags"].values()) <= {"switch", "value", "values", "optional"}
        for flag, negation in entry["negations"].items():
            assert entry["flags"][flag] == "switch" and entry["flags"][negation] == "switch"
        assert set(entry["short"].values()) <= set(entry["flags"])


@pytest.mark.parametrize("version", sorted(RELEASES))
def test_every_option_vllm_serve_sets_itself_exists_in_each_release(version):
    release = _vllm_flags.Release(version, "test")
    assert [flag for flag in _vllm_flags.STRUCTURED if not release.has(flag)] == []


@pytest.mark.parametrize("version", sorted(RELEASES))
def test_removed_flags_point_to_flags_the_release_has(version):
    release = _vllm_flags.Release(version, "test")
    for flag, (_advice, replacements) in _vllm_flags.REMOVED.items():
        if not release.has(flag):
            assert [r for r in replacements if not release.has(r)] == [], flag


@pytest.mark.parametrize("flag, replacement", [("speculative-model", "--speculative-config"),
                                               ("--guided-decoding-backend", "--structured-outputs-config"),
                                               ("num_speculative_tokens", "--speculative-config"),
                                               ("swap-space", "--kv-offloading-size"),
                                               ("task", "--runner")])
def test_removed_flags_name_their_replacement(flag, replacement):
    with pytest.raises(_vllm_flags.FlagError, match="vLLM 0.33.0 has no --.*; use .*%s" % replacement):
        _vllm_flags.check_extra_args({flag: "x"}, V033)


def test_a_flag_is_removed_only_where_the_release_lacks_it():
    # 0.33's parser has --disable-log-requests again, as the negation of --enable-log-requests; 0.32's has not.
    assert _vllm_flags.check_extra_args({"disable-log-requests": True}, V033) == []
    with pytest.raises(_vllm_flags.FlagError, match="vLLM 0.32.0 has no --disable-log-requests"):
        _vllm_flags.check_extra_args({"disable-log-requests": True}, V032)


@pytest.mark.parametrize("flag", ["enable-log-requests", "attention-backend", "kv-cache-memory-bytes", "runner",
                                  "max-cudagraph-capture-size", "mm-processor-cache-gb",
                                  "pooler-config", "spec-model", "optimization-level", "headless", "nnodes",
                                  "node-rank", "master-addr"])
def test_flags_users_ask_for_are_accepted(flag):
    value = True if V033.catalog["flags"][flag] == "switch" else "1"
    assert _vllm_flags.check_extra_args({flag: value}, V033) == []


def test_unknown_flags_are_refused_or_warned():
    with pytest.raises(_vllm_flags.FlagError, match="--made-up is not a flag of vLLM 0.33.0's `vllm serve`"):
        _vllm_flags.check_extra_args({"made-up": 1}, V033)
    assert _vllm_flags.check_extra_args({"made-up": 1}, V033, strict=False) == [
        "extra_args: --made-up is not a flag of vLLM 0.33.0's `vllm serve`"]


def test_a_release_without_a_catalog_is_checked_against_the_one_before_it_and_only_warns():
    newer = _vllm_flags.Release("0.34.2", "the tag of vllm/vllm-openai:v0.34.2")
    assert newer.catalog_version == "0.33.0" and not newer.exact
    assert "vLLM 0.34.2 (the tag of vllm/vllm-openai:v0.34.2) has no flag catalog" in newer.warning
    assert _vllm_flags.check_extra_args({"made-up": 1}, newer) == [
        "extra_args: --made-up is not a flag of vLLM 0.33.0's `vllm serve`"]
    unknown = _vllm_flags.Release(None, "not read")
    assert unknown.catalog_version == max(RELEASES, key=lambda v: tuple(map(int, v.split("."))))
    assert "of unknown release" in unknown.warning


def test_structured_and_secret_flags_are_not_extra_args():
    with pytest.raises(_vllm_flags.FlagError, match="--api-key is set by the option api_keys"):
        _vllm_flags.check_extra_args({"api-key": "x"}, V033)
    with pytest.raises(_vllm_flags.FlagError, match="--max-model-len is set by the option max_model_len"):
        _vllm_flags.check_extra_args({"max_model_len": 10}, V033)
    with pytest.raises(_vllm_flags.FlagError, match="--shutdown-timeout is set by the option shutdown_timeout"):
        _vllm_flags.check_extra_args({"shutdown-timeout": 10}, V033)


@pytest.mark.parametrize("args, message", [
    ({"disable-log-stats": "yes"}, "--disable-log-stats is a switch: give true or false"),
    ({"max-loras": True}, "--max-loras takes a value, not true"),
    ({"max-loras": [1, 2]}, "--max-loras takes one value, not a list"),
    ({"compilation-config.mode": 0}, "is not a flag name"),
])
def test_values_must_suit_the_flag(args, message):
    with pytest.raises(_vllm_flags.FlagError, match=message.replace(".", r"\.")):
        _vllm_flags.check_extra_args(args, V033)


def test_false_gives_the_negation_only_where_vllm_has_one():
    argv = _vllm_flags.extra_argv({"enable-lora": False, "disable-log-stats": False, "max-loras": 4,
                                   "lora-modules": ["a=/x", "b=/y"], "compilation-config": {"mode": 0}}, V033)
    assert argv == ["--compilation-config", '{"mode":0}', "--no-enable-lora", "--lora-modules", "a=/x", "b=/y",
                    "--max-loras", "4"]


@pytest.mark.parametrize("text, release", [
    ("vllm/vllm-openai:v0.33.0", "0.33.0"), ("inferops/vllm-cpu:0.32.0", "0.32.0"),
    ("registry:5000/vllm/vllm-openai:v0.33.0-cu130", "0.33.0"), ("vllm/vllm-openai:latest", None),
    ("vllm/vllm-openai", None), ("registry:5000/vllm", None), ("vllm/vllm-openai@sha256:abc", None),
])
def test_the_release_is_read_from_the_image_tag(text, release):
    assert _vllm_flags.release_from_image(text) == release


@given(st.text(max_size=60))
def test_release_parsing_never_raises(text):
    found = _vllm_flags.release_from_text(text)
    assert found is None or found.count(".") == 2
    _vllm_flags.release_from_image(text)
    _vllm_flags.Release(text, "fuzz")
