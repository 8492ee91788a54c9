# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The systemd and venv backends of vllm_serve: the unit file of one instance.

- systemd: ExecStart runs `docker run`, with --gpus quoted for systemd's parser (the argv element keeps its
  double quotes, as docker's CSV reader needs) and the instance's stop_timeout as the container's own
  --stop-timeout. Secrets are mounted files, never -e values.
- venv: ExecStart runs the `vllm` of a virtualenv with CUDA_VISIBLE_DEVICES (the seeds' style), as the service
  user, logging to <log_dir>/<name>.log.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import posixpath

from ansible_collections.inferops.vllm.plugins.module_utils import _docker_gpus, _systemd


def docker_run_argv(spec, image, health_start_period, docker_bin="/usr/bin/docker"):
    p = spec.p
    # --stop-timeout: the container's own, so that any `docker stop` or `docker restart` that is not the unit's
    # ExecStop, and the Docker daemon's shutdown, wait as long as the unit's stop instead of Docker's 10 s.
    argv = [docker_bin, "run", "--rm", "--name", spec.container_name, "--init",
            "--stop-timeout", "%d" % p["stop_timeout"], "--gpus", _docker_gpus.gpus_argv(spec.gpus)]
    argv += ["--ipc", "host"] if p["ipc_host"] else ["--shm-size", "%dm" % p["shm_size_mib"]]
    argv += ["-p", "%s:%d:%d" % (p["publish_address"], p["port"], p["port"])]
    for host, inside, mode in spec.container_mounts():
        argv += ["-v", "%s:%s:%s" % (host, inside, mode)]
    argv += ["--env-file", spec.env_file]
    argv += ["--health-cmd", "python3 -c " + _shell_single(spec.healthcheck_code()),
             "--health-interval", "30s", "--health-timeout", "10s", "--health-retries", "5",
             "--health-start-period", "%ds" % health_start_period,
             "--log-driver", "json-file", "--log-opt", "max-size=%s" % p["log_max_size"], "--log-opt", "max-file=5"]
    return argv + [image] + spec.serve_args()


def _shell_single(text):
    return "'%s'" % text.replace("'", "'\"'\"'")


def _systemd_env_value(value):
    """A value as systemd's EnvironmentFile= reads it back verbatim: double-quoted, with the characters that are
    special inside double quotes escaped. Unquoted, a '"' opened a quote that swallowed the next lines and a
    trailing '\\' joined the next line, so one value could hide CUDA_VISIBLE_DEVICES."""
    escaped = "".join("\\" + char if char in '"\\`$' else char for char in str(value))
    return '"%s"' % escaped


def env_file_content(environment, reader="docker"):
    """The instance's env file, as its reader parses it: docker's --env-file takes each value literally (quotes
    included); systemd's EnvironmentFile= (the venv backend) interprets quotes and backslashes."""
    lines = ["# Managed by inferops.vllm.vllm_serve. Non-secret environment only: secrets are files."]
    for key in sorted(environment):
        value = _systemd_env_value(environment[key]) if reader == "systemd" else environment[key]
        lines.append("%s=%s" % (key, value))
    return "\n".join(lines) + "\n"


def unit_content(spec, image, health_start_period, config_hash):
    p = spec.p
    description = "vLLM instance %s (%s)" % (spec.name, p["model"])
    lines = ["# Managed by inferops.vllm.vllm_serve; edit the task, not this file. config-hash: %s" % config_hash,
             "[Unit]", "Description=%s" % description.replace("%", "%%"),
             "Wants=network-online.target", "StartLimitIntervalSec=0"]
    if spec.backend == "systemd":
        lines += ["After=network-online.target docker.service", "Requires=docker.service", "", "[Service]",
                  "Type=simple",
                  "ExecStartPre=-/usr/bin/docker rm -f %s" % spec.container_name,
                  "ExecStart=" + _systemd.command_line(docker_run_argv(spec, image, health_start_period)),
                  "ExecStop=/usr/bin/docker stop -t %d %s" % (p["stop_timeout"], spec.container_name)]
    else:
        venv_vllm = posixpath.join(p["venv_path"], "bin", "vllm")
        lines += ["After=network-online.target", "", "[Service]", "Type=simple",
                  "User=%s" % p["service_user"],
                  "EnvironmentFile=%s" % spec.env_file,
                  "ExecStart=" + _systemd.command_line([venv_vllm, "serve"] + spec.serve_args()),
                  "StandardOutput=append:%s" % spec.log_file,
                  "StandardError=inherit",
                  "KillMode=control-group"]
    lines += ["Restart=always", "RestartSec=10",
              "TimeoutStartSec=%d" % max(90, health_start_period),
              "TimeoutStopSec=%d" % (p["stop_timeout"] + 30),
              "", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)
