"""The OpenAI-compatible HTTP surface of vLLM 0.33: /health, /ping, /version, /load, /v1/models,
/v1/completions, /v1/chat/completions (with stream), /metrics; API keys; TLS with certificate refresh."""

import json
import os
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import log
from .cli import VERSION

OPEN_PATHS = ("/health", "/ping", "/version", "/load", "/metrics")
PROTECTED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
WORDS = ("the quick brown fox jumps over the lazy dog and then the fox rests under a tall green tree while "
         "the dog keeps watch").split()


class EngineState:
    """What the handlers share: settings, metrics, faults, and whether the engine still lives."""

    def __init__(self, args, served_name, api_keys, metrics, faults, max_len):
        self.args = args
        self.served_name = served_name
        self.api_keys = api_keys
        self.metrics = metrics
        self.faults = faults
        self.max_len = max_len
        self.dead = False
        self.created = int(time.time())
        self.slots = threading.BoundedSemaphore(args.max_num_seqs)
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    sys_version = ""

    @property
    def engine(self):
        return self.server.engine

    def setup(self):
        super().setup()
        if hasattr(self.request, "do_handshake"):
            # Deferred so that a client that stalls the handshake holds only its own thread.
            self.request.settimeout(15)
            self.request.do_handshake()
            self.request.settimeout(None)

    def log_message(self, fmt, *args):
        pass

    def log_request(self, code="-", size="-"):
        phrase = self.responses.get(int(code), ("",))[0] if str(code).isdigit() else ""
        client = "%s:%d" % self.client_address[:2]
        log.access('%s - "%s" %s %s' % (client, self.requestline, code, phrase))

    # ---- plumbing ----

    def send_json(self, status, payload, extra_headers=()):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for key, value in extra_headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def send_empty(self, status):
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def read_json(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def authorized(self):
        if not self.engine.api_keys or not self.path.startswith(PROTECTED_PREFIXES):
            return True
        header = self.headers.get("authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.engine.api_keys

    def route(self, method):
        path = self.path.split("?", 1)[0]
        if not self.authorized():
            return self.send_json(401, {"error": "Unauthorized"})
        table = {
            ("GET", "/health"): self.health, ("GET", "/ping"): self.health, ("POST", "/ping"): self.health,
            ("GET", "/version"): self.version, ("GET", "/load"): self.load, ("GET", "/metrics"): self.metrics,
            ("GET", "/v1/models"): self.models,
            ("POST", "/v1/completions"): lambda: self.generate(chat=False),
            ("POST", "/v1/chat/completions"): lambda: self.generate(chat=True),
        }
        handler = table.get((method, path))
        if handler:
            return handler()
        if any(p == path for m, p in table):
            return self.send_json(405, {"detail": "Method Not Allowed"})
        return self.send_json(404, {"detail": "Not Found"})

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    # ---- endpoints ----

    def health(self):
        self.send_empty(503 if self.engine.dead else 200)

    def version(self):
        self.send_json(200, {"version": VERSION})

    def load(self):
        m = self.engine.metrics
        self.send_json(200, {"server_load": m.running + m.waiting})

    def metrics(self):
        faults = self.engine.faults.current()
        body = self.engine.metrics.render(extra_waiting=int(faults.get("queue", 0) or 0),
                                          kv_override=faults.get("kv_cache_usage")).encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def models(self):
        e = self.engine
        self.send_json(200, {"object": "list", "data": [{
            "id": e.served_name, "object": "model", "created": e.created, "owned_by": "vllm",
            "root": e.args.model_tag, "parent": None, "max_model_len": e.max_len,
            "permission": [{"id": "modelperm-%s" % uuid.uuid4().hex, "object": "model_permission",
                            "created": e.created, "allow_create_engine": False, "allow_sampling": True,
                            "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                            "allow_fine_tuning": False, "organization": "*", "group": None,
                            "is_blocking": False}],
        }]})

    def generate(self, chat):
        engine, faults = self.engine, self.engine.faults.current()
        body = self.read_json()
        if body is None:
            return self.send_json(400, error("Invalid JSON body", "BadRequestError", 400))
        if engine.dead:
            return self.send_json(500, error("EngineCore encountered an issue. See stack trace (above) for the "
                                             "root cause.", "InternalServerError", 500))
        if faults.get("oom") == "request":
            log.crash_oom()
        model = body.get("model")
        if model not in (None, engine.served_name):
            return self.send_json(404, error("The model `%s` does not exist." % model, "NotFoundError", 404,
                                             param="model"))
        prompt = body.get("messages") if chat else body.get("prompt")
        if not prompt:
            return self.send_json(400, error("%s is required" % ("messages" if chat else "prompt"),
                                             "BadRequestError", 400))
        prompt_tokens = count_tokens(prompt)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        if prompt_tokens + max_tokens > engine.max_len:
            return self.send_json(400, error(
                "This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the "
                "messages, %d in the completion). Please reduce the length of the messages or completion." % (
                    engine.max_len, prompt_tokens + max_tokens, prompt_tokens, max_tokens),
                "BadRequestError", 400))
        Generation(self, chat, body, prompt_tokens, max_tokens, faults).run()


def error(message, kind, code, param=None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def count_tokens(prompt):
    if isinstance(prompt, list):
        return sum(count_tokens(m.get("content", "") if isinstance(m, dict) else m) for m in prompt) + 3 * len(prompt)
    return max(1, len(str(prompt).split()))


class Generation:
    """One request through the scheduler: queue, (hang), first token, more tokens, metrics."""

    def __init__(self, handler, chat, body, prompt_tokens, max_tokens, faults):
        self.h = handler
        self.engine = handler.engine
        self.chat = chat
        self.body = body
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.faults = faults
        self.stream = bool(body.get("stream"))
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def run(self):
        m, start = self.engine.metrics, time.monotonic()
        with m.lock:
            m.waiting += 1
        self.engine.slots.acquire()
        queued = float(self.faults.get("queue_delay", 0.3 if self.faults.get("queue") else 0))
        time.sleep(queued)
        with m.lock:
            m.waiting -= 1
            m.running += 1
            m.kv_cache_usage = min(1.0, m.running / max(self.engine.args.max_num_seqs, 1) + 0.02)
        m.observe("vllm:request_queue_time_seconds", time.monotonic() - start)
        try:
            self._wait_while_hung()
            self._respond(start)
        finally:
            with m.lock:
                m.running -= 1
                m.kv_cache_usage = min(1.0, m.running / max(self.engine.args.max_num_seqs, 1))
            self.engine.slots.release()

    def _wait_while_hung(self):
        # A hung engine (vllm#17972): the request is accepted and never progresses; /health stays 200.
        while self.engine.faults.get("hang") and not self.engine.dead:
            time.sleep(0.1)

    def _tokens(self):
        return [WORDS[i % len(WORDS)] for i in range(self.max_tokens)]

    def _respond(self, start):
        m = self.engine.metrics
        ttft = float(self.faults.get("slow_ttft", 0) or 0) + 0.003
        itl = 0.001
        tokens = self._tokens()
        reason = "length"
        time.sleep(ttft)
        m.observe("vllm:time_to_first_token_seconds", time.monotonic() - start)
        if self.stream:
            self._stream(tokens, itl, reason)
        else:
            time.sleep(itl * (len(tokens) - 1))
            self._send_whole(tokens, reason)
        elapsed = time.monotonic() - start
        for _token in tokens[1:]:
            m.observe("vllm:inter_token_latency_seconds", itl)
        m.observe("vllm:request_time_per_output_token_seconds", (elapsed - ttft) / max(len(tokens) - 1, 1))
        m.observe("vllm:e2e_request_latency_seconds", elapsed)
        m.add("vllm:prompt_tokens", self.prompt_tokens)
        m.add("vllm:generation_tokens", len(tokens))
        m.add("vllm:prefix_cache_queries", self.prompt_tokens)
        if self.engine.args.enable_prefix_caching:
            m.add("vllm:prefix_cache_hits", self.prompt_tokens // 2)
        m.finished(reason)

    def _usage(self, completion_tokens):
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def _send_whole(self, tokens, reason):
        text = " ".join(tokens)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                      "logprobs": None, "finish_reason": reason, "stop_reason": None}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason, "stop_reason": None}
            kind = "text_completion"
        self.h.send_json(200, {"id": self.id, "object": kind, "created": self.created,
                               "model": self.engine.served_name, "choices": [choice],
                               "usage": self._usage(len(tokens))})

    def _chunk(self, payload):
        data = ("data: %s\n\n" % payload).encode()
        self.h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.h.wfile.flush()

    def _event(self, delta_text, reason=None, first=False):
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {"content": delta_text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta_text, "logprobs": None, "finish_reason": reason,
                      "stop_reason": None}
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.engine.served_name,
                "choices": [choice]}

    def _stream(self, tokens, itl, reason):
        h = self.h
        h.send_response(200)
        h.send_header("content-type", "text/event-stream; charset=utf-8")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        if self.chat:
            self._chunk(json.dumps(self._event("", first=True)))
        for i, token in enumerate(tokens):
            if i:
                time.sleep(itl)
            last = i == len(tokens) - 1
            self._chunk(json.dumps(self._event(("" if i == 0 else " ") + token, reason if last else None)))
        if (self.body.get("stream_options") or {}).get("include_usage"):
            final = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                     "created": self.created, "model": self.engine.served_name, "choices": [],
                     "usage": self._usage(len(tokens))}
            self._chunk(json.dumps(final))
        self._chunk("[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def tls_context(args):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
    if args.ssl_ca_certs:
        context.load_verify_locations(args.ssl_ca_certs)
    context.verify_mode = {0: ssl.CERT_NONE, 1: ssl.CERT_OPTIONAL, 2: ssl.CERT_REQUIRED}[args.ssl_cert_reqs]
    return context


def watch_certificates(context, args):
    """--enable-ssl-refresh: reload the certificate files into the live context when they change on disk."""
    paths = [p for p in (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certs) if p]

    def stamps():
        out = []
        for path in paths:
            try:
                out.append(os.stat(path).st_mtime_ns)
            except OSError:
                out.append(None)
        return out

    def loop():
        seen = stamps()
        while True:
            time.sleep(0.5)
            now = stamps()
            if now == seen:
                continue
            try:
                context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
                if args.ssl_ca_certs:
                    context.load_verify_locations(args.ssl_ca_certs)
                log.info("ssl_utils.py:70", "Reloading SSL certificate and key: %s, %s" % (
                    args.ssl_certfile, args.ssl_keyfile))
                seen = now
            except (OSError, ssl.SSLError) as exc:
                # A half-written pair: keep serving the old one and try again on the next change.
                log.warning("ssl_utils.py:80", "SSL certificate reload failed: %s" % exc)

    threading.Thread(target=loop, daemon=True, name="ssl-refresh").start()
