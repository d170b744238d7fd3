"""DType, tree utilities and small shared helpers."""
from __future__ import annotations

import math
from enum import Enum
from typing import Any, Callable

import numpy as np

from tinygpt import backend


class DType(Enum):
    """The element types a Buffer can hold, each backed by a numpy dtype."""

    float32 = "float32"
    float16 = "float16"
    int32 = "int32"
    int64 = "int64"
    bool = "bool"

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(self.value)

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float16)

    def cast(self, value: Any) -> Any:
        """Cast a Python scalar to this dtype's Python type."""
        if self.is_float:
            return float(value)
        if self is DType.bool:
            return bool(value)
        return int(value)

    @staticmethod
    def deduce_dtype(value: Any) -> "DType":
        """float32 for floats, bool for bools, int32 for ints (like a Python scalar would suggest)."""
        if isinstance(value, (bool, np.bool_)):
            return DType.bool
        if isinstance(value, (int, np.integer)):
            return DType.int32
        if isinstance(value, (float, np.floating)):
            return DType.float32
        raise TypeError(f"cannot deduce a dtype from a value of type {type(value).__name__}")

    @staticmethod
    def promote(a: "DType", b: "DType") -> "DType":
        """The dtype two different dtypes compute in: float32 if either is a float, else the wider integer."""
        if a.is_float or b.is_float:
            return DType.float32
        return DType.int64 if DType.int64 in (a, b) else DType.int32

    @staticmethod
    def from_numpy(dtype: np.dtype) -> "DType":
        """The DType of a numpy dtype (float64 narrows to float32, small ints widen to int32)."""
        try:
            return _FROM_NUMPY[dtype]
        except (KeyError, TypeError):
            raise TypeError(f"numpy dtype {dtype} has no TinyGPT DType") from None


_FROM_NUMPY = {np.dtype(name): DType(name) for name in ("float32", "float16", "int32", "int64", "bool")}
_FROM_NUMPY.update({np.dtype(name): DType.int32 for name in ("int8", "int16", "uint8", "uint16")})
_FROM_NUMPY[np.dtype("float64")] = DType.float32


def tree_flatten(tree: Any, prefix: str = "", is_leaf: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
    """Flatten nested dicts/lists into [("a.b.0.c", leaf), ...]."""
    if is_leaf is not None and is_leaf(tree):
        return [(prefix, tree)]
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return [(prefix, tree)]
    flat = []
    for key, value in items:
        flat.extend(tree_flatten(value, f"{prefix}.{key}" if prefix else str(key), is_leaf))
    return flat


def tree_unflatten(flat: list[tuple[str, Any]]) -> Any:
    """Inverse of tree_flatten: keys made only of digits become list indices."""
    if len(flat) == 1 and flat[0][0] == "":
        return flat[0][1]
    children: dict[str, list[tuple[str, Any]]] = {}
    for key, value in flat:
        head, _, rest = key.partition(".")
        children.setdefault(head, []).append((rest, value))
    if sorted(children, key=lambda head: int(head) if head.isdigit() else -1) == [str(i) for i in range(len(children))]:
        return [tree_unflatten(children[str(i)]) for i in range(len(children))]
    return {head: tree_unflatten(sub) for head, sub in children.items()}


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any, is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """Apply fn to every leaf of `tree`, keeping its structure of dicts, lists and tuples; with more trees
    (as MLX), fn(leaf, *their_leaves_at_the_same_place), the first tree deciding where the leaves are."""
    return _map_leaves(fn, tree, rest, is_leaf, "")


def _map_leaves(fn: Callable[..., Any], tree: Any, rest: tuple, is_leaf: Callable[[Any], bool] | None, path: str) -> Any:
    if (is_leaf is not None and is_leaf(tree)) or not isinstance(tree, (dict, list, tuple)):
        return fn(tree, *rest)
    if isinstance(tree, dict):
        if not all(isinstance(other, dict) and tree.keys() <= other.keys() for other in rest):
            raise ValueError(f"tree_map: at {path or 'the root'} the trees differ: a dict with keys {list(tree)} "
                             f"against {[list(other) if isinstance(other, dict) else type(other).__name__ for other in rest]}")
        return {key: _map_leaves(fn, value, tuple(other[key] for other in rest), is_leaf, _child(path, key))
                for key, value in tree.items()}
    if not all(isinstance(other, (list, tuple)) and len(other) == len(tree) for other in rest):
        raise ValueError(f"tree_map: at {path or 'the root'} the trees differ: a sequence of {len(tree)} against "
                         f"{[len(other) if isinstance(other, (list, tuple)) else type(other).__name__ for other in rest]}")
    return type(tree)(_map_leaves(fn, value, tuple(other[index] for other in rest), is_leaf, _child(path, index))
                      for index, value in enumerate(tree))


def _child(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def pack(arrays: list, flat=None):
    """Copy `arrays` (any shapes, one array module) one after another into the 1-D array `flat` (by default a new
    one of exactly their size and the first's dtype) and return it: one buffer for one collective call or one
    update kernel in place of one per array."""
    if flat is None:
        xp = np if not arrays else backend.array_module(backend.device_of(arrays[0]))
        flat = xp.empty(sum(array.size for array in arrays), dtype=arrays[0].dtype if arrays else np.float32)
    for view, array in zip(unpack(flat, [array.shape for array in arrays]), arrays):
        view[...] = array
    return flat


def unpack(flat, shapes: list[tuple[int, ...]]) -> list:
    """Views (not copies) of consecutive runs of the 1-D array `flat`, shaped as `shapes`: the inverse of pack."""
    views, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(flat[offset:offset + size].reshape(shape))
        offset += size
    return views


def normalize_axes(axes: int | tuple[int, ...] | list[int] | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Turn an axis argument (int, sequence or None for all) into sorted non-negative axes of `shape`."""
    ndim = len(shape)
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (int(axes),)
    normalized = []
    for axis in axes:
        if not isinstance(axis, (int, np.integer)) or not -ndim <= axis < max(ndim, 1):
            raise IndexError(f"axis {axis} is out of range for shape {tuple(shape)} ({ndim} dimensions)")
        normalized.append(int(axis) % max(ndim, 1))
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"repeated axis in {tuple(axes)} for shape {tuple(shape)}")
    return tuple(sorted(normalized))


def is_real(value: Any) -> bool:
    """Whether `value` is a real number (Python or numpy, not bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_finite(name: str, value: Any, minimum: float = 0.0) -> float:
    """`value` as a float if it is a finite real number >= minimum; else ValueError naming `name`."""
    if not is_real(value) or not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g} and finite, got {value}")
    return float(value)


def check_fraction(name: str, value: Any) -> float:
    """`value` as a float if it is a real number in [0, 1); else ValueError naming `name`."""
    if not is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """`value` if it is an integer >= minimum (not a bool or a float); else ValueError naming `name`."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)
