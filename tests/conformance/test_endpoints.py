"""The endpoints the collection uses: status codes, headers and bodies, and the shape of generations (token counts
differ between tokenizers; their invariants do not)."""

import json

import openai
import pytest

from conformance_setup import KEYS, SERVED
from vllm_client import events, generate, open_stream, request

KEY = KEYS[0]
COMPLETION = {"model": "tiny", "prompt": "hello world", "max_tokens": 5}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.mark.parametrize("path", ["/health", "/ping"])
def test_health_and_ping_are_200_with_an_empty_body(main, path):
    response = request(main.url + path)
    assert (response.status, response.body, response.headers["content-length"]) == (200, b"", "0")


def test_ping_also_answers_post_and_head_health_is_405(main):
    assert request(main.url + "/ping", "POST").status == 200
    head = request(main.url + "/health", "HEAD")
    assert (head.status, head.headers["allow"]) == (405, "GET")


def test_version_is_json_with_the_version(main):
    response = request(main.url + "/version")
    assert response.status == 200 and response.headers["content-type"] == "application/json"
    assert list(response.json()) == ["version"] and response.json()["version"].count(".") == 2


def test_load_is_zero_without_load_tracking(main):
    assert request(main.url + "/load").body == b'{"server_load":0}'


def test_models_lists_every_served_name(main):
    body = request(main.url + "/v1/models", key=KEY).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == SERVED
    for entry in body["data"]:
        assert (entry["object"], entry["owned_by"], entry["root"], entry["max_model_len"]) == (
            "model", "vllm", "/models/tiny", 2048)
        assert entry["permission"][0]["object"] == "model_permission"


@pytest.mark.parametrize("path,body", [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)])
def test_a_generation_is_max_tokens_long_and_names_the_first_served_name(main, path, body):
    for model in SERVED:
        response = generate(main, path, dict(body, model=model), KEY)
        assert response.status == 200, response.body
        out = response.json()
        assert out["object"] == ("text_completion" if "chat" not in path else "chat.completion")
        assert out["id"].startswith("cmpl-" if "chat" not in path else "chatcmpl-")
        assert out["model"] == SERVED[0]
        assert out["system_fingerprint"].startswith("vllm-")
        choice = out["choices"][0]
        assert (choice["index"], choice["finish_reason"], choice["stop_reason"]) == (0, "length", None)
        if "chat" in path:
            assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
        else:
            assert choice["text"]
        usage = out["usage"]
        assert usage["completion_tokens"] == 5 and usage["prompt_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completions_without_max_tokens_make_16(main):
    body = dict(COMPLETION)
    del body["max_tokens"]
    assert generate(main, "/v1/completions", body, KEY).json()["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("path,body", [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)])
@pytest.mark.parametrize("usage", [False, True])
def test_streams_are_sse_chunks_ending_with_done(main, path, body, usage):
    chat = "chat" in path
    request_body = dict(body, max_tokens=4)
    if usage:
        request_body["stream_options"] = {"include_usage": True}
    with open_stream(main, path, request_body, KEY) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        data = events(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat else "text_completion"}
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"tiny"}
    content = [c for c in chunks if c["choices"]]
    if chat:
        assert content[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        content = content[1:]
    # A busy server may put several tokens in one chunk.
    assert 1 <= len(content) <= 4
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * (len(content) - 1) + ["length"]
    final = chunks[-1]
    assert "system_fingerprint" in final
    if usage:
        assert final["choices"] == []
        assert final["usage"]["completion_tokens"] == 4
        assert final["usage"]["total_tokens"] == final["usage"]["prompt_tokens"] + 4
    else:
        assert all("usage" not in c for c in chunks)


def test_the_openai_client_lists_models_completes_and_streams(main):
    client = openai.OpenAI(base_url=main.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == SERVED
    completion = client.completions.create(model="tiny", prompt="Say hello", max_tokens=3,
                                           extra_body={"ignore_eos": True})
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 3
    chunks = list(client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=3, stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert chunks[-1].usage.completion_tokens == 3
    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist"):
        client.completions.create(model="nope", prompt="hi", max_tokens=1)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
def test_an_unknown_model_is_404_naming_it(main, path):
    body = dict(CHAT if "chat" in path else COMPLETION, model="x")
    response = request(main.url + path, "POST", body, KEY)
    assert response.status == 404
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("NotFoundError", "model", 404)
    assert error["message"].startswith("The model `x` does not exist.")


def test_an_unknown_path_is_404_and_a_wrong_method_405(main):
    assert (request(main.url + "/nope").status, request(main.url + "/nope").body) == (404, b'{"detail":"Not Found"}')
    assert request(main.url + "/v1/nope", key=KEY).status == 404
    wrong = request(main.url + "/v1/completions", key=KEY)
    assert (wrong.status, wrong.body, wrong.headers["allow"]) == (405, b'{"detail":"Method Not Allowed"}', "POST")


def test_bad_json_is_a_400_validation_error(main):
    response = request(main.url + "/v1/completions", "POST", b"not json", KEY)
    assert response.status == 400
    assert response.json()["error"]["type"] == "Bad Request" and "JSON decode error" in response.body.decode()


def test_tokenize_and_detokenize_need_no_key(main):
    tokens = request(main.url + "/tokenize", "POST", {"model": "tiny", "prompt": "hello world"})
    assert tokens.status == 200
    body = tokens.json()
    assert sorted(body) == ["count", "max_model_len", "token_strs", "tokens"]
    assert body["count"] == len(body["tokens"]) > 0 and body["max_model_len"] == 2048
    text = request(main.url + "/detokenize", "POST", {"model": "tiny", "tokens": body["tokens"]})
    assert text.status == 200 and list(text.json()) == ["prompt"]


def test_usage_counts_the_prompt_as_tokenize_does(main):
    count = request(main.url + "/tokenize", "POST", {"prompt": "hello world"}).json()["count"]
    assert generate(main, "/v1/completions", COMPLETION, KEY).json()["usage"]["prompt_tokens"] == count


def long_prompt(main, tokens):
    """A prompt of about `tokens` tokens on this server's tokenizer, and its exact count."""
    words = tokens
    while True:
        prompt = " ".join(["hello"] * words)
        count = request(main.url + "/tokenize", "POST", {"prompt": prompt}).json()["count"]
        if count <= tokens:
            return prompt, count
        words = max(1, words * tokens // count)


def test_prompt_plus_max_tokens_above_the_context_is_clamped_not_refused(main):
    prompt, count = long_prompt(main, 2000)
    response = generate(main, "/v1/completions", dict(COMPLETION, prompt=prompt, max_tokens=2048 - count + 10), KEY)
    assert response.status == 200, response.body
    usage, choice = response.json()["usage"], response.json()["choices"][0]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (count, 2048 - count, 2048)
    assert choice["finish_reason"] == "length"


@pytest.mark.parametrize("path,param", [("/v1/completions", "max_tokens"), ("/v1/chat/completions", "max_tokens"),
                                        ("/v1/chat/completions", "max_completion_tokens")])
def test_max_tokens_alone_above_the_context_is_refused(main, path, param):
    body = dict(CHAT if "chat" in path else COMPLETION)
    del body["max_tokens"]
    body[param] = 5000
    response = generate(main, path, body, KEY)
    assert response.status == 400
    assert response.json()["error"] == {
        "message": "%s=5000 cannot be greater than max_model_len=2048. Please request fewer output tokens. "
                   "(parameter=%s, value=5000)" % (param, param),
        "type": "BadRequestError", "param": param, "code": 400}


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_prompt_alone_above_the_context_is_refused(main, path):
    text = " ".join(["hello"] * 3000)
    if "chat" in path:
        body = dict(CHAT, messages=[{"role": "user", "content": text}])
    else:
        body = dict(COMPLETION, prompt=text)
    response = generate(main, path, body, KEY)
    assert response.status == 400
    assert response.json()["error"] == {
        "message": "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 "
                   "input tokens, which exceeds this limit even without any output tokens. Please reduce the length "
                   "of the input prompt. (parameter=input_tokens, value=2049)",
        "type": "BadRequestError", "param": "input_tokens", "code": 400}


def test_max_tokens_below_one_is_refused(main):
    response = generate(main, "/v1/completions", dict(COMPLETION, max_tokens=0), KEY)
    assert response.status == 400
    message = "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"
    assert response.json()["error"]["message"] == message
