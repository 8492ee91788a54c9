"""The input checks: hostile values are refused with the field named, and only InputError comes out."""

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from text_cases import recase

from ansible_collections.inferops.vllm.plugins.module_utils import _validate
from ansible_collections.inferops.vllm.plugins.module_utils._validate import InputError

ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(),
                     st.lists(st.text(), max_size=3), st.dictionaries(st.text(), st.text(), max_size=3))


@pytest.mark.parametrize("name", ["x/../victim", "../../victim", "..", "a..b", "", "a b", "a\nb", "/abs", "-dash",
                                  ".hidden", "x" * 64, "tab\t", "nul\x00"])
def test_instance_names_that_could_become_paths_are_refused(name):
    with pytest.raises(InputError, match=r"^name: .* is not an instance name"):
        _validate.instance_name("name", name)


@pytest.mark.parametrize("name", ["llama-70b", "qwen2.5-7b", "a", "A_1", "x" * 63])
def test_plain_instance_names_pass(name):
    assert _validate.instance_name("name", name) == name


@given(st.text(max_size=80))
def test_an_accepted_name_is_one_path_segment(name):
    try:
        _validate.instance_name("name", name)
    except InputError:
        return
    assert "/" not in name and ".." not in name and name.strip() == name and name not in (".", "")
    assert all(ch.isalnum() or ch in "._-" for ch in name)


@pytest.mark.parametrize("value", ["a\nExecStartPre=/bin/sh", "x\rLD_PRELOAD=/tmp/x.so", "v\x00", "del\x7f"])
def test_line_breaks_and_control_characters_are_refused_without_echoing_the_value(value):
    with pytest.raises(InputError) as caught:
        _validate.single_line("env.MY_VAR", value)
    message = str(caught.value)
    assert message.startswith("env.MY_VAR: the value has a control character")
    assert "ExecStartPre" not in message and "LD_PRELOAD" not in message


@pytest.mark.parametrize("env, message", [
    ({"BAD NAME": "1"}, "env: 'BAD NAME' is not an environment variable name"),
    ({"1X": "1"}, "env: '1X' is not an environment variable name"),
    ({"X=Y": "1"}, "env: 'X=Y' is not an environment variable name"),
    ({"OK": "a\nVLLM_API_KEY=stolen"}, "env.OK: the value has a control character"),
    ({"OK": {"nested": 1}}, "env: OK must be a text or a number, not a dict"),
    ({"OK": float("nan")}, "env: OK is nan; give a finite number"),
])
def test_environment_names_and_values(env, message):
    with pytest.raises(InputError, match="^" + re.escape(message)):
        _validate.environment("env", env)


@pytest.mark.parametrize("value", [0, -1, 65536, 10 ** 309, "8000", True, None, 1.5])
def test_ports_are_1_to_65535(value):
    with pytest.raises(InputError, match=r"^port: .* is not a TCP port; give a number from 1 to 65535"):
        _validate.port("port", value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "5", True])
def test_numbers_must_be_finite(value):
    with pytest.raises(InputError, match=r"^timeout: .* is not a finite number"):
        _validate.number("timeout", value)


def test_number_bounds():
    assert _validate.number("gpu_memory_utilization", 1, 0, 1, above_minimum=True) == 1
    with pytest.raises(InputError, match=r"give a number above 0 and at most 1"):
        _validate.number("gpu_memory_utilization", 0, 0, 1, above_minimum=True)
    with pytest.raises(InputError, match=r"pipeline_parallel_size: 0 is out of range; give a number at least 1"):
        _validate.number("pipeline_parallel_size", 0, 1)
    assert _validate.number("max_model_len", None, 1) is None


@given(ANYTHING)
def test_only_input_error_comes_out(value):
    for check in (lambda v: _validate.instance_name("f", v), lambda v: _validate.single_line("f", v),
                  lambda v: _validate.port("f", v), lambda v: _validate.number("f", v, 0, 10),
                  lambda v: _validate.gpu_ids("f", v if isinstance(v, list) else [v]),
                  lambda v: _validate.environment("f", v if isinstance(v, dict) else {"X": v}),
                  lambda v: _validate.argument_values("f", {"flag": v}),
                  lambda v: _validate.image_reference("f", v),
                  lambda v: _validate.gpu_ids("f", v), lambda v: _validate.environment("f", v),
                  lambda v: _validate.argument_values("f", v), lambda v: _validate.texts("f", v),
                  lambda v: _validate.text_mapping("f", v), lambda v: _validate.command_word("f", v)):
        try:
            check(value)
        except InputError:
            pass


@given(st.floats() | st.integers())
def test_an_accepted_number_is_finite_and_in_range(value):
    try:
        _validate.number("f", value, 0, 10)
    except InputError:
        return
    assert math.isfinite(value) and 0 <= value <= 10


@pytest.mark.parametrize("gpus, message", [
    (["0", "0"], "gpus: GPU 0 is listed twice"),
    (["-1"], "gpus: '-1' is not a GPU"),
    (["0,1"], "gpus: '0,1' is not a GPU"),
    (["all"], "gpus: 'all' is not a GPU"),
    (["0\n"], "gpus: '0\\n' is not a GPU"),
])
def test_gpu_ids(gpus, message):
    with pytest.raises(InputError, match="^" + re.escape(message)):
        _validate.gpu_ids("gpus", gpus)


def test_gpu_indices_and_uuids_pass():
    ids = ["0", "7", "GPU-5e1a7c3d-8f6b-4a2e-9c1d-0b3f4e5a6d7c", "MIG-GPU-5e1a7c3d/1/0"]
    assert _validate.gpu_ids("gpus", ids) == ids


# GPU UUIDs in any case: NVML prints "GPU-" and lower-case hex, other tools capitals; users type either.
UUID = "GPU-5e1a7c3d-8f6b-4a2e-9c1d-0b3f4e5a6d7c"
# An accepted GPU: ASCII digits, or a GPU-/MIG- prefix in any ASCII case and ASCII letters, digits, '/' and '-'.
STRICT_GPU = re.compile(r"(?:[0-9]{1,4}|(?:[Gg][Pp][Uu]|[Mm][Ii][Gg])-[A-Za-z0-9/-]{1,80})\Z")


@pytest.mark.parametrize("gpu", ["gpu-5e1a7c3d-8f6b-4a2e-9c1d-0b3f4e5a6d7c", "Gpu-5E1A7C3D-8F6B-4A2E-9C1D-0B3F4E5A6D7C",
                                 "mig-c499bdaa-75f3-a380-8d34-076b172fe964", "Mig-GPU-5e1a7c3d/1/0",
                                 "mig-gpu-5e1a7c3d-8f6b-4a2e-9c1d-0b3f4e5a6d7c/1/0"])
def test_a_uuid_is_a_gpu_whatever_the_case_of_its_prefix(gpu):
    assert _validate.gpu_ids("gpus", [gpu]) == [gpu]


@pytest.mark.parametrize("other", [UUID.upper(), UUID.lower(), "gpu-" + UUID[4:].upper()])
def test_one_gpu_in_two_cases_is_listed_twice_named_as_nvml_prints_it(other):
    with pytest.raises(InputError, match="^" + re.escape("gpus: GPU %s is listed twice" % UUID) + "$"):
        _validate.gpu_ids("gpus", ["0", UUID, other])


@given(st.uuids().map(str), st.sampled_from(["GPU-", "MIG-", "MIG-GPU-"]), st.lists(st.integers(0, 200), max_size=40))
def test_any_case_of_a_valid_uuid_passes_and_is_one_gpu_with_the_others(uuid, prefix, flips):
    nvml = prefix + uuid
    typed = recase(nvml, flips)
    for gpu in (typed, nvml.upper(), nvml.lower()):
        assert _validate.gpu_ids("gpus", [gpu]) == [gpu]
        for again in (nvml, typed, nvml.upper(), nvml.lower()):
            with pytest.raises(InputError, match="is listed twice"):
                _validate.gpu_ids("gpus", [gpu, again])


@pytest.mark.parametrize("gpu", [
    "gpu-0,1", "GPU-", "gpu-", "gpu", "-gpu-0", "gpu-0 --privileged", "gpu-0\nExecStartPre=/bin/sh", "gpu-0\x00",
    "gpu_0", "gpu=0", "gpu-" + "a" * 81, "\uff27PU-0", "G\u0420U-0", "m\u0131g-0", "M\u0130G-0", "gpu-\u017f",
    "gpu-\u212a", "all", "none", "void", "0,1", "-1", "00000", "\u0660",
])
def test_hostile_values_are_refused_in_any_case(gpu):
    # Only ASCII letters fold: "m\u0131g-0" (a dotless i) is refused, though its upper case is "MIG-0".
    for variant in (gpu, gpu.upper(), gpu.lower()) if gpu.isascii() else (gpu,):
        with pytest.raises(InputError, match="is not a GPU"):
            _validate.gpu_ids("gpus", [variant])


@given(st.text(alphabet="gGpPuUmMiI\u0131\u0130\u017f\u212aK-_/,: .=0123456789abcdefABCDEF\n\x00", max_size=90))
def test_an_accepted_gpu_is_plain_ascii_in_any_case_of_the_prefix(gpu):
    try:
        _validate.gpu_ids("gpus", [gpu])
    except InputError:
        return
    assert STRICT_GPU.match(gpu) and gpu.isascii() and not gpu.startswith("-")


@pytest.mark.parametrize("extra, message", [
    ({"tokenizer": ["x", "--api-key", "KEY"]},
     "extra_args.tokenizer: a value starting with '--api-key' would be read as a flag"),
    ({"tokenizer": "--api-key=KEY"}, "extra_args.tokenizer: a value starting with '--api-key' would be read as a "
                                     "flag of its own"),
    ({"chat-template": "x\nExecStartPre=/bin/true"}, "extra_args.chat-template: the value has a control character"),
])
def test_extra_args_values_cannot_carry_flags_or_lines(extra, message):
    with pytest.raises(InputError, match="^" + re.escape(message)):
        _validate.argument_values("extra_args", extra)


@given(st.text(min_size=8, alphabet="0123456789XYZ"))
def test_a_refused_flag_value_never_shows_what_follows_the_option(secret):
    with pytest.raises(InputError) as caught:
        _validate.argument_values("extra_args", {"tokenizer": ["x", "--api-key=" + secret]})
    assert secret not in str(caught.value).replace("extra_args.tokenizer", "")


def test_extra_args_values_that_are_values_pass():
    extra = {"max-logprobs": -1, "hf-overrides": {"a": "--b"}, "enable-lora": True, "lora-modules": ["a=/m/a"]}
    assert _validate.argument_values("extra_args", extra) == extra


@pytest.mark.parametrize("image", ["vllm/vllm-openai:v0.33.0", "inferops/vllm-cpu:0.32.0", "ubuntu",
                                   "registry.example.com:5000/team/vllm:2026-12-01",
                                   "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04", "localhost/x__y.z-w:latest",
                                   "[::1]:5000/vllm:dev", "vllm/vllm-openai@sha256:" + "a" * 64,
                                   "vllm/vllm-openai:v0.33.0@sha256:" + "0123456789abcdef" * 4])
def test_image_references_docker_takes_pass(image):
    assert _validate.image_reference("image", image) == image


@pytest.mark.parametrize("image", ["--privileged", "-v/:/host", "vllm/vllm-openai:v0.33.0 --privileged", "", "a\nb",
                                   "Vllm/Upper", "vllm//openai", "vllm/openai:", ":tag", "vllm/openai:-tag",
                                   "../../etc/passwd", "vllm/openai@sha256:short", "$(id)", "x" * 600, None, 3,
                                   ["vllm"]])
def test_image_references_that_are_not_images_are_refused(image):
    with pytest.raises(InputError, match=r"^image: .* is not an image reference; give \[registry"):
        _validate.image_reference("image", image)


@given(st.text(alphabet="abc-_./:@0123456789", max_size=300))
def test_an_accepted_image_never_reads_as_a_flag_or_holds_a_space(image):
    try:
        _validate.image_reference("image", image)
    except InputError:
        return
    assert not image.startswith("-") and " " not in image and len(image) <= 512


@pytest.mark.parametrize("check, value, message", [
    (_validate.gpu_ids, True, "gpus: give a list, not a bool"),
    (_validate.gpu_ids, "0,1", "gpus: give a list, not a str"),
    (_validate.environment, ["A=1"], "gpus: give a mapping of names to values, not a list"),
    (_validate.argument_values, "--x", "gpus: give a mapping of names to values, not a str"),
    (_validate.texts, "key", "gpus: give a list, not a str"),
    (_validate.text_mapping, ["/a"], "gpus: give a mapping of names to values, not a list"),
])
def test_containers_of_the_wrong_kind_are_refused_by_name(check, value, message):
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        check("gpus", value)


@pytest.mark.parametrize("name", ["--all", "-H", "-"])
def test_a_container_or_unit_name_cannot_be_an_option(name):
    with pytest.raises(InputError, match="^unit: .* starts with '-' and would be read as an option"):
        _validate.command_word("unit", name)
    assert _validate.command_word("unit", "vllm-chat.service") == "vllm-chat.service"


@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400), 10 ** 16])
def test_integers_past_floats_range_are_refused_not_overflowed(value):
    with pytest.raises(InputError, match=r"^max_model_len: .* is too large; give a number of at most 15 digits"):
        _validate.number("max_model_len", value, 1)


def test_an_integer_too_long_to_print_is_described_not_printed():
    with pytest.raises(InputError, match="^port: an integer of more than 4300 digits is not a TCP port"):
        _validate.port("port", 10 ** 5000)


@pytest.mark.parametrize("value", ["a\u2028b", "a\u0085b", "a\u202eb", "a\u200bb", "\ufeffa", "a\x9bb"])
def test_unicode_line_separators_and_invisible_marks_are_refused(value):
    with pytest.raises(InputError, match="^model: the value has a control character"):
        _validate.single_line("model", value)


def test_an_infinite_extra_args_value_is_refused():
    with pytest.raises(InputError, match="^extra_args.max-loras: inf is not a finite number"):
        _validate.argument_values("extra_args", {"max-loras": float("inf")})
