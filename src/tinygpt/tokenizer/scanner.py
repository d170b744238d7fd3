"""The registry's two patterns (GPT-2's and GPT-4's) as one compiled scanner: the chunks `regex` would find,
found by a numba loop over the text's code points, in one pass (each position is read a bounded number of
times, so the time is linear in the text).

A code point's class (letter \\p{L}, number \\p{N}, white space \\s, or other) is read from `regex` itself, the
first time the code point is met, and kept in a table, so the scanner and `regex` agree by construction.
The tests compare its chunks with `regex`'s and its ids with tiktoken's.
"""
from __future__ import annotations

import numpy as np
import regex

from tinygpt.tokenizer.fast import compile_loops

OTHER, LETTER, NUMBER, SPACE, UNKNOWN = 0, 1, 2, 3, 255
CLASS_PATTERNS = {LETTER: regex.compile(r"\p{L}"), NUMBER: regex.compile(r"\p{N}"), SPACE: regex.compile(r"\s")}
NEWLINE, RETURN, BLANK, APOSTROPHE, LONG_S = 10, 13, 32, 39, 0x17F
_classes = np.full(0x110000, UNKNOWN, dtype=np.uint8)
LOOPS = ("run_end", "folded", "contraction_end", "space_end", "match_end", "same_chunk", "chunk_ends", "distinct_chunks")


def scan(text: str, gpt4: bool) -> list[str]:
    """The chunks of `text` under GPT-4's pattern (`gpt4`) or GPT-2's."""
    distinct, which = scan_distinct(text, gpt4)
    return [distinct[index] for index in which.tolist()]


def scan_distinct(text: str, gpt4: bool) -> tuple[list[str], np.ndarray]:
    """The distinct chunks of `text` in the order they first appear, and for each chunk of the text which
    of them it is: the text's chunks are never made into strings one by one."""
    code_points = (np.frombuffer(text.encode("ascii"), np.uint8) if text.isascii() else
                   np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32))
    _learn_classes(code_points)
    prepare()
    ends = chunk_ends(code_points, _classes, gpt4)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    firsts, which = distinct_chunks(code_points, starts, ends)
    return [text[start:end] for start, end in zip(starts[firsts].tolist(), ends[firsts].tolist())], which


def distinct(chunks: list[str]) -> tuple[list[str], np.ndarray]:
    """scan_distinct for chunks already made: the distinct ones, and which of them each chunk is."""
    index: dict[str, int] = {}
    which = [index.setdefault(chunk, len(index)) for chunk in chunks]
    return list(index), np.array(which, dtype=np.int64)


def _learn_classes(code_points: np.ndarray) -> None:
    """Fill the table for the code points of the text not met before, asking `regex`."""
    unknown = np.unique(code_points[_classes[code_points] == UNKNOWN])
    if len(unknown):
        characters = "".join(map(chr, unknown.tolist()))
        _classes[unknown] = OTHER
        for kind, pattern in CLASS_PATTERNS.items():
            _classes[unknown[[match.start() for match in pattern.finditer(characters)]]] = kind


def run_end(classes, code_points, start, kind, longest=-1):
    """The first position from `start` whose code point is not of class `kind` (at most `longest` on from
    `start`, if given)."""
    stop = len(code_points) if longest < 0 else min(len(code_points), start + longest)
    end = start
    while end < stop and classes[code_points[end]] == kind:
        end += 1
    return end


def folded(code_point, ignore_case):
    """A contraction letter as (?i) matches it: ASCII capitals and the long s fold to lower case."""
    if ignore_case and (65 <= code_point <= 90):
        return code_point + 32
    return 115 if ignore_case and code_point == LONG_S else code_point


def contraction_end(code_points, start, ignore_case):
    """Where `'(?:[sdmt]|ll|ve|re)` matching at `start` ends, or `start` if it does not match."""
    if code_points[start] != APOSTROPHE or start + 1 == len(code_points):
        return start
    first = folded(code_points[start + 1], ignore_case)
    if first == 115 or first == 100 or first == 109 or first == 116:  # s d m t
        return start + 2
    if start + 2 < len(code_points):
        second = folded(code_points[start + 2], ignore_case)
        if (first == 108 and second == 108) or ((first == 118 or first == 114) and second == 101):  # ll ve re
            return start + 3
    return start


def space_end(classes, code_points, start, gpt4):
    """Where the white-space alternatives end: `\\s++$`, GPT-4's `\\s*[\\r\\n]`, `\\s+(?!\\S)`, then `\\s`."""
    end = run_end(classes, code_points, start, SPACE)
    if end == len(code_points):
        return end
    if gpt4:
        for last in range(end - 1, start - 1, -1):
            if code_points[last] == NEWLINE or code_points[last] == RETURN:
                return last + 1
    return max(end - 1, start + 1)


def match_end(classes, code_points, start, gpt4):
    """Where the pattern's match at `start` ends: its alternatives tried in order, as `regex` does."""
    end = contraction_end(code_points, start, gpt4)
    if end > start:
        return end
    here = classes[code_points[start]]
    following = classes[code_points[start + 1]] if start + 1 < len(code_points) else SPACE
    if gpt4:
        if here == LETTER:  # [^\r\n\p{L}\p{N}]?+\p{L}++
            return run_end(classes, code_points, start, LETTER)
        if following == LETTER and here != NUMBER and code_points[start] != NEWLINE and code_points[start] != RETURN:
            return run_end(classes, code_points, start + 1, LETTER)
        if here == NUMBER:  # \p{N}{1,3}+
            return run_end(classes, code_points, start, NUMBER, 3)
        first = start + 1 if code_points[start] == BLANK and following == OTHER else start
        if classes[code_points[first]] == OTHER:  # ` ?[^\s\p{L}\p{N}]++[\r\n]*+`
            end = run_end(classes, code_points, first, OTHER)
            while end < len(code_points) and (code_points[end] == NEWLINE or code_points[end] == RETURN):
                end += 1
            return end
    else:  # ` ?\p{L}++`, ` ?\p{N}++`, ` ?[^\s\p{L}\p{N}]++`
        first = start + 1 if code_points[start] == BLANK and following != SPACE else start
        if classes[code_points[first]] != SPACE:
            return run_end(classes, code_points, first, classes[code_points[first]])
    return space_end(classes, code_points, start, gpt4)


def chunk_ends(code_points, classes, gpt4):
    """Where each chunk of the text ends, in code points."""
    ends = np.empty(len(code_points), np.int64)
    count, start = 0, 0
    while start < len(code_points):
        start = match_end(classes, code_points, start, gpt4)
        ends[count] = start
        count += 1
    return ends[:count]


def same_chunk(code_points, start, end, other_start, other_end):
    if end - start != other_end - other_start:
        return False
    for offset in range(end - start):
        if code_points[start + offset] != code_points[other_start + offset]:
            return False
    return True


def distinct_chunks(code_points, starts, ends):
    """The first chunk of each distinct content, and for every chunk the index of its content among them:
    a hash table of the contents seen (FNV-1a of the code points, equal contents compared in full)."""
    size = 1
    while size < 2 * len(ends):
        size *= 2
    table = np.full(size, -1, np.int64)  # slot -> index of a distinct content
    firsts, which = np.empty(len(ends), np.int64), np.empty(len(ends), np.int64)
    count = 0
    for chunk in range(len(ends)):
        digest = 1469598103934665603
        for position in range(starts[chunk], ends[chunk]):
            digest = (digest ^ code_points[position]) * 1099511628211
        slot = digest & (size - 1)
        while table[slot] != -1 and not same_chunk(code_points, starts[chunk], ends[chunk],
                                                     starts[firsts[table[slot]]], ends[firsts[table[slot]]]):
            slot = (slot + 1) & (size - 1)
        if table[slot] == -1:
            table[slot], firsts[count] = count, chunk
            count += 1
        which[chunk] = table[slot]
    return firsts[:count], which


def prepare() -> bool:
    """This file's loops compiled (read from numba's cache after the first time) now, for ASCII and for other text;
    whether they are."""
    return compile_loops(globals(), LOOPS, lambda: [scan_distinct(sample, gpt4=True) for sample in ("a", "\u00e4")])
