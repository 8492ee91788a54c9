#!/usr/bin/python
# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vllm_health
short_description: Tell whether a vLLM server really serves, and why not
version_added: 0.1.0
author: inferops maintainers (@inferops)
description:
  - Probes a vLLM OpenAI-compatible server and gives a verdict (C(status)), numbers (C(metrics), C(gpus)) and a
    C(diagnosis) that points to the runbook that fixes the problem.
  - "Probes, each with its own deadline inside O(timeout): TCP connect, C(/health), C(/version), C(/v1/models)
    (the expected O(model) is served), C(/metrics) (parsed with prometheus_client; current and legacy vLLM metric
    names), the GPUs through NVML, the container or unit state, and a real one-token streamed completion that
    measures the time to first token. The completion is what detects an engine that hangs while C(/health)
    answers 200 (vllm#17972)."
  - Recent log lines (C(docker logs) or the journal) are scanned for known failure signatures (CUDA OOM, port in
    use, missing tokenizer, driver too old, KV cache too small, model missing or gated, NCCL, refused flags,
    engine death). Secrets in log evidence are masked.
  - With O(wait_for=healthy) it polls until the server serves, reports the model-loading progress parsed from the
    logs, and fails fast when the container or unit has exited or is crash-looping instead of waiting out
    O(start_period).
  - Always returns within its time budget, since every network step is bounded by an absolute deadline.
extends_documentation_fragment:
  - inferops.vllm.attributes
  - inferops.vllm.vllm_endpoint
attributes:
  check_mode:
    support: full
    details: Read-only, so it probes in check mode too.
  diff_mode:
    support: none
requirements:
  - prometheus-client (C(prometheus_client)) to read C(/metrics).
  - nvidia-ml-py (C(pynvml)) for GPU statistics.
  - docker (the Docker SDK for Python) when O(container) is given.
options:
  model:
    description: The model name the server must serve (its C(--served-model-name)). Default is the first served.
    type: str
  timeout:
    description:
      - Seconds one complete probe may take. Each step has its own share; the test inference may use what is left.
    type: float
    default: 10
  container:
    description: Name of the Docker container running the server, to read its state and logs.
    type: str
  unit:
    description: Name of the systemd unit running the server, to read its state and journal.
    type: str
  gpus:
    description:
      - Indices or UUIDs of the server's GPUs (a UUID's prefix and hex digits in any case; a MIG device's UUID names
        the GPU it is part of). Default is what the container's device requests or the unit's
        C(CUDA_VISIBLE_DEVICES) say, else every GPU.
      - A GPU named here (or by the container or the unit) that this host does not have fails the C(gpus) check; its
        C(detail) names that GPU and the GPUs the host has, and its C(missing) lists it.
    type: list
    elements: str
  log_file:
    description: A log file of the server to scan too (the C(venv) backend logs to C(/var/log/vllm/<name>.log)).
    type: path
  log_lines:
    description: How many recent log lines to scan.
    type: int
    default: 200
  thresholds:
    description: Limits above which a serving instance is V(degraded) (seed 001's alerts).
    type: dict
    default: {}
    suboptions:
      max_waiting:
        description: Requests waiting in the scheduler queue (C(vllm:num_requests_waiting)).
        type: int
        default: 50
      max_kv_cache_usage:
        description: KV cache usage, 1 = 100 % (C(vllm:kv_cache_usage_perc)).
        type: float
        default: 0.95
      max_ttft_p99:
        description: 99th percentile time to first token, seconds, over the server's life.
        type: float
        default: 5.0
      max_tpot_p99:
        description: 99th percentile time per output token, seconds, over the server's life.
        type: float
        default: 0.1
  fail_on:
    description:
      - When the task fails. V(unhealthy) fails on V(unhealthy) and V(down); V(degraded) also on V(degraded);
        V(never) only reports, for runbooks that use the result as data.
    type: str
    choices: [unhealthy, degraded, never]
    default: unhealthy
  wait_for:
    description: V(healthy) polls until the server serves (healthy or degraded); V(none) probes once.
    type: str
    choices: [none, healthy]
    default: none
  start_period:
    description: With O(wait_for=healthy), seconds to wait for the model to load (big models take 10 to 15 minutes).
    type: float
    default: 900
  poll_interval:
    description: With O(wait_for=healthy), seconds between polls.
    type: float
    default: 0.5
  progress_interval:
    description:
      - With O(wait_for=healthy), show the loading progress every this many seconds while waiting, on the
        controller's standard error, one line per chunk that names the host, the instance, the loading percentage
        and shards (or the start-up phase) and the time waited.
      - The wait then runs as chunks of this length (the action plugin calls the module once per chunk); the result
        is that of the whole wait. V(0), the default, waits in one call and shows nothing until it ends.
    type: float
    default: 0
notes:
  - Runs on the host of the server (or any host that reaches it); container, unit and GPU data come from the host
    it runs on.
"""

EXAMPLES = r"""
- name: Is it serving?
  inferops.vllm.vllm_health:
    url: http://127.0.0.1:8000
    model: llama-70b
    api_key: "{{ vllm_api_key }}"
    container: vllm-llama-70b
  register: health

- name: Wait for a freshly started 70B model, failing fast if it crashes
  inferops.vllm.vllm_health:
    url: https://127.0.0.1:8443
    ca_path: /etc/vllm/tls/ca.crt
    api_key: "{{ vllm_api_key }}"
    unit: vllm@llama-70b.service
    wait_for: healthy
    start_period: 1200

- name: Use the verdict as data in a runbook
  inferops.vllm.vllm_health:
    url: http://127.0.0.1:8000
    fail_on: never
  register: health

- name: Say what to run next
  ansible.builtin.debug:
    msg: "{{ health.status }}: {{ health.diagnosis | map(attribute='runbook') | list }}"
"""

RETURN = r"""
status:
  description: C(healthy), C(degraded) (serving, but over a threshold or with a GPU problem), C(starting),
    C(unhealthy) or C(down).
  returned: always
  type: str
  sample: healthy
healthy:
  description: Whether C(status) is C(healthy).
  returned: always
  type: bool
checks:
  description:
    - Each probe's C(ok), C(latency_ms) and C(detail) (tcp, health, version, models, inference, metrics, gpus,
      runtime).
    - The C(gpus) check's C(ok) is null when NVML could not be read. When it was, C(missing) lists the GPUs asked
      for (O(gpus), else the container's or the unit's) that this host does not have, as given; any fails the
      check.
    - What a server sent (an error body, a status line, model ids) is quoted with the API key masked, and cut.
  returned: always
  type: dict
  sample: {inference: {ok: true, latency_ms: 41.2, detail: "1-token completion: TTFT 38 ms", ttft_ms: 38.0}}
failed_checks:
  description: Names of the probes that failed.
  returned: always
  type: list
  elements: str
reasons:
  description: Why the status is C(degraded); a failed C(gpus) check of a serving server is one (C(GPU problem:)
    and its detail).
  returned: always
  type: list
  elements: str
  sample: [81 requests waiting > 50]
metrics:
  description:
    - Gauges, counters and p99 latencies read from C(/metrics), with the metric each came from.
    - A value is null when the server does not export the metric, or exports NaN or an infinity.
  returned: when /metrics was read
  type: dict
  sample: {num_requests_running: 3, num_requests_waiting: 0, kv_cache_usage: 0.12, ttft_p99_s: 0.24}
gpus:
  description:
    - The server's GPUs as NVML reports them (for a MIG device, the GPU it is part of); empty when the host has none
      of the GPUs asked for (the C(gpus) check names them).
  returned: when NVML was read
  type: list
  elements: dict
diagnosis:
  description: What went wrong, each with C(code), C(message), C(evidence) (secrets masked) and C(runbook).
  returned: always
  type: list
  elements: dict
  sample: [{code: cuda_oom, message: The GPU ran out of memory..., evidence: "torch.OutOfMemoryError: CUDA out of
    memory...", runbook: playbooks/runbooks/oom_recover.yml}]
version:
  description: vLLM's version from C(/version); null when C(/version) gave none (the C(version) check says why).
  returned: always
  type: str
  sample: 0.33.0
progress:
  description: Start-up phase and model-loading progress parsed from the logs.
  returned: always
  type: dict
  sample: {phase: loading, loading: {percent: 40, shards_loaded: 2, shards_total: 5}}
runtime:
  description:
    - Container or unit state (running, status, restart_count, oom_killed, exit_code, health).
    - For a unit, C(exit_code) is systemd's C(ExecMainStatus), and C(exec_main_code) its C(ExecMainCode), which says
      how to read it (1, exited, with that code; 2 or 3, killed or dumped by that signal).
  returned: when O(container) or O(unit) is given
  type: dict
waited_s:
  description: With O(wait_for=healthy), how long it waited.
  returned: with wait_for=healthy
  type: float
outcome:
  description:
    - With O(wait_for=healthy), how the wait ended, for callers that branch on it instead of parsing the failure
      message.
    - V(ready) (serves), V(timeout) (not ready after O(start_period)), V(exited) (the container or unit stopped),
      V(crash_loop) (it restarted while waited on), V(missing) (no such container or unit).
  returned: with wait_for=healthy
  type: str
  sample: ready
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.inferops.vllm.plugins.module_utils import (
    _docker_sdk, _validate, _vllm_client, _vllm_health, _vllm_metrics,
)
from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact


def main():
    module = AnsibleModule(
        argument_spec=dict(
            _vllm_client.ENDPOINT_ARGUMENTS,
            model=dict(type="str"),
            timeout=dict(type="float", default=10),
            container=dict(type="str"),
            unit=dict(type="str"),
            gpus=dict(type="list", elements="str"),
            log_file=dict(type="path"),
            log_lines=dict(type="int", default=200),
            thresholds=dict(type="dict", default={}, options=dict(
                max_waiting=dict(type="int", default=50),
                max_kv_cache_usage=dict(type="float", default=0.95),
                max_ttft_p99=dict(type="float", default=5.0),
                max_tpot_p99=dict(type="float", default=0.1),
            )),
            fail_on=dict(type="str", choices=["unhealthy", "degraded", "never"], default="unhealthy"),
            wait_for=dict(type="str", choices=["none", "healthy"], default="none"),
            start_period=dict(type="float", default=900),
            poll_interval=dict(type="float", default=0.5),
            progress_interval=dict(type="float", default=0),
        ),
        mutually_exclusive=[("container", "unit")],
        required_together=[("client_cert", "client_key")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        _validate.number("timeout", p["timeout"], 0, 3600, above_minimum=True)
        _validate.number("poll_interval", p["poll_interval"], 0, 3600, above_minimum=True)
        _validate.number("start_period", p["start_period"], 0, 7 * 86400)
        _validate.number("progress_interval", p["progress_interval"], 0, 7 * 86400)
        _validate.number("log_lines", p["log_lines"], 0, 100000)
        for name, value in sorted(p["thresholds"].items()):
            _validate.number("thresholds." + name, value, 0)
        for field in ("url", "model", "api_key"):
            _validate.single_line(field, p[field])
        _validate.command_word("container", p["container"])
        _validate.command_word("unit", p["unit"])
    except _validate.InputError as exc:
        module.fail_json(msg=str(exc))
    if p["container"] and _docker_sdk.docker is None:
        module.fail_json(msg=missing_required_lib("docker"), exception=_docker_sdk.DOCKER_IMPORT_ERROR)
    if _vllm_metrics.text_string_to_metric_families is None:
        module.warn("prometheus_client is not installed: /metrics is not read (%s)" % missing_required_lib(
            "prometheus-client"))
    runtime = "docker" if p["container"] else "systemd" if p["unit"] else None
    try:
        config = _vllm_health.Config(
            p["url"], model=p["model"], api_key=p["api_key"], validate_certs=p["validate_certs"],
            ca_path=p["ca_path"], client_cert=p["client_cert"], client_key=p["client_key"], timeout=p["timeout"],
            runtime=runtime, name=p["container"] or p["unit"], gpus=p["gpus"], log_lines=p["log_lines"],
            thresholds=p["thresholds"], log_file=p["log_file"])
    except (ValueError, IOError, OSError) as exc:
        module.fail_json(msg=redact("cannot set up the probe: %s" % exc, [p["api_key"]]))

    failure = None
    if p["wait_for"] == "healthy":
        report, failure = _vllm_health.wait_until_ready(config, p["start_period"], p["poll_interval"])
    else:
        report = _vllm_health.probe(config)
    report["changed"] = False
    # The URL may carry a password (https://user:pass@...), and the details quote the server.
    secrets = [p["api_key"]]
    if failure:
        module.fail_json(msg=redact("%s is not serving: %s; status %s%s" % (
            p["url"], failure, report["status"], _summary(report)), secrets), **report)
    if report["status"] in _vllm_health.FAILING[p["fail_on"]]:
        module.fail_json(msg=redact("%s is %s%s" % (p["url"], report["status"], _summary(report)), secrets),
                         **report)
    module.exit_json(**report)


def _summary(report):
    parts = ["%s: %s" % (name, report["checks"][name]["detail"]) for name in report["failed_checks"]]
    parts += ["%s (see %s)" % (d["code"], d["runbook"]) for d in report["diagnosis"]]
    parts += report["reasons"]
    return (" - " + "; ".join(parts)) if parts else ""


if __name__ == "__main__":
    main()
