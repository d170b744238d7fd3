"""Both CPU cores for everything a training step does, from one thread pool (PyTorch's at::parallel_for,
by hand). numpy releases the GIL inside each ufunc and each matrix product, so threads that each run a
whole chain of them over their own block of rows compute at the same time: matrix products are cut by
rows, elementwise chains (GELU, LayerNorm, softmax, Adam) and attention by rows or batch.

The pool must be the only one: numpy's OpenBLAS keeps its own threads, which spin on the other cores
after every product and slowed the pool's work down (measured). So while the pool has more than one
thread, OpenBLAS runs on one (set through numpy's bundled OpenBLAS); `set_num_threads(1)` gives it its
threads back. Where that OpenBLAS cannot be found (another BLAS), the pool stays at one thread.

Results do not depend on the number of threads: a block is a set of whole rows, and every kernel given
to parallel_for computes each row from that row alone."""
from __future__ import annotations

import ctypes
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

MIN_BLOCK_ELEMENTS = 1 << 15  # smaller blocks cost more to hand to a thread than they save
_pool: ThreadPoolExecutor | None = None
_worker = threading.local()


def _openblas(function: str):
    """A function of the OpenBLAS that numpy's extension module links (its wheels prefix the names), or None."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    try:
        library = ctypes.CDLL(core._multiarray_umath.__file__)
    except (AttributeError, OSError):
        return None
    for name in (f"scipy_openblas_{function}64_", f"openblas_{function}64_", f"openblas_{function}"):
        if hasattr(library, name):
            return getattr(library, name)
    return None


_set_blas_threads, _get_blas_threads = _openblas("set_num_threads"), _openblas("get_num_threads")
_blas_threads = int(_get_blas_threads()) if _get_blas_threads is not None else 1


POOL_MAX_DEFAULT_CPUS = 2  # the pool is measured on 2 cores; with more, OpenBLAS keeps its threads by default


def _default_threads() -> int:
    """TINYGPT_NUM_THREADS if set; else every CPU this process may use, up to POOL_MAX_DEFAULT_CPUS (beyond,
    one thread of TinyGPT's and OpenBLAS's own threads for the products, as the pool's row blocks of products
    and its GIL hand-offs are untested there); 1 where numpy's BLAS is not an OpenBLAS the pool can steer."""
    if _set_blas_threads is None:
        return 1
    requested = os.environ.get("TINYGPT_NUM_THREADS", "").strip()
    if requested.isdigit() and int(requested) >= 1:
        return int(requested)
    if requested:
        warnings.warn(f"TINYGPT_NUM_THREADS must be a whole number of at least 1, got {requested!r}: ignored")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return cpus if cpus <= POOL_MAX_DEFAULT_CPUS else 1


_threads = _default_threads()


def set_num_threads(threads: int) -> None:
    """How many threads TinyGPT computes with on the CPU (the default: see _default_threads)."""
    global _threads, _pool
    if threads < 1:
        raise ValueError(f"the number of threads must be at least 1, got {threads}")
    _threads = int(threads)
    if _pool is not None:
        _pool.shutdown()
        _pool = None
    if _threads == 1 and _set_blas_threads is not None:
        _set_blas_threads(_blas_threads)


def get_num_threads() -> int:
    return _threads


def _forget_pool_in_child() -> None:
    """A forked child has none of the parent's threads: it starts its own pool when it needs one."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _start_pool() -> ThreadPoolExecutor:
    if _set_blas_threads is not None:
        _set_blas_threads(1)
    return ThreadPoolExecutor(max_workers=_threads - 1, thread_name_prefix="tinygpt",
                              initializer=lambda: setattr(_worker, "active", True))


def parallel_for(xp, rows: int, row_elements: int, kernel: Callable[[int, int], None]) -> None:
    """kernel(start, stop) for blocks of rows covering range(rows), run concurrently on the CPU.

    One block (a single call) on the GPU, whose kernels are parallel already, for small work, and inside
    a worker (no nesting). The caller's thread runs the first block itself."""
    global _pool
    blocks = min(_threads, rows, rows * row_elements // MIN_BLOCK_ELEMENTS)
    if xp is not np or blocks <= 1 or getattr(_worker, "active", False):
        kernel(0, rows)
        return
    if _pool is None:
        _pool = _start_pool()
    bounds = [rows * block // blocks for block in range(blocks + 1)]
    futures = [_pool.submit(kernel, start, stop) for start, stop in zip(bounds[1:-1], bounds[2:])]
    try:
        kernel(bounds[0], bounds[1])
    finally:
        for future in futures:
            future.result()  # re-raises a worker's exception here


def matmul_rows(xp, a, b):
    """a @ b for matrices, with the rows of a shared among the threads (each block one BLAS call)."""
    out = xp.empty((a.shape[0], b.shape[1]), dtype=xp.result_type(a, b))
    parallel_for(xp, a.shape[0], a.shape[1] * b.shape[1], lambda start, stop: xp.matmul(a[start:stop], b, out=out[start:stop]))
    return out


def side_by_side(xp, work: int, *tasks: Callable[[], object]) -> list:
    """The results of independent tasks, run at the same time, a task per thread (`work`: their total size).
    Two equal matrix products side by side beat each cut in two: one BLAS call each, one hand-off."""
    results: list = [None] * len(tasks)

    def run(start: int, stop: int) -> None:
        for index in range(start, stop):
            results[index] = tasks[index]()

    parallel_for(xp, len(tasks), work // max(len(tasks), 1), run)
    return results


__all__ = ["parallel_for", "matmul_rows", "side_by_side", "set_num_threads", "get_num_threads"]
