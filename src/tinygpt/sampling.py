"""Text from a model as it is generated: the prompt encoded, tokens streamed through the KV cache, and
their bytes decoded incrementally, so that a character split across tokens is printed once it is whole."""
from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from tinygpt.files import PROMPT_FILE_BYTES, read_text
from tinygpt.nn import GPT
from tinygpt.tensor import Tensor
from tinygpt.tokenizer import BPETokenizer

REPLACEMENT_BYTES = "\ufffd".encode("utf-8")
FILE_PREFIX = "FILE:"
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """text with its control characters (ESC, BEL, CR, DEL, C1) written as escapes such as \\x1b, so that a sample
    shown in a terminal cannot move the cursor, ring or clear it; newlines and tabs stay as they are."""
    return CONTROL_CHARACTERS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def read_prompt(prompt: str) -> str:
    """The prompt itself, or the text of the file it names as FILE:path (nanoGPT's sample.py convention)."""
    if not prompt.startswith(FILE_PREFIX):
        return prompt
    path = Path(prompt[len(FILE_PREFIX):])
    try:
        return read_text(path, "prompt file", PROMPT_FILE_BYTES)
    except OSError as error:
        raise ValueError(f"cannot read the prompt file {path}: {error}") from None


def stream_text(model: GPT, tokenizer: BPETokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                top_k: int | None = 200, top_p: float | None = None, seed: int = 1337,
                device: str = "cpu") -> Iterator[str]:
    """Yield the prompt, then the text of each new token as soon as it is sampled (the pieces join to the text
    of model.generate with the same arguments)."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        raise ValueError("the prompt is empty: give at least one character to start from")
    tokens = model.stream(Tensor(np.array([ids], dtype=np.int32), device=device), max_new_tokens,
                          temperature=temperature, top_k=top_k, rng=np.random.default_rng(seed), top_p=top_p)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # an id the tokenizer lacks (its training
    # stopped short of the model's vocab_size) is shown as U+FFFD, as decode(unknown_ids="replace") does
    yield decoder.decode(b"".join(tokenizer.vocab.get(index, REPLACEMENT_BYTES) for index in ids))
    for step in tokens:
        yield decoder.decode(tokenizer.vocab.get(step.item(), REPLACEMENT_BYTES))
    yield decoder.decode(b"", final=True)
