"""Module.summary() and repr: the layer tree, each layer's parameter shapes, counts that equal
PyTorch's / Hugging Face's for the same architecture, and the trainable / frozen split."""
from __future__ import annotations

import re

import torch
import transformers

from tinygpt.module import Module
from tinygpt.nn import GPT, MLP, FullyConnectedLayer


def _total_line(summary: str, label: str) -> int:
    match = re.search(rf"^{label}:\s+([\d,]+)", summary, re.MULTILINE)
    assert match, f"no {label!r} line in\n{summary}"
    return int(match.group(1).replace(",", ""))


def test_summary_totals_equal_torchs_count_for_an_mlp():
    mlp = MLP(5, [7, 3], "relu")
    reference = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    summary = mlp.summary()
    assert _total_line(summary, "Total parameters") == sum(p.numel() for p in reference.parameters())


def test_summary_lists_each_layer_with_its_shapes_and_count():
    summary = MLP(5, [7, 3], "relu").summary()
    rows = [line for line in summary.splitlines() if "FullyConnectedLayer" in line]
    assert len(rows) == 2
    assert "layers.0" in rows[0] and "weights (5, 7)" in rows[0] and "bias (7,)" in rows[0] and rows[0].rstrip().endswith("42")
    assert "layers.1" in rows[1] and "weights (7, 3)" in rows[1] and rows[1].rstrip().endswith("24")


def test_summary_of_a_gpt_counts_like_hugging_face():
    gpt = GPT(max_seq_length=16, vocab_size=50, num_layers=2, num_heads=2, embedding_dim=8)
    config = transformers.GPT2Config(n_positions=16, vocab_size=50, n_layer=2, n_head=2, n_embd=8)
    reference = transformers.GPT2LMHeadModel(config)
    summary = gpt.summary()
    assert _total_line(summary, "Total parameters") == reference.num_parameters()
    assert summary.count("TransformerBlock") == 2
    assert "GPT" in summary.splitlines()[2]


def test_summary_splits_trainable_and_frozen():
    mlp = MLP(4, [4, 2])
    mlp.layers[0].freeze()
    summary = mlp.summary()
    assert _total_line(summary, "Trainable parameters") == 2 * 4 + 2
    assert _total_line(summary, "Frozen parameters") == 4 * 4 + 4


def test_repr_shows_the_layer_tree_with_shapes():
    mlp = MLP(3, [4, 2])
    text = repr(mlp)
    assert text.splitlines()[0] == "MLP("
    assert "(layers.0): FullyConnectedLayer(weights=(3, 4), bias=(4,))" in text
    assert "(layers.1): FullyConnectedLayer(weights=(4, 2), bias=(2,))" in text
    assert text.splitlines()[-1] == ")"


def test_repr_of_a_module_with_only_parameters_fits_on_one_line():
    assert repr(FullyConnectedLayer(2, 3, bias=False)) == "FullyConnectedLayer(weights=(2, 3))"
    assert repr(Module()) == "Module()"
