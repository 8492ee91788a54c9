"""The emulator's stand-in for a tokenizer: one token per word, plus a few per chat message for the chat template.
Counts differ from a real tokenizer's; what matters is that /tokenize and the usage of a generation agree."""

import zlib

WORDS = ("the quick brown fox jumps over the lazy dog and then the fox rests under a tall green tree while "
         "the dog keeps watch").split()
TEMPLATE_TOKENS = 3
VOCAB = 32000


def prompt_words(prompt):
    """The tokens of a completion prompt (text, texts, or token ids) or of chat messages."""
    if prompt is None:
        return []
    if isinstance(prompt, str):
        return prompt.split()
    words = []
    for item in prompt:
        if isinstance(item, dict):
            content = item.get("content") or ""
            if isinstance(content, list):
                content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            words += ["<|%s|>" % item.get("role", "user")] * TEMPLATE_TOKENS + str(content).split()
        elif isinstance(item, int):
            words.append(item)
        else:
            words += str(item).split()
    return words


def ids(words):
    return [w if isinstance(w, int) else zlib.crc32(w.encode()) % (VOCAB - 100) + 100 for w in words]


def text(token_ids):
    return "".join(" " + WORDS[int(t) % len(WORDS)] for t in token_ids)


def generated(count):
    return [WORDS[i % len(WORDS)] for i in range(count)]
