"""vllm_serve's logic without Ansible: the argument builder, the planner, secrets, units."""

import json
import os
import shlex
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.inferops.vllm.plugins.module_utils import _systemd, _vllm_planner, _vllm_units
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_spec import Spec, SpecError

GIB_MIB = 1024
A100_40GB = 40960


def params(**overrides):
    base = dict(name="llama", backend="docker", model="meta-llama/Llama-3.3-70B-Instruct", served_model_name=None,
                gpus=["4", "5"], tensor_parallel_size=None, pipeline_parallel_size=1, gpu_memory_utilization=0.9,
                max_model_len=None, max_num_seqs=None, max_num_batched_tokens=None, quantization=None, dtype=None,
                kv_cache_dtype=None, enable_prefix_caching=None, enable_chunked_prefill=None, enforce_eager=False,
                trust_remote_code=False, download_dir=None, hf_cache="/var/lib/vllm/hf-cache", host="0.0.0.0",
                port=8000, publish_address="0.0.0.0", api_keys=[], hf_token=None, ssl_certfile=None,
                ssl_keyfile=None, ssl_ca_certs=None, enable_ssl_refresh=False, env={}, extra_args={},
                model_path_map={}, ipc_host=True, shm_size_mib=16384, restart_policy="unless-stopped",
                health_start_period=None, stop_timeout=30, log_max_size="100m", service_user="root",
                venv_path="/opt/vllm", config_dir="/etc/vllm")
    base.update(overrides)
    return base


# ---- arguments ----

def test_structured_options_become_vllm_flags_model_first():
    spec = Spec(params(served_model_name="llama-70b", max_model_len=32768, quantization="fp8",
                       enable_prefix_caching=True, enable_chunked_prefill=False, enforce_eager=True,
                       extra_args={"max-loras": 4, "enable_lora": True, "hf-overrides": {"a": 1}}))
    assert spec.serve_args() == [
        "meta-llama/Llama-3.3-70B-Instruct", "--served-model-name", "llama-70b", "--host", "0.0.0.0",
        "--port", "8000", "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9",
        "--max-model-len", "32768", "--quantization", "fp8", "--enable-prefix-caching",
        "--no-enable-chunked-prefill", "--enforce-eager", "--enable-lora", "--hf-overrides", '{"a":1}',
        "--max-loras", "4"]


def test_a_shutdown_timeout_lets_vllm_finish_its_requests_on_sigterm_and_none_aborts_them():
    argv = Spec(params(shutdown_timeout=20)).serve_args()
    assert argv[argv.index("--shutdown-timeout") + 1] == "20"
    assert "--shutdown-timeout" not in Spec(params(shutdown_timeout=0)).serve_args()
    assert "--shutdown-timeout" not in Spec(params()).serve_args()


@pytest.mark.parametrize("stop", [20, 10, 0])
def test_a_stop_timeout_that_does_not_outlast_the_drain_is_refused_naming_both(stop):
    from ansible_collections.inferops.vllm.plugins.module_utils import _validate, _vllm_input
    with pytest.raises(_validate.InputError) as caught:
        _vllm_input.check(params(shutdown_timeout=20, stop_timeout=stop), prefix="vllm_instances[0].")
    message = str(caught.value)
    assert message.startswith("vllm_instances[0].stop_timeout:") and "shutdown_timeout (20 s)" in message
    assert "at least 25" in message
    _vllm_input.check(params(shutdown_timeout=20, stop_timeout=25))


def test_api_keys_go_through_a_config_file_never_argv_or_env():
    token = "hf_" + "x" * 30
    spec = Spec(params(api_keys=["k-one", "k-two"], hf_token=token))
    argv = spec.serve_args()
    env = spec.environment()
    assert argv[-2:] == ["--config", "/run/secrets/vllm/serve-config.yaml"]
    assert not any("k-one" in a or token in a for a in argv)
    assert "k-one" not in json.dumps(env) and token not in json.dumps(env)
    assert env["HF_TOKEN_PATH"] == "/run/secrets/vllm/hf_token"
    files = spec.secret_files()
    assert json.loads(files["serve-config.yaml"]) == {"api-key": ["k-one", "k-two"]}


def test_secret_environment_variables_are_refused():
    with pytest.raises(SpecError, match="env: VLLM_API_KEY is a secret: pass it with the option api_keys"):
        Spec(params(env={"VLLM_API_KEY": "x"})).environment()


def test_model_path_map_uses_the_longest_prefix():
    spec = Spec(params(model="/ceph/models/llama/70b", model_path_map={"/ceph": "/data", "/ceph/models": "/models"}))
    assert spec.serve_args()[0] == "/models/llama/70b"
    assert ("/ceph/models/llama/70b", "/models/llama/70b", "ro") in spec.container_mounts()


def test_the_served_model_is_the_id_vllm_announces():
    # Found on the real vLLM: a mapped local model is announced by its path in the container.
    mapped = params(model="/srv/models/tiny", model_path_map={"/srv/models": "/models"})
    assert Spec(mapped).served_model() == "/models/tiny"
    assert Spec(dict(mapped, backend="venv")).served_model() == "/srv/models/tiny"
    assert Spec(dict(mapped, served_model_name="tiny")).served_model() == "tiny"
    assert Spec(params()).served_model() == "meta-llama/Llama-3.3-70B-Instruct"


def test_venv_backend_keeps_host_paths_and_sets_cuda_visible_devices():
    spec = Spec(params(backend="venv", model="/srv/models/m", api_keys=["k"]))
    env = spec.environment()
    assert spec.serve_args()[0] == "/srv/models/m"
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert spec.serve_args()[-1] == "/etc/vllm/secrets/llama/serve-config.yaml"


def test_parallelism_must_match_the_gpus():
    with pytest.raises(SpecError, match=r"tensor_parallel_size \(4\) x pipeline_parallel_size \(1\) = 4, but 2 GPU"):
        Spec(params(tensor_parallel_size=4)).check_parallelism()
    Spec(params(tensor_parallel_size=1, pipeline_parallel_size=2)).check_parallelism()


def test_local_model_without_tokenizer_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    spec = Spec(params(model=str(tmp_path)))
    with pytest.raises(SpecError, match="no tokenizer files .*TypeError: not a string"):
        spec.check_model_files()
    (tmp_path / "tokenizer.json").write_text("{}")
    spec.check_model_files()


def test_config_hash_changes_with_keys_but_carries_none():
    salt = b"salt"
    one = Spec(params(api_keys=["a"]))
    two = Spec(params(api_keys=["b"]))
    assert one.secrets_digest(salt) != two.secrets_digest(salt)
    assert one.config_hash("img", {}, {}, one.secrets_digest(salt)) != two.config_hash("img", {}, {},
                                                                                       two.secrets_digest(salt))


# ---- the memory planner ----

def gpus(n, free=A100_40GB, total=A100_40GB):
    return [{"index": i, "memory_total_mib": total, "memory_free_mib": free} for i in range(n)]


def test_seed_004_70b_bf16_on_40gb_gpus_needs_tp4():
    with pytest.raises(_vllm_planner.PlanError) as err:
        _vllm_planner.plan(gpus(2), 0.9, 2, 1, params=70e9, dtype="bfloat16")
    message = str(err.value)
    assert "130.4 GiB of weights over 2 GPU(s) = 65.2 GiB each" in message
    assert "The smallest tensor_parallel_size that fits on such GPUs is 4 (4 GPUs)" in message
    report = _vllm_planner.plan(gpus(4), 0.9, 4, 1, params=70e9, dtype="bfloat16")
    assert report["weights_per_gpu_gib"] == 32.6 and report["gpus"][0]["kv_cache_gib"] > 0


def test_quantization_shrinks_the_weights():
    report = _vllm_planner.plan(gpus(2), 0.9, 2, 1, params=70e9, quantization="fp8")
    assert report["weights_per_gpu_gib"] == 32.6


def test_busy_gpu_is_refused_with_the_numbers():
    with pytest.raises(_vllm_planner.PlanError, match=r"GPU 0 has 20.0 GiB free, but gpu_memory_utilization 0.9 "
                                                      r"asks vLLM for 36.0 GiB of its 40.0 GiB at start"):
        _vllm_planner.plan(gpus(1, free=20 * GIB_MIB), 0.9, 1, 1, params=1e9)


def test_the_budget_is_total_memory_times_utilization_and_must_be_free():
    # vLLM's rule: the budget is 0.9 x 40 GiB = 36 GiB whatever is free, so 38 GiB free still leaves a KV cache
    # computed from 36 GiB, and 30 GiB free is refused although 30 x 0.9 would hold the weights.
    report = _vllm_planner.plan(gpus(1, free=38 * GIB_MIB), 0.9, 1, 1, params=8e9)
    assert report["gpus"][0]["budget_gib"] == 36.0
    assert report["gpus"][0]["kv_cache_gib"] == pytest.approx(36.0 - 14.9 - 1.5, abs=0.01)
    with pytest.raises(_vllm_planner.PlanError, match="GPU 0 has 30.0 GiB free, but gpu_memory_utilization 0.9 "
                                                      "asks vLLM for 36.0 GiB"):
        _vllm_planner.plan(gpus(1, free=30 * GIB_MIB), 0.9, 1, 1, params=8e9)
    with pytest.raises(_vllm_planner.PlanError, match=r"budget of 8\.0 GiB \(40\.0 GiB total x 0\.2\)"):
        _vllm_planner.plan(gpus(1), 0.2, 1, 1, params=8e9)


def test_too_big_for_any_tp_says_quantize():
    with pytest.raises(_vllm_planner.PlanError, match="does not fit even at tensor_parallel_size 16: quantize"):
        _vllm_planner.plan(gpus(1), 0.9, 1, 1, params=1000e9)


@pytest.mark.parametrize("text, value", [("70B", 70e9), ("8.03b", 8.03e9), ("125M", 125e6), (7e10, 7e10)])
def test_parameter_counts(text, value):
    assert _vllm_planner.parse_params(text) == pytest.approx(value)


def test_parameter_count_errors_name_the_field():
    with pytest.raises(_vllm_planner.PlanError, match="model_params: 'seventy' is not a parameter count"):
        _vllm_planner.parse_params("seventy")


# ---- systemd quoting and units ----

def systemd_split(line):
    """How systemd splits an ExecStart= line (quotes, C escapes, %% and $$): the oracle for our quoting."""
    line = line.replace("%%", "%").replace("$$", "$")
    return shlex.split(line, posix=True)


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20),
                min_size=1, max_size=6))
def test_any_argv_survives_systemd_quoting(argv):
    assert systemd_split(_systemd.command_line(argv)) == argv


def test_gpus_word_reaches_docker_with_its_quotes():
    spec = Spec(params(backend="systemd", api_keys=["secret-key"]))
    line = _vllm_units.unit_content(spec, "img:1", 300, "abc")
    exec_start = [ln for ln in line.splitlines() if ln.startswith("ExecStart=")][0][len("ExecStart="):]
    argv = systemd_split(exec_start)
    assert argv[argv.index("--gpus") + 1] == '"device=4,5"'
    assert "secret-key" not in line
    assert "Restart=always" in line and "TimeoutStartSec=300" in line


def exec_start_argv(content):
    line = [ln for ln in content.splitlines() if ln.startswith("ExecStart=")][0][len("ExecStart="):]
    return systemd_split(line)


@pytest.mark.parametrize("stop, shutdown", [(30, 0), (45, 30), (301, 240)])
def test_the_systemd_units_container_keeps_the_stop_timeout_as_its_own(stop, shutdown):
    # Any `docker stop` or `docker restart` that is not the unit's ExecStop, and the Docker daemon's shutdown, wait
    # as long as the unit's own stop instead of Docker's 10 s.
    content = _vllm_units.unit_content(Spec(params(backend="systemd", stop_timeout=stop, shutdown_timeout=shutdown)),
                                       "img:1", 300, "abc")
    argv = exec_start_argv(content)
    assert argv.count("--stop-timeout") == 1 and argv[argv.index("--stop-timeout") + 1] == str(stop)
    # An option of `docker run`, not of vLLM: before the image.
    assert argv[:2] == ["/usr/bin/docker", "run"] and argv.index("--stop-timeout") < argv.index("img:1")
    assert "ExecStop=/usr/bin/docker stop -t %d vllm-llama\n" % stop in content
    assert "TimeoutStopSec=%d\n" % (stop + 30) in content


def test_the_venv_unit_has_no_container_stop_timeout():
    content = _vllm_units.unit_content(Spec(params(backend="venv", stop_timeout=45)), None, 600, "hash")
    assert "--stop-timeout" not in content and "TimeoutStopSec=75\n" in content


@pytest.mark.skipif(not (shutil.which("systemd-analyze") and os.access("/usr/bin/docker", os.X_OK)),
                    reason="needs systemd-analyze, and /usr/bin/docker that the unit runs")
@pytest.mark.parametrize("backend", ["systemd", "venv"])
def test_systemd_analyze_verify_accepts_the_rendered_units(backend, tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "vllm").write_text("#!/bin/sh\n")
    (venv / "bin" / "vllm").chmod(0o755)
    spec = Spec(params(backend=backend, stop_timeout=45, shutdown_timeout=30, venv_path=str(venv),
                       api_keys=["secret-key"]))
    _systemd.verify(spec.unit_name, _vllm_units.unit_content(spec, "img:1", 300, "abc"))


class UnitSystemd(object):
    """systemctl and the unit's state, faked: an instance that runs."""

    def __init__(self):
        self.calls = []

    def systemctl(self, *args, **kwargs):
        self.calls.append(" ".join(args))
        return 0, ""

    def unit_state(self, unit):
        self.calls.append("show")
        return {"loaded": True, "active": True, "enabled": True, "sub_state": None}


def test_a_unit_without_the_stop_timeout_is_rewritten_and_restarted_once_then_left_alone(monkeypatch, tmp_path):
    from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_serve_backends, _vllm_serve_manager
    from vllm_serve_fakes import Exited, FakeModule, snapshot_of
    from vllm_serve_fakes import params as module_params

    systemd = UnitSystemd()
    monkeypatch.setattr(_vllm_serve_backends, "UNIT_DIR", str(tmp_path / "units"))
    monkeypatch.setattr(_systemd, "verify", lambda unit, content: None)
    monkeypatch.setattr(_systemd, "systemctl", systemd.systemctl)
    monkeypatch.setattr(_systemd, "unit_state", systemd.unit_state)

    def serve():
        systemd.calls[:] = []
        module = FakeModule(module_params(tmp_path, stop_timeout=45, shutdown_timeout=30), diff=True)
        with pytest.raises(Exited) as exited:
            _vllm_serve_manager.VllmServe(module, snapshot=snapshot_of({}), proc=str(tmp_path)).run()
        return exited.value.result

    serve()
    unit = tmp_path / "units" / "vllm-llama.service"
    new = unit.read_text()
    # The unit as the version before wrote it: the same but for the container's own stop timeout.
    old = new.replace(" --stop-timeout 45 ", " ", 1)
    assert old != new and "--stop-timeout" not in old
    unit.write_text(old)
    result = serve()
    assert result["changed"] is True and result["interrupts"] is True and result["changed_fields"] == ["ExecStart"]
    assert systemd.calls == ["show", "daemon-reload", "show", "restart vllm-llama.service"]
    assert unit.read_text() == new
    result = serve()
    assert result["changed"] is False and result["interrupts"] is False and result["changed_fields"] == []
    assert systemd.calls == ["show", "show"]


# ---- names and paths the module returns ----

@pytest.mark.parametrize("backend, container, unit, env_file, log_file", [
    ("docker", "vllm-llama", None, None, None),
    ("systemd", "vllm-llama", "vllm-llama.service", "/etc/vllm/llama.env", None),
    ("venv", None, "vllm-llama.service", "/etc/vllm/llama.env", "/srv/logs/llama.log"),
])
def test_each_backend_returns_the_names_and_paths_it_uses(backend, container, unit, env_file, log_file):
    paths = Spec(params(backend=backend, log_dir="/srv/logs")).paths()
    assert paths == {"url": "http://127.0.0.1:8000", "container": container, "unit": unit, "env_file": env_file,
                     "log_file": log_file, "secrets_dir": "/etc/vllm/secrets/llama"}


@pytest.mark.parametrize("overrides, url", [
    ({"ssl_certfile": "/etc/vllm/tls/server.crt"}, "https://127.0.0.1:8000"),
    ({"publish_address": "10.0.0.5", "port": 8011}, "http://10.0.0.5:8011"),
    ({"publish_address": "::"}, "http://127.0.0.1:8000"),
    ({"publish_address": "fd00::5"}, "http://[fd00::5]:8000"),
    ({"backend": "venv", "host": "127.0.0.2", "publish_address": "10.0.0.5"}, "http://127.0.0.2:8000"),
])
def test_the_local_url_is_where_the_server_answers_on_its_host(overrides, url):
    assert Spec(params(**overrides)).paths()["url"] == url


def test_the_venv_unit_appends_to_the_log_file_the_module_returns():
    spec = Spec(params(backend="venv", log_dir="/srv/logs"))
    content = _vllm_units.unit_content(spec, None, 600, "hash")
    assert "StandardOutput=append:/srv/logs/llama.log\n" in content
    assert "StandardOutput=append:/var/log/vllm/llama.log\n" in _vllm_units.unit_content(
        Spec(params(backend="venv")), None, 600, "hash")


def test_the_env_file_quotes_for_systemd_and_stays_literal_for_docker():
    env = {"AAA": '"x', "BBB": "y\\", "CUDA_VISIBLE_DEVICES": "3"}
    assert _vllm_units.env_file_content(env, "systemd").splitlines()[1:] == [
        'AAA="\\"x"', 'BBB="y\\\\"', 'CUDA_VISIBLE_DEVICES="3"']
    assert _vllm_units.env_file_content(env).splitlines()[1:] == ['AAA="x', "BBB=y\\", "CUDA_VISIBLE_DEVICES=3"]


# ---- check mode before the vllm role created the service user ----

@pytest.mark.parametrize("check_mode", [True, False])
def test_a_missing_service_user_is_assumed_in_check_mode_and_refused_for_real(monkeypatch, tmp_path, check_mode):
    """The vllm role creates the venv backend's user before it serves: its check-mode run on a fresh host must tell
    what it would write, not fail on the user it would have created. A real run without the user is refused."""
    from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_serve_backends, _vllm_serve_manager
    from vllm_serve_fakes import Exited, FakeModule, snapshot_of
    from vllm_serve_fakes import params as module_params

    systemd = UnitSystemd()
    monkeypatch.setattr(_vllm_serve_backends, "UNIT_DIR", str(tmp_path / "units"))
    monkeypatch.setattr(_systemd, "verify", lambda unit, content: None)
    monkeypatch.setattr(_systemd, "systemctl", systemd.systemctl)
    monkeypatch.setattr(_systemd, "unit_state", lambda unit: {"loaded": False, "active": False, "enabled": False,
                                                              "sub_state": None})
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "vllm").write_text("#!/bin/sh\n")
    (venv / "bin" / "vllm").chmod(0o755)
    module = FakeModule(module_params(tmp_path, backend="venv", venv_path=str(venv), service_user="no-such-user-x1"),
                        check_mode=check_mode)
    with pytest.raises(Exited) as exited:
        _vllm_serve_manager.VllmServe(module, snapshot=snapshot_of({}), proc=str(tmp_path)).run()
    result = exited.value.result
    if check_mode:
        assert not result.get("failed"), result
        assert result["changed"] is True
        assert [w for w in module.warnings if "'no-such-user-x1' does not exist yet" in w] != []
        assert not (tmp_path / "etc").exists() and not (tmp_path / "units").exists()
        assert systemd.calls == []
    else:
        assert result["failed"] and "the user 'no-such-user-x1' does not exist on this host" in result["msg"]
