"""What a BPE tokenizer read from a file (or given by a caller) must satisfy before it is used.

The bounds are far above any real BPE (GPT-4o's o200k has 200k ids whose bytes total ~1.5 MB) and low
enough that a crafted file cannot make loading or encoding allocate more than a few hundred MB:
- ids (merges and special tokens) are below MAX_TOKEN_ID + 1 = 2**24;
- the bytes of all learnt tokens together are at most MAX_VOCAB_BYTES = 64 MiB;
- the split pattern is at most MAX_PATTERN_CHARACTERS = 262,144 characters long (compiling takes about a
  microsecond per character), compiles with `regex`, has no capture groups, never matches the empty
  string, and every split of a text runs under a timeout of REGEX_TIMEOUT_SECONDS plus
  REGEX_SECONDS_PER_CHARACTER per character (it is caller-supplied code: a backtracking pattern could
  otherwise run for hours).
"""
from __future__ import annotations

import regex

MAX_TOKEN_ID = (1 << 24) - 1
MAX_VOCAB_BYTES = 1 << 26
MAX_PATTERN_CHARACTERS = 1 << 18
REGEX_TIMEOUT_SECONDS = 1.0
REGEX_SECONDS_PER_CHARACTER = 1e-5
# Text the pattern must split without an empty match: letters, digits, spaces, punctuation, scripts, emoji.
PATTERN_PROBE = "Hello, world! it's 42nd\n\t  naïve Привет 你好 😀 \r\n  x"


def compile_pattern(pattern: str, flags: int = 0) -> regex.Pattern:
    """The split pattern compiled with `regex` (and `flags`); ValueError if it is malformed, captures, or
    matches ''."""
    if not isinstance(pattern, str):
        raise TypeError(f"the split pattern must be a str, got {type(pattern).__name__}")
    check_pattern_length(len(pattern))
    try:
        compiled = regex.compile(pattern, flags)
    except regex.error as error:
        raise ValueError(f"the split pattern does not compile ({error})") from None
    if compiled.groups:
        raise ValueError(f"the split pattern has {compiled.groups} capture group(s); write them (?:...)")
    try:
        empty = next((match for match in compiled.finditer(PATTERN_PROBE, timeout=split_timeout(PATTERN_PROBE))
                      if match.start() == match.end()), None)
    except TimeoutError:
        raise ValueError("the split pattern timed out on a 50-character probe text") from None
    if empty is not None or compiled.fullmatch("") is not None:
        raise ValueError(f"the split pattern matches the empty string (at {empty.start() if empty else 0} "
                         "of a probe text): it must consume at least one character per match")
    return compiled


def check_pattern_length(length: int, note: str = "") -> None:
    """ValueError if a split pattern of `length` characters (`note` says which) is beyond the bound."""
    if length > MAX_PATTERN_CHARACTERS:
        raise ValueError(f"the split pattern{note} is over {length:,} characters long, more than the bound of "
                         f"{MAX_PATTERN_CHARACTERS:,}")


def split_timeout(text: str) -> float:
    """Seconds a split of `text` by a stored pattern may take."""
    return REGEX_TIMEOUT_SECONDS + REGEX_SECONDS_PER_CHARACTER * len(text)


def split_with_timeout(compiled: regex.Pattern, text: str) -> list[str]:
    """Every match of `compiled` in `text`; ValueError if it times out or leaves characters unmatched."""
    try:
        chunks = compiled.findall(text, timeout=split_timeout(text))
    except TimeoutError:
        raise ValueError(f"the tokenizer's split pattern timed out after {split_timeout(text):.1f} s on "
                         f"{len(text):,} characters (catastrophic backtracking?)") from None
    if sum(map(len, chunks)) != len(text):  # matches never overlap: this many characters means all of them
        raise ValueError("the tokenizer's split pattern does not match every character of the text "
                         "(the unmatched ones would be lost)")
    return chunks


def check_token_id(index: object, what: str) -> int:
    """`index` if it is an int in [0, MAX_TOKEN_ID], else ValueError naming `what`."""
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_TOKEN_ID:
        raise ValueError(f"{what} must be an integer id >= 0 and at most {MAX_TOKEN_ID:,}, got {index!r}")
    return index


def check_merge_count(count: int) -> None:
    if count > MAX_TOKEN_ID + 1 - 256:
        raise ValueError(f"{count:,} merges, more than the bound of {MAX_TOKEN_ID + 1 - 256:,}")


def check_merges(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """`{pair: 256 + i}` for the i-th pair of ids >= 0, after checking each joins two earlier ids into a new byte
    string and that all tokens together fit in MAX_VOCAB_BYTES.

    Each token's length is checked against the bound before its bytes are built, so a file of a few
    doubling merges (2**40 bytes) is refused without allocating them."""
    check_merge_count(len(pairs))
    vocab = [bytes([index]) for index in range(256)]
    known_tokens = set(vocab)
    total = 256
    merges: dict[tuple[int, int], int] = {}
    for first, second in pairs:
        new_id = 256 + len(merges)
        if max(first, second) >= new_id:
            raise ValueError(f"merge {new_id} refers to unknown ids {first} {second}")
        length = len(vocab[first]) + len(vocab[second])
        total += length
        if total > MAX_VOCAB_BYTES:
            raise ValueError(f"the tokens of merges 256..{new_id} add up to more than {MAX_VOCAB_BYTES:,} bytes, "
                             f"the bound on a vocabulary (merge {new_id} alone is {length:,} bytes)")
        token = vocab[first] + vocab[second]
        if token in known_tokens:
            raise ValueError(f"merge {new_id} ({first} {second}) repeats an existing token")
        vocab.append(token)
        known_tokens.add(token)
        merges[first, second] = new_id
    return merges


def check_special_tokens(special_tokens: dict[str, int], first_free_id: int) -> None:
    """Non-empty strings with distinct ids in [first_free_id, MAX_TOKEN_ID]."""
    for token, index in special_tokens.items():
        if not isinstance(token, str) or not token:
            raise ValueError(f"a special token must be a non-empty string, got {token!r}")
        check_token_id(index, f"special token {token!r}")
        if index < first_free_id:
            raise ValueError(f"special token {token!r} needs an id >= {first_free_id} "
                             f"(the first id after the merges), got {index!r}")
    if len(set(special_tokens.values())) != len(special_tokens):
        raise ValueError(f"special tokens must have distinct ids, got {special_tokens}")
