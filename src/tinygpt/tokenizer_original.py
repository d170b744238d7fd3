"""The original TinyGPT's `tokenizer.model` layout, read and written so that its users' files load here.

    line 1       the split pattern as a Python string literal (its repr)
    line 2       the number of special tokens, then one `token id` line for each
    the rest     one `id_a id_b` line per merge, in the order learnt: merge i makes id 256 + i

The original compiled that pattern with the standard `re` module in verbose mode (whitespace and
`#` comments ignored). `re` has no timeout, so here the pattern must compile with `re` (what the original
refused is refused) but is matched by `regex` in verbose mode, through exactly the checks and the timed
split of tokenizer_checks. The two modules read `\\w`, `\\d`, `\\s` (and so `\\b`) differently, so those are
first spelt out as `re` reads them (tokenizer_re_shorthands): the same pattern then splits text into the
same chunks as the original, and the same merges give the same ids.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize

import regex

from tinygpt.tokenizer_checks import check_pattern_length, compile_pattern
from tinygpt.tokenizer_re_shorthands import spell_out_shorthands

QUOTES = ("'", '"')


def is_original_layout(first_line: str) -> bool:
    """Whether a model file's first line can be the original's pattern line (a quoted literal)."""
    return first_line.startswith(QUOTES)


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


def parse_original_lines(lines: list[str]) -> tuple[str, dict[str, int], list[tuple[int, int]]]:
    """The pattern, the special tokens and the merge pairs of a file in the original's layout (its lines,
    the last one empty); ValueError on any line that is not as the original writes it."""
    if len(lines) < 3 or lines[-1] != "":
        raise ValueError("expected a pattern line, a special token count and a final newline")
    pattern = _string_literal(lines[0])
    if not lines[1].isdigit():
        raise ValueError(f"expected the number of special tokens on line 2, got {lines[1][:40]!r}")
    num_special = int(lines[1])
    special_lines, merge_lines = lines[2:2 + num_special], lines[2 + num_special:-1]
    if len(special_lines) < num_special:
        raise ValueError(f"expected {num_special} special token lines, got {len(special_lines)}")
    special_tokens = {}
    for line in special_lines:
        token, _, index = line.rpartition(" ")
        if not token or not index.isdigit() or token in special_tokens:
            raise ValueError(f"bad special token line {line[:40]!r}")
        special_tokens[token] = int(index)
    pairs = []
    for line in merge_lines:
        fields = line.split(" ")
        if len(fields) != 2 or not all(field.isdigit() for field in fields):
            raise ValueError(f"bad merge line {line[:40]!r}, expected two ids")
        pairs.append((int(fields[0]), int(fields[1])))
    return pattern, special_tokens, pairs


def original_lines(pattern: str, special_tokens: dict[str, int], merges: dict[tuple[int, int], int]) -> list[str]:
    """The lines of a model file in the original's layout (the last one empty, for the final newline)."""
    lines = [repr(pattern), str(len(special_tokens))]
    lines += [f"{token} {index}" for token, index in special_tokens.items()]
    lines += [f"{first} {second}" for (first, second), _ in sorted(merges.items(), key=lambda item: item[1])]
    return lines + [""]


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
