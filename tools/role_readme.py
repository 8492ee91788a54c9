#!/usr/bin/env python
"""Writes roles/<role>/README.md from the role's meta/argument_specs.yml, so the two never disagree.

  tools/role_readme.py            rewrite every role's README
  tools/role_readme.py --check    exit 1 and name the roles whose README is out of date (used by the tests)
"""

import json
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLES = os.path.join(ROOT, "roles")
MARK = "<!-- Generated from meta/argument_specs.yml by tools/role_readme.py: edit the spec, not this file. -->"


def _cell(value):
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _description(spec):
    text = spec.get("description", "")
    return " ".join(text) if isinstance(text, list) else text


def render(role):
    with open(os.path.join(ROLES, role, "meta", "argument_specs.yml")) as handle:
        specs = yaml.safe_load(handle)["argument_specs"]
    lines = ["# inferops.vllm.%s" % role, "", MARK, ""]
    for entry, spec in specs.items():
        title = "" if entry == "main" else " (`tasks_from: %s`)" % entry
        lines += ["%s%s" % (spec.get("short_description", ""), title), ""]
        desc = spec.get("description", [])
        for paragraph in desc if isinstance(desc, list) else [desc]:
            lines += [paragraph, ""]
        options = spec.get("options", {})
        if not options:
            continue
        lines += ["| Variable | Type | Default | Description |", "| --- | --- | --- | --- |"]
        for name, option in options.items():
            kind = option.get("type", "str")
            if kind == "list" and option.get("elements"):
                kind = "list of %s" % option["elements"]
            default = option.get("default")
            shown = "*required*" if option.get("required") else ("`%s`" % _cell(default) if default is not None else "")
            if option.get("choices"):
                kind += " (%s)" % ", ".join(str(c) for c in option["choices"])
            lines.append("| `%s` | %s | %s | %s |" % (name, kind, shown, _cell(_description(option))))
        lines.append("")
    lines += ["Example:", "", "```yaml", "- hosts: gpu_hosts", "  roles:", "    - role: inferops.vllm.%s" % role,
              "```", ""]
    return "\n".join(lines)


def main(argv):
    check = "--check" in argv
    stale = []
    for role in sorted(os.listdir(ROLES)):
        if not os.path.exists(os.path.join(ROLES, role, "meta", "argument_specs.yml")):
            continue
        path = os.path.join(ROLES, role, "README.md")
        wanted = render(role)
        current = open(path).read() if os.path.exists(path) else None
        if current != wanted:
            stale.append(role)
            if not check:
                with open(path, "w") as handle:
                    handle.write(wanted)
    if check and stale:
        print("README out of date for: %s (run tools/role_readme.py)" % ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
