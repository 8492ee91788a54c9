"""vllm_serve's two real backends under the manager, with Docker's SDK client and systemctl faked: the calls each
plan makes, in order, as the module made them before plans."""

import json

import pytest
from docker.errors import ImageNotFound, NotFound

from ansible_collections.inferops.vllm.plugins.module_utils import _systemd, _vllm_docker, _vllm_serve_backends
from ansible_collections.inferops.vllm.plugins.module_utils import _vllm_serve_manager
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_spec import LABEL_PREFIX

from vllm_serve_fakes import Exited, FakeModule, params, snapshot_of


class FakeContainer(object):
    """config: the container's Config as Docker reports it; one created before the module set a stop timeout has no
    StopTimeout."""

    def __init__(self, calls, labels, running, name="vllm-llama", config=None):
        self.calls = calls
        self.labels = labels
        self.attrs = {"State": {"Running": running}, "Config": config if config is not None else {}}
        self.id, self.name, self.status = "c0ffee", name, "running" if running else "exited"

    def start(self):
        self.calls.append("start")

    def stop(self, timeout):
        self.calls.append("stop %d" % timeout)

    def remove(self, force):
        self.calls.append("remove")

    def reload(self):
        self.calls.append("reload")


class FakeClient(object):
    """The SDK's client: containers.get, images.get and images.pull, and the low-level api.create_container, which
    takes what the SDK's own _create_container_args made of the high-level arguments (kept in create_kwargs)."""

    def __init__(self, container, image_present):
        self.calls = []
        self.container = container
        self.image_present = image_present
        self.containers = self
        self.images = self
        self.api = self
        self.api_version = "1.41"
        self.created = None
        self.create_kwargs = None

    def get(self, name):
        self.calls.append("get %s" % name)
        if self.created is not None and name == self.created.id:
            return self.created
        if name.startswith("vllm-"):
            if self.container is None:
                raise NotFound("no such container")
            return self.container
        if not self.image_present:
            raise ImageNotFound("no such image")
        return object()

    def pull(self, image):
        self.calls.append("pull %s" % image)

    def create_container(self, image, **kwargs):
        self.calls.append("create %s" % image)
        self.create_kwargs = dict(kwargs, image=image)
        # As Docker keeps it: StopTimeout only when one was given.
        config = {} if kwargs.get("stop_timeout") is None else {"StopTimeout": kwargs["stop_timeout"]}
        self.created = FakeContainer(self.calls, kwargs["labels"], False, config=config)
        return {"Id": self.created.id, "Warnings": []}


def serve(monkeypatch, tmp_path, client, check_mode=False, diff=False, **overrides):
    monkeypatch.setattr(_vllm_docker.docker, "from_env", lambda timeout: client)
    module = FakeModule(params(tmp_path, backend="docker", **overrides), check_mode=check_mode, diff=diff)
    with pytest.raises(Exited) as exited:
        _vllm_serve_manager.VllmServe(module, snapshot=snapshot_of({}), proc=str(tmp_path)).run()
    return exited.value.result


def stale_container(calls, running):
    summary = {"image": "vllm/vllm-openai:v0.32.0", "args": [], "gpus": ["0"], "env": {}, "backend": "docker"}
    return FakeContainer(calls, {LABEL_PREFIX + "config-hash": "old", LABEL_PREFIX + "summary": json.dumps(summary)},
                         running)


def test_a_stale_running_container_is_stopped_removed_created_and_started(monkeypatch, tmp_path):
    client = FakeClient(None, image_present=True)
    client.container = stale_container(client.calls, running=True)
    result = serve(monkeypatch, tmp_path, client, diff=True)
    assert client.calls == ["get vllm-llama", "get vllm/vllm-openai:v0.33.0", "stop 30", "remove",
                            "create vllm/vllm-openai:v0.33.0", "get c0ffee", "start", "reload"]
    assert result["changed"] is True and result["interrupts"] is True
    assert result["container"] == {"id": "c0ffee", "name": "vllm-llama", "status": "exited"}
    # The old summary had no environment: the instance marker and the others are new; nor a stop timeout.
    assert result["changed_fields"] == ["args", "config_hash", "env", "image", "stop_timeout"]
    assert client.created.labels[LABEL_PREFIX + "config-hash"] == result["config_hash"]


def test_check_mode_reads_and_pulls_nothing(monkeypatch, tmp_path):
    client = FakeClient(None, image_present=False)
    result = serve(monkeypatch, tmp_path, client, check_mode=True, pull="always")
    assert client.calls == ["get vllm-llama", "get vllm/vllm-openai:v0.33.0"]
    assert result["changed"] is True and result["interrupts"] is False and result["container"] is None


def test_a_current_container_is_left_alone_but_pull_always_refreshes_the_image(monkeypatch, tmp_path):
    client = FakeClient(None, image_present=True)
    serve(monkeypatch, tmp_path, client)
    client.container, client.calls[:] = client.created, []
    client.container.attrs["State"]["Running"] = True
    result = serve(monkeypatch, tmp_path, client, pull="always")
    assert client.calls == ["get vllm-llama", "pull vllm/vllm-openai:v0.33.0", "reload"]
    assert result["changed"] is False and result["interrupts"] is False


def test_a_missing_image_with_pull_never_is_refused_before_any_file_is_written(monkeypatch, tmp_path):
    client = FakeClient(None, image_present=False)
    result = serve(monkeypatch, tmp_path, client, pull="never")
    assert result["msg"] == "image vllm/vllm-openai:v0.33.0 is not on this host and pull is never"
    assert client.calls == ["get vllm-llama", "get vllm/vllm-openai:v0.33.0"]
    assert not (tmp_path / "etc" / "secrets" / "llama" / "serve-config.yaml").exists()


def test_absent_stops_and_removes_the_container(monkeypatch, tmp_path):
    client = FakeClient(None, image_present=True)
    client.container = stale_container(client.calls, running=True)
    result = serve(monkeypatch, tmp_path, client, state="absent", diff=True)
    assert client.calls == ["get vllm-llama", "stop 30", "remove"]
    assert result["changed"] is True and result["diff"]["before"]["image"] == "vllm/vllm-openai:v0.32.0"
    assert result["diff"]["before"]["stop_timeout"] is None
    assert "interrupts" not in result


def test_the_container_is_created_with_the_stop_timeout_as_its_own(monkeypatch, tmp_path):
    client = FakeClient(None, image_present=True)
    result = serve(monkeypatch, tmp_path, client, stop_timeout=45, shutdown_timeout=30)
    created = client.create_kwargs
    assert created["stop_timeout"] == 45 and client.created.attrs["Config"] == {"StopTimeout": 45}
    # The rest went through the SDK's own conversion of the high-level arguments, as containers.create() does.
    host = created["host_config"]
    assert created["name"] == "vllm-llama" and created["stop_signal"] == "SIGTERM" and created["detach"] is True
    assert host["Init"] is True and host["IpcMode"] == "host" and host["RestartPolicy"] == {"Name": "unless-stopped"}
    assert host["DeviceRequests"][0]["DeviceIDs"] == ["0"] and host["DeviceRequests"][0]["Driver"] == "nvidia"
    assert host["PortBindings"] == {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}]}
    assert host["LogConfig"]["Config"] == {"max-size": "100m", "max-file": "5"}
    assert created["ports"] == [("8000", "tcp")] and created["healthcheck"]["retries"] == 5
    assert created["labels"][LABEL_PREFIX + "config-hash"] == result["config_hash"]
    assert result["changed"] is True and result["container"]["id"] == "c0ffee"


def test_a_uuid_typed_in_capitals_reaches_docker_in_nvmls_form(monkeypatch, tmp_path):
    # The container is created with the UUID as NVML prints it, and its config hash is that of NVML's form: typing
    # the UUID in another case later changes nothing.
    uuid = "GPU-6f4a3c1e-52b1-4d39-8f8e-9d6a0c1b2e3f"
    client = FakeClient(None, image_present=True)
    result = serve(monkeypatch, tmp_path, client, gpus=["gpu-" + uuid[4:].upper()], check_gpus=False)
    assert client.create_kwargs["host_config"]["DeviceRequests"][0]["DeviceIDs"] == [uuid]
    assert result["gpus"] == [uuid]
    client.container, client.calls[:] = client.created, []
    client.container.attrs["State"]["Running"] = True
    again = serve(monkeypatch, tmp_path, client, gpus=[uuid], check_gpus=False)
    assert again["changed"] is False and again["config_hash"] == result["config_hash"]


# A container from before the module set its stop timeout has none; the others are hostile or stale shapes.
@pytest.mark.parametrize("config, before", [
    ({}, None), ({"StopTimeout": None}, None), ({"StopTimeout": 10}, 10), ({"StopTimeout": "30"}, None),
    ({"StopTimeout": True}, None), (None, None)])
def test_a_container_without_the_wanted_stop_timeout_is_recreated_once_then_left_alone(monkeypatch, tmp_path, config,
                                                                                       before):
    client = FakeClient(None, image_present=True)
    serve(monkeypatch, tmp_path, client)
    # Same configuration hash, but not its stop timeout.
    client.container = FakeContainer(client.calls, client.created.labels, True, config=config)
    if config is None:
        client.container.attrs = {"State": {"Running": True}}
    client.created, client.calls[:] = None, []
    result = serve(monkeypatch, tmp_path, client, diff=True)
    assert client.calls == ["get vllm-llama", "get vllm/vllm-openai:v0.33.0", "stop 30", "remove",
                            "create vllm/vllm-openai:v0.33.0", "get c0ffee", "start", "reload"]
    assert result["changed"] is True and result["interrupts"] is True
    assert result["changed_fields"] == ["stop_timeout"]
    assert result["diff"]["before"]["stop_timeout"] == before and result["diff"]["after"]["stop_timeout"] == 30
    assert client.created.attrs["Config"] == {"StopTimeout": 30}
    client.container, client.calls[:] = client.created, []
    client.container.attrs["State"]["Running"] = True
    result = serve(monkeypatch, tmp_path, client, diff=True)
    assert client.calls == ["get vllm-llama", "reload"]
    assert result["changed"] is False and result["interrupts"] is False and result["changed_fields"] == []


def test_check_mode_tells_the_recreation_for_a_missing_stop_timeout_and_does_nothing(monkeypatch, tmp_path):
    client = FakeClient(None, image_present=True)
    serve(monkeypatch, tmp_path, client)
    old = client.container = FakeContainer(client.calls, client.created.labels, True)
    client.created, client.create_kwargs, client.calls[:] = None, None, []
    result = serve(monkeypatch, tmp_path, client, check_mode=True, diff=True)
    assert client.calls == ["get vllm-llama", "get vllm/vllm-openai:v0.33.0"]
    assert result["changed"] is True and result["interrupts"] is True and result["changed_fields"] == ["stop_timeout"]
    assert client.create_kwargs is None and old.attrs == {"State": {"Running": True}, "Config": {}}


def test_another_stop_timeout_recreates_the_container_with_it(monkeypatch, tmp_path):
    client = FakeClient(None, image_present=True)
    serve(monkeypatch, tmp_path, client)
    client.container, client.calls[:] = client.created, []
    client.container.attrs["State"]["Running"] = True
    result = serve(monkeypatch, tmp_path, client, diff=True, stop_timeout=60)
    assert client.calls == ["get vllm-llama", "get vllm/vllm-openai:v0.33.0", "stop 60", "remove",
                            "create vllm/vllm-openai:v0.33.0", "get c0ffee", "start", "reload"]
    assert result["changed_fields"] == ["config_hash", "stop_timeout"]
    assert client.create_kwargs["stop_timeout"] == 60 and client.created.attrs["Config"] == {"StopTimeout": 60}


@pytest.mark.parametrize("attrs, expected", [
    ({"Config": {"StopTimeout": 45}}, 45), ({"Config": {"StopTimeout": 0}}, 0), ({"Config": {}}, None),
    ({"Config": {"StopTimeout": None}}, None), ({"Config": {"StopTimeout": "45"}}, None),
    ({"Config": {"StopTimeout": False}}, None), ({"Config": "x"}, None), ({}, None), (None, None), ("x", None)])
def test_the_containers_own_stop_timeout_is_read_whatever_shape_it_has(attrs, expected):
    container = FakeContainer([], {}, False)
    container.attrs = attrs
    assert _vllm_docker.DockerInstance.current_stop_timeout(container) == expected


class FakeSystemd(object):
    def __init__(self, active, enabled):
        self.calls = []
        self.active = active
        self.enabled = enabled

    def systemctl(self, *args, **kwargs):
        self.calls.append(" ".join(args))
        return 0, ""

    def unit_state(self, unit):
        self.calls.append("show")
        return {"loaded": True, "active": self.active, "enabled": self.enabled, "sub_state": None}


def serve_unit(monkeypatch, tmp_path, systemd, check_mode=False, **overrides):
    monkeypatch.setattr(_vllm_serve_backends, "UNIT_DIR", str(tmp_path / "units"))
    monkeypatch.setattr(_systemd, "verify", lambda unit, content: None)
    monkeypatch.setattr(_systemd, "systemctl", systemd.systemctl)
    monkeypatch.setattr(_systemd, "unit_state", systemd.unit_state)
    module = FakeModule(params(tmp_path, **overrides), check_mode=check_mode)
    with pytest.raises(Exited) as exited:
        _vllm_serve_manager.VllmServe(module, snapshot=snapshot_of({}), proc=str(tmp_path)).run()
    return exited.value.result


def test_a_new_unit_is_written_reloaded_enabled_and_started(monkeypatch, tmp_path):
    systemd = FakeSystemd(active=False, enabled=False)
    result = serve_unit(monkeypatch, tmp_path, systemd)
    assert systemd.calls == ["show", "daemon-reload", "show", "enable vllm-llama.service", "start vllm-llama.service"]
    assert (tmp_path / "units" / "vllm-llama.service").read_text().startswith("# Managed by inferops.vllm")
    assert result["unit"] == "vllm-llama.service" and result["changed"] is True and result["interrupts"] is False


def test_an_unchanged_running_unit_is_left_alone_and_a_changed_one_restarted(monkeypatch, tmp_path):
    systemd = FakeSystemd(active=True, enabled=True)
    serve_unit(monkeypatch, tmp_path, systemd)
    systemd.calls[:] = []
    result = serve_unit(monkeypatch, tmp_path, systemd)
    assert systemd.calls == ["show", "show"] and result["changed"] is False and result["interrupts"] is False
    systemd.calls[:] = []
    result = serve_unit(monkeypatch, tmp_path, systemd, max_model_len=4096)
    assert systemd.calls == ["show", "daemon-reload", "show", "restart vllm-llama.service"]
    assert result["changed"] is True and result["interrupts"] is True


def test_absent_disables_and_removes_the_unit(monkeypatch, tmp_path):
    systemd = FakeSystemd(active=True, enabled=True)
    serve_unit(monkeypatch, tmp_path, systemd)
    systemd.calls[:] = []
    result = serve_unit(monkeypatch, tmp_path, systemd, state="absent")
    assert systemd.calls == ["disable --now vllm-llama.service", "daemon-reload"]
    assert result["changed"] is True and not (tmp_path / "units" / "vllm-llama.service").exists()
