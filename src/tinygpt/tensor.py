"""Tensor: a Buffer plus the autograd graph (GradientFunction, apply_op, backward, no_grad)."""
from __future__ import annotations

import functools
import json
from numbers import Number
from typing import Any, Iterator, Sequence

import numpy as np

from tinygpt import backend, mlops
from tinygpt.buffer import Buffer
from tinygpt.utils import DType, normalize_axes

_grad_enabled = True
_observer = None  # set by tinygpt.instruments while a profile records; None costs one check per op


class no_grad:
    """Context manager (and decorator) in which no graph is built."""

    def __enter__(self) -> None:
        global _grad_enabled
        self.previous, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc_info) -> None:
        global _grad_enabled
        _grad_enabled = self.previous

    def __call__(self, fn):
        @functools.wraps(fn)
        def without_grad(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        return without_grad


def is_grad_enabled() -> bool:
    return _grad_enabled


class GradientFunction:
    """The node that made a tensor: the operation (holding what backward needs) and its input tensors."""

    __slots__ = ("operation", "inputs", "input_versions", "released")

    def __init__(self, operation: mlops.Operation, inputs: Sequence["Tensor | None"]) -> None:
        self.operation = operation
        self.inputs = tuple(inputs)
        self.input_versions = tuple(t._version if t is not None else 0 for t in inputs)
        self.released = False

    @property
    def name(self) -> str:
        return type(self.operation).__name__ if self.operation is not None else "<released>"

    def backward(self, grad: Buffer) -> Iterator[tuple["Tensor", Buffer]]:
        """Yield (input tensor, gradient) for each input that requires grad."""
        for tensor, version in zip(self.inputs, self.input_versions):
            if tensor is not None and tensor._version != version:
                raise RuntimeError(
                    f"a tensor of shape {tensor.shape} saved by {self.name} was modified in place after use "
                    f"(version {version} -> {tensor._version}); its gradient would be wrong")
        grads = self.operation.backward(grad) if _observer is None else _observer.backward(self.operation, grad)
        if not isinstance(grads, tuple):
            grads = (grads,)
        for tensor, input_grad in zip(self.inputs, grads):
            if tensor is not None and tensor.requires_grad and input_grad is not None:
                yield tensor, input_grad

    def release(self) -> None:
        """Drop the saved buffers and the inputs so that their memory can be freed."""
        self.operation, self.inputs, self.released = None, (), True


def apply_op(operation_class: type[mlops.Operation], *inputs: "Tensor | None", **kwargs) -> "Tensor":
    """Run an op's forward on the inputs' buffers; attach a GradientFunction if any input requires grad."""
    needs_input_grad = [_grad_enabled and t is not None and t.requires_grad for t in inputs]
    operation = operation_class(needs_input_grad)
    buffers = [t.buffer if t is not None else None for t in inputs]
    out = operation.forward(*buffers, **kwargs) if _observer is None else _observer.forward(operation, buffers, kwargs)
    result = Tensor._wrap(out, any(needs_input_grad))
    if inputs and inputs[0] is not None and out.data is inputs[0].buffer.data:
        result._version_counter = inputs[0]._version_counter  # a view: in-place changes show in both
    if result.requires_grad:
        result.grad_fn = GradientFunction(operation, inputs)
    return result


def _as_buffer(data: Any, dtype: DType | None, device: str | None) -> Buffer:
    if isinstance(data, Tensor):
        data = data.buffer
    if isinstance(data, Buffer) and (dtype is None or dtype == data.dtype) and (device is None or backend.normalize_device(device) == data.device):
        return data
    return Buffer(data, dtype=dtype, device=device)


class Tensor:
    """An n-d array that records the operations applied to it, so that backward() can compute gradients."""

    __slots__ = ("buffer", "requires_grad", "grad_fn", "grad", "_version_counter", "_retains_grad", "_grad_home",
                 "__weakref__")
    __array_priority__ = 1000  # numpy scalars defer to Tensor's reflected operators

    def __init__(self, data: Any, dtype: DType | None = None, requires_grad: bool = False, device: str | None = None) -> None:
        self.buffer = _as_buffer(data, dtype, device)
        if requires_grad and not self.buffer.dtype.is_float:
            raise TypeError(f"only float tensors can require gradients, got {self.buffer.dtype.name}")
        self.requires_grad = requires_grad
        self.grad_fn: GradientFunction | None = None
        self.grad: Tensor | None = None
        shares_storage = isinstance(data, Tensor) and self.buffer.data is data.buffer.data
        self._version_counter = data._version_counter if shares_storage else [0]
        self._retains_grad, self._grad_home = False, None

    @classmethod
    def _wrap(cls, buffer: Buffer, requires_grad: bool = False) -> "Tensor":
        tensor = cls.__new__(cls)
        tensor.buffer, tensor.requires_grad, tensor.grad_fn, tensor.grad = buffer, requires_grad, None, None
        tensor._version_counter, tensor._retains_grad, tensor._grad_home = [0], False, None
        return tensor

    def _alias(self, buffer: Buffer) -> "Tensor":
        """A graph-less tensor over (a view of) this storage; it shares the version counter, so in-place
        changes through either one are seen by the backward of ops that saved the other."""
        tensor = Tensor._wrap(buffer)
        tensor._version_counter = self._version_counter
        return tensor

    @property
    def _version(self) -> int:
        return self._version_counter[0]

    @_version.setter
    def _version(self, value: int) -> None:
        self._version_counter[0] = value

    # ---- description ---------------------------------------------------------------------------
    shape = property(lambda self: self.buffer.shape)
    ndim = property(lambda self: self.buffer.ndim)
    dtype = property(lambda self: self.buffer.dtype)
    device = property(lambda self: self.buffer.device)
    numel = property(lambda self: self.buffer.numel)
    is_leaf = property(lambda self: self.grad_fn is None)

    def __repr__(self) -> str:
        extra = f", grad_fn={self.grad_fn.name}" if self.grad_fn else (", requires_grad=True" if self.requires_grad else "")
        return f"Tensor({self.to_python()}, shape={self.shape}, dtype={self.dtype.name}{extra})"

    def __len__(self) -> int:
        return len(self.buffer)

    def __bool__(self) -> bool:
        if self.numel != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous: use .item() on one element")
        return bool(self.item())

    def to_python(self) -> Any:
        return self.buffer.to_python()

    def numpy(self) -> np.ndarray:
        return self.buffer.numpy()

    def item(self) -> Any:
        return self.buffer.item()

    # ---- the array world: numpy's __array__, DLPack (torch.from_dlpack, np.from_dlpack, CuPy, JAX) ------
    def __array__(self, dtype=None, copy: bool | None = None) -> np.ndarray:
        """np.asarray(tensor): a view of the values on the CPU (np.array copies); the graph is not followed."""
        if self.device != "cpu" and copy is False:
            raise ValueError(f"a {self.device} tensor cannot be seen by numpy without a copy to the host")
        array = self.buffer.array if self.device == "cpu" else self.buffer.numpy()
        if dtype is not None and np.dtype(dtype) != array.dtype:
            if copy is False:
                raise ValueError(f"a {self.dtype.name} tensor cannot be seen as {np.dtype(dtype)} without a copy")
            return array.astype(dtype)
        return array.copy() if copy and self.device == "cpu" else array

    def __dlpack__(self, **kwargs):
        """The DLPack capsule of the values (shared memory, no graph), for torch.from_dlpack and the like."""
        return self.buffer.dlpack_array().__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.buffer.array.__dlpack_device__()

    @staticmethod
    def from_dlpack(source: Any, requires_grad: bool = False) -> "Tensor":
        """A tensor sharing another library's array through DLPack (a copy only where the dtype or a
        backwards stride forces one)."""
        return Tensor(Buffer.from_dlpack(source), requires_grad=requires_grad)

    def to(self, device: str) -> "Tensor":
        """A copy on another device (a new leaf that keeps requires_grad); self when already there."""
        if backend.normalize_device(device) == self.device:
            return self
        return Tensor._wrap(self.buffer.to(device), self.requires_grad)

    def detach(self) -> "Tensor":
        return self._alias(self.buffer)

    def astype(self, dtype: DType) -> "Tensor":
        """The values as another dtype; gradients flow back through the cast."""
        return self if dtype == self.dtype else apply_op(mlops.Cast, self, dtype=dtype)

    def float(self) -> "Tensor":
        return self.astype(DType.float32)

    # ---- autograd -------------------------------------------------------------------------------
    def _as_floating(self) -> "Tensor":
        """Itself if float, else cast to float32: exp and log of integers are floats, as in PyTorch."""
        return self if self.dtype.is_float else self.float()

    def retain_grad(self) -> None:
        """Keep .grad on this non-leaf tensor after backward."""
        self._retains_grad = True

    def zero_grad(self) -> None:
        self.grad = None

    def keep_grad_in(self, home: Buffer | None) -> None:
        """Write this tensor's gradient into `home` (a view into one flat array of many gradients) at each
        backward, not into a new array; a .grad kept from one step then shows the next one's (None: new arrays)."""
        if home is not None and home.shape != self.shape:
            raise ValueError(f"a gradient home of shape {home.shape} for a tensor of shape {self.shape}")
        self._grad_home = home

    def grad_home(self) -> Buffer | None:
        """The buffer given to keep_grad_in when this tensor's .grad is there now; else None."""
        return self._grad_home if self.grad is not None and self.grad.buffer is self._grad_home else None

    def _accumulate_grad(self, grad: Buffer) -> None:
        if grad.shape != self.shape:
            raise RuntimeError(f"an op returned a gradient of shape {grad.shape} for a tensor of shape {self.shape}")
        home = self._grad_home
        if home is not None and self.grad is None:
            home.array[...] = grad.array
            self.grad = Tensor._wrap(home)
        elif home is not None and self.grad.buffer is home:
            grad.xp.add(home.array, grad.array, out=home.array)
        elif self.grad is None:
            self.grad = Tensor._wrap(Buffer.from_array(grad.xp.array(grad.array)))  # an owned, contiguous copy
        else:
            self.grad = Tensor._wrap(self.grad.buffer + grad)

    def backward(self, incoming_gradient: "Tensor | Buffer | None" = None, retain_graph: bool = False) -> None:
        """Propagate gradients to every leaf (and retain_grad tensor) this tensor depends on."""
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no grad_fn")
        if incoming_gradient is None:
            if self.numel != 1:
                raise RuntimeError(f"backward of a non-scalar tensor of shape {self.shape} needs an incoming_gradient")
            grad = Buffer.ones(self.shape, self.dtype, self.device)
        else:
            grad = _as_buffer(incoming_gradient, self.dtype, self.device)
            if grad.shape != self.shape:
                raise ValueError(f"backward: incoming gradient of shape {grad.shape} for a tensor of shape {self.shape}")
        pending_grads: dict[int, Buffer] = {id(self): grad}
        for node in self._topological_order():
            grad = pending_grads.pop(id(node))
            if node.grad_fn is None or node._retains_grad:
                node._accumulate_grad(grad)
            if node.grad_fn is None:
                continue
            for tensor, input_grad in node.grad_fn.backward(grad):
                key = id(tensor)
                pending_grads[key] = pending_grads[key] + input_grad if key in pending_grads else input_grad
            if not retain_graph:
                node.grad_fn.release()

    def _topological_order(self) -> list["Tensor"]:
        """Tensors from this one to the leaves, each after every tensor that consumes it (iterative DFS)."""
        order, visited = [], set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                order.append(node)
                continue
            if id(node) in visited:  # marked when expanded, not when pushed: else a node reached by two
                continue             # paths could be emitted before a consumer that is still on the stack
            visited.add(id(node))
            stack.append((node, True))
            if node.grad_fn is None:
                continue
            if node.grad_fn.released:
                raise RuntimeError("backward through a graph that was already released: "
                                   "call backward(retain_graph=True) the first time to backpropagate twice")
            for child in node.grad_fn.inputs:
                if child is not None and child.requires_grad and id(child) not in visited:
                    stack.append((child, False))
        order.reverse()
        return order

    def print_dag(self, file=None) -> None:
        """Print the graph that produced this tensor, one node per line, inputs indented."""
        stack = [(self, 0)]
        while stack:
            node, depth = stack.pop()
            label = node.grad_fn.name if node.grad_fn else ("Leaf" if node.requires_grad else "Constant")
            print(f"{'  ' * depth}{label} shape={node.shape} dtype={node.dtype.name}", file=file)
            if node.grad_fn is not None:
                stack.extend((child, depth + 1) for child in reversed(node.grad_fn.inputs) if child is not None)

    # ---- broadcasting ----------------------------------------------------------------------------
    def _coerce(self, other: Any) -> "Tensor":
        if isinstance(other, Tensor):
            return other
        if isinstance(other, (Number, np.generic)):
            dtype = self.dtype if self.dtype.is_float or not isinstance(other, (float, np.floating)) else DType.float32
            return Tensor._wrap(Buffer(other, dtype=dtype, device=self.device))
        return Tensor(other, device=self.device)

    def broadcast_to(self, shape: tuple[int, ...]) -> "Tensor":
        """numpy rules: prepend size-1 dims, then expand size-1 dims (summed back in backward)."""
        if self.shape == shape:
            return self
        padded = (1,) * (len(shape) - self.ndim) + self.shape
        if not self.requires_grad or not _grad_enabled:
            return self._alias(self.buffer.reshape(padded).expand(shape))
        return self.reshape(padded).expand(shape)

    def _binary(self, operation, other: Any, reverse: bool = False) -> "Tensor":
        other = self._coerce(other)
        x, y = (other, self) if reverse else (self, other)
        if x.dtype != y.dtype:
            common = DType.promote(x.dtype, y.dtype)
            x, y = x.astype(common), y.astype(common)
        if x.shape == y.shape:
            return apply_op(operation, x, y)
        try:
            shape = tuple(np.broadcast_shapes(x.shape, y.shape))
        except ValueError:
            raise ValueError(f"{operation.__name__.lower()}: shapes {x.shape} and {y.shape} do not broadcast") from None
        return apply_op(operation, x.broadcast_to(shape), y.broadcast_to(shape))

    # ---- elementwise -----------------------------------------------------------------------------
    def __add__(self, other): return self._binary(mlops.Add, other)
    def __radd__(self, other): return self._binary(mlops.Add, other, reverse=True)
    def __sub__(self, other): return self._binary(mlops.Sub, other)
    def __rsub__(self, other): return self._binary(mlops.Sub, other, reverse=True)
    def __mul__(self, other): return self._binary(mlops.Mul, other)
    def __rmul__(self, other): return self._binary(mlops.Mul, other, reverse=True)
    def __truediv__(self, other): return self._binary(mlops.Div, other)
    def __rtruediv__(self, other): return self._binary(mlops.Div, other, reverse=True)
    def __pow__(self, other): return self._binary(mlops.Pow, other)
    def __rpow__(self, other): return self._binary(mlops.Pow, other, reverse=True)
    def __neg__(self): return apply_op(mlops.Neg, self)
    def maximum(self, other): return self._binary(mlops.Maximum, other)

    def _compare(self, other: Any, compare) -> "Tensor":
        other = self._coerce(other)
        shape = tuple(np.broadcast_shapes(self.shape, other.shape))
        return Tensor._wrap(compare(self.broadcast_to(shape).detach().buffer, other.broadcast_to(shape).detach().buffer))

    def __lt__(self, other): return self._compare(other, Buffer.__lt__)
    def __le__(self, other): return self._compare(other, Buffer.__le__)
    def __gt__(self, other): return self._compare(other, Buffer.__gt__)
    def __ge__(self, other): return self._compare(other, Buffer.__ge__)
    def __eq__(self, other): return self._compare(other, Buffer.__eq__)  # type: ignore[override]
    def __ne__(self, other): return self._compare(other, Buffer.__ne__)  # type: ignore[override]
    __hash__ = object.__hash__

    def exp(self): return apply_op(mlops.Exp, self._as_floating())
    def log(self): return apply_op(mlops.Log, self._as_floating())
    def relu(self): return apply_op(mlops.Relu, self)
    def gelu(self): return apply_op(mlops.GELU, self)
    def tanh(self): return apply_op(mlops.Tanh, self)
    def softmax(self, axis: int = -1): return apply_op(mlops.Softmax, self, axis=axis)
    def log_softmax(self, axis: int = -1): return apply_op(mlops.LogSoftmax, self, axis=axis)

    # ---- reduce --------------------------------------------------------------------------------
    def sum(self, axes=None, keepdim: bool = False) -> "Tensor":
        return apply_op(mlops.Sum, self, axes=axes, keepdim=keepdim)

    def mean(self, axes=None, keepdim: bool = False) -> "Tensor":
        count = int(np.prod([self.shape[axis] for axis in normalize_axes(axes, self.shape)]))
        return self.sum(axes, keepdim) / float(count) if count else self.sum(axes, keepdim) * float("nan")

    def max(self, axes=None, keepdim: bool = False) -> "Tensor":
        return apply_op(mlops.Max, self, axes=axes, keepdim=keepdim)

    # ---- movement ------------------------------------------------------------------------------
    def reshape(self, *shape) -> "Tensor":
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return apply_op(mlops.Reshape, self, shape=shape)

    def expand(self, shape: Sequence[int]) -> "Tensor":
        """A broadcast view (stride 0) of size-1 dims, as torch.expand: `shape` may add leading dims, -1 keeps a size."""
        shape = tuple(shape)
        leading = len(shape) - self.ndim
        if leading < 0:
            raise ValueError(f"expand: shape {shape} has fewer dims than the tensor's {self.shape}")
        shape = shape[:leading] + tuple(old if new == -1 else new for old, new in zip(self.shape, shape[leading:]))
        source = self.reshape((1,) * leading + self.shape) if leading else self
        return apply_op(mlops.Expand, source, shape=shape)

    def permute(self, dims: Sequence[int]) -> "Tensor":
        return apply_op(mlops.Permute, self, dims=tuple(dims))

    def transpose(self, axis1: int = -2, axis2: int = -1) -> "Tensor":
        for axis in (axis1, axis2):
            if not -self.ndim <= axis < self.ndim:
                raise ValueError(f"transpose: axis {axis} is out of range for a {self.ndim}-D tensor")
        dims = list(range(self.ndim))
        dims[axis1], dims[axis2] = dims[axis2], dims[axis1]
        return self.permute(dims)

    def tril(self, diagonal: int = 0) -> "Tensor":
        return apply_op(mlops.Tril, self, diagonal=diagonal)

    @staticmethod
    def concatenate(tensors: Sequence["Tensor"], axis: int = 0) -> "Tensor":
        return apply_op(mlops.Concatenate, *tensors, axis=axis)

    def __getitem__(self, index) -> "Tensor":
        return apply_op(mlops.Slice, self, index=index)

    # ---- matrix and fused ops ------------------------------------------------------------------
    def dot(self, other: "Tensor") -> "Tensor":
        return apply_op(mlops.Matmul, self, self._coerce(other))

    __matmul__ = dot

    def __rmatmul__(self, other):
        return apply_op(mlops.Matmul, self._coerce(other), self)

    # ---- in place ------------------------------------------------------------------------------
    def _check_inplace(self) -> None:
        if _grad_enabled and self.requires_grad:
            raise RuntimeError("in-place change of a tensor that requires grad: do it inside tinygpt.no_grad()")
        self._version += 1

    def assign(self, other: Any) -> "Tensor":
        """Overwrite the values in place (bumps the version counter)."""
        self._check_inplace()
        self.buffer.assign_(self._coerce(other).broadcast_to(self.shape).buffer)
        return self

    def __setitem__(self, index, value) -> None:
        self._check_inplace()
        target = self.buffer[index]
        target.assign_(self._coerce(value).broadcast_to(target.shape).buffer)

    def _inplace(self, operation: str, other) -> "Tensor":
        self._check_inplace()
        other = self._coerce(other).broadcast_to(self.shape)
        self.buffer.update_(operation, other.buffer)
        return self

    def __iadd__(self, other): return self._inplace("add", other)
    def __isub__(self, other): return self._inplace("subtract", other)
    def __imul__(self, other): return self._inplace("multiply", other)
    def __itruediv__(self, other): return self._inplace("true_divide", other)
    def __ipow__(self, other): return self._inplace("power", other)

    # ---- factories -----------------------------------------------------------------------------
    @staticmethod
    def uniform(shape, low: float = 0.0, high: float = 1.0, dtype: DType = DType.float32, requires_grad: bool = False, device: str | None = None) -> "Tensor":
        return Tensor(Buffer.uniform(shape, low, high, dtype, device), requires_grad=requires_grad)

    @staticmethod
    def normal(shape, mean: float = 0.0, std: float = 1.0, dtype: DType = DType.float32, requires_grad: bool = False, device: str | None = None) -> "Tensor":
        return Tensor(Buffer.normal(shape, mean, std, dtype, device), requires_grad=requires_grad)

    @staticmethod
    def zeros(shape, dtype: DType = DType.float32, requires_grad: bool = False, device: str | None = None) -> "Tensor":
        return Tensor(Buffer.zeros(shape, dtype, device), requires_grad=requires_grad)

    @staticmethod
    def ones(shape, dtype: DType = DType.float32, requires_grad: bool = False, device: str | None = None) -> "Tensor":
        return Tensor(Buffer.ones(shape, dtype, device), requires_grad=requires_grad)

    @staticmethod
    def arange(start: int, stop: int | None = None, step: int = 1, dtype: DType = DType.int32, requires_grad: bool = False, device: str | None = None) -> "Tensor":
        return Tensor(Buffer.arange(start, stop, step, dtype, device), requires_grad=requires_grad)

    # ---- serialisation -------------------------------------------------------------------------
    def serialize_tensor(self) -> str:
        """A JSON string with shape, dtype, requires_grad and the values."""
        return json.dumps({"shape": list(self.shape), "dtype": self.dtype.value,
                           "requires_grad": self.requires_grad, "data": self.to_python()})

    @staticmethod
    def validate_serialized_tensor(text: str) -> bool:
        """Whether `text` is a tensor as `serialize_tensor` writes it."""
        try:
            Tensor.deserialize_tensor(text)
        except ValueError:
            return False
        return True

    @staticmethod
    def deserialize_tensor(text: str) -> "Tensor":
        try:
            record = json.loads(text)
            dtype = DType(record["dtype"])
            values = np.array(record["data"], dtype=dtype.numpy).reshape(record["shape"])
            return Tensor(values, dtype=dtype, requires_grad=bool(record["requires_grad"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"not a serialized tensor: {error}") from None
