"""Layer statistics of a training step: per parameter tensor the gradient norm and the update-to-weight ratio,
per transformer block the mean and standard deviation of its output activations; and their plot.

    stats = LayerStats(model)
    with stats.watch():
        loss_value, grad_norm = train_step(model, optimizer, x, y, config)
    record = stats.record()   # {"grad_norm": {name: ...}, "update_ratio": {...}, "activation_mean": {...}, ...}

The gradient is the one the optimizer used (after averaging over ranks and clipping); the update ratio is
||W_after - W_before|| / ||W_before||; the standard deviation is the population one (ddof 0).
"""
from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tinygpt.figures import save_figure
from tinygpt.instruments.scopes import ModuleScopes
from tinygpt.module import Module
from tinygpt.nn import TransformerBlock

STATISTICS = ("grad_norm", "update_ratio", "activation_mean", "activation_std")


class LayerStats:
    """Watches one training step of `model` at a time (`with stats.watch(): ...`), then `record()` gives its
    statistics."""

    def __init__(self, model: Module) -> None:
        self.model = model
        self.sums: dict[str, np.ndarray] = {}

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Within it, every block's output is summed (mean and std over all of a step's micro-batches); the
        weights before it are kept so that the update can be measured after it."""
        self.sums = defaultdict(lambda: np.zeros(3))  # block -> count, sum, sum of squares
        self.before = {name: tensor.numpy().astype(np.float64) for name, tensor in self.model.named_parameters()}

        def on_output(name: str, module: Module, output) -> None:
            if isinstance(module, TransformerBlock):
                values = output.numpy().astype(np.float64)
                self.sums[name] += (values.size, values.sum(), np.square(values).sum())

        with ModuleScopes(self.model, on_output):
            yield

    def record(self) -> dict[str, dict[str, float]]:
        """The statistics of the step last watched, each a dict by parameter or block name."""
        record: dict[str, dict[str, float]] = {name: {} for name in STATISTICS}
        for name, tensor in self.model.named_parameters():
            if tensor.grad is not None:
                record["grad_norm"][name] = float(np.linalg.norm(tensor.grad.numpy().astype(np.float64)))
            before = self.before[name]
            change = np.linalg.norm(tensor.numpy().astype(np.float64) - before)
            record["update_ratio"][name] = float(change / np.linalg.norm(before)) if before.any() else 0.0
        for block, (count, total, squares) in self.sums.items():
            mean = total / count
            record["activation_mean"][block] = float(mean)
            record["activation_std"][block] = float(math.sqrt(max(squares / count - mean * mean, 0.0)))
        return record


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: "blocks.2" for "blocks.2.attn.c_attn.weights", else its first part."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


def per_layer(record: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Gradient norms and update ratios of a stats record combined per layer, each as the root of the sum of its
    tensors' squares (for gradients, the layer's norm); activations as they are."""
    combined = {"activation_mean": record["activation_mean"], "activation_std": record["activation_std"]}
    for statistic in ("grad_norm", "update_ratio"):
        squares: dict[str, float] = defaultdict(float)
        for name, value in record[statistic].items():
            squares[layer_of(name)] += value * value
        combined[statistic] = {layer: math.sqrt(total) for layer, total in squares.items()}
    return combined


def plot_stats(records: list[dict[str, Any]], path: Path) -> Path | None:
    """One panel per statistic, one line per layer, over the iterations of metrics.jsonl's "stats" records
    (combined per layer by per_layer); None without matplotlib or records."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    stats = [record for record in records if record["type"] == "stats"]
    if not stats:
        return None
    figure = Figure(figsize=(11, 7))
    FigureCanvasAgg(figure)
    iterations = [record["iter"] for record in stats]
    layers = [per_layer(record) for record in stats]
    titles = {"grad_norm": "gradient norm", "update_ratio": "update / weight", "activation_mean": "activation mean",
              "activation_std": "activation std"}
    colors = {layer: f"C{index % 10}" for index, layer in enumerate(layers[-1]["grad_norm"])}  # a layer's in every panel
    for index, statistic in enumerate(STATISTICS):
        axes = figure.add_subplot(2, 2, index + 1)
        for layer in layers[-1][statistic]:
            axes.plot(iterations, [values[statistic].get(layer, math.nan) for values in layers], label=layer,
                      color=colors.get(layer))
        if statistic in ("grad_norm", "update_ratio"):
            axes.set_yscale("log")
        axes.set_title(titles[statistic])
        axes.set_xlabel("iteration")
        axes.grid(alpha=0.3, which="both")
    figure.axes[0].legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path, dpi=100)


__all__ = ["LayerStats", "STATISTICS", "layer_of", "per_layer", "plot_stats"]
