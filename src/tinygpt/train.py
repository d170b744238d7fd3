"""The training loop: a GPT on a text file, with periodic evaluation, atomic checkpoints and exact resume.

    from tinygpt.train import TrainConfig, train
    result = train(TrainConfig(max_iters=200, out_dir="out"))
    print(result.final_eval["val_loss"], result.sample)

A checkpoint is the directory `<out_dir>/ckpt` (model.safetensors, optimizer.safetensors, config.json,
tokenizer.model/.vocab, state.json with the iteration, the RNG states and the loss history). It is
written into a fresh `ckpt.tmp-*` directory first; then the previous `ckpt` is renamed to `ckpt.old`,
the new one renamed to `ckpt`, and `ckpt.old` deleted. Whatever instant a run is killed at, one
complete checkpoint is left: `ckpt` when it exists (only ever created whole, by a rename), otherwise
`ckpt.old`, which the loader falls back to and the next save puts back in place.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tinygpt import backend
from tinygpt.dataset import (check_corpus_file, default_corpus_path, get_batch, read_corpus_text, tokenize_corpus,
                             train_val_split)
from tinygpt.losses import CrossEntropyLoss
from tinygpt.nn import GPT
from tinygpt.optimizers import AdamW, clip_grad_norm, cosine_schedule
from tinygpt.tensor import Tensor, no_grad
from tinygpt.tokenizer import BPETokenizer

CHECKPOINT_FORMAT = "tinygpt-checkpoint v1"
CHECKPOINT_DIR, PREVIOUS_CHECKPOINT_DIR, STAGING_PREFIX = "ckpt", "ckpt.old", "ckpt.tmp-"
MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "config.json", "state.json"
TOKENIZER_PREFIX = "tokenizer"
ARCHITECTURE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias")
DATA_STREAM, EVAL_STREAM = 1, 2  # the sampler's and the evaluation's random streams, apart from init's

PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's README command for a CPU (config/train_shakespeare_char.py shrunk), at byte level.
    # lr_decay_iters is left to follow max_iters, as both nanoGPT configurations have it.
    # Evaluation: 50 batches every 250 iterations (nanoGPT's README uses 20) keeps it under ~15% of the run.
    "shakespeare-char-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0, bias=False,
                                 max_iters=2000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
                                 beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=50),
    # nanoGPT's config/train_shakespeare_char.py as it is (a GPU run).
    "shakespeare-char-gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2, bias=False,
                                 max_iters=5000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
                                 beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=200,
                                 device="cuda"),
}


class ConfigError(ValueError):
    """A problem with the settings, the data or a checkpoint, told in one line (the CLI prints just that)."""


@dataclass
class TrainConfig:
    """Every knob of a run, named as nanoGPT's; the defaults are the `shakespeare-char-cpu` preset."""

    data: str | None = None  # a UTF-8 text file; None is the embedded Tiny Shakespeare
    out_dir: str = "out"
    vocab_size: int = 256  # 256 is byte level; more trains a BPETokenizer on the data first
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    bias: bool = False
    dropout: float = 0.0
    batch_size: int = 12
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: decay over max_iters (nanoGPT's configs set the two equal)
    weight_decay: float = 0.1  # on 2-D parameters only (matmul weights, embeddings), as nanoGPT
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 50
    val_fraction: float = 0.1
    sample_tokens: int = 300  # length of the sample printed at the end; 0 skips it
    device: str = "cpu"
    seed: int = 1337
    resume: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        positive = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "eval_interval", "eval_iters")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("max_iters", "warmup_iters", "sample_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.vocab_size < 256:
            raise ConfigError(f"vocab_size must be >= 256 (the byte tokens), got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        for name in ("learning_rate", "weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0.0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr <= self.learning_rate:
            raise ConfigError(f"min_lr must be in [0, learning_rate {self.learning_rate}], got {self.min_lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.lr_decay_iters is not None and self.lr_decay_iters < self.warmup_iters:
            raise ConfigError(f"lr_decay_iters {self.lr_decay_iters} is shorter than warmup_iters {self.warmup_iters}")
        if self.device not in backend.DEVICES:
            raise ConfigError(f"unknown device {self.device!r}, expected one of {', '.join(backend.DEVICES)}")


def resolve_config(overrides: dict[str, Any], preset: str | None = None) -> TrainConfig:
    """Defaults, then (with resume) the checkpoint's settings, then the preset, then `overrides`.

    So `--resume` alone continues a run as it was configured; explicit values win, and an explicit
    architecture that differs from the checkpoint's is refused later by `train`."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}, expected one of {', '.join(PRESETS)}")
    known = {item.name for item in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown training settings {unknown}")
    settings = asdict(TrainConfig())
    if overrides.get("resume"):
        out_dir = overrides.get("out_dir", settings["out_dir"])
        saved = read_checkpoint_config(find_checkpoint(out_dir))["train"]
        settings.update({key: value for key, value in saved.items() if key in known and key not in ("out_dir", "resume")})
    settings.update(PRESETS[preset] if preset else {})
    settings.update(overrides)
    return TrainConfig(**settings)


@dataclass
class TrainResult:
    """What a run leaves: the trained model and tokenizer, its history, final losses, speed and sample."""

    model: GPT
    tokenizer: BPETokenizer
    config: TrainConfig
    history: dict[str, list]
    final_eval: dict[str, float]
    wall_seconds: float
    tokens_per_second: float
    checkpoint_dir: Path
    sample: str = ""
    plot: Path | None = field(default=None)


def build_optimizer(model: GPT, config: TrainConfig) -> AdamW:
    """AdamW with nanoGPT's warmup + cosine schedule, decaying only matrices and embeddings (nanoGPT's groups)."""
    decay_iters = config.max_iters if config.lr_decay_iters is None else config.lr_decay_iters
    schedule = cosine_schedule(config.learning_rate, config.min_lr, config.warmup_iters, decay_iters)
    return AdamW(model, schedule, (config.beta1, config.beta2), weight_decay=config.weight_decay, decay_matrices_only=True)


def build_model(config: TrainConfig) -> GPT:
    return GPT(max_seq_length=config.block_size, vocab_size=config.vocab_size, num_layers=config.n_layer,
               num_heads=config.n_head, embedding_dim=config.n_embd, dropout=config.dropout, bias=config.bias)


# ---- data ----------------------------------------------------------------------------------------
def corpus_path(config: TrainConfig) -> Path:
    try:
        return check_corpus_file(config.data if config.data is not None else default_corpus_path())
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from None


def train_tokenizer(path: Path, vocab_size: int) -> BPETokenizer:
    """Byte level (no merges) for vocab_size 256, else a BPETokenizer trained on the corpus."""
    tokenizer = BPETokenizer()
    if vocab_size > 256:
        try:
            tokenizer.train(read_corpus_text(path), vocab_size)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return tokenizer


def load_tokens(path: Path, tokenizer: BPETokenizer, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The corpus as cached token ids, split 90/10 (by default) into train and validation."""
    try:
        tokens = tokenize_corpus(path, tokenizer)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    train_tokens, val_tokens = train_val_split(tokens, config.val_fraction)
    if len(val_tokens) < config.block_size + 1:
        raise ConfigError(f"data file {path} has {len(tokens)} tokens: its validation split of {len(val_tokens)} is too "
                          f"short for block size {config.block_size} (needs {config.block_size + 1}); "
                          "use a smaller --block-size or more data")
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


# ---- evaluation ----------------------------------------------------------------------------------
@no_grad()
def estimate_loss(model: GPT, tokens: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> float:
    """Mean cross-entropy (nats per token) over eval_iters random batches, in eval mode (no dropout)."""
    loss_fn = CrossEntropyLoss()
    model.eval()
    losses = []
    for _ in range(config.eval_iters):
        x, y = get_batch(tokens, config.block_size, config.batch_size, rng)
        logits = model(Tensor(x, device=config.device))
        losses.append(loss_fn(logits, Tensor(y, device=config.device), reduction="mean").item())
    model.train()
    return float(np.mean(losses))


def split_windows(tokens: np.ndarray, block_size: int, max_tokens: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets of every non-overlapping block_size window of tokens (the first max_tokens)."""
    windows = (min(len(tokens), max_tokens + 1) - 1) // block_size
    inputs = np.asarray(tokens[: windows * block_size]).reshape(windows, block_size)
    targets = np.asarray(tokens[1 : windows * block_size + 1]).reshape(windows, block_size)
    return inputs, targets


@no_grad()
def whole_split_loss(model: GPT, tokens: np.ndarray, config: TrainConfig, max_tokens: int = 1 << 20) -> tuple[float, int]:
    """Mean cross-entropy over every non-overlapping block_size window of the split (its first max_tokens):
    each position 0..T-1 counts equally, as in random windows, but without sampling noise.
    Returns the loss and the number of tokens it covers."""
    inputs, targets = split_windows(tokens, config.block_size, max_tokens)
    windows = len(inputs)
    loss_fn, total = CrossEntropyLoss(), 0.0
    model.eval()
    for start in range(0, windows, config.batch_size):
        logits = model(Tensor(inputs[start : start + config.batch_size], device=config.device))
        total += loss_fn(logits, Tensor(targets[start : start + config.batch_size], device=config.device), reduction="sum").item()
    model.train()
    return total / max(targets.size, 1), targets.size


def evaluate(model: GPT, splits: dict[str, np.ndarray], byte_ratios: dict[str, float], config: TrainConfig,
             iteration: int) -> dict[str, float]:
    """Train and val loss, and each as bits per byte (loss / ln 2 / bytes per token). Every evaluation uses
    the same batches (drawn from the seed), so successive evaluations compare like with like."""
    result: dict[str, float] = {"iteration": iteration}
    for index, (name, tokens) in enumerate(splits.items()):
        loss = estimate_loss(model, tokens, config, np.random.default_rng([config.seed, EVAL_STREAM, index]))
        result[f"{name}_loss"] = loss
        result[f"{name}_bpb"] = loss / math.log(2) / byte_ratios[name]
    return result


# ---- checkpoints ---------------------------------------------------------------------------------
def find_checkpoint(out_dir: str | os.PathLike) -> Path:
    """The directory of the latest complete checkpoint in out_dir (see the module docstring)."""
    out_dir = Path(out_dir)
    for name in (CHECKPOINT_DIR, PREVIOUS_CHECKPOINT_DIR):
        if (out_dir / name).is_dir():
            return out_dir / name
    raise ConfigError(f"no checkpoint in {out_dir} (train one with: tinygpt train --out-dir {out_dir})")


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    """config.json of a checkpoint: {"format", "model": GPT arguments, "train": TrainConfig as a dict}."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        if config.get("format") != CHECKPOINT_FORMAT or not isinstance(config["model"], dict):
            raise ValueError(f"format {config.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        config["train"] = dict(config["train"])
        return config
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"corrupt checkpoint {directory}: cannot read {CONFIG_FILE} ({error})") from None


@dataclass
class Checkpoint:
    """A checkpoint read back from disk: its directory, config.json, state.json, and tokenizer."""

    directory: Path
    config: dict[str, Any]
    state: dict[str, Any]
    tokenizer: BPETokenizer

    def load_model(self, device: str = "cpu") -> GPT:
        """The GPT of config.json with the saved weights, on `device`."""
        try:
            model = GPT(**self.config["model"])
            model.load_weights(str(self.directory / MODEL_FILE))
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(f"corrupt checkpoint {self.directory}: {error}") from None
        return model.to(device) if device != "cpu" else model


def load_checkpoint(out_dir: str | os.PathLike) -> Checkpoint:
    """Read the latest complete checkpoint of out_dir; anything missing or malformed raises ConfigError."""
    directory = find_checkpoint(out_dir)
    config = read_checkpoint_config(directory)
    try:
        state = json.loads((directory / STATE_FILE).read_text())
        int(state["iteration"]), dict(state["history"]), state["data_rng"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"corrupt checkpoint {directory}: cannot read {STATE_FILE} ({error})") from None
    tokenizer = BPETokenizer()
    try:
        tokenizer.load(directory / f"{TOKENIZER_PREFIX}.model")
    except (OSError, ValueError) as error:
        raise ConfigError(f"corrupt checkpoint {directory}: {error}") from None
    return Checkpoint(directory, config, state, tokenizer)


def save_checkpoint(out_dir: Path, model: GPT, optimizer: AdamW, tokenizer: BPETokenizer,
                    config: TrainConfig, state: dict[str, Any]) -> Path:
    """Write a complete checkpoint next to the current one, then swap it in (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    current, previous = out_dir / CHECKPOINT_DIR, out_dir / PREVIOUS_CHECKPOINT_DIR
    if not current.exists() and previous.is_dir():
        os.rename(previous, current)  # an earlier save was killed between its two renames
    for stale in out_dir.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    model.save_weights(str(staging / MODEL_FILE))
    optimizer.save_state(str(staging / OPTIMIZER_FILE))
    tokenizer.save(staging / TOKENIZER_PREFIX)
    (staging / CONFIG_FILE).write_text(json.dumps(
        {"format": CHECKPOINT_FORMAT, "model": model.config, "train": asdict(config)}, indent=2) + "\n")
    (staging / STATE_FILE).write_text(json.dumps(state) + "\n")
    for path in [*staging.iterdir(), staging]:
        _fsync(path)
    if current.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(current, previous)
    os.rename(staging, current)
    _fsync(out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return current


def _fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk, so that a rename never publishes unwritten data."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _random_state(device: str) -> dict | None:
    """The dropout generator's state as JSON-able data (CPU only: CuPy's generator exposes none)."""
    return backend.generator(device).bit_generator.state if device == "cpu" else None


# ---- the loop ------------------------------------------------------------------------------------
def check_device(device: str) -> None:
    if device == "cuda":
        try:
            backend.array_module("cuda")
        except RuntimeError as error:
            raise ConfigError(str(error)) from None
        if not backend.cuda_available():
            raise ConfigError("device 'cuda': CuPy is installed but sees no CUDA GPU")


def check_architecture(saved: dict[str, Any], config: TrainConfig, directory: Path) -> None:
    """Refuse to resume a checkpoint into a model of another shape."""
    differing = [key for key in ARCHITECTURE_KEYS if saved.get(key) != getattr(config, key)]
    if differing:
        have = ", ".join(f"{key}={saved.get(key)}" for key in differing)
        asked = ", ".join(f"{key}={getattr(config, key)}" for key in differing)
        raise ConfigError(f"checkpoint {directory} has {have} but this run asks for {asked}; "
                          "use the checkpoint's architecture or drop --resume")


def train_step(model: GPT, optimizer: AdamW, x: np.ndarray, y: np.ndarray, config: TrainConfig) -> float:
    """One iteration: forward, cross-entropy, backward, gradient clipping, AdamW update; returns the loss."""
    logits = model(Tensor(x, device=config.device))
    loss = CrossEntropyLoss()(logits, Tensor(y, device=config.device), reduction="mean")
    optimizer.zero_grad()
    loss.backward()
    if config.grad_clip > 0:
        clip_grad_norm(model, config.grad_clip)
    optimizer.update()
    return loss.item()


def train(config: TrainConfig, verbose: bool = True) -> TrainResult:
    """Train (or, with config.resume, continue) a GPT as configured; returns a TrainResult.

    Progress goes to stderr (tqdm), evaluations and the final sample to stdout, when verbose."""
    started = time.perf_counter()
    config.validate()
    check_device(config.device)
    out_dir = Path(config.out_dir)
    log = tqdm.write if verbose else (lambda message: None)

    checkpoint = load_checkpoint(out_dir) if config.resume else None
    if checkpoint is not None:
        check_architecture(checkpoint.config["train"], config, checkpoint.directory)
    path = corpus_path(config)
    tokenizer = checkpoint.tokenizer if checkpoint is not None else train_tokenizer(path, config.vocab_size)
    if checkpoint is None and config.vocab_size > 256:
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out_dir / TOKENIZER_PREFIX)
        log(f"trained a BPE tokenizer of {len(tokenizer.vocab)} tokens: {out_dir / TOKENIZER_PREFIX}.model")
    splits = dict(zip(("train", "val"), load_tokens(path, tokenizer, config)))
    byte_ratios = {name: bytes_per_token(tokens, tokenizer) for name, tokens in splits.items()}

    backend.manual_seed(config.seed)
    model = checkpoint.load_model(config.device) if checkpoint is not None else build_model(config).to(config.device)
    model.train()
    optimizer = build_optimizer(model, config)
    data_rng = np.random.default_rng([config.seed, DATA_STREAM])
    history: dict[str, list] = {"iterations": [], "losses": [], "learning_rates": [], "evals": []}
    start = 0
    if checkpoint is not None:
        start, history = _restore(checkpoint, model, optimizer, data_rng, config.device)
        if start > config.max_iters:
            raise ConfigError(f"the checkpoint in {out_dir} is at iteration {start}, beyond --max-iters "
                              f"{config.max_iters}: give a larger --max-iters to continue it")
    log(f"{model.num_parameters():,} parameters, {len(splits['train']):,} train and {len(splits['val']):,} val tokens, "
        f"iterations {start} -> {config.max_iters} on {config.device}")

    tokens_per_iteration = config.batch_size * config.block_size
    step_seconds, recent_rate = 0.0, 0.0
    evaluated = {record["iteration"] for record in history["evals"]}
    directory = checkpoint.directory if checkpoint is not None else out_dir / CHECKPOINT_DIR
    progress = tqdm(total=config.max_iters, initial=start, disable=not verbose, unit="it", mininterval=0.5,
                    dynamic_ncols=True)
    iteration = start
    while True:
        at_end = iteration >= config.max_iters
        if (at_end or iteration % config.eval_interval == 0) and iteration not in evaluated:
            record = evaluate(model, splits, byte_ratios, config, iteration)
            history["evals"].append(record)
            evaluated.add(iteration)
            log(f"iter {iteration}: train loss {record['train_loss']:.4f} ({record['train_bpb']:.3f} bits/byte), "
                f"val loss {record['val_loss']:.4f} ({record['val_bpb']:.3f} bits/byte)")
        if at_end or (iteration > start and iteration % config.eval_interval == 0):
            state = {"iteration": iteration, "data_rng": data_rng.bit_generator.state,
                     "dropout_rng": _random_state(config.device), "history": history}
            directory = save_checkpoint(out_dir, model, optimizer, tokenizer, config, state)
        if at_end:
            break
        step_started = time.perf_counter()
        x, y = get_batch(splits["train"], config.block_size, config.batch_size, data_rng)
        learning_rate = optimizer.current_learning_rate
        loss_value = train_step(model, optimizer, x, y, config)
        elapsed = time.perf_counter() - step_started
        step_seconds += elapsed
        rate = tokens_per_iteration / elapsed
        recent_rate = 0.9 * recent_rate + 0.1 * rate if recent_rate else rate  # smoothed for the progress bar
        history["iterations"].append(iteration)
        history["losses"].append(loss_value)
        history["learning_rates"].append(learning_rate)
        progress.set_postfix_str(f"loss {loss_value:.4f}, lr {learning_rate:.2e}, {recent_rate:,.0f} tok/s", refresh=False)
        progress.update(1)
        iteration += 1
    progress.close()

    trained = config.max_iters - start
    final_eval = dict(next(record for record in history["evals"] if record["iteration"] == iteration))
    final_eval["whole_val_loss"], covered = whole_split_loss(model, splits["val"], config)
    final_eval["whole_val_bpb"] = final_eval["whole_val_loss"] / math.log(2) / byte_ratios["val"]
    log(f"final val loss over {covered:,} of the {len(splits['val']):,} validation tokens (all of its "
        f"{config.block_size}-token windows, no sampling): {final_eval['whole_val_loss']:.4f} "
        f"({final_eval['whole_val_bpb']:.3f} bits/byte)")
    result = TrainResult(model=model, tokenizer=tokenizer, config=config, history=history, final_eval=final_eval,
                         wall_seconds=0.0, tokens_per_second=trained * tokens_per_iteration / step_seconds if trained else 0.0,
                         checkpoint_dir=directory, plot=plot_losses(history, out_dir / "loss.png"))
    if config.sample_tokens:
        result.sample = sample_text(model, tokenizer, "\n", config.sample_tokens, temperature=0.8, top_k=200,
                                    seed=config.seed, device=config.device)
    result.wall_seconds = time.perf_counter() - started
    log(f"done: {trained} iterations in {result.wall_seconds:.1f} s, {result.tokens_per_second:,.0f} tokens/s "
        f"while training; checkpoint in {directory}" + (f", loss curve {result.plot}" if result.plot else ""))
    if verbose and result.sample:
        print(f"---- sample ----\n{result.sample}\n----------------", flush=True)
    return result


def _restore(checkpoint: Checkpoint, model: GPT, optimizer: AdamW, data_rng: np.random.Generator,
             device: str) -> tuple[int, dict[str, list]]:
    """Put the optimizer and both random generators back as they were at the checkpoint; return its iteration
    and history. (The model weights were loaded by Checkpoint.load_model.)"""
    iteration = int(checkpoint.state["iteration"])
    try:
        optimizer.load_state(str(checkpoint.directory / OPTIMIZER_FILE))
        if optimizer.step_count != iteration:
            raise ValueError(f"optimizer took {optimizer.step_count} steps but state.json says iteration {iteration}")
        data_rng.bit_generator.state = checkpoint.state["data_rng"]
        if checkpoint.state.get("dropout_rng") is not None and device == "cpu":
            backend.generator("cpu").bit_generator.state = checkpoint.state["dropout_rng"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"corrupt checkpoint {checkpoint.directory}: {error}") from None
    if device != "cpu":
        xp = backend.array_module(device)
        for state in optimizer.state.values():
            for key, value in state.items():
                if np.ndim(value):
                    state[key] = xp.asarray(value)
    return iteration, checkpoint.state["history"]


def sample_text(model: GPT, tokenizer: BPETokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                top_k: int | None = 200, seed: int = 1337, device: str = "cpu") -> str:
    """The prompt followed by max_new_tokens tokens drawn from the model, as text."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        raise ConfigError("the prompt is empty: give at least one character to start from")
    generated = model.generate(Tensor(np.array([ids], dtype=np.int32), device=device), max_new_tokens,
                               temperature=temperature, top_k=top_k, rng=np.random.default_rng(seed))
    return tokenizer.decode(generated.numpy()[0].tolist())


def plot_losses(history: dict[str, list], path: Path) -> Path | None:
    """Save the loss curve (per-iteration train loss and the evaluations) as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.plot(history["iterations"], history["losses"], color="tab:blue", alpha=0.35, linewidth=0.8, label="train (batch)")
    evals = history["evals"]
    for name, color in (("train", "tab:blue"), ("val", "tab:orange")):
        axes.plot([record["iteration"] for record in evals], [record[f"{name}_loss"] for record in evals],
                  "o-", color=color, label=f"{name} (eval)")
    axes.set_xlabel("iteration")
    axes.set_ylabel("cross-entropy (nats / token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


__all__ = ["TrainConfig", "TrainResult", "PRESETS", "ConfigError", "Checkpoint", "train", "whole_split_loss", "split_windows",
           "resolve_config", "load_checkpoint", "save_checkpoint", "find_checkpoint", "sample_text", "build_model",
           "build_optimizer", "train_step", "evaluate", "estimate_loss"]
