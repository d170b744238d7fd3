"""Evaluation from forward passes alone: the losses equal PyTorch's on the same weights and windows."""
import numpy as np
import pytest

import tinygpt
from tinygpt.config import TrainConfig
from tinygpt.distributed import World
from tinygpt.evaluation import EVAL_TOKENS, estimate_loss, whole_split_loss
from tinygpt.nn import GPT

torch = pytest.importorskip("torch")

ARCHITECTURE = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=256, bias=False)


def model_and_config(**changes) -> tuple[GPT, TrainConfig]:
    config = TrainConfig.from_settings(ARCHITECTURE | dict(batch_size=6, eval_iters=3) | changes)
    tinygpt.manual_seed(3)
    return GPT(config.model), config


def torch_losses(model: GPT, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """PyTorch's cross-entropy of every token, from nanoGPT's model holding our weights."""
    from tinygpt.bench import build_torch

    weights = {name: tensor.numpy() for name, tensor in model.named_parameters()}
    reference = build_torch(ARCHITECTURE, weights).eval()
    with torch.no_grad():
        logits = reference(torch.from_numpy(inputs.astype(np.int64)))
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                                   torch.from_numpy(targets.astype(np.int64)).reshape(-1), reduction="none")
    return losses.numpy()


def test_the_whole_split_loss_equals_pytorchs_over_every_window():
    model, config = model_and_config()
    tokens = np.random.default_rng(0).integers(0, 256, 16 * 1100 + 7)  # more windows than one forward pass takes
    assert 16 * 1100 > EVAL_TOKENS
    loss, covered = whole_split_loss(model, tokens, config, world=World())
    inputs, targets = tokens[:16 * 1100].reshape(1100, 16), tokens[1:16 * 1100 + 1].reshape(1100, 16)
    assert covered == targets.size
    assert loss == pytest.approx(torch_losses(model, inputs, targets).mean(), rel=1e-5)


def test_the_estimate_equals_pytorchs_over_the_windows_drawn_batch_by_batch():
    from tinygpt.dataset import get_batch

    model, config = model_and_config()
    tokens = np.random.default_rng(1).integers(0, 256, 5000)
    estimate = estimate_loss(model, tokens, config, np.random.default_rng(7), World())
    rng = np.random.default_rng(7)
    batches = [get_batch(tokens, 16, config.batch_size, rng) for _ in range(config.eval_iters)]
    expected = np.mean([torch_losses(model, x, y).mean() for x, y in batches])
    assert estimate == pytest.approx(expected, rel=1e-5)


def test_evaluation_leaves_the_model_in_the_mode_it_found():
    model, config = model_and_config(dropout=0.1)
    tokens = np.random.default_rng(2).integers(0, 256, 500)
    for mode in (True, False):
        model.train(mode)
        whole_split_loss(model, tokens, config, world=World())
        assert model.training is mode
