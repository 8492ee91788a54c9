"""What the fleet's exporters really export, for the tests that hold rules and dashboards to it:

- the real vLLM: its /metrics captured from the real-vLLM lab (fixtures/real-vllm-0.32.0.metrics; the conformance
  suite checks that capture against the live server);
- the GPU collector: its own rendering, read back through Debian's node exporter's textfile collector;
- Debian's node exporter and blackbox exporter, run here.
"""
import contextlib
import functools
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
REAL_VLLM_METRICS = os.path.join(HERE, "fixtures", "real-vllm-0.32.0.metrics")


def sample_names(text):
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@functools.lru_cache(maxsize=None)
def vllm_metric_names():
    with open(REAL_VLLM_METRICS) as handle:
        return frozenset(sample_names(handle.read()))


def vllm_histogram_buckets(family):
    """The upper bounds (without +Inf) of a histogram of the real server, in order."""
    with open(REAL_VLLM_METRICS) as handle:
        text = handle.read()
    bounds = []
    for line in text.splitlines():
        match = re.match(r"%s_bucket\{.*le=\"([^\"]+)\"" % re.escape(family), line)
        if match and match.group(1) != "+Inf" and float(match.group(1)) not in bounds:
            bounds.append(float(match.group(1)))
    return bounds


def collector_text():
    """The collector's file for a host with every reading present, one Xid and one throttle reason."""
    device = {"index": 0, "uuid": "GPU-0a1b", "name": "NVIDIA H100 80GB HBM3", "pci_bus_id": "00000000:3B:00.0",
              "memory_used_mib": 1000, "memory_total_mib": 81559, "utilization_gpu": 40, "temperature_c": 50,
              "power_usage_w": 120.5, "power_limit_w": 700.0, "ecc_uncorrected_volatile": 0,
              "clocks_event_reasons": 0}
    return _gpu_metrics.render({"count": 1, "devices": [device]}, {("00000000:3B:00.0", "79"): 1}, True,
                               time.time())


def free_port():
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(url, deadline=20.0):
    """The body of `url`, retried while the server starts."""
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def running(argv):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@functools.lru_cache(maxsize=None)
def _node_exporter_scrape(binary):
    with tempfile.TemporaryDirectory() as textfiles:
        with open(os.path.join(textfiles, "inferops_gpu.prom"), "w") as handle:
            handle.write(collector_text())
        port = free_port()
        with running([binary, "--web.listen-address=127.0.0.1:%d" % port,
                      "--collector.textfile.directory=%s" % textfiles]):
            return scrape("http://127.0.0.1:%d/metrics" % port)


def node_exporter_text(tool):
    return _node_exporter_scrape(tool("prometheus-node-exporter"))


def collector_metric_names(tool=None):
    """The collector's names; with `tool`, as Debian's node exporter read them from its textfile directory."""
    if tool is None:
        return frozenset(sample_names(collector_text()))
    text = node_exporter_text(tool)
    return frozenset(name for name in sample_names(text) if name.startswith("inferops_gpu_"))


# The systemd collector needs systemd's D-Bus, which this test machine lacks: these names are held to the strings
# of the node exporter's binary instead (the collector builds them as node_systemd_ + the suffix).
SYSTEMD_SUFFIXES = ("service_restart_total", "unit_state")


def node_exporter_metric_names(tool):
    names = set(sample_names(node_exporter_text(tool)))
    with open(tool("prometheus-node-exporter"), "rb") as handle:
        binary = handle.read()
    names.update("node_systemd_" + suffix for suffix in SYSTEMD_SUFFIXES if suffix.encode() in binary)
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def _blackbox_probe(binary, openssl="openssl"):
    """Debian's blackbox exporter probing a TLS server that openssl serves with a fresh self-signed certificate."""
    with tempfile.TemporaryDirectory() as work:
        key, cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "20", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
        config = os.path.join(work, "blackbox.yml")
        with open(config, "w") as handle:
            handle.write("modules:\n  tls_connect:\n    prober: tcp\n    timeout: 5s\n    tcp:\n      tls: true\n"
                         "      tls_config:\n        insecure_skip_verify: true\n")
        tls_port, exporter_port = free_port(), free_port()
        with running([openssl, "s_server", "-quiet", "-accept", "127.0.0.1:%d" % tls_port, "-cert", cert,
                      "-key", key, "-www"]), \
                running([binary, "--config.file=%s" % config, "--web.listen-address=127.0.0.1:%d" % exporter_port]):
            scrape("http://127.0.0.1:%d/metrics" % exporter_port)
            for _attempt in range(50):
                text = scrape("http://127.0.0.1:%d/probe?module=tls_connect&target=127.0.0.1:%d"
                              % (exporter_port, tls_port))
                if re.search(r"^probe_success 1", text, re.M):
                    return text
                time.sleep(0.2)
            raise AssertionError("the blackbox exporter's TLS probe never succeeded:\n" + text)


def blackbox_probe_text(tool):
    return _blackbox_probe(tool("prometheus-blackbox-exporter"))


def blackbox_probe_metric_names(tool):
    return frozenset(sample_names(blackbox_probe_text(tool)))
