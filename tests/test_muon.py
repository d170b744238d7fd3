"""Muon, optimizer groups and the warmup-stable-decay schedule, against torch.optim.Muon and reference formulas.

torch.optim.Muon runs its Newton-Schulz iteration in bfloat16 (8 bits of mantissa); ours runs in float32.
So two oracles: torch.optim.Muon itself, within the precision of bfloat16, and the same algorithm written
here in torch in float32 (torch's code with .bfloat16() replaced by .float()), within float32 precision.
"""
import math

import numpy as np
import pytest

import tinygpt
from tinygpt import Tensor
from tinygpt.losses import CrossEntropyLoss
from tinygpt.module import Module
from tinygpt.nn import FullyConnectedLayer
from tinygpt.optimizers import (NEWTON_SCHULZ_COEFFICIENTS, AdamW, Muon, OptimizerGroups, ParameterGroup, newton_schulz,
                                wsd_schedule)

torch = pytest.importorskip("torch", reason="torch.optim.Muon is the oracle for Muon")

SIZES = [6, 16, 24, 5]  # wide, wide and tall matrices: every branch of the shape scaling and the transpose
STEPS = 8
BFLOAT16_EPSILON = 2.0 ** -8  # relative rounding of one bfloat16 value


class Network(Module):
    """Fully connected layers with tanh between them."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.layers = [FullyConnectedLayer(a, b, bias) for a, b in zip(SIZES[:-1], SIZES[1:])]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = layer(x).tanh()
        return self.layers[-1](x)


def make_models(bias: bool, seed: int = 0):
    """Our network and the same one in torch (torch's Linear stores weights transposed)."""
    tinygpt.manual_seed(seed)
    ours = Network(bias)
    layers = []
    for layer in ours.layers:
        linear = torch.nn.Linear(*layer.weights.shape, bias=bias)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(layer.weights.numpy().T))
            if bias:
                linear.bias.copy_(torch.tensor(layer.bias.numpy()))
        layers += [linear, torch.nn.Tanh()]
    return ours, torch.nn.Sequential(*layers[:-1])


def batches(steps: int = STEPS):
    rng = np.random.default_rng(1)
    return [(rng.normal(size=(12, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], 12)) for _ in range(steps)]


def train_both(ours, theirs, our_optimizer, their_optimizers, steps: int = STEPS) -> None:
    for inputs, targets in batches(steps):
        our_optimizer.zero_grad()
        CrossEntropyLoss()(ours(Tensor(inputs)), Tensor(targets), reduction="mean").backward()
        our_optimizer.update()
        for optimizer in their_optimizers:
            optimizer.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(inputs)), torch.tensor(targets)).backward()
        for optimizer in their_optimizers:
            optimizer.step()


def our_weights(model) -> list[np.ndarray]:
    return [layer.weights.numpy().T for layer in model.layers]


def their_weights(model) -> list[np.ndarray]:
    return [module.weight.detach().numpy() for module in model if isinstance(module, torch.nn.Linear)]


def float32_newton_schulz(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's iteration, in float32."""
    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


class Float32Muon(torch.optim.Optimizer):
    """torch.optim.Muon's step (momentum lerp, Nesterov lerp, decoupled decay, shape scaling) in float32."""

    def __init__(self, params, lr, weight_decay, momentum, nesterov, ns_steps, adjust_lr_fn):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = float32_newton_schulz(update, (3.4445, -4.7750, 2.0315), group["ns_steps"], 1e-7)
                rows, columns = p.shape
                if group["adjust_lr_fn"] == "match_rms_adamw":
                    scale = 0.2 * math.sqrt(max(rows, columns))
                else:
                    scale = math.sqrt(max(1.0, rows / columns))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


MUON_SETTINGS = [
    dict(),
    dict(nesterov=False),
    dict(momentum=0.8, weight_decay=0.05),
    dict(adjust_lr_fn="match_rms_adamw"),
    dict(adjust_lr_fn="original", ns_steps=3, weight_decay=0.0),
]
SETTING_IDS = [("-".join(f"{k}={v}" for k, v in s.items()) or "defaults") for s in MUON_SETTINGS]


def muon_settings(settings: dict, learning_rate: float) -> dict:
    """torch.optim.Muon's defaults overridden by `settings`."""
    return dict(dict(lr=learning_rate, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5, adjust_lr_fn=None), **settings)


def ours_from(settings: dict) -> dict:
    renamed = dict(settings)
    renamed["learning_rate"] = renamed.pop("lr")
    return renamed


@pytest.mark.parametrize("settings", MUON_SETTINGS, ids=SETTING_IDS)
def test_muon_equals_torchs_algorithm_in_float32(settings):
    ours, theirs = make_models(bias=False)
    full = muon_settings(settings, 0.02)
    initial = our_weights(ours)
    train_both(ours, theirs, Muon(ours, **ours_from(full)), [Float32Muon(theirs.parameters(), **full)])
    for got, want, before in zip(our_weights(ours), their_weights(theirs), initial, strict=True):
        assert not np.allclose(got, before)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("settings", MUON_SETTINGS, ids=SETTING_IDS)
def test_muon_matches_torch_optim_muon_within_bfloat16_precision(settings):
    """The same gradients fed to both (so that rounding in one step cannot change the next gradients):
    the weights differ by at most the bfloat16 rounding of each step's update, summed over the steps."""
    ours, theirs = make_models(bias=False)
    full = muon_settings(settings, 0.02)
    our_optimizer, their_optimizer = Muon(ours, **ours_from(full)), torch.optim.Muon(theirs.parameters(), **full)
    rng = np.random.default_rng(2)
    their_linears = [module for module in theirs if isinstance(module, torch.nn.Linear)]
    for _ in range(STEPS):
        for layer, linear in zip(ours.layers, their_linears):
            grad = rng.normal(size=layer.weights.shape).astype(np.float32)
            layer.weights.grad = Tensor(grad)
            linear.weight.grad = torch.tensor(grad.T.copy())
        our_optimizer.update()
        their_optimizer.step()
    # 5 Newton-Schulz steps of 3 bfloat16 roundings each: the orthogonalised update |O| <= 1.5 is off by
    # at most 15 bfloat16 epsilons of it per step
    for layer, got, want in zip(ours.layers, our_weights(ours), their_weights(theirs), strict=True):
        step_bound = full["lr"] * our_optimizer.shape_scale(layer.weights.shape) * 1.5 * 15 * BFLOAT16_EPSILON
        assert np.abs(got - want).max() <= STEPS * step_bound


def test_muon_defaults_are_torchs():
    ours, _ = make_models(bias=False)
    muon = Muon(ours)
    defaults = torch.optim.Muon([torch.zeros(2, 2)]).defaults
    assert (muon.learning_rate, muon.weight_decay, muon.momentum, muon.nesterov, muon.ns_steps) == (
        defaults["lr"], defaults["weight_decay"], defaults["momentum"], defaults["nesterov"], defaults["ns_steps"])
    assert NEWTON_SCHULZ_COEFFICIENTS == defaults["ns_coefficients"] == (3.4445, -4.7750, 2.0315)


def test_newton_schulz_equals_torchs_float32_iteration_and_is_nearly_orthogonal():
    rng = np.random.default_rng(0)
    for shape in [(7, 19), (19, 7), (12, 12)]:
        matrix = rng.normal(size=shape).astype(np.float32)
        ours = newton_schulz(np, matrix, 5)
        theirs = float32_newton_schulz(torch.tensor(matrix), NEWTON_SCHULZ_COEFFICIENTS, 5, 1e-7).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
        singular_values = np.linalg.svd(ours, compute_uv=False)
        assert singular_values.min() > 0.5 and singular_values.max() < 1.5  # U S' V^T with S' near 1


def test_muon_refuses_parameters_that_are_not_matrices():
    ours, _ = make_models(bias=True)
    with pytest.raises(ValueError, match=r"layers\.0\.bias.*\(16,\)"):
        Muon(ours)


@pytest.mark.parametrize("name, value", [("adjust_lr_fn", "huge"), ("momentum", -0.1), ("ns_steps", 0)])
def test_muon_refuses_bad_settings(name, value):
    ours, _ = make_models(bias=False)
    with pytest.raises(ValueError, match=name):
        Muon(ours, **{name: value})


def hidden_weights(name: str, tensor: Tensor) -> bool:
    return tensor.ndim == 2


def muon_and_adamw(model) -> OptimizerGroups:
    return OptimizerGroups(
        Muon(ParameterGroup(model, hidden_weights), 0.02, weight_decay=0.05),
        AdamW(ParameterGroup(model, lambda name, tensor: not hidden_weights(name, tensor)), 0.01, weight_decay=0.0))


def test_optimizer_groups_equal_torch_muon_and_adamw_stepped_together():
    ours, theirs = make_models(bias=True)
    matrices = [p for p in theirs.parameters() if p.ndim == 2]
    vectors = [p for p in theirs.parameters() if p.ndim != 2]
    theirs_optimizers = [Float32Muon(matrices, 0.02, 0.05, 0.95, True, 5, None),
                         torch.optim.AdamW(vectors, lr=0.01, weight_decay=0.0)]
    train_both(ours, theirs, muon_and_adamw(ours), theirs_optimizers)
    for got, want in zip(our_weights(ours), their_weights(theirs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    their_biases = [module.bias.detach().numpy() for module in theirs if isinstance(module, torch.nn.Linear)]
    for layer, want in zip(ours.layers, their_biases, strict=True):
        np.testing.assert_allclose(layer.bias.numpy(), want, rtol=1e-5, atol=1e-6)


def test_optimizer_groups_refuse_overlapping_groups():
    ours, _ = make_models(bias=False)
    with pytest.raises(ValueError, match="layers.0.weights"):
        OptimizerGroups(Muon(ours), AdamW(ParameterGroup(ours, hidden_weights)))


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_optimizer_groups_save_and_load_state_continue_training_identically(tmp_path, suffix):
    data = batches(12)

    def run(model, optimizer, part):
        for inputs, targets in part:
            optimizer.zero_grad()
            CrossEntropyLoss()(model(Tensor(inputs)), Tensor(targets), reduction="mean").backward()
            optimizer.update()

    uninterrupted, _ = make_models(bias=True)
    run(uninterrupted, muon_and_adamw(uninterrupted), data)
    first, _ = make_models(bias=True)
    optimizer = muon_and_adamw(first)
    run(first, optimizer, data[:5])
    first.save_weights(tmp_path / f"weights{suffix}")
    optimizer.save_state(tmp_path / f"optimizer{suffix}")
    resumed, _ = make_models(bias=True, seed=99)
    resumed.load_weights(tmp_path / f"weights{suffix}")
    optimizer = muon_and_adamw(resumed)
    optimizer.load_state(tmp_path / f"optimizer{suffix}")
    assert optimizer.step_count == 5
    run(resumed, optimizer, data[5:])
    for (name, expected), (_, actual) in zip(uninterrupted.named_parameters(), resumed.named_parameters(), strict=True):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy(), err_msg=name)


def modded_nanogpt_lr(step: int, max_lr: float, min_lr: float, warmup: int, total: int, cooldown_frac: float) -> float:
    """modded-nanogpt's get_lr (stable, then a linear cooldown to min_lr) after nanoGPT's linear warmup."""
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    x = min(step / total, 1.0)
    if x < 1 - cooldown_frac:
        return max_lr
    w = (1 - x) / cooldown_frac
    return w * max_lr + (1 - w) * min_lr


@pytest.mark.parametrize("max_lr, min_lr, warmup, total, cooldown", [(1e-3, 1e-4, 10, 100, 0.4), (0.05, 0.0, 0, 37, 0.7),
                                                                      (0.02, 0.002, 5, 60, 1.0)])
def test_wsd_schedule_equals_modded_nanogpt_get_lr(max_lr, min_lr, warmup, total, cooldown):
    schedule = wsd_schedule(max_lr, min_lr, warmup, total, cooldown)
    for step in range(total + 10):
        assert schedule(step) == pytest.approx(modded_nanogpt_lr(step, max_lr, min_lr, warmup, total, cooldown), rel=1e-12, abs=1e-15)


def test_wsd_schedule_refuses_a_decay_fraction_outside_zero_one():
    with pytest.raises(ValueError, match="decay_fraction"):
        wsd_schedule(1e-3, 1e-4, 10, 100, 1.5)
