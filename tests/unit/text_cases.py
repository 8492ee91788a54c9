"""Text in other letter cases, for the tests that prove a value matches whatever its case (GPU UUIDs)."""


def recase(text, flips):
    """`text` with the letters at the positions `flips` picks swapped to the other case."""
    chars = list(text)
    for position in flips:
        position %= len(chars)
        chars[position] = chars[position].swapcase()
    return "".join(chars)
