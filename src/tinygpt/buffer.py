"""Buffer: an n-d array described by flat storage plus shape / stride / offset / dtype.

Movement (reshape, expand, permute, indexing) only rewrites the description and shares the storage.
Compute goes through the array module of the device (numpy or CuPy), one vectorised call per op,
and returns a new contiguous Buffer.
"""
from __future__ import annotations

import functools
import math
from numbers import Number
from typing import Any, Sequence

import numpy as np

from tinygpt import backend
from tinygpt.utils import DType, normalize_axes


@functools.lru_cache(maxsize=4096)
def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def view_stride(shape: Sequence[int], stride: Sequence[int], new_shape: Sequence[int]) -> tuple[int, ...] | None:
    """Strides that show `new_shape` over the same elements in row-major order, or None if a copy is needed.

    Walks the old dims from the right in chunks that are contiguous with each other (PyTorch's rule):
    each chunk must be covered exactly by a run of new dims.
    """
    if math.prod(shape) == 0 or len(shape) == 0:
        return contiguous_stride(new_shape)
    new_stride = [0] * len(new_shape)
    view_dim = len(new_shape) - 1
    chunk_stride = stride[-1]
    old_numel = new_numel = 1
    for dim in reversed(range(len(shape))):
        old_numel *= shape[dim]
        chunk_ends = dim == 0 or (shape[dim - 1] != 1 and stride[dim - 1] != old_numel * chunk_stride)
        if not chunk_ends:
            continue
        while view_dim >= 0 and (new_numel < old_numel or new_shape[view_dim] == 1):
            new_stride[view_dim] = new_numel * chunk_stride
            new_numel *= new_shape[view_dim]
            view_dim -= 1
        if new_numel != old_numel:
            return None
        if dim > 0:
            chunk_stride, old_numel, new_numel = stride[dim - 1], 1, 1
    return tuple(new_stride) if view_dim == -1 else None


def _check_shape(shape: Sequence[int], allow_inferred: bool = False) -> tuple[int, ...]:
    """The shape as a tuple of ints; with allow_inferred, -1 (the size reshape works out) is accepted too."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    for size in shape:
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < (-1 if allow_inferred else 0):
            raise TypeError(f"shape {tuple(shape)} must hold non-negative integers")
    return tuple(int(size) for size in shape)


def _nested_shape(value: Any) -> tuple[int, ...]:
    """Shape of nested lists/tuples; ragged -> ValueError, lists mixed with scalars -> TypeError."""
    if not isinstance(value, (list, tuple)):
        return ()
    if len(value) == 0:
        return (0,)
    is_list = [isinstance(item, (list, tuple)) for item in value]
    if any(is_list) and not all(is_list):
        raise TypeError("cannot mix lists and scalars at the same nesting level")
    child_shapes = {_nested_shape(item) for item in value}
    if len(child_shapes) != 1:
        raise ValueError(f"ragged nested list: sub-lists have shapes {sorted(child_shapes)}")
    return (len(value),) + child_shapes.pop()


class Buffer:
    """Flat storage `data` seen through `shape`, `stride` and `offset` (all in elements)."""

    __slots__ = ("data", "shape", "stride", "offset", "dtype", "device", "_array")

    def __init__(self, data: Any, dtype: DType | None = None, device: str | None = None) -> None:
        if isinstance(data, Buffer):
            device = backend.normalize_device(device) if device is not None else data.device
            if device != data.device or (dtype is not None and dtype != data.dtype):
                data = data.to(device).astype(dtype or data.dtype)
            self._set_view(data.data, data.shape, data.stride, data.offset, data.dtype, data.device, data._array)
            return
        if _is_foreign_array(data):
            data = Buffer.from_dlpack(data).array
        device = backend.normalize_device(device)
        xp = backend.array_module(device)
        if isinstance(data, (list, tuple)):
            _nested_shape(data)
            if dtype is None:
                dtype = _deduce_list_dtype(np.asarray(data))
        elif isinstance(data, (Number, np.generic)):
            dtype = dtype or DType.deduce_dtype(data)
        elif dtype is None:
            dtype = DType.from_numpy(data.dtype)
        array = xp.array(backend.to_numpy(data) if device == "cpu" else xp.asarray(data), dtype=dtype.numpy)
        self._set_view(array.reshape(-1), array.shape, contiguous_stride(array.shape), 0, dtype, device, array)

    def _set_view(self, data, shape, stride, offset, dtype, device, array=None) -> None:
        self.data, self.shape, self.stride, self.offset = data, tuple(shape), tuple(stride), offset
        self.dtype, self.device, self._array = dtype, device, array

    @classmethod
    def from_array(cls, array) -> "Buffer":
        """Wrap a backend array (result of a computation) without copying when it is contiguous."""
        xp = backend.array_module(backend.device_of(array))
        array = xp.asarray(array, order="C")  # not ascontiguousarray: it turns 0-d results into shape (1,)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        buffer = cls.__new__(cls)
        buffer._set_view(array.reshape(-1), array.shape, contiguous_stride(array.shape), 0,
                         DType.from_numpy(array.dtype), backend.device_of(array), array)
        return buffer

    @classmethod
    def from_dlpack(cls, source: Any) -> "Buffer":
        """A Buffer over another library's array (torch, numpy, CuPy, JAX...) through DLPack. It shares the
        memory, strides included, when TinyGPT has the dtype; otherwise it copies into the nearest dtype."""
        device = "cuda" if source.__dlpack_device__()[0] == DLPACK_CUDA else "cpu"
        array = backend.array_module(device).from_dlpack(source)
        dtype = DType.from_numpy(array.dtype)
        if array.dtype != dtype.numpy or any(step < 0 for step in array.strides):
            array = array.astype(dtype.numpy, order="C")
        if array.size == 0 or array.flags.c_contiguous:
            return cls.from_array(array)
        itemsize = array.itemsize
        stride = tuple(step // itemsize for step in array.strides)
        span = 1 + sum((size - 1) * step for size, step in zip(array.shape, stride))
        storage = backend.array_module(device).lib.stride_tricks.as_strided(array, (span,), (itemsize,))
        buffer = cls.__new__(cls)
        buffer._set_view(storage, array.shape, stride, 0, dtype, device, array)
        return buffer

    def dlpack_array(self):
        """The backend array to hand over through DLPack: this view itself, or a copy when its strides run
        backwards (DLPack allows them, but PyTorch refuses them)."""
        if any(step < 0 for step in self.stride):
            return self.xp.ascontiguousarray(self.array)
        return self.array

    def contiguous_view(self, shape: tuple[int, ...], offset: int) -> "Buffer":
        """A C-contiguous view of `shape` into this buffer's storage, starting `offset` elements in."""
        return self._view(tuple(shape), contiguous_stride(tuple(shape)), offset)

    def rehome(self, storage, offset: int) -> None:
        """Make this (contiguous) buffer a view into `storage` at `offset`; the caller copied the values there."""
        self._set_view(storage, self.shape, contiguous_stride(self.shape), offset, self.dtype, self.device)

    def _view(self, shape, stride, offset) -> "Buffer":
        buffer = Buffer.__new__(Buffer)
        buffer._set_view(self.data, shape, stride, offset, self.dtype, self.device)
        return buffer

    # ---- description -------------------------------------------------------------------------
    @property
    def xp(self):
        return backend.array_module(self.device)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def is_contiguous(self) -> bool:
        return self.stride == contiguous_stride(self.shape)

    @property
    def array(self):
        """The backend array this Buffer describes (a strided view of `data`): the escape hatch for fused ops."""
        if self._array is None:
            itemsize = self.data.itemsize
            strides = tuple(step * itemsize for step in self.stride)
            self._array = self.xp.lib.stride_tricks.as_strided(self.data[self.offset:], self.shape, strides)
        return self._array

    def __repr__(self) -> str:
        return f"Buffer({self.to_python()}, shape={self.shape}, dtype={self.dtype.name}, device={self.device!r})"

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d buffer")
        return self.shape[0]

    def __bool__(self) -> bool:
        if self.numel != 1:
            raise ValueError(f"the truth value of a buffer of shape {self.shape} is ambiguous: use .item() on one element")
        return bool(self.item())

    # ---- conversion --------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        return np.array(backend.to_numpy(self.array))

    def to_python(self) -> Any:
        return self.numpy().tolist()

    def item(self) -> Any:
        if self.numel != 1:
            raise ValueError(f"item() needs a buffer of one element, got shape {self.shape}")
        return self.dtype.cast(self.numpy().reshape(-1)[0])

    def to(self, device: str) -> "Buffer":
        device = backend.normalize_device(device)
        if device == self.device:
            return self
        array = self.numpy() if device == "cpu" else backend.array_module(device).asarray(self.array)
        return Buffer.from_array(array)

    def astype(self, dtype: DType) -> "Buffer":
        return self if dtype == self.dtype else Buffer.from_array(self.array.astype(dtype.numpy))

    def float(self) -> "Buffer":
        return self.astype(DType.float32)

    def contiguous(self) -> "Buffer":
        return self if self.is_contiguous() else Buffer.from_array(self.xp.ascontiguousarray(self.array))

    # ---- movement: views that never copy -------------------------------------------------------
    def reshape(self, new_shape: Sequence[int]) -> "Buffer":
        """A view of shape `new_shape` (one -1 is inferred); a copy only when the layout forbids a view."""
        shape = _infer_shape(_check_shape(new_shape, allow_inferred=True), self.numel, self.shape)
        stride = view_stride(self.shape, self.stride, shape)
        if stride is None:
            return self.contiguous().reshape(shape)
        return self._view(shape, stride, self.offset)

    def expand(self, new_shape: Sequence[int]) -> "Buffer":
        """A view of shape `new_shape` whose size-1 dims repeat (stride 0)."""
        shape = _check_shape(new_shape)
        if len(shape) != self.ndim:
            raise ValueError(f"expand: shape {shape} must have {self.ndim} dims like {self.shape} (reshape first)")
        stride = []
        for old, new, step in zip(self.shape, shape, self.stride):
            if old != new and old != 1:
                raise ValueError(f"expand: cannot expand shape {self.shape} to {shape}")
            stride.append(step if old == new else 0)
        return self._view(shape, stride, self.offset)

    def permute(self, dims: Sequence[int]) -> "Buffer":
        normalized = tuple(int(d) % max(self.ndim, 1) for d in dims if -self.ndim <= d < self.ndim)
        if len(normalized) != len(dims) or sorted(normalized) != list(range(self.ndim)):
            raise ValueError(f"permute: {tuple(dims)} is not a permutation of the {self.ndim} dims of {self.shape}")
        dims = normalized
        return self._view([self.shape[d] for d in dims], [self.stride[d] for d in dims], self.offset)

    def __getitem__(self, index: Any) -> "Buffer":
        shape, stride, offset = [], [], self.offset
        dim = 0
        for item in _expand_ellipsis(index, self.ndim):
            if item is None:
                shape.append(1)
                stride.append(0)
                continue
            size, step = self.shape[dim], self.stride[dim]
            if isinstance(item, slice):
                start, stop, slice_step = item.indices(size)
                shape.append(len(range(start, stop, slice_step)))
                stride.append(step * slice_step)
                offset += start * step if shape[-1] else 0
            else:
                if not -size <= item < size:
                    raise IndexError(f"index {item} is out of range for dim {dim} of size {size} (shape {self.shape})")
                offset += (item % size) * step
            dim += 1
        return self._view(shape + list(self.shape[dim:]), stride + list(self.stride[dim:]), offset)

    def __setitem__(self, index: Any, value: "Buffer | Number") -> None:
        target = self[index]
        target.array[...] = value.array if isinstance(value, Buffer) else value

    # ---- compute -------------------------------------------------------------------------------
    def _binary(self, other: "Buffer | Number", fn, name: str) -> "Buffer":
        if isinstance(other, Buffer):
            if other.shape != self.shape:
                raise ValueError(f"{name}: shapes {self.shape} and {other.shape} differ (broadcast with expand first)")
            other = other.array
        return Buffer.from_array(fn(self.array, other))

    def __add__(self, other): return self._binary(other, self.xp.add, "add")
    def __sub__(self, other): return self._binary(other, self.xp.subtract, "sub")
    def __mul__(self, other): return self._binary(other, self.xp.multiply, "mul")
    def __truediv__(self, other): return self._binary(other, self.xp.true_divide, "div")
    def __pow__(self, other): return self._binary(other, self.xp.power, "pow")
    def __radd__(self, other): return self + other
    def __rmul__(self, other): return self * other
    def __rsub__(self, other): return Buffer.from_array(other - self.array)
    def __rtruediv__(self, other): return Buffer.from_array(other / self.array)
    def __rpow__(self, other): return Buffer.from_array(other ** self.array)
    def __neg__(self): return Buffer.from_array(-self.array)
    def __lt__(self, other): return self._binary(other, self.xp.less, "lt")
    def __le__(self, other): return self._binary(other, self.xp.less_equal, "le")
    def __gt__(self, other): return self._binary(other, self.xp.greater, "gt")
    def __ge__(self, other): return self._binary(other, self.xp.greater_equal, "ge")
    def __eq__(self, other): return self._binary(other, self.xp.equal, "eq")  # type: ignore[override]
    def __ne__(self, other): return self._binary(other, self.xp.not_equal, "ne")  # type: ignore[override]
    __hash__ = None  # type: ignore[assignment]

    def maximum(self, other): return self._binary(other, self.xp.maximum, "maximum")
    def where(self, then, otherwise): return Buffer.from_array(self.xp.where(self.array, _raw(then), _raw(otherwise)))

    def _unary(self, fn, name: str) -> "Buffer":
        if not self.dtype.is_float:
            raise TypeError(f"{name} needs a float buffer, got {self.dtype.name}")
        return Buffer.from_array(fn(self.array))

    def log(self): return self._unary(_quiet(self.xp.log), "log")
    def exp(self): return self._unary(self.xp.exp, "exp")
    def tanh(self): return self._unary(self.xp.tanh, "tanh")
    def sqrt(self): return self._unary(self.xp.sqrt, "sqrt")
    def abs(self): return Buffer.from_array(self.xp.abs(self.array))
    def sign(self): return Buffer.from_array(self.xp.sign(self.array))

    def sum(self, axes=None, keepdim: bool = False) -> "Buffer":
        axes = normalize_axes(axes, self.shape)
        return Buffer.from_array(self.array.sum(axis=axes, keepdims=keepdim))

    def max(self, axes=None, keepdim: bool = False) -> "Buffer":
        axes = normalize_axes(axes, self.shape)
        if any(self.shape[axis] == 0 for axis in axes):
            raise ValueError(f"max over an empty axis of shape {self.shape}")
        return Buffer.from_array(self.array.max(axis=axes, keepdims=keepdim))

    def matmul(self, other: "Buffer") -> "Buffer":
        if self.ndim == 0 or other.ndim == 0:
            raise ValueError(f"matmul: needs at least 1-d operands, got shapes {self.shape} and {other.shape}")
        inner_a = self.shape[-1]
        inner_b = other.shape[-2] if other.ndim > 1 else other.shape[0]
        if inner_a != inner_b:
            raise ValueError(f"matmul: shapes {self.shape} and {other.shape} do not align ({inner_a} != {inner_b})")
        try:
            return Buffer.from_array(matmul(self.xp, self.array, other.array))
        except ValueError:
            raise ValueError(f"matmul: batch dims of {self.shape} and {other.shape} do not broadcast") from None

    __matmul__ = matmul

    @staticmethod
    def concatenate(buffers: Sequence["Buffer"], axis: int = 0) -> "Buffer":
        if not buffers:
            raise ValueError("concatenate needs at least one buffer")
        first = buffers[0]
        (axis,) = normalize_axes(axis, first.shape)
        for other in buffers[1:]:
            if other.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(first.shape, other.shape)) if i != axis):
                raise ValueError(f"concatenate: shapes {first.shape} and {other.shape} differ off axis {axis}")
        return Buffer.from_array(first.xp.concatenate([b.array for b in buffers], axis=axis))

    def tril(self, diagonal: int = 0) -> "Buffer":
        if self.ndim < 2:
            raise ValueError(f"tril needs at least 2 dims, got shape {self.shape}")
        return Buffer.from_array(self.xp.tril(self.array, k=diagonal))

    # ---- in place --------------------------------------------------------------------------------
    def assign_(self, other: "Buffer | Number") -> "Buffer":
        """Write other's values into this buffer's storage."""
        if isinstance(other, Buffer) and other.shape != self.shape:
            raise ValueError(f"assign: shapes {self.shape} and {other.shape} differ")
        self.array[...] = _raw(other)
        return self

    IN_PLACE = ("add", "subtract", "multiply", "true_divide", "power")

    def update_(self, operation: str, other: "Buffer | Number") -> "Buffer":
        """self = self <operation> other in the storage, for operation in IN_PLACE (Tensor's +=, -=, *=, ...)."""
        if operation not in Buffer.IN_PLACE:
            raise ValueError(f"update_: operation must be one of {', '.join(Buffer.IN_PLACE)}, got {operation!r}")
        if isinstance(other, Buffer) and other.shape != self.shape:
            raise ValueError(f"update_: shapes {self.shape} and {other.shape} differ")
        getattr(self.xp, operation)(self.array, _raw(other), out=self.array)
        return self

    def add_(self, other: "Buffer | Number") -> "Buffer":
        """self += other, in the storage (gradient accumulation without a new allocation)."""
        return self.update_("add", other)

    # ---- factories -------------------------------------------------------------------------------
    @staticmethod
    def zeros(shape, dtype: DType = DType.float32, device: str | None = None) -> "Buffer":
        return Buffer.full(shape, 0, dtype, device)

    @staticmethod
    def ones(shape, dtype: DType = DType.float32, device: str | None = None) -> "Buffer":
        return Buffer.full(shape, 1, dtype, device)

    @staticmethod
    def full(shape, value: Number, dtype: DType = DType.float32, device: str | None = None) -> "Buffer":
        xp = backend.array_module(backend.normalize_device(device))
        return Buffer.from_array(xp.full(_check_shape(shape), value, dtype=dtype.numpy))

    @staticmethod
    def arange(start: int, stop: int | None = None, step: int = 1, dtype: DType = DType.int32, device: str | None = None) -> "Buffer":
        if step == 0:
            raise ValueError("arange: step must not be zero")
        xp = backend.array_module(backend.normalize_device(device))
        return Buffer.from_array(xp.arange(start, stop, step, dtype=dtype.numpy) if stop is not None
                                 else xp.arange(start, dtype=dtype.numpy))

    @staticmethod
    def uniform(shape, low: float = 0.0, high: float = 1.0, dtype: DType = DType.float32, device: str | None = None) -> "Buffer":
        device = backend.normalize_device(device)
        draw = backend.generator(device).uniform(low, high, _check_shape(shape))
        return Buffer.from_array(draw.astype(dtype.numpy))

    @staticmethod
    def normal(shape, mean: float = 0.0, std: float = 1.0, dtype: DType = DType.float32, device: str | None = None) -> "Buffer":
        device = backend.normalize_device(device)
        draw = backend.generator(device).normal(mean, std, _check_shape(shape))
        return Buffer.from_array(draw.astype(dtype.numpy))

    @staticmethod
    def dropout_scale(shape, p: float, dtype: DType = DType.float32, device: str | None = None) -> "Buffer":
        """m / (1 - p) with m ~ Bernoulli(1 - p): the factor dropout multiplies values and gradients by."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        device = backend.normalize_device(device)
        keep = backend.generator(device).random(_check_shape(shape), dtype=dtype.numpy) >= p
        return Buffer.from_array(keep.astype(dtype.numpy) * (1.0 / (1.0 - p)))


def matmul(xp, a, b):
    """a @ b, as one 2-D product when b is a matrix: numpy runs (B, T, C) @ (C, D) as B small products outside
    BLAS, much slower than the same work as one (B*T, C) @ (C, D) BLAS call."""
    if b.ndim == 2 and a.ndim >= 2:
        return xp.matmul(a.reshape(math.prod(a.shape[:-1]), a.shape[-1]), b).reshape(a.shape[:-1] + b.shape[-1:])
    return xp.matmul(a, b)


DLPACK_CUDA = 2  # DLPack's device type of a CUDA GPU (1 is the CPU)


def _is_foreign_array(data: Any) -> bool:
    """An array of another library (a torch tensor...) that TinyGPT reads through DLPack."""
    return hasattr(data, "__dlpack__") and not isinstance(data, (np.ndarray, Buffer)) and not backend.is_cupy_array(data)


def _quiet(fn):
    """fn without numpy's warnings for inputs outside its domain: log(0) is -inf and log(-1) nan, quietly, as in
    PyTorch (the result already says it)."""
    def quiet(array):
        with np.errstate(divide="ignore", invalid="ignore"):
            return fn(array)
    return quiet


def _raw(value):
    return value.array if isinstance(value, Buffer) else value


def _deduce_list_dtype(array: np.ndarray) -> DType:
    """Nested lists: bools -> bool, ints -> int32, anything with a float -> float32."""
    if array.size == 0 or array.dtype.kind == "f":
        return DType.float32
    if array.dtype.kind == "b":
        return DType.bool
    if array.dtype.kind in "iu":
        return DType.int32
    raise TypeError(f"cannot build a buffer from nested lists of {array.dtype}")


def _infer_shape(shape: tuple[int, ...], numel: int, old_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Resolve one -1 entry and check that the element count is kept."""
    if shape.count(-1) > 1:
        raise ValueError(f"reshape: only one dim may be -1, got {shape}")
    if -1 in shape:
        known = math.prod(size for size in shape if size != -1)
        if known == 0 or numel % known:
            raise ValueError(f"reshape: cannot reshape {old_shape} into {shape}")
        shape = tuple(numel // known if size == -1 else size for size in shape)
    if math.prod(shape) != numel:
        raise ValueError(f"reshape: cannot reshape {old_shape} ({numel} elements) into {shape}")
    return shape


def _expand_ellipsis(index: Any, ndim: int) -> tuple:
    index = index if isinstance(index, tuple) else (index,)
    for item in index:
        if not (item is None or item is Ellipsis or isinstance(item, slice)
                or (isinstance(item, (int, np.integer)) and not isinstance(item, bool))):
            raise TypeError(f"unsupported index {item!r}: use ints, slices, None or ...")
    if sum(item is Ellipsis for item in index) > 1:
        raise IndexError("an index can only have a single ellipsis")
    used = sum(item is not None and item is not Ellipsis for item in index)
    if used > ndim:
        raise IndexError(f"too many indices ({used}) for a buffer of {ndim} dims")
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (ndim - used) + index[at + 1:]
    return tuple(int(item) if isinstance(item, np.integer) else item for item in index)
