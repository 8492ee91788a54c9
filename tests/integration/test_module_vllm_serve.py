"""inferops.vllm.vllm_serve on a lab host: validation refuses before any change; idempotence, check and diff mode."""

import json

import pytest

from ansible_run import run_module

IMAGE = "inferops/vllm-emulator:0.33.0"
BASE = {"image": IMAGE, "pull": "never", "model": "facebook/opt-125m", "model_params": "125M",
        "gpu_memory_utilization": 0.2}


def serve(host, check=False, **args):
    merged = dict(BASE, **args)
    return run_module(host.name, "inferops.vllm.vllm_serve", merged, check=check, diff=True)


def containers(host):
    return host.run("docker", "ps", "-a", "--format", "{{.Names}}").stdout.split()


@pytest.fixture
def instance(gpu_state):
    names = []
    yield names
    for name in names:
        run_module(gpu_state.name, "inferops.vllm.vllm_serve", {"name": name, "state": "absent"})


@pytest.mark.parametrize("args, message", [
    ({"extra_args": {"speculative-model": "small"}},
     "extra_args: vLLM 0.33.0 has no --speculative-model (vLLM removed it); use --speculative-config"),
    ({"extra_args": {"guided-decoding-backend": "xgrammar"}}, "use --structured-outputs-config"),
    ({"extra_args": {"no-such-flag": 1}}, "--no-such-flag is not a flag of vLLM 0.33.0's `vllm serve`"),
    ({"extra_args": {"swap-space": 4}}, "vLLM 0.33.0 has no --swap-space"),
    ({"gpus": ["1", "2"], "tensor_parallel_size": 4}, "tensor_parallel_size (4) x pipeline_parallel_size (1) = 4, "
                                                      "but 2 GPU(s) are given"),
    ({"model": "meta-llama/Llama-3.3-70B-Instruct", "model_params": "70.6B", "gpu_memory_utilization": 0.9},
     "The smallest tensor_parallel_size that fits on such GPUs is 2 (2 GPUs)"),
    ({"gpus": ["0"], "gpu_memory_utilization": 0.9},
     "GPU 0 has 59.6 GiB free, but gpu_memory_utilization 0.9 asks vLLM for 71.7 GiB"),
    ({"gpus": ["9"]}, "gpus: GPU 9 does not exist on this host"),
    ({"env": {"HF_TOKEN": "hf_x"}}, "env: HF_TOKEN is a secret: pass it with the option hf_token"),
    ({"model": "/models/no-tokenizer"}, "has no tokenizer files (tokenizer.json or tokenizer.model)"),
    ({"model": "/models/absent"}, "model: /models/absent is not a directory on this host"),
])
def test_each_validation_error_refuses_before_any_change(gpu_state, args, message):
    gpu_state.sh("mkdir -p /models/no-tokenizer && echo '{}' > /models/no-tokenizer/config.json")
    before = containers(gpu_state)
    result = serve(gpu_state, **dict({"name": "refused", "gpus": ["1"]}, **args))
    assert result.failed and message in result["msg"], result.get("msg")
    assert result["changed"] is False
    assert containers(gpu_state) == before
    assert gpu_state.run("test", "-e", "/etc/vllm/secrets/refused", check=False).returncode == 1


def test_idempotent_check_and_diff_mode(gpu_state, instance):
    instance.append("idem")
    args = {"name": "idem", "gpus": ["3"], "port": 8301, "api_keys": ["idem-key"], "env": {"MY_SETTING": "on"}}
    checked = serve(gpu_state, check=True, **args)
    assert checked["changed"] is True and "vllm-idem" not in containers(gpu_state)
    assert checked["interrupts"] is False  # nothing runs yet

    first = serve(gpu_state, **args)
    assert first["changed"] is True and first["container"]["name"] == "vllm-idem"
    assert first["instance"] == {"url": "http://127.0.0.1:8301", "container": "vllm-idem", "unit": None,
                                 "env_file": None, "log_file": None, "secrets_dir": "/etc/vllm/secrets/idem"}
    assert "idem-key" not in json.dumps(first)
    second = serve(gpu_state, **args)
    assert second["changed"] is False and second["container"]["id"] == first["container"]["id"]
    assert second["interrupts"] is False
    assert serve(gpu_state, check=True, **args)["changed"] is False

    changed = serve(gpu_state, check=True, **dict(args, max_model_len=1024))
    assert changed["changed"] is True and changed["interrupts"] is True  # the vllm role drains it first
    assert serve(gpu_state, check=True, **{**args, "api_keys": ["idem-key", "idem-key-2"]})["interrupts"] is True
    assert "--max-model-len" in changed["diff"]["after"]["args"]
    assert changed["diff"]["after"]["env"]["MY_SETTING"] == "********"
    assert serve(gpu_state, **args)["container"]["id"] == first["container"]["id"]  # check mode changed nothing


def test_a_new_key_restarts_the_instance_and_is_served(gpu_state, instance):
    instance.append("keys")
    args = {"name": "keys", "gpus": ["4"], "port": 8302, "api_keys": ["old-key"]}
    serve(gpu_state, **args)
    both_keys = dict(args)
    both_keys["api_keys"] = ["old-key", "new-key"]
    rotated = serve(gpu_state, **both_keys)
    assert rotated["changed"] is True
    gpu_state.wait_log("vllm-keys", "Application startup complete")
    status = gpu_state.sh("sleep 1; curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer new-key' "
                          "http://127.0.0.1:8302/v1/models").stdout
    assert status == "200"
    inspect = gpu_state.run("docker", "inspect", "vllm-keys").stdout
    assert "new-key" not in inspect and "old-key" not in inspect


def test_stop_start_and_absent(gpu_state, instance):
    instance.append("life")
    args = {"name": "life", "gpus": ["5"], "port": 8303}
    serve(gpu_state, **args)
    stopped = serve(gpu_state, **dict(args, state="stopped"))
    assert stopped["changed"] is True and stopped["interrupts"] is True
    assert gpu_state.container_state("vllm-life")["Running"] is False
    started = serve(gpu_state, **dict(args, state="started"))
    assert started["changed"] is True and started["interrupts"] is False
    assert gpu_state.container_state("vllm-life")["Running"] is True
    gone = run_module(gpu_state.name, "inferops.vllm.vllm_serve", {"name": "life", "state": "absent"})
    assert gone["changed"] is True and "vllm-life" not in containers(gpu_state)
    assert run_module(gpu_state.name, "inferops.vllm.vllm_serve", {"name": "life", "state": "absent"})[
        "changed"] is False


def test_reconfiguring_an_instance_counts_its_own_memory_as_free(gpu_state, instance):
    # At 0.9 the instance holds most of GPU 6; changing it must not be refused because of its own memory.
    instance.append("big")
    args = {"name": "big", "gpus": ["6"], "port": 8304, "gpu_memory_utilization": 0.9}
    serve(gpu_state, **args)
    gpu_state.wait_log("vllm-big", "Application startup complete")
    again = serve(gpu_state, **dict(args, max_model_len=1024))
    assert not again.failed, again.get("msg")
    assert again["changed"] is True
