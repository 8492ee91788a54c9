# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One host's diagnostics for vLLM incidents, written as files with every secret masked."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re

from ansible_collections.inferops.vllm.plugins.module_utils import _command, _vllm_health
from ansible_collections.inferops.vllm.plugins.module_utils._redact import redact

XID = re.compile(r"NVRM: Xid")
DMESG_LINES = 300


def _run(argv, timeout):
    try:
        rc, out, err = _command.run(argv, timeout)
    except _command.CommandError as exc:
        return str(exc) + "\n"
    text = out + (("\n" + err) if err else "")
    return text if rc == 0 else "`%s` exited %d:\n%s" % (" ".join(argv), rc, text)


def _instance_commands(instance, log_lines):
    name, backend = instance["name"], instance.get("backend", "docker")
    container = "vllm-%s" % name
    if backend == "docker":
        return {"logs-%s.txt" % name: ["docker", "logs", "--tail", str(log_lines), container],
                "inspect-%s.json" % name: ["docker", "inspect", container]}
    if backend == "systemd":
        return {"logs-%s.txt" % name: ["journalctl", "-u", "vllm-%s.service" % name, "-n", str(log_lines),
                                       "--no-pager"],
                "inspect-%s.json" % name: ["docker", "inspect", container]}
    return {"logs-%s.txt" % name: ["tail", "-n", str(log_lines), "/var/log/vllm/%s.log" % name],
            "unit-%s.txt" % name: ["systemctl", "status", "--no-pager", "vllm-%s.service" % name]}


HOST_COMMANDS = {
    "nvidia-smi-q.txt": ["nvidia-smi", "-q"],
    "versions-driver.txt": ["nvidia-smi", "--query-gpu=index,name,driver_version", "--format=csv"],
    "versions-docker.txt": ["docker", "version"],
    "disk.txt": ["df", "-h"],
    "memory.txt": ["free", "-m"],
}


def mark_xid(text):
    lines = text.splitlines()[-DMESG_LINES:]
    return "\n".join((">>> XID >>> " + line) if XID.search(line) else line for line in lines) + "\n"


def collect(dest, instances, secrets, health_timeout=5, log_lines=500, timeout=30):
    """Writes the diagnostics into `dest`; returns (files written, verdict per instance, top diagnosis)."""
    files = {}
    statuses = {}
    diagnoses = []
    images = []
    for instance in instances:
        backend = instance.get("backend", "docker")
        scheme = "https" if instance.get("tls") else "http"
        config = _vllm_health.Config(
            "%s://127.0.0.1:%d" % (scheme, instance["port"]),
            model=instance.get("served_model_name") or instance.get("model"),
            api_key=(secrets or [None])[0], validate_certs=False, timeout=health_timeout,
            runtime="docker" if backend == "docker" else "systemd",
            name="vllm-%s" % instance["name"] + ("" if backend == "docker" else ".service"),
            log_file="/var/log/vllm/%s.log" % instance["name"] if backend == "venv" else None)
        report = _vllm_health.probe(config)
        statuses[instance["name"]] = report["status"]
        diagnoses += report["diagnosis"]
        files["health-%s.json" % instance["name"]] = json.dumps(report, indent=2, sort_keys=True, default=str)
        for name, argv in _instance_commands(instance, log_lines).items():
            files[name] = _run(argv, timeout)
        if backend != "venv":
            images.append("%s: %s" % (instance["name"], _run(["docker", "inspect", "-f", "{{.Config.Image}}",
                                                              "vllm-%s" % instance["name"]], timeout).strip()))
    for name, argv in HOST_COMMANDS.items():
        files[name] = _run(argv, timeout)
    files["dmesg-tail.txt"] = mark_xid(_run(["dmesg", "--ctime"], timeout))
    files["versions-vllm.txt"] = "\n".join(images) + "\n"
    if not os.path.isdir(dest):
        os.makedirs(dest, 0o700)
    for name, content in files.items():
        path = os.path.join(dest, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(redact(content, secrets))
    top = diagnoses[0] if diagnoses else {"code": "none", "message": "no known failure found", "runbook": "-"}
    return sorted(files), statuses, top
