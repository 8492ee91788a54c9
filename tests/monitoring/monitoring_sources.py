"""What the fleet's exporters really export, for the tests that hold rules and dashboards to it:

- the real vLLM: its /metrics captured from the real-vLLM lab (fixtures/real-vllm-0.32.0.metrics; the conformance
  suite checks that capture against the live server);
- the GPU collector: its own rendering, read back through Debian's node exporter's textfile collector;
- Debian's node exporter and blackbox exporter, run here.
"""
import contextlib
import functools
import io
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.inferops.vllm.plugins.module_utils import _gpu_metrics, _watchdog
from local_ports import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REAL_VLLM_METRICS = os.path.join(HERE, "fixtures", "real-vllm-0.32.0.metrics")
# The gateway's HAProxy 2.6 /metrics with the gateway role's configuration (tests/gateway keeps it equal to the
# live exporter's names).
GATEWAY_METRICS = os.path.join(HERE, "fixtures", "haproxy-2.6-gateway.metrics")


# dcgm-exporter's /metrics for the monitoring role's counters file, in the exporter's own rendering (the fixture's
# header names the sources).
DCGM_EXPORTER_METRICS = os.path.join(HERE, "fixtures", "dcgm-exporter.metrics")


def sample_names(text):
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@functools.lru_cache(maxsize=None)
def vllm_metric_names():
    with open(REAL_VLLM_METRICS) as handle:
        return frozenset(sample_names(handle.read()))


@functools.lru_cache(maxsize=None)
def dcgm_metric_names():
    """The names as written: Prometheus stores a counter under its own name, while prometheus_client's parser
    would append _total to DCGM_FI_DEV_ECC_DBE_VOL_TOTAL (a counter whose name does not end in a lowercase _total)."""
    with open(DCGM_EXPORTER_METRICS) as handle:
        text = handle.read()
    sample_names(text)  # it parses as the text format
    return frozenset(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{", text, re.M))


@functools.lru_cache(maxsize=None)
def gateway_metric_names():
    with open(GATEWAY_METRICS) as handle:
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


def watchdog_text():
    """What the vllm role's watchdog writes for the textfile collector, by its own code, for one instance."""
    config = _watchdog.load_config(json.dumps({"instances": [{"name": "chat", "port": 8000, "model": "m"}],
                                               "state_file": os.devnull}))
    return _watchdog.Watchdog(config, actions=object(), out=io.StringIO()).metrics()


@functools.lru_cache(maxsize=None)
def _node_exporter_scrape(binary):
    with tempfile.TemporaryDirectory() as textfiles:
        with open(os.path.join(textfiles, "inferops_gpu.prom"), "w") as handle:
            handle.write(collector_text())
        with open(os.path.join(textfiles, _watchdog.METRICS_FILE), "w") as handle:
            handle.write(watchdog_text())
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


def watchdog_metric_names(tool):
    """The watchdog's names, as Debian's node exporter read them from its textfile directory."""
    return frozenset(name for name in sample_names(node_exporter_text(tool)) if name.startswith("inferops_watchdog_"))


# The systemd collector needs systemd's D-Bus, which this test machine lacks: these names are held to the strings
# of the node exporter's binary instead (the collector builds them as node_systemd_ + the suffix).
SYSTEMD_SUFFIXES = ("service_restart_total", "unit_state")


def node_exporter_metric_names(tool):
    names = set(sample_names(node_exporter_text(tool)))
    with open(tool("prometheus-node-exporter"), "rb") as handle:
        binary = handle.read()
    names.update("node_systemd_" + suffix for suffix in SYSTEMD_SUFFIXES if suffix.encode() in binary)
    return frozenset(names)


# The keys of the tests' certificates: P-256, which openssl makes in milliseconds where an RSA key takes up to a
# second of CPU (nothing here depends on the kind of key).
NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]


def certificate(work, days, name="127.0.0.1", ca=None, openssl="openssl"):
    """A certificate for `name` (IP or DNS, in its subjectAltName) valid for `days` from now, self-signed or signed
    by `ca` (a (cert, key) pair); returns (cert, key) paths in `work`."""
    stem = os.path.join(work, "%s-%dd" % (name, days))
    key, cert = stem + ".key", stem + ".crt"
    san = "subjectAltName=%s:%s" % ("IP" if re.match(r"^[0-9.]+$|:", name) else "DNS", name)
    if ca is None:
        argv = [openssl, "req", "-x509"] + NEW_KEY + ["-nodes", "-keyout", key, "-out", cert, "-days", str(days),
                                                      "-subj", "/CN=" + name, "-addext", san]
        subprocess.run(argv, check=True, capture_output=True)
    else:
        argv = [openssl, "req"] + NEW_KEY + ["-nodes", "-keyout", key, "-out", stem + ".csr", "-subj", "/CN=" + name]
        subprocess.run(argv, check=True, capture_output=True)
        with open(stem + ".ext", "w") as handle:
            handle.write(san + "\n")
        subprocess.run([openssl, "x509", "-req", "-in", stem + ".csr", "-CA", ca[0], "-CAkey", ca[1],
                        "-CAcreateserial", "-days", str(days), "-extfile", stem + ".ext", "-out", cert],
                       check=True, capture_output=True)
    return cert, key


def wait_for_port(port, deadline=20.0):
    end = time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def tls_server(cert, key, openssl="openssl"):
    """`openssl s_server -www` serving `cert` on a free loopback port; yields the port once it accepts."""
    port = free_port()
    with running([openssl, "s_server", "-quiet", "-accept", "127.0.0.1:%d" % port, "-cert", cert, "-key", key,
                  "-www"]):
        wait_for_port(port)
        yield port


@contextlib.contextmanager
def blackbox_exporter(binary, config):
    """The blackbox exporter with the module configuration `config` on a free loopback port; yields the port once
    it answers."""
    port = free_port()
    with running([binary, "--config.file=%s" % config, "--web.listen-address=127.0.0.1:%d" % port]):
        scrape("http://127.0.0.1:%d/metrics" % port)
        yield port


def probe(exporter_port, module, target, attempts=50):
    """The exporter's answer to one probe of `target`, retried until probe_success is 1."""
    for _attempt in range(attempts):
        text = scrape("http://127.0.0.1:%d/probe?module=%s&target=%s" % (exporter_port, module, target))
        if re.search(r"^probe_success 1", text, re.M):
            return text
        time.sleep(0.2)
    raise AssertionError("the blackbox exporter's %s probe of %s never succeeded:\n%s" % (module, target, text))


@functools.lru_cache(maxsize=None)
def _blackbox_probe(binary, openssl="openssl"):
    """Debian's blackbox exporter probing a TLS server that openssl serves with a fresh self-signed certificate."""
    with tempfile.TemporaryDirectory() as work:
        cert, key = certificate(work, 20, openssl=openssl)
        config = os.path.join(work, "blackbox.yml")
        with open(config, "w") as handle:
            handle.write("modules:\n  tls_connect:\n    prober: tcp\n    timeout: 5s\n    tcp:\n      tls: true\n"
                         "      tls_config:\n        insecure_skip_verify: true\n")
        with tls_server(cert, key, openssl) as tls_port, blackbox_exporter(binary, config) as exporter_port:
            return probe(exporter_port, "tls_connect", "127.0.0.1:%d" % tls_port)


def blackbox_probe_text(tool):
    return _blackbox_probe(tool("prometheus-blackbox-exporter"))


def blackbox_probe_metric_names(tool):
    return frozenset(sample_names(blackbox_probe_text(tool)))
