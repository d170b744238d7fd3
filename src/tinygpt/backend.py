"""Picks the array module (numpy on "cpu", CuPy on "cuda") for a device, and the random generator."""
from __future__ import annotations

from types import ModuleType

import numpy as np

DEVICES = ("cpu", "cuda")
_generators: dict[str, object] = {}
_seed: int | None = None


def normalize_device(device: str | None) -> str:
    """'cpu' when None; 'cuda:0' and 'cuda' name the same device."""
    if device is None:
        return "cpu"
    name = str(device).split(":")[0]
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    return name


def array_module(device: str) -> ModuleType:
    """numpy for 'cpu', cupy for 'cuda' (with a clear error when CuPy is missing)."""
    if device == "cpu":
        return np
    try:
        import cupy
    except ImportError:
        raise RuntimeError("device 'cuda' needs CuPy: pip install 'tinygpt[cuda]'") from None
    return cupy


def cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or CuPy without a driver
        return False


def is_cupy_array(array) -> bool:
    return type(array).__module__.startswith("cupy")


def device_of(array) -> str:
    return "cpu" if type(array) is np.ndarray or not is_cupy_array(array) else "cuda"


def to_numpy(array) -> np.ndarray:
    """A numpy array of any backend array (a device-to-host copy for CuPy) or nested lists."""
    return array.get() if is_cupy_array(array) else np.asarray(array)


def manual_seed(seed: int) -> None:
    """Make every later random draw (init, dropout, sampling) reproducible on every device."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def generator(device: str):
    """The random Generator of a device, created from the last manual_seed."""
    if device not in _generators:
        xp = array_module(device)
        _generators[device] = xp.random.default_rng(_seed)
    return _generators[device]
