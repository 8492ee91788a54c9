# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_serve's run: checks the options, reads the instance through its backend, plans the actions from the wanted
and the actual state (_vllm_serve_plan), refuses a plan that would start the instance beside another workload's
GPU processes, and executes the plan outside check mode."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import os

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.inferops.vllm.plugins.module_utils import (
    _docker_sdk, _files, _nvml, _validate, _vllm_input, _vllm_serve_plan, _vllm_serve_validate, _vllm_spec,
    _vllm_units,
)
from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_backends import ERRORS, backend_for
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_gpus import GpuCheck
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_plan import Refused

SECRET_FILES = ("serve-config.yaml", "hf_token")


class VllmServe(object):
    """One run of the module; acts only outside check mode."""

    def __init__(self, module, snapshot=_nvml.snapshot, proc="/proc"):
        self.module = module
        self.p = module.params
        self.check_mode = module.check_mode
        self.spec = _vllm_spec.Spec(self.p)
        self.gpu_check = GpuCheck(self.spec, module.warn, snapshot=snapshot, proc=proc)
        self.changed = False
        self.result = {"watchdog_hold": None}
        self.diff = {"before": {}, "after": {}}
        self.fields = ({}, {})
        # Who owns the instance's files, resolved once the input is checked (run).
        self.uid_gid = None

    def fail(self, msg, **extra):
        # Docker's and systemd's answers can quote what they were given; the keys are masked in every shape.
        secrets = list(self.p.get("api_keys") or []) + [self.p.get("hf_token")]
        self.module.fail_json(msg=redact(msg, secrets, shapes=False), changed=self.changed, **extra)

    def require_docker_sdk(self):
        if self.p["backend"] == "docker" and _docker_sdk.docker is None:
            self.module.fail_json(msg=missing_required_lib("docker"), exception=_docker_sdk.DOCKER_IMPORT_ERROR)

    # ---- files ----

    def owner(self):
        """(uid, gid) of who runs vLLM, for its files: root but for the venv backend's service user."""
        if self.p["backend"] != "venv":
            return 0, 0
        try:
            return _files.owner_ids(self.p["service_user"])
        except ValueError as exc:
            if not self.check_mode:
                raise Refused(str(exc))
            # A check-mode run of the vllm role, which creates the user before this task: the files would be
            # written for it. No file is owned by uid -1, so each one reads as a change.
            self.module.warn("service_user: the user %r does not exist yet; check mode assumes it will when this "
                             "runs for real (the vllm role creates it first)" % self.p["service_user"])
            return -1, -1

    def secrets_dir(self):
        """The instance's secrets directory, 0700 and owned by who runs vLLM; an older, looser one is tightened."""
        uid, gid = self.uid_gid
        try:
            return _files.ensure_dir(self.spec.secrets_dir, 0o700, uid, gid, self.check_mode)
        except _files.FileError as exc:
            self.fail("config_dir: the secrets directory %s" % exc)

    def salt(self):
        path = os.path.join(self.spec.secrets_dir, ".salt")
        # Read without following a symlink: anything but the salt file itself is replaced by a new salt.
        current = (_files.read(path) or "").strip()
        if current:
            return current.encode()
        value = os.urandom(16).hex()
        uid, gid = self.uid_gid
        if not self.check_mode:
            _files.write(path, value + "\n", 0o600, uid, gid, dir_mode=0o700)
        return value.encode()

    def write_files(self, environment, dry_run):
        """Writes the secrets and env files (dry_run: only tells); returns whether any changed."""
        uid, gid = self.uid_gid
        wanted = self.spec.secret_files()
        changed = False
        for name, content in wanted.items():
            changed |= _files.write(os.path.join(self.spec.secrets_dir, name), content, 0o600, uid, gid,
                                    dry_run, dir_mode=0o700)
        for name in SECRET_FILES:
            if name not in wanted:
                changed |= _files.remove(os.path.join(self.spec.secrets_dir, name), dry_run)
        if self.p["backend"] in ("systemd", "venv"):
            reader = "systemd" if self.p["backend"] == "venv" else "docker"
            changed |= _files.write(self.spec.env_file, _vllm_units.env_file_content(environment, reader), 0o600,
                                    uid, gid, dry_run)
        if self.p["hf_cache"] and self.p["backend"] != "venv" and not dry_run and not os.path.isdir(self.p["hf_cache"]):
            os.makedirs(self.p["hf_cache"], 0o755)
        return changed

    # ---- run ----

    def run(self):
        p = self.p
        try:
            # Hostile or broken values are refused before anything is read or touched.
            _vllm_input.check(p)
        except _validate.InputError as exc:
            self.fail(str(exc))
        if p["state"] == "absent":
            return self.absent()
        warn = self.module.warn
        try:
            self.result.update(_vllm_serve_validate.check(self.spec, warn))
            self.require_docker_sdk()
            if p["backend"] == "venv":
                _vllm_serve_validate.check_venv(p)
            self.uid_gid = self.owner()
            params, weight_bytes = _vllm_serve_validate.model_size(self.spec, warn)
            memory_plan = self.gpu_check.memory(params, weight_bytes)
        except Refused as exc:
            self.fail(str(exc))
        environment = self.spec.environment()
        # Its own change: a tightened directory needs no restart, unlike a changed secrets file.
        self.changed |= self.secrets_dir()
        extra = {"ipc_host": p["ipc_host"], "shm": p["shm_size_mib"], "restart": p["restart_policy"],
                 "publish": p["publish_address"], "hf_cache": p["hf_cache"], "log": p["log_max_size"],
                 "user": p["service_user"], "venv": p["venv_path"], "stop": p["stop_timeout"]}
        try:
            secrets_digest = self.spec.secrets_digest(self.salt())
            config_hash = self.spec.config_hash(p["image"], environment, extra, secrets_digest)
            summary = self.spec.summary(p["image"], environment)
            files_changed = self.write_files(environment, dry_run=True)
        except _files.FileError as exc:
            self.fail(str(exc))
        params_count = params or (weight_bytes / 2.0 if weight_bytes else None)
        wanted = {"config_hash": config_hash, "summary": summary, "environment": environment,
                  "health_start": self.spec.health_start_period(params_count)}
        try:
            self.converge(backend_for(self.spec, p["image"], wanted), environment, files_changed)
        except (Refused,) + ERRORS as exc:
            self.fail(str(exc))
        self.changed |= files_changed
        self.result.update(command=self.spec.serve_args(), gpus=self.spec.gpus, config_hash=config_hash,
                           memory_plan=memory_plan)
        return self.finish()

    def converge(self, backend, environment, files_changed):
        """Plans from the actual instance, checks the plan, and executes it outside check mode."""
        state = self.p["state"]
        actual = backend.read()
        self.diff["before"], self.diff["after"] = backend.diff()
        self.fields = backend.fields()
        actions = _vllm_serve_plan.lifecycle(backend.kind, state, actual.exists, actual.running, actual.current,
                                             files_changed)
        if backend.kind == "docker":
            present = "create" not in actions or backend.image_present()
            actions = _vllm_serve_plan.with_pull(actions, self.p["pull"], present, self.p["image"])
        self.result["interrupts"] = _vllm_serve_plan.interrupts(actions, actual.running)
        self.gpu_check.foreign(actions, actual.running, actual.exists)
        # Check mode reports what the plan would do, for units as for containers (a start or a stop too).
        self.changed |= _vllm_serve_plan.changes(actions)
        if not self.check_mode:
            with self.watchdog_held(actions):
                self.write_files(environment, dry_run=False)
                for action in actions:
                    if action in _vllm_serve_plan.SHAPING:
                        getattr(backend, action)()
                self.changed |= backend.enable()
                for action in actions:
                    if action not in _vllm_serve_plan.SHAPING:
                        getattr(backend, action)()
        self.result[backend.result_key] = backend.describe(self.check_mode)

    @contextlib.contextmanager
    def watchdog_held(self, actions):
        """Holds the host's watchdog off the instance while the actions run, and after them for the caller's health
        gate (the caller removes the hold); a failed action removes it at once, so the watchdog takes over."""
        seconds, directory = self.p["watchdog_hold"], self.p["watchdog_hold_dir"]
        if not actions or not seconds or not os.path.isdir(directory):
            yield
            return
        path = os.path.join(directory, "hold-%s" % self.p["name"])
        _files.write(path, "%d\n" % seconds, 0o644)
        # The watchdog counts from the file's time: an earlier hold with the same content is renewed too.
        os.utime(path)
        self.result["watchdog_hold"] = path
        try:
            yield
        except BaseException:
            _files.remove(path)
            self.result["watchdog_hold"] = None
            raise

    def finish(self):
        kwargs = dict(changed=self.changed, instance=self.spec.paths(), **self.result)
        if self.module._diff:
            kwargs["diff"] = self.diff
            kwargs["changed_fields"] = _vllm_serve_plan.changed_fields(*self.fields)
        self.module.exit_json(**kwargs)

    def absent(self):
        spec = self.spec
        self.require_docker_sdk()
        try:
            backend = backend_for(spec, self.p["image"])
            actual = backend.read_removal()
            actions = _vllm_serve_plan.lifecycle(backend.kind, "absent", actual.exists, actual.running,
                                                 actual.current, False)
            if actions:
                self.changed = True
                self.diff["before"] = backend.removed_diff()
                self.fields = (backend.fields()[0], {})
            if not self.check_mode:
                with self.watchdog_held(actions):
                    for action in actions:
                        getattr(backend, action)()
        except ERRORS as exc:
            self.fail(str(exc))
        try:
            for name in SECRET_FILES + (".salt",):
                self.changed |= _files.remove(os.path.join(spec.secrets_dir, name), self.check_mode)
            self.changed |= _files.remove(spec.env_file, self.check_mode)
        except _files.FileError as exc:
            self.fail(str(exc))
        if not self.check_mode and os.path.isdir(spec.secrets_dir) and not os.path.islink(spec.secrets_dir) \
                and not os.listdir(spec.secrets_dir):
            os.rmdir(spec.secrets_dir)
        return self.finish()
