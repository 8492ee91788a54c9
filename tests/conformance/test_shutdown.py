"""SIGTERM with a stream in flight. Without --shutdown-timeout vLLM kills its engine core at once, and what the
stream sees is a race in vLLM (seen on the real server): the engine's error event then [DONE] (the emulator does
this), or nothing more until the client hangs up (uvicorn then logs "Waiting for connections to close"); vLLM's
source also allows a last chunk whose finish_reason is "abort". Either way the server exits 0. With
--shutdown-timeout the engine drains: the stream finishes, /health stays 200, a new request fails with a 500, and
the server exits 0. These run last: they stop the shared servers."""

import json
import time

import pytest

from conformance_setup import AUX_KEYS, KEYS
from vllm_client import events, open_stream, request

pytestmark = pytest.mark.stops_server
# Long generations (open_stream asks for ignore_eos): the stream must still be generating when SIGTERM lands, and the
# tiny model makes a token every 3-6 ms on two cores. The drain stays well within --shutdown-timeout 30.
ABORT = {"prompt": "hi", "max_tokens": 2000}
DRAIN = {"prompt": "hi", "max_tokens": 1500, "stream_options": {"include_usage": True}}
ENGINE_DEAD = {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
               "type": "InternalServerError", "param": None, "code": 500}


def stream_through_sigterm(server, key, body, during=None, stall=None):
    """Streams a long generation and sends SIGTERM after its first chunk (a server that lags sends several tokens in
    one chunk, so a later one may come too close to the end). Returns the events, whether the stream stalled (no
    data for `stall` seconds), and what `during` saw while the server was stopping."""
    seen = {}

    def on_event(found):
        if len(found) == 1:
            server.terminate()
            time.sleep(0.5)
            if during:
                seen.update(during())

    data = []
    try:
        with open_stream(server, "/v1/completions", body, key, timeout=stall or 120) as response:
            events(response, on_event, data)
    except TimeoutError:
        return data, True, seen
    return data, False, seen


def test_sigterm_ends_a_stream_in_flight_and_exits_0(main):
    data, stalled, _seen = stream_through_sigterm(main, KEYS[0], ABORT, stall=10)
    assert len(data) < ABORT["max_tokens"]
    if not stalled:
        assert data[-1] == "[DONE]"
        last = json.loads(data[-2])
        assert last.get("error") == ENGINE_DEAD or last["choices"][0]["finish_reason"] == "abort", last
    assert main.wait_exit(timeout=60) == 0
    stdout, stderr = main.logs()
    assert "[shutdown] API server: shutdown triggered" in stdout
    assert "[shutdown] API server: stopping engine client mode=abort timeout=0s" in stdout
    for line in ("INFO:     Shutting down", "INFO:     Waiting for application shutdown.",
                 "INFO:     Application shutdown complete."):
        assert line in stderr


def test_sigterm_with_shutdown_timeout_drains_the_stream_and_refuses_new_requests(aux):
    def during():
        return {"health": request(aux.url + "/health").status,
                "new": request(aux.url + "/v1/completions", "POST", {"prompt": "x", "max_tokens": 2}, AUX_KEYS[0])}

    data, stalled, seen = stream_through_sigterm(aux, AUX_KEYS[0], DRAIN, during)
    assert not stalled and data[-1] == "[DONE]"
    # A busy server may put several tokens in one chunk: count them in the usage chunk.
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == DRAIN["max_tokens"]
    assert seen["health"] == 200
    # vLLM's tokenizer pool is shut down by then; where the failure is caught decides the body (both seen).
    new = seen["new"]
    assert new.status == 500
    assert new.body == b"Internal Server Error" or new.json()["error"] == {
        "message": "cannot schedule new futures after shutdown", "type": "InternalServerError", "param": None,
        "code": 500}
    assert aux.wait_exit(timeout=120) == 0
    stdout, stderr = aux.logs()
    assert "[shutdown] API server: stopping engine client mode=drain timeout=30s" in stdout
    assert "INFO:     Application shutdown complete." in stderr
