"""The `vllm` command line as vLLM 0.33 reads it: the top-level parser (prog `vllm`, so errors read
`vllm: error: ...`), then what vLLM's FlexibleArgumentParser does before argparse sees the arguments (--model moved
to the front, --config pulled in, underscores in flag names, -O3, dotted JSON flags, duplicate warnings)."""

import argparse
import json
import re
import sys

from . import yamlish
from .flags import VERSION, add_serve_arguments, catalog, defaults

COMMANDS = ("chat", "complete", "serve", "launch", "bench", "collect-env", "download-kernels", "preload",
            "run-batch", "snapshot")
SENSITIVE = ("api_key", "hf_token", "watermark_config")


class ArgsError(Exception):
    """A failure while reading the arguments that vLLM raises (a traceback and exit 1), not an argparse error."""

    def __init__(self, lines):
        super().__init__(lines[-1])
        self.lines = lines


def build_parser():
    top = argparse.ArgumentParser(prog="vllm", description="vLLM CLI")
    top.add_argument("-v", "--version", action="version", version=VERSION)
    sub = top.add_subparsers(required=False, dest="subparser")
    serve = None
    for name in COMMANDS:
        if name == "serve":
            serve = sub.add_parser(name, usage="vllm serve [model_tag] [options]",
                                   description="Launch a local OpenAI-compatible API server to serve LLM "
                                   "completions via HTTP.")
            add_serve_arguments(serve, catalog())
        else:
            sub.add_parser(name)
    return top, serve


def parse(argv):
    """The Namespace of `vllm serve ...`, with `non_default` (what vLLM logs as non-default args) and `duplicates`."""
    top, serve = build_parser()
    argv = list(argv)
    if argv[:1] == ["serve"]:
        argv = ["serve"] + move_model_first(argv[1:])
        if "--config" in argv:
            argv = pull_config(argv)
    argv, duplicates = normalize(argv)
    if duplicates:
        # Printed while parsing, before vLLM's log format is set up: a bare line on stderr.
        sys.stderr.write("Found duplicate keys %s\n" % ", ".join(sorted(duplicates)))
        sys.stderr.flush()
    args = top.parse_args(argv)
    if args.subparser is None:
        top.print_help()
        sys.exit(0)
    if args.subparser != "serve":
        sys.stderr.write("vllm emulator: only `vllm serve` is emulated\n")
        sys.exit(2)
    if args.model_tag is not None:
        args.model = args.model_tag
    args.non_default = non_default(args, defaults(serve))
    return args


def move_model_first(rest):
    """`vllm serve --model M ...` is read as `vllm serve M ...`; --served-model-name without a model is an error."""
    for i, arg in enumerate(rest):
        if re.match(r"^--model(=.+|$)", arg):
            if arg == "--model":
                model, after = (rest[i + 1] if i + 1 < len(rest) else ""), rest[i + 2:]
            else:
                model, after = arg[len("--model="):], rest[i + 1:]
            return [model] + rest[:i] + after
    if rest and rest[0].startswith("-") and not any(re.match(r"^--config(=.+|$)", a) for a in rest) and \
            any(re.match(r"^--served[-_]model[-_]name(=.+|$)", a) for a in rest):
        raise ArgsError(["ValueError: `model` should be provided as the first positional argument when using "
                         "`vllm serve`. i.e. `vllm serve <model> --<arg> <value>`."])
    return rest


def pull_config(argv):
    """--config FILE: the file's settings go between the model and the other flags, so the command line wins."""
    if argv.count("--config") > 1:
        raise ArgsError(["AssertionError: More than one config file specified!"])
    at = argv.index("--config")
    if at == len(argv) - 1:
        raise ArgsError(["ValueError: No config file specified! Please check your command-line arguments."])
    from_file = config_args(argv[at + 1])
    rest = argv[:at] + argv[at + 2:]
    if len(rest) > 1 and not rest[1].startswith("-"):
        return rest[:2] + from_file + rest[2:]
    if "--model" not in from_file:
        raise ArgsError(["ValueError: No model specified! Please specify model either as a positional argument or "
                         "in a config file."])
    return rest[:1] + from_file + rest[1:]


def config_args(path):
    extension = path.split(".")[-1]
    if extension not in ("yaml", "yml"):
        raise ArgsError(["ValueError: Config file must be of a yaml/yml type. %s supplied" % extension])
    try:
        with open(path) as handle:
            config = yamlish.load(handle.read())
    except OSError as exc:
        raise ArgsError(["%s: [Errno %d] %s: '%s'" % (type(exc).__name__, exc.errno, exc.strerror, path)])
    out = []
    for key, value in (config or {}).items():
        if isinstance(value, bool):
            if value:
                out.append("--" + key)
            elif "no-" + key in catalog()["flags"]:
                out.append("--no-" + key)
        elif isinstance(value, list):
            if value:
                out += ["--" + key] + [str(item) for item in value]
        elif isinstance(value, dict):
            out += ["--" + key, json.dumps(value)]
        else:
            out += ["--" + key, str(value)]
    return out


def normalize(argv):
    """Underscores to dashes in flag names, -O3 to --optimization-level 3, and dotted flags (--x.y 1) merged into
    one JSON value. Returns the arguments and the flags given more than once."""
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            key, sep, value = arg.partition("=")
            head, dot, tail = key[2:].partition(".")
            out.append("--" + head.replace("_", "-") + dot + tail + sep + value)
        elif arg.startswith("-O") and arg != "-O":
            out += ["--optimization-level", arg[3:] if arg[2] == "=" else arg[2:]]
        elif arg == "-O" and i + 1 < len(argv) and argv[i + 1] in ("0", "1", "2", "3"):
            out.append("--optimization-level")
        else:
            out.append(arg)
    seen, duplicates, merged, skip, kept = set(), set(), {}, set(), []
    for i, arg in enumerate(out):
        if i in skip:
            continue
        if arg.startswith("--") and "." not in arg.split("=", 1)[0]:
            name = arg.split("=", 1)[0]
            if name in seen:
                duplicates.add(name)
            seen.add(name)
        elif arg.startswith("-") and "." in arg.split("=", 1)[0]:
            name, sep, text = arg.partition("=")
            if not sep:
                text = out[i + 1] if i + 1 < len(out) else ""
                skip.add(i + 1)
            if name.endswith("+"):
                name, text = name[:-1], json.dumps(text.split(","))
            try:
                value = json.loads(text)
            except ValueError:
                value = text
            key, *path = name.split(".")
            target = merged.setdefault(key, {})
            for part in path[:-1]:
                target = target.setdefault(part, {})
            if path[-1] in target:
                duplicates.add("%s.%s" % (key, ".".join(path)))
            target[path[-1]] = value
            continue
        kept.append(arg)
    for key, value in merged.items():
        kept += [key, json.dumps(value)]
    return kept, duplicates


def non_default(args, parser_defaults):
    """vLLM's `non-default args` dict: the model first, then each setting that differs from its default, secrets
    replaced by '***'."""
    found = {"model_tag": args.model_tag}
    for key, default in parser_defaults.items():
        if key in ("help", "model_tag", "model") or not hasattr(args, key):
            continue
        value = getattr(args, key)
        if value != default:
            found[key] = "***" if key in SENSITIVE else value
    if args.model_tag is not None:
        found["model"] = args.model_tag
    return found
