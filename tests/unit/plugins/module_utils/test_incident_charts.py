"""Which charts an incident gets, their queries and where their files go, with a scripted Prometheus client."""

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from png_decode import decode

from ansible_collections.inferops.vllm.plugins.module_utils import _files, _incident_charts, _png_chart
from ansible_collections.inferops.vllm.plugins.module_utils._prometheus_query import QueryError

END = 1700003600.0


class FakeClient(object):
    """Answers every query with one rising series per GPU (GPU queries) or one series, and fails as told."""

    def __init__(self, fail=None):
        self.queries = []
        self.fail = fail or (lambda expr: None)

    def query_range(self, expr, start, end, step):
        self.queries.append(expr)
        error = self.fail(expr)
        if error:
            raise error
        points = [(start + i * step, float(i)) for i in range(int((end - start) // step) + 1)]
        if expr.startswith("inferops_gpu_"):
            return [({"gpu": str(gpu)}, points) for gpu in range(2)]
        return [({}, points)]


def run(tmp_path, targets, client=None, check_mode=False):
    client = client or FakeClient()
    return client, _incident_charts.make_charts(client, targets, str(tmp_path / "charts"), END, 3600, 30, 60,
                                                check_mode)


def test_every_chart_of_every_instance_and_host_is_written(tmp_path):
    client, (charts, skipped, error) = run(tmp_path, [{"host": "gpu-1", "instances": ["opt", "qwen"]}])
    assert error is None and skipped == []
    names = sorted(chart["path"] for chart in charts)
    expected = ["gpu-1/gpu-%s.png" % c.name for c in _incident_charts.GPU_CHARTS] + \
        ["gpu-1/vllm-%s-%s.png" % (i, c.name) for i in ("opt", "qwen") for c in _incident_charts.INSTANCE_CHARTS]
    assert names == sorted(expected)
    for chart in charts:
        image = decode((tmp_path / "charts" / chart["path"]).read_bytes())
        assert _png_chart.PALETTE[0] in image.colours()
    gpu = [c for c in charts if c["chart"] == "memory-used"][0]
    assert gpu["series"] == 2 and gpu["points"] == 2 * 121 and gpu["instance"] is None
    assert any('vllm_instance="qwen"' in q and "vllm:time_to_first_token_seconds_bucket" in q for q in client.queries)


def test_a_refused_query_skips_its_chart_only(tmp_path):
    client = FakeClient(lambda expr: QueryError("HTTP 400 bad_data") if "kv_cache" in expr else None)
    _client, (charts, skipped, error) = run(tmp_path, [{"host": "h", "instances": ["a"]}], client)
    assert error is None
    assert [(s["chart"], s["reason"]) for s in skipped] == [("kv-cache", "HTTP 400 bad_data")]
    assert len(charts) == len(_incident_charts.INSTANCE_CHARTS) + len(_incident_charts.GPU_CHARTS) - 1


def test_an_unreachable_prometheus_stops_at_the_first_query(tmp_path):
    client = FakeClient(lambda expr: QueryError("http://p:9090/api/v1/query_range: connect: refused", fatal=True))
    _client, (charts, skipped, error) = run(tmp_path, [{"host": "h", "instances": ["a", "b"]}], client)
    assert charts == [] and skipped == [] and "connect: refused" in error
    assert len(client.queries) == 1
    assert not (tmp_path / "charts").exists()


def test_check_mode_writes_nothing(tmp_path):
    _client, (charts, _skipped, _error) = run(tmp_path, [{"host": "h", "instances": ["a"]}], check_mode=True)
    assert charts and not (tmp_path / "charts").exists()


@pytest.mark.parametrize("host, instance", [("../../x", "../../y"), ("..", "."), ("a/b", "a\nb"), (".hidden", "-")])
def test_hostile_names_stay_inside_the_charts_directory(tmp_path, host, instance):
    client, (charts, _skipped, _error) = run(tmp_path, [{"host": host, "instances": [instance]}])
    root = os.path.realpath(str(tmp_path / "charts"))
    for chart in charts:
        path = os.path.realpath(os.path.join(root, chart["path"]))
        assert path.startswith(root + os.sep) and os.path.isfile(path)
    assert sorted(os.listdir(str(tmp_path))) == ["charts"]
    # In the queries, the names are string literals: a quote or newline cannot end them.
    assert all("\n" not in q for q in client.queries)


def test_a_symlink_in_place_of_a_host_directory_is_refused(tmp_path):
    (tmp_path / "charts").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(str(tmp_path / "elsewhere"), str(tmp_path / "charts" / "h"))
    with pytest.raises(_files.FileError):
        run(tmp_path, [{"host": "h", "instances": []}])
    assert os.listdir(str(tmp_path / "elsewhere")) == []


def test_a_symlink_at_a_chart_path_is_replaced_not_followed(tmp_path):
    (tmp_path / "charts" / "h").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(str(victim), str(tmp_path / "charts" / "h" / "gpu-temperature.png"))
    run(tmp_path, [{"host": "h", "instances": []}])
    assert victim.read_text() == "keep"
    assert not os.path.islink(str(tmp_path / "charts" / "h" / "gpu-temperature.png"))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100), st.text(max_size=100))
def test_safe_names_are_plain_tokens_and_tell_names_apart(first, second):
    a, b = _incident_charts.safe_name(first), _incident_charts.safe_name(second)
    assert re.match(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\Z", a)
    assert a not in (".", "..") and len(a) <= 64 + 11
    if first != second:
        assert a != b


def test_a_plain_name_cannot_take_the_file_of_a_cleaned_one():
    cleaned = _incident_charts.safe_name("a/b")
    assert cleaned.startswith("a_b-")
    assert _incident_charts.safe_name(cleaned) != cleaned
    assert _incident_charts.safe_name("opt-small") == "opt-small"
