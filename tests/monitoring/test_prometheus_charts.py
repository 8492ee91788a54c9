"""diagnose.yml's charts against the real Prometheus (Debian's, from build/tools/bin), backfilled with an hour of
a host's series by promtool (tests/unit/backfilled_prometheus.py): the queries run, their answers are read, the
PNG files show the data and its hole; basic auth and refused queries as the real server answers them; and the
module through Ansible, with its password kept out of the output."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

import backfilled_prometheus as bp
from monitoring_sources import collector_metric_names, vllm_metric_names
from png_decode import decode

from ansible_collections.inferops.vllm.plugins.module_utils import _incident_charts, _png_chart
from ansible_collections.inferops.vllm.plugins.module_utils._prometheus_query import Prometheus, QueryError

HOST, INSTANCE = "gpu-node-01", "opt-small"

pytestmark = pytest.mark.skipif(not (bp.binary("prometheus") and bp.binary("promtool")),
                                reason="no prometheus/promtool in build/tools/bin (tools/fetch-prometheus-tools.sh)")


def test_the_charts_use_only_metric_names_the_fleet_exports():
    used = set()
    for chart in _incident_charts.INSTANCE_CHARTS + _incident_charts.GPU_CHARTS:
        for query in chart.queries:
            used.update(re.findall(r"(?:vllm:|inferops_gpu_|http_)[a-z_:]+", query.expr))
    assert used
    missing = used - vllm_metric_names() - collector_metric_names()
    assert not missing, "not exported by the real vLLM nor the GPU collector: %s" % sorted(missing)


@pytest.fixture(scope="module")
def prometheus():
    end = time.time()
    with bp.running(HOST, INSTANCE, end) as url:
        yield url, end


def test_every_chart_is_drawn_from_the_real_prometheus(prometheus, tmp_path):
    url, end = prometheus
    dest = str(tmp_path / "charts")
    charts, skipped, error = _incident_charts.make_charts(Prometheus(url), [{"host": HOST, "instances": [INSTANCE]}],
                                                          dest, end, 3600, 30, 60)
    assert error is None and skipped == []
    assert len(charts) == len(_incident_charts.INSTANCE_CHARTS) + len(_incident_charts.GPU_CHARTS)
    for chart in charts:
        assert chart["points"] > 60, chart  # each query found the backfilled hour
        decode((tmp_path / "charts" / chart["path"]).read_bytes())
    by_name = {chart["chart"]: chart for chart in charts}
    assert by_name["memory-used"]["series"] == len(bp.GPUS)
    assert by_name["requests"]["series"] == 2 and by_name["http-requests"]["series"] == 2


def test_the_requests_chart_shows_the_data_and_its_hole(prometheus, tmp_path):
    url, end = prometheus
    client = Prometheus(url)
    # The values come back as they were backfilled.
    (labels, points), = client.query_range('vllm:num_requests_running{host="%s"}' % HOST, end - 3600, end, 30)
    assert labels["vllm_instance"] == INSTANCE
    start = int(end) - bp.SPAN
    for t, value in points:
        offset = int(t) - start
        sample = min(offset - offset % bp.STEP, bp.SPAN - bp.STEP)  # the last sample answers after it
        expected = bp.requests_running(sample)
        if expected is not None:
            assert value == expected, (offset, value)
    charts, _skipped, _error = _incident_charts.make_charts(client, [{"host": HOST, "instances": [INSTANCE]}],
                                                            str(tmp_path), end, 3600, 30, 60)
    requests = [chart for chart in charts if chart["chart"] == "requests"][0]
    image = decode((tmp_path / requests["path"]).read_bytes())
    left, right, top, bottom = _png_chart.layout([("running", []), ("waiting", [])])
    running = _png_chart.PALETTE[0]

    def has_line(offset):
        x = left + int(round((start + offset - (end - 3600)) / 3600.0 * (right - left)))
        return any(image.pixel(x, y) == running for y in range(top, bottom + 1))

    # Prometheus carries the last sample 5 minutes into the hole (its lookback): the gap is what is left.
    hole = list(range(bp.HOLE[0] + 330, bp.HOLE[1] - 30, 30))
    assert hole and not any(has_line(offset) for offset in hole)
    assert all(has_line(offset) for offset in range(300, bp.HOLE[0] - 60, 60))
    assert all(has_line(offset) for offset in range(bp.HOLE[1] + 60, bp.SPAN - 120, 60))


def test_a_query_the_real_prometheus_refuses_is_not_fatal(prometheus):
    url, end = prometheus
    with pytest.raises(QueryError) as caught:
        Prometheus(url).query_range("sum(", end - 3600, end, 30)
    assert not caught.value.fatal and "HTTP 400" in str(caught.value) and "bad_data" in str(caught.value)


def test_tls_against_the_real_prometheus(tmp_path):
    end = time.time()
    with bp.running(HOST, INSTANCE, end, tls=True) as (url, ca):
        with pytest.raises(QueryError) as caught:
            Prometheus(url).query_range("up", end - 60, end, 30)  # its CA is not among the system's
        assert caught.value.fatal and "certificate verification failed" in str(caught.value), str(caught.value)
        for client in (Prometheus(url, ca_path=ca), Prometheus(url, validate_certs=False)):
            charts, skipped, error = _incident_charts.make_charts(client, [{"host": HOST, "instances": [INSTANCE]}],
                                                                  str(tmp_path), end, 3600, 30, 60)
            assert error is None and skipped == [] and all(chart["points"] > 60 for chart in charts)


def test_basic_auth_against_the_real_prometheus(tmp_path):
    end = time.time()
    with bp.running(HOST, INSTANCE, end, basic_auth=True) as url:
        with pytest.raises(QueryError) as caught:
            Prometheus(url, username=bp.USER, password=bp.PASSWORD + "-wrong").query_range("up", end - 60, end, 30)
        assert caught.value.fatal and "HTTP 401" in str(caught.value) and bp.PASSWORD not in str(caught.value)
        charts, skipped, error = _incident_charts.make_charts(
            Prometheus(url, username=bp.USER, password=bp.PASSWORD), [{"host": HOST, "instances": [INSTANCE]}],
            str(tmp_path), end, 3600, 30, 60)
        assert error is None and skipped == [] and all(chart["points"] > 60 for chart in charts)


PLAY = """\
- name: Charts
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Charts
      inferops.vllm.prometheus_charts:
        url: "{{ url }}"
        dest: "{{ dest }}"
        username: "{{ username }}"
        password: "{{ password }}"
        targets: "{{ targets }}"
"""


def _module(args, check=False):
    """The module run by ansible-playbook on the controller; its JSON result and the whole output."""
    root = bp.ROOT
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(root, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(root, "build", "collections"),
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_NOCOLOR="1")
    play = os.path.join(os.path.dirname(args), "play.yml")
    with open(play, "w") as handle:
        handle.write(PLAY)
    # The variables travel in a file, as a vault's would: the password is not in any argv either.
    argv = ["ansible-playbook", play, "-i", "localhost,", "-c", "local", "-e",
            "ansible_python_interpreter=%s" % sys.executable, "-e", "@" + args] + (["--check"] if check else [])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False)
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return result, proc.stdout + proc.stderr


def test_the_module_through_ansible(tmp_path):
    end = time.time()
    with bp.running(HOST, "../../escape", end, basic_auth=True) as url:
        args = tmp_path / "args.json"
        dest = tmp_path / "charts"
        args.write_text(json.dumps({"url": url, "dest": str(dest), "username": bp.USER, "password": bp.PASSWORD,
                                    "targets": [{"host": HOST, "instances": ["../../escape"]}]}))
        result, output = _module(str(args), check=True)
        assert not result.get("failed"), result
        assert result["changed"] and result["charts"] and not dest.exists()
        result, output = _module(str(args))
        assert not result.get("failed") and result["error"] is None, result
        assert bp.PASSWORD not in output
        written = sorted(str(path.relative_to(dest)) for path in dest.rglob("*.png"))
        assert written == sorted(chart["path"] for chart in result["charts"])
        assert all(not name.startswith("..") and "/../" not in name for name in written)
        assert all(chart["points"] > 60 for chart in result["charts"])
    # Gone: the module reports it, and fails nothing.
    result, output = _module(str(args))
    assert not result.get("failed") and result["charts"] == []
    assert url + "/api/v1/query_range" in result["error"] and "connect" in result["error"]
    assert bp.PASSWORD not in output
