"""The modern GPT's ops against PyTorch: RMSNorm (torch.nn.functional.rms_norm), rotary embeddings (Hugging Face
LLaMA's apply_rotary_pos_emb) with QK-norm, ReLU^2 and the logit soft-cap; values and gradients."""
import numpy as np
import pytest
import torch
from conftest import LAYOUTS, assert_close, make_leaf, random_values, to_torch, expandable
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from tinygpt import Tensor
from tinygpt.mlops import ReluSquared, RMSNorm, RotaryQKNorm, SoftCap
from tinygpt.mlops.modern import rotary_angles
from tinygpt.tensor import apply_op


def backward_both(ours: Tensor, theirs: torch.Tensor, rng: np.random.Generator) -> None:
    """Backpropagate the same random output gradient through both."""
    upstream = random_values(rng, ours.shape)
    ours.backward(Tensor(upstream))
    theirs.backward(torch.tensor(upstream))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_matches_torch(layout, with_weight, rng):
    values = expandable(random_values(rng, (3, 5, 16))) if layout == "expanded" else random_values(rng, (3, 5, 16))
    x = make_leaf(values, layout)
    weight = Tensor(random_values(rng, (16,)), requires_grad=True) if with_weight else None
    torch_x = to_torch(x)
    torch_weight = to_torch(weight) if with_weight else None
    ours = apply_op(RMSNorm, x, weight, eps=1e-6)
    theirs = torch.nn.functional.rms_norm(torch_x, (16,), torch_weight, eps=1e-6)
    assert_close(ours, theirs, 1e-5, "rms_norm")
    backward_both(ours, theirs, rng)
    assert_close(x.grad, torch_x.grad, 1e-5, "d x")
    if with_weight:
        assert_close(weight.grad, torch_weight.grad, 1e-5, "d weight")


def torch_rotary(x: torch.Tensor, start: int, base: float = 10000.0) -> torch.Tensor:
    """Hugging Face LLaMA's rotary embedding of x (B, H, T, d) at positions start..start+T."""
    head_dims, length = x.shape[-1], x.shape[-2]
    inverse_frequencies = 1.0 / (base ** (torch.arange(0, head_dims, 2, dtype=torch.float64) / head_dims))
    angles = torch.arange(start, start + length, dtype=torch.float64)[:, None] * inverse_frequencies[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().float()[None], angles.sin().float()[None]
    rotated, _ = apply_rotary_pos_emb(x, x, cos, sin)
    return rotated


def torch_rotary_qk_norm(qkv: torch.Tensor, heads: int, start: int, rotary: bool, qk_norm: bool) -> torch.Tensor:
    batch, length, packed = qkv.shape
    q, k, v = qkv.view(batch, length, 3, heads, packed // (3 * heads)).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
    if qk_norm:
        q = torch.nn.functional.rms_norm(q, (q.shape[-1],), eps=1e-6)
        k = torch.nn.functional.rms_norm(k, (k.shape[-1],), eps=1e-6)
    if rotary:
        q, k = torch_rotary(q, start), torch_rotary(k, start)
    return torch.stack([q, k, v]).permute(1, 3, 0, 2, 4).reshape(batch, length, packed)


@pytest.mark.parametrize("rotary, qk_norm", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("start", [0, 5])
def test_rotary_qk_norm_matches_hugging_face_llama_and_torch_rms_norm(rotary, qk_norm, start, rng):
    heads, head_dims, length = 2, 8, 7
    qkv = Tensor(random_values(rng, (3, length, 3 * heads * head_dims)), requires_grad=True)
    torch_qkv = to_torch(qkv)
    angles = rotary_angles(np, start, length, head_dims, dtype=np.float32) if rotary else None
    ours = apply_op(RotaryQKNorm, qkv, num_heads=heads, angles=angles, qk_norm=qk_norm, eps=1e-6)
    theirs = torch_rotary_qk_norm(torch_qkv, heads, start, rotary, qk_norm)
    assert_close(ours, theirs, 1e-5, "rotary qk-norm")
    backward_both(ours, theirs, rng)
    assert_close(qkv.grad, torch_qkv.grad, 1e-5, "d qkv")


def test_relu_squared_matches_torch(rng):
    x = Tensor(random_values(rng, (4, 9), away_from_zero=1e-3), requires_grad=True)
    torch_x = to_torch(x)
    ours, theirs = apply_op(ReluSquared, x), torch.relu(torch_x) ** 2
    assert_close(ours, theirs, 1e-6, "relu^2")
    backward_both(ours, theirs, rng)
    assert_close(x.grad, torch_x.grad, 1e-6, "d x")


@pytest.mark.parametrize("cap", [1.0, 15.0])
def test_soft_cap_matches_torch(cap, rng):
    x = Tensor(random_values(rng, (4, 9), -40.0, 40.0), requires_grad=True)
    torch_x = to_torch(x)
    ours, theirs = apply_op(SoftCap, x, cap=cap), cap * torch.tanh(torch_x / cap)
    assert_close(ours, theirs, 1e-6, "soft-cap")
    backward_both(ours, theirs, rng)
    assert_close(x.grad, torch_x.grad, 1e-6, "d x")


@pytest.mark.parametrize("cap", [0.0, -1.0, float("inf")])
def test_soft_cap_refuses_a_cap_that_is_not_positive_and_finite(cap):
    with pytest.raises(ValueError, match="cap"):
        apply_op(SoftCap, Tensor(np.zeros(3, dtype=np.float32)), cap=cap)
