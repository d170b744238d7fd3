"""The model a run starts from with --init-from (nanoGPT's init_from): a TinyGPT checkpoint, or a Hugging Face
GPT-2 directory, with its tokenizer when it has one. The run takes the source's architecture and weights; its
optimizer and iteration count start afresh (train.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinygpt import gpt2
from tinygpt.checkpoint import CHECKPOINT_DIR, load_checkpoint
from tinygpt.checkpoint_checks import check_weights_fit_config
from tinygpt.config import ConfigError
from tinygpt.tokenizer.gpt2 import GPT2Tokenizer, has_gpt2_tokenizer, load_gpt2_tokenizer
from tinygpt.nn import GPT, GPTConfig
from tinygpt.tensor import Tensor, no_grad
from tinygpt.tokenizer import BPETokenizer
from tinygpt.utils import is_real


@dataclass
class Pretrained:
    """A source model and its tokenizer (None when the source has none), and for a TinyGPT checkpoint the data it
    was trained on (state.json's record: path and SHA-256 of each text file)."""

    model: GPT
    tokenizer: BPETokenizer | None
    data: dict[str, dict[str, str]] = field(default_factory=dict)


def load_pretrained(path: str | Path) -> Pretrained:
    """The model (and tokenizer) at `path`: a Hugging Face GPT-2 directory, or a TinyGPT out dir (or its ckpt)."""
    path = Path(path)
    if gpt2.is_gpt2_directory(path):
        return _from_gpt2(path)
    out_dir = path.parent if path.name == CHECKPOINT_DIR else path
    if (out_dir / CHECKPOINT_DIR).is_dir():
        checkpoint = load_checkpoint(out_dir)
        return Pretrained(checkpoint.load_model(), checkpoint.tokenizer, checkpoint.state.get("data") or {})
    raise ConfigError(f"--init-from {path}: neither a TinyGPT checkpoint (an out dir holding ckpt/) nor a Hugging "
                      "Face GPT-2 directory (config.json of model_type gpt2 and model.safetensors)")


def _from_gpt2(directory: Path) -> Pretrained:
    try:
        check_gpt2_sizes(directory)
        model = GPT.load_gpt2_checkpoint(directory)
        check_finite_parameters(model, directory / gpt2.WEIGHTS_FILE)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--init-from {directory}: {error}") from None
    try:
        tokenizer = load_gpt2_tokenizer(directory) if has_gpt2_tokenizer(directory) else None
    except (OSError, ValueError) as error:
        raise ConfigError(f"--init-from {directory}: {error}") from None
    if tokenizer is None:
        return Pretrained(model, None)
    file_ids = _file_ids(tokenizer)
    if max(file_ids) >= model.config.vocab_size:
        raise ConfigError(f"--init-from {directory}: the tokenizer has the id {max(file_ids)}, beyond the model's "
                          f"vocab_size {model.config.vocab_size}")
    return Pretrained(_on_our_ids(model, file_ids), tokenizer.canonical())


def check_gpt2_sizes(directory: Path) -> None:
    """The sizes of config.json checked as our own checkpoints' are (types, each >= 1, the parameter bound with the
    positions), layer_norm_epsilon a positive number, and model.safetensors holding at least that many values, all
    before anything is allocated: ValueError naming the file."""
    arguments = gpt2.read_gpt2_config(directory)
    epsilon = arguments.pop("layer_norm_epsilon")
    try:
        config = GPTConfig(**arguments)
        config.validate()
    except (TypeError, ValueError) as error:
        raise ValueError(f"{gpt2.CONFIG_FILE}: {error}") from None
    if not (is_real(epsilon) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"{gpt2.CONFIG_FILE}: layer_norm_epsilon must be a positive number, got {epsilon!r}")
    check_weights_fit_config(directory / gpt2.WEIGHTS_FILE, config)


def check_finite_parameters(model: GPT, path: Path) -> None:
    """Refuse imported weights that hold NaN or infinity, naming the first such tensor (bad input, not a divergence)."""
    for name, tensor in model.named_parameters():
        if not np.isfinite(tensor.numpy()).all():
            raise ValueError(f"{path.name} holds non-finite values in {name}: not a usable model")


def _file_ids(tokenizer: GPT2Tokenizer) -> list[int]:
    """The files' id of each of our ids (tokenizer.canonical()'s), special tokens last."""
    return tokenizer.file_ids.tolist() + list(tokenizer.special_tokens.values())


def _on_our_ids(model: GPT, file_ids: list[int]) -> GPT:
    """Reorder the token embedding (and so the tied LM head) from the files' ids to ours, so that the model with
    tokenizer.canonical() computes what the original model computes with the files' tokenizer."""
    unused = sorted(set(range(model.config.vocab_size)) - set(file_ids))  # rows no token reaches: kept, at the end
    order = np.array(file_ids + unused)
    with no_grad():
        embeddings = model.token_embedding.embeddings
        embeddings.assign(Tensor(embeddings.numpy()[order]))
    return model
