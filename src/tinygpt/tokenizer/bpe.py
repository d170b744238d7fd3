"""Byte-level BPE as minbpe shows it: count the pairs, merge the most frequent, encode by lowest rank.

Ids 0..255 are the raw bytes; merge i creates id 256 + i, so a merge's id is also its rank. Training
(`PairStatistics`) keeps the pair counts up to date merge by merge instead of re-counting them with
`get_stats`; encoding (`encode_chunk`) merges the pair of lowest rank first, as tiktoken does. fast.py
compiles the same encoding loop for many chunks at once.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Sequence


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


def encode_chunk(chunk: bytes, merges: dict[tuple[int, int], int]) -> list[int]:
    """BPE of one pre-split chunk: repeatedly merge the adjacent pair of lowest rank (the leftmost on a tie).

    The parts form a linked list over start offsets (`following`, `preceding`; a merged-away part gets
    id -1) and the pairs wait in a heap of (rank, left start), so a chunk of n bytes costs O(n log n) and
    the bytes are never sliced. An entry whose parts have changed since it was pushed is skipped.
    """
    ids, length = list(chunk), len(chunk)
    following, preceding = list(range(1, length + 1)), list(range(-1, length - 1))
    heap = [(rank, start) for start, pair in enumerate(zip(ids, ids[1:])) if (rank := merges.get(pair)) is not None]
    heapq.heapify(heap)
    while heap:
        rank, left = heapq.heappop(heap)
        right = following[left]
        if ids[left] == -1 or right == length or merges.get((ids[left], ids[right])) != rank:
            continue
        ids[left], ids[right] = rank, -1
        following[left] = following[right]
        neighbours = [(left, following[left])] if following[left] < length else []
        if following[left] < length:
            preceding[following[left]] = left
        neighbours += [(preceding[left], left)] if left > 0 else []
        for start, end in neighbours:
            if (rank := merges.get((ids[start], ids[end]))) is not None:
                heapq.heappush(heap, (rank, start))
    return [index for index in ids if index != -1]


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
        (b, y) lose the chunk's frequency, (x, Z) and (Z, y) gain it. The chunk is merged in place, left
        to right, so `x` is already merged and back-to-back occurrences (`a b a b` -> `Z Z`) count right.
        """
        first, second = pair
        counts, where, created = self.counts, self.where, set()
        for index in where.pop(pair):
            word, freq = self.words[index], self.freqs[index]
            found = -1
            try:
                while True:  # each `first`, found by list.index (in C), until it raises; the word changes in place
                    found = word.index(first, found + 1)
                    if found + 1 == len(word) or word[found + 1] != second:
                        continue
                    if found > 0:
                        left = word[found - 1]
                        counts[left, first] -= freq
                        counts[left, new_id] += freq
                        created.add((left, new_id))
                        where[left, new_id].add(index)
                    if found + 2 < len(word):
                        right = word[found + 2]
                        counts[second, right] -= freq
                        counts[new_id, right] += freq
                        created.add((new_id, right))
                        where[new_id, right].add(index)
                    word[found:found + 2] = (new_id,)
            except ValueError:
                pass
        del counts[pair]
        for new_pair in created:
            heapq.heappush(self.heap, (-counts[new_pair], new_pair))
