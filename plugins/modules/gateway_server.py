#!/usr/bin/python
# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: gateway_server
short_description: Drain a vLLM instance at the gateway before it stops, and put it back once it serves
version_added: 0.3.0
author: inferops maintainers (@inferops)
description:
  - Sets one server of the gateway's HAProxy (role C(inferops.vllm.gateway)) to C(drain) (no new requests, those in
    flight go on), C(ready) (back in rotation) or C(maint) (out, checks stopped), through HAProxy's admin socket,
    without a reload.
  - With O(wait_idle), a drain waits until the server has no session in flight (a stream runs to its end) or the
    time is up, and says how many were left.
  - With O(wait_up), putting a server back waits until the gateway's health checks count it up, so that it takes
    requests again before the next instance of a rolling restart is drained. It fails when time runs out.
  - The gateway names its servers C(<inventory host>-<instance>) in the backend C(vllm).
  - A state set this way lasts until HAProxy restarts or reloads; the gateway role's reloads happen when its
    configuration changes.
extends_documentation_fragment:
  - inferops.vllm.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  server:
    description: The server's name in HAProxy (C(<inventory host>-<instance>) for the gateway role's backends).
    type: str
    required: true
  state:
    description: C(drain), C(ready) or C(maint).
    type: str
    required: true
    choices: [drain, ready, maint]
  backend:
    description: The HAProxy backend.
    type: str
    default: vllm
  socket:
    description: HAProxy's admin socket.
    type: path
    default: /run/haproxy/admin.sock
  wait_idle:
    description: With O(state=drain), seconds to wait for the server's sessions in flight to end; 0 does not wait.
    type: int
    default: 0
  wait_up:
    description:
      - With O(state=ready), seconds to wait until the server takes requests again (HAProxy's checks count it C(UP));
        0 does not wait.
      - A restarted instance is C(DOWN) at the gateway until C(gateway_check_rise) checks in a row pass, one every
        C(gateway_check_interval). Until then, draining another instance of the same backend would leave no server to
        take the traffic.
      - When time runs out the module fails, and says the server's status.
    type: int
    default: 0
    version_added: 0.4.0
  missing_ok:
    description: A backend without this server is not an error (a gateway that does not front this instance).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Drain llama-70b of this host at the gateway, waiting up to 60 s for its streams
  inferops.vllm.gateway_server:
    server: "{{ inventory_hostname }}-llama-70b"
    state: drain
    wait_idle: 60
  delegate_to: gateway-01.example.internal

- name: Put it back, and wait up to 60 s until the gateway's checks count it up
  inferops.vllm.gateway_server:
    server: "{{ inventory_hostname }}-llama-70b"
    state: ready
    wait_up: 60
  delegate_to: gateway-01.example.internal
"""

RETURN = r"""
before:
  description: The server's status as HAProxy reported it before (C(UP), C(DRAIN), C(MAINT), C(DOWN)...); null when the backend has no such server.
  returned: always
  type: str
sessions_left:
  description: Sessions still in flight when the drain stopped waiting (0 when idle).
  returned: always
  type: int
after:
  description:
    - The server's status when the module ended (C(UP), C(DOWN), C(DRAIN)...); null when the backend has no such
      server, or in check mode.
  returned: always
  type: str
  version_added: 0.4.0
waited:
  description: Seconds spent waiting, for the sessions to end (O(wait_idle)) or for the server to be up (O(wait_up)).
  returned: always
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.inferops.vllm.plugins.module_utils import _haproxy_admin


def main():
    module = AnsibleModule(
        argument_spec=dict(
            server=dict(type="str", required=True),
            state=dict(type="str", required=True, choices=list(_haproxy_admin.STATES)),
            backend=dict(type="str", default="vllm"),
            socket=dict(type="path", default="/run/haproxy/admin.sock"),
            wait_idle=dict(type="int", default=0),
            wait_up=dict(type="int", default=0),
            missing_ok=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    report = {"changed": False, "before": None, "after": None, "sessions_left": 0, "waited": 0.0}
    try:
        _haproxy_admin.check_name("server", p["server"])
        _haproxy_admin.check_name("backend", p["backend"])
        for option in ("wait_idle", "wait_up"):
            if p[option] < 0:
                raise _haproxy_admin.HaproxyAdminError("%s is a number of seconds, 0 or more" % option)
        current = _haproxy_admin.servers(p["socket"], p["backend"]).get(p["server"])
        if current is None:
            if p["missing_ok"]:
                module.exit_json(**report)
            raise _haproxy_admin.HaproxyAdminError(
                "backend %s of the HAProxy at %s has no server %s" % (p["backend"], p["socket"], p["server"]))
        report["before"] = current["status"]
        # From the admin bits, not the status: a drained server whose checks fail (a restarting instance) is DOWN.
        admin = _haproxy_admin.admin_states(p["socket"], p["backend"]).get(p["server"], 0)
        report["changed"] = _haproxy_admin.needs_change(admin, p["state"])
        if module.check_mode:
            module.exit_json(**report)
        if report["changed"]:
            _haproxy_admin.set_state(p["socket"], p["backend"], p["server"], p["state"])
        started = time.monotonic()
        if p["state"] == "drain" and p["wait_idle"] > 0:
            report["sessions_left"] = _haproxy_admin.wait_idle(p["socket"], p["backend"], p["server"], p["wait_idle"])
        if p["state"] == "ready" and p["wait_up"] > 0:
            report["after"] = _haproxy_admin.wait_up(p["socket"], p["backend"], p["server"], p["wait_up"])
        report["waited"] = round(time.monotonic() - started, 2)
        if report["after"] is None:
            report["after"] = _haproxy_admin.servers(p["socket"], p["backend"]).get(p["server"], {}).get("status")
        if p["state"] == "ready" and p["wait_up"] > 0 and not _haproxy_admin.counts_as_up(report["after"] or ""):
            raise _haproxy_admin.HaproxyAdminError(
                "server %s of backend %s is back in rotation at the HAProxy at %s, but its health checks did not "
                "count it up within %d s (wait_up): its status is %s. Until they pass it takes no request; check "
                "that the gateway reaches the instance and that its /health answers 200 there" % (
                    p["server"], p["backend"], p["socket"], p["wait_up"], report["after"]))
    except _haproxy_admin.HaproxyAdminError as exc:
        module.fail_json(msg=str(exc), **report)
    module.exit_json(**report)


if __name__ == "__main__":
    main()
