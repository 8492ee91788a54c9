"""diagnose.yml's charts end to end, on one lab host: the runbook collects from the host as always and draws the
host's last hour from a real Prometheus on the controller (Debian's, backfilled by promtool with series labelled
with the lab host's name, tests/unit/backfilled_prometheus.py), over TLS with its own CA and basic auth; the charts are read back out of
the bundle. Then the same with a Prometheus that is gone: the bundle is still made and the summary says why.

Read-only on the lab host (diagnose.yml collects into a temporary directory it removes), so it can run beside
other tests of the lab."""

import json
import os
import re
import subprocess
import tarfile
import time

import pytest

import backfilled_prometheus as bp
from ansible_run import INVENTORY, ROOT, ansible_env
from png_decode import decode

from ansible_collections.inferops.vllm.plugins.module_utils import _incident_charts, _png_chart

DIAGNOSE = os.path.join(ROOT, "playbooks", "runbooks", "diagnose.yml")
INSTANCE = "opt-small"  # inventories/lab/group_vars/vllm_hosts.yml

pytestmark = pytest.mark.skipif(not (bp.binary("prometheus") and bp.binary("promtool")),
                                reason="no prometheus/promtool in build/tools/bin (tools/fetch-prometheus-tools.sh)")


def diagnose(host, tmp_path, extra):
    # The password travels in a vars file, as a vault's would, never in argv.
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(dict(extra, diag_output_dir=str(tmp_path / "out"), instances=[INSTANCE],
                                          diag_health_timeout=3)))
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    proc = subprocess.run(["ansible-playbook", DIAGNOSE, "-i", INVENTORY, "--limit", host, "-e", "@%s" % extra_file],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    bundles = list((tmp_path / "out").glob("diagnose-*.tar.gz"))
    assert len(bundles) == 1, proc.stdout[-2000:]
    files = {}
    with tarfile.open(str(bundles[0])) as bundle:
        for member in bundle.getmembers():
            if member.isfile():
                files[member.name.lstrip("./")] = bundle.extractfile(member).read()
    return proc.stdout, files


def test_the_bundle_holds_charts_of_the_last_hour(host, tmp_path):
    with bp.running(host.name, INSTANCE, time.time(), basic_auth=True, tls=True) as (url, ca):
        extra = {"diag_prometheus_url": url, "diag_prometheus_ca_path": ca, "diag_prometheus_username": bp.USER,
                 "diag_prometheus_password": bp.PASSWORD}
        output, files = diagnose(host.name, tmp_path, extra)
    assert "%s.tar.gz" % host.name in files  # the host's own part, as before
    expected = ["charts/%s/vllm-%s-%s.png" % (host.name, INSTANCE, c.name) for c in _incident_charts.INSTANCE_CHARTS] \
        + ["charts/%s/gpu-%s.png" % (host.name, c.name) for c in _incident_charts.GPU_CHARTS]
    assert sorted(name for name in files if name.startswith("charts/")) == sorted(expected)
    for name in expected:
        image = decode(files[name])
        left, right, top, bottom = _png_chart.layout([])
        # Every chart shows data: the series' colour in the plot, not the "no data" chart.
        assert set(_png_chart.PALETTE) & {image.pixel(x, y) for x in range(left, right + 1)
                                          for y in range(top, bottom - 30)}, name
    assert "charts: %d PNG files under charts/ in the bundle, from %s" % (len(expected), url) in output
    assert "%s charts: vllm-%s-requests.png, vllm-%s-kv-cache.png" % (host.name, INSTANCE, INSTANCE) in output
    assert "without data" not in output
    assert bp.PASSWORD not in output


def test_a_prometheus_that_is_gone_leaves_the_bundle_and_says_why(host, tmp_path):
    url = "http://127.0.0.1:%d" % bp.free_port()
    output, files = diagnose(host.name, tmp_path, {"diag_prometheus_url": url})
    assert "%s.tar.gz" % host.name in files
    assert not [name for name in files if name.startswith("charts/")]
    assert re.search(r"charts skipped: %s/api/v1/query_range: connect: " % re.escape(url), output), output[-2000:]
    assert "Traceback" not in output


def test_a_url_that_is_not_one_is_refused_before_collecting(host, tmp_path):
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps({"diag_prometheus_url": "http://user:pw@p:9090", "instances": [INSTANCE],
                                      "diag_output_dir": str(tmp_path / "out")}))
    env = ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOAD_CALLBACK_PLUGINS="0")
    proc = subprocess.run(["ansible-playbook", DIAGNOSE, "-i", INVENTORY, "--limit", host.name, "-e",
                           "@%s" % extra_file], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode != 0
    assert "diag_prometheus_url is not an http(s) URL" in proc.stdout and "diag_prometheus_username" in proc.stdout
    assert not (tmp_path / "out").exists()
    assert "user:pw" not in proc.stdout  # the URL's credentials are not echoed


def test_without_a_prometheus_the_summary_says_so_once(host, tmp_path):
    output, files = diagnose(host.name, tmp_path, {"monitoring_prometheus_group": "no_such_group"})
    assert "%s.tar.gz" % host.name in files and not [name for name in files if name.startswith("charts/")]
    assert output.count("charts: none, no Prometheus in the inventory (group no_such_group) and no "
                        "diag_prometheus_url") == 1
