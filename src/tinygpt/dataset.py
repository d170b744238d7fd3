"""Data: token files cached on disk, datasets of (input_ids, target_ids) windows, and batching.

A corpus is tokenised once into a flat uint16/uint32 file (keyed by the corpus bytes and the
tokenizer) and read back through a memory map, so a corpus larger than RAM can train.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import stat
import struct
import warnings
from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
import regex

from tinygpt.files import decode_utf8, file_kind, open_regular, regular_file
from tinygpt.serialization import atomic_write
from tinygpt.tensor import Tensor
from tinygpt.tokenizer import BPETokenizer, can_cut_at_newlines

TEXT_BLOCK_CHARS = 1 << 22
MAX_UNCUT_CHARS = 1 << 24  # tokenising holds this much text at most: a run without a place to cut is refused
SAFE_CUT = regex.compile(r"(?r)[\p{L}\p{N}](?=[^\p{L}\p{N}])")  # searched backwards: the last place to cut
CACHE_MAGIC = b"TGTOKv1\0"
CACHE_HEADER = struct.Struct("<8sQ32s")  # magic, token count, SHA-256 of the ids


def default_corpus_path() -> Path:
    """Path of Tiny Shakespeare, the corpus that ships inside the package."""
    return Path(str(resources.files("tinygpt").joinpath("data", "tinyshakespeare.txt")))


def default_cache_dir() -> Path:
    """Where token files go: `$TINYGPT_CACHE_DIR`, else `~/.cache/tinygpt`."""
    return Path(os.environ.get("TINYGPT_CACHE_DIR") or Path.home() / ".cache" / "tinygpt")


def tokenizer_fingerprint(tokenizer: BPETokenizer) -> str:
    """A hash of everything that decides the ids: the pattern (and how it is compiled), the merges and the
    special tokens."""
    description = "\n".join([
        tokenizer.pattern + ("\n(compiled as the original TinyGPT did)" if tokenizer.original_format else ""),
        repr(sorted(tokenizer.merges.items(), key=lambda item: item[1])),
        repr(sorted(tokenizer.special_tokens.items())),
    ])
    return hashlib.sha256(description.encode("utf-8")).hexdigest()


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex, read a block at a time (a regular file: a FIFO is refused, not waited on)."""
    digest = hashlib.sha256()
    with open_regular(path, "file") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_text_blocks(path: Path, tokenizer: BPETokenizer, block_chars: int) -> Iterator[str]:
    """Yield the file's text in pieces that the tokenizer may encode one at a time, holding about one block.

    With the GPT-2 and GPT-4 patterns, a chunk always ends after a letter or digit that is followed by another
    kind of character (a space, a line ending, punctuation), and matching the text before that place never
    looks past it, so cutting there changes no id, whatever the line endings (see `_last_safe_cut`). Other
    patterns give no such guarantee: their text comes as one piece. A NUL byte (a binary file) or a position
    that is not UTF-8 is refused with its offset in the file.
    """
    splits_in_pieces = can_cut_at_newlines(tokenizer.pattern) and not tokenizer.original_format
    carry = ""
    for text in _decoded_blocks(path, block_chars):
        if not splits_in_pieces:
            carry += text
            continue
        searched_from = max(len(carry) - 1, 0)
        text = carry + text
        cut = _last_safe_cut(text, searched_from, tokenizer.special_tokens)
        if cut:
            yield text[:cut]
        carry = text[cut:]
        if len(carry) > MAX_UNCUT_CHARS:
            raise ValueError(f"corpus file {path} has more than {MAX_UNCUT_CHARS:,} characters in a row without a "
                             "letter or digit followed by another character: no place to cut it for tokenising")
    if carry:
        yield carry


def _decoded_blocks(path: Path, block_chars: int) -> Iterator[str]:
    """The UTF-8 text of a file, about block_chars characters at a time, exactly as stored ("\r\n" kept)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file handed to the decoder so far
    with open_regular(path, "corpus file") as file:
        while True:
            data = file.read(block_chars)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as error:
                raise ValueError(f"corpus file {path} is not UTF-8 text ({error.reason} at byte "
                                 f"{offset - pending + error.start:,})") from None
            if "\0" in text:
                where = offset - pending + len(text[:text.index("\0")].encode("utf-8"))
                raise ValueError(f"corpus file {path} holds a NUL byte (at byte {where:,}): it is not a text file")
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def _last_safe_cut(text: str, searched_from: int, special_tokens: dict[str, int]) -> int:
    """The last index `i` >= searched_from + 1 where text[i - 1] is a letter or digit and text[i] is not, and no
    special token spans i; else 0.

    Each alternative of the GPT-2 / GPT-4 patterns that consumes a letter or digit stops at the first other
    character (possessive runs, `\\p{N}{1,3}`, contractions), and the alternatives that look ahead or at the end
    of the text (`\\s+(?!\\S)`, `\\s++$`) start on whitespace, so none reaches across i: text[:i] splits into
    the chunks the whole text has before i, and a chunk starts at i.
    """
    end = len(text) - max(map(len, special_tokens), default=1) + 1  # a special token around a cut is all in text
    while match := SAFE_CUT.search(text, searched_from, end):
        cut = match.end()
        if not any(token in text[max(cut - len(token) + 1, 0):cut + len(token) - 1] for token in special_tokens):
            return cut
        end = match.start() + 1
    return 0


def check_corpus_file(path: str | Path) -> Path:
    """The path of an existing, non-empty regular file; FileNotFoundError or ValueError that say which it is not."""
    path = regular_file(path, "corpus file")
    if path.stat().st_size == 0:
        raise ValueError(f"corpus file {path} is empty")
    return path


def read_corpus_text(path: str | Path) -> str:
    """The whole text of a corpus file (checked by check_corpus_file); ValueError naming the byte if not UTF-8."""
    path = check_corpus_file(path)
    with open_regular(path, "corpus file") as file:
        return decode_utf8(file.read(), f"corpus file {path}")


def tokenize_corpus(data_file_path: str | Path, tokenizer: BPETokenizer,
                    cache_dir: str | Path | None = None) -> np.memmap:
    """Token ids of a UTF-8 text file, encoded once, cached on disk and memory-mapped.

    The cache file is named after a hash of the file's bytes and `tokenizer_fingerprint`, so a
    changed corpus or tokenizer gets a new file. Special tokens in the text are recognised. The
    file starts with a header (token count and SHA-256 of the ids); a cache that does not match
    its header, or holds an id beyond the tokenizer's, is rebuilt with a warning.
    """
    data_file_path = check_corpus_file(data_file_path)
    largest_id = max(tokenizer.vocab)
    dtype = np.dtype(np.uint16 if largest_id < 2**16 else np.uint32)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache_dir / (f"{data_file_path.stem}-{file_digest(data_file_path)[:16]}-"
                              f"{tokenizer_fingerprint(tokenizer)[:16]}.{dtype.name}.tokens")
    if cache_file.exists():
        problem = _cache_problem(cache_file, dtype, largest_id)
        if problem is None:
            return np.memmap(cache_file, dtype=dtype, mode="r", offset=CACHE_HEADER.size)
        warnings.warn(f"token cache {cache_file} {problem}: rebuilding it", stacklevel=2)

    def write_tokens(temporary: str) -> None:
        count, digest = 0, hashlib.sha256()
        with open(temporary, "wb") as file:
            file.write(bytes(CACHE_HEADER.size))
            for text in _read_text_blocks(data_file_path, tokenizer, TEXT_BLOCK_CHARS):
                ids = np.asarray(tokenizer.encode(text, allowed_special="all"), dtype=dtype).tobytes()
                count += len(ids) // dtype.itemsize
                digest.update(ids)
                file.write(ids)
            file.seek(0)
            file.write(CACHE_HEADER.pack(CACHE_MAGIC, count, digest.digest()))
    atomic_write(cache_file, write_tokens)
    return np.memmap(cache_file, dtype=dtype, mode="r", offset=CACHE_HEADER.size)


def _cache_problem(cache_file: Path, dtype: np.dtype, largest_id: int) -> str | None:
    """Why a token cache cannot be used (its length, checksum or ids disagree with its header), or None."""
    status = cache_file.stat()
    if not stat.S_ISREG(status.st_mode):
        return f"is {file_kind(status.st_mode)}, not a regular file"
    size = status.st_size
    with open_regular(cache_file, "token cache") as file:
        header = file.read(CACHE_HEADER.size)
        if len(header) < CACHE_HEADER.size:
            return "is shorter than its header"
        magic, count, expected_digest = CACHE_HEADER.unpack(header)
        if magic != CACHE_MAGIC:
            return "has no TinyGPT token-cache header"
        if size != CACHE_HEADER.size + count * dtype.itemsize:
            return f"holds {(size - CACHE_HEADER.size) // dtype.itemsize:,} tokens, its header says {count:,}"
        digest = hashlib.sha256()
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.digest() != expected_digest:
        return "does not match its checksum"
    if count and int(np.memmap(cache_file, dtype=dtype, mode="r", offset=CACHE_HEADER.size).max()) > largest_id:
        return f"holds ids beyond the tokenizer's largest, {largest_id}"
    return None


def get_batch(tokens: np.ndarray, block_size: int, batch_size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`batch_size` random windows of `tokens`: inputs x and next-token targets y, int32 (B, T)."""
    if len(tokens) < block_size + 1:
        raise ValueError(f"need at least block_size + 1 = {block_size + 1} tokens, got {len(tokens)}")
    starts = rng.integers(0, len(tokens) - block_size, size=batch_size)
    windows = np.asarray(tokens[starts[:, None] + np.arange(block_size + 1)], dtype=np.int32)
    return windows[:, :-1], windows[:, 1:]


def train_val_split(tokens: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The first `1 - val_fraction` of the tokens for training, the rest for validation (views)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:split], tokens[split:]


class Dataset(ABC):
    """A sized collection of items; an item is a tuple of arrays (one per field)."""

    @abstractmethod
    def __getitem__(self, index: int):
        """The item at `index`."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of items."""


class TextDataset(Dataset):
    """Every window of a tokenised text file: item i is (tokens[i:i+T], tokens[i+1:i+T+1]), int32.

    T = max_seq_length; the targets are the inputs shifted by one token, and there are
    len(tokens) - T items (as the original TinyGPT). The tokens come from `tokenize_corpus`.
    """

    def __init__(self, data_file_path: str | Path, tokenizer: BPETokenizer, max_seq_length: int,
                 cache_dir: str | Path | None = None):
        if not isinstance(max_seq_length, int) or max_seq_length < 1:
            raise ValueError(f"max_seq_length must be a positive integer, got {max_seq_length!r}")
        self.tokens = tokenize_corpus(data_file_path, tokenizer, cache_dir)
        self.max_seq_length = max_seq_length
        if len(self.tokens) < max_seq_length + 1:
            raise ValueError(f"corpus {data_file_path} has {len(self.tokens)} tokens, fewer than "
                             f"max_seq_length + 1 = {max_seq_length + 1}")

    def __len__(self) -> int:
        return len(self.tokens) - self.max_seq_length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a TextDataset of {len(self)} items")
        start = index % len(self)
        window = np.asarray(self.tokens[start:start + self.max_seq_length + 1], dtype=np.int32)
        return window[:-1], window[1:]


class DatasetHandler:
    """Batches of a Dataset: an iterator (`iter()` starts an epoch, `next()` gives its next batch),
    with `len()` and `handler[i]`.

    A batch is a tuple with one Tensor per item field (an item that is not a tuple is one field),
    the items stacked along a new first axis (integers as int32, floats as float32). With `shuffle`, epoch e visits the items in the
    order drawn from `seed` and e, so every epoch differs and a run is reproducible.
    """

    def __init__(self, dataset: Dataset, batch_size: int, drop_last: bool = False,
                 shuffle: bool = False, seed: int | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.epoch = 0
        self._epoch_batches: Iterator[tuple[Tensor, ...]] | None = None

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.dataset) // self.batch_size
        return -(-len(self.dataset) // self.batch_size)

    def item_order(self, epoch: int) -> np.ndarray:
        """The order in which `epoch` visits the dataset's items."""
        if not self.shuffle:
            return np.arange(len(self.dataset))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        """Batch `index` of the current epoch."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        index %= len(self)
        order = self.item_order(self.epoch)
        return self._collate(order[index * self.batch_size:(index + 1) * self.batch_size])

    def __iter__(self) -> "DatasetHandler":
        """Start a pass over the current epoch's batches."""
        self._epoch_batches = self._batches_of_epoch()
        return self

    def __next__(self) -> tuple[Tensor, ...]:
        """The next batch of the pass in progress (one starts if none has); StopIteration at its end."""
        if self._epoch_batches is None:
            iter(self)
        return next(self._epoch_batches)

    def _batches_of_epoch(self) -> Iterator[tuple[Tensor, ...]]:
        order = self.item_order(self.epoch)
        for index in range(len(self)):
            yield self._collate(order[index * self.batch_size:(index + 1) * self.batch_size])
        self.epoch += 1

    def _collate(self, indices: np.ndarray) -> tuple[Tensor, ...]:
        items = [self.dataset[int(index)] for index in indices]
        if not isinstance(items[0], tuple):
            items = [(item,) for item in items]
        return tuple(Tensor(_as_tensor_array(np.stack([item[field] for item in items])))
                     for field in range(len(items[0])))


def _as_tensor_array(array: np.ndarray) -> np.ndarray:
    """Integers become int32 and floats float32, the dtypes of TinyGPT tensors."""
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int32, copy=False)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    return array
