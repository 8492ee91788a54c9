# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runtime state and recent logs of a vLLM instance: a Docker container (Docker SDK) or a systemd unit."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible_collections.inferops.vllm.plugins.module_utils import _command

try:
    import docker
    from docker.errors import DockerException, NotFound
except ImportError:
    docker = None
    DOCKER_IMPORT_ERROR = traceback.format_exc()

    class DockerException(Exception):
        pass

    class NotFound(DockerException):
        pass
else:
    DOCKER_IMPORT_ERROR = None


class RuntimeErrorInfo(Exception):
    pass


def _run(argv, timeout):
    try:
        return _command.run(argv, timeout)
    except _command.CommandError as exc:
        raise RuntimeErrorInfo(str(exc))


def docker_state(name, log_lines, timeout):
    """State of container `name`, and its last log lines."""
    if docker is None:
        raise RuntimeErrorInfo("the docker Python library is not installed on this host")
    try:
        client = docker.from_env(timeout=max(1, int(timeout)))
        container = client.containers.get(name)
        attrs = container.attrs
        logs = container.logs(tail=log_lines, stdout=True, stderr=True).decode("utf-8", "replace")
    except NotFound:
        return {"type": "docker", "name": name, "exists": False, "running": False, "status": "absent",
                "restarting": False, "restart_count": 0, "oom_killed": False, "exit_code": None, "health": None,
                "started_at": None, "gpus": None}, []
    except DockerException as exc:
        raise RuntimeErrorInfo("Docker API: %s" % exc)
    state = attrs.get("State", {})
    requests = (attrs.get("HostConfig") or {}).get("DeviceRequests") or []
    gpus = [d for r in requests for d in (r.get("DeviceIDs") or [])] or None
    return {
        "type": "docker", "name": name, "exists": True,
        "running": bool(state.get("Running")), "status": state.get("Status"),
        "restarting": bool(state.get("Restarting")), "restart_count": attrs.get("RestartCount", 0),
        "oom_killed": bool(state.get("OOMKilled")), "exit_code": state.get("ExitCode"),
        "health": (state.get("Health") or {}).get("Status"), "started_at": state.get("StartedAt"),
        "pid": state.get("Pid") or None, "gpus": gpus,
    }, logs.splitlines()


def systemd_state(unit, log_lines, timeout):
    """ActiveState, SubState, NRestarts... of `unit`, and its last journal lines."""
    props = ("LoadState", "ActiveState", "SubState", "NRestarts", "ExecMainStatus", "ExecMainPID",
             "ActiveEnterTimestampMonotonic", "Environment")
    rc, out, err = _run(["systemctl", "show", unit, "--property=" + ",".join(props)], timeout)
    if rc != 0:
        raise RuntimeErrorInfo("`systemctl show %s` exited %d: %s" % (unit, rc, err.strip()))
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    gpus = None
    for item in values.get("Environment", "").split():
        if item.startswith("CUDA_VISIBLE_DEVICES="):
            gpus = [g for g in item.split("=", 1)[1].split(",") if g]
    state = {
        "type": "systemd", "name": unit, "exists": values.get("LoadState") == "loaded",
        "running": values.get("ActiveState") == "active" and values.get("SubState") == "running",
        "status": "%s/%s" % (values.get("ActiveState"), values.get("SubState")),
        "active_state": values.get("ActiveState"), "sub_state": values.get("SubState"),
        "restarting": values.get("SubState") == "auto-restart",
        "restart_count": int(values.get("NRestarts") or 0),
        "exit_code": int(values["ExecMainStatus"]) if values.get("ExecMainStatus", "").isdigit() else None,
        "oom_killed": False, "health": None, "pid": int(values.get("ExecMainPID") or 0) or None, "gpus": gpus,
    }
    rc, out, err = _run(["journalctl", "-u", unit, "-n", str(log_lines), "--no-pager", "-o", "cat"], timeout)
    return state, out.splitlines() if rc == 0 else []


def tail(path, lines):
    """The last `lines` lines of a log file (an instance that logs to a file rather than the journal)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            return handle.read().decode("utf-8", "replace").splitlines()[-lines:]
    except (IOError, OSError):
        return []


def read(kind, name, log_lines, timeout):
    if kind == "docker":
        return docker_state(name, log_lines, timeout)
    if kind == "systemd":
        return systemd_state(name, log_lines, timeout)
    raise RuntimeErrorInfo("unknown runtime %r" % kind)
