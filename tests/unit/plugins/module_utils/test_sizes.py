"""Memory sizes as operators write them: only SizeError comes out, whatever is written."""

import pytest
from hypothesis import given, strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils._sizes import SizeError, to_mib


@pytest.mark.parametrize("value, mib", [(40960, 40960), ("40GiB", 40960), ("512 MiB", 512), ("80GB", 76293)])
def test_sizes_in_their_usual_forms(value, mib):
    assert to_mib(value, "min_free_memory") == mib


@pytest.mark.parametrize("value", ["9" * 309, "9" * 400 + "GiB", "1" * 320 + ".5 TB"])
def test_a_number_too_large_for_a_float_is_refused_by_name(value):
    with pytest.raises(SizeError, match=r"^min_free_memory: 9{0,40}1{0,40}\.\.\. is too large to be a size"):
        to_mib(value, "min_free_memory")


@given(st.one_of(st.text(max_size=400), st.integers(), st.floats(), st.booleans(), st.none(),
                 st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{1,5})?\s?(GiB|MB|T|)\Z")))
def test_only_size_error_comes_out(value):
    try:
        assert to_mib(value, "f") >= 0
    except SizeError:
        pass


@pytest.mark.parametrize("value", ["\uff14\uff10GiB", "\u0664\u0660GiB", "40\u2028GiB", 10 ** 400])
def test_digits_of_other_scripts_separators_and_huge_integers_are_refused(value):
    with pytest.raises(SizeError, match="^min_free_memory: "):
        to_mib(value, "min_free_memory")
