"""How many threads one engine (a process, or a rank of `tinygpt train`) computes with on the CPU. The kernels'
loops run on one thread; the matrix products run on BLAS's threads, set here through threadpoolctl. An engine
runs on one thread unless set_num_threads chose more: the cores are used by data, one rank per core
(docs/distributed.md), which keeps its speed on a busy machine where threads handing work to each other do not.
Nothing changes at import."""
from __future__ import annotations

import contextlib
from typing import Iterator

from threadpoolctl import threadpool_info, threadpool_limits

_chosen: int | None = None  # the count set_num_threads was given


def set_num_threads(threads: int) -> None:
    """Compute the matrix products of this process with `threads` BLAS threads, also inside train()."""
    global _chosen
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"the number of threads must be a whole number of at least 1, got {threads!r}")
    _chosen = threads
    threadpool_limits(limits=threads, user_api="blas")


def get_num_threads() -> int:
    """The threads BLAS computes the products with."""
    return max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1)


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """Within this block numpy's BLAS runs on `threads` threads; afterwards on as many as before."""
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def engine_threads() -> contextlib.AbstractContextManager:
    """A block in which BLAS runs on the threads of one engine: set_num_threads' count, else one."""
    return blas_threads(_chosen or 1)


__all__ = ["blas_threads", "engine_threads", "get_num_threads", "set_num_threads"]
