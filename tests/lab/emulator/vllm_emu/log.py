"""Log lines as vLLM writes them: its own lines on stdout as `(APIServer pid=1) INFO 11-22 19:40:03 [file.py:96]
message`; uvicorn's lifecycle lines on stderr and its access lines on stdout, both as `INFO:     message`;
tracebacks of a process that dies on stderr, unprefixed."""

import os
import sys
import time

_role = "APIServer"


def set_role(role):
    global _role
    _role = role


def _emit(level, where, message, stream=None):
    stamp = time.strftime("%m-%d %H:%M:%S")
    prefix = "(%s pid=%d) %s %s [%s] " % (_role, os.getpid(), level, stamp, where)
    out = stream or sys.stdout
    # A multi-line message gets the prefix on every line, as vLLM's formatter does.
    out.write("".join(prefix + line + "\n" for line in message.split("\n")))
    out.flush()


def info(where, message):
    _emit("INFO", where, message)


def warning(where, message):
    _emit("WARNING", where, message)


def error(where, message):
    _emit("ERROR", where, message)


def raw(line, stream=None):
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()


def uvicorn(message, level="INFO"):
    """Uvicorn's own lines (Started server process, Application startup complete...) go to stderr."""
    raw("%-9s %s" % (level + ":", message), sys.stderr)


def access(message):
    raw("INFO:     " + message)


def traceback(lines):
    """A Python traceback that ends the process, on stderr as the interpreter prints it."""
    raw("Traceback (most recent call last):", sys.stderr)
    for line in lines:
        raw(line, sys.stderr)


def banner(version, model):
    """vLLM's start-up banner: the logo with version and model, or one line with VLLM_DISABLE_LOG_LOGO=1."""
    if os.environ.get("VLLM_DISABLE_LOG_LOGO", "0") not in ("", "0"):
        info("startup.py:27", "vLLM server version %s, serving model %s" % (version, model))
        return
    info("startup.py:27", "\n".join([
        "",
        "       \u2588     \u2588     \u2588\u2584   \u2584\u2588",
        " \u2584\u2584 \u2584\u2588 \u2588     \u2588     \u2588 \u2580\u2584\u2580 \u2588  version %s" % version,
        "  \u2588\u2584\u2588\u2580 \u2588     \u2588     \u2588     \u2588  model   %s" % model,
        "   \u2580\u2580  \u2580\u2580\u2580\u2580\u2580 \u2580\u2580\u2580\u2580\u2580 \u2580     \u2580",
        ""]))
