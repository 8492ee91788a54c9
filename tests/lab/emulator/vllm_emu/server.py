"""The HTTP surface of vLLM 0.33's API server: its routes, status codes and bodies (FastAPI's and vLLM's), API keys
(only /v1, /v2, /inference and /cohere are guarded), and uvicorn's access log."""

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import generate, log, tokens
from .flags import VERSION

GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")


class EngineState:
    """What the handlers share: settings, metrics, faults, in-flight requests, and the engine's life."""

    def __init__(self, args, served_names, api_keys, metrics, faults, max_len, max_num_seqs):
        self.args = args
        self.served_names = served_names
        self.served_name = served_names[0]
        self.api_keys = api_keys
        self.metrics = metrics
        self.faults = faults
        self.max_len = max_len
        self.dead = False
        # None while serving; "drain" or "abort" once SIGTERM came (--shutdown-timeout > 0 drains).
        self.stopping = None
        self.created = int(time.time())
        self.slots = threading.BoundedSemaphore(max_num_seqs)
        self.slots_total = max_num_seqs
        self.in_flight = set()
        self.lock = threading.Condition()
        self.fingerprint = "vllm-%s-%s" % (VERSION, uuid.uuid4().hex[:8])


def compact(payload):
    """JSON as FastAPI's responses write it."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def engine(self):
        return self.server.engine

    def version_string(self):
        return "uvicorn"

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
        if self.engine.args.disable_uvicorn_access_log:
            return
        phrase = self.responses.get(int(code), ("",))[0] if str(code).isdigit() else ""
        client = "%s:%d" % self.client_address[:2]
        log.access('%s - "%s" %s %s' % (client, self.requestline, code, phrase))

    # ---- plumbing ----

    def send_response(self, code, message=None):
        self.status_sent = code
        super().send_response(code, message)

    def send_body(self, status, body, content_type, headers=(), cors=True):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("content-length", str(len(body)))
        if content_type:
            self.send_header("content-type", content_type)
        if cors:
            # Added by vLLM's CORS middleware, which the API-key check runs before.
            self.send_header("vary", "Origin")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, payload, headers=(), cors=True):
        self.send_body(status, compact(payload), "application/json", headers, cors)

    def send_error_json(self, status, message, kind, param=None):
        self.send_json(status, {"error": {"message": message, "type": kind, "param": param, "code": status}})

    def read_json(self):
        """The request's JSON object, or None after answering 400 as FastAPI's validation does."""
        try:
            body = json.loads(self.body or b"")
        except ValueError as exc:
            self.send_error_json(400, "1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.0', 'msg': "
                                 "'JSON decode error', 'input': '<dict of 0 items>', 'ctx': {'error': '%s'}}" %
                                 getattr(exc, "msg", exc), "Bad Request", "body.0")
            return None
        if not isinstance(body, dict):
            self.send_error_json(400, "1 validation error:\n  {'type': 'model_attributes_type', 'loc': 'body', "
                                 "'msg': 'Input should be a valid dictionary or object to extract fields from'}",
                                 "Bad Request", "body")
            return None
        return body

    def authorized(self):
        """vLLM's AuthenticationMiddleware: `Bearer` (any case), one space, then one of the keys."""
        if not self.engine.api_keys or self.command == "OPTIONS":
            return True
        if not self.path.split("?", 1)[0].startswith(GUARDED_PREFIXES):
            return True
        scheme, _space, token = self.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token in self.engine.api_keys

    def routes(self):
        return {
            "/health": {"GET": self.health}, "/ping": {"GET": self.health, "POST": self.health},
            "/version": {"GET": self.version}, "/load": {"GET": self.load}, "/metrics": {"GET": self.metrics},
            "/tokenize": {"POST": self.tokenize}, "/detokenize": {"POST": self.detokenize},
            "/v1/models": {"GET": self.models}, "/invocations": {"POST": self.invocations},
            "/v1/completions": {"POST": lambda: self.generate(chat=False)},
            "/v1/chat/completions": {"POST": lambda: self.generate(chat=True)},
        }

    def route(self):
        length = int(self.headers.get("content-length") or 0)
        # Read whatever the answer, so that the connection stays usable for the next request.
        self.body = self.rfile.read(length) if length else b""
        if not self.authorized():
            # vLLM's API-key middleware answers before the instrumentator's: a 401 is not counted.
            return self.send_json(401, {"error": "Unauthorized"}, cors=False)
        path = self.path.split("?", 1)[0]
        methods = self.routes().get(path)
        self.status_sent = None
        try:
            if methods is None:
                return self.send_json(404, {"detail": "Not Found"})
            handler = methods.get(self.command)
            if handler is None:
                return self.send_json(405, {"detail": "Method Not Allowed"},
                                      headers=[("allow", ", ".join(methods))])
            return handler()
        finally:
            if self.status_sent is not None:
                # Starlette matches a route only with its method: a 405 counts as an unmatched path.
                templated = methods is not None and self.command in methods
                self.engine.metrics.count_http(path, templated, self.command, self.status_sent)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = route

    # ---- endpoints ----

    def health(self):
        self.send_body(503 if self.engine.dead else 200, b"", None)

    def version(self):
        self.send_json(200, {"version": VERSION})

    def load(self):
        # vLLM counts in-flight requests only with --enable-server-load-tracking; otherwise it stays 0.
        load = len(self.engine.in_flight) if self.engine.args.enable_server_load_tracking else 0
        self.send_json(200, {"server_load": load})

    def metrics(self):
        faults = self.engine.faults.current()
        body = self.engine.metrics.render(extra_waiting=int(faults.get("queue", 0) or 0),
                                          kv_override=faults.get("kv_cache_usage")).encode()
        self.send_body(200, body, "text/plain; version=1.0.0; charset=utf-8")

    def models(self):
        e = self.engine
        self.send_json(200, {"object": "list", "data": [{
            "id": name, "object": "model", "created": e.created, "owned_by": "vllm", "root": e.args.model,
            "parent": None, "max_model_len": e.max_len,
            "permission": [{"id": "modelperm-%s" % uuid.uuid4().hex[:16], "object": "model_permission",
                            "created": e.created, "allow_create_engine": False, "allow_sampling": True,
                            "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                            "allow_fine_tuning": False, "organization": "*", "group": None,
                            "is_blocking": False}],
        } for name in e.served_names]})

    def unknown_model(self, body):
        model = body.get("model")
        if model in (None, "") or model in self.engine.served_names:
            return False
        self.send_error_json(404, "The model `%s` does not exist. Valid aliases: %s." % (
            model, ", ".join(self.engine.served_names)), "NotFoundError", "model")
        return True

    def tokenize(self):
        body = self.read_json()
        if body is None or self.unknown_model(body):
            return
        ids = tokens.ids(tokens.prompt_words(body.get("messages") if "messages" in body else body.get("prompt")))
        self.send_json(200, {"count": len(ids), "max_model_len": self.engine.max_len, "tokens": ids,
                             "token_strs": None})

    def detokenize(self):
        body = self.read_json()
        if body is None or self.unknown_model(body):
            return
        self.send_json(200, {"prompt": tokens.text(body.get("tokens") or [])})

    def invocations(self):
        """SageMaker's entry point: a chat request when it has messages, else a completion."""
        body = self.read_json()
        if body is not None:
            generate.handle(self, "messages" in body, body)

    def generate(self, chat):
        body = self.read_json()
        if body is not None:
            generate.handle(self, chat, body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def route_lines():
    """The `Route:` lines vLLM logs at start-up, for the routes the emulator serves."""
    handler = Handler.__new__(Handler)
    return [(path, ", ".join(methods)) for path, methods in handler.routes().items()]
