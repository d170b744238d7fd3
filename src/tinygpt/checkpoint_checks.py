"""What a checkpoint read from disk must satisfy before it is used: each check raises ValueError naming the defect.

The model a config.json describes is compared with the tensors the checkpoint's weights file holds (from its header,
before anything is allocated), and bounded by MAX_MODEL_PARAMETERS; weights must be finite; the optimizer's state
must cover the model. (state.json's schema is checkpoint.py's.)
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
