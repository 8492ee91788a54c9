"""/v1/completions and /v1/chat/completions as vLLM 0.33 answers them: the request checks and their messages, the
clamping of max_tokens to the context left, whole and streamed (SSE) responses, and what in-flight requests see when
SIGTERM comes (aborted with an error event, or drained with --shutdown-timeout)."""

import json
import time
import uuid

from . import shutdown, tokens
from .shutdown import ENGINE_DEAD
from .engine import GIB, oom_traceback

ITL = 0.005


class Aborted(Exception):
    pass


def engine_oom_traceback():
    return oom_traceback(0, 2.0 * GIB, 79.19 * GIB, 0.31 * GIB)


def invalid(h, message, param, value=None):
    suffix = " (parameter=%s)" % param if value is None else " (parameter=%s, value=%s)" % (param, value)
    h.send_error_json(400, message + suffix, "BadRequestError", param)


def handle(h, chat, body):
    engine, faults = h.engine, h.engine.faults.current()
    if engine.stopping:
        # Once SIGTERM came, vLLM's tokenizer pool is shut down: a new request fails (vLLM sometimes lets Starlette
        # answer it, as a bare "Internal Server Error").
        return h.send_error_json(500, "cannot schedule new futures after shutdown", "InternalServerError")
    if h.unknown_model(body):
        return
    if engine.dead:
        return h.send_error_json(500, ENGINE_DEAD, "InternalServerError")
    if faults.get("oom") == "request":
        # A CUDA OOM in the forward pass kills the engine core; this request gets the engine's error.
        shutdown.engine_died(engine, engine_oom_traceback())
        return h.send_error_json(500, ENGINE_DEAD, "InternalServerError")
    prompt = body.get("messages") if chat else body.get("prompt")
    if not prompt:
        if chat:
            return h.send_error_json(400, "1 validation error:\n  {'type': 'missing', 'loc': ('body', 'messages'), "
                                     "'msg': 'Field required'}", "Bad Request", "body.messages")
        return invalid(h, "Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    words = tokens.prompt_words(prompt)
    param = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    requested = body.get(param)
    if requested is not None and not isinstance(requested, int):
        return h.send_error_json(400, "1 validation error:\n  {'type': 'int_parsing', 'loc': ('body', '%s'), "
                                 "'msg': 'Input should be a valid integer'}" % param, "Bad Request", "body." + param)
    if requested is not None and requested > engine.max_len:
        return invalid(h, "%s=%d cannot be greater than max_model_len=%d. Please request fewer output tokens." % (
            param, requested, engine.max_len), param, requested)
    if len(words) > engine.max_len:
        # A text prompt is tokenized only up to one token past the limit, hence "at least".
        text = isinstance(prompt, str) or chat
        count = engine.max_len + 1 if text else len(words)
        return invalid(h, "This model's maximum context length is %d tokens. However, your prompt contains %s%d "
                       "input tokens, which exceeds this limit even without any output tokens. Please reduce the "
                       "length of the input prompt." % (engine.max_len, "at least " if text else "", count),
                       "input_tokens", count)
    if requested is not None and requested < 1:
        return invalid(h, "max_tokens must be at least 1, got %d." % requested, "max_tokens", requested)
    # Too long a max_tokens is not refused: it is cut to what the context leaves after the prompt.
    default = engine.max_len - len(words) if chat else 16
    max_tokens = min(requested if requested is not None else default, engine.max_len - len(words))
    Generation(h, chat, body, words, max_tokens, faults).run()


class Generation:
    """One request through the scheduler: queue, (hang), first token, more tokens, metrics."""

    def __init__(self, handler, chat, body, words, max_tokens, faults):
        self.h = handler
        self.engine = handler.engine
        self.chat = chat
        self.body = body
        self.words = words
        self.max_tokens = max_tokens
        self.faults = faults
        self.stream = bool(body.get("stream"))
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
        self.created = int(time.time())
        self.kind = "chat.completion" if chat else "text_completion"

    def run(self):
        engine, m, start = self.engine, self.engine.metrics, time.monotonic()
        with engine.lock:
            engine.in_flight.add(self)
        with m.lock:
            m.waiting += 1
        engine.slots.acquire()
        queued = float(self.faults.get("queue_delay", 0.3 if self.faults.get("queue") else 0))
        time.sleep(queued)
        with m.lock:
            m.waiting -= 1
            m.running += 1
            m.kv_cache_usage = min(1.0, m.running / max(engine.slots_total, 1) + 0.02)
        m.observe("vllm:request_queue_time_seconds", time.monotonic() - start)
        try:
            self._wait_while_hung()
            self._respond(start)
        except (BrokenPipeError, ConnectionResetError):
            m.finished("abort")
        finally:
            with m.lock:
                m.running -= 1
                m.kv_cache_usage = min(1.0, m.running / max(engine.slots_total, 1))
            engine.slots.release()
            with engine.lock:
                engine.in_flight.discard(self)
                engine.lock.notify_all()

    def _wait_while_hung(self):
        # A hung engine (vllm#17972): the request is accepted and never progresses; /health stays 200.
        while self.engine.faults.get("hang") and not self.engine.dead and self.engine.stopping != "abort":
            time.sleep(0.1)

    def _aborted(self):
        return self.engine.stopping == "abort" or self.engine.dead

    def _respond(self, start):
        m = self.engine.metrics
        ttft = float(self.faults.get("slow_ttft", 0) or 0) + 0.003
        m.query_prefix_cache(tokens.ids(self.words), self.engine.args.enable_prefix_caching is not False)
        out = tokens.generated(self.max_tokens)
        time.sleep(ttft)
        m.observe("vllm:time_to_first_token_seconds", time.monotonic() - start)
        m.add("vllm:prompt_tokens", len(self.words))
        try:
            if self.stream:
                self._stream(out)
            else:
                self._whole(out)
        except Aborted:
            return
        elapsed = time.monotonic() - start
        for _token in out[1:]:
            m.observe("vllm:inter_token_latency_seconds", ITL)
        m.observe("vllm:request_time_per_output_token_seconds", (elapsed - ttft) / max(len(out) - 1, 1))
        m.observe("vllm:e2e_request_latency_seconds", elapsed)
        m.finished("length")

    def _next_token(self, i):
        if i:
            time.sleep(ITL)
        if self._aborted():
            raise Aborted()
        self.engine.metrics.add("vllm:generation_tokens", 1)

    def _usage(self, completion_tokens, details=True):
        usage = {"prompt_tokens": len(self.words), "total_tokens": len(self.words) + completion_tokens,
                 "completion_tokens": completion_tokens}
        if details:
            usage.update(prompt_tokens_details=None, completion_tokens_details=None)
        return usage

    def _whole(self, out):
        try:
            for i in range(len(out)):
                self._next_token(i)
        except Aborted:
            self.h.send_error_json(500, ENGINE_DEAD, "InternalServerError")
            raise
        text = "".join(" " + word for word in out)
        choice = {"index": 0}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None, "annotations": None,
                                 "audio": None, "function_call": None, "reasoning": None}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason="length", stop_reason=None, token_ids=None)
        if not self.chat:
            choice.update(prompt_logprobs=None, prompt_token_ids=None)
        choice.update(routed_experts=None, weight_versions=None)
        response = {"id": self.id, "object": self.kind, "created": self.created, "model": self.engine.served_name,
                    "choices": [choice], "service_tier": None, "system_fingerprint": self.engine.fingerprint,
                    "usage": self._usage(len(out))}
        if self.chat:
            response.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
        response.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
        self.h.send_json(200, response)

    def _send_event(self, data):
        payload = ("data: %s\n\n" % data).encode()
        self.h.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        self.h.wfile.flush()

    def _chunk(self, choices, last=False, **extra):
        event = {"id": self.id, "object": self.kind + ".chunk" if self.chat else self.kind,
                 "created": self.created, "model": self.engine.served_name, "choices": choices}
        event.update(extra)
        if last:
            event["system_fingerprint"] = self.engine.fingerprint
        self._send_event(json.dumps(event, separators=(",", ":"), ensure_ascii=False))

    def _content_choice(self, word, reason):
        if self.chat:
            choice = {"index": 0, "delta": {"content": word}, "logprobs": None, "finish_reason": reason}
            if reason:
                choice["stop_reason"] = None
            choice["token_ids"] = None
            return choice
        return {"index": 0, "text": word, "logprobs": None, "finish_reason": reason, "stop_reason": None,
                "prompt_token_ids": None, "token_ids": None}

    def _stream(self, out):
        h = self.h
        h.send_response(200)
        h.send_header("content-type", "text/event-stream; charset=utf-8")
        h.send_header("vary", "Origin")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        usage = bool((self.body.get("stream_options") or {}).get("include_usage"))
        try:
            if self.chat:
                self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}], prompt_token_ids=None, prompt_text=None)
            for i, word in enumerate(out):
                self._next_token(i)
                last = i == len(out) - 1
                self._chunk([self._content_choice(" " + word, "length" if last else None)],
                            last=last and not usage)
            if usage:
                self._chunk([], last=True, usage=self._usage(len(out), details=False))
        except Aborted:
            # SIGTERM without --shutdown-timeout kills the engine core at once: the stream ends with its error.
            self._send_event(json.dumps({"error": {"message": ENGINE_DEAD, "type": "InternalServerError",
                                                   "param": None, "code": 500}}))
            self._send_event("[DONE]")
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
            raise
        self._send_event("[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
