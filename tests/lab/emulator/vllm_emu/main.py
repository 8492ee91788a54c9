"""`vllm serve` start-up as vLLM 0.33 does it, with its log lines: banner and non-default args, the port claimed
first, the model and its context length resolved (failures there are the API server's tracebacks), then the engine
core (GPUs, memory plan, loading with progress; its failures are the engine core's), then the routes and uvicorn's
lines, and serving until SIGTERM, engine death, or a crash."""

import os
import signal
import socket
import sys
import threading
import time

from . import cli, engine, log, model, shutdown, stats
from .faults import Faults
from .flags import VERSION
from .metrics import Metrics
from .server import EngineState, Handler, Server, route_lines
from .tls import tls_context, watch_certificates

GIB = engine.GIB
ENTRY_FRAMES = [
    '  File "/usr/local/bin/vllm", line 10, in <module>',
    "    sys.exit(main())",
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/cli/main.py", line 120, in main',
    "    args.dispatch_function(args)",
]


class ApiServerError(Exception):
    """A failure in vLLM's API-server process: the traceback's frames and exception lines."""

    def __init__(self, lines):
        super().__init__(lines[-1])
        self.lines = lines


def api_server_fails(lines):
    log.traceback(ENTRY_FRAMES + lines)
    sys.exit(1)


def engine_core_fails(lines, code=1):
    """vLLM's engine-core failure: the cause logged by the engine core, then the API server's RuntimeError."""
    log.set_role("EngineCore")
    log.error("core.py:1584", "EngineCore failed to start.")
    for line in lines:
        log.error("core.py:1584", line)
    log.set_role("APIServer")
    log.traceback(ENTRY_FRAMES + ["RuntimeError: Engine core initialization failed. See root cause above. Failed "
                                  "core proc(s): {'EngineCore': %d}" % code])
    sys.exit(code)


def bind(args, faults):
    if faults.get("address_in_use"):
        raise ApiServerError(["OSError: [Errno 98] Address already in use"])
    family = socket.AF_INET6 if args.host and ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host or "0.0.0.0", args.port))
    except OSError as exc:
        raise ApiServerError([
            '  File "/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/launchers/launcher.py", line 348, in '
            "create_server_socket",
            "    sock.bind(addr)",
            "OSError: [Errno %d] %s" % (exc.errno, exc.strerror)])
    return sock


def hub_errors(args, faults):
    if faults.get("hub_error") in (401, "gated"):
        raise ApiServerError([
            "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-lab)",
            "Cannot access gated repo for url https://huggingface.co/%s/resolve/main/config.json." % args.model,
            "Access to model %s is restricted. You must have access to it and be authenticated to access it. Please "
            "log in." % args.model])
    if faults.get("hub_error") == 404:
        raise ApiServerError([
            "huggingface_hub.errors.RepositoryNotFoundError: 404 Client Error. (Request ID: Root=1-lab)",
            "Repository Not Found for url: https://huggingface.co/api/models/%s." % args.model])


def load_model(args, faults, weights):
    log.info("gpu_model_runner.py:4979", "Starting to load model %s..." % args.model)
    delay = float(faults.get("load_delay", 0) or 0)
    shards = 5
    start = time.monotonic()
    for done in range(shards + 1):
        if done:
            time.sleep(delay / shards)
        elapsed = time.monotonic() - start
        # tqdm's progress bar, on stderr.
        log.raw("Loading safetensors checkpoint shards: %3d%% Completed | %d/%d [%02d:%02d<?, ?it/s]" % (
            done * 100 // shards, done, shards, elapsed // 60, elapsed % 60), sys.stderr)
    log.info("default_loader.py:507", "Loading weights took %.2f seconds" % (time.monotonic() - start))
    log.info("gpu_model_runner.py:5089", "Model loading took %.4f GiB memory and %.6f seconds" % (
        weights / GIB, time.monotonic() - start))


def resolve_model(args, faults):
    """The API server's part of start-up; its failures are tracebacks of that process."""
    try:
        hub_errors(args, faults)
        found = model.resolve(args.model)
        log.info("model.py:744", "Resolved architecture: %s" % found.arch)
        max_len = model.max_model_len(found, args.max_model_len)
        log.info("model.py:2170", "Using max model len %d" % max_len)
        if faults.get("tokenizer_error"):
            raise model.ModelError(model.sentencepiece_traceback())
        model.check_tokenizer(args.model, args.tokenizer)
    except (model.ModelError, ApiServerError) as exc:
        api_server_fails(exc.lines)
    return found, max_len


def start_engine(args, faults, found, max_len, served_names):
    log.set_role("EngineCore")
    log.info("core.py:140", "Initializing a V1 LLM engine (v%s) with config: model=%r, tokenizer=%r, dtype=%s, "
             "max_seq_len=%d, tensor_parallel_size=%d, pipeline_parallel_size=%d, data_parallel_size=%d, "
             "quantization=%s, enforce_eager=%s, kv_cache_dtype=%s, served_model_name=%s, enable_prefix_caching=%s" % (
                 VERSION, args.model, args.tokenizer or args.model, args.dtype, max_len, args.tensor_parallel_size,
                 args.pipeline_parallel_size, args.data_parallel_size, args.quantization, args.enforce_eager,
                 args.kv_cache_dtype, served_names[0], args.enable_prefix_caching is not False))
    start = time.monotonic()
    try:
        devices = engine.visible_gpus()
        plan = engine.plan(args, devices, faults, found.params, max_len)
        load_model(args, faults, plan.weights)
    except engine.StartupError as exc:
        engine_core_fails(exc.lines, exc.code)
    workers = engine.start_workers(plan.gpus, plan.memory_mib, faults, instance=served_names[0])
    log.info("gpu_worker.py:773", "Available KV cache memory: %.2f GiB" % (plan.kv_bytes / GIB))
    log.info("kv_cache_utils.py:1148", "GPU KV cache size: {:,} tokens".format(plan.kv_tokens))
    log.info("kv_cache_utils.py:1149", "Maximum concurrency for {:,} tokens per request: {:.2f}x".format(
        plan.max_len, plan.kv_tokens / plan.max_len))
    log.info("core.py:396", "init engine (profile, create kv cache, warmup model) took %.2f s" % (
        time.monotonic() - start))
    log.set_role("APIServer")
    max_num_seqs = args.max_num_seqs or engine.default_max_num_seqs(plan.gpus[0])
    return plan, workers, max_num_seqs


def main(argv):
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8")
    try:
        args = cli.parse(argv)
    except cli.ArgsError as exc:
        api_server_fails(exc.lines)
    faults = Faults(args.port)
    current = faults.current()
    served_names = args.served_model_name or [args.model]
    api_keys = args.api_key or ([os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else [])

    log.banner(VERSION, args.model)
    log.info("startup.py:96", "non-default args: %s" % args.non_default)
    for name in sorted(os.environ):
        if name in ("VLLM_USE_V1", "VLLM_ATTENTION_BACKEND_V0"):
            log.warning("interface.py:1470", "Unknown vLLM environment variable detected: %s" % name)
    try:
        sock = bind(args, current)
    except ApiServerError as exc:
        api_server_fails(exc.lines)
    found, max_len = resolve_model(args, current)
    plan, workers, max_num_seqs = start_engine(args, current, found, max_len, served_names)

    metrics = Metrics(served_names[0])
    state = EngineState(args, served_names, api_keys, metrics, faults, plan.max_len, max_num_seqs)
    sock.listen(128)
    scheme, context = "http", None
    if args.ssl_certfile and args.ssl_keyfile:
        context = tls_context(args)
        scheme = "https"
    server = Server((args.host or "0.0.0.0", args.port), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False) if context else sock
    server.engine = state

    shutdown.install(state, workers)
    threading.Thread(target=watchdog, args=(state, workers), daemon=True, name="watchdog").start()
    if not args.disable_log_stats:
        stats.start(metrics)

    host = args.host or "0.0.0.0"
    log.info("entry.py:135", "Supported tasks: ['generate']")
    log.info("entry.py:139", "Starting vLLM server on %s://%s:%d" % (
        scheme, "[%s]" % host if ":" in host else host, args.port))
    log.info("launcher.py:188", "Available routes are:")
    for path, methods in route_lines():
        log.info("launcher.py:197", "Route: %s, Methods: %s" % (path, methods))
    if context and args.enable_ssl_refresh:
        watch_certificates(context, args)
    log.uvicorn("Started server process [%d]" % os.getpid())
    log.uvicorn("Waiting for application startup.")
    log.uvicorn("Application startup complete.")
    server.serve_forever(poll_interval=0.2)


def watchdog(state, workers):
    """Engine death: vLLM's watchdog, which wakes every 5 s, stops the server once the engine is dead (unless
    VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1), and the server exits 0."""
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
        if state.stopping or not (state.dead or state.faults.get("engine_dead") or dead_worker):
            continue
        shutdown.engine_died(state, worker=dead_worker)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if os.environ.get("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH") == "1":
            return
        time.sleep(4)
        log.uvicorn("Shutting down")
        log.uvicorn("Waiting for application shutdown.")
        log.uvicorn("Application shutdown complete.")
        log.uvicorn("Finished server process [%d]" % os.getpid())
        os._exit(0)
