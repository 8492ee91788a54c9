#!/usr/bin/env python
"""Writes the per-instance options of the vllm role (vllm_instances.options in roles/vllm/meta/argument_specs.yml)
from vllm_serve's DOCUMENTATION, so that the role's instance contract and the module's options never drift apart.

  tools/role_instance_spec.py            rewrite the block
  tools/role_instance_spec.py --check    exit 1 and name the options that drifted (used by the tests)

Every option of vllm_serve is per instance except ROLE_LEVEL, which the role fills from its own variables; ROLE_ONLY
are the keys the role reads itself and vllm_serve has none of. The spec restates no default: where an instance
leaves a key out, the module's default applies, or the role variable of ROLE_DEFAULTS, as the description says.
Only that block is rewritten; the rest of the file stays as it is.
"""

import ast
import json
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "plugins", "modules", "vllm_serve.py")
SPEC = os.path.join(ROOT, "roles", "vllm", "meta", "argument_specs.yml")

# Options of vllm_serve the role fills from its own variables (roles/vllm/tasks/instance.yml), the same for every
# instance of a host.
ROLE_LEVEL = ("pull", "hf_cache", "hf_token", "ssl_certfile", "ssl_keyfile", "enable_ssl_refresh", "stop_timeout",
              "shutdown_timeout", "service_user", "venv_path", "config_dir", "log_dir", "watchdog_hold",
              "watchdog_hold_dir")

# Per-instance keys the module has not: the role reads them itself. "after" places them in the list.
ROLE_ONLY = {
    "watchdog": {"after": "served_model_name", "type": "bool",
                 "description": "Whether the watchdog watches this instance (default: the role's vllm_watchdog_enabled)."},
    "gpu_count": {"after": "gpus", "type": "int",
                  "description": "GPUs to pick when gpus is not given (default: tensor_parallel_size x pipeline_parallel_size)."},
    "min_free_memory": {"after": "gpu_count", "type": "raw",
                        "description": "Free memory each picked GPU needs (MiB or a size such as 40GiB)."},
}

# Where the role, not the module, gives the default of a per-instance option.
ROLE_DEFAULTS = {
    "backend": "the role's vllm_backend",
    "image": "the role's vllm_image",
    "api_keys": "the role's vllm_api_keys",
    "vllm_version": "the role's vllm_version",
    "gpus": "picked by the role, see gpu_count and min_free_memory",
}

# Options the role requires though the module has a default or requires them only for some states: the role's
# tasks read them for every instance (the model for the health check, the port for the watchdog and the gateways).
ROLE_REQUIRED = ("model", "port")

# What the option's own text does not say: what the role's GPU ledger does with it.
NOTES = {
    "share_gpus": "The role's GPU ledger never gives one GPU to two instances unless both set it.",
}

FIRST = ("name", "model", "port")
KEYS = ("type", "elements", "choices", "required")
INDENT = 10  # of an option's name under vllm_instances.options
WIDTH = 120


def module_options():
    """The options of vllm_serve's DOCUMENTATION, in their order, read without importing the module."""
    with open(MODULE) as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DOCUMENTATION" for t in node.targets):
            return yaml.safe_load(node.value.value)["options"]
    raise SystemExit("no DOCUMENTATION in %s" % MODULE)


def _default(value):
    return value if isinstance(value, str) else json.dumps(value)


def _describe(name, option):
    """The first paragraph of the module's description, then where the default comes from."""
    text = option.get("description", "")
    text = " ".join((text[0] if isinstance(text, list) and text else text or "").split())
    if name in ROLE_REQUIRED:
        suffix = None
    elif name in ROLE_DEFAULTS:
        suffix = ROLE_DEFAULTS[name]
    elif option.get("default") is not None:
        suffix = _default(option["default"])
    else:
        suffix = None
    if suffix is not None:
        text = text[:-1] + " (default: %s)." % suffix if text.endswith(".") else text + " (default: %s)" % suffix
    if name in NOTES:
        text += " " + NOTES[name]
    return text


def instance_options():
    """The options vllm_instances items take, as the spec should hold them (a dict, in order)."""
    module = module_options()
    unknown = [name for name in ROLE_LEVEL if name not in module]
    if unknown:
        raise SystemExit("ROLE_LEVEL names options vllm_serve does not have: %s" % ", ".join(unknown))
    unknown = [name for name in ROLE_REQUIRED if name not in module]
    if unknown:
        raise SystemExit("ROLE_REQUIRED names options vllm_serve does not have: %s" % ", ".join(unknown))
    clash = [name for name in ROLE_ONLY if name in module]
    if clash:
        raise SystemExit("ROLE_ONLY names options vllm_serve has: %s" % ", ".join(clash))
    built = {}
    for name, option in module.items():
        if name in ROLE_LEVEL:
            continue
        entry = {"description": _describe(name, option)}
        entry.update((key, option[key]) for key in KEYS if option.get(key) not in (None, False))
        if name in ROLE_REQUIRED:
            entry["required"] = True
        built[name] = entry
    order = [n for n in FIRST if n in built] + [n for n in built if n not in FIRST]
    for name, extra in ROLE_ONLY.items():
        order.insert(order.index(extra["after"]) + 1, name)
        built[name] = {key: value for key, value in extra.items() if key != "after"}
    return {name: built[name] for name in order}


def _scalar(value):
    """A scalar as YAML reads it back: plain where that is safe, else double-quoted (JSON is valid YAML)."""
    if isinstance(value, str):
        text = value
        safe = not any(c in text for c in ",[]{}") and text.strip() == text
        if safe:
            try:
                safe = yaml.safe_load(text) == value
            except yaml.YAMLError:
                safe = False
        return text if safe else json.dumps(value)
    return json.dumps(value)


def _wrap(words, first, rest):
    lines = [first + words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > WIDTH:
            lines.append(rest + word)
        else:
            lines[-1] += " " + word
    return lines


def _description(text, pad):
    one = "%sdescription: %s" % (pad, _scalar(text))
    if len(one) <= WIDTH:
        return [one]
    return ["%sdescription:" % pad] + _wrap(_scalar(text).split(" "), pad + "  - ", pad + "    ")


def render(options):
    """The block's lines, in the file's style."""
    lines = []
    for name, option in options.items():
        pad = " " * (INDENT + 2)
        lines.append("%s%s:" % (" " * INDENT, name))
        lines += _description(option["description"], pad)
        for key in KEYS:
            if key not in option:
                continue
            value = option[key]
            shown = "[%s]" % ", ".join(_scalar(v) for v in value) if isinstance(value, list) else _scalar(value)
            lines.append("%s%s: %s" % (pad, key, shown))
    text = "\n".join(lines) + "\n"
    loaded = yaml.safe_load("\n".join(line[INDENT:] for line in lines))
    for option in loaded.values():
        if isinstance(option["description"], list):
            option["description"] = " ".join(option["description"])
    if loaded != options or list(loaded) != list(options):
        raise SystemExit("the rendered block does not read back as written (a bug of this tool)")
    return text


def locate(lines):
    """The first and past-the-last line of vllm_instances.options' content."""
    start = lines.index("      vllm_instances:\n")
    for index in range(start + 1, len(lines)):
        if lines[index] == "        options:\n":
            first = index + 1
            break
        if lines[index].strip() and len(lines[index]) - len(lines[index].lstrip()) <= 6:
            raise SystemExit("vllm_instances has no options block in %s" % SPEC)
    end = first
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > 8):
        end += 1
    return first, end


def drift(current, wanted):
    """What differs, by option name."""
    words = []
    added = [n for n in wanted if n not in current]
    lost = [n for n in current if n not in wanted]
    changed = [n for n in wanted if n in current and current[n] != wanted[n]]
    if added:
        words.append("missing %s" % ", ".join(added))
    if lost:
        words.append("not of vllm_serve %s" % ", ".join(lost))
    if changed:
        words.append("differing %s" % ", ".join(changed))
    if not words and list(current) != list(wanted):
        words.append("order")
    return "; ".join(words) or "layout"


def main(argv):
    with open(SPEC) as handle:
        lines = handle.readlines()
    first, end = locate(lines)
    wanted = instance_options()
    block = render(wanted)
    if "".join(lines[first:end]) == block:
        return 0
    if "--check" in argv:
        current = yaml.safe_load("".join(line[INDENT:] for line in lines[first:end])) or {}
        print("vllm_instances options of roles/vllm/meta/argument_specs.yml out of date (%s): run tools/role_instance_spec.py"
              % drift(current, wanted))
        return 1
    with open(SPEC, "w") as handle:
        handle.write("".join(lines[:first]) + block + "".join(lines[end:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
