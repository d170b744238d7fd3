"""bpe.encode_chunk compiled with numba, for many chunks in one call: the same loop on arrays.

The merges live in an open-addressing hash table (`MergeTable`): a pair (a, b) is the key a * 2^24 + b
(ids are below 2^24, checks.MAX_TOKEN_ID), its value the merged id, which is also its rank. Each chunk is
a slice of one buffer of bytes; its parts are a linked list and its pairs wait in a binary heap of
rank * 2^32 + left start, so a chunk of n bytes costs O(n log n), as in bpe.encode_chunk. Where numba
cannot be imported, bpe.encode_chunk runs for each chunk instead. numba is imported at a tokenizer's first split
(training splits too), and these loops compiled (or read from numba's cache) at its first encode (`prepare`): a
command that splits and encodes nothing (a run on an already tokenised corpus) never waits for them.
"""
from __future__ import annotations

import functools
import threading
from typing import Callable

import numpy as np

from tinygpt.tokenizer.bpe import encode_chunk

LOOPS = ("_slot", "lookup", "heap_push", "heap_pop", "push_pair", "encode_one", "fill_table", "encode_all")
_compiling = threading.RLock()  # re-entered by a warm-up, which calls prepare() again


@functools.cache
def jit():
    """numba.njit, numba imported at the first call; None where numba cannot be imported or its DISABLE_JIT is on
    (these loops would then run as Python, slower than bpe.encode_chunk and `regex`)."""
    from tinygpt.kernels import prepare_numba  # numba's cache directory, as for the model's kernels

    try:
        prepare_numba()
    except ImportError:
        return None
    import numba

    return None if numba.config.DISABLE_JIT else numba.njit


def compile_loops(namespace: dict, names: tuple[str, ...], warm_up: Callable[[], object]) -> bool:
    """Whether the compiled loops are in place: the first time, replace the functions `names` of a module's globals
    by numba's compilations of them (a call among them then reaches the compiled one) and run warm_up, which
    compiles them or reads them from numba's cache. False where numba cannot compile."""
    with _compiling:
        if jit() is None:
            return False
        if not namespace.get("_compiled"):
            for name in names:
                namespace[name] = jit()(cache=True)(namespace[name])
            namespace["_compiled"] = True
            warm_up()
        return True


def prepare() -> bool:
    """This file's loops compiled (read from numba's cache after the first time); whether they are."""
    return compile_loops(globals(), LOOPS, lambda: MergeTable({(97, 97): 256}).encode_chunks([b"aaa"]))


ID_BITS = 24
EMPTY = -1


class MergeTable:
    """The merges as the arrays the kernel reads: keys (EMPTY where free) and values, of a power-of-two size."""

    def __init__(self, merges: dict[tuple[int, int], int]):
        size = 1 << max(4, (2 * len(merges)).bit_length())
        self.keys = np.full(size, EMPTY, dtype=np.int64)
        self.values = np.zeros(size, dtype=np.int64)
        self.merges = merges
        self.compiled = prepare()
        if self.compiled and merges:
            pairs = np.array(list(merges), dtype=np.int64)
            fill_table(pairs[:, 0] << ID_BITS | pairs[:, 1], np.fromiter(merges.values(), np.int64, len(merges)),
                       self.keys, self.values)

    def encode_chunks(self, chunks: list[bytes]) -> list[list[int]]:
        """bpe.encode_chunk of each chunk."""
        if not self.compiled:
            return [encode_chunk(chunk, self.merges) for chunk in chunks]
        data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
        ends = np.cumsum(np.fromiter(map(len, chunks), np.int64, len(chunks)))
        ids, id_ends = encode_all(data, ends, self.keys, self.values)
        flat, id_ends = ids.tolist(), id_ends.tolist()
        return [flat[start:end] for start, end in zip([0] + id_ends, id_ends)]


def gather(flat_ids: np.ndarray, lengths: np.ndarray, which: np.ndarray) -> np.ndarray:
    """The ids of a text's chunks one after another, where distinct chunk d has the `lengths[d]` ids that
    start at `flat_ids[sum(lengths[:d])]` and chunk c of the text is distinct chunk `which[c]`."""
    offsets = np.cumsum(lengths) - lengths
    counts = lengths[which]
    ends = np.cumsum(counts)
    return flat_ids[np.repeat(offsets[which] - (ends - counts), counts) + np.arange(ends[-1] if len(ends) else 0)]


def _slot(key, size):
    """Where the table looks first for `key`: a multiplicative hash into `size` (a power of two) slots."""
    return ((key * 0x9E3779B1) >> 16) & (size - 1)


def fill_table(keys, values, table_keys, table_values):
    size = len(table_keys)
    for index in range(len(keys)):
        slot = _slot(keys[index], size)
        while table_keys[slot] != EMPTY:
            slot = (slot + 1) & (size - 1)
        table_keys[slot] = keys[index]
        table_values[slot] = values[index]


def lookup(first, second, table_keys, table_values):
    """The merged id of (first, second), or -1 if they make no token."""
    key = (first << ID_BITS) | second
    size = len(table_keys)
    slot = _slot(key, size)
    while table_keys[slot] != EMPTY:
        if table_keys[slot] == key:
            return table_values[slot]
        slot = (slot + 1) & (size - 1)
    return -1


def heap_push(heap, count, entry):
    """Add `entry` to the binary min-heap `heap[:count]`; the new count."""
    position = count
    while position > 0 and heap[(position - 1) // 2] > entry:
        heap[position] = heap[(position - 1) // 2]
        position = (position - 1) // 2
    heap[position] = entry
    return count + 1


def heap_pop(heap, count):
    """Remove the smallest entry of `heap[:count]` (it is `heap[0]` before the call)."""
    count -= 1
    last, position = heap[count], 0
    while 2 * position + 1 < count:
        child = 2 * position + 1
        if child + 1 < count and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= last:
            break
        heap[position] = heap[child]
        position = child
    heap[position] = last
    return count


def push_pair(heap, count, ids, left, right, table_keys, table_values):
    rank = lookup(ids[left], ids[right], table_keys, table_values)
    return count if rank < 0 else heap_push(heap, count, (rank << 32) | left)


def encode_one(ids, following, preceding, heap, length, table_keys, table_values):
    """bpe.encode_chunk on `ids[:length]` (the chunk's bytes), in place; merged-away parts become -1."""
    count = 0
    for start in range(length):
        following[start], preceding[start] = start + 1, start - 1
        if start + 1 < length:
            count = push_pair(heap, count, ids, start, start + 1, table_keys, table_values)
    while count:
        rank, left = heap[0] >> 32, heap[0] & 0xFFFFFFFF
        count = heap_pop(heap, count)
        right = following[left]
        if ids[left] == -1 or right == length or lookup(ids[left], ids[right], table_keys, table_values) != rank:
            continue
        ids[left], ids[right] = rank, -1
        following[left] = following[right]
        if following[left] < length:
            preceding[following[left]] = left
            count = push_pair(heap, count, ids, left, following[left], table_keys, table_values)
        if left > 0:
            count = push_pair(heap, count, ids, preceding[left], left, table_keys, table_values)


def encode_all(data, ends, table_keys, table_values):
    """The ids of every chunk (chunk c is `data[ends[c - 1]:ends[c]]`), one after another, and where each
    chunk's ids end."""
    longest, start = 0, 0
    for end in ends:
        longest, start = max(longest, end - start), end
    ids = np.empty(longest, np.int64)
    following, preceding = np.empty(longest, np.int64), np.empty(longest, np.int64)
    heap = np.empty(3 * longest + 1, np.int64)  # n - 1 pairs, then at most two per merge
    out, out_ends = np.empty(len(data), np.int64), np.empty(len(ends), np.int64)
    written, start = 0, 0
    for chunk in range(len(ends)):
        length = ends[chunk] - start
        for position in range(length):
            ids[position] = data[start + position]
        encode_one(ids, following, preceding, heap, length, table_keys, table_values)
        for position in range(length):
            if ids[position] != -1:
                out[written] = ids[position]
                written += 1
        out_ends[chunk], start = written, ends[chunk]
    return out[:written], out_ends

