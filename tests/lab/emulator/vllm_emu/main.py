"""`vllm serve` start-up as vLLM 0.33 does it: claim the port, check and load the model (with progress), plan GPU
memory, start the workers, then serve until SIGTERM, engine death, or a crash."""

import os
import signal
import socket
import sys
import threading
import time

from . import cli, engine, log
from .faults import Faults
from .metrics import Metrics
from .server import EngineState, Handler, Server, tls_context, watch_certificates

GIB = engine.GIB


def fail(lines, code=1):
    for line in lines:
        if line.startswith(("Traceback", "  ")):
            log.raw(line)
        else:
            log.error("core.py:708", line)
    log.raw("RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}")
    sys.exit(code)


def bind(args, faults):
    if faults.get("address_in_use"):
        raise engine.StartupError(["OSError: [Errno 98] Address already in use"])
    family = socket.AF_INET6 if args.host and ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host or "0.0.0.0", args.port))
    except OSError as exc:
        raise engine.StartupError(["OSError: [Errno %d] %s" % (exc.errno, exc.strerror)])
    return sock


def load_model(args, faults, weights):
    log.info("gpu_model_runner.py:2602", "Starting to load model %s..." % args.model_tag)
    delay = float(faults.get("load_delay", 0) or 0)
    shards = 5
    start = time.monotonic()
    for done in range(shards + 1):
        if done:
            time.sleep(delay / shards)
        elapsed = time.monotonic() - start
        log.raw("Loading safetensors checkpoint shards: %3d%% Completed | %d/%d [%02d:%02d<?, ?it/s]" % (
            done * 100 // shards, done, shards, elapsed // 60, elapsed % 60))
    log.info("default_loader.py:267", "Loading weights took %.2f seconds" % (time.monotonic() - start))
    log.info("gpu_model_runner.py:2653", "Model loading took %.4f GiB and %.6f seconds" % (
        weights / GIB, time.monotonic() - start))


def main(argv):
    args = cli.parse(cli.main_usage(argv))
    faults = Faults(args.port)
    current = faults.current()
    served_name = (args.served_model_name or [args.model_tag])[0]
    api_keys = args.api_key or ([os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else [])

    log.raw("INFO %s [__init__.py:216] Automatically detected platform cuda." % time.strftime("%m-%d %H:%M:%S"))
    log.info("api_server.py:1896", "vLLM API server version %s" % cli.VERSION)
    for name in sorted(os.environ):
        if name.startswith("VLLM_") and name in ("VLLM_USE_V1", "VLLM_ATTENTION_BACKEND_V0"):
            log.warning("envs.py:1541", "Unknown vLLM environment variable detected: %s" % name)
    try:
        sock = bind(args, current)
        if current.get("hub_error") == 401 or current.get("hub_error") == "gated":
            raise engine.StartupError([
                "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-lab)",
                "Cannot access gated repo for url https://huggingface.co/%s/resolve/main/config.json." %
                args.model_tag, "Access to model %s is restricted. You must have access to it and be "
                "authenticated to access it. Please log in." % args.model_tag])
        if current.get("hub_error") == 404:
            raise engine.StartupError([
                "huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error. (Request ID: Root=1-lab)",
                "Repository Not Found for url: https://huggingface.co/api/models/%s." % args.model_tag])
        default_len, arch = engine.model_profile(args)[1:]
        log.info("model.py:547", "Resolved architecture: %s" % arch)
        log.info("model.py:1510", "Using max model len %d" % (args.max_model_len or default_len))
        if current.get("tokenizer_error"):
            raise engine.StartupError(engine.tokenizer_traceback())
        engine.check_tokenizer(args)
        log.set_role("EngineCore_DP0")
        devices = engine.visible_gpus()
        plan = engine.plan(args, devices, current)
        load_model(args, current, plan.weights)
    except engine.StartupError as exc:
        log.set_role("EngineCore_DP0")
        fail(exc.lines, exc.code)

    workers = engine.start_workers(plan.gpus, plan.memory_mib, current, instance=served_name)
    log.info("gpu_worker.py:298", "Available KV cache memory: %.2f GiB" % (plan.kv_bytes / GIB))
    log.info("kv_cache_utils.py:1087", "GPU KV cache size: {:,} tokens".format(plan.kv_tokens))
    log.info("kv_cache_utils.py:1091", "Maximum concurrency for {:,} tokens per request: {:.2f}x".format(
        plan.max_len, plan.kv_tokens / plan.max_len))
    log.set_role("APIServer")

    metrics = Metrics(served_name)
    state = EngineState(args, served_name, api_keys, metrics, faults, plan.max_len)
    sock.listen(128)
    scheme = "http"
    context = None
    if args.ssl_certfile and args.ssl_keyfile:
        context = tls_context(args)
        scheme = "https"
        if args.enable_ssl_refresh:
            watch_certificates(context, args)
    server = Server((args.host or "0.0.0.0", args.port), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False) if context else sock
    server.engine = state

    def shutdown(signum, _frame):
        log.uvicorn("Shutting down")
        for pid in workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        log.uvicorn("Waiting for application shutdown.")
        log.uvicorn("Application shutdown complete.")
        log.uvicorn("Finished server process [%d]" % os.getpid())
        os._exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    threading.Thread(target=watchdog, args=(state, workers), daemon=True, name="watchdog").start()

    host = args.host or "0.0.0.0"
    log.info("api_server.py:1971", "Starting vLLM API server 0 on %s://%s:%d" % (scheme, host, args.port))
    log.uvicorn("Started server process [%d]" % os.getpid())
    log.uvicorn("Waiting for application startup.")
    log.uvicorn("Application startup complete.")
    log.uvicorn("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)" % (scheme, host, args.port))
    server.serve_forever(poll_interval=0.2)


def watchdog(state, workers):
    """Engine death (a fault, or a worker that died): /health turns 503, then the server exits, as vLLM's
    watchdog does unless VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1."""
    while True:
        time.sleep(0.2)
        dead_worker = None
        for pid in workers:
            try:
                done = os.waitpid(pid, os.WNOHANG)[0]
            except ChildProcessError:
                done = pid
            if done:
                dead_worker = pid
        if not (state.faults.get("engine_dead") or dead_worker):
            continue
        state.dead = True
        log.set_role("EngineCore_DP0")
        if dead_worker:
            log.error("multiproc_executor.py:150", "Worker proc VllmWorker-0 died unexpectedly, shutting down "
                      "executor.")
        log.error("core.py:710", "EngineCore encountered a fatal error.")
        log.set_role("APIServer")
        log.error("async_llm.py:480", "AsyncLLM output_handler failed.")
        log.raw("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace "
                "(above) for the root cause.")
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if os.environ.get("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH") == "1":
            return
        time.sleep(5)
        log.uvicorn("Shutting down")
        log.uvicorn("Finished server process [%d]" % os.getpid())
        os._exit(1)
