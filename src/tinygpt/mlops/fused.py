"""Fused operations: each computes a whole piece of math (a layer norm, an attention, a loss) in one op,
with a hand-derived backward. Those with a loop kernel call it by name from `tinygpt.kernels` for the
buffer's device; `docs/operation.md` shows each beside its composition from Tensor primitives. The fused ops
of the modern GPT recipe are beside them, in modern.py.
"""
from __future__ import annotations

import math

import numpy as np

from tinygpt import kernels
from tinygpt.buffer import Buffer, matmul
from tinygpt.mlops.operation import Operation
from tinygpt.utils import normalize_axes


def _sum_to_shape(grad, shape: tuple[int, ...]):
    """Sum a backend array over the leading and size-1 dims that broadcasting added to reach `shape`."""
    leading = grad.ndim - len(shape)
    axes = tuple(range(leading)) + tuple(leading + i for i, size in enumerate(shape) if size == 1 and grad.shape[leading + i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


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
                gy = xp.matmul(x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]))
            else:
                gy = _sum_to_shape(xp.matmul(xp.swapaxes(x, -1, -2), g), y.shape)
            grad_y = Buffer.from_array(gy.reshape(self.y.shape))
        return grad_x, grad_y


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
        g = grad.array.reshape(-1, grad.shape[-1])
        x = self.x.reshape(-1, self.x.shape[-1])
        grads = [None] * len(self.needs_input_grad)
        grad_x = grad.xp.matmul(g, self.weight.T) if self.needs_input_grad[0] else None
        grad_weight = grad.xp.matmul(x.T, g) if self.needs_input_grad[1] else None
        if grad_x is not None:
            grads[0] = Buffer.from_array(grad_x.reshape(self.x.shape))
        if grad_weight is not None:
            grads[1] = Buffer.from_array(grad_weight)
        if len(grads) > 2 and self.needs_input_grad[2]:
            grads[2] = Buffer.from_array(g.sum(axis=0))
        return tuple(grads)


def _shift(logits, axis: int):
    """The max along axis (kept as a dim) that makes exp safe; 0 for an empty axis, which has no max."""
    return logits.max(axis=axis, keepdims=True) if logits.shape[axis] else 0.0


class Softmax(Operation):
    """y = exp(x) / sum(exp(x));  dx = y * (dy - sum(dy * y))"""

    def forward(self, x: Buffer, axis: int = -1) -> Buffer:
        xp, a = x.xp, x.array
        (self.axis,) = normalize_axes(axis, x.shape)
        exps = xp.exp(a - _shift(a, self.axis))
        exps /= exps.sum(axis=self.axis, keepdims=True)
        self.y = exps
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
        self.y = shifted - xp.log(xp.exp(shifted).sum(axis=self.axis, keepdims=True))
        return Buffer.from_array(self.y)

    def backward(self, grad: Buffer):
        g = grad.array
        return Buffer.from_array(g - grad.xp.exp(self.y) * g.sum(axis=self.axis, keepdims=True))


def _rows(buffer: Buffer):
    """The buffer's values as a C-contiguous (rows, last dim) array (a view when the layout allows)."""
    array = buffer.array
    return buffer.xp.ascontiguousarray(array.reshape(math.prod(array.shape[:-1]), array.shape[-1]))


class CrossEntropy(Operation):
    """loss_i = logsumexp(x_i) - x_i[t_i] over the last axis;  dx_i = softmax(x_i) - onehot(t_i)"""

    def forward(self, logits: Buffer, targets: Buffer, reduction: str = "mean") -> Buffer:
        if targets.shape != logits.shape[:-1]:
            raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match logits {logits.shape}")
        if targets.dtype.is_float:
            raise TypeError(f"cross_entropy: targets must be integer class ids, got {targets.dtype.name}")
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        xp, num_classes = logits.xp, logits.shape[-1]
        self.logits, self.targets = _rows(logits), xp.ascontiguousarray(targets.array.reshape(-1), dtype=np.int64)
        if self.targets.size and (int(self.targets.min()) < 0 or int(self.targets.max()) >= num_classes):
            raise IndexError(f"cross_entropy: target ids must lie in [0, {num_classes})")
        self.kernels = kernels.for_device(logits.device)
        losses = xp.empty(len(self.targets), dtype=self.logits.dtype)
        self.log_normalizer = xp.empty_like(losses)
        if losses.size:
            self.kernels.cross_entropy_forward(self.logits, self.targets, losses, self.log_normalizer)
        self.shape, self.reduction = logits.shape, reduction
        return Buffer.from_array(_reduce(losses.reshape(targets.shape), reduction))

    def backward(self, grad: Buffer):
        xp, rows = grad.xp, len(self.targets)
        if self.reduction == "none":
            grad_rows = xp.ascontiguousarray(grad.array.reshape(-1))
        else:
            scale = 1.0 / max(rows, 1) if self.reduction == "mean" else 1.0
            grad_rows = xp.full(rows, float(grad.array) * scale, dtype=self.logits.dtype)
        grad_logits = xp.empty_like(self.logits)
        if rows:
            self.kernels.cross_entropy_backward(self.logits, self.targets, self.log_normalizer, grad_rows, grad_logits)
        return Buffer.from_array(grad_logits.reshape(self.shape)), None


def _reduce(losses, reduction: str):
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.mean() if losses.size else losses.sum() * float("nan")


class GELU(Operation):
    """y = x/2 (1 + tanh(u)), u = c (x + 0.044715 x^3);  dy/dx = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3*0.044715 x^2)"""

    def forward(self, x: Buffer) -> Buffer:
        self.x = x.xp.ascontiguousarray(x.array).reshape(-1)
        self.kernels = kernels.for_device(x.device)
        out = x.xp.empty_like(self.x)
        self.kernels.gelu_forward(self.x, out)
        return Buffer.from_array(out.reshape(x.shape))

    def backward(self, grad: Buffer):
        grad_x = grad.xp.empty_like(self.x)
        self.kernels.gelu_backward(grad.xp.ascontiguousarray(grad.array).reshape(-1), self.x, grad_x)
        return Buffer.from_array(grad_x.reshape(grad.shape))


class LayerNorm(Operation):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis;
    dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)) with dxh = dy * w, dw = sum dy xh, db = sum dy"""

    def forward(self, x: Buffer, weight: Buffer | None = None, bias: Buffer | None = None, eps: float = 1e-5) -> Buffer:
        xp, width = x.xp, x.shape[-1]
        self.x, self.shape = _rows(x), x.shape
        self.weight = xp.ascontiguousarray(weight.array) if weight is not None else xp.ones(width, dtype=self.x.dtype)
        bias = xp.ascontiguousarray(bias.array) if bias is not None else xp.zeros(width, dtype=self.x.dtype)
        self.kernels = kernels.for_device(x.device)
        out = xp.empty_like(self.x)
        self.mean, self.rstd = xp.empty(len(self.x), dtype=self.x.dtype), xp.empty(len(self.x), dtype=self.x.dtype)
        self.kernels.layer_norm_forward(self.x, self.weight, bias, float(eps), out, self.mean, self.rstd)
        return Buffer.from_array(out.reshape(x.shape))

    def backward(self, grad: Buffer):
        xp = grad.xp
        grad_x = xp.empty_like(self.x)
        grad_weight, grad_bias = xp.empty_like(self.weight), xp.empty_like(self.weight)
        self.kernels.layer_norm_backward(_rows(grad), self.x, self.weight, self.mean, self.rstd, grad_x, grad_weight, grad_bias)
        grads = (Buffer.from_array(grad_x.reshape(self.shape)), Buffer.from_array(grad_weight), Buffer.from_array(grad_bias))
        return tuple(g if needed else None for g, needed in zip(grads, self.needs_input_grad))


class Embedding(Operation):
    """y = W[ids];  dW = scatter-add of dy rows at ids (repeated ids accumulate)"""

    def forward(self, weight: Buffer, ids: Buffer) -> Buffer:
        if ids.dtype.is_float:
            raise TypeError(f"embedding: ids must be integers, got {ids.dtype.name}")
        num_embeddings = weight.shape[0]
        self.ids, self.weight_shape, self.dtype = ids.array, weight.shape, weight.dtype
        if self.ids.size and (int(self.ids.min()) < 0 or int(self.ids.max()) >= num_embeddings):
            raise IndexError(f"embedding: ids must lie in [0, {num_embeddings}), got {int(self.ids.min())}..{int(self.ids.max())}")
        self.kernels = kernels.for_device(weight.device)
        return Buffer.from_array(weight.array[self.ids])

    def backward(self, grad: Buffer):
        xp = grad.xp
        grad_weight = xp.empty(self.weight_shape, dtype=self.dtype.numpy)
        ids = xp.ascontiguousarray(self.ids.reshape(-1), dtype=np.int64)
        self.kernels.embedding_backward(ids, _rows(grad).reshape(len(ids), self.weight_shape[-1]), grad_weight)
        return Buffer.from_array(grad_weight), None


class Dropout(Operation):
    """y = x * m / (1 - p) with m ~ Bernoulli(1 - p);  dx = dy * m / (1 - p)"""

    def forward(self, x: Buffer, p: float = 0.5) -> Buffer:
        self.scale = Buffer.dropout_scale(x.shape, p, x.dtype, x.device)
        return x * self.scale

    def backward(self, grad: Buffer):
        return grad * self.scale


class ScaledDotProductAttention(Operation):
    """y = softmax(q k^T / sqrt(d) + causal) v over (..., T, d), query i seeing keys up to i + Tk - Tq;
    dS = P * (dP - sum(dP * P)), dq = dS k / sqrt(d), dk = dS^T q / sqrt(d), dv = P^T dy"""

    def forward(self, q: Buffer, k: Buffer, v: Buffer, dropout_p: float = 0.0) -> Buffer:
        self.shapes = (q.shape, k.shape, v.shape)
        heads = [_as_heads(buffer.array) for buffer in (q, k, v)]
        out = q.xp.empty(heads[0].shape[:-1] + heads[2].shape[-1:], dtype=heads[0].dtype)
        self._attend(q, *heads, dropout_p, out)
        return Buffer.from_array(out.reshape(q.shape[:-1] + v.shape[-1:]))

    def backward(self, grad: Buffer):
        xp = grad.xp
        grads = [xp.empty(array.shape, dtype=array.dtype) for array in (self.q, self.k, self.v)]
        self._attend_backward(_as_heads(grad.array), *grads)
        return tuple(Buffer.from_array(g.reshape(shape)) if needed else None
                     for g, shape, needed in zip(grads, self.shapes, self.needs_input_grad))

    def _attend(self, like: Buffer, q, k, v, dropout_p: float, out) -> None:
        """out = attention of (B, H, T, d) arrays q, k, v (any strides), keeping what the backward needs."""
        self.q, self.k, self.v, self.scale = q, k, v, 1.0 / math.sqrt(q.shape[-1])
        self.kernels = kernels.for_device(like.device)
        if dropout_p != 0.0:  # dropout_scale refuses a p outside [0, 1)
            self.keep = Buffer.dropout_scale(q.shape[:-1] + (k.shape[-2],), dropout_p, like.dtype, like.device).array
        else:  # no dropout: the kernels take an empty array
            self.keep = like.xp.empty((0, 0, 0, 0), dtype=q.dtype)
        self.log_normalizer = like.xp.empty(q.shape[:-1], dtype=q.dtype)
        if q.shape[-2]:
            self.kernels.attention_forward(q, k, v, self.scale, self.keep, out, self.log_normalizer)

    def _attend_backward(self, grad, grad_q, grad_k, grad_v) -> None:
        if not self.q.shape[-2]:  # no queries: nothing reached the keys
            grad_k[...], grad_v[...] = 0.0, 0.0
            return
        self.kernels.attention_backward(grad, self.q, self.k, self.v, self.scale, self.keep, self.log_normalizer,
                                        grad_q, grad_k, grad_v)


def _as_heads(array):
    """A (..., T, d) array as (B, H, T, d): 4-d arrays as they are, fewer or more leading dims folded."""
    if array.ndim == 4:
        return array
    return array.reshape((math.prod(array.shape[:-2]), 1) + array.shape[-2:])


class MultiHeadAttention(ScaledDotProductAttention):
    """y = merge_heads(attention(split_heads(qkv))) for packed qkv of shape (B, T, 3C);
    the same math as ScaledDotProductAttention, with dq, dk, dv written into one (B, T, 3C) gradient
    (three Slice ops would each allocate and add a full-size zero gradient)."""

    def forward(self, qkv: Buffer, num_heads: int = 1, dropout_p: float = 0.0) -> Buffer:
        batch, length, packed = qkv.shape
        if packed % (3 * num_heads):
            raise ValueError(f"attention: last dim {packed} of qkv is not 3 x num_heads ({num_heads}) x head size")
        self.layout = (batch, length, 3, num_heads, packed // (3 * num_heads))
        q, k, v = qkv.xp.ascontiguousarray(qkv.array).reshape(self.layout).transpose(2, 0, 3, 1, 4)
        out = qkv.xp.empty((batch, length) + self.layout[3:], dtype=q.dtype)  # (B, T, H, d): merged heads, no copy
        self._attend(qkv, q, k, v, dropout_p, out.transpose(0, 2, 1, 3))
        return Buffer.from_array(out.reshape(batch, length, packed // 3))

    def backward(self, grad: Buffer):
        batch, length, _, heads, head_dims = self.layout
        g = grad.xp.ascontiguousarray(grad.array).reshape(batch, length, heads, head_dims).transpose(0, 2, 1, 3)
        grad_qkv = grad.xp.empty(self.layout, dtype=g.dtype)
        self._attend_backward(g, *grad_qkv.transpose(2, 0, 3, 1, 4))
        return Buffer.from_array(grad_qkv.reshape(batch, length, -1))


__all__ = ["Matmul", "Linear", "Softmax", "LogSoftmax", "CrossEntropy", "GELU", "LayerNorm", "Embedding", "Dropout",
           "ScaledDotProductAttention", "MultiHeadAttention"]
