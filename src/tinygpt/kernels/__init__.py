"""The kernels of the fused ops for a device: numba's loops on the CPU (`kernels.cpu`), the array module's
vectorised calls elsewhere (`kernels.array`). Both sets have the same function names and arguments.

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

LAST_KERNEL = "sgd_update"  # the last kernel kernels/cpu.py defines (and numba compiles, at its import)
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


def _load_cpu_kernels() -> ModuleType:
    global _cpu_kernels
    if _cpu_kernels is None:
        os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_directory()))  # read by numba when it is imported
        # OpenMP threads that spin after each kernel steal the cores BLAS's products need, and the other way
        # round: measured 318 ms per step of the CPU configuration with spinning threads, 57 ms with waiting
        # ones (read by the OpenMP runtime when it starts; a value the user set is kept)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import numba

            if not numba.config.CACHE_DIR:  # numba was imported before NUMBA_CACHE_DIR was set
                numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
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


__all__ = ["array_kernels_on_cpu", "cache_directory", "cache_is_warm", "for_device"]
