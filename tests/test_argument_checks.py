"""The Python API refuses arguments that cannot work, at construction, with a message naming them."""
import math

import numpy as np
import pytest

from tinygpt.nn import GPT, FullyConnectedLayer
from tinygpt.optimizers import SGD, Adam, AdamW, Muon
from tinygpt.tensor import Tensor

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.fixture
def layer() -> FullyConnectedLayer:
    return FullyConnectedLayer(3, 2, bias=False)  # Muon takes matrices only


@pytest.mark.parametrize("optimizer", [SGD, Adam, AdamW, Muon])
@pytest.mark.parametrize("learning_rate", [*NON_FINITE, -1.0])
def test_optimizers_refuse_a_non_finite_or_negative_learning_rate(layer, optimizer, learning_rate):
    with pytest.raises(ValueError, match=f"learning_rate must be >= 0 and finite, got {learning_rate}"):
        optimizer(layer, learning_rate=learning_rate)


@pytest.mark.parametrize("optimizer", [SGD, Adam, AdamW, Muon])
def test_a_schedule_that_gives_a_non_finite_learning_rate_stops_the_update(layer, optimizer):
    schedule = optimizer(layer, learning_rate=lambda step: math.nan)
    layer(Tensor(np.ones((1, 3), dtype=np.float32))).sum().backward()
    before = [tensor.numpy().copy() for _, tensor in layer.named_parameters()]
    with pytest.raises(ValueError, match="learning rate of step 0 is nan"):
        schedule.update()
    assert all(np.array_equal(old, tensor.numpy()) for old, (_, tensor) in zip(before, layer.named_parameters()))


@pytest.mark.parametrize("betas", [(2, 2), (0.9, 1.0), (-0.1, 0.9), (math.nan, 0.9), (0.9,), "ab"])
@pytest.mark.parametrize("optimizer", [Adam, AdamW])
def test_adam_refuses_betas_outside_0_1(layer, optimizer, betas):
    with pytest.raises(ValueError, match="betas must be two numbers in \\[0, 1\\)"):
        optimizer(layer, betas=betas)


@pytest.mark.parametrize("eps", [*NON_FINITE, -1e-8])
def test_adam_refuses_a_bad_eps(layer, eps):
    with pytest.raises(ValueError, match="eps must be >= 0 and finite"):
        AdamW(layer, eps=eps)


@pytest.mark.parametrize("optimizer", [SGD, AdamW, Muon])
@pytest.mark.parametrize("weight_decay", [*NON_FINITE, -0.1])
def test_optimizers_refuse_a_bad_weight_decay(layer, optimizer, weight_decay):
    with pytest.raises(ValueError, match="weight_decay must be >= 0 and finite"):
        optimizer(layer, weight_decay=weight_decay)


@pytest.mark.parametrize("momentum", [*NON_FINITE, -0.5])
def test_sgd_refuses_a_bad_momentum(layer, momentum):
    with pytest.raises(ValueError, match="momentum must be >= 0 and finite"):
        SGD(layer, momentum=momentum)


def test_valid_hyperparameters_still_construct(layer):
    SGD(layer, learning_rate=0.0, momentum=0.9, weight_decay=0.0, nesterov=True)
    AdamW(layer, learning_rate=lambda step: 1e-3, betas=(0.0, 0.999), eps=0.0, weight_decay=0.0)
    Adam(layer, learning_rate=np.float32(1e-3), betas=[0.9, 0.95])


@pytest.mark.parametrize("arguments, message", [
    (dict(num_layers=0), "num_layers must be an integer >= 1, got 0"),
    (dict(vocab_size=0), "vocab_size must be an integer >= 1, got 0"),
    (dict(num_heads=0), "num_heads must be an integer >= 1, got 0"),
    (dict(embedding_dim=0), "embedding_dim must be an integer >= 1, got 0"),
    (dict(max_seq_length=0), "max_seq_length must be an integer >= 1, got 0"),
    (dict(num_layers=2.5), "num_layers must be an integer >= 1, got 2.5"),
    (dict(embedding_dim=10, num_heads=3), "embedding_dim 10 is not divisible by num_heads 3"),
    (dict(dropout=1.0), "dropout must be in \\[0, 1\\), got 1.0"),
    (dict(dropout=math.nan), "dropout must be in \\[0, 1\\), got nan"),
])
def test_gpt_refuses_sizes_that_cannot_work(arguments, message):
    sizes = dict(max_seq_length=8, vocab_size=16, num_layers=1, num_heads=2, embedding_dim=8) | arguments
    with pytest.raises(ValueError, match=message):
        GPT(**sizes)


def test_gpt_8_16_1_0_8_names_num_heads():
    with pytest.raises(ValueError, match="num_heads must be an integer >= 1, got 0"):
        GPT(8, 16, 1, 0, 8)


@pytest.fixture(scope="module")
def tiny_gpt() -> GPT:
    return GPT(8, 16, 1, 2, 8)


@pytest.mark.parametrize("arguments, message", [
    (dict(max_new_tokens=-3), "max_new_tokens must be an integer >= 0, got -3"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an integer >= 0, got 2.5"),
    (dict(temperature=math.nan), "needs temperature >= 0 and finite, got nan"),
    (dict(temperature=math.inf), "needs temperature >= 0 and finite, got inf"),
])
def test_generate_refuses_bad_arguments(tiny_gpt, arguments, message):
    ids = Tensor(np.array([[1, 2]], dtype=np.int32))
    with pytest.raises(ValueError, match=message):
        tiny_gpt.generate(ids, **(dict(max_new_tokens=2) | arguments))


def test_generate_of_zero_tokens_returns_the_prompt(tiny_gpt):
    ids = Tensor(np.array([[1, 2]], dtype=np.int32))
    assert tiny_gpt.generate(ids, 0).numpy().tolist() == [[1, 2]]


def test_transpose_names_the_axis_out_of_range():
    with pytest.raises(ValueError, match="transpose: axis 9 is out of range for a 2-D tensor"):
        Tensor(np.zeros((2, 3), dtype=np.float32)).transpose(0, 9)
    assert Tensor(np.zeros((2, 3), dtype=np.float32)).transpose(0, -1).shape == (3, 2)


def test_arange_refuses_a_zero_step():
    with pytest.raises(ValueError, match="arange: step must not be zero"):
        Tensor.arange(0, 5, 0)
    assert Tensor.arange(5, 0, -2).numpy().tolist() == [5, 3, 1]
