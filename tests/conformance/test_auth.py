"""API keys: which paths need one, the 401 body, several keys, keys from a --config file, and --api-key given
twice (the last one wins)."""

import pytest

from conformance_setup import AUX_KEYS, KEYS
from vllm_client import request

GUARDED = ["/v1/models", "/v1/completions", "/v1/nope", "/v2/nope", "/inference/v1/generate", "/cohere/v1/chat"]
OPEN = [("GET", "/health"), ("GET", "/ping"), ("GET", "/version"), ("GET", "/metrics"), ("GET", "/load"),
        ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/invocations")]


@pytest.mark.parametrize("path", GUARDED)
def test_guarded_paths_answer_401_with_vllms_exact_body(main, path):
    for key in (None, "wrong"):
        response = request(main.url + path, "POST" if "models" not in path else "GET", {}, key=key)
        assert (response.status, response.body) == (401, b'{"error":"Unauthorized"}')
        assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("method,path", OPEN)
def test_open_paths_need_no_key(main, method, path):
    body = {"prompt": "hi", "max_tokens": 1, "ignore_eos": True, "tokens": [5]} if method == "POST" else None
    assert request(main.url + path, method, body).status == 200


def test_each_key_from_the_config_file_works_with_any_case_of_bearer(main):
    for key in KEYS:
        for scheme in ("Bearer", "bearer", "BEARER"):
            response = request(main.url + "/v1/models", headers={"Authorization": "%s %s" % (scheme, key)})
            assert response.status == 200, (scheme, key)
    assert request(main.url + "/v1/models", headers={"Authorization": "Basic %s" % KEYS[0]}).status == 401
    assert request(main.url + "/v1/models", headers={"Authorization": "Bearer  %s" % KEYS[0]}).status == 401


def test_api_key_given_twice_keeps_only_the_last_flags_keys(aux):
    assert request(aux.url + "/v1/models", key="a").status == 401
    for key in AUX_KEYS:
        assert request(aux.url + "/v1/models", key=key).status == 200
