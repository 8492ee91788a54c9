"""Hostile input through Ansible on a lab host: a clean refusal naming the field, no traceback, no secret in the
result, and nothing outside the instance's own files touched (issue 12's destructive paths)."""

import json

import pytest

from ansible_collections.inferops.vllm.plugins.module_utils._vllm_units import env_file_content
from ansible_run import run_module

IMAGE = "inferops/vllm-emulator:0.33.0"
SECRET = "hostile-secret-value-123456"
VICTIM_FILES = ["/etc/vllm/secrets/victim/serve-config.yaml", "/etc/vllm/victim.env", "/victim.env",
                "/etc/victim.env"]


@pytest.fixture
def victim(host):
    """Files of another instance, and files outside config_dir, that a hostile name could reach."""
    for path in VICTIM_FILES:
        host.sh("mkdir -p $(dirname %s) && echo keep > %s" % (path, path))
    yield host
    host.sh("rm -rf /etc/vllm/secrets/victim %s" % " ".join(VICTIM_FILES[1:]))


def untouched(host):
    return {path: host.run("cat", path, check=False).stdout for path in VICTIM_FILES}


def assert_clean_refusal(result, field):
    assert result.failed, result
    assert result["msg"].startswith(field + ": "), result["msg"]
    said = json.dumps({key: value for key, value in result.items() if key != "invocation"})  # the task's own args
    # ansible-core marks every failure "(traceback unavailable)"; a crash would carry the traceback itself.
    assert "Traceback" not in said and result.get("exception", "(traceback unavailable)") == "(traceback unavailable)"
    assert SECRET not in said
    assert result.get("changed") is False


@pytest.mark.parametrize("name", ["x/../victim", "../../victim", "../victim", "..", "a\nb"])
def test_vllm_serve_absent_with_a_path_as_name_deletes_nothing(victim, name):
    before = untouched(victim)
    result = run_module(victim.name, "inferops.vllm.vllm_serve", {"name": name, "state": "absent"})
    assert_clean_refusal(result, "name")
    assert untouched(victim) == before == {path: "keep\n" for path in VICTIM_FILES}


@pytest.mark.parametrize("args, field", [
    ({"env": {"MY_SETTING": "on\nExecStartPre=/bin/touch /tmp/pwned"}}, "env.MY_SETTING"),
    ({"env": {"OK": "1\nVLLM_API_KEY=" + SECRET}}, "env.OK"),
    ({"env": {"BAD NAME": "1"}}, "env"),
    ({"config_dir": "/etc/vllm\nExecStartPre=/bin/touch /tmp/pwned"}, "config_dir"),
    ({"extra_args": {"tokenizer": ["x", "--api-key", SECRET]}}, "extra_args.tokenizer"),
    ({"extra_args": {"tokenizer": "--api-key=" + SECRET}}, "extra_args.tokenizer"),
    ({"api_keys": ["good", SECRET + "\r\nX-Injected: 1"]}, "api_keys[1]"),
    ({"port": 0}, "port"),
    ({"gpus": ["0", "0"]}, "gpus"),
    ({"gpus": ["-1"]}, "gpus"),
    ({"pipeline_parallel_size": 0}, "pipeline_parallel_size"),
    ({"gpu_memory_utilization": float("nan")}, "gpu_memory_utilization"),
    ({"image": "--privileged"}, "image"),
    ({"image": IMAGE + " -v /:/host"}, "image"),
    ({"model_path_map": {"/models/tiny": "/models/x\nExecStartPre=/bin/true"}}, "model_path_map./models/tiny"),
])
def test_vllm_serve_refuses_hostile_values_before_writing_anything(host, args, field):
    base = {"name": "hostile", "image": IMAGE, "pull": "never", "model": "facebook/opt-125m", "gpus": ["2"],
            "backend": "systemd", "port": 8390}
    result = run_module(host.name, "inferops.vllm.vllm_serve", dict(base, **args))
    assert_clean_refusal(result, field)
    leftovers = host.sh("ls -d /etc/vllm/hostile.env /etc/vllm/secrets/hostile /tmp/pwned "
                        "/etc/systemd/system/vllm-hostile.service 2>/dev/null || true").stdout
    assert leftovers == ""


@pytest.mark.parametrize("instance, field", [
    ({"name": "x/../../escaped", "port": 8391}, "instances[0].name"),
    ({"name": "ok", "port": "not-a-port"}, "instances[0].port"),
    ({"name": "ok", "port": 70000}, "instances[0].port"),
    ({"name": "ok"}, "instances[0]"),
])
def test_vllm_diagnose_refuses_names_that_escape_dest_and_bad_ports(host, instance, field):
    host.sh("rm -rf /tmp/diag-hostile /tmp/escaped*")
    result = run_module(host.name, "inferops.vllm.vllm_diagnose", {"dest": "/tmp/diag-hostile/run",
                                                                   "instances": [instance]})
    assert result.failed and result["msg"].startswith(field), result
    assert "Traceback" not in json.dumps(result)
    assert host.sh("ls -d /tmp/escaped* /tmp/diag-hostile 2>/dev/null || true").stdout == ""


def test_vllm_diagnose_takes_a_templated_port_as_text(host):
    host.sh("rm -rf /tmp/diag-text-port")
    result = run_module(host.name, "inferops.vllm.vllm_diagnose", {
        "dest": "/tmp/diag-text-port", "health_timeout": 1, "log_lines": 10,
        "instances": [{"name": "nothing-here", "port": "8392"}]})
    assert not result.failed, result
    assert result["statuses"]["nothing-here"] == "down"


@pytest.mark.parametrize("module, args, field", [
    ("inferops.vllm.vllm_health", {"url": "http://127.0.0.1:9", "wait_for": "healthy", "start_period": "nan"},
     "start_period"),
    ("inferops.vllm.vllm_health", {"url": "http://127.0.0.1:9", "timeout": "inf"}, "timeout"),
    ("inferops.vllm.vllm_health", {"url": "http://127.0.0.1:9", "api_key": "k\r\nX-Injected: 1"}, "api_key"),
    ("inferops.vllm.vllm_health", {"url": "http://127.0.0.1:9", "unit": "--all"}, "unit"),
    ("inferops.vllm.gpu_select", {"timeout": "nan"}, "timeout"),
    ("inferops.vllm.gpu_select", {"min_free_memory": "9" * 309}, "min_free_memory"),
    ("inferops.vllm.vllm_gpu_reclaim", {"instance": "../x", "gpus": ["0"]}, "instance"),
    ("inferops.vllm.vllm_gpu_reclaim", {"instance": "x", "gpus": ["0"], "timeout": "-inf"}, "timeout"),
])
def test_non_finite_numbers_and_hostile_texts_are_refused_at_once(module, args, field):
    result = run_module("localhost", module, args, timeout=30)
    assert result.failed and result["msg"].startswith(field + ": "), result
    assert "Traceback" not in json.dumps(result)
    assert result.elapsed < 20


def test_vllm_serve_absent_refuses_a_directory_planted_in_place_of_its_env_file(host):
    host.sh("mkdir -p /etc/vllm/planted.env && echo keep > /etc/vllm/planted.env/inside")
    try:
        result = run_module(host.name, "inferops.vllm.vllm_serve", {"name": "planted", "state": "absent",
                                                                    "backend": "systemd"})
        assert result.failed and "/etc/vllm/planted.env is a directory, not the file" in result["msg"], result
        assert "Traceback" not in json.dumps(result)
        assert host.sh("cat /etc/vllm/planted.env/inside").stdout == "keep\n"
    finally:
        host.sh("rm -rf /etc/vllm/planted.env")


def test_systemd_reads_the_venv_env_file_back_verbatim_whatever_the_values(host):
    """The venv backend's env file through the real EnvironmentFile= parser: a quote or a trailing backslash in one
    value must not swallow the next lines (unquoted, `AAA="x` hid CUDA_VISIBLE_DEVICES from vLLM)."""
    values = {"AAA": '"x', "BBB": "y\\", "CCC": "a b $HOME `id` 'q' \\n ${X}", "CUDA_VISIBLE_DEVICES": "3",
              "JSON": '{"a": [1, "b"]}'}
    host.write("/tmp/hostile.env", env_file_content(values, "systemd"))
    host.write("/tmp/show-env.py", "#!/usr/bin/python3\nimport json, os\nprint(json.dumps(dict(os.environ)))\n")
    host.run("chmod", "+x", "/tmp/show-env.py")
    seen = json.loads(host.run("systemd-run", "--wait", "--pipe", "--quiet", "-p", "EnvironmentFile=/tmp/hostile.env",
                               "/tmp/show-env.py").stdout)
    assert {name: seen.get(name) for name in values} == values
