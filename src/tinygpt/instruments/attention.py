"""Attention maps: the probabilities each head gives to each earlier token of a prompt, and their heat maps.

    probabilities = attention_probabilities(model, ids)      # (layers, heads, T, T), row i: query i
    draw_attention(probabilities, tokens, "attention.png")   # one heat map per head, tokens on the axes
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tinygpt import mlops
from tinygpt.figures import save_figure
from tinygpt.instruments.scopes import OpObserver
from tinygpt.module import Module
from tinygpt.tensor import Tensor, no_grad


class _AttentionInputs(OpObserver):
    """Keeps the packed q, k, v (after rotary and QK-norm, as the attention sees them) of every attention op."""

    def __init__(self) -> None:
        self.inputs: list[tuple[np.ndarray, int]] = []

    def forward(self, operation, buffers, kwargs):
        if isinstance(operation, mlops.MultiHeadAttention):
            self.inputs.append((buffers[0].numpy(), kwargs.get("num_heads", 1)))
        return operation.forward(*buffers, **kwargs)


def attention_probabilities(model: Module, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """P = softmax(q k^T / sqrt(d), causal) of every layer and head for one sequence of token ids, in eval mode
    (no dropout): an array of shape (layers, heads, T, T)."""
    ids = np.asarray(ids).reshape(1, -1)
    was_training = model.training
    model.eval()
    try:
        with no_grad(), _AttentionInputs() as captured:
            model(Tensor(ids))
    finally:
        model.train(was_training)
    return np.stack([causal_probabilities(qkv[0], heads) for qkv, heads in captured.inputs])


def causal_probabilities(qkv: np.ndarray, num_heads: int) -> np.ndarray:
    """The (heads, T, T) probabilities of one sequence's packed (T, 3C) q, k, v: query i over keys 0..i."""
    length = qkv.shape[0]
    q, k, _ = qkv.astype(np.float64).reshape(length, 3, num_heads, -1).transpose(1, 2, 0, 3)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    scores[:, ~np.tri(length, dtype=bool)] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def draw_attention(probabilities: np.ndarray, tokens: Sequence[str], path: str | Path,
                   layers: Sequence[int] | None = None) -> Path:
    """A grid of heat maps, a row per layer (all, or those in `layers`) and a column per head: row i of a map
    is what query token i attends to, keys along the x axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = list(range(len(probabilities))) if layers is None else list(layers)
    heads, length = probabilities.shape[1], probabilities.shape[2]
    cell = max(2.2, 0.28 * length)
    figure = Figure(figsize=(cell * heads + 1.0, cell * len(layers) + 0.5))
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(layers), heads, squeeze=False)
    for row, layer in enumerate(layers):
        for head in range(heads):
            axes = grid[row][head]
            image = axes.imshow(probabilities[layer, head], vmin=0.0, vmax=1.0, cmap="viridis")
            axes.set_title(f"layer {layer}, head {head}", fontsize=9)
            axes.set_xticks(range(length), tokens, rotation=90, fontsize=7)
            axes.set_yticks(range(length), tokens if head == 0 else [""] * length, fontsize=7)
    figure.colorbar(image, ax=grid, shrink=0.6, label="attention probability")
    return save_figure(figure, path, dpi=100, bbox_inches="tight")


def token_labels(pieces: Sequence[str]) -> list[str]:
    """Tokens as axis labels: control characters escaped ("\\n"), a space shown as "␣"."""
    return [repr(piece)[1:-1].replace(" ", "␣") for piece in pieces]


__all__ = ["attention_probabilities", "causal_probabilities", "draw_attention", "token_labels"]
