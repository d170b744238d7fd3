"""Every picture a run or an instrument draws is written atomically: a failure while drawing (a full disk) leaves
the previous file whole and no partial or 0-byte file behind."""
import errno
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

import tinygpt
from tinygpt import Tensor
from tinygpt.instruments.attention import draw_attention
from tinygpt.instruments.graph import Graph, trace
from tinygpt.instruments.stats import plot_stats
from tinygpt.losses import CrossEntropyLoss
from tinygpt.metrics import plot_metrics
from tinygpt.nn import GPT

OLD = b"\x89PNG the previous picture"


def disk_full_while_drawing(monkeypatch) -> None:
    """Figure.savefig writes a partial picture to where it was told, then fails as a full disk does."""
    def savefig(figure, target, *args, **kwargs):
        Path(target).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", savefig)


def records() -> list[dict]:
    train = [{"type": "train", "iter": i, "loss": 3.0 - 0.1 * i} for i in range(4)]
    evals = [{"type": "eval", "iter": 3, "train_loss": 2.8, "val_loss": 2.9}]
    stats = [{"type": "stats", "iter": i, "grad_norm": {"blocks.0.w": 1.0 + i}, "update_ratio": {"blocks.0.w": 1e-3},
              "activation_mean": {"blocks.0": 0.1}, "activation_std": {"blocks.0": 1.0}} for i in range(4)]
    return train + evals + stats


def graph_of_a_tiny_gpt() -> Graph:
    tinygpt.manual_seed(0)
    model = GPT(max_seq_length=4, vocab_size=8, num_layers=1, num_heads=1, embedding_dim=8)
    ids = np.arange(10).reshape(2, 5) % 8
    with trace(model) as modules:
        loss = CrossEntropyLoss()(model(Tensor(ids[:, :-1])), Tensor(ids[:, 1:]), reduction="mean")
    return Graph(loss, model, modules)


DRAWINGS = {
    "loss.png": lambda path: plot_metrics(records(), path),
    "stats.png": lambda path: plot_stats(records(), path),
    "attention.png": lambda path: draw_attention(np.full((1, 1, 3, 3), 1 / 3), ["a", "b", "c"], path),
    "graph.png": lambda path: graph_of_a_tiny_gpt().save(path),
}


@pytest.mark.parametrize("name", DRAWINGS)
def test_a_picture_is_drawn_atomically(tmp_path, monkeypatch, name):
    path = tmp_path / name
    assert DRAWINGS[name](path) == path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # drawn in full
    path.write_bytes(OLD)
    disk_full_while_drawing(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        DRAWINGS[name](path)
    assert path.read_bytes() == OLD
    assert [entry.name for entry in tmp_path.iterdir()] == [name]
