"""How many threads TinyGPT computes with on the CPU: numba's threads run the kernels and share out the
matrix products, each thread calling BLAS on one thread for its rows (one pool: BLAS's own threads would spin
beside numba's). Both are read and set here, through numba and threadpoolctl; nothing changes at import
(numba starts with every CPU the process may use; BLAS goes to one thread when the CPU kernels load).
Without numba, BLAS's threads compute the products."""
from __future__ import annotations

import contextlib
from typing import Iterator

from threadpoolctl import threadpool_info, threadpool_limits


def _numba():
    """numba, or None where it cannot be imported (the array kernels then run with BLAS alone)."""
    try:
        import numba
    except ImportError:
        return None
    return numba


def set_num_threads(threads: int) -> None:
    """Compute with `threads` threads on the CPU: numba's, which run the kernels and the products (BLAS stays on
    one thread); without numba, BLAS's."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"the number of threads must be a whole number of at least 1, got {threads!r}")
    numba = _numba()
    if numba is not None:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(limits=1 if numba is not None else threads, user_api="blas")


def get_num_threads() -> int:
    """The threads the kernels run on (numba's), or BLAS's where numba is missing."""
    numba = _numba()
    if numba is not None:
        return numba.get_num_threads()
    return max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1)


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """Within this block numpy's BLAS runs on `threads` threads; afterwards on as many as before."""
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


__all__ = ["blas_threads", "get_num_threads", "set_num_threads"]
