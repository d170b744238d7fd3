"""Every fused op with both kernel sets against its composition from Tensor primitives (tests/references.py),
forward and every gradient; PyTorch is the oracle in test_mlops.py."""
from __future__ import annotations

import numpy as np
import pytest

import references
from conftest import assert_close, random_values
from tinygpt import Tensor, apply_op, mlops
from tinygpt.losses import CrossEntropyLoss

pytestmark = pytest.mark.nojit  # small enough to run as plain Python: CI runs them with NUMBA_DISABLE_JIT=1 too


def _compare(fused, composed, arrays, rng, rtol=1e-5):
    """fused(*leaves) and composed(*leaves) on equal leaves: equal outputs, equal gradients of every input."""
    incoming = None
    results = []
    for function in (fused, composed):
        leaves = [Tensor(array, requires_grad=True) for array in arrays]
        out = function(*leaves)
        incoming = random_values(rng, out.shape) if incoming is None else incoming
        out.backward(Tensor(incoming))
        results.append([out] + [leaf.grad for leaf in leaves])
    for what, (ours, reference) in enumerate(zip(*results)):
        assert_close(ours, reference.numpy(), rtol, f"output {what}" if what == 0 else f"gradient {what - 1}")


def test_layer_norm_equals_its_composition(rng, kernel_set):
    arrays = [random_values(rng, (3, 5, 16)), random_values(rng, (16,), 0.5, 1.5), random_values(rng, (16,))]
    _compare(lambda x, w, b: apply_op(mlops.LayerNorm, x, w, b, eps=1e-5), references.layer_norm, arrays, rng)


def test_gelu_equals_its_composition(rng, kernel_set):
    _compare(lambda x: x.gelu(), references.gelu, [random_values(rng, (4, 33), -5, 5)], rng)


def test_cross_entropy_equals_its_composition(rng, kernel_set):
    targets = rng.integers(0, 11, size=(3, 7))
    _compare(lambda logits: CrossEntropyLoss()(logits, Tensor(targets), reduction="mean"),
             lambda logits: references.cross_entropy(logits, targets), [random_values(rng, (3, 7, 11), -3, 3)], rng)


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (1, 2, 64, 16)], ids=str)
def test_causal_attention_equals_its_composition(shape, rng, kernel_set):
    _compare(lambda q, k, v: apply_op(mlops.ScaledDotProductAttention, q, k, v), references.causal_attention,
             [random_values(rng, shape) for _ in range(3)], rng)


def test_packed_attention_equals_its_composition_on_split_heads(rng, kernel_set):
    batch, length, heads, head_dims = 2, 6, 3, 4

    def split_heads(qkv):
        return [qkv[:, :, i * heads * head_dims:(i + 1) * heads * head_dims].reshape((batch, length, heads, head_dims))
                .permute((0, 2, 1, 3)) for i in range(3)]

    def composed(qkv):
        return references.causal_attention(*split_heads(qkv)).permute((0, 2, 1, 3)).reshape((batch, length, -1))

    _compare(lambda qkv: apply_op(mlops.MultiHeadAttention, qkv, num_heads=heads), composed,
             [random_values(rng, (batch, length, 3 * heads * head_dims))], rng)


def test_embedding_gradient_equals_a_one_hot_product(rng, kernel_set):
    ids = rng.integers(0, 5, size=(4, 6))
    onehot = Tensor(np.eye(9, dtype=np.float32)[ids])
    _compare(lambda table: apply_op(mlops.Embedding, table, Tensor(ids)), lambda table: onehot @ table,
             [random_values(rng, (9, 3))], rng)
