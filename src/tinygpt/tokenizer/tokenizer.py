"""BPETokenizer: the steps of bpe.py behind one object that trains, encodes, decodes, saves and loads.

Text is first split into chunks by the pattern (patterns.py); each distinct chunk is encoded once (fast.py)
and kept in a cache, so a chunk seen before costs a dictionary look-up.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np
import regex
from tqdm import tqdm

from tinygpt.tensor import Tensor
from tinygpt.tokenizer.bpe import PairStatistics
from tinygpt.tokenizer.checks import MAX_TOKEN_ID, MAX_VOCAB_BYTES, check_special_tokens
from tinygpt.tokenizer.fast import MergeTable, gather
from tinygpt.tokenizer.formats import model_text, read_model, render_token, vocab_text, write_text
from tinygpt.tokenizer.patterns import RegexPatterns, splitter

REPLACEMENT_CHARACTER = "\ufffd".encode("utf-8")
CHUNK_CACHE_LIMIT = 1_000_000
ANSI_BACKGROUNDS = (41, 42, 43, 44, 45, 46)


def alternation(tokens: Iterable[str]) -> regex.Pattern:
    """A pattern that matches (and captures) any of `tokens`, the longest first where one begins another."""
    return regex.compile("(" + "|".join(regex.escape(token) for token in sorted(tokens, key=len, reverse=True)) + ")")


class BPETokenizer:
    """Byte-level BPE with a regex pre-split (GPT-2 / GPT-4 style) and optional special tokens."""

    def __init__(self, regex_pattern: str = RegexPatterns.GPT4):
        self.special_tokens: dict[str, int] = {}
        self._use_pattern(regex_pattern, original=False)
        self.merges = {}

    @property
    def pattern(self) -> str:
        """The regex that splits text into chunks before BPE; assigning one makes it ours (not the original's)."""
        return self._pattern

    @pattern.setter
    def pattern(self, pattern: str) -> None:
        self._use_pattern(pattern, original=False)

    def _use_pattern(self, pattern: str, original: bool) -> None:
        """Split with `pattern`, read as the original TinyGPT read it (`re`, verbose) if `original`."""
        self._split, self._split_distinct = splitter(pattern, original)
        self._pattern, self.original_format = pattern, original

    def split_into_chunks(self, text: str) -> list[str]:
        """The chunks of `text`: every match of the pattern, in order (see checks.py for the timeout)."""
        return self._split(text)

    @property
    def merges(self) -> dict[tuple[int, int], int]:
        """The learnt merges `{(id_a, id_b): new_id}`; assigning new ones rebuilds `vocab`."""
        return self._merges

    @merges.setter
    def merges(self, merges: dict[tuple[int, int], int]) -> None:
        self._merges = dict(merges)
        self._rebuild_vocab()

    # ---- training ------------------------------------------------------------------------------------------

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

        chunks, which = self._split_distinct(text_corpus)
        chunk_counts = dict(zip(chunks, np.bincount(which).tolist()))
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
        """Derive `vocab` ({id: bytes}) and the encoder's tables, and empty the chunk cache."""
        vocab = {index: bytes([index]) for index in range(256)}
        for (first, second), new_id in sorted(self.merges.items(), key=lambda item: item[1]):
            vocab[new_id] = vocab[first] + vocab[second]
        # a chunk that is a whole token is that token, as tiktoken checks first: the cache starts with them
        self._whole_tokens = {}
        for index, token in vocab.items():
            try:
                self._whole_tokens[token.decode("utf-8")] = [index]
            except UnicodeDecodeError:
                pass  # no chunk of text is these bytes
        for token, index in self.special_tokens.items():
            vocab[index] = token.encode("utf-8")
        self.vocab = vocab
        self._chunk_cache: dict[str, list[int]] = dict(self._whole_tokens)
        self._merge_table: MergeTable | None = None  # built on first use
        self._special_pattern = alternation(self.special_tokens) if self.special_tokens else None

    def register_special_tokens(self, special_tokens: dict[str, int]) -> None:
        """Make `special_tokens` ({text: id}) the special tokens, replacing those registered before (as the
        original TinyGPT); their ids must be distinct and lie above the learnt vocabulary."""
        check_special_tokens(special_tokens, 256 + len(self.merges))
        self.special_tokens = dict(special_tokens)
        self._rebuild_vocab()

    # ---- encoding and decoding -----------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text` ignoring special tokens."""
        if not isinstance(text, str):
            raise TypeError(f"encode needs a str, got {type(text).__name__} (decode bytes to text first)")
        if not self.merges:
            return list(text.encode("utf-8"))
        chunks, which = self._split_distinct(text)
        cache = self._chunk_cache
        missing = [chunk for chunk in chunks if chunk not in cache]
        if len(cache) + len(missing) > CHUNK_CACHE_LIMIT:
            cache.clear()
            cache.update(self._whole_tokens)
            missing = [chunk for chunk in chunks if chunk not in cache]
        if missing:
            if self._merge_table is None:
                self._merge_table = MergeTable(self.merges)
            cache.update(zip(missing, self._merge_table.encode_chunks([chunk.encode("utf-8") for chunk in missing])))
        ids = [cache[chunk] for chunk in chunks]
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        return gather(np.fromiter(chain.from_iterable(ids), np.int64, lengths.sum()), lengths, which).tolist()

    def encode(self, text: str, allowed_special: str | set[str] = "none_raise") -> list[int]:
        """Encode `text` to ids.

        `allowed_special`: "all" (every registered special token is recognised), "none" (special
        tokens are ordinary text), "none_raise" (like "none", but a special token in `text`
        raises ValueError) or a set of the special tokens to recognise (others are ordinary text).
        """
        if allowed_special == "none_raise" and self._special_pattern and (found := self._special_pattern.search(text)):
            raise ValueError(f"text contains the special token {found.group()!r}; pass "
                             f"allowed_special='all' or a set to encode it as a special token")
        if allowed_special in ("none", "none_raise"):
            specials = {}
        elif allowed_special == "all":
            specials = self.special_tokens
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

        ids = []
        for position, part in enumerate(alternation(specials).split(text)):
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

    # ---- batches of ids as Tensors -------------------------------------------------------------------------

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
        width = max_length if padding_type == "max_length" else max(lengths, default=0)
        if padding_type == "none" and len(set(lengths)) > 1:
            raise ValueError(f"texts encode to different lengths {sorted(set(lengths))}; "
                             f"use padding_type='longest' or 'max_length'")
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
        return (Tensor(ids_array), Tensor(mask)) if return_attention_mask else Tensor(ids_array)

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

    # ---- saving and loading --------------------------------------------------------------------------------

    def save(self, file_prefix: str | Path) -> None:
        """Write `<prefix>.model` (read back by `load`; in the original TinyGPT's layout if it was read
        from one) and `<prefix>.vocab` (for humans)."""
        texts = {".model": model_text(self.pattern, self.special_tokens, self.merges, self.original_format),
                 ".vocab": vocab_text(self.vocab, self.merges)}
        for suffix, text in texts.items():
            write_text(str(file_prefix) + suffix, text)

    def load(self, model_file: str | Path) -> None:
        """Read a `.model` file written by `save`, or by the original TinyGPT (see formats.py);
        a corrupt or foreign file raises ValueError."""
        original, pattern, special_tokens, merges = read_model(Path(model_file))
        self._use_pattern(pattern, original)
        self.special_tokens = special_tokens
        self.merges = merges
