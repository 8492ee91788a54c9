"""The vLLM emulator against the official OpenAI client and Prometheus' parser, as a vLLM 0.33 server."""

import json
import urllib.error
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
PORT = 8101
KEY = "lab-key-1"

V033_METRICS = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success", "vllm:num_preemptions",
    "vllm:prefix_cache_hits", "vllm:prefix_cache_queries", "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds", "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
}
GONE_METRICS = {"vllm:gpu_cache_usage_perc", "vllm:num_requests_swapped", "vllm:time_per_output_token_seconds",
                "vllm:cpu_cache_usage_perc"}


@pytest.fixture(scope="module")
def server(host):
    name = host.emulator([MODEL, "--served-model-name", "qwen-small", "--api-key", KEY, "other-key",
                          "--gpu-memory-utilization", "0.25", "--enable-prefix-caching"], gpus=[5], port=PORT)
    try:
        host.wait_log(name, "Application startup complete")
        host.wait_port(PORT)
        yield "http://%s:%d" % (host.ip, PORT)
    finally:
        host.remove(name)


def get(url, key=None):
    request = urllib.request.Request(url, headers={"Authorization": "Bearer %s" % key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metrics(server):
    status, body = get(server + "/metrics")
    assert status == 200
    return {family.name: family for family in text_string_to_metric_families(body)}


def sample(families, name, suffix=""):
    return sum(s.value for s in families[name].samples if s.name == name + suffix)


def test_models_completions_and_streaming_with_the_openai_client(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=10)
    models = client.models.list()
    assert [m.id for m in models.data] == ["qwen-small"]
    assert models.data[0].owned_by == "vllm"

    completion = client.completions.create(model="qwen-small", prompt="Say hello", max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5 and completion.usage.prompt_tokens == 2

    chunks = list(client.chat.completions.create(
        model="qwen-small", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 4
    assert chunks[-1].usage.completion_tokens == 4

    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="qwen-small", prompt="x", max_tokens=3, stream=True))
    assert len(streamed.split()) == 3


def test_second_key_works_and_a_wrong_or_missing_key_gets_401(server):
    good = openai.OpenAI(base_url=server + "/v1", api_key="other-key", max_retries=0, timeout=10)
    assert good.models.list().data
    wrong = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="qwen-small", prompt="hi", max_tokens=1)
    # The OpenAI client refuses to send no key at all; without one, vLLM answers 401 as well.
    assert get(server + "/v1/models") == (401, '{"error": "Unauthorized"}')


def test_open_endpoints_need_no_key(server):
    assert get(server + "/health") == (200, "")
    assert get(server + "/ping")[0] == 200
    assert json.loads(get(server + "/version")[1]) == {"version": "0.33.0"}
    assert "server_load" in json.loads(get(server + "/load")[1])


def test_unknown_model_is_a_404_naming_it(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=10)
    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist"):
        client.completions.create(model="nope", prompt="hi", max_tokens=1)


def test_metrics_parse_with_prometheus_and_move_with_traffic(server):
    before = metrics(server)
    assert V033_METRICS <= set(before)
    assert not GONE_METRICS & set(before)
    labels = before["vllm:num_requests_running"].samples[0].labels
    assert labels == {"engine": "0", "model_name": "qwen-small"}

    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=10)
    client.completions.create(model="qwen-small", prompt="one two three", max_tokens=7)
    after = metrics(server)
    assert sample(after, "vllm:generation_tokens", "_total") - sample(before, "vllm:generation_tokens", "_total") == 7
    assert sample(after, "vllm:prompt_tokens", "_total") - sample(before, "vllm:prompt_tokens", "_total") == 3
    assert sample(after, "vllm:time_to_first_token_seconds", "_count") == \
        sample(before, "vllm:time_to_first_token_seconds", "_count") + 1
    assert sample(after, "vllm:request_success", "_total") == sample(before, "vllm:request_success", "_total") + 1
    assert sample(after, "vllm:prefix_cache_hits", "_total") > sample(before, "vllm:prefix_cache_hits", "_total")


def test_the_server_holds_its_share_of_gpu_memory(host, server):
    gpu = host.nvml()["gpus"][5]
    assert [p["used"] >> 20 for p in gpu["processes"]] == [int(0.25 * 81559)]
