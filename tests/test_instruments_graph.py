"""The autograd graph picture: one node per op application, counted apart from the graph's own walk."""
import re

import numpy as np
import pytest

import tinygpt
from tinygpt import Tensor
from tinygpt.instruments.graph import Graph, trace
from tinygpt.losses import CrossEntropyLoss
from tinygpt.nn import GPT
from tinygpt.mlops import Operation


@pytest.fixture
def two_layer_loss(monkeypatch):
    """A two-layer GPT's loss, with every op applied to a tensor that requires grad counted as it is created
    (Operation.__init__), by op name."""
    tinygpt.manual_seed(0)
    model = GPT(max_seq_length=8, vocab_size=32, num_layers=2, num_heads=2, embedding_dim=16)
    ids = np.random.default_rng(0).integers(0, 32, (2, 9))
    applied: dict[str, int] = {}
    create = Operation.__init__

    def counting_init(operation, needs_input_grad):
        if any(needs_input_grad):
            applied[type(operation).__name__] = applied.get(type(operation).__name__, 0) + 1
        create(operation, needs_input_grad)

    monkeypatch.setattr(Operation, "__init__", counting_init)
    with trace(model) as modules:
        loss = CrossEntropyLoss()(model(Tensor(ids[:, :-1])), Tensor(ids[:, 1:]), reduction="mean")
    monkeypatch.undo()
    return model, modules, loss, applied


def test_the_graph_of_a_two_layer_gpt_has_one_node_per_op_application(two_layer_loss):
    model, modules, loss, applied = two_layer_loss
    graph = Graph(loss, model, modules)
    drawn: dict[str, int] = {}
    for node in graph.ops():
        drawn[node.title] = drawn.get(node.title, 0) + 1
    assert drawn == applied
    assert applied["Linear"] == 2 * 4 and applied["MultiHeadAttention"] == 2 and applied["LayerNorm"] == 2 * 2 + 1
    parameters = {node.title for node in graph.nodes.values() if node.kind == "parameter"}
    assert parameters == {name for name, _ in model.named_parameters()}


def test_nodes_carry_shape_dtype_and_module(two_layer_loss):
    model, modules, loss, _ = two_layer_loss
    graph = Graph(loss, model, modules)
    root = graph.nodes[graph.root]
    assert (root.title, root.shape, root.dtype) == ("CrossEntropy", (), "float32")
    attention = [node for node in graph.ops() if node.title == "MultiHeadAttention"]
    assert sorted(node.module for node in attention) == ["blocks.0.attn", "blocks.1.attn"]
    assert all(node.shape == (2, 8, 16) for node in attention)


def test_collapsing_the_blocks_leaves_one_box_each(two_layer_loss, tmp_path):
    model, modules, loss, _ = two_layer_loss
    graph = Graph(loss, model, modules)
    collapsed = graph.collapsed(["blocks.0", "blocks.1"])
    boxes = [node for node in collapsed.values() if node.kind == "module"]
    inside = sum(1 for node in graph.ops() if node.module.startswith("blocks."))
    assert sorted(node.module for node in boxes) == ["blocks.0", "blocks.1"]
    assert sum(int(node.title.split("\n")[1].split()[0]) for node in boxes) == inside
    assert not any(node.title.startswith("blocks.") for node in collapsed.values() if node.kind == "parameter")
    box_1 = next(node.key for node in boxes if node.module == "blocks.1")
    box_0 = next(node.key for node in boxes if node.module == "blocks.0")
    assert box_0 in collapsed[box_1].inputs  # block 1 reads block 0's output
    for suffix in ("svg", "png"):
        assert graph.save(tmp_path / f"graph.{suffix}", collapse=["blocks.0", "blocks.1"]).stat().st_size > 0


def test_dot_text_has_every_node_and_edge(two_layer_loss):
    model, modules, loss, _ = two_layer_loss
    graph = Graph(loss, model, modules)
    dot = graph.to_dot()
    assert dot.startswith("digraph autograd {") and dot.endswith("}")
    assert len(re.findall(r"\[label=", dot)) == len(graph.nodes)
    assert dot.count("->") == sum(len(node.inputs) for node in graph.nodes.values())


def test_a_released_graph_cannot_be_drawn(two_layer_loss):
    model, modules, loss, _ = two_layer_loss
    loss.backward()
    with pytest.raises(RuntimeError, match="draw it before backward"):
        Graph(loss, model, modules)
