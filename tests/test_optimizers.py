"""Optimizers against torch.optim (the oracle): the same model, data and steps give the same parameters."""
import math

import numpy as np
import pytest

import tinygpt
from tinygpt import Tensor
from tinygpt.losses import CrossEntropyLoss
from tinygpt.nn import MLP
from tinygpt.optimizers import SGD, Adam, AdamW, Optimizer, clip_grad_norm, cosine_schedule

torch = pytest.importorskip("torch", reason="torch.optim is the oracle for the optimizers")

SIZES = [6, 16, 16, 5]
STEPS = 20


def make_models(seed: int = 0):
    """Our MLP and the same network in torch, with the same weights (torch's Linear stores weights transposed)."""
    tinygpt.manual_seed(seed)
    ours = MLP(SIZES[0], SIZES[1:], "tanh")
    layers = []
    for layer in ours.layers:
        linear = torch.nn.Linear(*layer.weights.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(layer.weights.numpy().T))
            linear.bias.copy_(torch.tensor(layer.bias.numpy()))
        layers += [linear, torch.nn.Tanh()]
    return ours, torch.nn.Sequential(*layers)  # the activation follows every layer, the last included


def batches(steps: int = STEPS):
    rng = np.random.default_rng(1)
    return [(rng.normal(size=(12, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], 12)) for _ in range(steps)]


def our_step(model, optimizer, inputs, targets) -> None:
    optimizer.zero_grad()
    CrossEntropyLoss()(model(Tensor(inputs)), Tensor(targets), reduction="mean").backward()
    optimizer.step()


def torch_step(model, optimizer, inputs, targets) -> None:
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(torch.tensor(inputs)), torch.tensor(targets)).backward()
    optimizer.step()


def assert_same_parameters(ours, theirs) -> None:
    expected = [p.detach().numpy() for p in theirs.parameters()]
    actual = [array for layer in ours.layers for array in (layer.weights.numpy().T, layer.bias.numpy())]
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def train_both(make_ours, make_theirs, steps: int = STEPS):
    ours, theirs = make_models()
    our_optimizer, their_optimizer = make_ours(ours), make_theirs(theirs.parameters())
    initial = ours.layers[0].weights.numpy().copy()
    for inputs, targets in batches(steps):
        our_step(ours, our_optimizer, inputs, targets)
        torch_step(theirs, their_optimizer, inputs, targets)
    assert not np.allclose(ours.layers[0].weights.numpy(), initial)  # the steps moved the parameters
    return ours, theirs


SGD_SETTINGS = [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, dampening=0.3),
    dict(momentum=0.9, nesterov=True),
    dict(weight_decay=0.05),
    dict(momentum=0.8, weight_decay=0.05),
    dict(momentum=0.8, weight_decay=0.05, dampening=0.5),
    dict(momentum=0.8, weight_decay=0.05, nesterov=True),
]


@pytest.mark.nojit
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()) or "plain")
def test_sgd_matches_torch(settings, kernel_set):
    ours, theirs = train_both(lambda m: SGD(m, 0.1, **settings), lambda p: torch.optim.SGD(p, lr=0.1, **settings))
    assert_same_parameters(ours, theirs)


def test_sgd_rejects_nesterov_without_momentum():
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(make_models()[0], 0.1, nesterov=True)


@pytest.mark.parametrize("betas, eps", [((0.9, 0.999), 1e-8), ((0.8, 0.95), 1e-6)])
def test_adam_matches_torch(betas, eps, kernel_set):
    ours, theirs = train_both(lambda m: Adam(m, 0.01, betas=betas, eps=eps),
                              lambda p: torch.optim.Adam(p, lr=0.01, betas=betas, eps=eps))
    assert_same_parameters(ours, theirs)


@pytest.mark.nojit
@pytest.mark.parametrize("weight_decay", [0.01, 0.1])
def test_adamw_matches_torch(weight_decay, kernel_set):
    ours, theirs = train_both(lambda m: AdamW(m, 0.01, betas=(0.9, 0.95), weight_decay=weight_decay),
                              lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.95), weight_decay=weight_decay))
    assert_same_parameters(ours, theirs)


def test_defaults_are_torchs():
    model = make_models()[0]
    adam, adamw, sgd = Adam(model), AdamW(model), SGD(model, 0.1)
    reference_adamw = torch.optim.AdamW([torch.zeros(1)]).defaults
    assert adam.learning_rate == adamw.learning_rate == reference_adamw["lr"]
    assert adam.betas == adamw.betas == reference_adamw["betas"]
    assert adam.eps == adamw.eps == reference_adamw["eps"]
    assert adamw.weight_decay == reference_adamw["weight_decay"]
    assert (sgd.momentum, sgd.weight_decay, sgd.dampening, sgd.nesterov) == (0.0, 0.0, 0.0, False)


def test_learning_rate_schedule_is_called_with_the_step_count():
    schedule = cosine_schedule(0.05, 0.005, warmup_steps=4, decay_steps=15)
    ours, theirs = make_models()
    our_optimizer = AdamW(ours, schedule, weight_decay=0.1)
    their_optimizer = torch.optim.AdamW(theirs.parameters(), lr=schedule(0), weight_decay=0.1)
    for step, (inputs, targets) in enumerate(batches()):
        assert our_optimizer.current_learning_rate == schedule(step)
        for group in their_optimizer.param_groups:
            group["lr"] = schedule(step)
        our_step(ours, our_optimizer, inputs, targets)
        torch_step(theirs, their_optimizer, inputs, targets)
    assert our_optimizer.step_count == STEPS
    assert_same_parameters(ours, theirs)


def test_learning_rate_schedule_matches_torch_lambda_lr():
    schedule = cosine_schedule(0.1, 0.01, warmup_steps=3, decay_steps=12)
    ours, theirs = make_models()
    our_optimizer = SGD(ours, schedule, momentum=0.9)
    their_optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(their_optimizer, lambda step: schedule(step) / 0.1)
    for inputs, targets in batches():
        our_step(ours, our_optimizer, inputs, targets)
        torch_step(theirs, their_optimizer, inputs, targets)
        scheduler.step()
    assert_same_parameters(ours, theirs)


def nanogpt_get_lr(it: int, learning_rate: float, min_lr: float, warmup_iters: int, lr_decay_iters: int) -> float:
    """nanoGPT's train.py get_lr, verbatim but for the arguments."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize("max_lr, min_lr, warmup, decay", [(6e-4, 6e-5, 100, 1000), (1e-3, 1e-4, 0, 50), (0.5, 0.0, 10, 11)])
def test_cosine_schedule_equals_nanogpt_get_lr(max_lr, min_lr, warmup, decay):
    schedule = cosine_schedule(max_lr, min_lr, warmup, decay)
    for step in range(decay + 20):
        assert schedule(step) == pytest.approx(nanogpt_get_lr(step, max_lr, min_lr, warmup, decay), rel=1e-12, abs=0)
    assert schedule(warmup) == pytest.approx(max_lr)
    assert schedule(decay) == pytest.approx(min_lr) and schedule(decay + 1000) == min_lr


@pytest.mark.parametrize("max_norm", [0.05, 1.0, 100.0], ids=["clips", "clips-a-little", "no-clip"])
def test_clip_grad_norm_matches_torch(max_norm):
    ours, theirs = make_models()
    inputs, targets = batches(1)[0]
    CrossEntropyLoss()(ours(Tensor(inputs)), Tensor(targets * 1), reduction="sum").backward()
    torch.nn.functional.cross_entropy(theirs(torch.tensor(inputs)), torch.tensor(targets), reduction="sum").backward()
    norm = clip_grad_norm(ours, max_norm)
    expected_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm).item()
    assert norm == pytest.approx(expected_norm, rel=1e-5)
    expected = [p.grad.numpy() for p in theirs.parameters()]
    actual = [array for layer in ours.layers for array in (layer.weights.grad.numpy().T, layer.bias.grad.numpy())]
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    if max_norm < expected_norm:
        clipped = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in actual))
        assert clipped == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_skips_parameters_without_grad_and_returns_zero_without_any():
    model = make_models()[0]
    assert clip_grad_norm(model, 1.0) == 0.0
    model.layers[0].weights.grad = Tensor(np.full(model.layers[0].weights.shape, 3.0, dtype=np.float32))
    norm = clip_grad_norm(model, 1.0)
    assert norm == pytest.approx(3.0 * math.sqrt(model.layers[0].weights.numel))
    assert model.layers[1].weights.grad is None


def test_frozen_parameters_and_parameters_without_grad_are_not_updated():
    model = make_models()[0]
    model.layers[0].freeze()
    frozen = model.layers[0].weights.numpy().copy()
    optimizer = Adam(model, 0.1)
    inputs, targets = batches(1)[0]
    our_step(model, optimizer, inputs, targets)
    np.testing.assert_array_equal(model.layers[0].weights.numpy(), frozen)
    assert set(optimizer.state) == {"layers.1.weights", "layers.1.bias", "layers.2.weights", "layers.2.bias"}


def test_update_is_step_and_state_is_per_parameter_name():
    model = make_models()[0]
    optimizer = SGD(model, 0.1, momentum=0.9)
    inputs, targets = batches(1)[0]
    our_step(model, optimizer, inputs, targets)  # calls step()
    by_update = make_models()[0]
    update_optimizer = SGD(by_update, 0.1, momentum=0.9)
    CrossEntropyLoss()(by_update(Tensor(inputs)), Tensor(targets), reduction="mean").backward()
    update_optimizer.update()
    for (_, a), (_, b) in zip(model.named_parameters(), by_update.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert set(optimizer.state) == {name for name, _ in model.named_parameters()}
    assert all(set(state) == {"momentum_buffer"} for state in optimizer.state.values())


def test_apply_single_is_the_extension_point():
    """A new optimizer only writes apply_single: here sign-SGD."""
    class SignSGD(Optimizer):
        def apply_single(self, parameter, state):
            parameter.buffer.array[...] -= self.step_learning_rate * np.sign(parameter.grad.numpy())

    model = make_models()[0]
    before = model.layers[2].bias.numpy().copy()
    inputs, targets = batches(1)[0]
    our_step(model, SignSGD(model, 0.5), inputs, targets)
    np.testing.assert_allclose(np.abs(model.layers[2].bias.numpy() - before), 0.5, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
@pytest.mark.parametrize("make_optimizer", [
    lambda m: SGD(m, cosine_schedule(0.1, 0.01, 3, 15), momentum=0.9, nesterov=True),
    lambda m: AdamW(m, cosine_schedule(0.02, 0.002, 3, 15), weight_decay=0.1),
], ids=["sgd", "adamw"])
def test_save_and_load_state_continue_training_identically(tmp_path, suffix, make_optimizer):
    data = batches()
    uninterrupted, _ = make_models()
    optimizer = make_optimizer(uninterrupted)
    for inputs, targets in data:
        our_step(uninterrupted, optimizer, inputs, targets)

    first, _ = make_models()
    optimizer = make_optimizer(first)
    for inputs, targets in data[:10]:
        our_step(first, optimizer, inputs, targets)
    first.save_weights(tmp_path / f"weights{suffix}")
    optimizer.save_state(tmp_path / f"optimizer{suffix}")

    resumed, _ = make_models(seed=123)  # other initial weights: everything must come from the files
    resumed.load_weights(tmp_path / f"weights{suffix}")
    optimizer = make_optimizer(resumed)
    optimizer.load_state(tmp_path / f"optimizer{suffix}")
    assert optimizer.step_count == 10
    for inputs, targets in data[10:]:
        our_step(resumed, optimizer, inputs, targets)
    for (name, expected), (_, actual) in zip(uninterrupted.named_parameters(), resumed.named_parameters(), strict=True):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy(), err_msg=name)


def test_load_state_rejects_another_optimizer_or_unknown_parameters(tmp_path):
    model = make_models()[0]
    optimizer = Adam(model, 0.01)
    our_step(model, optimizer, *batches(1)[0])
    optimizer.save_state(tmp_path / "adam.safetensors")
    with pytest.raises(ValueError, match="Adam"):
        SGD(model, 0.1, momentum=0.9).load_state(tmp_path / "adam.safetensors")
    narrower = MLP(6, [16], "tanh")  # layers.0 as in the file, no layers.1 or layers.2
    with pytest.raises(ValueError, match=r"layers\.[12]\..*not a parameter"):
        Adam(narrower, 0.01).load_state(tmp_path / "adam.safetensors")
    relaxed = Adam(narrower, 0.01)
    relaxed.load_state(tmp_path / "adam.safetensors", strict=False)
    assert set(relaxed.state) == {"layers.0.weights", "layers.0.bias"}
    with pytest.raises(ValueError, match="shape"):  # same name, other shape: never silently accepted
        Adam(MLP(3, [2], "tanh"), 0.01).load_state(tmp_path / "adam.safetensors", strict=False)


def test_adamw_decaying_only_matrices_matches_torch_parameter_groups():
    """nanoGPT's groups: weight decay on matrices, none on biases."""
    def their_groups(parameters):
        parameters = list(parameters)
        return torch.optim.AdamW([{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": 0.1},
                                  {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}],
                                 lr=0.01, betas=(0.9, 0.95))
    ours, theirs = train_both(lambda m: AdamW(m, 0.01, betas=(0.9, 0.95), weight_decay=0.1, decay_matrices_only=True),
                              their_groups)
    assert_same_parameters(ours, theirs)


def test_flat_and_per_parameter_adam_paths_agree():
    """The flat update (every parameter has a grad) and apply_single give identical parameters and state."""
    flat_model, _ = make_models()
    single_model, _ = make_models()
    flat, single = AdamW(flat_model, 0.01, weight_decay=0.1), AdamW(single_model, 0.01, weight_decay=0.1)
    single.apply_all = lambda parameters: Optimizer.apply_all(single, parameters)  # the base class's: one at a time
    for inputs, targets in batches(5):
        our_step(flat_model, flat, inputs, targets)
        our_step(single_model, single, inputs, targets)
    assert flat._flat is not None and single._flat is None
    for (name, a), (_, b) in zip(flat_model.named_parameters(), single_model.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
        np.testing.assert_array_equal(flat.state[name]["exp_avg_sq"], single.state[name]["exp_avg_sq"], err_msg=name)


def compare_with_torch_while(make_ours, make_theirs, before_step):
    """Train both for STEPS steps; before_step(step, ours, theirs) may drop gradients or freeze parameters."""
    ours, theirs = make_models()
    our_optimizer, their_optimizer = make_ours(ours), make_theirs(theirs.parameters())
    for step, (inputs, targets) in enumerate(batches()):
        our_optimizer.zero_grad()
        their_optimizer.zero_grad()
        CrossEntropyLoss()(ours(Tensor(inputs)), Tensor(targets), reduction="mean").backward()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(inputs)), torch.tensor(targets)).backward()
        before_step(step, ours, theirs)
        our_optimizer.step()
        their_optimizer.step()
        assert_same_parameters(ours, theirs)


ADAM_PAIRS = [
    (lambda m: Adam(m, 0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (lambda m: AdamW(m, 0.01, weight_decay=0.1), lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("make_ours, make_theirs", ADAM_PAIRS, ids=["adam", "adamw"])
def test_adam_steps_where_some_parameters_have_no_gradient_match_torch(make_ours, make_theirs):
    """A parameter without .grad is skipped (no decay, no moment update, its step count stays), as in torch."""
    def drop_some_gradients(step, ours, theirs):
        if step % 3 == 1:
            ours.layers[2].bias.grad = None
            theirs[4].bias.grad = None
    compare_with_torch_while(make_ours, make_theirs, drop_some_gradients)


@pytest.mark.parametrize("make_ours, make_theirs", ADAM_PAIRS, ids=["adam", "adamw"])
def test_adam_with_parameters_frozen_then_unfrozen_matches_torch(make_ours, make_theirs):
    def freeze_for_a_while(step, ours, theirs):
        if step in (5, 12):
            frozen = step == 5
            (ours.layers[0].freeze if frozen else ours.layers[0].unfreeze)()
            for parameter in theirs[0].parameters():
                parameter.requires_grad_(not frozen)
                parameter.grad = None
    compare_with_torch_while(make_ours, make_theirs, freeze_for_a_while)


@pytest.mark.parametrize("make_ours, make_theirs", ADAM_PAIRS, ids=["adam", "adamw"])
def test_adam_keeps_its_state_when_load_weights_replaces_the_parameters(make_ours, make_theirs):
    def reload_own_weights(step, ours, theirs):
        if step == 7:
            grads = [(tensor, tensor.grad) for _, tensor in ours.named_parameters()]
            ours.load_weights([(name, tensor.numpy()) for name, tensor in ours.named_parameters()])
            for (name, new), (_, grad) in zip(ours.named_parameters(), grads):
                new.grad = grad
    compare_with_torch_while(make_ours, make_theirs, reload_own_weights)


@pytest.mark.parametrize("thread_count", [1, 2])
def test_adamw_decay_matrices_only_matches_torch_parameter_groups(thread_count, threads, kernel_set):
    """nanoGPT's groups: weight decay on 2-d parameters (matrices, embeddings), none on biases and norms,
    with the flat update kernel on one thread and shared among two."""
    threads(thread_count)

    def torch_groups(parameters):
        parameters = list(parameters)
        return torch.optim.AdamW([{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": 0.2},
                                  {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}], lr=0.01)
    ours, theirs = train_both(lambda m: AdamW(m, 0.01, weight_decay=0.2, decay_matrices_only=True), torch_groups)
    assert_same_parameters(ours, theirs)


def clipped_steps(model, optimizer, batches_, max_norm: float, keep_grads_apart: bool) -> list[list[np.ndarray]]:
    """AdamW steps with clipping; keep_grads_apart: every gradient in its own array (no flat storage)."""
    grads = []
    for inputs, targets in batches_:
        if keep_grads_apart:
            for _, parameter in model.named_parameters():
                parameter.keep_grad_in(None)
        optimizer.zero_grad()
        CrossEntropyLoss()(model(Tensor(inputs)), Tensor(targets), reduction="sum").backward()
        clip_grad_norm(model, max_norm)
        grads.append([parameter.grad.numpy().copy() for _, parameter in model.named_parameters()])
        optimizer.step()
    return grads


def test_after_the_first_update_adamw_gradients_live_in_one_flat_array_and_match_torch():
    """From the second step on, backward writes every gradient into AdamW's flat storage, which clipping scales
    in place and the update reads as it is: the parameters still follow torch's clip_grad_norm_ + AdamW."""
    ours, theirs = make_models()
    optimizer = AdamW(ours, 1e-2, weight_decay=0.1)
    their_optimizer = torch.optim.AdamW(theirs.parameters(), 1e-2, weight_decay=0.1)
    for step, (inputs, targets) in enumerate(batches(6)):
        optimizer.zero_grad()
        CrossEntropyLoss()(ours(Tensor(inputs)), Tensor(targets), reduction="sum").backward()
        assert (ours.packed_gradients() is not None) == (step > 0)
        clip_grad_norm(ours, 0.5)
        optimizer.step()
        their_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(inputs)), torch.tensor(targets), reduction="sum").backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
        their_optimizer.step()
    assert_same_parameters(ours, theirs)


def test_the_flat_gradient_storage_gives_bit_for_bit_the_steps_of_gradients_in_their_own_arrays():
    data = batches(5)
    runs = []
    for apart in (False, True):
        model = make_models()[0]
        grads = clipped_steps(model, AdamW(model, 1e-2, weight_decay=0.1), data, 0.5, keep_grads_apart=apart)
        runs.append((grads, [parameter.numpy() for _, parameter in model.named_parameters()]))
    (flat_grads, flat_values), (apart_grads, apart_values) = runs
    for got, want in zip(flat_grads + [flat_values], apart_grads + [apart_values], strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_second_backward_adds_into_the_flat_gradient_storage():
    model = make_models()[0]
    optimizer = AdamW(model, 1e-2)
    (inputs, targets), (more, more_targets) = batches(2)
    our_step(model, optimizer, inputs, targets)  # builds the storage

    def gradients(x, y, zero: bool = True):
        if zero:
            optimizer.zero_grad()
        CrossEntropyLoss()(model(Tensor(x)), Tensor(y), reduction="sum").backward()
        return [parameter.grad.numpy().copy() for _, parameter in model.named_parameters()]

    first, second = gradients(inputs, targets), gradients(more, more_targets)
    gradients(inputs, targets)
    both = gradients(more, more_targets, zero=False)
    assert model.packed_gradients() is not None
    for got, a, b in zip(both, first, second, strict=True):
        np.testing.assert_array_equal(got, a + b)
