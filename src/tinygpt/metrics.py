"""A run's metrics: one JSON object a line in `<out_dir>/metrics.jsonl`, and the loss plot drawn from it.

A training line: {"type": "train", "iter", "loss", "lr", "tokens_per_s", "grad_norm", "mfu", "elapsed"} (loss
and grad norm of that iteration's optimizer step, its learning rate, its model FLOPs utilisation, elapsed wall
seconds of training so far).
An evaluation: {"type": "eval", "iter", "train_loss", "val_loss", "train_bpb", "val_bpb", "elapsed"}.
With --log-stats: {"type": "stats", "iter", "grad_norm", "update_ratio", "activation_mean", "activation_std"},
each a dict by parameter or block name (tinygpt.instruments.stats).

    import json
    records = [json.loads(line) for line in open("out/metrics.jsonl")]

Each record is appended with one write of a whole line, so a crash (or a full disk) tears at most the last line;
reading drops a torn last line with a warning, and the file a run starts from is rewritten atomically. A run
that replaces another (--overwrite) writes its records to PENDING_METRICS_FILE until its first checkpoint lands.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from tinygpt.files import METRICS_FILE_BYTES, read_text
from tinygpt.figures import save_figure
from tinygpt.serialization import atomic_write

METRICS_FILE, PENDING_METRICS_FILE, PLOT_FILE = "metrics.jsonl", ".metrics.jsonl.pending", "loss.png"
STATS_PLOT = "stats.png"  # drawn from the "stats" records by tinygpt.instruments
TENSORBOARD_DIR = "tensorboard"  # --tensorboard's event files (tinygpt.instruments.tensorboard)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file, in order (none when it does not exist). A torn last line (a run killed
    while writing it) is dropped with a warning; any other line that is not a record raises ValueError naming it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = read_text(path, "metrics file", METRICS_FILE_BYTES).split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None and number == len(lines):
            warnings.warn(f"{path}: dropped a torn last line (a run was stopped while writing it)", stacklevel=2)
        elif record is None:
            raise ValueError(f"{path} line {number} is not a metrics record: {line[:60]!r}")
        else:
            records.append(record)
    return records


def _record(line: str) -> dict[str, Any] | None:
    """The record of one line: a JSON object with a string "type" and an integer "iter", or None."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("type"), str) or not isinstance(record.get("iter"), int):
        return None
    return record


class MetricsLog:
    """Appends records to metrics.jsonl. A fresh run empties the file; a run resumed at iteration k keeps the
    records before k (and the evaluation at k), dropping what a run killed after its checkpoint wrote. With
    `pending`, the records go to PENDING_METRICS_FILE beside it until `publish` (the first checkpoint)."""

    def __init__(self, path: Path, resumed_at: int | None = None, pending: bool = False) -> None:
        self.final_path = path
        self.path = path.with_name(PENDING_METRICS_FILE) if pending else path
        events = path.with_name(TENSORBOARD_DIR)
        self.replaced_events = [file for file in events.iterdir() if file.is_file()] if pending and events.is_dir() else []
        kept = [] if resumed_at is None else [
            record for record in read_metrics(path)
            if record["iter"] < resumed_at or (record["type"] == "eval" and record["iter"] == resumed_at)]
        atomic_write(self.path, lambda temporary: Path(temporary).write_text(
            "".join(json.dumps(record) + "\n" for record in kept)))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def publish(self) -> None:
        """Put pending records in place of metrics.jsonl, and remove the replaced run's pictures and TensorBoard events
        (the files there when this run started), once the run they belong to has a checkpoint."""
        if self.path != self.final_path:
            os.replace(self.path, self.final_path)
            self.path = self.final_path
            for picture in (PLOT_FILE, STATS_PLOT):
                self.final_path.with_name(picture).unlink(missing_ok=True)
            for stale in self.replaced_events:
                stale.unlink(missing_ok=True)


def plot_metrics(records: list[dict[str, Any]], path: Path, final: tuple[int, float] | None = None) -> Path | None:
    """Save the loss curve of metrics records as a PNG (loss_figure), atomically; None without matplotlib."""
    figure = loss_figure(records, final)
    if figure is None:
        return None
    return save_figure(figure, path, dpi=100, format="png")


def loss_figure(records: list[dict[str, Any]], final: tuple[int, float] | None = None):
    """The loss curve of metrics records: every logged batch loss as a faint line, the evaluations as points (too
    sparse to join), and `final`, (iteration, loss) of the whole validation split, marked and quoted; the loss axis
    logarithmic with plain-number ticks. A matplotlib Figure (its object API: the global backend is left alone), or
    None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import LogFormatter
    except ImportError:
        return None
    figure = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = [record for record in records if record["type"] == "train"]
    axes.plot([record["iter"] for record in steps], [record["loss"] for record in steps], color="tab:blue", alpha=0.35,
              linewidth=0.8, label="train (batch)")
    evals = [record for record in records if record["type"] == "eval"]
    for name, color, marker in (("train", "tab:blue", "o"), ("val", "tab:orange", "s")):
        axes.plot([record["iter"] for record in evals], [record[f"{name}_loss"] for record in evals], linestyle="None",
                  marker=marker, color=color, label=f"{name} (eval)")
    if final is not None:
        axes.plot([final[0]], [final[1]], linestyle="None", marker="*", markersize=14, color="tab:red",
                  label=f"val, whole split: {final[1]:.4f}")
    axes.set_yscale("log")
    for axis_formatter in (axes.yaxis.set_major_formatter, axes.yaxis.set_minor_formatter):
        axis_formatter(LogFormatter(labelOnlyBase=False))  # 2, 3, 4 rather than 2x10^0
    axes.set_title("TinyGPT training loss")
    axes.set_xlabel("iteration")
    axes.set_ylabel("cross-entropy (nats / token)")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    return figure


__all__ = ["METRICS_FILE", "PLOT_FILE", "STATS_PLOT", "TENSORBOARD_DIR", "MetricsLog", "read_metrics", "plot_metrics",
           "loss_figure"]
