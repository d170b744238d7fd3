"""What `tinygpt profile` and `tinygpt attention` do: a few profiled training steps of a configured run, and
the attention maps of a checkpoint's model for a prompt."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tinygpt.config import ConfigError, TrainConfig
from tinygpt.instruments.attention import attention_probabilities, draw_attention, token_labels
from tinygpt.instruments.profile import Profile, profile
from tinygpt.checkpoint import load_checkpoint
from tinygpt.config import check_device
from tinygpt.corpus import corpus_path, load_tokens, rank_batch, train_tokenizer
from tinygpt.train import DATA_STREAM, build_model, build_optimizer, train_step
from tinygpt.distributed import get_world
from tinygpt.memory import keep_freed_memory


class TimedOptimizer:
    """An optimizer whose update() is its own row ("optimizer.update") of the profile."""

    def __init__(self, optimizer, timed: Profile) -> None:
        self.optimizer, self.timed = optimizer, timed

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def update(self) -> None:
        with self.timed.region("optimizer.update"):
            self.optimizer.update()


WARM_UP_STEPS = 2


def profile_training(config: TrainConfig, steps: int = 3) -> Profile:
    """`steps` training steps of the run `config` describes (its model, batch and optimizer, on its data), profiled
    after two warm-up steps: the kernels load at the first, the optimizer's flat storage is made at its first
    update, and the second is the first step to run as every later one does (its first-touched memory aside)."""
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    config.validate()
    check_device(config.device)
    keep_freed_memory()  # as the trainer does: otherwise every product's output faults its pages in again
    path = corpus_path(config)
    tokens = load_tokens(path, train_tokenizer(path, config.model.vocab_size), config)[0]
    model = build_model(config).to(config.device)
    model.train()
    rng, world = np.random.default_rng([config.seed, DATA_STREAM]), get_world()
    optimizer = build_optimizer(model, config, world)
    batch = config.batch_size * config.gradient_accumulation_steps
    for _ in range(WARM_UP_STEPS):
        train_step(model, optimizer, *rank_batch(tokens, config, rng, world, batch), config, world)
    with profile(model) as timed:
        for _ in range(steps):
            with timed.region("batch"):
                x, y = rank_batch(tokens, config, rng, world, batch)
            train_step(model, TimedOptimizer(optimizer, timed), x, y, config, world)
    return timed


def attention_picture(out_dir: str | Path, prompt: str, path: str | Path | None = None,
                      layer: int | None = None, device: str = "cpu") -> tuple[Path, np.ndarray]:
    """Draw the attention maps of the checkpoint in out_dir for a prompt (every layer, or one) to `path`
    (default: out_dir/attention.png); returns the path and the probabilities drawn."""
    checkpoint = load_checkpoint(out_dir)
    model = checkpoint.load_model(device)
    ids = checkpoint.tokenizer.encode(prompt)
    if not ids:
        raise ConfigError("the prompt is empty: give --prompt some text")
    if len(ids) > model.max_seq_length:
        raise ConfigError(f"the prompt has {len(ids)} tokens, more than the model's {model.max_seq_length} positions")
    layers = model.config.num_layers
    if layer is not None and not 0 <= layer < layers:
        raise ConfigError(f"--layer must be in [0, {layers}), got {layer}")
    probabilities = attention_probabilities(model, ids)
    tokens = token_labels([checkpoint.tokenizer.decode([token]) for token in ids])
    path = Path(path) if path is not None else Path(out_dir) / "attention.png"
    drawn = draw_attention(probabilities, tokens, path, None if layer is None else [layer])
    return drawn, probabilities


__all__ = ["TimedOptimizer", "profile_training", "attention_picture"]
