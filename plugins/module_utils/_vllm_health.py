# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Does this vLLM server really serve, and if not, why: the probes, the verdict, and waiting for readiness.

Every probe has its own deadline inside the overall budget. The test inference (a streamed completion of one
token) runs last and may use what is left: it is what catches an engine that hangs while /health says 200.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.inferops.vllm.plugins.module_utils import (
    _docker_gpus, _log_signatures, _nvml, _runtime, _vllm_metrics,
)
from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_client import Endpoint, ProbeError

STATUSES = ("healthy", "degraded", "starting", "unhealthy", "down")
FAILING = {"unhealthy": ("unhealthy", "down"), "degraded": ("degraded", "unhealthy", "down"), "never": ()}
LOOPBACK = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
DEFAULT_THRESHOLDS = {"max_waiting": 50, "max_kv_cache_usage": 0.95, "max_ttft_p99": 5.0, "max_tpot_p99": 0.1}
# How much of a server's own text (an error body, a version, model ids) a report quotes.
BODY_EXCERPT = 200
SHORT_TEXT = 100
MAX_MODELS = 20


def version_of(data):
    """The version in a /version answer ({"version": "0.33.0"}), or None for any other JSON value."""
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) and version.strip() else None


def model_ids(data):
    """The model ids in a /v1/models answer ({"data": [{"id": "..."}]}), skipping entries without a string id;
    [] for any other JSON value."""
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    return [m["id"] for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]


class Config(object):
    def __init__(self, url, model=None, api_key=None, validate_certs=True, ca_path=None, client_cert=None,
                 client_key=None, timeout=10.0, runtime=None, name=None, gpus=None, log_lines=200,
                 thresholds=None, nvml_timeout=5.0, log_file=None):
        self.endpoint = Endpoint(url, api_key=api_key, validate_certs=validate_certs, ca_path=ca_path,
                                 client_cert=client_cert, client_key=client_key)
        self.model = model
        self.secrets = [api_key] if api_key else []
        self.timeout = timeout
        self.runtime = runtime
        self.name = name
        self.gpus = gpus
        self.log_lines = log_lines
        self.log_file = log_file
        self.thresholds = dict(DEFAULT_THRESHOLDS, **(thresholds or {}))
        self.nvml_timeout = nvml_timeout


def _check(ok, started, detail, **extra):
    result = {"ok": ok, "latency_ms": round((time.monotonic() - started) * 1000, 1), "detail": detail}
    result.update(extra)
    return result


def _diagnosis(code, message, evidence, runbook):
    return {"code": code, "message": message, "evidence": evidence, "runbook": runbook}


class Probe(object):
    """One pass of every probe against one instance, and the verdict."""

    def __init__(self, config, budget=None):
        self.config = config
        self.endpoint = config.endpoint
        self.started = time.monotonic()
        self.deadline = self.started + (config.timeout if budget is None else budget)
        self.checks = {}
        self.diagnosis = []
        self.report = {"version": None, "metrics": None, "gpus": None, "runtime": None, "progress": None,
                       "reasons": []}

    def _step_deadline(self, share):
        """A deadline for one probe: a share of the budget, never past the overall deadline."""
        return min(self.deadline, time.monotonic() + max(1.0, self.config.timeout * share))

    def _quote(self, text, limit=SHORT_TEXT):
        """A server's text for the report: the key masked before the cut, or a cut could keep part of it (Ansible's
        no_log masks only the whole key)."""
        text = redact(text, self.config.secrets)
        return text if len(text) <= limit else text[:limit] + "..."

    def _http(self, name, method, path, share=0.25, **kwargs):
        started = time.monotonic()
        try:
            response = self.endpoint.request(method, path, self._step_deadline(share) if share else self.deadline,
                                             **kwargs)
        except ProbeError as exc:
            self.checks[name] = _check(False, started, "%s %s: %s" % (method, path, exc), stage=exc.stage)
            return None
        return started, response

    # ---- individual probes ----

    def runtime(self):
        lines = _runtime.tail(self.config.log_file, self.config.log_lines, self.config.secrets) \
            if self.config.log_file else []
        return self._runtime_state() + lines

    def _runtime_state(self):
        if not self.config.runtime:
            return []
        started = time.monotonic()
        try:
            state, lines = _runtime.read(self.config.runtime, self.config.name, self.config.log_lines,
                                         max(1.0, min(5.0, self.deadline - started)), self.config.secrets)
        except _runtime.RuntimeErrorInfo as exc:
            self.checks["runtime"] = _check(False, started, str(exc))
            return []
        self.report["runtime"] = state
        ok = state["running"] and not state["restarting"]
        detail = "%s %s: %s, %d restart(s)" % (state["type"], state["name"], state["status"], state["restart_count"])
        if state.get("oom_killed"):
            detail += ", OOM-killed by the kernel"
        if state.get("exit_code") and not state["running"]:
            detail += ", " + _how_it_ended(state)
        self.checks["runtime"] = _check(ok, started, detail)
        return lines

    def tcp(self):
        started = time.monotonic()
        try:
            sock, _connect_ms = self.endpoint.connect(self._step_deadline(0.2), handshake=False)
            sock.close()
        except ProbeError as exc:
            self.checks["tcp"] = _check(False, started, "%s:%d: %s" % (self.endpoint.host, self.endpoint.port, exc),
                                        stage=exc.stage)
            return False
        where = "%s:%d" % (self.endpoint.host, self.endpoint.port)
        self.checks["tcp"] = _check(True, started, where + " accepts connections")
        return True

    def health(self):
        got = self._http("health", "GET", "/health")
        if got is None:
            return None
        started, response = got
        ok = response.status == 200
        self.checks["health"] = _check(ok, started, "GET /health: %d" % response.status, status=response.status)
        if response.status == 503:
            self.diagnosis.append(_diagnosis(
                "engine_dead", "/health answers 503: the engine is dead and the server will exit (or stay "
                "useless with VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1).", "GET /health -> 503",
                _log_signatures.RUNBOOKS + "reset.yml"))
        return response.status

    def version(self):
        got = self._http("version", "GET", "/version")
        if got is None:
            return
        started, response = got
        if response.status != 200:
            self.checks["version"] = _check(False, started, "GET /version: %d" % response.status)
            return
        try:
            version = version_of(response.json())
        except ValueError as exc:
            self.checks["version"] = _check(False, started, "GET /version: 200, not JSON: %s" % self._quote(str(exc)))
            return
        if version is None:
            self.checks["version"] = _check(False, started, 'GET /version: 200, no {"version": "..."} in the answer')
            return
        self.report["version"] = version = self._quote(version)
        self.checks["version"] = _check(True, started, "vLLM %s" % version)

    def models(self):
        got = self._http("models", "GET", "/v1/models", auth=True)
        if got is None:
            return None
        started, response = got
        if response.status == 401:
            self.checks["models"] = _check(False, started, "GET /v1/models: 401, the API key was refused")
            self.diagnosis.append(_diagnosis(
                "api_key_rejected", "The server refused the API key given to the probe (401): the key is wrong or "
                "was rotated away.", "GET /v1/models -> 401", _log_signatures.RUNBOOKS + "rotate_api_key.yml"))
            return None
        try:
            served = model_ids(response.json()) if response.status == 200 else []
        except ValueError:
            served = []
        if response.status != 200 or not served:
            self.checks["models"] = _check(False, started, "GET /v1/models: %d, no model listed" % response.status
                                           + ("" if response.status != 200 else
                                              ' (not {"data": [{"id": "<model>"}, ...]})'))
            return None
        wanted = self.config.model
        ok = wanted is None or wanted in served
        # The ids as reported: masked, each cut, and not too many (what the comparison used stays whole).
        shown = [self._quote(m) for m in served[:MAX_MODELS]]
        listed = ", ".join(shown) + (" and %d more" % (len(served) - MAX_MODELS) if len(served) > MAX_MODELS else "")
        detail = "serves %s" % listed if ok else "serves %s, not %s" % (listed, wanted)
        self.checks["models"] = _check(ok, started, detail, served=shown)
        if not ok:
            self.diagnosis.append(_diagnosis(
                "model_not_served", "The server does not serve the expected model %s." % wanted,
                "GET /v1/models -> %s" % listed, _log_signatures.DOCS + "model-access"))
        return served[0] if ok and wanted is None else wanted

    def inference(self, model, health_status):
        body = {"model": model, "prompt": "ping", "max_tokens": 1, "temperature": 0, "stream": True}
        got = self._http("inference", "POST", "/v1/completions", share=None, body=body, auth=True, first_event=True)
        if got is None:
            if health_status == 200 and self.checks["inference"].get("stage") in ("response", "body"):
                waited = self.checks["inference"]["latency_ms"] / 1000.0
                self.diagnosis.append(_diagnosis(
                    "inference_hang", "A one-token completion got no answer while /health answered 200: the engine "
                    "hangs (vllm#17972). Only a restart recovers it.",
                    "POST /v1/completions: no answer in %.1f s; GET /health -> 200" % waited,
                    _log_signatures.RUNBOOKS + "reset.yml"))
            return
        started, response = got
        ttft = response.timings.get("first_event_ms")
        ok = response.status == 200 and ttft is not None
        detail = "1-token completion: TTFT %.0f ms" % ttft if ok else "POST /v1/completions: %d %s" % (
            response.status, self._quote(response.text(), BODY_EXCERPT))
        self.checks["inference"] = _check(ok, started, detail, ttft_ms=ttft, status=response.status)

    def metrics(self):
        got = self._http("metrics", "GET", "/metrics")
        if got is None:
            return
        started, response = got
        if response.status != 200:
            self.checks["metrics"] = _check(False, started, "GET /metrics: %d" % response.status)
            return
        try:
            summary = _vllm_metrics.summarize(response.text())
        except _vllm_metrics.MetricsError as exc:
            self.checks["metrics"] = _check(False, started, self._quote(str(exc), BODY_EXCERPT))
            return
        self.report["metrics"] = summary
        self.report["reasons"] = _vllm_metrics.threshold_reasons(summary, self.config.thresholds)
        self.checks["metrics"] = _check(True, started, "%s running, %s waiting, KV cache %s" % (
            _fmt(summary["num_requests_running"]), _fmt(summary["num_requests_waiting"]),
            "n/a" if summary["kv_cache_usage"] is None else "%.0f%%" % (summary["kv_cache_usage"] * 100)))

    def gpus(self):
        wanted = self.config.gpus
        if wanted is None and self.report["runtime"]:
            wanted = self.report["runtime"].get("gpus")
        started = time.monotonic()
        try:
            snap = _nvml.snapshot(timeout=max(0.5, min(self.config.nvml_timeout, self.deadline - started)))
        except _nvml.NvmlError as exc:
            # Not a verdict on the server: this host could not read its GPUs (ok None means "not checked").
            self.checks["gpus"] = _check(None, started, "not checked: %s" % exc)
            return
        host = devices = snap["devices"]
        missing = []
        if wanted:
            # By index or by UUID in any case: a container created with capitals in its DeviceRequests still names
            # NVML's "GPU-" and lower-case hex. A MIG device's UUID names the GPU it is part of. The devices are
            # reported as NVML gives them.
            keys = [_gpu_keys(d) for d in host]
            names = set(_docker_gpus.id_key(w) for w in wanted)
            names.discard(None)
            devices = [d for d, k in zip(host, keys) if names.intersection(k)]
            # The GPUs asked for that this host does not have, each once, as given: NVML answered, but not for the
            # server's GPUs (a wrong `gpus`, a GPU gone from the bus), so "0 GPU(s) read" would be no verdict.
            known = set().union(*keys)
            for name in wanted:
                key = _docker_gpus.id_key(name)
                if key is not None and key not in known:
                    known.add(key)
                    missing.append(self._quote(str(name)))
        self.report["gpus"] = devices
        problems = []
        if missing:
            problems.append("%s %s %s not exist on this host (GPUs here: %s)" % (
                "GPU" if len(missing) == 1 else "GPUs", ", ".join(missing), "does" if len(missing) == 1 else "do",
                ", ".join(_shown_device(d) for d in host) or "none"))
        problems += ["GPU %s: %s" % (d["index"], d["error"]) for d in devices if "error" in d]
        problems += ["GPU %s: %d uncorrected ECC error(s)" % (d["index"], d["ecc_uncorrected_volatile"])
                     for d in devices if d.get("ecc_uncorrected_volatile")]
        self.checks["gpus"] = _check(not problems, started, "; ".join(problems) or "%d GPU(s) read through NVML"
                                     % len(devices), missing=missing)

    # ---- verdict ----

    def run(self, with_gpus=True):
        lines = self.runtime()
        port_open = self.tcp()
        health_status = model = None
        if port_open:
            health_status = self.health()
            if health_status is not None:
                # The server answers HTTP: the other probes are worth their time.
                self.version()
                model = self.models()
                self.metrics()
        if with_gpus:
            self.gpus()
        if port_open and health_status == 200 and model:
            self.inference(model, health_status)
        self._diagnose_logs(lines)
        status = self._status(port_open, health_status)
        failed = [name for name, check in self.checks.items() if check["ok"] is False]
        self.report.update(status=status, healthy=status == "healthy", checks=self.checks, diagnosis=self.diagnosis,
                           failed_checks=failed, elapsed_ms=round((time.monotonic() - self.started) * 1000, 1))
        return self.report

    def _diagnose_logs(self, lines):
        self.report["progress"] = _log_signatures.progress(lines, self.config.secrets)
        known = set(d["code"] for d in self.diagnosis)
        # A 503 from /health only says the engine died: a cause the logs name goes before it, since the first
        # diagnosis is the one playbooks show.
        generic = [i for i, d in enumerate(self.diagnosis) if d["code"] in _log_signatures.GENERIC]
        at = generic[0] if generic else len(self.diagnosis)
        specific = []
        for found in _log_signatures.scan(lines, self.config.secrets):
            if found["code"] == "address_in_use" and self.endpoint.host in LOOPBACK:
                holder = _log_signatures.port_holder(self.endpoint.port)
                if holder:
                    pid, command = holder
                    found["message"] += " Port %d is held by PID %d (%s)." % (self.endpoint.port, pid, command)
            if found["code"] in known:
                continue
            if found["code"] in _log_signatures.GENERIC:
                self.diagnosis.append(found)
            else:
                specific.append(found)
        state = self.report["runtime"]
        if state and state.get("oom_killed"):
            what, evidence = ("unit's process", "Result = oom-kill") if state.get("type") == "systemd" else (
                "container", "State.OOMKilled = true")
            specific.append(_diagnosis(
                "oom_killed", "The kernel's OOM killer stopped the %s: host RAM, not GPU memory, ran out." % what,
                evidence, _log_signatures.RUNBOOKS + "oom_recover.yml"))
        sigill = _sigill_evidence(state)
        # The main process itself killed by SIGILL (an AVX-512 build imported on an AVX2 host) may log nothing: the
        # state is then the only evidence. As with the logs' codes, the first diagnosis of a code is kept, so a
        # SIGILL line in the log (which names the process) wins over the state's.
        if sigill and "illegal_instruction" not in known.union(d["code"] for d in specific):
            message, runbook = _log_signatures.describe("illegal_instruction")
            specific.append(_diagnosis("illegal_instruction", message, sigill, runbook))
        self.diagnosis[at:at] = specific

    def _status(self, port_open, health_status):
        state = self.report["runtime"]
        # A published container port accepts connections (docker-proxy) before the server inside listens: what
        # counts is whether HTTP answers.
        if health_status is None:
            if state and (not state["exists"] or not state["running"] or state["restarting"]):
                return "down"
            progress = self.report["progress"]
            # "failed": the logs show a fatal error after the last start-up line, so it is not starting any more.
            if progress is not None and progress["phase"] not in ("serving", "failed"):
                return "starting"
            # Something listens but does not answer HTTP, or a running server stopped listening.
            return "unhealthy" if port_open or state else "down"
        if health_status != 200:
            return "unhealthy"
        for name in ("models", "inference"):
            if not self.checks.get(name, {}).get("ok"):
                return "unhealthy"
        if self.checks.get("gpus", {}).get("ok") is False:
            self.report["reasons"].append("GPU problem: %s" % self.checks["gpus"]["detail"])
        if self.report["reasons"]:
            return "degraded"
        return "healthy"


# SIGILL's number on Linux, and a container's State.ExitCode when its main process dies of it: Docker (runc) reports a
# main process killed by signal N as 128 + N, the shell's convention (137 = 128 + 9, SIGKILL, is the familiar one).
# State has no field for the signal itself, so the diagnosis reads 132 as SIGILL.
SIGILL = 4
SIGILL_EXIT_CODE = 128 + SIGILL
# systemd's ExecMainCode when the main process was killed by a signal: CLD_KILLED, CLD_DUMPED (with a core dump).
_KILLED = {2: "CLD_KILLED", 3: "CLD_DUMPED"}


def _how_it_ended(state):
    """"exit code N", or "killed by signal N" for a unit whose ExecMainStatus is the signal that killed it."""
    if state.get("type") == "systemd" and state.get("exec_main_code") in _KILLED:
        return "killed by signal %s" % state.get("exit_code")
    return "exit code %s" % state.get("exit_code")


def _sigill_evidence(state):
    """What in a container's or unit's state says its main process died of SIGILL, or None.

    A container that exited 132 is read as killed by SIGILL: a process that called exit(132) itself reads the same,
    and so does a shell that started vLLM and passed its child's 128 + 4 on. A unit says it exactly: ExecMainCode
    2 or 3 (killed) with ExecMainStatus 4, the signal; ExecMainCode 1 (exited) with status 4 is an exit code 4."""
    if not state or not state.get("exists") or (state.get("running") and not state.get("restarting")):
        return None
    if state.get("type") == "docker" and state.get("exit_code") == SIGILL_EXIT_CODE:
        return "State.ExitCode = %d: read as killed by SIGILL (exit code %d = 128 + %d)" % (
            SIGILL_EXIT_CODE, SIGILL_EXIT_CODE, SIGILL)
    code = state.get("exec_main_code")
    if state.get("type") == "systemd" and code in _KILLED and state.get("exit_code") == SIGILL:
        return "ExecMainCode = %d (%s), ExecMainStatus = %d: the main process was killed by SIGILL" % (
            code, _KILLED[code], SIGILL)
    return None


def _gpu_keys(device):
    """The names a device answers to (_docker_gpus.device_keys), and the UUIDs of its MIG devices."""
    keys = set(_docker_gpus.device_keys(device))
    migs = device.get("mig_devices")
    for mig in migs if isinstance(migs, list) else []:
        if isinstance(mig, dict):
            keys.add(_docker_gpus.id_key(mig.get("uuid")))
    keys.discard(None)
    return keys


def _shown_device(device):
    """A GPU of the host, for a message: its index and UUID."""
    uuid = device.get("uuid")
    return "%s (%s)" % (device.get("index"), uuid) if uuid else str(device.get("index"))


def _fmt(value):
    return "n/a" if value is None else "%d" % value


def probe(config, with_gpus=True):
    return Probe(config).run(with_gpus=with_gpus)


def wait_until_ready(config, start_period, poll_interval, clock=time.monotonic, sleep=time.sleep):
    """Polls until the server serves (healthy or degraded), returning (report, None); or gives up at once when the
    process is missing, has exited or is crash-looping, or after start_period, returning (report, reason). The
    report's `outcome` says which, for callers: ready, missing, exited, crash_loop or timeout."""
    started = clock()
    first_restarts = None
    polls = 0
    while True:
        polls += 1
        report = Probe(config).run(with_gpus=False)
        report["polls"] = polls
        report["waited_s"] = round(clock() - started, 2)
        if report["status"] in ("healthy", "degraded"):
            # Ready: one complete pass (GPUs included) for the report.
            final = Probe(config).run(with_gpus=True)
            final.update(polls=polls, waited_s=report["waited_s"], outcome="ready")
            return final, None
        state = report["runtime"]
        if state:
            if first_restarts is None:
                first_restarts = state["restart_count"]
            if not state["exists"]:
                report["outcome"] = "missing"
                return report, "the %s %s does not exist" % (state["type"], state["name"])
            if not state["running"] and not state["restarting"]:
                report["outcome"] = "exited"
                return report, "the %s %s is not running (%s, %s)" % (
                    state["type"], state["name"], state["status"], _how_it_ended(state))
            if state["restarting"] or state["restart_count"] > first_restarts:
                report["outcome"] = "crash_loop"
                return report, "the %s %s is crash-looping (%d restart(s))" % (
                    state["type"], state["name"], state["restart_count"])
        elapsed = clock() - started
        if elapsed >= start_period:
            report["outcome"] = "timeout"
            return report, "not ready after %.0f s (start_period)" % start_period
        sleep(max(0.0, min(poll_interval, start_period - elapsed)))
