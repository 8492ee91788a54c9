# Copyright: inferops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_serve's checks before anything changes: the vLLM release and its flags, parallelism, the model's files and
size, TLS files, the venv. Each refusal is a Refused whose message says what to change."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.inferops.vllm.plugins.module_utils import (
    _command, _vllm_flags, _vllm_planner, _vllm_spec,
)
from ansible_collections.inferops.vllm.plugins.module_utils._vllm_serve_plan import Refused

VERSION_CODE = "import importlib.metadata as m; print(m.version('vllm'))"
# In an image, vLLM may live in the system Python or in a virtualenv: ask the Python of the `vllm` command first.
VERSION_IN_IMAGE = ('code="$0"; for py in "$(sed -n "1s/^#!//p" "$(command -v vllm)" 2>/dev/null)" python3; do '
                    '[ -n "$py" ] && $py -c "$code" 2>/dev/null && exit 0; done; exit 1')


def release(p, run=_command.run):
    """The vLLM release the instance runs: the option, the image's tag, or asked of the installed vLLM."""
    if p["vllm_version"]:
        return _vllm_flags.Release(p["vllm_version"], "vllm_version")
    if p["backend"] == "venv":
        argv = [os.path.join(p["venv_path"], "bin", "python"), "-c", VERSION_CODE]
        source = "the vLLM in %s" % p["venv_path"]
    else:
        tagged = _vllm_flags.release_from_image(p["image"])
        if tagged:
            return _vllm_flags.Release(tagged, "the tag of %s" % p["image"])
        argv = ["docker", "run", "--rm", "--network", "none", "--pull", "never", "--entrypoint", "/bin/sh",
                p["image"], "-c", VERSION_IN_IMAGE, VERSION_CODE]
        source = "the vLLM in %s" % p["image"]
    try:
        rc, out, dummy = run(argv, timeout=60)
    except _command.CommandError:
        rc, out = 1, ""
    found = _vllm_flags.release_from_text(out) if rc == 0 else None
    return _vllm_flags.Release(found, source if found else "not read: %s could not be asked; set vllm_version" %
                               source)


def check(spec, warn):
    """Checks the options against the release and the host; returns the results they give (flag_catalog,
    served_model). The Docker SDK and the GPUs are checked by the caller, after these."""
    p = spec.p
    if not p["model"]:
        raise Refused("model is required unless state is absent")
    found = spec.release = release(p)
    if found.warning:
        warn(found.warning)
    result = {"flag_catalog": {"vllm_version": found.version, "source": found.source,
                               "catalog": found.catalog_version},
              "served_model": spec.served_model()}
    try:
        for warning in _vllm_flags.check_extra_args(p["extra_args"], found, strict=p["flag_check"] == "strict"):
            warn(warning)
        for warning in _vllm_flags.check_env(p["env"]):
            warn(warning)
        spec.check_parallelism()
        spec.check_model_files()
        spec.environment()
    except (_vllm_flags.FlagError, _vllm_spec.SpecError) as exc:
        raise Refused(str(exc))
    for option in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
        if p[option] and not os.path.isfile(p[option]):
            raise Refused("%s: %s does not exist on this host" % (option, p[option]))
    if bool(p["ssl_certfile"]) != bool(p["ssl_keyfile"]):
        raise Refused("ssl_certfile and ssl_keyfile go together")
    return result


def check_venv(p):
    """The virtualenv's vLLM is there (its service user is checked where the files are written for it)."""
    if not os.path.exists(os.path.join(p["venv_path"], "bin", "vllm")):
        raise Refused("venv_path: %s/bin/vllm does not exist; install vLLM into that virtualenv first" %
                      p["venv_path"])


def model_size(spec, warn):
    """(parameters, weight bytes) from model_params, a local model's files, or the model's name."""
    p = spec.p
    try:
        if p["model_params"] is not None:
            return _vllm_planner.parse_params(p["model_params"]), None
    except _vllm_planner.PlanError as exc:
        raise Refused(str(exc))
    if spec.model_is_local():
        params, weight_bytes = _vllm_planner.params_from_local_model(p["model"])
        if params or weight_bytes:
            return params, weight_bytes
    name = p["model"].rstrip("/").split("/")[-1]
    match = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name)
    if match:
        warn("memory plan: the model size (%sB parameters) was read from its name; set model_params to be exact" %
             match.group(1))
        return float(match.group(1)) * 1e9, None
    return None, None
