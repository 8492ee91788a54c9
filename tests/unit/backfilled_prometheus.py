"""A real Prometheus (Debian's, from build/tools/bin) holding an hour of a host's series, backfilled with
`promtool tsdb create-blocks-from openmetrics`: what the diagnose charts are drawn from in the tests.

The series are those the monitoring role scrapes, with its labels (job, host, vllm_instance; gpu for the GPU
collector's), and one known hole: the instance's requests-running series has no sample from minute 20 to minute
35 of the hour, so that a chart can be checked for a gap where data is missing.
"""

import contextlib
import os
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from local_ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "build", "tools", "bin")
STEP = 15
SPAN = 3600
HOLE = (20 * 60, 35 * 60)  # seconds into the hour; Prometheus bridges the first 5 minutes (its lookback)
USER = "oncall"
PASSWORD = "charts-test-password-7731"
# bcrypt of PASSWORD (cost 4): Prometheus's web config holds hashes only.
PASSWORD_HASH = "$2b$04$TbkvInWRYvZwLLOZLW0C6ehkFMf4ZKo1qnZdRWssbWZCJaa5OTjBK"
GPUS = ("0", "1")


def binary(name):
    path = os.path.join(BIN, name)
    return path if os.access(path, os.X_OK) else None


def requests_running(offset):
    """The backfilled value of vllm:num_requests_running at `offset` seconds into the hour (None in the hole)."""
    if HOLE[0] <= offset < HOLE[1]:
        return None
    return float((offset // 60) % 9)


def openmetrics(host, instance, end):
    """An hour of samples, ending at `end`, in the OpenMetrics text format promtool backfills from."""
    start = int(end) - SPAN
    vllm = '{job="vllm",host="%s",vllm_instance="%s"' % (host, instance)
    families = {}

    def add(name, labels, offset, value):
        families.setdefault(name, []).append("%s%s} %r %d" % (name, labels, value, start + offset))

    for offset in range(0, SPAN, STEP):
        minute = offset / 60.0
        running = requests_running(offset)
        if running is not None:
            add("vllm:num_requests_running", vllm, offset, running)
        add("vllm:num_requests_waiting", vllm, offset, float(max(0, int(minute) - 40)))
        add("vllm:kv_cache_usage_perc", vllm, offset, 0.2 + 0.75 * minute / 60)
        add("vllm:generation_tokens_total", vllm, offset, float(offset * 40))
        done = offset // STEP
        for bound, share in (("0.1", 0.5), ("0.5", 0.8), ("1.0", 0.95), ("+Inf", 1.0)):
            add("vllm:time_to_first_token_seconds_bucket", vllm + ',le="%s"' % bound, offset, float(int(done * 10 *
                                                                                                        share)))
        add("http_requests_total", vllm + ',handler="/v1/completions",method="POST",status="2xx"', offset,
            float(done * 10))
        add("http_requests_total", vllm + ',handler="/v1/completions",method="POST",status="5xx"', offset,
            float(done * (1 if minute > 45 else 0)))
        for gpu in GPUS:
            labels = '{job="node",host="%s",gpu="%s"' % (host, gpu)
            add("inferops_gpu_memory_used_bytes", labels, offset, float((40 + int(gpu) * 10) * 2 ** 30))
            add("inferops_gpu_temperature_celsius", labels, offset, 50.0 + int(gpu) * 5 + minute / 6)
            add("inferops_gpu_utilization_ratio", labels, offset, 0.3 + 0.1 * int(gpu) + 0.4 * (int(minute) % 2))
    lines = []
    for name, samples in families.items():
        lines.append("# TYPE %s unknown" % name)
        lines.extend(samples)
    return "\n".join(lines) + "\n# EOF\n"


def make_tls(work):
    """A CA and a certificate for 127.0.0.1 signed by it, made by openssl; (ca, cert, key) paths."""
    paths = [os.path.join(work, name) for name in ("ca.crt", "ca.key", "web.crt", "web.key", "web.csr", "san.cnf")]
    ca, ca_key, cert, key, csr, san = paths
    with open(san, "w") as handle:
        handle.write("subjectAltName=IP:127.0.0.1\n")
    for argv in (["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
                  "-subj", "/CN=inferops charts test CA"],
                 ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                 ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days",
                  "2", "-extfile", san]):
        subprocess.run(["openssl"] + argv, check=True, capture_output=True, timeout=60)
    return ca, cert, key


@contextlib.contextmanager
def running(host, instance, end=None, basic_auth=False, tls=False):
    """Yields the URL of a Prometheus holding the hour before `end` (now) of `host`'s series; stops it after.
    With tls, yields (url, CA file) instead, the server's certificate signed by that CA."""
    prometheus, promtool = binary("prometheus"), binary("promtool")
    end = time.time() if end is None else end
    with tempfile.TemporaryDirectory(prefix="inferops-prom-") as work:
        source = os.path.join(work, "series.om")
        with open(source, "w") as handle:
            handle.write(openmetrics(host, instance, end))
        data = os.path.join(work, "data")
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", source, data], check=True,
                       capture_output=True, timeout=120)
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as handle:
            handle.write("global:\n  scrape_interval: 15s\n")
        argv = [prometheus, "--config.file=" + config, "--storage.tsdb.path=" + data,
                "--web.listen-address=127.0.0.1:%d" % free_port()]
        web = os.path.join(work, "web.yml")
        with open(web, "w") as handle:
            if basic_auth:
                handle.write("basic_auth_users:\n  %s: '%s'\n" % (USER, PASSWORD_HASH))
            if tls:
                ca, cert, key = make_tls(work)
                handle.write("tls_server_config:\n  cert_file: %s\n  key_file: %s\n" % (cert, key))
        argv.append("--web.config.file=" + web)
        url = ("https://" if tls else "http://") + argv[3].split("=", 1)[1]
        log = open(os.path.join(work, "prometheus.log"), "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, proc, os.path.join(work, "prometheus.log"), ca if tls else None)
            yield (url, ca) if tls else url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _wait_ready(url, proc, log_path, ca=None, deadline=30.0):
    end = time.monotonic() + deadline
    context = ssl.create_default_context(cafile=ca) if ca else None
    while True:
        if proc.poll() is not None:
            with open(log_path) as handle:
                raise RuntimeError("prometheus exited with %s:\n%s" % (proc.returncode, handle.read()[-3000:]))
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2, context=context):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # basic auth on: it answers, so it is up
                return
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError("prometheus did not become ready at %s in %g s" % (url, deadline))
        time.sleep(0.2)
