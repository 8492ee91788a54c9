# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One host's diagnostics for vLLM incidents, written as files with every secret masked.

`dest` is checked before any probe runs, and then held open: every file is created inside that very directory
(relative to its descriptor, never through a path that could have been swapped meanwhile), through a new file
renamed into place, so that a symlink already in `dest` is replaced, never followed. The module runs as root:
writing through a planted link would truncate whatever file it points to.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import re
import stat

from ansible_collections.inferops.vllm.plugins.module_utils import _command, _vllm_health
from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact

XID = re.compile(r"NVRM: Xid")
DMESG_LINES = 300


class DestError(Exception):
    """`dest` cannot be trusted or written. The message starts with "dest: " and says how to fix it."""


def _run(argv, timeout):
    try:
        rc, out, err = _command.run(argv, timeout)
    except _command.CommandError as exc:
        return str(exc) + "\n"
    text = out + (("\n" + err) if err else "")
    return text if rc == 0 else "`%s` exited %d:\n%s" % (" ".join(argv), rc, text)


def _instance_commands(instance, log_lines):
    name, backend = instance["name"], instance.get("backend", "docker")
    container = "vllm-%s" % name
    if backend == "docker":
        return {"logs-%s.txt" % name: ["docker", "logs", "--tail", str(log_lines), container],
                "inspect-%s.json" % name: ["docker", "inspect", container]}
    if backend == "systemd":
        return {"logs-%s.txt" % name: ["journalctl", "-u", "vllm-%s.service" % name, "-n", str(log_lines),
                                       "--no-pager"],
                "inspect-%s.json" % name: ["docker", "inspect", container]}
    return {"logs-%s.txt" % name: ["tail", "-n", str(log_lines), "/var/log/vllm/%s.log" % name],
            "unit-%s.txt" % name: ["systemctl", "status", "--no-pager", "vllm-%s.service" % name]}


HOST_COMMANDS = {
    "nvidia-smi-q.txt": ["nvidia-smi", "-q"],
    "versions-driver.txt": ["nvidia-smi", "--query-gpu=index,name,driver_version", "--format=csv"],
    "versions-docker.txt": ["docker", "version"],
    "disk.txt": ["df", "-h"],
    "memory.txt": ["free", "-m"],
}


def mark_xid(text):
    lines = text.splitlines()[-DMESG_LINES:]
    return "\n".join((">>> XID >>> " + line) if XID.search(line) else line for line in lines) + "\n"


def collect(dest, instances, secrets, health_timeout=5, log_lines=500, timeout=30):
    """Writes the diagnostics into `dest`; returns (files written, verdict per instance, top diagnosis).

    DestError, before any probe runs, when `dest` is not a private directory of this user (see open_dest).
    """
    dest = os.path.normpath(dest)
    dest_fd = open_dest(dest)
    try:
        files, statuses, diagnoses = _gather(instances, secrets, health_timeout, log_lines, timeout)
        for name, content in files.items():
            write_file(dest_fd, dest, name, redact(content, secrets))
    finally:
        os.close(dest_fd)
    top = diagnoses[0] if diagnoses else {"code": "none", "message": "no known failure found", "runbook": "-"}
    return sorted(files), statuses, top


def local_health_config(instance, api_key, timeout):
    """How this host's instance ({name, backend, port, tls, model, served_model_name}) is probed from the host
    itself: on loopback, its container or unit read for the runtime state and the logs."""
    backend = instance.get("backend", "docker")
    scheme = "https" if instance.get("tls") else "http"
    return _vllm_health.Config(
        "%s://127.0.0.1:%d" % (scheme, instance["port"]),
        model=instance.get("served_model_name") or instance.get("model"),
        api_key=api_key, validate_certs=False, timeout=timeout,
        runtime="docker" if backend == "docker" else "systemd",
        name="vllm-%s" % instance["name"] + ("" if backend == "docker" else ".service"),
        log_file="/var/log/vllm/%s.log" % instance["name"] if backend == "venv" else None)


def _gather(instances, secrets, health_timeout, log_lines, timeout):
    files = {}
    statuses = {}
    diagnoses = []
    images = []
    for instance in instances:
        backend = instance.get("backend", "docker")
        report = _vllm_health.probe(local_health_config(instance, (secrets or [None])[0], health_timeout))
        statuses[instance["name"]] = report["status"]
        diagnoses += report["diagnosis"]
        files["health-%s.json" % instance["name"]] = json.dumps(report, indent=2, sort_keys=True, default=str)
        for name, argv in _instance_commands(instance, log_lines).items():
            files[name] = _run(argv, timeout)
        if backend != "venv":
            images.append("%s: %s" % (instance["name"], _run(["docker", "inspect", "-f", "{{.Config.Image}}",
                                                              "vllm-%s" % instance["name"]], timeout).strip()))
    for name, argv in HOST_COMMANDS.items():
        files[name] = _run(argv, timeout)
    files["dmesg-tail.txt"] = mark_xid(_run(["dmesg", "--ctime"], timeout))
    files["versions-vllm.txt"] = "\n".join(images) + "\n"
    return files, statuses, diagnoses


def open_dest(dest):
    """A descriptor of `dest`, a private directory of this user: created 0700 when missing, refused otherwise.

    Private means no access at all for group and others (mode & 0o077 == 0): what is collected is incident
    evidence, and a directory others may write into is one where they can plant a link or swap a file.
    `dest` comes normalized (collect does it): with a trailing "/" or "/." the kernel would follow a symlink
    that O_NOFOLLOW is there to refuse.
    """
    check_ancestors(dest)
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise DestError(_not_a_directory(dest, exc))
        fd = _create(dest)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise DestError("dest: %s is owned by uid %d, not by this user (uid %d); name a new directory, which "
                            "is created private, or one of your own with mode 0700" % (dest, st.st_uid,
                                                                                       os.geteuid()))
        if st.st_mode & 0o077:
            raise DestError("dest: %s has mode %04o; it must be private (0700): `chmod 0700 %s`, or name a new "
                            "directory, which is created private" % (dest, stat.S_IMODE(st.st_mode), dest))
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_ancestors(dest):
    """Refuses a `dest` that someone else could redirect: every directory above it, and every symlink on the way,
    must be root's or this user's, and a directory others may write into must be sticky (like /tmp). Otherwise
    its owner could swap the path for a link to a private directory of root's, such as /root."""
    trusted = (0, os.geteuid())
    path = os.path.abspath(dest)
    prefixes = []
    parent = os.path.dirname(path)
    while True:
        prefixes.append(parent)
        if parent == os.path.dirname(parent):
            break
        parent = os.path.dirname(parent)
    for prefix in reversed(prefixes):
        try:
            link = os.lstat(prefix)
            st = os.stat(prefix)
        except OSError:
            return  # the rest does not exist yet: creating dest reports it
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in trusted:
            raise DestError("dest: %s, on the way to %s, is a symlink of uid %d; name a directory whose path only "
                            "root or you control" % (prefix, dest, link.st_uid))
        if st.st_uid not in trusted:
            raise DestError("dest: %s, above %s, belongs to uid %d, who could redirect it; name a directory whose "
                            "path only root or you control" % (prefix, dest, st.st_uid))
        # Group write counts only for a group other than root's (Ubuntu's /var/log is root:syslog 0775).
        writable = st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0)
        if writable and not st.st_mode & stat.S_ISVTX:
            raise DestError("dest: %s, above %s, has mode %04o: others may rename what is in it; name a directory "
                            "whose path only root or you may change" % (prefix, dest, stat.S_IMODE(st.st_mode)))


def _create(dest):
    parent = os.path.dirname(os.path.abspath(dest))
    try:
        os.makedirs(parent, 0o755, exist_ok=True)
        os.mkdir(dest, 0o700)
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ELOOP, errno.ENOTDIR):
            # Something took the name between the check and the mkdir: judge what is there now.
            return _open_existing(dest)
        raise DestError("dest: %s could not be created: %s; name a directory this user may create" % (
            dest, exc.strerror or exc))
    os.fchmod(fd, 0o700)  # the umask may have left less; exactly 0700 is what the checks expect
    return fd


def _open_existing(dest):
    try:
        return os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise DestError(_not_a_directory(dest, exc))


def _not_a_directory(dest, exc):
    try:
        st = os.lstat(dest)
    except OSError:
        return "dest: %s cannot be opened: %s" % (dest, exc.strerror or exc)
    if stat.S_ISLNK(st.st_mode):
        return ("dest: %s is a symlink; name the directory itself, or a new directory, which is created private"
                % dest)
    if not stat.S_ISDIR(st.st_mode):
        return "dest: %s is a %s, not a directory; name a new directory, which is created private" % (
            dest, "file" if stat.S_ISREG(st.st_mode) else "special file")
    return "dest: %s cannot be opened: %s" % (dest, exc.strerror or exc)


def write_file(dest_fd, dest, name, content):
    """Writes `name`, 0600, into the directory `dest_fd`, replacing whatever had that name, following nothing."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        # Names are the module's own plus instance names, plain tokens by then; a path never gets this far.
        raise DestError("dest: %r is not a plain file name; nothing was written for it" % name)
    tmp = ".%s.%s.tmp" % (name, os.urandom(6).hex())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dest_fd)
        with os.fdopen(fd, "w") as handle:
            os.fchmod(fd, 0o600)  # exactly, whatever the umask took away
            handle.write(content)
        os.rename(tmp, name, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
    except BaseException as exc:
        _unlink_quietly(tmp, dest_fd)
        if isinstance(exc, OSError):
            raise DestError("dest: %s could not be written in %s: %s" % (name, dest, exc.strerror or exc))
        raise


def _unlink_quietly(name, dir_fd):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
