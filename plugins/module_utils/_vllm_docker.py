# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The docker backend of vllm_serve, through the Docker SDK: GPUs go in as DeviceRequests (no CLI, no quoting),
with --init semantics, shared memory, a restart policy, the HF cache volume, a HEALTHCHECK whose start period
suits the model's size, its own stop timeout (Docker's StopTimeout, so that any `docker stop`, `docker restart` or the
daemon's shutdown waits as long as the module's stops), and labels that carry the hash of the desired
configuration."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import time

from ansible_collections.inferops.vllm.plugins.module_utils._vllm_spec import LABEL_PREFIX

from ansible_collections.inferops.vllm.plugins.module_utils._docker_sdk import docker

if docker is not None:
    from docker.errors import APIError, DockerException, ImageNotFound, NotFound
    from docker.models import containers as docker_containers
    from docker.types import DeviceRequest, LogConfig

NANOSECONDS = 1000 * 1000 * 1000
# After its stop timeout Docker kills the container and waits only about 15 s for it to go. A vLLM process can take
# longer to die (GPU contexts to tear down; on a loaded 2-core lab host a killed CPU worker took 100 s to unmap its
# memory), and Docker then answers 500 ("did not receive an exit event") although the container exits later.
KILLED_EXIT_WAIT = 180


class DockerBackendError(Exception):
    pass


def _call(what, func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    # requests' errors (a read timeout, a refused socket) are OSErrors that the SDK does not wrap.
    except (APIError, DockerException, OSError) as exc:
        raise DockerBackendError("Docker API, %s: %s" % (what, exc))


class DockerInstance(object):
    def __init__(self, spec, image, environment, labels, timeout=60):
        self.spec = spec
        self.image = image
        self.environment = environment
        self.labels = labels
        self.client = _call("connecting", docker.from_env, timeout=timeout)

    def current(self):
        try:
            return self.client.containers.get(self.spec.container_name)
        except NotFound:
            return None
        except (APIError, DockerException, OSError) as exc:
            raise DockerBackendError("Docker API, reading container %s: %s" % (self.spec.container_name, exc))

    # A container of this name may be anyone's: its labels and state are read as whatever shape they have.
    @staticmethod
    def _labels(container):
        labels = getattr(container, "labels", None)
        return labels if isinstance(labels, dict) else {}

    @classmethod
    def current_hash(cls, container):
        value = cls._labels(container).get(LABEL_PREFIX + "config-hash")
        return value if isinstance(value, str) else None

    @classmethod
    def current_summary(cls, container):
        try:
            summary = json.loads(cls._labels(container).get(LABEL_PREFIX + "summary") or "{}")
        except (ValueError, TypeError, RecursionError):
            return {}
        return summary if isinstance(summary, dict) else {}

    @staticmethod
    def is_running(container):
        attrs = getattr(container, "attrs", None)
        state = attrs.get("State") if isinstance(attrs, dict) else None
        return isinstance(state, dict) and state.get("Running") is True

    def check_image(self):
        try:
            self.client.images.get(self.image)
        except ImageNotFound:
            return False
        except (APIError, DockerException) as exc:
            raise DockerBackendError("Docker API, reading image %s: %s" % (self.image, exc))
        return True

    def pull(self):
        _call("pulling %s" % self.image, self.client.images.pull, self.image)

    def create(self, health_start_period):
        p = self.spec.p
        host_config = {}
        if p["ipc_host"]:
            host_config["ipc_mode"] = "host"
        else:
            host_config["shm_size"] = "%dm" % p["shm_size_mib"]
        volumes = dict((host, {"bind": inside, "mode": mode}) for host, inside, mode in self.spec.container_mounts())
        kwargs = dict(
            image=self.image, command=self.spec.serve_args(), name=self.spec.container_name, detach=True,
            environment=self.environment, labels=self.labels, init=True,
            device_requests=[DeviceRequest(driver="nvidia", device_ids=self.spec.gpus, capabilities=[["gpu"]])],
            restart_policy={"Name": p["restart_policy"]}, volumes=volumes,
            ports={"%d/tcp" % p["port"]: (p["publish_address"], p["port"])},
            healthcheck={"test": self.spec.healthcheck_command(), "interval": 30 * NANOSECONDS,
                         "timeout": 10 * NANOSECONDS, "retries": 5,
                         "start_period": health_start_period * NANOSECONDS},
            log_config=LogConfig(type="json-file", config={"max-size": p["log_max_size"], "max-file": "5"}),
            stop_signal="SIGTERM", **host_config)
        return _call("creating container %s" % self.spec.container_name, self._create, kwargs, p["stop_timeout"])

    def _create(self, kwargs, stop_timeout):
        """containers.create() with the container's own stop timeout: the high-level API takes no stop_timeout (Debian
        12's SDK 5.0.3 refuses it, and 7.x too), so its arguments are converted as it converts them and the
        low-level API, which takes it, creates the container."""
        create_kwargs = docker_containers._create_container_args(dict(kwargs, version=self.client.api.api_version))
        created = self.client.api.create_container(stop_timeout=stop_timeout, **create_kwargs)
        return self.client.containers.get(created["Id"])

    @staticmethod
    def current_stop_timeout(container):
        """The container's own stop timeout (Config.StopTimeout); None when it has none (Docker's 10 s then), as
        for a container created before the module set it."""
        attrs = getattr(container, "attrs", None)
        config = attrs.get("Config") if isinstance(attrs, dict) else None
        value = config.get("StopTimeout") if isinstance(config, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def start(self, container):
        _call("starting %s" % self.spec.container_name, container.start)

    def stop(self, container, timeout, clock=time.monotonic, sleep=time.sleep):
        what = "stopping %s" % self.spec.container_name
        try:
            container.stop(timeout=timeout)
        except (APIError, DockerException) as exc:
            deadline = clock() + KILLED_EXIT_WAIT
            while clock() < deadline:
                sleep(1)
                _call("reading %s" % self.spec.container_name, container.reload)
                if not self.is_running(container):
                    return
            raise DockerBackendError("Docker API, %s: %s; it was still running %d s later" % (
                what, exc, KILLED_EXIT_WAIT))

    def restart(self, container, timeout):
        self.stop(container, timeout)
        self.start(container)

    def remove(self, container, timeout):
        if self.is_running(container):
            self.stop(container, timeout)
        _call("removing %s" % self.spec.container_name, container.remove, force=True)

    @staticmethod
    def describe(container):
        if container is None:
            return None
        return {"id": container.id, "name": container.name, "status": container.status}
