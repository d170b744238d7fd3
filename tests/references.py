"""Each fused op composed from Tensor primitives: the plain math, one more oracle beside PyTorch."""
from __future__ import annotations

import math

import numpy as np

from tinygpt import Tensor


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    centred = x - x.mean(-1, keepdim=True)
    variance = (centred * centred).mean(-1, keepdim=True)
    return centred / (variance + eps) ** 0.5 * weight + bias


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + (math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)).tanh())


def cross_entropy(logits: Tensor, targets: np.ndarray) -> Tensor:
    """Mean over rows of -log_softmax(logits)[target]; the target picked by a one-hot product."""
    onehot = Tensor(np.eye(logits.shape[-1], dtype=np.float32)[targets])
    return -(logits.log_softmax(-1) * onehot).sum() / targets.size


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """nanoGPT's manual path: scores, the causal mask (-inf above the diagonal), softmax, times v."""
    length = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = Tensor(np.triu(np.full((length, length), -np.inf, np.float32), 1))
    return (scores + mask).softmax(-1) @ v
