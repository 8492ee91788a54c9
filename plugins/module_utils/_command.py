# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running a command with a deadline: a wedged nvidia-smi or docker must not hang the play.

The command runs in a session of its own, so that at the deadline its whole process group dies: killing only the
command leaves a child that inherited its stdout holding the pipe, and reading to EOF then waits for that child.
Output is read here, never with communicate(), so every read has the deadline, and each stream keeps at most
MAX_OUTPUT bytes: a runaway `dmesg` or log dump cannot fill the module's memory or its JSON result.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import selectors
import signal
import subprocess
import time

MAX_OUTPUT = 4 * 1024 * 1024
CUT_MARK = "\n[inferops: output cut after %d bytes]\n"
# How long the output may stay open once the command itself has exited: long enough for the last writes of its
# children to arrive, short enough that a daemon it left behind holding the pipe does not cost the whole timeout.
EXIT_GRACE = 1.0
# How long a killed command gets to be reaped. A process in uninterruptible sleep (a wedged driver call) ignores
# SIGKILL; it is left behind, named in the error, rather than waited for.
REAP_WAIT = 1.0
# How often the exit of the command is checked while a child keeps its output open.
POLL = 0.1
CHUNK = 65536


class CommandError(Exception):
    """The command could not start, or did not finish in time. The message names it."""


def run(argv, timeout, max_output=MAX_OUTPUT):
    """(rc, stdout, stderr) of argv; its process group is killed after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except (OSError, ValueError) as exc:
        raise CommandError("`%s` could not start: %s" % (argv[0], getattr(exc, "strerror", None) or exc))
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    try:
        streams, exited = _read(proc, deadline, max_output)
        if not exited:
            # The output closed but the command still runs: wait for it, up to the deadline.
            exited = _wait(proc, max(0.0, deadline - time.monotonic()))
        if not exited:
            _kill_group(proc)
            reaped = _wait(proc, REAP_WAIT)
            raise CommandError("`%s` did not finish within %ss and was killed%s" % (
                " ".join(argv), timeout, "" if reaped else " (pid %d ignores SIGKILL, still there)" % proc.pid))
        if streams[out_fd]["open"] or streams[err_fd]["open"]:
            # A child it left behind still holds the output: it dies with the group, the result stands.
            _kill_group(proc)
        proc.wait()
    finally:
        proc.stdout.close()
        proc.stderr.close()
    return proc.returncode, _text(streams[out_fd]), _text(streams[err_fd])


def _read(proc, deadline, max_output):
    """Reads both pipes until they close, the deadline passes, or the command has exited EXIT_GRACE ago."""
    streams = {}
    selector = selectors.DefaultSelector()
    for pipe in (proc.stdout, proc.stderr):
        streams[pipe.fileno()] = {"data": bytearray(), "dropped": 0, "open": True}
        selector.register(pipe.fileno(), selectors.EVENT_READ)
    exited = False
    limit = deadline
    try:
        while selector.get_map():
            if not exited and _exited(proc):
                exited = True
                limit = min(deadline, time.monotonic() + EXIT_GRACE)
            left = limit - time.monotonic()
            if left <= 0:
                break
            for key, _events in selector.select(min(left, POLL)):
                chunk = os.read(key.fd, CHUNK)
                stream = streams[key.fd]
                if not chunk:
                    selector.unregister(key.fd)
                    stream["open"] = False
                    continue
                # Past the cap the pipe is still drained, so that the command is not blocked writing to it.
                room = max(0, max_output - len(stream["data"]))
                stream["data"] += chunk[:room]
                stream["dropped"] += len(chunk) - min(room, len(chunk))
    finally:
        selector.close()
    return streams, exited or _exited(proc)


def _exited(proc):
    """Whether the command has exited, without reaping it.

    Left unreaped, its pid stays taken, so the process group id that _kill_group signals cannot have been given
    to an unrelated process in the meantime.
    """
    if proc.returncode is not None:
        return True
    if not hasattr(os, "waitid"):  # not on every POSIX system; reaping is then the only way to know
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return proc.poll() is not None


def _wait(proc, seconds):
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError as exc:
        # ESRCH: the group is already gone. EPERM: what is left of it is not ours to signal (a setuid child).
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise


def _text(stream):
    text = bytes(stream["data"]).decode("utf-8", "replace")
    return text + CUT_MARK % len(stream["data"]) if stream["dropped"] else text
