"""What a checkpoint read from disk must satisfy before it is used: each check raises ValueError naming the defect.

The model a config.json describes is compared with the tensors the checkpoint's weights file holds (from its header,
before anything is allocated), and bounded by MAX_MODEL_PARAMETERS; weights must be finite; state.json
must have the structure the loop writes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from tinygpt.files import regular_file
from tinygpt.module import Module
from tinygpt.nn import MAX_MODEL_PARAMETERS, GPTConfig
from tinygpt.utils import is_real

HISTORY_SERIES = ("iterations", "losses", "learning_rates")


def stored_elements(path: Path) -> int:
    """The number of elements of all tensors in a safetensors file, read from its header only."""
    regular_file(path, "weights file")
    try:
        with safe_open(str(path), framework="numpy") as file:
            return sum(math.prod(file.get_slice(name).get_shape()) for name in file.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path.name}: not a valid safetensors file ({error})") from None


def check_weights_fit_config(path: Path, config: GPTConfig) -> None:
    """Refuse a config whose model needs more parameters than the weights file holds (or than the bound)."""
    stored = stored_elements(path)
    needed = config.minimum_parameters()
    if stored > MAX_MODEL_PARAMETERS:
        raise ValueError(f"{path.name} holds {stored:,} values, more than the bound of {MAX_MODEL_PARAMETERS:,}")
    if needed > stored:
        raise ValueError(f"config.json describes a model of at least {needed:,} parameters but {path.name} holds "
                         f"only {stored:,} values")


def check_finite_weights(module: Module, what: str) -> None:
    """Refuse weights holding NaN or infinity (a run that diverged), naming the first such parameter."""
    for name, tensor in module.named_parameters():
        values = tensor.numpy()
        if not np.isfinite(values).all():
            raise ValueError(f"{what} holds non-finite weights ({name}): the run that wrote it diverged; "
                             "resume from an earlier checkpoint or train again with a lower learning rate")


def check_state(state: Any) -> None:
    """state.json as the training loop writes it: iteration, data_rng, a history of numeric series, and (since they
    are recorded) the SHA-256 of the checkpoint's files and the path and SHA-256 of its data."""
    if not isinstance(state, dict):
        raise ValueError(f"expected an object, got {type(state).__name__}")
    iteration = state.get("iteration")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise ValueError(f"iteration must be an integer >= 0, got {iteration!r}")
    if not isinstance(state.get("data_rng"), dict):
        raise ValueError("data_rng must be a random generator's state (an object)")
    history = state.get("history")
    if not isinstance(history, dict):
        raise ValueError("history must be an object")
    for name in HISTORY_SERIES:
        series = history.get(name)
        if not isinstance(series, list) or not all(map(is_real, series)):
            raise ValueError(f"history.{name} must be a list of numbers")
    evals = history.get("evals")
    if not isinstance(evals, list) or not all(_is_eval_record(record) for record in evals):
        raise ValueError("history.evals must be a list of {iteration: integer, <name>: number} records")
    files, data = state.get("files", {}), state.get("data", {})
    if not isinstance(files, dict) or not all(isinstance(digest, str) for digest in files.values()):
        raise ValueError("files must be an object of {file name: SHA-256}")
    if not isinstance(data, dict) or not all(isinstance(record, dict) and isinstance(record.get("sha256"), str)
                                             and isinstance(record.get("path"), str) for record in data.values()):
        raise ValueError("data must be an object of {setting: {path, sha256}}")


def _is_eval_record(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("iteration"), int)
            and all(is_real(value) for value in record.values()))


def check_optimizer_covers_model(optimizer: Any, iteration: int) -> None:
    """After `iteration` > 0 steps of training every trainable parameter has state, and each per-parameter step
    count equals the iteration (the loop updates every parameter at every step)."""
    if iteration == 0:
        return
    state = optimizer.state
    for name, tensor in optimizer.module.named_parameters() if hasattr(optimizer, "module") else ():
        if tensor.requires_grad and name not in state:
            raise ValueError(f"optimizer state has no entry for parameter {name!r}")
    for name, fields in state.items():
        if "step" in fields and float(fields["step"]) != iteration:
            raise ValueError(f"optimizer state {name}.step is {float(fields['step']):g}, expected {iteration}")
