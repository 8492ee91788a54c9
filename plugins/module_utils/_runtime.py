# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runtime state and recent logs of a vLLM instance: a Docker container (Docker SDK) or a systemd unit."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import stat
import time

from ansible_collections.inferops.vllm.plugins.module_utils import _command
from ansible_collections.inferops.vllm.plugins.module_utils._redact import MASK

from ansible_collections.inferops.vllm.plugins.module_utils._docker_sdk import docker

if docker is not None:
    from docker.errors import DockerException, NotFound
else:
    class DockerException(Exception):
        pass

    class NotFound(DockerException):
        pass


class RuntimeErrorInfo(Exception):
    """The state could not be read (no Docker library or daemon, systemctl failed): the only error raised here."""


# A log file is read from its end, this much at most: a log of gigabytes (or a device) must cost what a small one
# costs.
TAIL_BYTES = 1024 * 1024
# A longer line (a logged prompt) keeps this much of its start and of its end.
LINE_EDGE = 8 * 1024
# Docker logs are read up to this size, the newest kept.
DOCKER_LOG_BYTES = 4 * 1024 * 1024
_ASCII_INT = re.compile(r"-?[0-9]{1,18}\Z")


def _run(argv, timeout):
    try:
        return _command.run(argv, timeout)
    except _command.CommandError as exc:
        raise RuntimeErrorInfo(str(exc))


def _int(value, default=None):
    """An int from an API value: an int, or a string of ASCII digits (int() also takes "\u0663")."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _ASCII_INT.match(value.strip()):
        return int(value.strip())
    return default


def _text(value):
    """A string from an API value, None for what is absent or not a string."""
    return value if isinstance(value, str) else None


def _absent(kind, name):
    return {"type": kind, "name": name, "exists": False, "running": False, "status": "absent",
            "restarting": False, "restart_count": 0, "oom_killed": False, "exit_code": None, "health": None,
            "started_at": None, "pid": None, "gpus": None}


def docker_state(name, log_lines, timeout, secrets=()):
    """State of container `name`, and its last log lines."""
    if docker is None:
        raise RuntimeErrorInfo("the docker Python library is not installed on this host")
    try:
        client = docker.from_env(timeout=max(1, int(timeout)))
        container = client.containers.get(name)
        attrs = container.attrs
        logs = _docker_logs(container, log_lines, timeout) if log_lines > 0 else b""
    except NotFound:
        return _absent("docker", name), []
    except (DockerException, OSError, ValueError) as exc:
        # requests' errors (a read timeout, a refused socket) are OSErrors that the SDK does not wrap.
        raise RuntimeErrorInfo("Docker API: %s" % (str(exc)[:300] or type(exc).__name__))
    return docker_state_from(name, attrs), clip(logs.decode("utf-8", "replace").splitlines()[-log_lines:], secrets)


def _docker_logs(container, log_lines, timeout):
    """The last log lines as bytes, at most about DOCKER_LOG_BYTES of them, read before `timeout` runs out."""
    deadline = time.monotonic() + timeout
    kept = bytearray()
    for chunk in container.logs(tail=log_lines, stdout=True, stderr=True, stream=True, follow=False):
        kept += chunk
        if len(kept) > 2 * DOCKER_LOG_BYTES:
            del kept[:len(kept) - DOCKER_LOG_BYTES]
        if time.monotonic() > deadline:
            break
    return bytes(kept[-DOCKER_LOG_BYTES:])


def docker_state_from(name, attrs):
    """The state from `docker inspect` attributes, whatever their shape: odd values read as unknown, never an error."""
    attrs = attrs if isinstance(attrs, dict) else {}
    state = attrs.get("State")
    state = state if isinstance(state, dict) else {}
    host_config = attrs.get("HostConfig")
    requests = host_config.get("DeviceRequests") if isinstance(host_config, dict) else None
    gpus = []
    for request in requests if isinstance(requests, list) else []:
        ids = request.get("DeviceIDs") if isinstance(request, dict) else None
        gpus += [str(i) for i in ids if isinstance(i, (str, int)) and not isinstance(i, bool) and str(i)] \
            if isinstance(ids, list) else []
    health = state.get("Health")
    pid = _int(state.get("Pid"))
    return {
        "type": "docker", "name": name, "exists": True,
        "running": state.get("Running") is True, "status": _text(state.get("Status")) or "unknown",
        "restarting": state.get("Restarting") is True, "restart_count": max(0, _int(attrs.get("RestartCount"), 0)),
        "oom_killed": state.get("OOMKilled") is True, "exit_code": _int(state.get("ExitCode")),
        "health": _text(health.get("Status")) if isinstance(health, dict) else None,
        "started_at": _text(state.get("StartedAt")), "pid": pid if pid and pid > 0 else None, "gpus": gpus or None,
    }


# ExecMainCode is how the main process last ended, a CLD_* si_code: 1 (CLD_EXITED) makes ExecMainStatus its exit
# status, 2 (CLD_KILLED) and 3 (CLD_DUMPED, killed with a core dump) the number of the signal that killed it.
_SYSTEMD_PROPS = ("LoadState", "ActiveState", "SubState", "NRestarts", "ExecMainCode", "ExecMainStatus",
                  "ExecMainPID", "ActiveEnterTimestampMonotonic", "Environment", "Result")


def systemd_state(unit, log_lines, timeout, secrets=()):
    """ActiveState, SubState, NRestarts... of `unit`, and its last journal lines."""
    rc, out, err = _run(["systemctl", "show", unit, "--property=" + ",".join(_SYSTEMD_PROPS)], timeout)
    if rc != 0:
        raise RuntimeErrorInfo("`systemctl show %s` exited %d: %s" % (unit, rc, err.strip()[:300]))
    state = systemd_state_from(unit, out)
    if log_lines <= 0:
        return state, []
    rc, out, err = _run(["journalctl", "-u", unit, "-n", str(log_lines), "--no-pager", "-o", "cat"], timeout)
    return state, clip(out.splitlines()[-log_lines:], secrets) if rc == 0 else []


def systemd_state_from(unit, show):
    """The state from `systemctl show` output, whatever it holds: odd values read as unknown, never an error."""
    values = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    gpus = None
    for item in values.get("Environment", "").split():
        if item.startswith("CUDA_VISIBLE_DEVICES="):
            gpus = [g for g in item.split("=", 1)[1].split(",") if g] or None
    active, sub = values.get("ActiveState"), values.get("SubState")
    pid = _int(values.get("ExecMainPID"))
    return {
        "type": "systemd", "name": unit, "exists": values.get("LoadState") == "loaded",
        "running": active == "active" and sub == "running",
        "status": "%s/%s" % (active, sub), "active_state": active, "sub_state": sub,
        "restarting": sub == "auto-restart",
        "restart_count": max(0, _int(values.get("NRestarts"), 0)),
        "exit_code": _int(values.get("ExecMainStatus")), "exec_main_code": _int(values.get("ExecMainCode")),
        # systemd (since 243) ends a unit whose process the kernel's OOM killer took with Result=oom-kill.
        "oom_killed": values.get("Result") == "oom-kill", "health": None,
        "pid": pid if pid and pid > 0 else None, "gpus": gpus,
    }


def clip(lines, secrets=()):
    """Log lines fit to return: the known secrets masked first, then each long line cut to its start and end.

    Masking goes first so that no cut can keep part of a key; the cuts fall on blanks, so that a word (a token
    the patterns of _redact would know whole) is kept whole or dropped, not halved."""
    secrets = [s for s in secrets if s]
    clipped = []
    for line in lines:
        for secret in secrets:
            if secret in line:
                line = line.replace(secret, MASK)
        if len(line) > 2 * LINE_EDGE:
            head, tail = line[:LINE_EDGE], line[-LINE_EDGE:]
            blank = max(head.rfind(" "), head.rfind("\t"))
            head = head[:blank] if blank > LINE_EDGE - 256 else head
            blanks = [i for i in (tail.find(" "), tail.find("\t")) if i >= 0]
            tail = tail[min(blanks) + 1:] if blanks and min(blanks) < 256 else tail
            line = head + " [...] " + tail
        clipped.append(line)
    return clipped


def tail(path, lines, secrets=()):
    """The last `lines` lines of a log file (an instance that logs to a file rather than the journal), clipped.

    Only a regular file is read (a FIFO would block, /dev/zero never ends), and only its last TAIL_BYTES. Any
    error reads as no lines: the log is evidence, not a verdict."""
    if lines <= 0:
        return []
    try:
        # Devices are not even opened: opening one can act (a tape rewinds, a terminal becomes ours).
        if not stat.S_ISREG(os.stat(path).st_mode):
            return []
        # O_NONBLOCK: opening a FIFO for reading waits for a writer; with it, the open returns and fstat says FIFO.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except (IOError, OSError, ValueError):  # ValueError: a path with a NUL byte
        return []
    try:
        # The opened file, not the path, is checked: a path swapped between a stat and the open cannot slip by.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return []
        # One byte before the tail too, to know whether the tail starts a line.
        start = max(0, info.st_size - TAIL_BYTES - 1)
        os.lseek(fd, start, os.SEEK_SET)
        data = bytearray()
        while len(data) < TAIL_BYTES + 1:
            chunk = os.read(fd, TAIL_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except (IOError, OSError):
        return []
    finally:
        os.close(fd)
    if start > 0:
        # A read that began inside a line drops that piece: it could be the end of a secret, too short to be
        # known as one.
        cut = data.find(b"\n")
        data = data[cut + 1:] if cut >= 0 else bytearray()
    return clip(bytes(data).decode("utf-8", "replace").splitlines()[-lines:], secrets)


def read(kind, name, log_lines, timeout, secrets=()):
    if kind == "docker":
        return docker_state(name, log_lines, timeout, secrets)
    if kind == "systemd":
        return systemd_state(name, log_lines, timeout, secrets)
    raise RuntimeErrorInfo("unknown runtime %r" % kind)
