"""The primitives: the documented ops, grouped as elementwise, reduce and movement, each written in Buffer
operations. `backward` returns one gradient per input (a tuple when there are several), with None for inputs
that need no gradient.
"""
from __future__ import annotations

from tinygpt.buffer import Buffer
from tinygpt.mlops.operation import Operation
from tinygpt.utils import DType, normalize_axes


# ---- elementwise ------------------------------------------------------------------------------------
class Add(Operation):
    """z = x + y;  dz/dx = 1, dz/dy = 1"""

    def forward(self, x: Buffer, y: Buffer) -> Buffer:
        return x + y

    def backward(self, grad: Buffer):
        return (grad if self.needs_input_grad[0] else None, grad if self.needs_input_grad[1] else None)


class Sub(Operation):
    """z = x - y;  dz/dx = 1, dz/dy = -1"""

    def forward(self, x: Buffer, y: Buffer) -> Buffer:
        return x - y

    def backward(self, grad: Buffer):
        return (grad if self.needs_input_grad[0] else None, -grad if self.needs_input_grad[1] else None)


class Neg(Operation):
    """y = -x;  dy/dx = -1"""

    def forward(self, x: Buffer) -> Buffer:
        return -x

    def backward(self, grad: Buffer):
        return -grad


class Mul(Operation):
    """z = x * y;  dz/dx = y, dz/dy = x"""

    def forward(self, x: Buffer, y: Buffer) -> Buffer:
        self.x, self.y = x, y
        return x * y

    def backward(self, grad: Buffer):
        return (grad * self.y if self.needs_input_grad[0] else None,
                grad * self.x if self.needs_input_grad[1] else None)


class Div(Operation):
    """z = x / y;  dz/dx = 1/y, dz/dy = -x/y^2"""

    def forward(self, x: Buffer, y: Buffer) -> Buffer:
        self.x, self.y = x, y
        return x / y

    def backward(self, grad: Buffer):
        grad_x = grad / self.y if self.needs_input_grad[0] else None
        grad_y = -grad * self.x / (self.y * self.y) if self.needs_input_grad[1] else None
        return grad_x, grad_y


class Pow(Operation):
    """z = x ** y;  dz/dx = y x^(y-1), dz/dy = x^y log(x)  (both 0 where their limit is, as PyTorch:
    dz/dx at y = 0, dz/dy at x = 0 with y >= 0, instead of the 0 * inf = NaN of the formula)"""

    def forward(self, x: Buffer, y: Buffer) -> Buffer:
        self.x, self.y = x, y
        self.z = x ** y
        return self.z

    def backward(self, grad: Buffer):
        grad_x = grad_y = None
        if self.needs_input_grad[0]:
            grad_x = (self.y == 0.0).where(0.0, grad * self.y * self.x ** (self.y - 1.0))
        if self.needs_input_grad[1]:
            grad_y = ((self.x == 0.0) * (self.y >= 0.0)).where(0.0, grad * self.z * self.x.log())
        return grad_x, grad_y


class Log(Operation):
    """y = log(x);  dy/dx = 1/x"""

    def forward(self, x: Buffer) -> Buffer:
        self.x = x
        return x.log()

    def backward(self, grad: Buffer):
        return grad / self.x


class Exp(Operation):
    """y = exp(x);  dy/dx = y"""

    def forward(self, x: Buffer) -> Buffer:
        self.y = x.exp()
        return self.y

    def backward(self, grad: Buffer):
        return grad * self.y


class Maximum(Operation):
    """z = max(x, y);  the grad goes to the larger input, split in half on ties (as PyTorch)"""

    def forward(self, x: Buffer, y: Buffer) -> Buffer:
        self.x, self.y = x, y
        return x.maximum(y)

    def backward(self, grad: Buffer):
        share_x = (self.x > self.y).float() + (self.x == self.y).float() * 0.5
        grad_x = grad * share_x if self.needs_input_grad[0] else None
        grad_y = grad * (1.0 - share_x) if self.needs_input_grad[1] else None
        return grad_x, grad_y


class Relu(Operation):
    """y = max(x, 0);  dy/dx = [x > 0]"""

    def forward(self, x: Buffer) -> Buffer:
        self.positive = (x > 0).astype(x.dtype)
        return x * self.positive

    def backward(self, grad: Buffer):
        return grad * self.positive


class Cast(Operation):
    """y = x as another dtype;  dx = dy cast back to x's dtype"""

    def forward(self, x: Buffer, dtype: DType = DType.float32) -> Buffer:
        self.dtype = x.dtype
        return x.astype(dtype)

    def backward(self, grad: Buffer):
        return grad.astype(self.dtype)


class Tanh(Operation):
    """y = tanh(x);  dy/dx = 1 - y^2"""

    def forward(self, x: Buffer) -> Buffer:
        self.y = x.tanh()
        return self.y

    def backward(self, grad: Buffer):
        return grad * (1.0 - self.y * self.y)


# ---- reduce ----------------------------------------------------------------------------------------
class Sum(Operation):
    """y = sum over axes;  dy/dx = 1 broadcast back over the summed axes"""

    def forward(self, x: Buffer, axes=None, keepdim: bool = False) -> Buffer:
        self.shape, self.axes = x.shape, normalize_axes(axes, x.shape)
        return x.sum(self.axes, keepdim)

    def backward(self, grad: Buffer):
        kept = tuple(1 if axis in self.axes else size for axis, size in enumerate(self.shape))
        return grad.reshape(kept).expand(self.shape)


class Max(Operation):
    """y = max over axes;  the grad is shared evenly among the elements equal to the max (as torch.amax)"""

    def forward(self, x: Buffer, axes=None, keepdim: bool = False) -> Buffer:
        self.axes = normalize_axes(axes, x.shape)
        kept = x.max(self.axes, keepdim=True)
        self.is_max = (x == kept.expand(x.shape)).float()
        self.count = self.is_max.sum(self.axes, keepdim=True)
        return kept if keepdim else kept.reshape(tuple(s for i, s in enumerate(x.shape) if i not in self.axes))

    def backward(self, grad: Buffer):
        share = (grad.reshape(self.count.shape) / self.count).expand(self.is_max.shape)
        return share * self.is_max


# ---- movement --------------------------------------------------------------------------------------
class Reshape(Operation):
    """y = x viewed with a new shape;  dx = dy viewed with the old shape"""

    def forward(self, x: Buffer, shape=()) -> Buffer:
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, grad: Buffer):
        return grad.reshape(self.shape)


class Expand(Operation):
    """y = x broadcast (stride 0) along size-1 dims;  dx = dy summed over those dims"""

    def forward(self, x: Buffer, shape=()) -> Buffer:
        self.shape = x.shape
        return x.expand(shape)

    def backward(self, grad: Buffer):
        axes = tuple(i for i, (old, new) in enumerate(zip(self.shape, grad.shape)) if old != new)
        return grad.sum(axes, keepdim=True) if axes else grad


class Permute(Operation):
    """y = x with dims reordered;  dx = dy with the inverse order"""

    def forward(self, x: Buffer, dims=()) -> Buffer:
        out = x.permute(dims)
        dims = tuple(d % max(x.ndim, 1) for d in dims)  # negative dims count from the end
        self.inverse = tuple(sorted(range(len(dims)), key=lambda i: dims[i]))
        return out

    def backward(self, grad: Buffer):
        return grad.permute(self.inverse)


class Slice(Operation):
    """y = x[index] (a view);  dx = zeros with dy written at index"""

    def forward(self, x: Buffer, index=None) -> Buffer:
        self.shape, self.index, self.dtype, self.device = x.shape, index, x.dtype, x.device
        return x[index]

    def backward(self, grad: Buffer):
        grad_x = Buffer.zeros(self.shape, self.dtype, self.device)
        grad_x[self.index] = grad
        return grad_x


class Concatenate(Operation):
    """y = [x1, x2, ...] along axis;  dxi = the slice of dy that xi filled"""

    def forward(self, *buffers: Buffer, axis: int = 0) -> Buffer:
        out = Buffer.concatenate(buffers, axis)
        (self.axis,) = normalize_axes(axis, out.shape)
        self.sizes = [b.shape[self.axis] for b in buffers]
        return out

    def backward(self, grad: Buffer):
        grads, start = [], 0
        for size, needed in zip(self.sizes, self.needs_input_grad):
            index = (slice(None),) * self.axis + (slice(start, start + size),)
            grads.append(grad[index] if needed else None)
            start += size
        return tuple(grads)


class Tril(Operation):
    """y = lower triangle of x (last two dims);  dx = lower triangle of dy"""

    def forward(self, x: Buffer, diagonal: int = 0) -> Buffer:
        self.diagonal = diagonal
        return x.tril(diagonal)

    def backward(self, grad: Buffer):
        return grad.tril(self.diagonal)


__all__ = ["Add", "Sub", "Neg", "Mul", "Div", "Pow", "Log", "Exp", "Maximum", "Relu", "Cast", "Tanh", "Sum", "Max",
           "Reshape", "Expand", "Permute", "Slice", "Concatenate", "Tril"]
