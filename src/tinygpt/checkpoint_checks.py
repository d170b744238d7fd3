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
    """state.json as the training loop writes it: each field of STATE_FIELDS of its type and range, the required
    ones present (the others came later: a checkpoint written before them lacks them)."""
    if not isinstance(state, dict):
        raise ValueError(f"expected an object, got {type(state).__name__}")
    for name, (required, is_valid, expected) in STATE_FIELDS.items():
        if (name in state or required) and not is_valid(state.get(name)):
            raise ValueError(f"{name} must be {expected}, got {_shown(state.get(name))}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_generator_state(value: Any) -> bool:
    """Whether numpy's generator (PCG64, as np.random.default_rng makes for the sampler and dropout) takes it."""
    try:
        np.random.PCG64().state = value
    except (TypeError, ValueError, KeyError):
        return False
    return True


def _is_history(history: Any) -> bool:
    return (isinstance(history, dict)
            and all(isinstance(history.get(name), list) and all(map(is_real, history[name])) for name in HISTORY_SERIES)
            and isinstance(history.get("evals"), list) and all(map(_is_eval_record, history["evals"])))


def _is_eval_record(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("iteration"), int)
            and all(is_real(value) for value in record.values()))


STATE_FIELDS = {  # name: (required, check, what it must be)
    "iteration": (True, _is_count, "an integer >= 0"),
    "data_rng": (True, _is_generator_state, "a PCG64 generator's state"),
    "history": (True, _is_history, "an object of lists of numbers (iterations, losses, learning_rates) and evals, "
                                   "a list of {iteration: integer, <name>: number} records"),
    "dropout_rng": (False, lambda value: value is None or _is_generator_state(value),
                    "a PCG64 generator's state or null"),
    "dropout_rngs": (False, lambda value: isinstance(value, list) and all(item is None or _is_generator_state(item)
                                                                         for item in value),
                     "a list of PCG64 generator states (or nulls), one per rank"),
    "elapsed": (False, lambda value: is_real(value) and math.isfinite(value) and value >= 0,
                "the training seconds so far (a number >= 0)"),
    "files": (False, lambda files: isinstance(files, dict) and all(isinstance(digest, str) for digest in files.values()),
              "an object of {file name: SHA-256}"),
    "data": (False, lambda data: isinstance(data, dict) and all(
        isinstance(record, dict) and isinstance(record.get("sha256"), str) and isinstance(record.get("path"), str)
        for record in data.values()), "an object of {setting: {path, sha256}}"),
}


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
