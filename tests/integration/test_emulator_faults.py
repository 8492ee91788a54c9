"""Each failure mode of the vLLM emulator, observed from outside as the real one would be."""

import json
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest
import trustme

MODEL = "facebook/opt-125m"


def post(url, body, timeout=10, key=None, context=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer %s" % key
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return response.status, response.read().decode()


def status(url, timeout=5, context=None):
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def start(host, containers, port, gpu, env=None, args=(), util="0.2"):
    name = host.emulator([MODEL, "--gpu-memory-utilization", util] + list(args), gpus=[gpu], port=port, env=env)
    containers.append(name)
    return name


def serving(host, containers, port, gpu, **kwargs):
    name = start(host, containers, port, gpu, **kwargs)
    host.wait_log(name, "Application startup complete")
    host.wait_port(port)
    return name, "http://%s:%d" % (host.ip, port)


def test_load_delay_reports_progress_and_refuses_connections_until_loaded(host, containers):
    name = start(host, containers, 8111, 1, env={"VLLM_EMULATOR_FAULTS": '{"load_delay": 4}'})
    logs = host.wait_log(name, "Loading safetensors checkpoint shards:  40% Completed")
    assert "Application startup complete" not in logs
    with pytest.raises(OSError):
        socket.create_connection((host.ip, 8111), timeout=1).close()
    host.wait_log(name, "Starting vLLM server on http://0.0.0.0:8111", timeout=15)
    host.wait_port(8111)
    assert status("http://%s:8111/health" % host.ip) == 200


def test_hang_keeps_health_200_while_inference_never_answers(host, containers):
    url = serving(host, containers, 8112, 2)[1]
    host.set_fault(8112, hang=True)
    assert status(url + "/health") == 200
    started = time.monotonic()
    with pytest.raises((socket.timeout, TimeoutError, urllib.error.URLError)):
        post(url + "/v1/completions", {"prompt": "hi", "max_tokens": 1}, timeout=2)
    assert time.monotonic() - started < 3
    host.set_fault(8112)
    assert post(url + "/v1/completions", {"prompt": "hi", "max_tokens": 1})[0] == 200


def test_engine_death_turns_health_503_then_the_server_exits_0(host, containers):
    name, url = serving(host, containers, 8113, 3)
    host.set_fault(8113, engine_dead=True)
    deadline = time.time() + 5
    while status(url + "/health") != 503 and time.time() < deadline:
        time.sleep(0.1)
    assert status(url + "/health") == 503
    # As the real vLLM does when its engine core dies: its watchdog stops the server, which exits 0.
    state = host.wait_exit(name, timeout=15)
    assert state["ExitCode"] == 0
    assert "EngineDeadError: EngineCore encountered an issue" in host.logs(name)


def test_cuda_oom_while_serving_kills_the_engine_and_the_server(host, containers):
    name, url = serving(host, containers, 8114, 4, env={"VLLM_EMULATOR_FAULTS": "oom=request"})
    with pytest.raises(urllib.error.HTTPError) as failed:
        post(url + "/v1/completions", {"prompt": "hi", "max_tokens": 1})
    assert failed.value.code == 500
    assert status(url + "/health") == 503
    state = host.wait_exit(name)
    assert state["ExitCode"] == 0
    assert "torch.OutOfMemoryError: CUDA out of memory" in host.logs(name)
    assert host.nvml()["gpus"][4]["processes"] == []


def test_startup_oom_when_the_share_is_not_free(host, containers):
    # GPU 0 already has 20 GiB used by another job: 90 % of it cannot be free.
    name = start(host, containers, 8115, 0, util="0.9")
    state = host.wait_exit(name)
    assert state["ExitCode"] == 1
    assert "ValueError: Free memory on device cuda:0 (59.65/79.65 GiB) on startup is less than desired GPU " \
           "memory utilization (0.9, 71.68 GiB)" in host.logs(name)


def test_a_model_too_big_for_its_gpus_is_cuda_oom_at_load(host, containers):
    name = host.emulator(["meta-llama/Llama-3.3-70B-Instruct", "--gpu-memory-utilization", "0.9"], gpus=[6],
                         port=8116)
    containers.append(name)
    assert host.wait_exit(name)["ExitCode"] == 1
    assert "torch.OutOfMemoryError: CUDA out of memory" in host.logs(name)


def test_max_model_len_larger_than_the_kv_cache_fails_with_vllms_words(host, containers):
    name = host.emulator(["meta-llama/Llama-3.1-8B-Instruct", "--gpu-memory-utilization", "0.25",
                          "--max-model-len", "131072"], gpus=[6], port=8117)
    containers.append(name)
    assert host.wait_exit(name)["ExitCode"] == 1
    assert "Try increasing `gpu_memory_utilization` or decreasing `max_model_len`" in host.logs(name)


def test_removed_flags_exit_at_once_with_argparse_error(host, containers):
    name = start(host, containers, 8118, 1, args=["--speculative-model", "small"])
    state = host.wait_exit(name)
    assert state["ExitCode"] == 2
    assert "vllm: error: unrecognized arguments: --speculative-model small" in host.logs(name)


def test_address_already_in_use(gpu_state):
    host = gpu_state
    blocker = host.sh("setsid python3 -m http.server 8119 >/dev/null 2>&1 & echo $!").stdout.strip()
    try:
        host.sh("for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8119) 2>/dev/null && break; sleep 0.1; done")
        result = host.sh("CUDA_VISIBLE_DEVICES=1 timeout 20 /opt/vllm/bin/vllm serve %s --port 8119 "
                         "--gpu-memory-utilization 0.2" % MODEL, check=False)
    finally:
        host.run("kill", blocker)
    assert result.returncode == 1
    assert result.stderr.endswith("OSError: [Errno 98] Address already in use\n")


def test_missing_tokenizer_files_fail_with_the_tokenizer_error(host):
    host.sh("mkdir -p /models/no-tokenizer && echo '{\"hidden_size\": 512, \"num_hidden_layers\": 4, "
            "\"vocab_size\": 32000}' > /models/no-tokenizer/config.json && "
            "echo '{}' > /models/no-tokenizer/tokenizer_config.json")
    result = host.sh("CUDA_VISIBLE_DEVICES=1 timeout 20 /opt/vllm/bin/vllm serve /models/no-tokenizer --port 8120",
                     check=False)
    assert result.returncode == 1
    assert "ValueError: Couldn't instantiate the backend tokenizer" in result.stderr


def test_slow_ttft_shows_in_first_token_time_and_metrics(host, containers):
    url = serving(host, containers, 8121, 2)[1]
    host.set_fault(8121, slow_ttft=1.5)
    request = urllib.request.Request(url + "/v1/completions", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"prompt": "hi", "max_tokens": 3, "stream": True}).encode())
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=10) as response:
        response.readline()
        ttft = time.monotonic() - started
    assert ttft >= 1.5
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    ttft_sum = [line for line in text.splitlines() if line.startswith("vllm:time_to_first_token_seconds_sum")]
    assert float(ttft_sum[0].split()[-1]) >= 1.5


def test_queue_build_up_shows_in_num_requests_waiting(host, containers):
    url = serving(host, containers, 8122, 3)[1]
    host.set_fault(8122, queue=80)
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    waiting = [line for line in text.splitlines() if line.startswith("vllm:num_requests_waiting{")]
    assert float(waiting[0].split()[-1]) == 80.0


def test_orphaned_worker_keeps_gpu_memory_after_the_main_process_is_killed(gpu_state):
    host = gpu_state
    main = host.sh("CUDA_VISIBLE_DEVICES=7 VLLM_EMULATOR_FAULTS=orphan_workers setsid /opt/vllm/bin/vllm serve %s "
                   "--port 8124 --gpu-memory-utilization 0.3 >/tmp/orphan.log 2>&1 & echo $!" % MODEL).stdout.strip()
    host.sh("for i in $(seq 100); do grep -q 'Application startup complete' /tmp/orphan.log && break; sleep 0.1; done")
    workers = [p["pid"] for p in host.nvml()["gpus"][7]["processes"]]
    assert len(workers) == 1 and workers[0] != int(main)
    host.run("kill", "-9", main)
    time.sleep(1)
    try:
        gpu = host.nvml()["gpus"][7]
        assert [p["pid"] for p in gpu["processes"]] == workers
        assert gpu["memory"]["used"] >> 20 == int(0.3 * 81559)
        assert "VLLM::Worker" in host.read("/proc/%d/comm" % workers[0])
    finally:
        host.run("kill", "-9", str(workers[0]), check=False)


def test_without_the_fault_workers_die_with_the_main_process(gpu_state):
    host = gpu_state
    main = host.sh("CUDA_VISIBLE_DEVICES=7 setsid /opt/vllm/bin/vllm serve %s --port 8125 "
                   "--gpu-memory-utilization 0.3 >/tmp/clean.log 2>&1 & echo $!" % MODEL).stdout.strip()
    host.sh("for i in $(seq 100); do grep -q 'Application startup complete' /tmp/clean.log && break; sleep 0.1; done")
    assert host.nvml()["gpus"][7]["processes"]
    host.run("kill", "-9", main)
    host.sh("for i in $(seq 20); do [ -z \"$(nvidia-smi --query-compute-apps=pid --format=csv,noheader -i 7)\" ] "
            "&& exit 0; sleep 0.1; done; exit 1")


@pytest.fixture(scope="module")
def tls(host):
    ca = trustme.CA()
    host.run("mkdir", "-p", "/srv/tls")
    issued = {}
    for tag in ("one", "two", "three"):
        cert = ca.issue_cert(host.ip, "localhost")
        issued[tag] = cert
        host.write("/srv/tls/%s.crt" % tag, b"".join(b.bytes() for b in cert.cert_chain_pems).decode())
        host.write("/srv/tls/%s.key" % tag, cert.private_key_pem.bytes().decode())
    host.run("cp", "/srv/tls/one.crt", "/srv/tls/server.crt")
    host.run("cp", "/srv/tls/one.key", "/srv/tls/server.key")
    return ca, issued


def served_fingerprint(host, port):
    pem = ssl.get_server_certificate((host.ip, port), timeout=5)
    return ssl.PEM_cert_to_DER_cert(pem)


def test_tls_with_a_private_ca_and_certificate_refresh(host, containers, tls):
    ca, issued = tls
    name = host.emulator([MODEL, "--gpu-memory-utilization", "0.2", "--ssl-certfile", "/tls/server.crt",
                          "--ssl-keyfile", "/tls/server.key", "--enable-ssl-refresh"], gpus=[4], port=8126,
                         extra=["-v", "/srv/tls:/tls:ro"])
    containers.append(name)
    host.wait_log(name, "Starting vLLM server on https://0.0.0.0:8126")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    assert status("https://%s:8126/health" % host.ip, context=context) == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        status("https://%s:8126/health" % host.ip, context=ssl.create_default_context())

    pid_before = host.container_state(name)["Pid"]
    first = served_fingerprint(host, 8126)
    assert first == ssl.PEM_cert_to_DER_cert(issued["one"].cert_chain_pems[0].bytes().decode())
    # In place and within milliseconds, as rotate_cert_host.yml writes them: one batch for the watcher, so no
    # reload pairs the new key with the old certificate (which leaves the context without a certificate).
    host.sh("cat /srv/tls/two.key > /srv/tls/server.key && cat /srv/tls/two.crt > /srv/tls/server.crt")
    expected = ssl.PEM_cert_to_DER_cert(issued["two"].cert_chain_pems[0].bytes().decode())
    deadline = time.time() + 10
    while served_fingerprint(host, 8126) != expected and time.time() < deadline:
        time.sleep(0.3)
    assert served_fingerprint(host, 8126) == expected
    assert host.container_state(name)["Pid"] == pid_before
    assert "Reloading SSL certificate chain" in host.logs(name)
    assert "SSLCertRefresher failed" not in host.logs(name)

    # Like vLLM's inotify watch: a pair swapped in by rename is reloaded once, then the replaced files are no longer
    # watched, so a second swap by rename is not seen (the real vLLM 0.32 does the same; rotate_certs.yml writes
    # in place for that reason).
    def swap_by_rename(tag):
        host.sh("cp /srv/tls/{0}.key /srv/tls/server.key.new && cp /srv/tls/{0}.crt /srv/tls/server.crt.new"
                " && mv /srv/tls/server.key.new /srv/tls/server.key && mv /srv/tls/server.crt.new /srv/tls/server.crt"
                .format(tag))

    swap_by_rename("three")
    expected = ssl.PEM_cert_to_DER_cert(issued["three"].cert_chain_pems[0].bytes().decode())
    deadline = time.time() + 10
    while served_fingerprint(host, 8126) != expected and time.time() < deadline:
        time.sleep(0.3)
    assert served_fingerprint(host, 8126) == expected
    swap_by_rename("one")
    time.sleep(3)
    assert served_fingerprint(host, 8126) == expected
