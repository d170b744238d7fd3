"""TensorBoard events: a run's numbers written through tensorboardX's SummaryWriter (the `tensorboard` extra),
so that `tensorboard --logdir out/tensorboard` shows the losses, learning rate, MFU and layer statistics."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tinygpt.metrics import TENSORBOARD_DIR


class TensorBoardLog:
    """Writes each metrics record's numbers as scalars at its iteration: a training line's as train/loss, an
    evaluation's as eval/val_loss, a stats record's as grad_norm/blocks.0.attn.c_attn.weights."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise RuntimeError("--tensorboard needs tensorboardX: pip install 'tinygpt[tensorboard]'") from None
        self.writer = SummaryWriter(str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        step = record["iter"]
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tag -> number pairs of a metrics record (nested dicts give tags like grad_norm/blocks.0.ln_1.weight)."""
    group = record["type"]
    tags: dict[str, float] = {}
    for key, value in record.items():
        if key in ("type", "iter"):
            continue
        if isinstance(value, dict):
            tags.update({f"{key}/{name}": float(number) for name, number in value.items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            tags[f"{group}/{key}"] = float(value)
    return tags


__all__ = ["TensorBoardLog", "TENSORBOARD_DIR", "scalars"]
