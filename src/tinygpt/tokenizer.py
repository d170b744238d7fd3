"""Byte-level BPE tokenizer: learn merges from a corpus, encode text to ids and back.

Ids 0..255 are the raw bytes; merge i creates id 256 + i. Training keeps the pair counts up to
date merge by merge instead of re-scanning the corpus; encoding applies merges by rank, as
tiktoken does, so the same merges give the same ids.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter, defaultdict
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import regex
from tqdm import tqdm

from tinygpt.serialization import atomic_write
from tinygpt.tensor import Tensor
from tinygpt.tokenizer_checks import (MAX_TOKEN_ID, MAX_VOCAB_BYTES, check_merge_count, check_merges,
                                      check_special_tokens, check_token_id, compile_pattern, split_with_timeout)
from tinygpt.tokenizer_original import (compile_original_pattern, is_original_layout, original_lines,
                                        parse_original_lines)

MODEL_FORMAT_VERSION = "tinygpt-bpe v1"
REPLACEMENT_CHARACTER = "\ufffd".encode("utf-8")
CHUNK_CACHE_LIMIT = 1_000_000
BATCH_ENCODE_MIN_CHUNKS = 64
BATCH_MAX_CHUNK_BYTES = 64
ANSI_BACKGROUNDS = (41, 42, 43, 44, 45, 46)


class RegexPatterns:
    """Pre-tokenisation patterns, verbatim from tiktoken's `gpt2` and `cl100k_base` encodings."""

    GPT2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
    GPT4 = (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
        r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    )


# The same two patterns for ASCII-only text, written for the standard `re` module, which splits
# ASCII about twice as fast as `regex`. `\s` is spelt out because `re` also counts \x1c-\x1f as
# space, and the possessive quantifiers are dropped (`re` has them only from Python 3.11): after
# each of them comes nothing that could make the match backtrack into it, so they change nothing.
# The tests check these splits equal the originals' on arbitrary ASCII text.
_SPACE = r"\t\n\v\f\r "
ASCII_SPLITTERS = {
    RegexPatterns.GPT2: re.compile(
        rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_SPACE}A-Za-z0-9]+"""
        rf"""|[{_SPACE}]+$|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]"""),
    RegexPatterns.GPT4: re.compile(
        rf"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{{1,3}}| ?[^{_SPACE}A-Za-z0-9]+[\r\n]*"""
        rf"""|[{_SPACE}]+$|[{_SPACE}]*[\r\n]|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]"""),
}


def get_stats(ids: Sequence[int], counts: dict[tuple[int, int], int] | None = None) -> dict[tuple[int, int], int]:
    """How often each pair of consecutive ids occurs, added to `counts` when given (which is returned)."""
    counts = {} if counts is None else counts
    for first, second in zip(ids, ids[1:]):
        counts[first, second] = counts.get((first, second), 0) + 1
    return counts


def merge(ids: Sequence[int], pair: tuple[int, int], idx: int) -> list[int]:
    """`ids` with each occurrence of `pair`, taken left to right without overlap, replaced by `idx`."""
    first, second = pair
    merged, position = [], 0
    while position < len(ids):
        if ids[position] == first and position + 1 < len(ids) and ids[position + 1] == second:
            merged.append(idx)
            position += 2
        else:
            merged.append(ids[position])
            position += 1
    return merged


class PairStatistics:
    """Counts of adjacent id pairs over the unique chunks of a corpus, updated merge by merge.

    `counts[pair]` is the number of occurrences weighted by chunk frequency, `where[pair]` the
    indices of the chunks that contain (or once contained) the pair. A max-heap of
    `(-count, pair)` with lazy deletion yields the best pair: counts of existing pairs only ever
    go down, so a heap entry is an upper bound and a stale one is re-pushed with its true count.
    """

    def __init__(self, chunk_counts: dict[str, int]):
        self.words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        self.freqs = list(chunk_counts.values())
        self.counts: dict[tuple[int, int], int] = defaultdict(int)
        self.where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for index, (word, freq) in enumerate(zip(self.words, self.freqs)):
            for pair in zip(word, word[1:]):
                self.counts[pair] += freq
                self.where[pair].add(index)
        self.heap = [(-count, pair) for pair, count in self.counts.items()]
        heapq.heapify(self.heap)

    def pop_best(self) -> tuple[tuple[int, int], int] | None:
        """Remove and return the most frequent pair and its count (ties: smallest pair of ids)."""
        while self.heap:
            negative_count, pair = heapq.heappop(self.heap)
            count = self.counts.get(pair, 0)
            if count <= 0:
                continue  # the pair no longer occurs anywhere
            if count == -negative_count:
                return pair, count
            heapq.heappush(self.heap, (-count, pair))
        return None

    def merge(self, pair: tuple[int, int], new_id: int) -> None:
        """Merge `pair` into `new_id` in the chunks that contain it and update the counts there.

        Each occurrence `x a b y` -> `x Z y` only changes the neighbouring pairs: (x, a) and
        (b, y) lose the chunk's frequency, (x, Z) and (Z, y) gain it. `x` is read from the
        merged output, so back-to-back occurrences (`a b a b` -> `Z Z`) are counted right.
        """
        first, second = pair
        counts, where = self.counts, self.where
        created_pairs = set()
        for index in where.pop(pair):
            word = self.words[index]
            freq = self.freqs[index]
            merged = []
            position, length = 0, len(word)
            while position < length:
                if word[position] == first and position < length - 1 and word[position + 1] == second:
                    if merged:
                        left = merged[-1]
                        counts[left, first] -= freq
                        counts[left, new_id] += freq
                        created_pairs.add((left, new_id))
                        where[left, new_id].add(index)
                    if position < length - 2:
                        right = word[position + 2]
                        counts[second, right] -= freq
                        counts[new_id, right] += freq
                        created_pairs.add((new_id, right))
                        where[new_id, right].add(index)
                    merged.append(new_id)
                    position += 2
                else:
                    merged.append(word[position])
                    position += 1
            self.words[index] = merged
        del counts[pair]
        for new_pair in created_pairs:
            heapq.heappush(self.heap, (-counts[new_pair], new_pair))


CONTROL_CHARACTER = regex.compile(r"\p{C}")


def render_token(token: bytes) -> str:
    """Printable form of a token: invalid UTF-8 replaced, control characters escaped."""
    text = token.decode("utf-8", errors="replace")
    return CONTROL_CHARACTER.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


class BPETokenizer:
    """Byte-level BPE with a regex pre-split (GPT-2 / GPT-4 style) and optional special tokens."""

    def __init__(self, regex_pattern: str = RegexPatterns.GPT4):
        self.original_format = False
        self.pattern = regex_pattern
        self.special_tokens: dict[str, int] = {}
        self.merges = {}

    @property
    def pattern(self) -> str:
        """The regex that splits text into chunks before BPE."""
        return self._pattern

    @pattern.setter
    def pattern(self, pattern: str) -> None:
        if self.original_format:  # read from the original TinyGPT's file: matching what `re` matched there
            self._compiled_pattern, ascii_pattern = compile_original_pattern(pattern)
            self._split_ascii = partial(split_with_timeout, ascii_pattern)
        else:
            self._compiled_pattern = compile_pattern(pattern)
            ours = ASCII_SPLITTERS.get(pattern)
            self._split_ascii = ours.findall if ours is not None else None
        self._pattern = pattern

    def split_into_chunks(self, text: str) -> list[str]:
        """The chunks of `text`: every match of the pattern, in order (see tokenizer_checks for the timeout)."""
        if self._split_ascii is not None and text.isascii():
            return self._split_ascii(text)
        return split_with_timeout(self._compiled_pattern, text)

    @property
    def merges(self) -> dict[tuple[int, int], int]:
        """The learnt merges `{(id_a, id_b): new_id}`; assigning new ones rebuilds `vocab`."""
        return self._merges

    @merges.setter
    def merges(self, merges: dict[tuple[int, int], int]) -> None:
        self._merges = dict(merges)
        self._rebuild_vocab()

    # ----------------------------------------------------------------------------------------
    # training

    def train(self, text_corpus: str, vocab_size: int, verbose: bool = False) -> None:
        """Learn `vocab_size - 256` merges from `text_corpus` (fewer if no pair is left).

        Each step merges the most frequent adjacent pair; ties go to the smallest `(id_a, id_b)`.
        A pair that spells the bytes of an existing token is skipped (a guard: two different
        pairs would make two ids for one byte string, and encoding by rank needs them unique).
        Training stops early if the tokens would add up to more than MAX_VOCAB_BYTES.
        """
        if not isinstance(vocab_size, int) or vocab_size < 256:
            raise ValueError(f"vocab_size must be an integer >= 256 (the byte tokens), got {vocab_size!r}")
        if vocab_size > MAX_TOKEN_ID + 1:
            raise ValueError(f"vocab_size must be at most {MAX_TOKEN_ID + 1:,}, got {vocab_size:,}")
        if not text_corpus:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        clashing = {token: id_ for token, id_ in self.special_tokens.items() if id_ < vocab_size}
        if clashing:
            raise ValueError(f"special tokens {clashing} have ids below vocab_size {vocab_size}")

        chunk_counts = Counter(self.split_into_chunks(text_corpus))
        statistics = PairStatistics(chunk_counts)
        vocab = {index: bytes([index]) for index in range(256)}
        known_tokens = set(vocab.values())
        vocab_bytes = 256
        merges: dict[tuple[int, int], int] = {}
        num_merges = vocab_size - 256

        progress = tqdm(total=num_merges, desc="BPE merges", disable=not verbose)
        while len(merges) < num_merges:
            best = statistics.pop_best()
            if best is None:
                break  # every chunk is a single token: nothing left to merge
            pair, count = best
            token = vocab[pair[0]] + vocab[pair[1]]
            if token in known_tokens:
                continue  # never seen on real text, but it would break encoding by rank
            vocab_bytes += len(token)
            if vocab_bytes > MAX_VOCAB_BYTES:
                break
            new_id = 256 + len(merges)
            statistics.merge(pair, new_id)
            merges[pair] = new_id
            vocab[new_id] = token
            known_tokens.add(token)
            progress.update(1)
            if verbose and len(merges) % 256 == 0:
                progress.write(f"merge {len(merges)}/{num_merges}: {pair} -> {new_id} "
                               f"[{render_token(token)}] ({count} occurrences)")
        progress.close()
        if verbose and len(merges) < num_merges:
            print(f"stopped after {len(merges)} merges: no pair of tokens is left to merge, or the tokens "
                  f"reached the bound of {MAX_VOCAB_BYTES:,} bytes")

        self.merges = merges

    def _rebuild_vocab(self) -> None:
        """Derive `vocab` ({id: bytes}), the encoder's ranks ({bytes: id}) and reset the cache."""
        vocab = {index: bytes([index]) for index in range(256)}
        for (first, second), new_id in sorted(self.merges.items(), key=lambda item: item[1]):
            vocab[new_id] = vocab[first] + vocab[second]
        self._ranks = {token: index for index, token in vocab.items()}
        for token, index in self.special_tokens.items():
            vocab[index] = token.encode("utf-8")
        self.vocab = vocab
        self._chunk_cache: dict[str, list[int]] = {}
        self._pair_ranks: tuple[np.ndarray, np.ndarray] | None = None  # built on first use by _pair_table
        self._special_pattern = (
            regex.compile("|".join(regex.escape(token) for token in
                                   sorted(self.special_tokens, key=len, reverse=True)))
            if self.special_tokens else None
        )

    def register_special_tokens(self, special_tokens: dict[str, int]) -> None:
        """Make `special_tokens` ({text: id}) the special tokens, replacing those registered before (as the
        original TinyGPT); their ids must be distinct and lie above the learnt vocabulary."""
        check_special_tokens(special_tokens, 256 + len(self.merges))
        self.special_tokens = dict(special_tokens)
        self._rebuild_vocab()

    # ----------------------------------------------------------------------------------------
    # encoding and decoding

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        """BPE of one pre-split chunk: repeatedly merge the adjacent pair of lowest rank.

        A pair of parts (a, b) merges into `merges[a, b]`, whose id is its rank; the leftmost pair wins
        a tie (on a trained vocabulary this is tiktoken's rule: the rank of the joined bytes). The parts
        form a linked list over start offsets (`following`, `preceding`; a merged-away part gets id -1)
        and the pairs wait in a heap of (rank, left start), so a chunk of n bytes costs O(n log n) and
        never slices the bytes. An entry whose parts have changed since it was pushed is skipped.
        """
        whole = self._ranks.get(chunk)
        if whole is not None:  # the whole chunk is a token, as tiktoken checks first
            return [whole]
        merges, ids, length = self._merges, list(chunk), len(chunk)
        following = list(range(1, length + 1))
        preceding = list(range(-1, length - 1))
        heap = [(rank, start) for start, pair in enumerate(zip(ids, ids[1:])) if (rank := merges.get(pair)) is not None]
        heapq.heapify(heap)
        while heap:
            rank, left = heapq.heappop(heap)
            right = following[left]
            if ids[left] == -1 or right == length or merges.get((ids[left], ids[right])) != rank:
                continue
            ids[left], ids[right] = rank, -1
            following[left] = following[right]
            if following[left] < length:
                preceding[following[left]] = left
                self._push_pair(heap, ids, left, following[left])
            if left > 0:
                self._push_pair(heap, ids, preceding[left], left)
        return [index for index in ids if index != -1]

    def _push_pair(self, heap: list, ids: list[int], left: int, right: int) -> None:
        rank = self._merges.get((ids[left], ids[right]))
        if rank is not None:
            heapq.heappush(heap, (rank, left))

    def _encode_chunks(self, chunks: list[bytes]) -> list[list[int]]:
        """`_encode_chunk` for many chunks at once, vectorised with numpy; the same ids.

        The chunks of 2 to BATCH_MAX_CHUNK_BYTES bytes that are not a whole token go into one
        flat array of bytes (the others go through `_encode_chunk`). Each round looks up the rank
        of every adjacent pair, takes per chunk the lowest (rank, position), merges there, and
        retires the chunks with nothing left to merge.
        """
        pair_keys, pair_ranks = self._pair_table()
        no_merge = len(self._ranks)
        ranks = self._ranks
        # None marks the chunks of the batch; a whole token is that token, as in `_encode_chunk`
        encoded = [[ranks[chunk]] if chunk in ranks else None if 1 < len(chunk) <= BATCH_MAX_CHUNK_BYTES
                   else self._encode_chunk(chunk) for chunk in chunks]
        owners = np.array([index for index, ids in enumerate(encoded) if ids is None], dtype=np.int64)
        to_merge = [chunks[index] for index in owners.tolist()]
        ids = np.frombuffer(b"".join(to_merge), dtype=np.uint8).astype(np.int64)
        lengths = np.fromiter(map(len, to_merge), dtype=np.int64, count=len(to_merge))
        def rank_of_pairs(left: np.ndarray) -> np.ndarray:
            """The rank of the pairs (ids[left], ids[left + 1]); no_merge where they make no token."""
            keys = ids[left] * no_merge + ids[np.minimum(left + 1, len(ids) - 1)]
            found = np.minimum(np.searchsorted(pair_keys, keys), len(pair_keys) - 1)
            return np.where(pair_keys[found] == keys, pair_ranks[found], no_merge)

        adjacent_ranks = rank_of_pairs(np.arange(len(ids)))
        while len(lengths):
            ends = np.cumsum(lengths)
            adjacent_ranks[ends - 1] = no_merge  # a chunk's last id starts no pair
            # per chunk the lowest rank, the leftmost on a tie: one minimum of rank * n + position
            lowest = np.minimum.reduceat(adjacent_ranks * len(ids) + np.arange(len(ids)), ends - lengths)
            lowest_rank, position = np.divmod(lowest, len(ids))
            # retire the chunks with no merge left
            finished = lowest_rank == no_merge
            in_finished = np.repeat(finished, lengths)
            finished_ids = ids[in_finished].tolist()
            start = 0
            for owner, end in zip(owners[finished].tolist(), np.cumsum(lengths[finished]).tolist()):
                encoded[owner] = finished_ids[start:end]
                start = end
            # merge the others: the left id becomes the merged token, the right one goes; only
            # the ranks of the two pairs around each merged token change
            merging = ~finished
            ids[position[merging]] = lowest_rank[merging]
            keep = ~in_finished
            keep[position[merging] + 1] = False
            merged_at = position[merging] - np.cumsum(~keep)[position[merging]]
            ids, adjacent_ranks = ids[keep], adjacent_ranks[keep]
            lengths, owners = lengths[merging] - 1, owners[merging]
            changed = np.concatenate([merged_at[merged_at > 0] - 1, merged_at])
            adjacent_ranks[changed] = rank_of_pairs(changed)
        return encoded

    def _pair_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Every merge as a sorted key `a * V + b` (V: the number of learnt tokens) and its rank."""
        if self._pair_ranks is None:
            size = len(self._ranks)
            keys = np.array([first * size + second for first, second in self._merges], dtype=np.int64)
            ranks = np.fromiter(self._merges.values(), dtype=np.int64, count=len(self._merges))
            order = np.argsort(keys)
            self._pair_ranks = (keys[order], ranks[order])
        return self._pair_ranks

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text` ignoring special tokens."""
        if not isinstance(text, str):
            raise TypeError(f"encode needs a str, got {type(text).__name__} (decode bytes to text first)")
        if not self.merges:
            return list(text.encode("utf-8"))
        chunks = self.split_into_chunks(text)
        cache = self._chunk_cache
        try:  # the common case once the cache is warm: every chunk is known
            return list(chain.from_iterable(map(cache.__getitem__, chunks)))
        except KeyError:
            pass
        missing = set(chunks).difference(cache)
        if len(cache) + len(missing) > CHUNK_CACHE_LIMIT:
            cache.clear()
            missing = set(chunks)
        missing_bytes = [chunk.encode("utf-8") for chunk in missing]
        if len(missing_bytes) < BATCH_ENCODE_MIN_CHUNKS:
            cache.update(zip(missing, map(self._encode_chunk, missing_bytes)))
        else:
            cache.update(zip(missing, self._encode_chunks(missing_bytes)))
        return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def encode(self, text: str, allowed_special: str | set[str] = "none_raise") -> list[int]:
        """Encode `text` to ids.

        `allowed_special`: "all" (every registered special token is recognised), "none" (special
        tokens are ordinary text), "none_raise" (like "none", but a special token in `text`
        raises ValueError) or a set of the special tokens to recognise (others are ordinary text).
        """
        if allowed_special == "all":
            specials = self.special_tokens
        elif allowed_special == "none":
            specials = {}
        elif allowed_special == "none_raise":
            found = self._special_pattern.search(text) if self._special_pattern else None
            if found:
                raise ValueError(f"text contains the special token {found.group()!r}; pass "
                                 f"allowed_special='all' or a set to encode it as a special token")
            specials = {}
        elif isinstance(allowed_special, (set, frozenset)):
            unknown = allowed_special - self.special_tokens.keys()
            if unknown:
                raise ValueError(f"allowed_special names unregistered special tokens {sorted(unknown)}")
            specials = {token: self.special_tokens[token] for token in allowed_special}
        else:
            raise ValueError(f"allowed_special must be 'all', 'none', 'none_raise' or a set, "
                             f"got {allowed_special!r}")
        if not specials:
            return self.encode_ordinary(text)

        special_pattern = "(" + "|".join(regex.escape(token) for token in
                                         sorted(specials, key=len, reverse=True)) + ")"
        ids = []
        for position, part in enumerate(regex.split(special_pattern, text)):
            if position % 2 == 1:  # split() puts the captured special tokens at odd positions
                ids.append(specials[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def decode(self, ids: Iterable[int] | np.ndarray | Tensor, unknown_ids: str = "raise") -> str:
        """A 1-D sequence of ids to text; invalid UTF-8 becomes U+FFFD. An id outside the vocabulary raises
        ValueError (as the original TinyGPT), or becomes U+FFFD too with unknown_ids="replace"."""
        if isinstance(ids, Tensor):
            ids = ids.numpy()
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        if unknown_ids not in ("raise", "replace"):
            raise ValueError(f"unknown_ids must be 'raise' or 'replace', got {unknown_ids!r}")
        try:
            token_bytes = [self.vocab.get(index, REPLACEMENT_CHARACTER) for index in ids]
            unknown = next((index for index in ids if index not in self.vocab), None)
        except TypeError:
            wrong = next((index for index in ids if not isinstance(index, int)), ids)
            raise TypeError(f"decode needs a 1-D sequence of int ids, got an element of type "
                            f"{type(wrong).__name__}") from None
        if unknown is not None and unknown_ids == "raise":
            raise ValueError(f"decode: id {unknown} is not in the vocabulary of {len(self.vocab)} tokens")
        return b"".join(token_bytes).decode("utf-8", errors="replace")

    def visualise_tokens(self, ids: Iterable[int], colour: bool = True) -> str:
        """The text of `ids` with token boundaries shown: ANSI background colours, or `|`."""
        pieces = [self.decode([index]) for index in ids]
        if not colour:
            return "|".join(pieces)
        return "".join(f"\x1b[{ANSI_BACKGROUNDS[position % len(ANSI_BACKGROUNDS)]}m{piece}\x1b[0m"
                       for position, piece in enumerate(pieces))

    # ----------------------------------------------------------------------------------------
    # batches of ids as Tensors

    def __call__(self, text_or_list: str | list[str], padding_type: str = "none",
                 padding_token: str = "", max_length: int = -1, truncation: bool = False,
                 return_attention_mask: bool = False):
        """Encode text (a 1-D Tensor) or a list of texts (a 2-D Tensor) into int32 ids.

        Special tokens are recognised. `padding_type`: "none" (all texts must give the same
        length), "longest" or "max_length" (right padding with `padding_token`). `truncation`
        cuts to `max_length`. With `return_attention_mask`, also a mask Tensor (1 token, 0 pad).
        """
        if padding_type not in ("none", "longest", "max_length"):
            raise ValueError(f"padding_type must be 'none', 'longest' or 'max_length', got {padding_type!r}")
        if (truncation or padding_type == "max_length") and max_length <= 0:
            raise ValueError(f"truncation and padding_type='max_length' need max_length > 0, got {max_length}")
        single = isinstance(text_or_list, str)
        texts = [text_or_list] if single else list(text_or_list)
        sequences = [self.encode(text, allowed_special="all") for text in texts]
        if truncation:
            sequences = [ids[:max_length] for ids in sequences]

        lengths = [len(ids) for ids in sequences]
        if padding_type == "none":
            if len(set(lengths)) > 1:
                raise ValueError(f"texts encode to different lengths {sorted(set(lengths))}; "
                                 f"use padding_type='longest' or 'max_length'")
            width = max(lengths, default=0)
        else:
            width = max(lengths, default=0) if padding_type == "longest" else max_length
            if max(lengths, default=0) > width:
                raise ValueError(f"a text encodes to {max(lengths)} tokens, more than max_length "
                                 f"{max_length}; pass truncation=True to cut it")
        padding_id = self._padding_id(padding_token) if min(lengths, default=width) < width else 0

        ids_array = np.full((len(sequences), width), padding_id, dtype=np.int32)
        mask = np.zeros((len(sequences), width), dtype=np.int32)
        for row, ids in enumerate(sequences):
            ids_array[row, :len(ids)] = ids
            mask[row, :len(ids)] = 1
        if single:
            ids_array, mask = ids_array[0], mask[0]
        if return_attention_mask:
            return Tensor(ids_array), Tensor(mask)
        return Tensor(ids_array)

    def _padding_id(self, padding_token: str) -> int:
        """The id that pads: a special token, or text that encodes to exactly one token."""
        if not padding_token:
            raise ValueError("padding needs a padding_token (for example a registered special token)")
        if padding_token in self.special_tokens:
            return self.special_tokens[padding_token]
        ids = self.encode_ordinary(padding_token)
        if len(ids) != 1:
            raise ValueError(f"padding_token {padding_token!r} is not a special token and encodes "
                             f"to {len(ids)} tokens instead of one")
        return ids[0]

    # ----------------------------------------------------------------------------------------
    # saving and loading

    def save(self, file_prefix: str | Path) -> None:
        """Write `<prefix>.model` (read back by `load`; in the original TinyGPT's layout if it was read
        from one) and `<prefix>.vocab` (for humans)."""
        file_prefix = str(file_prefix)
        if self.original_format:
            model_text = "\n".join(original_lines(self.pattern, self.special_tokens, self.merges))
        else:
            lines = [MODEL_FORMAT_VERSION, json.dumps(self.pattern),
                     f"special_tokens {len(self.special_tokens)}"]
            lines += [f"{json.dumps(token)} {index}" for token, index in self.special_tokens.items()]
            lines.append(f"merges {len(self.merges)}")
            lines += [f"{first} {second}" for (first, second), _ in
                      sorted(self.merges.items(), key=lambda item: item[1])]
            model_text = "\n".join(lines) + "\n"
        atomic_write(file_prefix + ".model",
                     lambda temporary: Path(temporary).write_text(model_text, encoding="utf-8", newline="\n"))

        inverted_merges = {new_id: pair for pair, new_id in self.merges.items()}
        vocab_lines = []
        for index, token in self.vocab.items():
            if index in inverted_merges:
                first, second = inverted_merges[index]
                vocab_lines.append(f"[{render_token(self.vocab[first])}][{render_token(self.vocab[second])}]"
                                   f" -> [{render_token(token)}] {index}")
            else:
                vocab_lines.append(f"[{render_token(token)}] {index}")
        vocab_text = "\n".join(vocab_lines) + "\n"
        atomic_write(file_prefix + ".vocab",
                     lambda temporary: Path(temporary).write_text(vocab_text, encoding="utf-8", newline="\n"))

    def load(self, model_file: str | Path) -> None:
        """Read a `.model` file written by `save`, or by the original TinyGPT (see tokenizer_original);
        a corrupt or foreign file raises ValueError."""
        model_file = Path(model_file)
        try:
            lines = model_file.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as error:
            raise ValueError(f"{model_file}: not a TinyGPT BPE model file (not UTF-8 text)") from error
        original = is_original_layout(lines[0])
        if lines[0] != MODEL_FORMAT_VERSION and not original:
            raise ValueError(f"{model_file}: not a TinyGPT BPE model file: first line is "
                             f"{lines[0][:40]!r}, expected {MODEL_FORMAT_VERSION!r} or a quoted pattern "
                             f"(the original TinyGPT's layout)")
        try:
            if original:
                pattern, special_tokens, pairs = parse_original_lines(lines)
                compile_original_pattern(pattern)
                merges = check_merges(pairs)
                check_special_tokens(special_tokens, 256 + len(merges))
            else:
                pattern, special_tokens, merges = self._parse_model_lines(lines[1:])
        except (ValueError, IndexError, regex.error) as error:
            layout = "the original TinyGPT's" if original else "TinyGPT"
            raise ValueError(f"{model_file}: corrupt or truncated {layout} BPE model file: {error}") from error

        self.original_format = original
        self.pattern = pattern
        self.special_tokens = special_tokens
        self.merges = merges

    @staticmethod
    def _parse_model_lines(lines: list[str]) -> tuple[str, dict[str, int], dict[tuple[int, int], int]]:
        """Parse the body of a `.model` file (after the header); raise ValueError on any defect."""
        pattern = json.loads(lines[0])
        if not isinstance(pattern, str):
            raise ValueError("the pattern line is not a JSON string")
        compile_pattern(pattern)

        def section_size(line: str, name: str) -> int:
            label, _, size = line.partition(" ")
            if label != name or not size.isdigit():
                raise ValueError(f"expected a '{name} <count>' line, got {line[:40]!r}")
            return int(size)

        num_special = section_size(lines[1], "special_tokens")
        check_merge_count(num_special)
        special_tokens = {}
        for line in lines[2:2 + num_special]:
            token, _, index = line.rpartition(" ")
            token = json.loads(token)
            if not isinstance(token, str) or not token or token in special_tokens:
                raise ValueError(f"bad special token line {line[:40]!r}")
            special_tokens[token] = check_token_id(int(index), f"special token {token!r}")

        merges_start = 2 + num_special
        num_merges = section_size(lines[merges_start], "merges")
        check_merge_count(num_merges)
        merge_lines = lines[merges_start + 1:merges_start + 1 + num_merges]
        if len(merge_lines) != num_merges or lines[merges_start + 1 + num_merges:] != [""]:
            raise ValueError(f"expected {num_merges} merge lines and a final newline")
        pairs = []
        for line in merge_lines:
            first, second = (int(field) for field in line.split(" "))
            pairs.append((first, second))
        merges = check_merges(pairs)
        check_special_tokens(special_tokens, 256 + num_merges)
        return pattern, special_tokens, merges
