"""The `vllm serve` parser of vLLM 0.33, built from the flag catalog that tools/vllm_flag_catalog.py dumps from
vLLM's own parser. The image build copies plugins/module_utils/_vllm_flag_catalog.py here as flag_catalog.py, so
the emulator accepts exactly the flags vLLM does and nothing is typed by hand but the types of the flags it acts
on."""

import argparse
import re
import sys

VERSION = "0.33.0"


def human_readable_int(value):
    """vLLM's parsing of sizes such as 32k (decimal) or 32K (binary)."""
    value = value.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if match:
        number, suffix = match.groups()
        if suffix in "kmgt":
            return int(float(number) * 10 ** (3 * "kmgt".index(suffix) + 3))
        try:
            return int(number) * 2 ** (10 * "KMGT".index(suffix) + 10)
        except ValueError:
            raise argparse.ArgumentTypeError(
                "Decimals are not allowed with binary suffixes like %s. Did you mean to use %s%s instead?" % (
                    suffix, number, suffix.lower()))
    return int(value)


def human_readable_int_or_auto(value):
    if value.strip() == "-1" or value.strip().lower() == "auto":
        return -1
    return human_readable_int(value)


human_readable_int.__name__ = "human_readable_int"
human_readable_int_or_auto.__name__ = "human_readable_int_or_auto"

# The flags the emulator acts on, typed as vLLM 0.33's parser types them (read from that parser: type, default,
# choices). Every other flag of the catalog is accepted and kept as text.
TYPED = {
    "port": {"type": int, "default": 8000},
    "tensor-parallel-size": {"type": int, "default": 1},
    "pipeline-parallel-size": {"type": int, "default": 1},
    "data-parallel-size": {"type": int, "default": 1},
    "gpu-memory-utilization": {"type": float, "default": 0.92},
    "max-model-len": {"type": human_readable_int_or_auto},
    "max-num-seqs": {"type": int},
    "max-num-batched-tokens": {"type": human_readable_int},
    "dtype": {"default": "auto", "choices": ["auto", "bfloat16", "float", "float16", "float32", "half"]},
    "kv-cache-dtype": {"default": "auto"},
    "ssl-cert-reqs": {"type": int, "default": 0},
    "shutdown-timeout": {"type": int, "default": 0},
    "seed": {"type": int, "default": 0},
    "uvicorn-log-level": {"default": "info", "choices": ["critical", "debug", "error", "info", "trace", "warning"]},
}
# Other spellings of a typed flag, which share its destination in vLLM's parser.
ALIASES = {"device-memory-utilization": "gpu-memory-utilization"}
# Switches whose default is not "off" but "decided later" (None), as in vLLM.
UNDECIDED = {"enable-prefix-caching", "enable-chunked-prefill"}


class Toggle(argparse.Action):
    """A switch and its negations (--no-x, and --disable-x for --enable-x), like vLLM's EnableDisableAction."""

    def __init__(self, option_strings, dest, negative=(), **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.negative = set(negative)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string not in self.negative)


def catalog():
    try:
        from . import flag_catalog
    except ImportError:
        sys.stderr.write("vllm emulator: flag_catalog.py is missing; the image build copies it from "
                         "plugins/module_utils/_vllm_flag_catalog.py\n")
        sys.exit(1)
    return flag_catalog.RELEASES[VERSION]


def dest(flag):
    return ALIASES.get(flag, flag).replace("-", "_")


def inverses(release):
    """{negative flag: positive flag}: the catalog's negations, plus --disable-x for --enable-x (and back) where the
    parser has both and the other one is not a switch of its own."""
    flags, negations = release["flags"], release["negations"]
    found = dict((negative, positive) for positive, negative in negations.items())
    for positive in negations:
        for prefix, other in (("enable-", "disable-"), ("disable-", "enable-")):
            twin = other + positive[len(prefix):]
            if positive.startswith(prefix) and twin in flags and twin not in negations:
                found[twin] = positive
    return found


def add_serve_arguments(parser, release):
    parser.add_argument("model_tag", nargs="?", default=None)
    flags, short = release["flags"], release["short"]
    shorts = {}
    for letter, flag in short.items():
        shorts.setdefault(flag, []).append("-" + letter)
    negative = inverses(release)
    positives = {}
    for flag, positive in negative.items():
        positives.setdefault(positive, []).append("--" + flag)
    done = set(negative) | set(ALIASES)
    for flag in sorted(flags):
        if flag in done:
            continue
        names = ["--" + flag] + sorted(shorts.get(flag, []))
        names += ["--" + alias for alias, target in ALIASES.items() if target == flag and alias in flags]
        kind = flags[flag]
        if flag in positives:
            default = None if flag in UNDECIDED else False
            parser.add_argument(*(names + positives[flag]), dest=dest(flag), action=Toggle,
                                negative=positives[flag], default=default)
        elif kind == "switch":
            parser.add_argument(*names, dest=dest(flag), action="store_true")
        else:
            nargs = {"values": "+", "optional": "?"}.get(kind)
            options = dict(TYPED.get(flag, {}))
            options.setdefault("default", None)
            parser.add_argument(*names, dest=dest(flag), nargs=nargs, **options)


def defaults(parser):
    return dict((action.dest, action.default) for action in parser._actions)
