"""inferops.vllm.vllm_health against the lab's vLLM emulator, one test per failure mode."""

import pytest
import trustme

from ansible_run import run_module

MODEL = "facebook/opt-125m"
KEY = "health-key"


def health(host, port, **args):
    args.setdefault("url", "http://127.0.0.1:%d" % port)
    args.setdefault("api_key", KEY)
    args.setdefault("fail_on", "never")
    return run_module(host.name, "inferops.vllm.vllm_health", args)


def emulator(host, containers, port, gpu, env=None, args=(), extra=(), util="0.2", model=MODEL):
    name = host.emulator([model, "--gpu-memory-utilization", util, "--api-key", KEY] + list(args), gpus=[gpu],
                         port=port, env=env, extra=extra)
    containers.append(name)
    return name


def serving(host, containers, port, gpu, **kwargs):
    name = emulator(host, containers, port, gpu, **kwargs)
    host.wait_log(name, "Application startup complete")
    return name


def codes(result):
    return [d["code"] for d in result["diagnosis"]]


def test_healthy_instance_reports_numbers(host, containers):
    name = serving(host, containers, 8201, 1)
    result = health(host, 8201, model=MODEL, container=name)
    assert result["status"] == "healthy", result["msg"] if "msg" in result else result["checks"]
    assert result["changed"] is False and result["version"] == "0.33.0"
    assert all(check["ok"] is not False for check in result["checks"].values())
    assert result["checks"]["inference"]["ttft_ms"] < 1000
    assert result["runtime"]["running"] and result["runtime"]["restart_count"] == 0
    assert [g["index"] for g in result["gpus"]] == [1]
    assert result["gpus"][0]["memory_used_mib"] == int(0.2 * 81559)
    assert result["metrics"]["kv_cache_usage"] is not None
    assert KEY not in str(result)


def test_loading_reports_progress_then_waits_until_healthy(host, containers):
    name = emulator(host, containers, 8202, 2, env={"VLLM_EMULATOR_FAULTS": '{"load_delay": 8}'})
    host.wait_log(name, "Loading safetensors checkpoint shards:  20%")
    loading = health(host, 8202, container=name)
    assert loading["status"] == "starting"
    assert loading["progress"]["phase"] == "loading" and 0 <= loading["progress"]["loading"]["percent"] < 100
    ready = health(host, 8202, container=name, wait_for="healthy", start_period=60, fail_on="unhealthy")
    assert not ready.failed and ready["status"] == "healthy"
    assert ready["progress"]["phase"] == "serving" and ready["polls"] > 1


def test_a_wait_in_chunks_shows_the_loading_progress_and_ends_ready(host, containers):
    name = emulator(host, containers, 8214, 2, env={"VLLM_EMULATOR_FAULTS": '{"load_delay": 8}'})
    ready = health(host, 8214, container=name, wait_for="healthy", start_period=60, progress_interval=2,
                   fail_on="unhealthy")
    assert not ready.failed and ready["outcome"] == "ready" and ready["status"] == "healthy"
    shown = [line for line in ready.stderr.splitlines() if "| %s: " % name in line]
    assert any("loading the weights" in line for line in shown), ready.stderr
    assert ready["waited_s"] >= 2 and ready["polls"] > 2


def test_hang_is_unhealthy_within_timeout_plus_one_second(host, containers):
    serving(host, containers, 8203, 3)
    host.set_fault(8203, hang=True)
    result = health(host, 8203, timeout=3)
    assert result["status"] == "unhealthy"
    assert result["checks"]["health"]["ok"] is True
    assert codes(result) == ["inference_hang"]
    assert result["elapsed_ms"] <= 4000
    assert result["diagnosis"][0]["runbook"] == "playbooks/runbooks/reset.yml"


def test_engine_death(host, containers):
    name = serving(host, containers, 8204, 4)
    host.set_fault(8204, engine_dead=True)
    host.wait_log(name, "EngineDeadError")
    result = health(host, 8204, container=name)
    assert result["status"] in ("unhealthy", "down")
    assert "engine_dead" in codes(result)


def test_oom_crash_is_down_with_the_oom_runbook(host, containers):
    name = emulator(host, containers, 8205, 5, env={"VLLM_EMULATOR_FAULTS": "oom=startup"})
    host.wait_exit(name)
    result = health(host, 8205, container=name)
    assert result["status"] == "down"
    assert codes(result)[0] == "cuda_oom"
    assert result["diagnosis"][0]["runbook"] == "playbooks/runbooks/oom_recover.yml"
    assert "CUDA out of memory" in result["diagnosis"][0]["evidence"]
    assert result["runtime"]["exit_code"] == 1


def test_wait_fails_fast_on_a_crash_loop(host, containers):
    name = emulator(host, containers, 8206, 5, env={"VLLM_EMULATOR_FAULTS": "oom=startup"},
                    extra=["--restart", "always"])
    result = health(host, 8206, container=name, wait_for="healthy", start_period=300, fail_on="unhealthy")
    assert result.failed
    assert "crash-looping" in result["msg"] or "is not running" in result["msg"]
    assert result["outcome"] in ("crash_loop", "exited")
    assert result.elapsed < 30
    assert "cuda_oom" in codes(result)


def test_port_conflict_names_the_pid_holding_the_port(gpu_state, containers):
    host = gpu_state
    blocker = host.sh("setsid python3 -m http.server 8207 >/dev/null 2>&1 & echo $!").stdout.strip()
    try:
        host.sh("for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8207) 2>/dev/null && break; sleep 0.1; done")
        name = host.emulator([MODEL, "--port", "8207", "--gpu-memory-utilization", "0.2"], gpus=[6],
                             extra=["--network", "host"])
        containers.append(name)
        host.wait_exit(name)
        result = health(host, 8207, container=name)
    finally:
        host.run("kill", blocker)
    assert result["status"] in ("unhealthy", "down")
    found = [d for d in result["diagnosis"] if d["code"] == "address_in_use"]
    assert found and "Port 8207 is held by PID %s (python3)" % blocker in found[0]["message"]


def test_tokenizer_failure(host, containers):
    host.sh("mkdir -p /models/no-tok && echo '{\"hidden_size\": 512, \"num_hidden_layers\": 4}' > "
            "/models/no-tok/config.json && echo '{}' > /models/no-tok/tokenizer_config.json")
    name = emulator(host, containers, 8208, 6, model="/models/no-tok", extra=["-v", "/models:/models:ro"])
    host.wait_exit(name)
    result = health(host, 8208, container=name)
    assert result["status"] == "down" and codes(result)[0] == "tokenizer_error"


def test_slow_ttft_turns_degraded(host, containers):
    serving(host, containers, 8209, 7)
    host.set_fault(8209, slow_ttft=2.0)
    first = health(host, 8209, timeout=8, thresholds={"max_ttft_p99": 1.0})
    assert first["checks"]["inference"]["ttft_ms"] >= 2000
    second = health(host, 8209, timeout=8, thresholds={"max_ttft_p99": 1.0})
    assert second["status"] == "degraded"
    assert any(r.startswith("TTFT p99") for r in second["reasons"])


def test_deep_queue_turns_degraded(host, containers):
    serving(host, containers, 8210, 1)
    host.set_fault(8210, queue=80)
    result = health(host, 8210)
    assert result["status"] == "degraded" and result["reasons"] == ["80 requests waiting > 50"]
    failing = health(host, 8210, fail_on="degraded")
    assert failing.failed and "is degraded" in failing["msg"]


def test_wrong_api_key(host, containers):
    serving(host, containers, 8211, 2)
    result = health(host, 8211, api_key="not-the-key")
    assert result["status"] == "unhealthy" and codes(result) == ["api_key_rejected"]
    assert "not-the-key" not in str(result)


@pytest.fixture(scope="module")
def private_ca(host):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    host.run("mkdir", "-p", "/srv/health-tls")
    host.write("/srv/health-tls/ca.crt", ca.cert_pem.bytes().decode())
    host.write("/srv/health-tls/server.crt", b"".join(b.bytes() for b in cert.cert_chain_pems).decode())
    host.write("/srv/health-tls/server.key", cert.private_key_pem.bytes().decode())
    return "/srv/health-tls/ca.crt"


def test_tls_with_a_private_ca(host, containers, private_ca):
    name = emulator(host, containers, 8212, 3, args=["--ssl-certfile", "/tls/server.crt", "--ssl-keyfile",
                                                     "/tls/server.key"], extra=["-v", "/srv/health-tls:/tls:ro"])
    host.wait_log(name, "Starting vLLM server on https://")
    trusted = health(host, 8212, url="https://127.0.0.1:8212", ca_path=private_ca)
    assert trusted["status"] == "healthy"
    untrusted = health(host, 8212, url="https://127.0.0.1:8212")
    assert untrusted["status"] == "unhealthy"
    assert "certificate verification failed" in untrusted["checks"]["health"]["detail"]


def test_systemd_unit_runtime(gpu_state):
    host = gpu_state
    host.run("systemd-run", "--unit", "vllm-health-test", "-E", "CUDA_VISIBLE_DEVICES=4", "/opt/vllm/bin/vllm",
             "serve", MODEL, "--port", "8213", "--gpu-memory-utilization", "0.2", "--api-key", KEY)
    try:
        result = health(host, 8213, unit="vllm-health-test.service", wait_for="healthy", start_period=30)
        assert result["status"] == "healthy"
        assert result["runtime"]["type"] == "systemd" and result["runtime"]["active_state"] == "active"
        assert [g["index"] for g in result["gpus"]] == [4]
    finally:
        host.run("systemctl", "stop", "vllm-health-test.service", check=False)
