"""The pre-split patterns we know, in one registry: each with its name, a splitter for ASCII-only text,
and whether text may be cut after a newline without changing its chunks.

A pattern outside the registry is caller-supplied code: it is compiled and run under the checks and the
timeout of checks.py. The registry's own patterns are ours and run in time linear in the text (their
quantifiers are possessive, or followed by nothing that could backtrack into them), so they split without
a timer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import regex

from tinygpt.tokenizer import fast
from tinygpt.tokenizer.checks import compile_pattern, split_with_timeout
from tinygpt.tokenizer.formats import compile_original_pattern
from tinygpt.tokenizer.scanner import distinct, scan, scan_distinct


class RegexPatterns:
    """Pre-tokenisation patterns, verbatim from tiktoken's `gpt2` and `cl100k_base` encodings."""

    GPT2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
    GPT4 = (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
        r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    )


# The ASCII splitters are the same patterns written for the standard `re` module, which splits ASCII
# faster than `regex`. `\s` is spelt out because `re` also counts \x1c-\x1f as space, and the possessive
# quantifiers are dropped (`re` has them only from Python 3.11): after each of them comes nothing that
# could make the match backtrack into it, so they change nothing. The tests check these splits equal the
# originals' on arbitrary ASCII text.
_SPACE = r"\t\n\v\f\r "


@dataclass(frozen=True)
class SplitPattern:
    """A known pattern. `cut_at_newlines`: a position just after a "\\n" that sits between two
    non-whitespace characters always starts a new chunk, so text may be encoded in pieces cut there.
    `gpt4_rules`: which rules of the compiled scanner (scanner.py) split as the pattern does."""
    pattern: str
    ascii_splitter: re.Pattern
    cut_at_newlines: bool
    gpt4_rules: bool

    def split(self, text: str) -> list[str]:
        """Every match of the pattern in `text`, in order: by the compiled scanner, or without numba by `re`
        (ASCII-only text) or `regex`."""
        if fast.jit() is not None:
            return scan(text, self.gpt4_rules)
        if text.isascii():
            return self.ascii_splitter.findall(text)
        return regex.compile(self.pattern).findall(text)  # compiled once: `regex` keeps it in its cache

    def split_distinct(self, text: str) -> tuple[list[str], np.ndarray]:
        """The distinct chunks of `text` in order of first appearance, and which of them each chunk is."""
        return scan_distinct(text, self.gpt4_rules) if fast.jit() is not None else distinct(self.split(text))


SPLIT_PATTERNS = {
    "gpt2": SplitPattern(RegexPatterns.GPT2, re.compile(
        rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_SPACE}A-Za-z0-9]+"""
        rf"""|[{_SPACE}]+$|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]"""), cut_at_newlines=True, gpt4_rules=False),
    "gpt4": SplitPattern(RegexPatterns.GPT4, re.compile(
        rf"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{{1,3}}| ?[^{_SPACE}A-Za-z0-9]+[\r\n]*"""
        rf"""|[{_SPACE}]+$|[{_SPACE}]*[\r\n]|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]"""), cut_at_newlines=True,
        gpt4_rules=True),
}
_BY_PATTERN = {known.pattern: known for known in SPLIT_PATTERNS.values()}


def can_cut_at_newlines(pattern: str) -> bool:
    """Whether text split by `pattern` may be cut after a newline between two non-whitespace characters."""
    known = _BY_PATTERN.get(pattern)
    return known is not None and known.cut_at_newlines


def splitter(pattern: str, original: bool = False) -> tuple[Callable, Callable]:
    """What splits text into the chunks of `pattern` (read as the original TinyGPT read it if `original`), and
    into its distinct chunks (see SplitPattern): the registry's entry, else the pattern held to the checks and
    timeout of checks.py; ValueError if it fails them."""
    known = None if original else _BY_PATTERN.get(pattern)
    if known is not None:
        return known.split, known.split_distinct
    compiled, for_ascii = compile_original_pattern(pattern) if original else (compile_pattern(pattern),) * 2

    def split(text: str) -> list[str]:
        return split_with_timeout(for_ascii if text.isascii() else compiled, text)
    return split, lambda text: distinct(split(text))
