"""The fused ops of the modern GPT recipe (modded-nanogpt's): RMSNorm, rotary embeddings with QK-norm, ReLU^2, soft-cap.

Like the fused ops of fused.py, they reach the array module through `Buffer.array`; rotary embeddings with
QK-norm call kernels (kernels/cpu.py's loop, or kernels/array.py's calls). Rotary embeddings
use the rotate-half convention of Hugging Face's LLaMA (`apply_rotary_pos_emb`): the pair
(x[i], x[i + d/2]) is turned by the angle position * base^(-2i/d).
"""
from __future__ import annotations

import math

from tinygpt import kernels
from tinygpt.buffer import Buffer
from tinygpt.kernels.array import rms_normalize, rms_normalize_backward
from tinygpt.mlops.operation import Operation


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
        xp, (batch, length, packed), dtype = qkv.xp, qkv.shape, qkv.array.dtype
        self.layout = (batch, length, 3 * num_heads, packed // (3 * num_heads))  # (B, T, slots, d): q, k the first 2H
        self.kernels, self.heads, self.qk_norm = kernels.for_device(qkv.device), 2 * num_heads, qk_norm
        out = qkv.array.reshape(self.layout).copy()
        half = self.layout[-1] // 2
        self.cos, self.sin = ((xp.ascontiguousarray(xp.asarray(a, dtype=dtype)) for a in angles) if angles is not None
                              else (xp.empty((0, half), dtype=dtype),) * 2)
        if angles is not None and self.cos.shape != (length, half):
            raise ValueError(f"rotary angles of shape {self.cos.shape}, expected {(length, half)}")
        kept = (batch, length, self.heads) if qk_norm else (0, 0, 0)  # nothing to keep without the norm
        self.normalized, self.rstd = xp.empty(kept + self.layout[-1:], dtype), xp.empty(kept, dtype)
        self.kernels.rotary_qk_norm_forward(out, self.heads, self.cos, self.sin, float(eps), qk_norm, self.normalized,
                                            self.rstd)
        return Buffer.from_array(out.reshape(qkv.shape))

    def backward(self, grad: Buffer):
        grad_qkv = grad.array.reshape(self.layout).copy()
        self.kernels.rotary_qk_norm_backward(grad_qkv, self.heads, self.cos, self.sin, self.qk_norm, self.normalized,
                                             self.rstd)
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


__all__ = ["RMSNorm", "RotaryQKNorm", "ReluSquared", "SoftCap", "rotary_angles"]
