"""The tokenizer's files: ours (`.model`, read back by `load`, and `.vocab`, for humans), and the original
TinyGPT's `tokenizer.model` layout, read and written so that its users' files load here.

Ours:
    tinygpt-bpe v1
    the split pattern as a JSON string
    special_tokens N, then N lines `"token" id` (the token as a JSON string)
    merges M, then M lines `id_a id_b` in the order learnt, and a final newline

The original's:
    line 1       the split pattern as a Python string literal (its repr)
    line 2       the number of special tokens, then one `token id` line for each
    the rest     one `id_a id_b` line per merge, in the order learnt: merge i makes id 256 + i

The original compiled that pattern with `re` in verbose mode. Here it must still compile with `re` (what
the original refused is refused), but it is matched by `regex`, under the checks and timeout of checks.py,
with `re`'s `\\w \\d \\s` spelt out (shorthands.py) so that it gives the original's chunks, and so its ids.
"""
from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path
from typing import Callable

import regex

from tinygpt.files import TOKENIZER_FILE_BYTES, read_bytes
from tinygpt.serialization import atomic_write
from tinygpt.tokenizer.checks import (check_merge_count, check_merges, check_pattern_length, check_special_tokens,
                                      compile_pattern)
from tinygpt.tokenizer.shorthands import spell_out_shorthands

MODEL_FORMAT_VERSION = "tinygpt-bpe v1"
QUOTES = ("'", '"')
CONTROL_CHARACTER = regex.compile(r"\p{C}")


def model_text(pattern: str, special_tokens: dict[str, int], merges: dict[tuple[int, int], int],
               original: bool) -> str:
    """The text of a `.model` file: ours, or in the original's layout if `original`."""
    if original:
        lines = [repr(pattern), str(len(special_tokens))]
        lines += [f"{token} {index}" for token, index in special_tokens.items()]
    else:
        lines = [MODEL_FORMAT_VERSION, json.dumps(pattern), f"special_tokens {len(special_tokens)}"]
        lines += [f"{json.dumps(token)} {index}" for token, index in special_tokens.items()]
        lines.append(f"merges {len(merges)}")
    lines += [f"{first} {second}" for first, second in sorted(merges, key=merges.get)]
    return "\n".join(lines) + "\n"


def vocab_text(vocab: dict[int, bytes], merges: dict[tuple[int, int], int]) -> str:
    """The `.vocab` file, for humans: each token printable, with the two it was merged from."""
    inverted_merges = {new_id: pair for pair, new_id in merges.items()}
    lines = []
    for index, token in vocab.items():
        if index in inverted_merges:
            first, second = inverted_merges[index]
            lines.append(f"[{render_token(vocab[first])}][{render_token(vocab[second])}] -> [{render_token(token)}] {index}")
        else:
            lines.append(f"[{render_token(token)}] {index}")
    return "\n".join(lines) + "\n"


def render_token(token: bytes) -> str:
    """Printable form of a token: invalid UTF-8 replaced, control characters escaped."""
    text = token.decode("utf-8", errors="replace")
    return CONTROL_CHARACTER.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` as UTF-8 with "\\n" line ends, atomically (a reader never sees half a file)."""
    atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8", newline="\n"))


def read_model(model_file: Path) -> tuple[bool, str, dict[str, int], dict[tuple[int, int], int]]:
    """Whether `model_file` is in the original's layout, and its pattern, special tokens and merges, all
    checked; a corrupt or foreign file raises ValueError naming the file."""
    data = read_bytes(model_file, "tokenizer model file", TOKENIZER_FILE_BYTES)
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"{model_file}: not a TinyGPT BPE model file (not UTF-8 text)") from error
    original = lines[0].startswith(QUOTES)  # the original's first line is the pattern as a string literal
    if lines[0] != MODEL_FORMAT_VERSION and not original:
        raise ValueError(f"{model_file}: not a TinyGPT BPE model file: first line is {lines[0][:40]!r}, expected "
                         f"{MODEL_FORMAT_VERSION!r} or a quoted pattern (the original TinyGPT's layout)")
    try:
        pattern, special_tokens, pairs = _parse_original_lines(lines) if original else _parse_model_lines(lines[1:])
        (compile_original_pattern if original else compile_pattern)(pattern)
        merges = check_merges(pairs)
        check_special_tokens(special_tokens, 256 + len(merges))
    except (ValueError, IndexError, regex.error) as error:
        layout = "the original TinyGPT's" if original else "TinyGPT"
        raise ValueError(f"{model_file}: corrupt or truncated {layout} BPE model file: {error}") from error
    return original, pattern, special_tokens, merges


def _parse_model_lines(lines: list[str]) -> tuple[str, dict[str, int], list[tuple[int, int]]]:
    """The pattern, special tokens and merge pairs of one of our `.model` files (its lines after the header)."""
    pattern = json.loads(lines[0])
    if not isinstance(pattern, str):
        raise ValueError("the pattern line is not a JSON string")
    num_special = _section_size(lines[1], "special_tokens")
    special_tokens = _special_tokens(lines[2:2 + num_special], json.loads)
    merges_start = 2 + num_special
    num_merges = _section_size(lines[merges_start], "merges")
    merge_lines = lines[merges_start + 1:merges_start + 1 + num_merges]
    if len(merge_lines) != num_merges or lines[merges_start + 1 + num_merges:] != [""]:
        raise ValueError(f"expected {num_merges} merge lines and a final newline")
    return pattern, special_tokens, _merge_pairs(merge_lines)


def _section_size(line: str, name: str) -> int:
    """N of a `<name> N` line, held to the bound on merges."""
    label, _, size = line.partition(" ")
    if label != name or not size.isdigit():
        raise ValueError(f"expected a '{name} <count>' line, got {line[:40]!r}")
    check_merge_count(int(size))
    return int(size)


def _parse_original_lines(lines: list[str]) -> tuple[str, dict[str, int], list[tuple[int, int]]]:
    """The pattern, special tokens and merge pairs of a file in the original's layout (its lines, the last
    one empty)."""
    if len(lines) < 3 or lines[-1] != "":
        raise ValueError("expected a pattern line, a special token count and a final newline")
    if not lines[1].isdigit():
        raise ValueError(f"expected the number of special tokens on line 2, got {lines[1][:40]!r}")
    num_special = int(lines[1])
    special_lines, merge_lines = lines[2:2 + num_special], lines[2 + num_special:-1]
    if len(special_lines) < num_special:
        raise ValueError(f"expected {num_special} special token lines, got {len(special_lines)}")
    return _string_literal(lines[0]), _special_tokens(special_lines, str), _merge_pairs(merge_lines)


def _special_tokens(lines: list[str], read_token: Callable[[str], object]) -> dict[str, int]:
    """`{token: id}` of `token id` lines, the token read by `read_token`; ValueError on a malformed line."""
    special_tokens = {}
    for line in lines:
        token, _, index = line.rpartition(" ")
        token = read_token(token)
        if not isinstance(token, str) or not token or not index.isdigit() or token in special_tokens:
            raise ValueError(f"bad special token line {line[:40]!r}")
        special_tokens[token] = int(index)
    return special_tokens


def _merge_pairs(lines: list[str]) -> list[tuple[int, int]]:
    """The pairs of `id_a id_b` lines; ValueError on any other line."""
    pairs = []
    for line in lines:
        first, _, second = line.partition(" ")
        if not (first.isdigit() and second.isdigit()):
            raise ValueError(f"bad merge line {line[:40]!r}, expected two ids")
        pairs.append((int(first), int(second)))
    return pairs


def compile_original_pattern(pattern: str) -> tuple[regex.Pattern, regex.Pattern]:
    """The pattern as the original read it (`re`, verbose), compiled with `regex` to match the same chunks
    (held to compile_pattern's checks), and a faster one that does so in ASCII-only text; ValueError if
    `re` refuses it or a check fails."""
    check_pattern_length(len(pattern))  # before `re`, which parses a pattern in Python, reads it
    try:
        re.compile(pattern, re.VERBOSE)
    except re.error as error:
        raise ValueError(f"the split pattern does not compile in verbose mode ({error})") from None
    compiled = compile_pattern(spell_out_shorthands(pattern), regex.VERBOSE)
    return compiled, regex.compile(spell_out_shorthands(pattern, ascii_text=True), regex.VERBOSE)


def _string_literal(line: str) -> str:
    """The value of a line that holds exactly one Python string literal; it is parsed, never run."""
    try:
        tokens = [token for token in tokenize.generate_tokens(io.StringIO(line).readline)
                  if token.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)]
    except (tokenize.TokenError, SyntaxError) as error:
        raise ValueError(f"the pattern line is not a string literal ({error})") from None
    if len(tokens) != 1 or tokens[0].type != tokenize.STRING:
        raise ValueError(f"the pattern line is not one string literal: {line[:40]!r}")
    value = ast.literal_eval(tokens[0].string)  # a single STRING token: only a str or bytes constant
    if not isinstance(value, str):
        raise ValueError(f"the pattern line is not a str literal: {line[:40]!r}")
    return value
