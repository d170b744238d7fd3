"""The fused ops of the modern GPT recipe (modded-nanogpt's): RMSNorm, rotary embeddings with QK-norm, ReLU^2, soft-cap.

Like the fused ops of fused.py, they reach the array module through `Buffer.array`. Rotary embeddings
use the rotate-half convention of Hugging Face's LLaMA (`apply_rotary_pos_emb`): the pair
(x[i], x[i + d/2]) is turned by the angle position * base^(-2i/d).
"""
from __future__ import annotations

import math

from tinygpt.buffer import Buffer
from tinygpt.mlops.operation import Operation


def rms_normalize(xp, rows, eps: float):
    """(x * rstd, rstd) over the last axis, rstd = 1 / sqrt(mean(x^2) + eps)."""
    mean_square = xp.einsum("...i,...i->...", rows, rows)[..., None] * (1.0 / rows.shape[-1])
    rstd = 1.0 / xp.sqrt(mean_square + eps)
    return rows * rstd, rstd


def rms_normalize_backward(xp, grad_normalized, normalized, rstd):
    """dx = rstd * (dxh - xh * mean(dxh * xh)) for xh = x * rstd."""
    projection = xp.einsum("...i,...i->...", grad_normalized, normalized)[..., None] * (1.0 / normalized.shape[-1])
    return (grad_normalized - normalized * projection) * rstd


def rotate(xp, x, cos, sin, direction: float = 1.0):
    """(x1 cos - x2 sin, x2 cos + x1 sin) for the halves x1, x2 of the last axis; direction -1 turns back (the transpose)."""
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    sin = sin * direction
    return xp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def rotary_angles(xp, start: int, length: int, head_dims: int, base: float = 10000.0, dtype=None):
    """cos and sin of position * base^(-2i/d) for positions start..start+length and i < d/2, each (length, d/2)."""
    frequencies = base ** (-xp.arange(0, head_dims, 2, dtype=xp.float64) / head_dims)
    angles = xp.arange(start, start + length, dtype=xp.float64)[:, None] * frequencies[None, :]
    return xp.cos(angles).astype(dtype), xp.sin(angles).astype(dtype)


class RMSNorm(Operation):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis;  dx = rstd (dxh - xh mean(dxh xh)), dxh = dy w, dw = sum dy xh"""

    def forward(self, x: Buffer, weight: Buffer | None = None, eps: float = 1e-6) -> Buffer:
        xp = x.xp
        self.normalized, self.rstd = rms_normalize(xp, x.array, eps)
        self.weight = weight.array if weight is not None else None
        return Buffer.from_array(self.normalized * self.weight if self.weight is not None else self.normalized.copy())

    def backward(self, grad: Buffer):
        xp, g = grad.xp, grad.array
        grads = [None] * len(self.needs_input_grad)
        if self.needs_input_grad[0]:
            grad_normalized = g * self.weight if self.weight is not None else g
            grads[0] = Buffer.from_array(rms_normalize_backward(xp, grad_normalized, self.normalized, self.rstd))
        if len(grads) > 1 and self.needs_input_grad[1]:
            rows = g.reshape(-1, g.shape[-1])
            grads[1] = Buffer.from_array(xp.einsum("ni,ni->i", rows, self.normalized.reshape(rows.shape)))
        return tuple(grads)


class RotaryQKNorm(Operation):
    """For packed qkv (B, T, 3C) of H heads: q, k <- rotate(rmsnorm(q), rmsnorm(k)) per head, v unchanged
    (either step optional);  dq, dk = rmsnorm'(rotate back(dq', dk')), dv = dv'"""

    def forward(self, qkv: Buffer, num_heads: int = 1, angles: tuple | None = None, qk_norm: bool = False,
                eps: float = 1e-6) -> Buffer:
        xp, (batch, length, packed) = qkv.xp, qkv.shape
        self.layout = (batch, length, 3, num_heads, packed // (3 * num_heads))
        self.qk_norm = qk_norm
        out = qkv.array.reshape(self.layout).copy()
        query_key = out[:, :, :2]  # (B, T, 2, H, d)
        if qk_norm:
            query_key[...], self.rstd = rms_normalize(xp, query_key, eps)
            self.normalized = query_key.copy()
        if angles is not None:
            self.cos, self.sin = (xp.asarray(a, dtype=out.dtype)[:, None, None, :] for a in angles)  # (T, 1, 1, d/2)
            query_key[...] = rotate(xp, query_key, self.cos, self.sin)
        self.rotary = angles is not None
        return Buffer.from_array(out.reshape(batch, length, packed))

    def backward(self, grad: Buffer):
        xp = grad.xp
        grad_qkv = grad.array.reshape(self.layout).copy()
        grad_query_key = grad_qkv[:, :, :2]
        if self.rotary:
            grad_query_key[...] = rotate(xp, grad_query_key, self.cos, self.sin, direction=-1.0)
        if self.qk_norm:
            grad_query_key[...] = rms_normalize_backward(xp, grad_query_key, self.normalized, self.rstd)
        return Buffer.from_array(grad_qkv.reshape(grad.shape))


class ReluSquared(Operation):
    """y = max(x, 0)^2;  dy/dx = 2 max(x, 0)"""

    def forward(self, x: Buffer) -> Buffer:
        self.positive = x.xp.maximum(x.array, 0.0)
        return Buffer.from_array(self.positive * self.positive)

    def backward(self, grad: Buffer):
        return Buffer.from_array(grad.array * (2.0 * self.positive))


class SoftCap(Operation):
    """y = cap * tanh(x / cap);  dy/dx = 1 - (y / cap)^2"""

    def forward(self, x: Buffer, cap: float = 30.0) -> Buffer:
        if not cap > 0.0 or math.isinf(cap):
            raise ValueError(f"soft-cap: cap must be a positive finite number, got {cap}")
        self.cap = cap
        self.squashed = x.xp.tanh(x.array * (1.0 / cap))
        return Buffer.from_array(self.squashed * cap)

    def backward(self, grad: Buffer):
        return Buffer.from_array(grad.array * (1.0 - self.squashed * self.squashed))


__all__ = ["RMSNorm", "RotaryQKNorm", "ReluSquared", "SoftCap", "rms_normalize", "rms_normalize_backward", "rotate",
           "rotary_angles"]
