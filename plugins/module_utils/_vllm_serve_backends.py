# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_serve's backends behind one interface: read the instance (exists, running, configuration current), then
the actions of _vllm_serve_plan (pull, remove, create, start, stop, restart). The docker backend drives a container
through the Docker SDK (_vllm_docker); the systemd and venv backends share the unit path (_vllm_units, _systemd)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.inferops.vllm.plugins.module_utils import _files, _systemd, _vllm_docker, _vllm_units
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_plan import unit_fields
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_spec import LABEL_PREFIX

UNIT_DIR = "/etc/systemd/system"
# What a backend raises; the manager fails with its message.
ERRORS = (_vllm_docker.DockerBackendError, _systemd.SystemdError, _files.FileError)


class Actual(object):
    """The instance as it is: exists, running, and whether its configuration is the wanted one."""

    def __init__(self, exists, running, current):
        self.exists = exists
        self.running = running
        self.current = current


class Backend(object):
    """One instance under one backend. `wanted` (config_hash, summary, environment, health_start) is None when the
    instance is only read or removed."""

    kind = None
    result_key = None

    def __init__(self, spec, image, wanted=None):
        self.spec = spec
        self.image = image
        self.wanted = wanted or {}
        self.stop_timeout = spec.p["stop_timeout"]

    def read(self):
        """The Actual instance."""
        raise NotImplementedError

    def diff(self):
        """(before, after) for diff mode."""
        raise NotImplementedError

    def fields(self):
        """(before, after) as flat fields, to name those that differ."""
        raise NotImplementedError

    def image_present(self):
        return True

    def pull(self):
        raise NotImplementedError

    def remove(self):
        raise NotImplementedError

    def create(self):
        raise NotImplementedError

    def start(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError

    def restart(self):
        raise NotImplementedError

    def enable(self):
        """Makes the instance come back at boot where that is a separate step; returns whether it changed."""
        return False

    def removed_diff(self):
        """diff's `before` for state=absent, once read_removal read the instance."""
        return {}

    def describe(self, check_mode):
        """The value of the result's `result_key`, once the actions ran."""
        raise NotImplementedError

    def read_removal(self):
        """state=absent: the Actual instance as far as its removal needs (exists)."""
        raise NotImplementedError


class DockerBackend(Backend):
    kind = "docker"
    result_key = "container"

    def __init__(self, spec, image, wanted=None):
        super(DockerBackend, self).__init__(spec, image, wanted)
        labels = {}
        if wanted:
            labels = {LABEL_PREFIX + "instance": spec.name, LABEL_PREFIX + "config-hash": wanted["config_hash"],
                      LABEL_PREFIX + "summary": json.dumps(wanted["summary"], sort_keys=True)}
        self.docker = _vllm_docker.DockerInstance(spec, image, self.wanted.get("environment", {}), labels)
        self.container = None

    def read(self):
        self.container = self.docker.current()
        if self.container is None:
            return Actual(False, False, False)
        # The stop timeout is the container's own, not only in its hash: one created before the module set it
        # (Docker's 10 s) is replaced once.
        current = (self.docker.current_hash(self.container) == self.wanted.get("config_hash")
                   and self.docker.current_stop_timeout(self.container) == self.stop_timeout)
        return Actual(True, self.docker.is_running(self.container), current)

    def before_summary(self):
        if self.container is None:
            return {}
        return dict(self.docker.current_summary(self.container),
                    stop_timeout=self.docker.current_stop_timeout(self.container))

    def after_summary(self):
        if not self.wanted:
            return {}
        return dict(self.wanted.get("summary", {}), stop_timeout=self.stop_timeout)

    def diff(self):
        return self.before_summary(), self.after_summary()

    def fields(self):
        before, after = self.before_summary(), self.after_summary()
        if self.container is not None:
            before["config_hash"] = self.docker.current_hash(self.container)
        if self.wanted:
            after["config_hash"] = self.wanted["config_hash"]
        return before, after

    def removed_diff(self):
        return self.before_summary()

    def image_present(self):
        return self.docker.check_image()

    def pull(self):
        self.docker.pull()

    def remove(self):
        self.docker.remove(self.container, self.stop_timeout)

    def create(self):
        self.container = self.docker.create(self.wanted["health_start"])

    def start(self):
        self.docker.start(self.container)

    def stop(self):
        self.docker.stop(self.container, self.stop_timeout)

    def restart(self):
        self.docker.restart(self.container, self.stop_timeout)

    def describe(self, check_mode):
        if self.container is not None and not check_mode:
            self.container.reload()
        return self.docker.describe(self.container)

    def read_removal(self):
        return self.read()


class UnitBackend(Backend):
    """The systemd backend (a unit running `docker run`) and the venv backend (a unit running the venv's vllm)."""

    kind = "unit"
    result_key = "unit"

    def __init__(self, spec, image, wanted=None):
        super(UnitBackend, self).__init__(spec, image, wanted)
        self.unit = spec.unit_name
        self.path = os.path.join(UNIT_DIR, self.unit)
        self.content = None
        self.before = ""
        if wanted:
            self.content = _vllm_units.unit_content(spec, image, wanted["health_start"], wanted["config_hash"])

    def read(self):
        # systemd's own parser checks the unit before anything is compared or written.
        _systemd.verify(self.unit, self.content)
        self.before = _files.read(self.path) or ""
        current = not _files.needs_write(self.path, self.content, 0o644, 0, 0)
        return Actual(os.path.lexists(self.path), _systemd.unit_state(self.unit)["active"], current)

    def diff(self):
        return {"unit": self.before}, {"unit": self.content, "summary": self.wanted["summary"]}

    def fields(self):
        return unit_fields(self.before), unit_fields(self.content)

    def create(self):
        if _files.write(self.path, self.content, 0o644, 0, 0):
            _systemd.systemctl("daemon-reload")

    def start(self):
        _systemd.systemctl("start", self.unit)

    def stop(self):
        _systemd.systemctl("stop", self.unit)

    def restart(self):
        _systemd.systemctl("restart", self.unit)

    def enable(self):
        if _systemd.unit_state(self.unit)["enabled"]:
            return False
        _systemd.systemctl("enable", self.unit)
        return True

    def describe(self, check_mode):
        return self.unit

    def read_removal(self):
        self.before = _files.read(self.path) or ""
        return Actual(os.path.exists(self.path), False, True)

    def remove(self):
        _systemd.systemctl("disable", "--now", self.unit, check=False)
        os.unlink(self.path)
        _systemd.systemctl("daemon-reload")


def backend_for(spec, image, wanted=None):
    return (DockerBackend if spec.backend == "docker" else UnitBackend)(spec, image, wanted)
