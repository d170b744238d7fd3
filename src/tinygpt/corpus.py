"""The run's text as the trainer reads it: the checked text files, the tokenizer trained on them, their train and
validation token ids, bytes per token, and each rank's share of a batch. Every problem is one ConfigError."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tinygpt.config import ConfigError, TrainConfig, as_config_error, named
from tinygpt.dataset import (check_corpus_file, default_corpus_path, get_batch, read_corpus_text, tokenize_corpus,
                             train_val_split)
from tinygpt.distributed import World
from tinygpt.tokenizer import BPETokenizer


def corpus_path(config: TrainConfig) -> Path:
    """The training text file (the embedded Tiny Shakespeare when config.data is None), checked."""
    return checked_text_file(config.data if config.data is not None else default_corpus_path())


def checked_text_file(path: str | Path) -> Path:
    with as_config_error(FileNotFoundError):
        return check_corpus_file(path)


def read_tokens(path: Path, tokenizer: BPETokenizer) -> np.ndarray:
    """A text file as token ids (cached, memory-mapped)."""
    with as_config_error():
        return tokenize_corpus(path, tokenizer)


def data_files(path: Path, config: TrainConfig) -> dict[str, Path]:
    """The run's text files by setting: {"data": path} and, when it is set, {"val_data": its path}."""
    return {"data": path} | ({"val_data": checked_text_file(config.val_data)} if config.val_data is not None else {})


def warn_of_other_data(source: str, trained_on: dict[str, dict[str, str]], data: dict[str, dict[str, str]]) -> None:
    """--init-from a run trained on other text is what the user asked for: said once, as a warning."""
    before = trained_on.get("data")
    if before is not None and before.get("sha256") != data["data"]["sha256"]:
        warnings.warn(f"--init-from {source} was trained on other data ({before.get('path')}); this run trains on "
                      f"{data['data']['path']}", stacklevel=2)


def train_tokenizer(path: Path, vocab_size: int) -> BPETokenizer:
    """Byte level (no merges) for vocab_size 256, else a BPETokenizer trained on the corpus."""
    tokenizer = BPETokenizer()
    if vocab_size > 256:
        with as_config_error():
            tokenizer.train(read_corpus_text(path), vocab_size)
    return tokenizer


def load_tokens(path: Path, tokenizer: BPETokenizer, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation token ids: all of path and all of config.val_data when it is set, else path
    split 90/10 (by default, config.val_fraction)."""
    tokens = read_tokens(path, tokenizer)
    if config.val_data is not None:
        val_path = checked_text_file(config.val_data)
        train_tokens, val_tokens, described = tokens, read_tokens(val_path, tokenizer), f"validation file {val_path}"
    else:
        train_tokens, val_tokens = train_val_split(tokens, config.val_fraction)
        described = f"data file {path} has {len(tokens)} tokens: its validation split"
    block_size = config.model.max_seq_length
    if len(val_tokens) < block_size + 1:
        raise ConfigError(f"{described} of {len(val_tokens)} tokens is too short for block size {block_size} (needs "
                          f"{block_size + 1}); use a smaller {named('block_size')} or more data")
    if len(train_tokens) < block_size + 1:
        raise ConfigError(f"data file {path}: its training split of {len(train_tokens)} tokens is too short for block "
                          f"size {block_size} (needs {block_size + 1}); use a smaller {named('block_size')} or more data")
    return train_tokens, val_tokens


def bytes_per_token(tokens: np.ndarray, tokenizer: BPETokenizer, chunk: int = 1 << 22) -> float:
    """Average UTF-8 bytes per token, for converting a loss in nats/token to bits/byte (1 at byte level)."""
    if not tokenizer.merges and not tokenizer.special_tokens:
        return 1.0
    lengths = np.zeros(max(tokenizer.vocab) + 1, dtype=np.int64)
    for index, token in tokenizer.vocab.items():
        lengths[index] = len(token)
    total = sum(int(lengths[np.asarray(tokens[start:start + chunk])].sum()) for start in range(0, len(tokens), chunk))
    return total / len(tokens)


def sequences_per_rank(config: TrainConfig, world: World) -> int:
    """A rank's share of each batch: an equal share of batch_size under `tinygpt train`'s own ranks (and in one
    process), all of batch_size on each rank under an explicit mpiexec (the global batch is batch_size x ranks)."""
    return config.batch_size // world.world_size if world.splits_batch else config.batch_size


def rank_batch(tokens: np.ndarray, config: TrainConfig, rng: np.random.Generator, world: World,
               per_rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """This rank's share of a global batch: every rank draws the same per_rank x ranks windows (per_rank:
    sequences_per_rank by default) from the same generator and takes its own per_rank of them, so the ranks
    together see one process's batch."""
    per_rank = per_rank or sequences_per_rank(config, world)
    x, y = get_batch(tokens, config.model.max_seq_length, per_rank * world.world_size, rng)
    share = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
    return x[share], y[share]
