"""Prints, as JSON, every option of `vllm serve` as vLLM's own parser defines it.

    python vllm_parser_dump.py [WHEEL] [--stub MODULE,...]

Runs with the Python of a vLLM install (tools/vllm_flag_catalog.py runs it in the lab's real-vLLM image). With
WHEEL, that release's `vllm` package is unpacked and imported instead of the installed one; the installed one's
dependencies serve it. A third-party module the release imports that is not installed is replaced by an empty
stand-in (listed in the output under "stubbed"; building the parser does not use them): the script starts itself
again with that module in --stub, since a half-imported vLLM cannot be imported twice in one process.
"""

import importlib
import importlib.machinery
import json
import os
import sys
import tempfile
import types
import zipfile


class _Anything(object):
    """Stands for anything a missing module exports: callable, subclassable, indexable, an attribute of itself."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __getitem__(self, key):
        return _Anything()

    def __iter__(self):
        return iter(())

    def __bool__(self):
        return False

    def __mro_entries__(self, bases):
        return (_Anything,)


class _StubModule(types.ModuleType):
    __path__ = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


class _StubFinder(object):
    """Finds the stubbed modules (and their submodules) and nothing else."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def unpack(wheel):
    target = tempfile.mkdtemp(prefix="vllm-wheel-")
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith("vllm/") and not m.endswith(".so")]
        archive.extractall(target, members)
    sys.path.insert(0, target)


def import_serve(wheel, stubbed):
    """Imports vLLM's `serve` command; a missing third-party module restarts this script with it stubbed."""
    sys.meta_path.append(_StubFinder(stubbed))
    try:
        return importlib.import_module("vllm.entrypoints.cli.serve")
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not missing or missing == "vllm" or missing in stubbed or len(stubbed) >= 20:
            raise
        argv = [sys.executable, os.path.abspath(__file__)] + ([wheel] if wheel else [])
        os.execv(sys.executable, argv + ["--stub", ",".join(stubbed + [missing])])


def kind(action):
    if action.nargs == 0:
        return "switch"
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        return "values"
    if action.nargs == "?":
        return "optional"
    return "value"


def dump(parser):
    options = []
    for action in parser._actions:
        names = [o for o in action.option_strings if o not in ("-h", "--help")]
        if not names:
            continue
        negative = set(getattr(action, "negative_option_strings", ()) or ())
        negative |= {o for o in names if o.startswith("--no-")}
        options.append({
            "dest": action.dest,
            "kind": kind(action),
            "long": sorted(o[2:] for o in names if o.startswith("--") and o not in negative),
            "negative": sorted(o[2:] for o in negative if o.startswith("--")),
            "short": sorted(o[1:] for o in names if not o.startswith("--")),
            "deprecated": bool(getattr(action, "deprecated", False)) or type(action).__name__.startswith("Deprecated"),
        })
    return sorted(options, key=lambda o: o["dest"])


def main(argv):
    # A CUDA build of vLLM refuses to build its configuration without a GPU; the flags are the same on CPU.
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    stubbed = []
    if "--stub" in argv:
        at = argv.index("--stub")
        stubbed = [m for m in argv[at + 1].split(",") if m]
        argv = argv[:at] + argv[at + 2:]
    wheel = argv[0] if argv else None
    if wheel:
        unpack(wheel)
    serve = import_serve(wheel, stubbed)
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    import vllm

    top = FlexibleArgumentParser(prog="vllm")
    subparsers = top.add_subparsers()
    command = [c for c in serve.cmd_init() if c.name == "serve"][0]
    parser = command.subparser_init(subparsers)
    version = getattr(vllm, "__version__", None)
    json.dump({"version": version, "stubbed": sorted(stubbed), "options": dump(parser)}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
