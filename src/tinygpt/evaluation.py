"""Evaluation: the mean next-token loss of a model over many windows of a split, from forward passes alone (no
graph, nothing kept for a backward) over large batches of windows, each rank taking a contiguous share.

    estimate_loss      eval_iters random batches, drawn from a seeded generator (the periodic estimate)
    whole_split_loss   every non-overlapping window of a split (the final, exact figure; `tinygpt eval`)
    evaluate           a run's periodic evaluation: both splits' estimates, in nats and bits per byte
    evaluate_checkpoint  a saved checkpoint over a whole text file (`tinygpt eval`)
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt import kernels
from tinygpt.checkpoint import check_same_data, data_record, load_checkpoint
from tinygpt.config import ConfigError, TrainConfig, check_device, setting_schema
from tinygpt.corpus import bytes_per_token, checked_text_file, corpus_path, data_files, load_tokens, read_tokens
from tinygpt.dataset import get_batch
from tinygpt.distributed import World, get_world
from tinygpt.losses import CrossEntropyLoss
from tinygpt.memory import keep_freed_memory
from tinygpt.nn import GPT
from tinygpt.tensor import Tensor, no_grad
from tinygpt.threads import engine_threads

# Tokens per forward pass: many windows at once, so that each op's fixed cost (Python, allocation) is spread over
# much arithmetic, while the attention scores of a pass stay a few MB
EVAL_TOKENS = 8192
EVAL_STREAM = 2  # the evaluation's random stream, apart from init's and the sampler's


@no_grad()
def mean_loss(model: GPT, inputs: np.ndarray, targets: np.ndarray, device: str = "cpu",
              world: World | None = None) -> float:
    """Mean cross-entropy (nats per token) over every window (row) of inputs and targets, in eval mode (no
    dropout): each rank sums its contiguous share of the windows, EVAL_TOKENS at a time, then one all-reduce."""
    world = world or get_world()
    windows = len(inputs)
    first, last = windows * world.rank // world.world_size, windows * (world.rank + 1) // world.world_size
    per_pass = max(1, EVAL_TOKENS // max(inputs.shape[1], 1))
    loss_fn, total, was_training = CrossEntropyLoss(), 0.0, model.training
    model.eval()
    for start in range(first, last, per_pass):
        stop = min(start + per_pass, last)
        logits = model(Tensor(inputs[start:stop], device=device))
        total += loss_fn(logits, Tensor(targets[start:stop], device=device), reduction="sum").item()
    model.train(was_training)
    return world.sum_floats([total])[0] / max(targets.size, 1)


def estimate_loss(model: GPT, tokens: np.ndarray, config: TrainConfig, rng: np.random.Generator,
                  world: World | None = None) -> float:
    """Mean cross-entropy over eval_iters random batches of the global batch size (the windows one process would
    draw from rng, batch by batch), computed as one set of windows."""
    world = world or get_world()
    global_batch = config.batch_size if world.splits_batch else config.batch_size * world.world_size
    drawn = [get_batch(tokens, config.model.max_seq_length, global_batch, rng) for _ in range(config.eval_iters)]
    inputs, targets = (np.concatenate(part) for part in zip(*drawn))
    return mean_loss(model, inputs, targets, config.device, world)


def split_windows(tokens: np.ndarray, block_size: int, max_tokens: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets of every non-overlapping block_size window of tokens (the first max_tokens)."""
    windows = (min(len(tokens), max_tokens + 1) - 1) // block_size
    inputs = np.asarray(tokens[: windows * block_size]).reshape(windows, block_size)
    targets = np.asarray(tokens[1 : windows * block_size + 1]).reshape(windows, block_size)
    return inputs, targets


def whole_split_loss(model: GPT, tokens: np.ndarray, config: TrainConfig, max_tokens: int = 1 << 20,
                     world: World | None = None) -> tuple[float, int]:
    """Mean cross-entropy over every non-overlapping block_size window of the split (its first max_tokens): each
    position 0..T-1 counts equally, as in random windows, but without sampling noise. Returns the loss and the
    number of tokens it covers."""
    inputs, targets = split_windows(tokens, config.model.max_seq_length, max_tokens)
    return mean_loss(model, inputs, targets, config.device, world), targets.size


def evaluate(model: GPT, splits: dict[str, np.ndarray], byte_ratios: dict[str, float], config: TrainConfig,
             iteration: int, world: World | None = None) -> dict[str, float]:
    """Train and val loss, and each as bits per byte (loss / ln 2 / bytes per token). Every evaluation uses
    the same batches (drawn from the seed), so successive evaluations compare like with like."""
    result: dict[str, float] = {"iteration": iteration}
    for index, (name, tokens) in enumerate(splits.items()):
        loss = estimate_loss(model, tokens, config, np.random.default_rng([config.seed, EVAL_STREAM, index]), world)
        result[f"{name}_loss"] = loss
        result[f"{name}_bpb"] = loss / math.log(2) / byte_ratios[name]
    return result


def evaluate_checkpoint(out_dir: str | Path, data: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """The loss (nats per token) and bits per byte of the checkpoint in out_dir over every window of a text file
    (all of it), or by default of the run's validation split: then it is the final whole-split loss the trainer
    printed. Returns {"loss", "bpb", "tokens", "source", "seconds"} (seconds: of the forward passes)."""
    check_device(device)
    with engine_threads():
        return _evaluate_checkpoint(out_dir, data, device)


def _evaluate_checkpoint(out_dir: str | Path, data: str | Path | None, device: str) -> dict[str, Any]:
    checkpoint = load_checkpoint(out_dir)
    known = {setting.name for setting in setting_schema()}
    settings = {key: value for key, value in checkpoint.config["train"].items() if key in known}
    config = TrainConfig.from_settings(settings | {"device": device, "resume": False})
    model = checkpoint.load_model(device)
    if data is None:
        path = corpus_path(config)
        check_same_data(checkpoint, data_record(data_files(path, config)))
        tokens, max_tokens = load_tokens(path, checkpoint.tokenizer, config)[1], 1 << 20
        source = f"the validation data of the run ({config.val_data or path})"
    else:
        path = checked_text_file(data)
        tokens = read_tokens(path, checkpoint.tokenizer)
        if len(tokens) < config.model.max_seq_length + 1:
            raise ConfigError(f"{path} has {len(tokens)} tokens, fewer than one window of block size "
                              f"{config.model.max_seq_length} + 1")
        max_tokens, source = len(tokens), str(path)
    kernels.for_device(device)  # loading the compiled kernels is start-up, as in training's rate: not timed
    keep_freed_memory()  # every batch frees and reallocates the same arrays: reuse them (memory.py)
    started = time.perf_counter()
    loss, covered = whole_split_loss(model, tokens, config, max_tokens=max_tokens)
    return {"loss": loss, "bpb": loss / math.log(2) / bytes_per_token(tokens, checkpoint.tokenizer), "tokens": covered,
            "source": source, "seconds": time.perf_counter() - started}


__all__ = ["EVAL_TOKENS", "estimate_loss", "mean_loss", "split_windows", "whole_split_loss", "evaluate",
           "evaluate_checkpoint"]
