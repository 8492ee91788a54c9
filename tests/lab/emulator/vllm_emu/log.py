"""Log lines in vLLM's format: `(APIServer pid=1) INFO 11-22 19:40:03 [api_server.py:1896] message`."""

import os
import sys
import time

_role = "APIServer"


def set_role(role):
    global _role
    _role = role


def _emit(level, where, message):
    stamp = time.strftime("%m-%d %H:%M:%S")
    sys.stdout.write("(%s pid=%d) %s %s [%s] %s\n" % (_role, os.getpid(), level, stamp, where, message))
    sys.stdout.flush()


def info(where, message):
    _emit("INFO", where, message)


def warning(where, message):
    _emit("WARNING", where, message)


def error(where, message):
    _emit("ERROR", where, message)


def raw(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def uvicorn(message):
    """Uvicorn's own lines carry no vLLM prefix beyond the process tag."""
    sys.stdout.write("(%s pid=%d) INFO:     %s\n" % (_role, os.getpid(), message))
    sys.stdout.flush()


def access(message):
    uvicorn(message)


def crash_oom():
    """A CUDA OOM while serving kills the engine and, with it, the server."""
    from .engine import oom_traceback, GIB

    set_role("EngineCore_DP0")
    for line in oom_traceback(0, 2.0 * GIB, 79.19 * GIB, 0.31 * GIB):
        error("core.py:710", line)
    set_role("APIServer")
    error("async_llm.py:480", "AsyncLLM output_handler failed.")
    raw("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) "
        "for the root cause.")
    os._exit(1)
