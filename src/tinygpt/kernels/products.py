"""The CPU's matrix products: each product's rows cut into one block per thread, every block a
single-threaded BLAS call (numpy lets go of the GIL inside it), all blocks at once on a small pool of
threads that wait without spinning.

Why not BLAS's own threads: OpenBLAS's threads spin for a while after each product, and the numba
kernels that run between products then find their cores taken (measured: 57 ms per step of the CPU
configuration with BLAS's 2 threads beside numba's, and 4x the CPU time when another process holds a
core). One set of waiting threads for both keeps the cores free. So BLAS runs on one thread once the
CPU kernels load (kernels/__init__.py)."""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Iterator

import numba
import numpy as np
from threadpoolctl import threadpool_limits

# Multiply-adds of a block below which handing it to another thread costs more than it saves: waking a waiting
# thread and hearing back from it takes about 60 us here, and 2^23 multiply-adds about 40 us on one core
# (measured at the shapes of a training step: a 768 x 128 x 128 product is as fast on one thread as on two,
# 768 x 128 x 384 is 1.4x faster on two)
MIN_BLOCK_WORK = 1 << 23
# The other threads start about 20 us late (waking them): this thread takes that much more of a product,
# 2^22 multiply-adds (768 x 128 x 384 on two threads: 237 -> 199 us with 55% of the rows here, measured)
LEAD_WORK = 1 << 22
_pool: ThreadPoolExecutor | None = None
_blas_computes = False  # set by on_blas_threads
_collecting = threading.local()  # .calls: the product calls at_once() collects on this thread, else None


@contextlib.contextmanager
def on_blas_threads(threads: int) -> Iterator[None]:
    """Within this block every product is one BLAS call on BLAS's own `threads` threads (the design this
    replaced; benchmarks/bench_kernels.py --threads compares the two)."""
    global _blas_computes
    before, _blas_computes = _blas_computes, True
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        _blas_computes = before


@contextlib.contextmanager
def at_once() -> Iterator[None]:
    """Within this block this thread's products (every kernel here) are collected and all run together when
    it ends, each on half of the threads (the two gradients of a Linear: one hand-over instead of two, and
    whole rows of work per thread); on one thread, one after another. Their outputs are written only when
    the block ends."""
    if _deferred() is not None:  # already collecting: the outer block runs these too
        yield
        return
    _collecting.calls = []
    try:
        yield
        calls = _collecting.calls
    finally:
        _collecting.calls = None
    if len(calls) > numba.get_num_threads() or _blas_computes:
        for function, arguments in calls:
            function(*arguments)
    elif calls:
        _run_all(calls)


def _deferred() -> list | None:
    return getattr(_collecting, "calls", None)


def _forget_pool() -> None:
    """A forked child has none of its parent's threads: it starts a pool of its own when it needs one."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _threads() -> int:
    """The threads one product is shared among: all, one where BLAS computes, half inside at_once()."""
    if _blas_computes:
        return 1
    return max(numba.get_num_threads() // (1 if _deferred() is None else 2), 1)


def _blocks(rows: int, parts: int, lead: int = 0) -> list[slice]:
    """`parts` blocks of rows, the first (this thread's) `lead` rows longer than the others."""
    parts = max(min(parts, rows), 1)
    lead = min(lead, rows // parts) if parts > 1 else 0
    shared = rows - lead
    return [slice(0 if part == 0 else lead + part * shared // parts, lead + (part + 1) * shared // parts)
            for part in range(parts)]


def _sharing_threads(a, b) -> int:
    """The threads a product a b is shared among: all of them, fewer when it is too small to be worth sharing."""
    return min(_threads(), max(a.shape[0] * a.shape[1] * b.shape[1] // MIN_BLOCK_WORK, 1))


def _row_blocks(a, b) -> list[slice]:
    """One block of a's rows per sharing thread, this thread's LEAD_WORK multiply-adds longer (the others start late)."""
    return _blocks(a.shape[0], _sharing_threads(a, b), LEAD_WORK // max(a.shape[1] * b.shape[1], 1))


def _run_all(calls: list) -> None:
    """Run the calls (function, arguments) at once: all but the first on the pool, the first on this thread
    (inside at_once(): when the block ends, with the other products')."""
    global _pool
    deferred = _deferred()
    if deferred is not None:
        deferred.extend(calls)
        return
    if len(calls) == 1:
        function, arguments = calls[0]
        function(*arguments)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max(numba.config.NUMBA_NUM_THREADS - 1, 1), thread_name_prefix="tinygpt-products")
    pending = [_pool.submit(function, *arguments) for function, arguments in calls[1:]]
    try:
        function, arguments = calls[0]
        function(*arguments)
    finally:
        wait(pending)  # even when this thread's call raised: no thread goes on writing into the outputs
    for future in pending:
        future.result()


def matmul(a, b, out):
    """out = a b, the rows of a (and out) shared among the threads."""
    _run_all([(np.matmul, (a[rows], b, out[rows])) for rows in _row_blocks(a, b)])


def matmul_nt(a, b, out):
    """out = a b^T, the rows of a (and out) shared among the threads."""
    _run_all([(np.matmul, (a[rows], b.T, out[rows])) for rows in _row_blocks(a, b.T)])


def matmul_tn(a, b, out):
    """out = a^T b, the columns of a (the rows of out) shared among the threads."""
    _run_all([(np.matmul, (a[:, rows].T, b, out[rows])) for rows in _row_blocks(a.T, b)])


def matmul_stacked(a, b, out):
    """out[i] = a[i] b[i] for stacks (n, ., .) of matrices, either operand possibly a transposed view: whole
    matrices shared among the threads, one single-threaded BLAS call each."""
    share_batch(np.matmul, (a, b, out), a.size * b.shape[-1])


def share_batch(function, stacks: tuple, multiply_adds: int, *arguments) -> None:
    """function(*parts, *arguments) for parts of stacks (B, ...) cut along B, all parts at once on the threads
    (C-contiguous stacks give C-contiguous parts); fewer parts where the multiply-adds are too few to share.
    The function calls BLAS and numba kernels that let go of the GIL (attention: kernels/cpu.py)."""
    threads = min(_threads(), max(multiply_adds // MIN_BLOCK_WORK, 1))
    _run_all([(function, tuple(stack[rows] for stack in stacks) + arguments) for rows in _blocks(len(stacks[0]), threads)])


__all__ = ["matmul", "matmul_nt", "matmul_tn", "matmul_stacked", "share_batch", "at_once", "on_blas_threads"]
