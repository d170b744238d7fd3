"""The GPT's speedrun options against a PyTorch GPT written here with the same weights: logits and every
parameter's gradient, option by option and all together; generation with the KV cache equals without."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from test_modern_ops import torch_rotary

from tinygpt import Tensor
from tinygpt.losses import CrossEntropyLoss
from tinygpt.nn import GPT
from tinygpt.tensor import no_grad

VOCAB, LENGTH, LAYERS, HEADS, DIMS = 40, 12, 2, 2, 16
OPTIONS = {
    "rotary": dict(rotary=True),
    "qk_norm": dict(qk_norm=True),
    "rmsnorm": dict(norm="rmsnorm"),
    "relu2": dict(mlp_activation="relu2"),
    "untied": dict(tied_head=False),
    "soft_cap": dict(logit_soft_cap=2.0),
    "all": dict(rotary=True, qk_norm=True, norm="rmsnorm", mlp_activation="relu2", tied_head=False, logit_soft_cap=3.0),
}


def torch_norm(x, weights, name: str, kind: str):
    if kind == "rmsnorm":
        return F.rms_norm(x, (x.shape[-1],), weights[f"{name}.weights"], eps=1e-6)
    return F.layer_norm(x, (x.shape[-1],), weights[f"{name}.weights"], weights.get(f"{name}.bias"), eps=1e-5)


def torch_gpt(weights: dict, ids: torch.Tensor, options: dict) -> torch.Tensor:
    """The modern GPT in PyTorch, reading our parameter names ((in, out) matrices)."""
    norm, length = options.get("norm", "layernorm"), ids.shape[1]
    x = weights["token_embedding.embeddings"][ids]
    if not options.get("rotary"):
        x = x + weights["position_embedding.embeddings"][:length]
    for i in range(LAYERS):
        prefix = f"blocks.{i}"
        qkv = torch_norm(x, weights, f"{prefix}.ln_1", norm) @ weights[f"{prefix}.attn.c_attn.weights"]
        q, k, v = qkv.view(ids.shape[0], length, 3, HEADS, DIMS // HEADS).permute(2, 0, 3, 1, 4)
        if options.get("qk_norm"):
            q, k = F.rms_norm(q, (q.shape[-1],), eps=1e-6), F.rms_norm(k, (k.shape[-1],), eps=1e-6)
        if options.get("rotary"):
            q, k = torch_rotary(q, 0), torch_rotary(k, 0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).permute(0, 2, 1, 3).reshape(x.shape)
        x = x + y @ weights[f"{prefix}.attn.c_proj.weights"]
        hidden = torch_norm(x, weights, f"{prefix}.ln_2", norm) @ weights[f"{prefix}.mlp.c_fc.weights"]
        hidden = torch.relu(hidden) ** 2 if options.get("mlp_activation") == "relu2" else F.gelu(hidden, approximate="tanh")
        x = x + hidden @ weights[f"{prefix}.mlp.c_proj.weights"]
    x = torch_norm(x, weights, "ln_f", norm)
    logits = x @ (weights["lm_head.weights"] if "lm_head.weights" in weights else weights["token_embedding.embeddings"].T)
    cap = options.get("logit_soft_cap", 0.0)
    return cap * torch.tanh(logits / cap) if cap else logits


def make_gpt(options: dict) -> GPT:
    return GPT(LENGTH, VOCAB, LAYERS, HEADS, DIMS, bias=False, **options)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_gpt_option_logits_and_gradients_match_the_pytorch_reference(options, rng):
    model = make_gpt(options)
    weights = {name: torch.tensor(tensor.numpy(), requires_grad=True) for name, tensor in model.named_parameters()}
    ids = rng.integers(0, VOCAB, size=(3, LENGTH + 1))
    logits = model(Tensor(ids[:, :-1]))
    theirs = torch_gpt(weights, torch.tensor(ids[:, :-1]), options)
    assert_close(logits, theirs, 1e-5, "logits")
    CrossEntropyLoss()(logits.reshape((-1, VOCAB)), Tensor(ids[:, 1:].reshape(-1)), reduction="mean").backward()
    F.cross_entropy(theirs.reshape(-1, VOCAB), torch.tensor(ids[:, 1:].reshape(-1))).backward()
    for name, tensor in model.named_parameters():
        assert_close(tensor.grad, weights[name].grad, 1e-4, name)


def test_rotary_replaces_the_position_table_and_an_untied_head_adds_lm_head():
    names = {name for name, _ in make_gpt(dict(rotary=True, tied_head=False)).named_parameters()}
    assert "position_embedding.embeddings" not in names and "lm_head.weights" in names
    assert "lm_head.weights" not in {name for name, _ in make_gpt({}).named_parameters()}


def test_rmsnorm_blocks_have_gains_and_no_biases():
    names = {name for name, _ in make_gpt(dict(norm="rmsnorm")).named_parameters()}
    assert {"blocks.0.ln_1.weights", "ln_f.weights"} <= names
    assert not any(name.endswith("ln_1.bias") for name in names)


def test_zero_init_projections_zero_the_residual_projections_and_the_untied_head_only():
    model = make_gpt(dict(zero_init_projections=True, tied_head=False))
    zeroed = {name for name, tensor in model.named_parameters() if not tensor.numpy().any()}
    assert zeroed == {"lm_head.weights"} | {f"blocks.{i}.{layer}.c_proj.weights" for i in range(LAYERS) for layer in ("attn", "mlp")}
    logits = model(Tensor(np.zeros((1, 3), dtype=np.int32)))
    assert not logits.numpy().any()  # a zero head: uniform predictions at the start, as in the speedrun


@pytest.mark.parametrize("options", [OPTIONS["rotary"], OPTIONS["all"]], ids=["rotary", "all"])
def test_logits_fed_through_the_kv_cache_equal_the_whole_sequence_with_rotary_embeddings(options, rng):
    model = make_gpt(options)
    with no_grad():  # large weights: attention far from uniform, so that positions matter
        for _, tensor in model.named_parameters():
            tensor.assign(Tensor(rng.normal(0.0, 0.5, tensor.shape).astype(np.float32)))
    ids = rng.integers(0, VOCAB, size=(2, LENGTH))
    whole = model(Tensor(ids)).numpy()
    kv_cache = [{} for _ in model.blocks]
    pieces = [model(Tensor(ids[:, start:stop]), kv_cache).numpy() for start, stop in [(0, 5), (5, 6), (6, LENGTH)]]
    assert_close(np.concatenate(pieces, axis=1), whole, 1e-5, "cached logits")


@pytest.mark.parametrize("options", [OPTIONS["rotary"], OPTIONS["all"]], ids=["rotary", "all"])
def test_generation_with_the_kv_cache_equals_recomputing_with_rotary_embeddings(options, rng):
    model = make_gpt(options)
    prompt = Tensor(rng.integers(0, VOCAB, size=(2, 3)))
    cached = model.generate(prompt, LENGTH + 4, temperature=0.0)  # crosses max_seq_length: the window restarts
    assert np.array_equal(cached.numpy(), model.generate_uncached(prompt, LENGTH + 4).numpy())


@pytest.mark.parametrize("options, message", [(dict(norm="batchnorm"), "norm"), (dict(mlp_activation="swish"), "activation"),
                                              (dict(logit_soft_cap=-1.0), "logit_soft_cap")])
def test_unknown_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_gpt(options)
