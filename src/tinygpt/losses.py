"""Loss functions."""
from __future__ import annotations

from tinygpt import mlops
from tinygpt.tensor import Tensor, apply_op

REDUCTIONS = ("none", "mean", "sum")


class CrossEntropyLoss:
    """Cross-entropy between logits (..., C) and integer class ids (...) or float probabilities (..., C)."""

    def __call__(self, logits: Tensor, labels: Tensor, reduction: str = "none") -> Tensor:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        labels = labels if isinstance(labels, Tensor) else Tensor(labels)
        if not labels.dtype.is_float:
            return apply_op(mlops.CrossEntropy, logits, labels, reduction=reduction)
        if labels.shape != logits.shape:
            raise ValueError(f"cross_entropy: probability labels of shape {labels.shape} must match logits {logits.shape}")
        losses = -(labels * logits.log_softmax(-1)).sum(-1)
        if reduction == "sum":
            return losses.sum()
        return losses.mean() if reduction == "mean" else losses
