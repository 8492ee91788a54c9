"""The model a `vllm serve` is given, as vLLM 0.33 resolves it: a local directory (its config.json and tokenizer
files) or a Hub id (the few the lab uses), the derived context length and its check against --max-model-len, and
the errors real vLLM prints for a missing path, a missing tokenizer or a context length the model does not allow.
Those errors happen in vLLM's API-server process, before any engine core exists: a traceback on stderr, exit 1."""

import collections
import json
import os
import re

# Hub models the lab uses: (parameters, default max model len, uses RoPE).
KNOWN_MODELS = {
    "facebook/opt-125m": (125e6, 2048, False),
    "Qwen/Qwen2.5-0.5B-Instruct": (0.49e9, 32768, True),
    "Qwen/Qwen2.5-7B-Instruct": (7.6e9, 32768, True),
    "meta-llama/Llama-3.1-8B-Instruct": (8.03e9, 131072, True),
    "meta-llama/Llama-3.3-70B-Instruct": (70.6e9, 131072, True),
    "TheBloke/Mistral-7B-Instruct-v0.2-AWQ": (7.24e9, 32768, True),
}
# The config.json keys vLLM takes the context length from (the smallest one present wins).
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
               "max_sequence_length", "max_seq_length", "seq_len")
# Tokenizer files transformers can build a fast tokenizer from without sentencepiece or tiktoken.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")

Model = collections.namedtuple("Model", "params derived_len length_key arch rope local")


class ModelError(Exception):
    """A failure vLLM raises in its API-server process: the traceback's lines after its first line."""

    def __init__(self, lines):
        super().__init__(lines[-1])
        self.lines = lines


def resolve(tag):
    if os.path.isdir(tag):
        return _local(tag)
    if tag.startswith("/") or tag.count("/") > 1:
        # Not a directory, so vLLM takes it for a Hub id, which Hugging Face's validation refuses.
        message = ("Repo id must be in the form 'repo_name' or 'namespace/repo_name': '%s'. Use `repo_type` argument "
                   "if needed." % tag)
        raise ModelError([
            '  File "/usr/local/lib/python3.12/dist-packages/huggingface_hub/utils/_validators.py", line 154, in '
            "validate_repo_id",
            "huggingface_hub.errors.HFValidationError: %s" % message,
            "",
            "The above exception was the direct cause of the following exception:",
            "",
            "Traceback (most recent call last):",
            '  File "/usr/local/lib/python3.12/dist-packages/vllm/transformers_utils/config.py", line 781, in '
            "maybe_override_with_speculators",
            "OSError: %s" % message])
    if tag in KNOWN_MODELS:
        params, length, rope = KNOWN_MODELS[tag]
    else:
        match = re.search(r"(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])", tag.split("/")[-1])
        scale = 1e9 if not match or match.group(2) in "bB" else 1e6
        params, length, rope = (float(match.group(1)) * scale if match else 1e9), 8192, True
    return Model(params, float(length) if rope else length, "max_position_embeddings", "LlamaForCausalLM", rope,
                 False)


def _local(path):
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise ModelError(["OSError: %s does not appear to have a file named config.json. Checkout "
                          "'https://huggingface.co/%s/tree/None' for available files." % (path, path)])
    with open(config_path) as handle:
        config = json.load(handle)
    hidden = config.get("hidden_size", 4096)
    layers = config.get("num_hidden_layers", 32)
    vocab = config.get("vocab_size", 32000)
    params = config.get("num_parameters") or 12 * layers * hidden * hidden + 2 * vocab * hidden
    found = [(config[key], key) for key in LENGTH_KEYS if isinstance(config.get(key), (int, float))]
    length, key = min(found) if found else (2048, "max_position_embeddings")
    tokenizer_config = _json(os.path.join(path, "tokenizer_config.json"))
    if isinstance(tokenizer_config.get("model_max_length"), (int, float)):
        length = min(length, tokenizer_config["model_max_length"])
    rope = any(k in config for k in ("rope_parameters", "rope_scaling", "rope_theta"))
    if rope:
        # vLLM multiplies the length by the RoPE scaling factor (1.0 without scaling), which makes it a float.
        scaling = config.get("rope_parameters") or config.get("rope_scaling") or {}
        factor = scaling.get("factor", 1.0) if scaling.get("rope_type", scaling.get("type")) not in (
            "su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling") else 1.0
        length = length * float(factor or 1.0)
    arch = (config.get("architectures") or ["LlamaForCausalLM"])[0]
    return Model(params, length, key, arch, rope, True)


def _json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def max_model_len(model, requested):
    """The context length vLLM serves, or its refusal of a --max-model-len the model does not allow."""
    if requested is None or requested == -1:
        return int(model.derived_len)
    if requested > model.derived_len and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0") in ("", "0"):
        raise ModelError([
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig",
            "  Value error, User-specified max_model_len (%d) is greater than the derived max_model_len (%s=%s or "
            "model_max_length=None in model's config.json). To allow overriding this maximum, set the env var "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme caution. If "
            "the model uses relative position encoding (RoPE), positions exceeding derived_max_model_len lead to "
            "nan. If the model uses absolute position encoding, positions exceeding derived_max_model_len will "
            "cause a CUDA array out-of-bounds error. [type=value_error, input_value=ArgsKwargs((), {'model': "
            "...nderer_num_workers': 1}), input_type=ArgsKwargs]" % (requested, model.length_key, model.derived_len),
            "    For further information visit https://errors.pydantic.dev/2.14/v/value_error"])
    return requested


def check_tokenizer(model_tag, tokenizer):
    """A local model whose tokenizer files are missing fails where transformers builds the tokenizer."""
    root = tokenizer or model_tag
    if not os.path.isdir(root) or any(os.path.exists(os.path.join(root, n)) for n in TOKENIZER_FILES):
        return
    raise ModelError(tokenizer_traceback())


def tokenizer_traceback():
    return [
        '  File "/usr/local/lib/python3.12/dist-packages/vllm/tokenizers/registry.py", line 265, in get_tokenizer',
        "    tokenizer = tokenizer_cls_.from_pretrained(tokenizer_name, *args, **kwargs)",
        '  File "/usr/local/lib/python3.12/dist-packages/transformers/tokenization_utils_tokenizers.py", line 412, '
        "in __init__",
        "    raise ValueError(",
        "ValueError: Couldn't instantiate the backend tokenizer from one of: ",
        "(1) a `tokenizers` library serialization file, ",
        "(2) a slow tokenizer instance to convert or ",
        "(3) an equivalent slow tokenizer class to instantiate and convert. ",
        "You need to have sentencepiece or tiktoken installed to convert a slow tokenizer to a fast one."]


def sentencepiece_traceback():
    """What the tokenizer_error fault prints: sentencepiece given no vocabulary file (seed 004), as in images that
    ship sentencepiece."""
    return [
        '  File "/usr/local/lib/python3.12/dist-packages/transformers/tokenization_utils_base.py", line 2309, '
        "in _from_pretrained",
        "    tokenizer = cls(*init_inputs, **init_kwargs)",
        '  File "/usr/local/lib/python3.12/dist-packages/sentencepiece/__init__.py", line 316, in LoadFromFile',
        "    return _sentencepiece.SentencePieceProcessor_LoadFromFile(self, arg)",
        "TypeError: not a string"]
