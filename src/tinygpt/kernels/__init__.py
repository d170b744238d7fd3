"""The kernels of the fused ops for a device: numba's loops on the CPU (`kernels.cpu`), the array module's
vectorised calls elsewhere (`kernels.array`). Both sets have the same function names and arguments.

The CPU kernels are compiled on first use and cached on disk, in NUMBA_CACHE_DIR, which defaults to
~/.cache/tinygpt/numba when unset (so that a read-only site-packages works). Where numba cannot be
imported the CPU runs the array kernels, and a warning says so once.

The CPU kernels share out the matrix products among a pool of as many threads as numba's, each calling
BLAS on its own rows; so when they load, BLAS is set to one thread (its own threads would spin beside
numba's and take their cores: docs/operation.md, Threads).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np

from tinygpt import backend
from tinygpt.kernels import array

LAST_KERNEL = "sgd_update"  # the last kernel kernels/cpu.py defines (and numba compiles, at its import)
# How numba's OpenMP threads wait for the next kernel (read by the OpenMP runtime when it starts). Spinning
# without end takes the cores from the products' threads (318 ms per step of the CPU configuration, measured);
# sleeping at once costs 60 us to wake for each kernel; GNU OpenMP's 1000 spins (about 20 us) catch a kernel that
# follows closely and then sleep: median step 26-31 ms, against 29-33 ms sleeping at once (5 runs each).
# Other OpenMP runtimes read only the policy.
OPENMP_WAITING = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}
_cpu_kernels: ModuleType | None = None
_array_kernels_on_cpu = False


def cache_directory() -> Path:
    """Where numba keeps the compiled CPU kernels: NUMBA_CACHE_DIR, or ~/.cache/tinygpt/numba."""
    return Path(os.environ.get("NUMBA_CACHE_DIR") or Path.home() / ".cache" / "tinygpt" / "numba")


def cache_is_warm() -> bool:
    """Whether the CPU kernels of this source are compiled on disk already (a cold cache means compiling them
    first): numba's index of the last kernel it compiles, named by that kernel's first source line, is there."""
    lines = Path(__file__).with_name("cpu.py").read_text().splitlines()
    first = next(number for number, line in enumerate(lines) if line.startswith(f"def {LAST_KERNEL}("))
    while first > 0 and lines[first - 1].startswith(("@", " ")):  # numba counts from the decorator
        first -= 1
    return any(cache_directory().glob(f"**/cpu.{LAST_KERNEL}-{first + 1}.py*.nbi"))


def prepare_numba() -> None:
    """What numba and its OpenMP runtime read when they start: where compiled kernels are cached, and how
    the OpenMP threads wait. Called by kernels/cpu.py before it defines (and compiles) a kernel."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_directory()))  # read by numba when it is imported
    if "OMP_WAIT_POLICY" not in os.environ:  # else the user chose
        os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_WAITING["GOMP_SPINCOUNT"])
        os.environ["OMP_WAIT_POLICY"] = OPENMP_WAITING["OMP_WAIT_POLICY"]
    import numba

    if not numba.config.CACHE_DIR:  # numba was imported before NUMBA_CACHE_DIR was set
        numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


def _load_cpu_kernels() -> ModuleType:
    global _cpu_kernels
    if _cpu_kernels is None:
        try:
            import numba  # noqa: F401  (can it be imported: the test of the fallback below)
            from threadpoolctl import threadpool_limits

            from tinygpt.kernels import cpu

            threadpool_limits(limits=1, user_api="blas")  # the products share out their rows themselves (products.py)
        except ImportError as error:
            warnings.warn(f"numba cannot be imported ({error}): the CPU runs the array kernels, which are slower")
            cpu = array
        _cpu_kernels = cpu
    return _cpu_kernels


def for_device(device: str) -> ModuleType:
    """The kernel set of a device: the numba kernels on "cpu" (unless array_kernels_on_cpu), else the array ones."""
    if device != "cpu" or _array_kernels_on_cpu:
        return array
    return _load_cpu_kernels()


def gemm(a, b):
    """a @ b for two matrices, or two stacks (n, ., .) of them: float32 through the device's product kernels (for
    matrices, the one that reads a transposed operand in place), other dtypes through the array module."""
    if a.dtype != np.float32 or b.dtype != np.float32:
        return a @ b
    device = backend.device_of(a)
    xp, kernel_set = backend.array_module(device), for_device(device)
    out = xp.empty(a.shape[:-1] + b.shape[-1:], dtype=np.float32)
    if a.ndim == 3:
        assert b.ndim == 3, "gemm: a stack of matrices times a stack of matrices"
        kernel_set.matmul_stacked(a, b, out)
    elif b.T.flags.c_contiguous and not b.flags.c_contiguous:
        kernel_set.matmul_nt(xp.ascontiguousarray(a), b.T, out)
    elif a.T.flags.c_contiguous and not a.flags.c_contiguous:
        kernel_set.matmul_tn(a.T, xp.ascontiguousarray(b), out)
    else:
        kernel_set.matmul(xp.ascontiguousarray(a), xp.ascontiguousarray(b), out)
    return out


def products_at_once(device: str):
    """A block whose products (gemm) run together when it ends, where the device's kernels can (the CPU's:
    each on its share of the threads); read their results after the block."""
    return for_device(device).at_once()


@contextlib.contextmanager
def array_kernels_on_cpu() -> Iterator[None]:
    """Within this block the CPU runs the array kernels (the tests run every fused op with both sets)."""
    global _array_kernels_on_cpu
    before, _array_kernels_on_cpu = _array_kernels_on_cpu, True
    try:
        yield
    finally:
        _array_kernels_on_cpu = before


__all__ = ["array_kernels_on_cpu", "cache_directory", "cache_is_warm", "for_device", "gemm", "products_at_once"]
