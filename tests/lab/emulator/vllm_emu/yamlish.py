"""The YAML of `vllm serve --config` files without PyYAML (the emulator's image has only Python's standard library):
JSON (which is YAML), or flat block YAML: `key: scalar`, `key: [a, b]`, and `key:` followed by `- item` lines."""

import json
import re


def load(text):
    try:
        return json.loads(text)
    except ValueError:
        pass
    config, current = {}, None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#") or line.strip() == "---":
            continue
        item = re.match(r"^\s*-\s*(.*)$", line)
        if item and current is not None:
            config[current].append(scalar(item.group(1)))
            continue
        key, sep, value = line.partition(":")
        if not sep or line[0].isspace():
            raise ValueError("the emulator reads flat YAML only: %r" % raw)
        key, value = key.strip().strip("'\""), value.strip()
        if value:
            config[key], current = scalar(value), None
        else:
            config[key], current = [], key
    return config


def scalar(text):
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [scalar(part) for part in text[1:-1].split(",") if part.strip()]
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("null", "~", ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
