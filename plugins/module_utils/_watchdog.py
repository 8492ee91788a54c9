# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The watchdog of a host's vLLM instances: a real one-token inference under a deadline, every few seconds.

An instance that fails it leaves the gateways' rotation at once: HAProxy asks this program's agent port for each
server (`agent-check`, the instance's name sent as the question) and takes a server whose answer is "down" out,
whatever its /health says. After `failures_before_restart` failures in a row of an instance that runs, the
watchdog collects diagnostics (as vllm_diagnose does), restarts it, waits until it serves and lets it back.
Restarts are counted, the runtime's own (Docker's restart policy, systemd's Restart=) with the watchdog's: past
`max_restarts` within `restart_window` it gives up, stops a runtime that keeps restarting the instance, leaves the
instance out, and says so in the journal (priority crit), in its state file and as a metric. It never starts an
instance somebody stopped, and lets a starting one start. A given-up instance is let back once it serves again
(after a person fixed and restarted it).

Run by systemd as a plain python3 program, without Ansible:

    PYTHONPATH=DIR python3 -m ansible_collections.inferops.vllm.plugins.module_utils._watchdog --config FILE

where DIR holds the collection's module_utils. Exit status 2 on a configuration it refuses (one line names the
field and the fix).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import math
import os
import re
import shutil
import socket
import sys
import threading
import time

from ansible_collections.inferops.vllm.plugins.module_utils import _command, _diagnose, _files, _validate, \
    _vllm_health
from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact

PROG = "inferops-vllm-watchdog"
SERVING = ("healthy", "degraded")
# name: (kind, minimum, maximum, default)
SETTINGS = {
    "interval": (float, 1, 3600, 5.0),
    "probe_timeout": (float, 1, 600, 5.0),
    "failures_before_restart": (int, 1, 100, 2),
    "max_restarts": (int, 1, 1000, 3),
    "restart_window": (float, 60, 7 * 86400, 1800.0),
    "start_period": (float, 10, 86400, 900.0),
    "stop_timeout": (int, 0, 3600, 30),
    "keep_diagnostics": (int, 0, 1000, 5),
    "agent_port": (int, 1, 65535, 7655),
}
PATHS = {"state_file": "/var/lib/inferops/watchdog/state.json",
         "diagnostics_dir": "/var/lib/inferops/diagnostics/watchdog",
         "hold_dir": "/run/inferops-vllm-watchdog",
         "textfile_dir": ""}
# A hold file is honoured at most this long after it was written, whatever it asks: a play that died between
# writing it and removing it must not leave an instance unwatched for ever.
MAX_HOLD = 86400
BACKENDS = ("docker", "systemd", "venv")
METRICS_FILE = "inferops_vllm_watchdog.prom"
# journald reads a "<N>" prefix as the line's priority (SyslogLevelPrefix=yes, systemd's default).
CRIT, ERR, WARNING, NOTICE, INFO = 2, 3, 4, 5, 6
# Failures a restart cannot fix (a key or a model that does not match the configuration, a build or dtype whose
# instructions this CPU lacks): the instance is held out, and a person is told, but it is not restarted.
NOT_FIXED_BY_RESTART = ("api_key_rejected", "model_not_served", "illegal_instruction")
# What the agent answers at most, and how long it waits for HAProxy's question.
AGENT_REASON_MAX = 120
AGENT_READ_TIMEOUT = 2.0


class ConfigError(Exception):
    """The configuration is refused; the message names the field and the fix."""


def _setting(config, name):
    kind, low, high, default = SETTINGS[name]
    value = config.get(name, default)
    try:
        if value is None:
            raise _validate.InputError("%s: null is not a number; give one from %s to %s or leave it out"
                                       % (name, low, high))
        if kind is int and (isinstance(value, float) or isinstance(value, bool)):
            raise _validate.InputError("%s: %r is not a whole number" % (name, value))
        _validate.number(name, value, minimum=low, maximum=high)
    except _validate.InputError as exc:
        raise ConfigError(str(exc))
    return kind(value)


def _path(config, name):
    value = config.get(name, PATHS[name])
    if not isinstance(value, str) or (value and not os.path.isabs(value)) or ".." in value.split("/"):
        raise ConfigError("%s: %r is not an absolute path without '..'; give one like %r"
                          % (name, value, PATHS[name] or "/var/lib/prometheus/node-exporter"))
    try:
        _validate.single_line(name, value)
    except _validate.InputError as exc:
        raise ConfigError(str(exc))
    return value


def _instance(item, index):
    where = "instances[%d]" % index
    if not isinstance(item, dict):
        raise ConfigError("%s: expected a mapping {name, backend, port, ...}, got %s" % (where, type(item).__name__))
    unknown = sorted(set(item) - {"name", "backend", "port", "tls", "model", "served_model_name", "keys_file"})
    if unknown:
        raise ConfigError("%s: unknown key(s) %s; remove them" % (where, ", ".join(repr(u) for u in unknown)))
    try:
        name = _validate.instance_name(where + ".name", item.get("name"))
        _validate.port(where + ".port", item.get("port"))
        for key in ("model", "served_model_name", "keys_file"):
            if item.get(key) is not None:
                if not isinstance(item[key], str):
                    raise _validate.InputError("%s.%s: expected a text" % (where, key))
                _validate.single_line("%s.%s" % (where, key), item[key])
    except _validate.InputError as exc:
        raise ConfigError(str(exc))
    keys_file = item.get("keys_file")
    if keys_file is not None and (not os.path.isabs(keys_file) or ".." in keys_file.split("/")):
        raise ConfigError("%s.keys_file: %r is not an absolute path without '..'; give the instance's "
                          "serve-config.yaml in its secrets directory" % (where, keys_file))
    backend = item.get("backend", "docker")
    if backend not in BACKENDS:
        raise ConfigError("%s.backend: %r is not one of %s" % (where, backend, ", ".join(BACKENDS)))
    if not isinstance(item.get("tls", False), bool):
        raise ConfigError("%s.tls: expected true or false" % where)
    if not item.get("model") and not item.get("served_model_name"):
        raise ConfigError("%s: give model or served_model_name (the probe asks for that model)" % where)
    return dict(item, name=name, backend=backend, tls=item.get("tls", False))


def load_config(text):
    """The validated configuration, defaults filled in, from the JSON the vllm role writes."""
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ConfigError("the configuration is not JSON (%s); let the vllm role write it" % exc)
    if not isinstance(config, dict):
        raise ConfigError("the configuration must be a JSON object")
    known = set(SETTINGS) | set(PATHS) | {"instances", "agent_address"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError("unknown setting(s) %s; known: %s"
                          % (", ".join(repr(u) for u in unknown), ", ".join(sorted(known))))
    result = dict((name, _setting(config, name)) for name in SETTINGS)
    result.update((name, _path(config, name)) for name in PATHS)
    address = config.get("agent_address", "0.0.0.0")
    if not isinstance(address, str) or not re.match(r"^[0-9A-Fa-f.:]+$", address):
        raise ConfigError("agent_address: %r is not an IP address; give one like 0.0.0.0 or 127.0.0.1" % (address,))
    result["agent_address"] = address
    instances = config.get("instances", [])
    if not isinstance(instances, list):
        raise ConfigError("instances: expected a list")
    result["instances"] = [_instance(item, i) for i, item in enumerate(instances)]
    names = [i["name"] for i in result["instances"]]
    if len(set(names)) != len(names):
        raise ConfigError("instances: a name appears twice; each instance is watched once")
    if result["probe_timeout"] >= result["interval"] * 10:
        raise ConfigError("probe_timeout: %s s is 10 intervals or more; lower it or raise interval"
                          % result["probe_timeout"])
    return result


def _top(report):
    found = report.get("diagnosis") or []
    return found[0] if found else None


def describe(report):
    """One line: the verdict and its first diagnosis, e.g. "unhealthy (inference_hang: ...)"."""
    top = _top(report)
    text = report.get("status", "unknown")
    if top:
        text += " (%s: %s)" % (top["code"], top["message"])
    elif report.get("failed_checks"):
        text += " (failed: %s)" % ", ".join(report["failed_checks"])
    return text


class Watch(object):
    """One instance's state: whether it is in rotation, its failures in a row, its restarts in the window.

    `actions` probes, restarts, stops, diagnoses and waits (HostActions on a host, a fake in tests); `say` logs a
    line at a journal priority; `clock` is wall time (restarts are remembered across the watchdog's own restarts).
    """

    def __init__(self, instance, settings, actions, say, clock=time.time, saved=None):
        self.instance = instance
        self.name = instance["name"]
        self.settings = settings
        self.actions = actions
        self.say = say
        self.clock = clock
        saved = saved or {}
        self.restarts = [t for t in saved.get("restarts", []) if isinstance(t, (int, float)) and math.isfinite(t)]
        self.restarts_total = saved.get("restarts_total", 0) if isinstance(saved.get("restarts_total"), int) else 0
        self.state = "gave_up" if saved.get("state") == "gave_up" else "unknown"
        self.reason = saved.get("reason", "") if self.state == "gave_up" else ""
        self.in_rotation = None if self.state != "gave_up" else False
        self.failures = 0
        self.runtime_restarts = None
        # Who made the last restart counted: the runtime (Docker's policy, systemd's Restart=) or the watchdog.
        self.last_restart_by = None
        self.last_status = None
        self.last_probe = None
        self.bundle = saved.get("bundle")
        self.lock = threading.Lock()

    # ---- what others read ----

    def agent_answer(self):
        """HAProxy's agent protocol: "up" lets the health checks decide; "down #why" takes the server out (HAProxy
        2.6 reads "down#why", without the space, as an error and changes nothing). The reason loses the characters
        HAProxy's answer or its CSV statistics would read as separators."""
        with self.lock:
            if self.in_rotation is None or self.in_rotation:
                return "up"
            why = re.sub(r"[^A-Za-z0-9 _.:()/-]", "", "watchdog %s: %s" % (self.state, self.reason))
            return "down #" + why[:AGENT_REASON_MAX]

    def snapshot(self):
        with self.lock:
            return {"state": self.state, "in_rotation": bool(self.in_rotation), "reason": self.reason,
                    "failures_in_a_row": self.failures, "restarts": list(self.restarts),
                    "restarts_total": self.restarts_total, "last_status": self.last_status,
                    "last_probe": self.last_probe, "bundle": self.bundle}

    # ---- one cycle ----

    def step(self):
        if self.actions.held(self.instance):
            # A planned stop or restart (the vllm role, a runbook) is under way: a failure now is expected.
            if self.state != "held":
                self.say(INFO, "%s: held by a planned operation (the vllm role or a runbook): not probed"
                         % self.name)
            self.failures = 0
            self._set("held", None, "")
            return
        report = self.actions.probe(self.instance)
        now = self.clock()
        with self.lock:
            self.last_status = report.get("status")
            self.last_probe = now
        self._count_runtime_restarts(report.get("runtime"), now)
        if report.get("status") in SERVING:
            self._serving(report)
            return
        self._failing(report, now)

    def _set(self, state, in_rotation, reason):
        with self.lock:
            self.state, self.in_rotation, self.reason = state, in_rotation, reason

    def _serving(self, report):
        was_out = self.in_rotation is False
        if self.state == "gave_up":
            self.say(NOTICE, "%s: serves again (restarted outside the watchdog): back in rotation, restarts allowed "
                             "again" % self.name)
            with self.lock:
                self.restarts = []
        elif was_out:
            self.say(NOTICE, "%s: serves again: back in rotation" % self.name)
        self.failures = 0
        self._set("serving", True, "")

    def _failing(self, report, now):
        self.failures += 1
        what = describe(report)
        runtime = report.get("runtime") or {}
        if self.state == "gave_up":
            # Out until a person restarts it and it serves: nothing more to do, nothing more to say.
            return
        if self.in_rotation is not False:
            self.say(WARNING, "%s: out of rotation: %s" % (self.name, what))
        self._set(self.state, False, what)
        self._forget_old_restarts(now)
        if len(self.restarts) >= self.settings["max_restarts"]:
            self._give_up(report, runtime)
            return
        if runtime and (not runtime.get("exists") or not runtime.get("running")) and not runtime.get("restarting"):
            if self.state != "stopped":
                self.say(NOTICE, "%s: not running (%s): the watchdog does not start a stopped instance"
                         % (self.name, runtime.get("status") or "absent"))
            self._set("stopped", False, what)
            return
        if runtime.get("restarting") or report.get("status") == "starting":
            self._set("starting", False, what)
            return
        if self.failures < self.settings["failures_before_restart"]:
            self._set("failing", False, what)
            return
        top = _top(report)
        if top and top["code"] in NOT_FIXED_BY_RESTART:
            if self.state != "misconfigured":
                self.say(ERR, "%s: held out, not restarted (a restart does not fix it): %s" % (self.name, what))
            self._set("misconfigured", False, what)
            return
        self._restart(report, what, now)

    def _restart(self, report, what, now):
        self._set("restarting", False, what)
        bundle = self.actions.diagnose(self.instance)
        with self.lock:
            self.bundle = bundle
            self.restarts.append(now)
            self.restarts_total += 1
            self.last_restart_by = "watchdog"
        self.say(ERR, "%s: restarting (%d of at most %d in %d s): %s; diagnostics: %s" % (
            self.name, len(self.restarts), self.settings["max_restarts"], self.settings["restart_window"], what,
            bundle))
        error = self.actions.restart(self.instance)
        if error:
            self.say(ERR, "%s: the restart failed: %s" % (self.name, error))
            self._set("failing", False, error)
            return
        started = self.clock()
        report, reason = self.actions.wait_ready(self.instance)
        waited = self.clock() - started
        self._count_runtime_restarts(report.get("runtime"), self.clock(), quiet=True)
        if reason is None:
            self.failures = 0
            self.say(NOTICE, "%s: serves again %.1f s after the restart: back in rotation" % (self.name, waited))
            self._set("serving", True, "")
            return
        self.say(ERR, "%s: not serving %.1f s after the restart: %s; %s"
                 % (self.name, waited, reason, describe(report)))
        self._set("failing", False, describe(report))

    def _give_up(self, report, runtime):
        stopped = ""
        if runtime.get("restarting") or self.last_restart_by == "runtime":
            error = self.actions.stop(self.instance)
            stopped = " The runtime kept restarting it: stopped (%s)." % ("done" if not error else "failed: " + error)
        reason = "%d restarts in the last %d s (limit %d), last: %s.%s Fix it, then run restart.yml." % (
            len(self.restarts), self.settings["restart_window"], self.settings["max_restarts"], describe(report),
            stopped)
        self._set("gave_up", False, reason)
        self.say(CRIT, "%s: gave up, left out of rotation: %s" % (self.name, reason))

    def _forget_old_restarts(self, now):
        with self.lock:
            self.restarts = [t for t in self.restarts if now - t < self.settings["restart_window"]]

    def _count_runtime_restarts(self, runtime, now, quiet=False):
        """Restarts the runtime made by itself (Docker's restart policy, systemd's Restart=) count toward the
        limit, so a crash at every start ends too."""
        count = (runtime or {}).get("restart_count")
        if not isinstance(count, int):
            return
        previous, self.runtime_restarts = self.runtime_restarts, count
        if previous is None or count <= previous:
            return
        added = count - previous
        with self.lock:
            self.restarts.extend([now] * added)
            self.last_restart_by = "runtime"
        if not quiet:
            self.say(WARNING, "%s: restarted by its runtime %d time(s) since the last probe" % (self.name, added))


class HostActions(object):
    """The real probe, restart, stop, diagnostics and wait of this host's instances."""

    def __init__(self, settings):
        self.settings = settings
        self.secrets = set()

    def api_key(self, instance):
        """The first key the instance accepts, read from its own secrets file each time, so a rotated key is
        followed without restarting the watchdog; None without a file (an instance without keys)."""
        if not instance.get("keys_file"):
            return None
        try:
            keys = json.loads(_files.read(instance["keys_file"]) or "{}").get("api-key") or []
        except (ValueError, AttributeError):
            keys = []
        keys = [k for k in keys if isinstance(k, str) and k] if isinstance(keys, list) else []
        self.secrets.update(keys)
        return keys[0] if keys else None

    def _config(self, instance, timeout):
        return _diagnose.local_health_config(instance, self.api_key(instance), timeout)

    def held(self, instance):
        """Whether the vllm role holds the watchdog off this instance: a file hold-NAME in hold_dir whose content
        is how many seconds from its writing the hold lasts (the host's clock only: no skew with a controller)."""
        path = os.path.join(self.settings["hold_dir"], "hold-%s" % instance["name"])
        try:
            written = os.lstat(path).st_mtime
            seconds = float((_files.read(path) or "").strip() or 0)
        except (OSError, ValueError):
            return False
        if not math.isfinite(seconds):
            return False
        return time.time() < written + min(max(seconds, 0.0), MAX_HOLD)

    def probe(self, instance):
        return _vllm_health.Probe(self._config(instance, self.settings["probe_timeout"])).run(with_gpus=False)

    def wait_ready(self, instance):
        return _vllm_health.wait_until_ready(self._config(instance, self.settings["probe_timeout"]),
                                             self.settings["start_period"], poll_interval=1.0)

    def _systemctl_or_docker(self, instance, verb):
        name = instance["name"]
        if instance["backend"] == "docker":
            return ["docker", verb, "-t", str(self.settings["stop_timeout"]), "vllm-%s" % name]
        return ["systemctl", verb, "vllm-%s.service" % name]

    def _run(self, argv):
        try:
            rc, out, err = _command.run(argv, self.settings["stop_timeout"] + 60)
        except _command.CommandError as exc:
            return str(exc)
        return None if rc == 0 else "`%s` exited %d: %s" % (" ".join(argv), rc, (err or out).strip()[-300:])

    def restart(self, instance):
        return self._run(self._systemctl_or_docker(instance, "restart"))

    def stop(self, instance):
        return self._run(self._systemctl_or_docker(instance, "stop"))

    def diagnose(self, instance):
        """A bundle as vllm_diagnose makes it, in its own directory; the oldest beyond keep_diagnostics go."""
        keep = self.settings["keep_diagnostics"]
        if keep == 0:
            return "none kept (keep_diagnostics 0)"
        top = self.settings["diagnostics_dir"]
        dest = os.path.join(top, "%s-%s" % (instance["name"], time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))
        try:
            _files.ensure_dir(top, 0o700)
            key = self.api_key(instance)
            _diagnose.collect(dest, [instance], [key] if key else [], health_timeout=self.settings["probe_timeout"])
        except (_diagnose.DestError, _files.FileError, OSError) as exc:
            return "not written: %s" % exc
        mine = sorted(d for d in os.listdir(top) if d.startswith(instance["name"] + "-") and
                      re.match(r"^\d{8}T\d{6}Z$", d[len(instance["name"]) + 1:]))
        for old in mine[:-keep]:
            shutil.rmtree(os.path.join(top, old), ignore_errors=True)
        return dest


class Watchdog(object):
    """The watches of every instance, their threads, the agent port, the state file and the metrics."""

    def __init__(self, config, actions=None, out=None):
        self.config = config
        self.actions = actions or HostActions(config)
        self.out = out or sys.stdout
        self.out_lock = threading.Lock()
        self.save_lock = threading.Lock()
        saved = self._load_state()
        self.watches = dict((i["name"], Watch(i, config, self.actions, self.say, saved=saved.get(i["name"])))
                            for i in config["instances"])
        self.stopping = threading.Event()

    @property
    def secrets(self):
        return sorted(getattr(self.actions, "secrets", ()))

    def say(self, priority, line):
        text = redact(line, self.secrets).replace("\n", " ")
        with self.out_lock:
            self.out.write("<%d>%s\n" % (priority, text))
            self.out.flush()

    def _load_state(self):
        try:
            raw = _files.read(self.config["state_file"])
        except (_files.FileError, OSError):
            return {}
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            self.say(WARNING, "state file %s is not JSON: starting afresh" % self.config["state_file"])
            return {}
        instances = data.get("instances") if isinstance(data, dict) else None
        return instances if isinstance(instances, dict) else {}

    def save(self):
        with self.save_lock:
            self._save()

    def _save(self):
        state = {"updated": time.time(),
                 "instances": dict((name, w.snapshot()) for name, w in sorted(self.watches.items()))}
        try:
            _files.write(self.config["state_file"], redact(json.dumps(state, indent=2, sort_keys=True),
                                                           self.secrets) + "\n", 0o644, dir_mode=0o755)
        except _files.FileError as exc:
            self.say(ERR, "state file: %s" % exc)
        if self.config["textfile_dir"] and os.path.isdir(self.config["textfile_dir"]):
            try:
                _files.write(os.path.join(self.config["textfile_dir"], METRICS_FILE), self.metrics(), 0o644)
            except _files.FileError as exc:
                self.say(ERR, "metrics: %s" % exc)

    def metrics(self):
        lines = []

        def family(name, kind, text, values):
            lines.extend(["# HELP %s %s" % (name, text), "# TYPE %s %s" % (name, kind)])
            lines.extend('%s{vllm_instance="%s"} %s' % (name, n, v) for n, v in values)

        snaps = sorted((n, w.snapshot()) for n, w in self.watches.items())
        lines.extend(["# HELP inferops_watchdog_last_cycle_timestamp_seconds Unix time the watchdog last wrote "
                      "its state.", "# TYPE inferops_watchdog_last_cycle_timestamp_seconds gauge",
                      "inferops_watchdog_last_cycle_timestamp_seconds %.3f" % time.time()])
        family("inferops_watchdog_in_rotation", "gauge",
               "1 while the watchdog lets the instance take traffic at the gateways, 0 while it holds it out.",
               [(n, int(s["in_rotation"])) for n, s in snaps])
        family("inferops_watchdog_gave_up", "gauge",
               "1 when the watchdog gave up restarting the instance (too many restarts in its window).",
               [(n, int(s["state"] == "gave_up")) for n, s in snaps])
        family("inferops_watchdog_restarts_total", "counter", "Restarts of the instance made by the watchdog.",
               [(n, s["restarts_total"]) for n, s in snaps])
        family("inferops_watchdog_probe_success", "gauge",
               "1 when the last one-token inference probe of the instance succeeded.",
               [(n, int(s["last_status"] in SERVING)) for n, s in snaps])
        return "\n".join(lines) + "\n"

    def _loop(self, watch):
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                watch.step()
            except Exception as exc:  # pylint: disable=broad-except
                # One instance's surprise must not end the watch of the others: said, then tried again.
                self.say(ERR, "%s: the watchdog's cycle failed: %s: %s" % (watch.name, type(exc).__name__, exc))
            self.save()
            self.stopping.wait(max(0.0, self.config["interval"] - (time.monotonic() - started)))

    def listen(self):
        """The agent's socket; OSError when the address cannot be bound."""
        server = socket.socket(socket.AF_INET6 if ":" in self.config["agent_address"] else socket.AF_INET)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((self.config["agent_address"], self.config["agent_port"]))
            server.listen(64)
        except OSError:
            server.close()
            raise
        server.settimeout(0.5)
        return server

    def agent(self, server):
        """HAProxy's agent-check: it connects, sends the server's instance name and a line feed, reads a line."""
        while not self.stopping.is_set():
            try:
                conn, _peer = server.accept()
            except socket.timeout:
                continue
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()
        server.close()

    def _answer(self, conn):
        try:
            conn.settimeout(AGENT_READ_TIMEOUT)
            question = b""
            while b"\n" not in question and len(question) < 256:
                chunk = conn.recv(256)
                if not chunk:
                    break
                question += chunk
            name = question.split(b"\n")[0].strip().decode("ascii", "replace")
            watch = self.watches.get(name)
            # An instance this watchdog does not watch: an empty answer, which leaves HAProxy's verdict alone.
            conn.sendall(((watch.agent_answer() if watch else "") + "\n").encode("ascii"))
        except (OSError, socket.timeout):
            pass
        finally:
            conn.close()

    def run(self):
        threads = [threading.Thread(target=self.agent, args=(self.listen(),), daemon=True)]
        threads += [threading.Thread(target=self._loop, args=(w,), daemon=True) for w in self.watches.values()]
        for thread in threads:
            thread.start()
        self.say(INFO, "watching %s; agent on %s:%d" % (", ".join(sorted(self.watches)) or "no instance",
                                                        self.config["agent_address"], self.config["agent_port"]))
        return threads


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description="Watch this host's vLLM instances (see the vllm role).")
    parser.add_argument("--config", required=True, metavar="FILE", help="the JSON the vllm role writes")
    parser.add_argument("--check", action="store_true", help="check the configuration, then exit (0: good)")
    args = parser.parse_args(argv)
    try:
        text = _files.read(args.config)
        if text is None:
            raise ConfigError("missing or not a regular file; let the vllm role write it")
        config = load_config(text)
    except (ConfigError, _files.FileError, OSError) as exc:
        sys.stderr.write("<%d>%s: %s: %s\n" % (ERR, PROG, args.config, exc))
        return 2
    if args.check:
        return 0
    watchdog = Watchdog(config)
    try:
        threads = watchdog.run()
    except OSError as exc:
        watchdog.say(ERR, "agent port: cannot listen on %s:%d: %s; free the port or set vllm_watchdog_agent_port"
                     % (config["agent_address"], config["agent_port"], exc.strerror or exc))
        return 1
    try:
        while all(t.is_alive() for t in threads[:1]):
            threads[0].join(1.0)
    except KeyboardInterrupt:
        pass
    watchdog.stopping.set()
    watchdog.say(ERR, "the agent port stopped: exiting so that systemd starts the watchdog again")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
