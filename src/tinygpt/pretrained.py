"""The model a run starts from with --init-from (nanoGPT's init_from): a TinyGPT checkpoint, or a Hugging Face
GPT-2 directory, with its tokenizer when it has one. The run takes the source's architecture and weights; its
optimizer and iteration count start afresh (train.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygpt import gpt2
from tinygpt.checkpoint import CHECKPOINT_DIR, load_checkpoint
from tinygpt.config import ConfigError
from tinygpt.tokenizer.gpt2 import TOKENIZER_JSON, VOCAB_FILE, GPT2Tokenizer, load_gpt2_tokenizer
from tinygpt.nn import GPT
from tinygpt.tensor import Tensor, no_grad
from tinygpt.tokenizer import BPETokenizer


@dataclass
class Pretrained:
    """A source model and its tokenizer (None when the source has none)."""

    model: GPT
    tokenizer: BPETokenizer | None


def load_pretrained(path: str | Path) -> Pretrained:
    """The model (and tokenizer) at `path`: a Hugging Face GPT-2 directory, or a TinyGPT out dir (or its ckpt)."""
    path = Path(path)
    if gpt2.is_gpt2_directory(path):
        return _from_gpt2(path)
    out_dir = path.parent if path.name == CHECKPOINT_DIR else path
    if (out_dir / CHECKPOINT_DIR).is_dir():
        checkpoint = load_checkpoint(out_dir)
        return Pretrained(checkpoint.load_model(), checkpoint.tokenizer)
    raise ConfigError(f"--init-from {path}: neither a TinyGPT checkpoint (an out dir holding ckpt/) nor a Hugging "
                      "Face GPT-2 directory (config.json of model_type gpt2 and model.safetensors)")


def _from_gpt2(directory: Path) -> Pretrained:
    try:
        model = GPT.load_gpt2_checkpoint(directory)
        tokenizer = load_gpt2_tokenizer(directory) if _has_tokenizer(directory) else None
    except (OSError, ValueError) as error:
        raise ConfigError(f"--init-from {directory}: {error}") from None
    if tokenizer is None:
        return Pretrained(model, None)
    file_ids = _file_ids(tokenizer)
    if max(file_ids) >= model.config.vocab_size:
        raise ConfigError(f"--init-from {directory}: the tokenizer has the id {max(file_ids)}, beyond the model's "
                          f"vocab_size {model.config.vocab_size}")
    return Pretrained(_on_our_ids(model, file_ids), tokenizer.canonical())


def _has_tokenizer(directory: Path) -> bool:
    return (directory / TOKENIZER_JSON).is_file() or (directory / VOCAB_FILE).is_file()


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
