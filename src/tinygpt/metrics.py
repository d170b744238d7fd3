"""A run's metrics: one JSON object a line in `<out_dir>/metrics.jsonl`, and the loss plot drawn from it.

A training line: {"type": "train", "iter", "loss", "lr", "tokens_per_s", "grad_norm", "mfu", "elapsed"} (loss
and grad norm of that iteration's optimizer step, its learning rate, its model FLOPs utilisation, elapsed wall
seconds of training so far).
An evaluation: {"type": "eval", "iter", "train_loss", "val_loss", "train_bpb", "val_bpb", "elapsed"}.
With --log-stats: {"type": "stats", "iter", "grad_norm", "update_ratio", "activation_mean", "activation_std"},
each a dict by parameter or block name (tinygpt.instruments.stats).

    import json
    records = [json.loads(line) for line in open("out/metrics.jsonl")]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file, in order (none when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Appends records to metrics.jsonl. A fresh run empties the file; a run resumed at iteration k keeps the
    records before k (and the evaluation at k), dropping what a run killed after its checkpoint wrote."""

    def __init__(self, path: Path, resumed_at: int | None = None) -> None:
        self.path = path
        kept = [record for record in read_metrics(path) if resumed_at is not None and
                (record["iter"] < resumed_at or (record["type"] == "eval" and record["iter"] == resumed_at))]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def plot_metrics(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Save the loss curve of metrics records (training lines and evaluations) as a PNG with a log-scale loss
    axis; None without matplotlib. Uses matplotlib's object API: the global backend is left alone."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = [record for record in records if record["type"] == "train"]
    axes.plot([record["iter"] for record in steps], [record["loss"] for record in steps], color="tab:blue", alpha=0.35,
              linewidth=0.8, label="train (batch)")
    evals = [record for record in records if record["type"] == "eval"]
    for name, color in (("train", "tab:blue"), ("val", "tab:orange")):
        axes.plot([record["iter"] for record in evals], [record[f"{name}_loss"] for record in evals], "o-", color=color,
                  label=f"{name} (eval)")
    axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("cross-entropy (nats / token)")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


__all__ = ["METRICS_FILE", "MetricsLog", "read_metrics", "plot_metrics"]
