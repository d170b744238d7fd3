"""A split pattern written for `re` (verbose mode, as the original TinyGPT compiled it) rewritten for `regex`.

The two modules read the shorthands \\w, \\d, \\s (so also \\W \\D \\S \\b \\B) differently: `re` by
str.isalnum / isdecimal / isspace of this Python's Unicode version, `regex` by its own newer Unicode
properties. Each shorthand becomes the nearest `regex` property set, corrected by the code points on which
the two differ (found once by matching every code point with both), and, as in `re`, the case-insensitive
flag never changes it. A set holding a shorthand becomes an alternation (or, negated, lookaheads) over
one character. Everything else is kept as it is, so `regex` then matches what `re` matches.

Those corrections make matching several times slower, so a second spelling serves ASCII-only text, on
which the two modules differ only in `re`'s \\s also holding \\x1c-\\x1f.
"""
from __future__ import annotations

import functools
import re
from typing import NamedTuple

import regex

from tinygpt.tokenizer.checks import check_pattern_length

SHORTHANDS = frozenset("wWdDsS")
# The `regex` set items nearest to what `re` matches with each shorthand
NEAREST_PROPERTIES = {"w": r"\p{L}\p{N}_", "d": r"\p{Nd}", "s": r"\p{White_Space}"}
RE_ASCII_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f\x20"
# `(?flags)` at the start or `(?on-off:` opening a group: the flags that change what a shorthand or `#` is.
INLINE_FLAGS = re.compile(r"\(\?([aiLmsux]*)(?:-([imsx]*))?([:)])")


class Scope(NamedTuple):
    """The flags of a group that decide what `#` and the shorthands mean in it."""
    verbose: bool
    ascii: bool


def spell_out_shorthands(pattern: str, ascii_text: bool = False) -> str:
    """`pattern` (valid for `re` in verbose mode) with every shorthand, and every set holding one, written
    so that `regex` in verbose mode matches what `re` matches there (in ASCII-only text if `ascii_text`);
    the rest is kept as it is. ValueError as soon as it grows beyond MAX_PATTERN_CHARACTERS."""
    pieces, position, scopes, length = [], 0, [Scope(verbose=True, ascii=False)], 0
    while position < len(pattern):
        character, scope = pattern[position], scopes[-1]
        end = position + 1
        if character == "\\":
            end += 1
            piece = _spelt_escape(pattern[position + 1:end], scope.ascii, ascii_text)
        elif character == "[":
            piece, end = _spelt_set(pattern, position, scope.ascii, ascii_text)
        elif character == "#" and scope.verbose or pattern.startswith("(?#", position):
            closing = pattern.find("\n" if character == "#" else ")", position)  # `#` comments end with their line
            end = len(pattern) if closing == -1 else closing + 1
            piece = pattern[position:end]
        else:
            if character == "(":
                end = _open_group(pattern, position, scopes)
            elif character == ")" and len(scopes) > 1:
                scopes.pop()
            piece = pattern[position:end]
        pieces.append(piece)
        length += len(piece)
        check_pattern_length(length, " (with `re`'s shorthands spelt out for `regex`)")
        position = end
    return "".join(pieces)


def _open_group(pattern: str, start: int, scopes: list[Scope]) -> int:
    """Push the scope of the group opened at `start` (or change the whole pattern's for `(?flags)`); return
    the end of its opening."""
    flags = INLINE_FLAGS.match(pattern, start)
    scope = scopes[-1]
    if flags is None:
        scopes.append(scope)
        return start + 1
    turned_on, turned_off, closing = flags.group(1), flags.group(2) or "", flags.group(3)
    scope = Scope(verbose=("x" in turned_on or scope.verbose) and "x" not in turned_off,
                  ascii="a" in turned_on or scope.ascii)
    if closing == ")":
        scopes[-1] = scope  # global flags, which `re` allows only at the start
    else:
        scopes.append(scope)
    return flags.end()


def _spelt_escape(escaped: str, ascii_only: bool, ascii_text: bool) -> str:
    """The escape `\\<escaped>` outside a set as `regex` must read it to match what `re` matches."""
    if escaped in SHORTHANDS:
        return _spelt_shorthand(escaped, ascii_only, ascii_text)[1]
    if escaped in ("b", "B") and not ascii_text:  # a word boundary, or not one, between `re`'s word characters
        word = shorthand_as_regex("w", ascii_only)
        if escaped == "b":
            return f"(?:(?<={word})(?!{word})|(?<!{word})(?={word}))"
        return f"(?:(?<={word})(?={word})|(?<!{word})(?!{word}))"
    return "\\" + escaped


def _spelt_set(pattern: str, start: int, ascii_only: bool, ascii_text: bool) -> tuple[str, int]:
    """The set `[...]` opening at `start` as `regex` must read it, and the position after it."""
    position = start + 1 + pattern.startswith("^", start + 1)
    negated = position > start + 1
    items, alternatives = [], []  # what stays inside the set, in order; what must stand outside it
    while position < len(pattern) and (pattern[position] != "]" or position == start + 1 + negated):
        item = pattern[position:position + 2] if pattern[position] == "\\" else pattern[position]
        position += len(item)
        if len(item) == 2 and item[1] in SHORTHANDS:
            in_set, alone = _spelt_shorthand(item[1], ascii_only, ascii_text)
            items.append(in_set or "")
            alternatives += [alone] if in_set is None else []
        else:
            items.append(item)
    end = position + 1
    inside = "".join(items)
    if not alternatives:
        return "[" + "^" * negated + inside + "]", end
    if inside:  # a `^` or `]` first would change the set's meaning: escape it
        alternatives.insert(0, "[" + "\\" * (inside[0] in "^]") + inside + "]")
    if negated:
        return "(?:" + "".join(f"(?!{alternative})" for alternative in alternatives) + "(?s:.))", end
    return "(?:" + "|".join(alternatives) + ")", end


def _spelt_shorthand(letter: str, ascii_only: bool, ascii_text: bool) -> tuple[str | None, str]:
    """How `\\<letter>` is written for `regex`: the items that stand for it inside a set (None if it needs
    more than a set), and an expression matching one character that stands for it anywhere."""
    if not ascii_text:
        return None, shorthand_as_regex(letter, ascii_only)
    if letter == "s":
        return RE_ASCII_SPACE, f"[{RE_ASCII_SPACE}]"
    if letter == "S":
        return None, f"[^{RE_ASCII_SPACE}]"
    return "\\" + letter, "\\" + letter  # `regex` reads the others as `re` does on ASCII characters


@functools.cache
def shorthand_as_regex(letter: str, ascii_only: bool) -> str:
    """`\\<letter>` (one of w W d D s S) as `re` reads it, in `regex` syntax matching one character."""
    positive = letter.lower()
    nearest = "" if ascii_only else NEAREST_PROPERTIES[positive]
    in_re = _matched_code_points(re.compile("\\" + positive, re.ASCII if ascii_only else 0))
    in_nearest = _matched_code_points(regex.compile(f"[{nearest}]")) if nearest else set()
    added, removed = _as_ranges(in_re - in_nearest), _as_ranges(in_nearest - in_re)
    if letter == positive:
        body = f"[{nearest}{added}]" + (f"(?<![{removed}])" if removed else "")
    else:
        body = f"[^{nearest}{added}]" + (f"|[{removed}]" if removed else "")
    return f"(?-i:{body})"


def _matched_code_points(compiled: re.Pattern | regex.Pattern) -> set[int]:
    return {ord(character) for character in compiled.findall(_every_code_point())}


@functools.cache
def _every_code_point() -> str:
    return "".join(map(chr, range(0x110000)))


def _as_ranges(code_points: set[int]) -> str:
    """`code_points` as the ranges inside a set, `\\uXXXX-\\uXXXX`."""
    spans: list[list[int]] = []
    for code_point in sorted(code_points):
        if spans and spans[-1][1] == code_point - 1:
            spans[-1][1] = code_point
        else:
            spans.append([code_point, code_point])
    return "".join(_escaped(first) if first == last else f"{_escaped(first)}-{_escaped(last)}"
                   for first, last in spans)


def _escaped(code_point: int) -> str:
    return f"\\u{code_point:04x}" if code_point < 0x10000 else f"\\U{code_point:08x}"
