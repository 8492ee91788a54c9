"""How a vLLM 0.33 server ends, with its log lines. Engine death (a fault, a CUDA OOM while serving, a dead
worker): /health turns 503, requests get the engine's error, and vLLM's watchdog stops the server (exit 0) within
5 s. SIGTERM, with its `[shutdown]` lines: Without --shutdown-timeout (0) the engine core
is killed at once: in-flight streams end with the engine's error event and [DONE]. With --shutdown-timeout N the
engine drains: in-flight requests finish (up to N seconds, then the rest are aborted) while new ones fail with a
bare 500 and /health stays 200. Either way the server exits 0."""

import os
import signal
import threading
import time

from . import log

ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."


def install(state, workers):
    started = []

    def handler(signum, _frame):
        # The HTTP server keeps answering while the engine drains: the work runs beside it.
        if not started:
            started.append(signum)
            threading.Thread(target=stop, args=(state, workers), name="shutdown").start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _wait_idle(state, timeout):
    deadline = time.monotonic() + timeout
    with state.lock:
        while state.in_flight and time.monotonic() < deadline:
            state.lock.wait(max(0.0, min(0.2, deadline - time.monotonic())))
        return len(state.in_flight)


def engine_dead_traceback(where, first):
    log.error(where, first)
    for line in ("Traceback (most recent call last):",
                 '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/async_llm.py", line 886, in '
                 "output_handler",
                 "    outputs = await engine_core.get_output_async()",
                 "vllm.v1.engine.exceptions.EngineDeadError: " + ENGINE_DEAD):
        log.error(where, line)


def engine_died(state, cause=(), worker=None):
    """The engine core's death and what the API server logs about it (once)."""
    with state.lock:
        if state.dead:
            return
        state.dead = True
    log.set_role("EngineCore")
    if worker:
        log.error("multiproc_executor.py:150", "Worker proc VllmWorker-0 died unexpectedly, shutting down executor.")
    log.error("core.py:1586", "EngineCore encountered a fatal error.")
    for line in cause:
        log.error("core.py:1586", line)
    log.set_role("APIServer")
    log.warning("core_client.py:839", "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup")
    for where, message in (("core_client.py:792", "start timeout=default"),
                           ("core_client.py:794", "stopping engine manager"),
                           ("core_client.py:796", "engine manager stopped"),
                           ("core_client.py:797", "cleaning up background resources"),
                           ("core_client.py:799", "complete")):
        log.info(where, "[shutdown] MPClient: " + message)
    engine_dead_traceback("async_llm.py:943", "AsyncLLM output_handler failed.")


def stop(state, workers):
    timeout = state.args.shutdown_timeout
    mode = "abort" if timeout == 0 else "drain"
    log.info("launcher.py:256", "[shutdown] API server: shutdown triggered")
    log.info("launcher.py:273", "[shutdown] API server: stopping engine client mode=%s timeout=%ss" % (mode, timeout))
    log.info("core_client.py:792", "[shutdown] MPClient: start timeout=%ss" % timeout)
    log.info("core_client.py:794", "[shutdown] MPClient: stopping engine manager")
    log.info("utils.py:629", "[shutdown] Process manager: send sigterm to process EngineCore")
    log.set_role("EngineCore")
    log.info("core.py:1526", "[shutdown] EngineCore: trigger received signal=SIGTERM")
    log.info("core.py:1713", "[shutdown] EngineCore: start mode=%s timeout=%ds" % (mode, timeout))
    aborted = []
    if mode == "drain":
        with state.lock:
            count = len(state.in_flight)
            state.stopping = "drain"
        if count:
            log.info("core.py:1733", "[shutdown] EngineCore: draining in-flight requests count=%d timeout=%ds" % (
                count, timeout))
        if _wait_idle(state, timeout) == 0:
            log.info("core.py:1745", "[shutdown] EngineCore: request processing complete; starting resource "
                     "teardown")
            log.info("core.py:1573", "[shutdown] EngineCore: exiting busy loop")
    log.set_role("APIServer")
    with state.lock:
        if state.in_flight:
            aborted = [g.chat for g in state.in_flight]
            state.stopping = "abort"
    if mode == "abort" or aborted:
        log.warning("utils.py:649", "[shutdown] Process manager: force killing remaining processes count=1")
        log.warning("utils.py:654", "[shutdown] Process manager: force killing remaining process EngineCore pid %d"
                    % os.getpid())
        for pid in workers:
            log.warning("system_utils.py:249", "[shutdown] force killing sub process VLLM::Worker pid %d" % pid)
    _wait_idle(state, 2.0)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    log.info("core_client.py:796", "[shutdown] MPClient: engine manager stopped")
    log.info("core_client.py:797", "[shutdown] MPClient: cleaning up background resources")
    log.info("core_client.py:799", "[shutdown] MPClient: complete")
    if aborted:
        # The requests still running lose their engine: vLLM logs it as an engine death.
        engine_dead_traceback("async_llm.py:943", "AsyncLLM output_handler failed.")
        for chat in aborted:
            if chat:
                engine_dead_traceback("serving.py:952", "Error in chat completion stream generator.")
            else:
                engine_dead_traceback("serving.py:555", "Error in completion stream generator.")
    log.info("launcher.py:281", "[shutdown] API server: engine client stopped")
    log.info("launcher.py:284", "[shutdown] API server: signalling HTTP server shutdown")
    log.info("launcher.py:306", "[shutdown] API server: shutting down FastAPI HTTP server")
    log.uvicorn("Shutting down")
    log.uvicorn("Waiting for application shutdown.")
    log.uvicorn("Application shutdown complete.")
    os._exit(0)
