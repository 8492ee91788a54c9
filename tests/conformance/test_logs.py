"""Start-up logs, which the collection's log diagnosis and readiness checks read: vLLM's line format, the banner,
`non-default args:`, `Starting vLLM server on`, the routes, then uvicorn's `Application startup complete.` (on
stderr); no `Uvicorn running on` and no `vLLM API server version` line."""

import ast
import re

from conformance_setup import MAIN

VLLM_LINE = re.compile(r"^\((?P<role>[A-Za-z_]+(?:[-_][A-Za-z0-9]+)*) pid=\d+\) (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                       r"\d\d-\d\d \d\d:\d\d:\d\d \[[\w.]+\.py:\d+\] ")
ROUTES = [("/health", "GET"), ("/ping", "GET"), ("/ping", "POST"), ("/version", "GET"), ("/load", "GET"),
          ("/metrics", "GET"), ("/tokenize", "POST"), ("/detokenize", "POST"), ("/v1/models", "GET"),
          ("/invocations", "POST"), ("/v1/completions", "POST"), ("/v1/chat/completions", "POST")]


def first(lines, text):
    return next(i for i, line in enumerate(lines) if text in line)


def test_start_up_lines_come_in_vllms_order(main):
    # Within stdout: Docker stamps each stream as it reads it, so the order across the two is not reliable.
    lines = main.logs()[0].splitlines()
    order = [first(lines, text) for text in ("non-default args: ", "Resolved architecture: ", "Using max model len ",
                                             "Starting vLLM server on http://0.0.0.0:%d" % main.port,
                                             "Route: /health, Methods: GET")]
    assert order == sorted(order)


def test_there_is_no_uvicorn_running_line_and_no_api_server_version_line(main):
    text = "\n".join(main.logs())
    assert "Uvicorn running on" not in text and "vLLM API server version" not in text


def test_uvicorn_lines_go_to_stderr_unprefixed(main):
    stdout, stderr = main.logs()
    for line in ("INFO:     Started server process [", "INFO:     Waiting for application startup.",
                 "INFO:     Application startup complete."):
        assert "\n" + line in "\n" + stderr and line not in stdout


def test_the_banner_shows_version_and_model(main):
    stdout = main.logs()[0]
    assert re.search(r"\] .*version \d+\.\d+\.\d+\s*$", stdout, re.M) or "vLLM server version" in stdout
    assert re.search(r"\] .*model   /models/tiny\s*$", stdout, re.M)


def test_non_default_args_name_the_settings_and_hide_the_keys(main):
    line = next(line for line in main.logs()[0].splitlines() if "non-default args: " in line)
    args = ast.literal_eval(line.split("non-default args: ", 1)[1])
    assert args["model_tag"] == args["model"] == "/models/tiny"
    assert args["served_model_name"] == MAIN[0][2:4]
    assert args["api_key"] == "***" and args["enforce_eager"] is True and args["port"] == main.port


def test_every_vllm_line_has_vllms_prefix(main):
    stdout = main.logs()[0]
    tagged = [line for line in stdout.splitlines() if line.startswith("(")]
    assert len(tagged) > 10
    bad = [line for line in tagged if not VLLM_LINE.match(line)]
    assert bad == []
    roles = set(VLLM_LINE.match(line).group("role") for line in tagged)
    assert {"APIServer", "EngineCore"} <= roles and "EngineCore_DP0" not in roles


def test_the_routes_the_collection_uses_are_listed(main):
    listed = set()
    for line in main.logs()[0].splitlines():
        match = re.search(r"Route: (\S+), Methods: (.+)$", line)
        if match:
            listed.update((match.group(1), method.strip()) for method in match.group(2).split(","))
    assert set(ROUTES) <= listed


def test_access_lines_go_to_stdout(main):
    stdout = main.logs()[0]
    assert re.search(r'^INFO:     [\d.]+:\d+ - "GET /health HTTP/1.1" 200 OK$', stdout, re.M)


def test_api_key_given_twice_is_warned_about_on_stderr(aux):
    assert "Found duplicate keys --api-key" in aux.logs()[1]
