# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The charts of an incident bundle: which series of an instance and of its host's GPUs are drawn, and where their
files go.

The metric names are those of the real vLLM (tests/monitoring/fixtures) and of the GPU collector, with the labels
the monitoring role's scrape configuration adds: `host` (inventory name) on every series, `vllm_instance` and
job="vllm" on an instance's. Host and instance names come from the inventory and may hold anything: in a query
they are PromQL string literals, and in a file name only [A-Za-z0-9_.-] survive, with a hash of the name when
anything was replaced, so that no name can leave the charts directory or take another's file.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import hashlib
import os
import re
import tempfile
import time

from ansible_collections.inferops.vllm.plugins.module_utils import _files, _png_chart, _prometheus_query

Chart = collections.namedtuple("Chart", "name title queries")
# A query: its legend, and the label whose value tells its series apart when it returns several (one per GPU).
Query = collections.namedtuple("Query", "legend expr per")

_RATE = "[2m]"  # two or more samples at the role's scrape intervals (15 s default) up to 60 s
_V1 = 'handler=~"/v1/.+"'

INSTANCE_CHARTS = (
    Chart("requests", "requests running and waiting", (
        Query("running", "sum(vllm:num_requests_running{%(sel)s})", None),
        Query("waiting", "sum(vllm:num_requests_waiting{%(sel)s})", None))),
    Chart("kv-cache", "KV cache usage (%)", (
        Query("used", "max(vllm:kv_cache_usage_perc{%(sel)s}) * 100", None),)),
    Chart("ttft-p95", "time to first token p95 (s)", (
        Query("p95", "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{%(sel)s}"
              + _RATE + ")))", None),)),
    Chart("generation-tokens", "generated tokens per second", (
        Query("tokens/s", "sum(rate(vllm:generation_tokens_total{%(sel)s}" + _RATE + "))", None),)),
    Chart("http-requests", "API requests per second (/v1)", (
        Query("5xx", "sum(rate(http_requests_total{%(sel)s," + _V1 + ',status="5xx"}' + _RATE + "))", None),
        Query("all", "sum(rate(http_requests_total{%(sel)s," + _V1 + "}" + _RATE + "))", None))),
)
GPU_CHARTS = (
    Chart("memory-used", "GPU memory used (GiB)", (
        Query("gpu", "inferops_gpu_memory_used_bytes{%(sel)s} / 2^30", "gpu"),)),
    Chart("utilization", "GPU utilization (%)", (
        Query("gpu", "inferops_gpu_utilization_ratio{%(sel)s} * 100", "gpu"),)),
    Chart("temperature", "GPU temperature (C)", (
        Query("gpu", "inferops_gpu_temperature_celsius{%(sel)s}", "gpu"),)),
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_HASHED = re.compile(r"-[0-9a-f]{10}\Z")


def safe_name(text):
    """A file name for `text`: the name itself when it is a plain token, otherwise its safe characters and a
    hash of the whole, so that two names never share a file and none is '.', '..' or hidden."""
    text = str(text)
    cleaned = _UNSAFE.sub("_", text)[:64].lstrip(".") or "_"
    # A plain name that ends the way a cleaned one does is hashed too: otherwise it could be given, on purpose,
    # the file name of another host's cleaned name.
    if cleaned != text or _HASHED.search(text):
        cleaned += "-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return cleaned


def selector(host, instance=None):
    if instance is None:
        return "host=%s" % _prometheus_query.promql_string(host)
    return 'job="vllm",host=%s,vllm_instance=%s' % (_prometheus_query.promql_string(host),
                                                    _prometheus_query.promql_string(instance))


def jobs(targets):
    """(host, instance or None, charts, file name prefix) for each of `targets`' instances, then its GPUs."""
    for target in targets:
        host = target["host"]
        for instance in target["instances"]:
            yield host, instance, INSTANCE_CHARTS, "vllm-%s-" % safe_name(instance)
        yield host, None, GPU_CHARTS, "gpu-"


def series_of(client, chart, sel, start, end, step):
    """[(legend, points)] of one chart; QueryError from the first query that fails."""
    drawn = []
    for query in chart.queries:
        for labels, points in client.query_range(query.expr % {"sel": sel}, start, end, step):
            legend = query.legend
            if query.per:
                legend = "%s %s" % (query.per, labels.get(query.per, "?"))
            drawn.append((legend, points))
    return drawn


def make_charts(client, targets, dest, end, range_seconds, step, total_timeout, check_mode=False):
    """Queries and draws every chart of `targets` into dest/<host>/; returns (charts, skipped, error).

    A chart whose query fails is skipped with the reason; a failure that no later query can escape (the server
    cannot be reached, refuses the credentials, is not a Prometheus) or the end of `total_timeout` stops the
    run and is the error."""
    start = end - range_seconds
    deadline = time.monotonic() + total_timeout
    charts, skipped = [], []
    for host, instance, catalogue, prefix in jobs(targets):
        sel = selector(host, instance)
        for chart in catalogue:
            if time.monotonic() > deadline:
                return charts, skipped, "stopped after %g s (total_timeout): the other charts were not drawn" \
                    % total_timeout
            try:
                drawn = series_of(client, chart, sel, start, end, step)
            except _prometheus_query.QueryError as exc:
                if exc.fatal:
                    return charts, skipped, str(exc)
                skipped.append(dict(host=host, instance=instance, chart=chart.name, reason=str(exc)))
                continue
            relative = os.path.join(safe_name(host), prefix + chart.name + ".png")
            title = "%s %s: %s" % (host, instance if instance is not None else "GPUs", chart.title)
            if not check_mode:
                write_png(dest, relative, _png_chart.render(title, drawn, start, end, max_gap=2.5 * step,
                                                            include_zero=True))
            charts.append(dict(host=host, instance=instance, chart=chart.name, path=relative, series=len(drawn),
                               points=sum(len(points) for _legend, points in drawn)))
    return charts, skipped, None


def write_png(dest, relative, data):
    """Writes dest/relative through a temporary file and a rename: a symlink at the path is replaced, never
    followed, and a symlink in place of the host's directory is refused (_files.ensure_dir)."""
    path = os.path.join(dest, relative)
    directory = os.path.dirname(path)
    root = os.path.realpath(dest)
    if not os.path.realpath(directory).startswith(root + os.sep):
        raise _files.FileError("%s is outside %s; the chart was not written" % (path, dest))
    _files.ensure_dir(directory, 0o755, os.getuid(), os.getgid())
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".inferops-")
    except OSError as exc:
        raise _files.FileError("%s could not be written: %s" % (path, exc.strerror or exc))
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(data)
        os.rename(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _files.FileError("%s could not be written: %s" % (path, exc.strerror or exc))
    return path


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
