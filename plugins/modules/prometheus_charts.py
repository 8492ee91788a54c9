#!/usr/bin/python
# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: prometheus_charts
short_description: Draw PNG charts of vLLM instances and their GPUs from Prometheus, for an incident bundle
version_added: 0.3.0
author: inferops maintainers (@inferops)
description:
  - Queries Prometheus's C(/api/v1/query_range) for the last O(range) seconds and writes one PNG line chart per key
    series into O(dest), so that the person on call can look rather than read.
  - For each instance of each host in O(targets), C(<host>/vllm-<instance>-<chart>.png) for the charts
    C(requests) (running and waiting), C(kv-cache) (usage in percent), C(ttft-p95) (time to first token),
    C(generation-tokens) (per second) and C(http-requests) (all and 5xx answers per second on C(/v1)); for each
    host, C(<host>/gpu-<chart>.png) for C(memory-used), C(utilization) and C(temperature), one line per GPU.
  - The series are those the monitoring role scrapes, told apart by their C(host) and C(vllm_instance) labels.
  - A name that is not a plain token (letters, digits, C(.), C(_), C(-)) is written with its other characters
    replaced and a hash of it appended, so no name leaves O(dest). Missing data shows as a gap in the line, and a
    chart without any data says so.
  - A Prometheus that cannot be reached, refuses the credentials or is not a Prometheus is no failure; RV(error)
    says which URL was asked and what came back, and no other chart is asked for. A query Prometheus refuses skips
    its chart only (RV(skipped)).
  - Runs on the controller, for example with C(delegate_to) V(localhost).
extends_documentation_fragment:
  - inferops.vllm.attributes
attributes:
  check_mode:
    support: full
    details: Queries Prometheus and reports the charts it would write, writes nothing.
  diff_mode:
    support: none
options:
  url:
    description:
      - Prometheus's base URL, such as V(http://prometheus.example:9090). Credentials go in O(username) and
        O(password), never in the URL.
    type: str
    required: true
  dest:
    description: Directory on the controller to write into; created when missing, with one directory per host.
    type: path
    required: true
  targets:
    description: What to chart.
    type: list
    elements: dict
    required: true
    suboptions:
      host:
        description: The host's inventory name (the C(host) label of its series).
        type: str
        required: true
      instances:
        description: The names of its vLLM instances (their C(vllm_instance) label).
        type: list
        elements: str
        default: []
  end:
    description: End of the charted range, in seconds since the epoch; the current time when not set.
    type: float
  range:
    description: Seconds charted, up to O(end).
    type: int
    default: 3600
  step:
    description: Seconds between two points of a chart. A gap of more than 2.5 steps without data breaks the line.
    type: int
    default: 30
  timeout:
    description: Seconds one query may take, connection and answer included.
    type: float
    default: 10
  total_timeout:
    description: Seconds all the queries may take together; the charts not drawn by then are left out.
    type: float
    default: 120
  validate_certs:
    description: Whether to verify Prometheus's TLS certificate (https only).
    type: bool
    default: true
  ca_path:
    description: A PEM file of the CA that signed Prometheus's certificate, instead of the system's CAs.
    type: path
  username:
    description: User for Prometheus's basic auth.
    type: str
  password:
    description: Password for Prometheus's basic auth. Sent in a header only, and masked in every message.
    type: str
"""

EXAMPLES = r"""
- name: Charts of the last hour into the bundle's staging directory
  inferops.vllm.prometheus_charts:
    url: http://10.0.0.5:9090
    dest: ./diagnostics/stage/charts
    targets:
      - host: gpu-node-01
        instances: [llama-70b]
  delegate_to: localhost
  register: charts

- name: Through TLS and basic auth
  inferops.vllm.prometheus_charts:
    url: https://prometheus.example:9090
    ca_path: files/monitoring-ca.crt
    username: oncall
    password: "{{ vault_prometheus_password }}"
    dest: ./diagnostics/stage/charts
    targets: [{host: gpu-node-01, instances: [llama-70b]}]
  delegate_to: localhost
"""

RETURN = r"""
charts:
  description: Each chart written (or, in check mode, that would be), its path relative to O(dest), and how many
    series and points it shows (0 points is a chart that says there was no data).
  returned: always
  type: list
  elements: dict
  sample: [{host: gpu-node-01, instance: llama-70b, chart: requests, path: gpu-node-01/vllm-llama-70b-requests.png,
            series: 2, points: 242}]
skipped:
  description: Each chart left out because Prometheus refused its query, and why.
  returned: always
  type: list
  elements: dict
error:
  description: Why charting stopped (Prometheus unreachable, credentials refused, not a Prometheus, out of
    time), with the URL asked; null when it did not.
  returned: always
  type: str
url:
  description: The Prometheus asked.
  returned: always
  type: str
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.inferops.vllm.plugins.module_utils import (_files, _incident_charts, _prometheus_query,
                                                                    _validate)


def _targets(raw):
    targets = []
    for index, target in enumerate(raw):
        field = "targets[%d]" % index
        host = target.get("host")
        if not isinstance(host, str) or not host:
            raise _validate.InputError("%s.host: give the host's inventory name" % field)
        instances = target.get("instances") or []
        if not isinstance(instances, list) or not all(isinstance(name, str) and name for name in instances):
            raise _validate.InputError("%s.instances: give a list of instance names" % field)
        targets.append(dict(host=host, instances=instances))
    return targets


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            dest=dict(type="path", required=True),
            targets=dict(type="list", elements="dict", required=True, options=dict(
                host=dict(type="str", required=True),
                instances=dict(type="list", elements="str", default=[]),
            )),
            end=dict(type="float"),
            range=dict(type="int", default=3600),
            step=dict(type="int", default=30),
            timeout=dict(type="float", default=10),
            total_timeout=dict(type="float", default=120),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        _validate.single_line("url", p["url"])
        _validate.single_line("dest", p["dest"])
        _validate.number("range", p["range"], 60, 31 * 86400)
        _validate.number("step", p["step"], 1, 3600)
        if p["range"] // p["step"] > 10000:
            raise _validate.InputError("step: %d s over a range of %d s is more than 10000 points a series; give "
                                       "a step of at least %d" % (p["step"], p["range"], p["range"] // 10000 + 1))
        _validate.number("timeout", p["timeout"], 0, 600, above_minimum=True)
        _validate.number("total_timeout", p["total_timeout"], 0, 3600, above_minimum=True)
        end = time.time() if p["end"] is None else _validate.number("end", p["end"], 0, 10 ** 11)
        targets = _targets(p["targets"])
        client = _prometheus_query.Prometheus(p["url"], p["username"], p["password"], p["validate_certs"],
                                              p["ca_path"], p["timeout"])
    except ValueError as exc:  # InputError, and the client's refusals, which name their option
        module.fail_json(msg=str(exc))
    try:
        charts, skipped, error = _incident_charts.make_charts(client, targets, p["dest"], end, p["range"],
                                                              p["step"], p["total_timeout"], module.check_mode)
    except _files.FileError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=bool(charts), charts=charts, skipped=skipped, error=error, url=client.url)


if __name__ == "__main__":
    main()
