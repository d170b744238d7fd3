"""The kernels of the fused ops for a device: numba's loops on the CPU (`kernels.cpu`), the array module's
vectorised calls elsewhere (`kernels.array`). Both sets have the same function names and arguments.
Matrix products are not kernels of ours: every device multiplies with its array module's matmul (BLAS).

The CPU kernels are compiled on first use and cached on disk, in NUMBA_CACHE_DIR, which defaults to
~/.cache/tinygpt/numba when unset (so that a read-only site-packages works). Where numba cannot be
imported the CPU runs the array kernels, and a warning says so once.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator

from tinygpt.kernels import array

_cpu_kernels: ModuleType | None = None
_array_kernels_on_cpu = False


def cache_directory() -> Path:
    """Where numba keeps the compiled CPU kernels: NUMBA_CACHE_DIR, or ~/.cache/tinygpt/numba."""
    return Path(os.environ.get("NUMBA_CACHE_DIR") or Path.home() / ".cache" / "tinygpt" / "numba")


def prepare_numba() -> None:
    """Point numba's cache at cache_directory() before a kernel is compiled (called by kernels/cpu.py)."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_directory()))  # read by numba when it is imported
    import numba

    if not numba.config.CACHE_DIR:  # numba was imported before NUMBA_CACHE_DIR was set
        numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


def _load_cpu_kernels() -> ModuleType:
    global _cpu_kernels
    if _cpu_kernels is None:
        try:
            import numba  # noqa: F401  (can it be imported: the test of the fallback below)

            from tinygpt.kernels import cpu
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


@contextlib.contextmanager
def array_kernels_on_cpu() -> Iterator[None]:
    """Within this block the CPU runs the array kernels (the tests run every fused op with both sets)."""
    global _array_kernels_on_cpu
    before, _array_kernels_on_cpu = _array_kernels_on_cpu, True
    try:
        yield
    finally:
        _array_kernels_on_cpu = before


__all__ = ["array_kernels_on_cpu", "cache_directory", "for_device"]
