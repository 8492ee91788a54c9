"""The `vllm serve` command line, as vLLM 0.33 parses it (the options operators use, and the removed ones)."""

import argparse
import json
import sys

VERSION = "0.33.0"


def str2bool(text):
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError("expected a boolean, got %r" % text)


def build_parser():
    parser = argparse.ArgumentParser(prog="vllm serve", description="Start the vLLM OpenAI Compatible API server.")
    parser.add_argument("model_tag", help="The model tag to serve")
    add = parser.add_argument
    add("--host", default=None)
    add("--port", type=int, default=8000)
    add("--served-model-name", nargs="+", default=None)
    add("--tensor-parallel-size", "-tp", type=int, default=1)
    add("--pipeline-parallel-size", "-pp", type=int, default=1)
    add("--data-parallel-size", "-dp", type=int, default=1)
    add("--gpu-memory-utilization", type=float, default=0.9)
    add("--max-model-len", type=int, default=None)
    add("--max-num-seqs", type=int, default=256)
    add("--max-num-batched-tokens", type=int, default=None)
    add("--quantization", "-q", default=None,
        choices=["awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors", "gguf", "awq_marlin", "gptq_marlin",
                 "modelopt", "mxfp4"])
    add("--dtype", default="auto", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    add("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16"])
    add("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    add("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=None)
    add("--enforce-eager", action="store_true")
    add("--trust-remote-code", action="store_true")
    add("--api-key", nargs="+", default=None)
    add("--ssl-keyfile", default=None)
    add("--ssl-certfile", default=None)
    add("--ssl-ca-certs", default=None)
    add("--ssl-cert-reqs", type=int, default=0)
    add("--enable-ssl-refresh", action="store_true")
    add("--download-dir", default=None)
    add("--load-format", default="auto")
    add("--tokenizer", default=None)
    add("--revision", default=None)
    add("--seed", type=int, default=None)
    add("--max-logprobs", type=int, default=20)
    add("--disable-log-requests", action="store_true")
    add("--disable-log-stats", action="store_true")
    add("--uvicorn-log-level", default="info")
    add("--root-path", default=None)
    add("--chat-template", default=None)
    add("--generation-config", default="auto")
    add("--speculative-config", default=None)
    add("--structured-outputs-config", default=None)
    add("--compilation-config", "-O", default=None)
    add("--lora-modules", nargs="+", default=None)
    add("--enable-lora", action="store_true")
    add("--max-loras", type=int, default=1)
    add("--distributed-executor-backend", default=None, choices=["mp", "ray", "uni", "external_launcher"])
    return parser


def parse(argv):
    """Parses `vllm serve` arguments. Flags vLLM removed (--speculative-model, --guided-decoding-backend...) are
    unknown here, so they exit 2 with argparse's "unrecognized arguments" message, as vLLM does."""
    return build_parser().parse_args(expand_config(argv))


def expand_config(argv):
    """`--config FILE` as vLLM reads it: long-form flag names as keys; the command line wins over the file.
    The file is YAML; the emulator reads its JSON form (JSON is YAML) and plain `key: value` lines."""
    if "--config" not in argv:
        return argv
    at = argv.index("--config")
    if at + 1 >= len(argv):
        build_parser().error("argument --config: expected one argument")
    path = argv[at + 1]
    rest = argv[:at] + argv[at + 2:]
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as exc:
        build_parser().error("argument --config: cannot read %s: %s" % (path, exc.strerror))
    try:
        config = json.loads(text)
    except ValueError:
        config = dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
        config = dict((k.strip(), v.strip().strip("'\"")) for k, v in config.items())
    model = None
    if rest and not rest[0].startswith("-"):
        model, rest = rest[0], rest[1:]
    from_file = []
    for key, value in config.items():
        if key == "model":
            model = model or str(value)
        elif value is True:
            from_file.append("--" + key)
        elif isinstance(value, list):
            from_file += ["--" + key] + [str(v) for v in value]
        elif value not in (False, None):
            from_file += ["--" + key, str(value)]
    # The model first (vllm serve MODEL ...), then the file, then the command line: argparse keeps the last value
    # it sees, so the command line wins, as in vLLM.
    return ([model] if model else []) + from_file + rest


def main_usage(argv):
    """Handles the `vllm` top level: `vllm --version`, `vllm serve ...`. Returns the serve argv."""
    if argv[:1] in (["--version"], ["-v"]):
        print(VERSION)
        sys.exit(0)
    if argv[:1] != ["serve"]:
        sys.stderr.write("usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ...\n"
                         "vllm: error: argument subparser: invalid choice: %r\n" % (argv[0] if argv else ""))
        sys.exit(2)
    return argv[1:]
