"""Operations: one class per differentiable op, forward(Buffers) and a hand-derived backward(grad).

Grouped as elementwise, reduce, movement and fused. `backward` returns one gradient per input
(a tuple when there are several), with None for inputs that need no gradient.
Fused ops (matmul, softmax, cross-entropy, layer norm, attention) reach the array module through
`Buffer.array` because a chain of Buffer expressions would cost extra passes over memory.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from tinygpt import backend
from tinygpt.buffer import Buffer, matmul
from tinygpt.parallel import matmul_rows, parallel_for, side_by_side
from tinygpt.utils import DType, normalize_axes


class Operation:
    """A differentiable op: forward keeps what backward needs; backward maps the output grad to input grads."""

    def __init__(self, needs_input_grad: list[bool]) -> None:
        self.needs_input_grad = needs_input_grad

    def forward(self, *buffers: Buffer, **kwargs) -> Buffer:
        raise NotImplementedError

    def backward(self, grad: Buffer) -> Buffer | None | tuple[Buffer | None, ...]:
        raise NotImplementedError


def _sum_to_shape(grad, shape: tuple[int, ...]):
    """Sum a backend array over the leading and size-1 dims that broadcasting added to reach `shape`."""
    leading = grad.ndim - len(shape)
    axes = tuple(range(leading)) + tuple(leading + i for i, size in enumerate(shape) if size == 1 and grad.shape[leading + i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


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


GELU_C = math.sqrt(2.0 / math.pi)


class GELU(Operation):
    """y = x/2 (1 + tanh(u)), u = c (x + 0.044715 x^3);  dy/dx = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3*0.044715 x^2)"""

    def forward(self, x: Buffer) -> Buffer:
        xp, a = x.xp, x.array
        self.x = flat = a.reshape(-1)  # flat, so that parallel_for can cut it into blocks
        self.t = t = xp.empty_like(flat)  # tanh(u), kept for the backward
        y = xp.empty_like(flat)
        parallel_for(xp, y.size, 1, lambda start, stop: self._forward(xp, flat[start:stop], t[start:stop], y[start:stop]))
        return Buffer.from_array(y.reshape(a.shape))

    @staticmethod
    def _forward(xp, a, t, y):
        # in place, step by step: each temporary of this chain would cost a full pass over memory
        xp.multiply(a, a, out=t)
        t *= 0.044715
        t += 1.0
        t *= a
        t *= GELU_C
        xp.tanh(t, out=t)
        xp.add(t, 1.0, out=y)
        y *= a
        y *= 0.5

    def backward(self, grad: Buffer):
        xp, x, t, g = grad.xp, self.x, self.t, grad.array.reshape(-1)
        dx = xp.empty_like(x)
        parallel_for(xp, dx.size, 1, lambda start, stop: self._backward(xp, x[start:stop], t[start:stop], g[start:stop], dx[start:stop]))
        return Buffer.from_array(dx.reshape(grad.shape))

    @staticmethod
    def _backward(xp, a, t, g, slope):
        xp.multiply(a, a, out=slope)  # slope = a c (1 + 3*0.044715 a^2) / 2 ...
        slope *= 0.5 * GELU_C * 0.134145
        slope += 0.5 * GELU_C
        slope *= a
        scratch = xp.multiply(t, t)  # ... * (1 - t^2) + (1 + t) / 2, with one scratch array
        xp.subtract(1.0, scratch, out=scratch)
        slope *= scratch
        slope += 0.5
        xp.multiply(t, 0.5, out=scratch)
        slope += scratch
        slope *= g


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


# ---- fused -----------------------------------------------------------------------------------------
class Matmul(Operation):
    """z = x @ y (batched, broadcast batch dims);  dx = dz @ y^T, dy = x^T @ dz, summed over broadcast dims"""

    def forward(self, x: Buffer, y: Buffer) -> Buffer:
        self.x, self.y = x, y
        return x.matmul(y)

    def backward(self, grad: Buffer):
        xp = grad.xp
        x = self.x.array if self.x.ndim > 1 else self.x.array[None, :]  # vectors act as 1-row / 1-column matrices
        y = self.y.array if self.y.ndim > 1 else self.y.array[:, None]
        batch = tuple(np.broadcast_shapes(x.shape[:-2], y.shape[:-2]))
        g = grad.array.reshape(batch + (x.shape[-2], y.shape[-1]))
        grad_x = grad_y = None
        if self.needs_input_grad[0]:
            grad_x = Buffer.from_array(_sum_to_shape(matmul(xp, g, xp.swapaxes(y, -1, -2)), x.shape).reshape(self.x.shape))
        if self.needs_input_grad[1]:
            if y.ndim == 2 and x.ndim > 2:  # one big GEMM instead of a batch of small ones then a sum
                gy = x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])
            else:
                gy = _sum_to_shape(xp.matmul(xp.swapaxes(x, -1, -2), g), y.shape)
            grad_y = Buffer.from_array(gy.reshape(self.y.shape))
        return grad_x, grad_y


def _shift(logits, axis: int):
    """The max along axis (kept as a dim) that makes exp safe; 0 for an empty axis, which has no max."""
    return logits.max(axis=axis, keepdims=True) if logits.shape[axis] else 0.0


def _softmax(logits, axis: int, out=None):
    xp = backend.array_module(backend.device_of(logits))
    shifted = xp.subtract(logits, _shift(logits, axis), out=out)
    exps = xp.exp(shifted, out=shifted)
    exps /= exps.sum(axis=axis, keepdims=True)
    return exps


class Softmax(Operation):
    """y = exp(x) / sum(exp(x));  dx = y * (dy - sum(dy * y))"""

    def forward(self, x: Buffer, axis: int = -1) -> Buffer:
        (self.axis,) = normalize_axes(axis, x.shape)
        self.y = _softmax(x.array, self.axis)
        return Buffer.from_array(self.y)

    def backward(self, grad: Buffer):
        g = grad.array
        return Buffer.from_array(self.y * (g - (g * self.y).sum(axis=self.axis, keepdims=True)))


class LogSoftmax(Operation):
    """y = x - logsumexp(x);  dx = dy - softmax(x) * sum(dy)"""

    def forward(self, x: Buffer, axis: int = -1) -> Buffer:
        xp, a = x.xp, x.array
        (self.axis,) = normalize_axes(axis, x.shape)
        shifted = a - _shift(a, self.axis)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=self.axis, keepdims=True))
        self.y = y
        return Buffer.from_array(y)

    def backward(self, grad: Buffer):
        g = grad.array
        return Buffer.from_array(g - grad.xp.exp(self.y) * g.sum(axis=self.axis, keepdims=True))


class CrossEntropy(Operation):
    """loss_i = logsumexp(x_i) - x_i[t_i] over the last axis;  dx_i = softmax(x_i) - onehot(t_i)"""

    def forward(self, logits: Buffer, targets: Buffer, reduction: str = "mean") -> Buffer:
        xp = logits.xp
        if targets.shape != logits.shape[:-1]:
            raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match logits {logits.shape}")
        if targets.dtype.is_float:
            raise TypeError(f"cross_entropy: targets must be integer class ids, got {targets.dtype.name}")
        num_classes = logits.shape[-1]
        flat = logits.array.reshape(-1, num_classes)
        self.targets = targets.array.reshape(-1)
        if self.targets.size and (int(self.targets.min()) < 0 or int(self.targets.max()) >= num_classes):
            raise IndexError(f"cross_entropy: target ids must lie in [0, {num_classes})")
        self.rows = xp.arange(flat.shape[0])
        shifted = flat - _shift(flat, 1)
        log_normalizer = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        losses = log_normalizer[:, 0] - shifted[self.rows, self.targets]  # not -log(p): p can round to 0
        shifted -= log_normalizer
        self.probs = xp.exp(shifted, out=shifted)
        self.shape, self.reduction = logits.shape, reduction
        return Buffer.from_array(_reduce(losses.reshape(targets.shape), reduction))

    def backward(self, grad: Buffer):
        g = grad.array
        if self.reduction == "none":
            g = g.reshape(-1, 1)
        elif self.reduction == "mean":
            g = g / max(self.rows.shape[0], 1)
        dlogits = self.probs.copy()
        dlogits[self.rows, self.targets] -= 1.0
        dlogits *= g
        return Buffer.from_array(dlogits.reshape(self.shape)), None


def _reduce(losses, reduction: str):
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean() if losses.size else losses.sum() * float("nan")
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


class LayerNorm(Operation):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis;
    dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)) with dxh = dy * w"""

    def forward(self, x: Buffer, weight: Buffer | None = None, bias: Buffer | None = None, eps: float = 1e-5) -> Buffer:
        xp, a = x.xp, x.array
        rows = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])
        self.weight = weight.array if weight is not None else None
        bias = bias.array if bias is not None else None
        self.normalized, out = xp.empty_like(rows), xp.empty_like(rows)
        self.rstd = xp.empty((rows.shape[0], 1), dtype=rows.dtype)

        def normalize(start: int, stop: int) -> None:
            normalized, rstd, y = self.normalized[start:stop], self.rstd[start:stop], out[start:stop]
            xp.subtract(rows[start:stop], rows[start:stop].mean(axis=-1, keepdims=True), out=normalized)
            variance = xp.einsum("ij,ij->i", normalized, normalized)[:, None]  # one pass, no squared temporary
            variance *= 1.0 / rows.shape[-1]
            variance += eps
            xp.sqrt(variance, out=variance)
            xp.divide(1.0, variance, out=rstd)
            normalized *= rstd
            if self.weight is not None:
                xp.multiply(normalized, self.weight, out=y)
            else:
                y[...] = normalized
            if bias is not None:
                y += bias

        parallel_for(xp, rows.shape[0], rows.shape[1], normalize)
        return Buffer.from_array(out.reshape(a.shape))

    def backward(self, grad: Buffer):
        xp, g, xh = grad.xp, grad.array, self.normalized
        rows = g.reshape(xh.shape)
        grads = [None, None, None]
        if self.needs_input_grad[0]:
            dx = xp.empty_like(xh)

            def backward_rows(start: int, stop: int) -> None:
                dxh, normalized = dx[start:stop], xh[start:stop]
                if self.weight is not None:
                    xp.multiply(rows[start:stop], self.weight, out=dxh)
                else:
                    dxh[...] = rows[start:stop]
                projection = xp.einsum("ij,ij->i", dxh, normalized)[:, None]
                projection *= 1.0 / xh.shape[-1]
                dxh -= dxh.mean(axis=-1, keepdims=True)
                dxh -= normalized * projection
                dxh *= self.rstd[start:stop]

            parallel_for(xp, xh.shape[0], xh.shape[1], backward_rows)
            grads[0] = Buffer.from_array(dx.reshape(g.shape))
        if len(self.needs_input_grad) > 1 and self.needs_input_grad[1]:
            grads[1] = Buffer.from_array(xp.einsum("ni,ni->i", rows, xh))
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            grads[2] = Buffer.from_array(rows.sum(axis=0))
        return tuple(grads[: len(self.needs_input_grad)])


class Embedding(Operation):
    """y = W[ids];  dW = scatter-add of dy rows at ids (repeated ids accumulate)"""

    def forward(self, weight: Buffer, ids: Buffer) -> Buffer:
        if ids.dtype.is_float:
            raise TypeError(f"embedding: ids must be integers, got {ids.dtype.name}")
        num_embeddings = weight.shape[0]
        self.ids, self.weight_shape, self.dtype = ids.array, weight.shape, weight.dtype
        if self.ids.size and (int(self.ids.min()) < 0 or int(self.ids.max()) >= num_embeddings):
            raise IndexError(f"embedding: ids must lie in [0, {num_embeddings}), got {int(self.ids.min())}..{int(self.ids.max())}")
        return Buffer.from_array(weight.array[self.ids])

    def backward(self, grad: Buffer):
        xp = grad.xp
        grad_weight = xp.zeros(self.weight_shape, dtype=self.dtype.numpy)
        backend.scatter_add(xp, grad_weight, self.ids.reshape(-1), grad.array.reshape(-1, self.weight_shape[-1]))
        return Buffer.from_array(grad_weight), None


def dropout_scale(device: str, shape: tuple[int, ...], dtype, p: float):
    """m / (1 - p) with m ~ Bernoulli(1 - p): the factor dropout multiplies values and gradients by."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = backend.generator(device).random(shape, dtype=dtype) >= p
    return keep.astype(dtype) * (1.0 / (1.0 - p))


class Dropout(Operation):
    """y = x * m / (1 - p) with m ~ Bernoulli(1 - p);  dx = dy * m / (1 - p)"""

    def forward(self, x: Buffer, p: float = 0.5) -> Buffer:
        self.scale = dropout_scale(x.device, x.shape, x.dtype.numpy, p)
        return Buffer.from_array(x.array * self.scale)

    def backward(self, grad: Buffer):
        return Buffer.from_array(grad.array * self.scale)


@functools.lru_cache(maxsize=64)
def causal_mask(xp, query_length: int, key_length: int, dtype):
    """Additive mask (0 where key j <= query i + offset, -inf after); cached, never part of the graph."""
    allowed = xp.tri(query_length, key_length, k=key_length - query_length, dtype=bool)
    return xp.where(allowed, 0.0, -xp.inf).astype(dtype)


QUERY_BLOCK = 32  # queries per block of causal attention (see _query_blocks); 32 measured fastest at T = 64 and 256


def _query_blocks(query_length: int, key_length: int) -> list[tuple[int, int, int]]:
    """(start, stop, keys) for each block of up to QUERY_BLOCK queries: causal attention lets the queries
    start:stop see only the first `keys` keys, so the masked upper-right part of the T x T scores (about
    half of them for long sequences) is never computed, exponentiated or multiplied."""
    offset = key_length - query_length  # with a KV cache the last query sits at the last key
    blocks = []
    for start in range(0, query_length, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, query_length)
        blocks.append((start, stop, stop + offset))
    return blocks


class ScaledDotProductAttention(Operation):
    """y = softmax(q k^T / sqrt(d) + causal) v over (B, H, T, d);
    dS = P * (dP - sum(dP * P)), dq = dS k / sqrt(d), dk = dS^T q / sqrt(d), dv = P^T dy"""

    def forward(self, q: Buffer, k: Buffer, v: Buffer, dropout_p: float = 0.0) -> Buffer:
        return Buffer.from_array(self._attend(q.xp, q.array, k.array, v.array, dropout_p, q.device))

    def backward(self, grad: Buffer):
        grads = self._attend_backward(grad.xp, grad.array, self.needs_input_grad)
        return tuple(None if g is None else Buffer.from_array(g) for g in grads)

    def _attend(self, xp, q, k, v, dropout_p: float, device: str, out=None):
        """softmax(q k^T / sqrt(d) + causal) v into `out` (allocated when None; MultiHeadAttention passes a view)."""
        self.scale = 1.0 / math.sqrt(q.shape[-1])
        self.scaled_q, self.k, self.v = q * self.scale, k, v  # scaling q costs d/T of scaling the scores
        query_length, key_length = q.shape[-2], k.shape[-2]
        mask = causal_mask(xp, query_length, key_length, q.dtype)
        self.keep = keep = dropout_scale(device, q.shape[:-1] + (key_length,), q.dtype, dropout_p) if dropout_p > 0.0 else None
        out = xp.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype) if out is None else out
        # (start, stop, keys, probabilities, dropout factor or None) of each query block
        self.blocks = [(start, stop, keys, xp.empty(q.shape[:-2] + (stop - start, keys), dtype=q.dtype),
                        None if keep is None else keep[..., start:stop, :keys])
                       for start, stop, keys in _query_blocks(query_length, key_length)]

        def attend(first: int, last: int) -> None:
            rows = _batch_part(q, first, last)
            for start, stop, keys, probs, block_keep in self.blocks:
                scores = probs[rows]
                xp.matmul(self.scaled_q[rows][..., start:stop, :], xp.swapaxes(k[rows][..., :keys, :], -1, -2), out=scores)
                scores += mask[start:stop, :keys]
                _softmax(scores, -1, out=scores)
                attention = scores if block_keep is None else scores * block_keep[rows]
                xp.matmul(attention, v[rows][..., :keys, :], out=out[rows][..., start:stop, :])

        parallel_for(xp, _batch_rows(q), _row_elements(q, key_length), attend)
        return out

    def _attend_backward(self, xp, g, needs_grad, grads=None):
        """dq, dk, dv (None where not needed), written into `grads` when given (views of a packed gradient)."""
        q, k, v = self.scaled_q, self.k, self.v
        if grads is None:
            grads = [xp.empty_like(array) if needed else None for array, needed in zip((q, k, v), needs_grad)]
        grad_q, grad_k, grad_v = grads
        if not self.blocks:  # no queries: nothing reached the keys
            for grad in (grad_k, grad_v):
                if grad is not None:
                    grad[...] = 0.0
            return grads

        def attend_backward(first: int, last: int) -> None:
            rows = _batch_part(q, first, last)
            # the last block sees every key: it writes dk and dv whole, the earlier blocks add to their part
            for add, (start, stop, keys, probs, keep) in enumerate(reversed(self.blocks)):
                probs, keep, g_block = probs[rows], None if keep is None else keep[rows], g[rows][..., start:stop, :]
                if grad_v is not None:
                    attention = probs if keep is None else probs * keep
                    _product_into(xp, grad_v[rows][..., :keys, :], xp.swapaxes(attention, -1, -2), g_block, add)
                dscores = xp.matmul(g_block, xp.swapaxes(v[rows][..., :keys, :], -1, -2))
                if keep is not None:
                    dscores *= keep
                dscores -= xp.einsum("...ij,...ij->...i", dscores, probs)[..., None]  # no T x T temporary
                dscores *= probs
                if grad_q is not None:
                    block_grad_q = grad_q[rows][..., start:stop, :]
                    xp.matmul(dscores, k[rows][..., :keys, :], out=block_grad_q)
                    block_grad_q *= self.scale
                if grad_k is not None:
                    _product_into(xp, grad_k[rows][..., :keys, :], xp.swapaxes(dscores, -1, -2), q[rows][..., start:stop, :], add)

        parallel_for(xp, _batch_rows(q), _row_elements(q, k.shape[-2]), attend_backward)
        return grads


def _product_into(xp, target, a, b, add: bool) -> None:
    """target = a @ b, or target += a @ b."""
    if add:
        target += xp.matmul(a, b)
    else:
        xp.matmul(a, b, out=target)


def _batch_rows(array) -> int:
    """How many blocks attention can be cut into: the first (batch) axis of a (B, ..., T, d) array."""
    return array.shape[0] if array.ndim > 2 else 1


def _row_elements(q, key_length: int) -> int:
    """The size of the scores of one batch row: the work parallel_for weighs."""
    return math.prod(q.shape[1:-1]) * key_length if q.ndim > 2 else q.shape[-2] * key_length


def _batch_part(array, start: int, stop: int):
    """The index of batch rows start:stop (everything for a single (T, d) sequence)."""
    return slice(start, stop) if array.ndim > 2 else Ellipsis


class MultiHeadAttention(ScaledDotProductAttention):
    """y = merge_heads(attention(split_heads(qkv))) for packed qkv of shape (B, T, 3C);
    the same math as ScaledDotProductAttention, with dq, dk, dv written into one (B, T, 3C) gradient
    (three Slice ops would each allocate and add a full-size zero gradient)."""

    def forward(self, qkv: Buffer, num_heads: int = 1, dropout_p: float = 0.0) -> Buffer:
        batch, length, packed = qkv.shape
        if packed % (3 * num_heads):
            raise ValueError(f"attention: last dim {packed} of qkv is not 3 x num_heads ({num_heads}) x head size")
        self.layout = (batch, length, 3, num_heads, packed // (3 * num_heads))
        q, k, v = qkv.array.reshape(self.layout).transpose(2, 0, 3, 1, 4)
        out = qkv.xp.empty((batch, length) + self.layout[3:], dtype=q.dtype)  # (B, T, H, d): merged heads, no copy
        self._attend(qkv.xp, q, k, v, dropout_p, qkv.device, out=out.transpose(0, 2, 1, 3))
        return Buffer.from_array(out.reshape(batch, length, packed // 3))

    def backward(self, grad: Buffer):
        xp = grad.xp
        batch, length, _, heads, head_dims = self.layout
        g = grad.array.reshape(batch, length, heads, head_dims).transpose(0, 2, 1, 3)
        grad_qkv = xp.empty(self.layout, dtype=g.dtype)
        self._attend_backward(xp, g, (True, True, True), grads=list(grad_qkv.transpose(2, 0, 3, 1, 4)))
        return Buffer.from_array(grad_qkv.reshape(batch, length, -1))


class Linear(Operation):
    """y = x @ W + b with W of shape (in, out), one GEMM over all leading dims;  dx = dy W^T, dW = x^T dy, db = sum dy"""

    def forward(self, x: Buffer, weight: Buffer, bias: Buffer | None = None) -> Buffer:
        if weight.ndim != 2 or x.ndim == 0 or x.shape[-1] != weight.shape[0]:
            raise ValueError(f"linear: input of shape {x.shape} does not fit weights of shape {weight.shape}")
        self.x, self.weight = x.array, weight.array
        out = matmul(x.xp, self.x, self.weight)
        if bias is not None:
            out += bias.array
        return Buffer.from_array(out)

    def backward(self, grad: Buffer):
        xp, g = grad.xp, grad.array.reshape(-1, grad.shape[-1])
        x = self.x.reshape(-1, self.x.shape[-1])
        grads = [None] * len(self.needs_input_grad)
        if self.needs_input_grad[0] and self.needs_input_grad[1]:
            grad_x, grad_weight = side_by_side(xp, g.size * x.shape[1], lambda: g @ self.weight.T, lambda: x.T @ g)
            grads[0], grads[1] = Buffer.from_array(grad_x.reshape(self.x.shape)), Buffer.from_array(grad_weight)
        elif self.needs_input_grad[0]:
            grads[0] = Buffer.from_array(matmul_rows(xp, g, self.weight.T).reshape(self.x.shape))
        elif self.needs_input_grad[1]:
            grads[1] = Buffer.from_array(matmul_rows(xp, x.T, g))
        if len(grads) > 2 and self.needs_input_grad[2]:
            grads[2] = Buffer.from_array(g.sum(axis=0))
        return tuple(grads)


__all__ = [
    "Operation", "Add", "Sub", "Neg", "Mul", "Div", "Pow", "Log", "Exp", "Maximum", "Relu", "Cast", "Tanh", "GELU",
    "Sum", "Max", "Reshape", "Expand", "Permute", "Slice", "Concatenate", "Tril", "Matmul", "Softmax",
    "LogSoftmax", "CrossEntropy", "LayerNorm", "Embedding", "Dropout", "ScaledDotProductAttention",
    "MultiHeadAttention", "Linear",
]
