"""The training loop: a GPT on a text file, with periodic evaluation, atomic checkpoints and exact resume.

    from tinygpt.train import TrainConfig, train
    result = train(TrainConfig(max_iters=200, out_dir="out"))
    print(result.final_eval["val_loss"], result.sample)

Settings live in tinygpt.config (TrainConfig, presets), checkpoints in tinygpt.checkpoint; this module is the
loop: data, evaluation, the training step, and the run from start (or a checkpoint) to the end.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tinygpt import backend
from tinygpt.checkpoint import (CHECKPOINT_DIR, TOKENIZER_PREFIX, Checkpoint, check_architecture, check_same_data,
                                data_record, find_checkpoint, load_checkpoint, out_dir_lock, random_state,
                                read_checkpoint_config, removed_if_left_empty, restore_training_state, save_checkpoint)
from tinygpt.checkpoint_checks import check_finite_weights
from tinygpt.config import PRESETS, ConfigError, TrainConfig, named, setting_schema
from tinygpt.dataset import (check_corpus_file, default_corpus_path, get_batch, read_corpus_text, tokenize_corpus,
                             train_val_split)
from tinygpt.distributed import TERMINAL_VARIABLE, World, get_world
from tinygpt.divergence import DivergenceWatch
from tinygpt.evaluation import estimate_loss, split_windows, whole_split_loss
from tinygpt.instruments.run import RunInstruments
from tinygpt.losses import CrossEntropyLoss
from tinygpt.memory import keep_freed_memory
from tinygpt.metrics import METRICS_FILE, PLOT_FILE, MetricsLog, plot_metrics, read_metrics
from tinygpt.nn import GPT, LayerNorm
from tinygpt.optimizers import (AdamW, Muon, Optimizer, OptimizerGroups, ParameterGroup, clip_grad_norm, cosine_schedule,
                                wsd_schedule)
from tinygpt.pretrained import load_pretrained
from tinygpt.sampling import printable, stream_text
from tinygpt.tensor import Tensor
from tinygpt.threads import engine_threads, get_num_threads
from tinygpt.tokenizer import BPETokenizer

DATA_STREAM, EVAL_STREAM = 1, 2  # the sampler's and the evaluation's random streams, apart from init's


def resolve_config(overrides: dict[str, Any], preset: str | None = None) -> TrainConfig:
    """Defaults, then (with resume) the checkpoint's settings, then the preset, then `overrides`.

    So `--resume` alone continues a run as it was configured; explicit values win, and an explicit
    architecture that differs from the checkpoint's is refused later by `train`. A resumed run keeps the
    learning-rate schedule it started with: when the checkpoint's lr_decay_iters followed its max_iters, it is
    pinned to that max_iters, so `--resume --max-iters N` beyond it holds min_lr from there on (the rate never
    jumps back up); give --lr-decay-iters to decay over the new length instead."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}, expected one of {', '.join(PRESETS)}")
    settings = TrainConfig().settings()
    if overrides.get("resume"):
        out_dir = overrides.get("out_dir", settings["out_dir"])
        saved = read_checkpoint_config(find_checkpoint(out_dir))["train"]
        settings.update({key: value for key, value in saved.items() if key in settings and key not in ("out_dir", "resume")})
        end, warmup = saved.get("max_iters"), settings["warmup_iters"]  # (validate reports values of another type)
        if saved.get("lr_decay_iters") is None and isinstance(end, int) and isinstance(warmup, int) and end >= warmup:
            settings["lr_decay_iters"] = saved["max_iters"]  # keep the schedule the run started with, see below
    settings.update(PRESETS[preset] if preset else {})
    settings.update(overrides)
    return TrainConfig.from_settings(settings)


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


def build_optimizer(model: GPT, config: TrainConfig) -> Optimizer | OptimizerGroups:
    """AdamW decaying only matrices and embeddings (nanoGPT's groups); with optimizer "muon", Muon for the hidden
    matrices and that AdamW for the rest. The schedule (nanoGPT's warmup + cosine, or warmup-stable-decay) runs
    from learning_rate to min_lr, and Muon's from muon_learning_rate down in the same proportion."""
    adamw_schedule = build_schedule(config, config.learning_rate, config.min_lr)
    if config.optimizer != "muon":
        return AdamW(model, adamw_schedule, (config.beta1, config.beta2), weight_decay=config.weight_decay,
                     decay_matrices_only=True)
    floor = config.min_lr / config.learning_rate if config.learning_rate else 0.0
    muon = Muon(ParameterGroup(model, is_hidden_matrix), build_schedule(config, config.muon_learning_rate,
                config.muon_learning_rate * floor), weight_decay=config.weight_decay, momentum=config.muon_momentum)
    adamw = AdamW(ParameterGroup(model, lambda name, tensor: not is_hidden_matrix(name, tensor)), adamw_schedule,
                  (config.beta1, config.beta2), weight_decay=config.weight_decay, decay_matrices_only=True)
    return OptimizerGroups(muon, adamw)


def is_hidden_matrix(name: str, tensor) -> bool:
    """The weights Muon trains: the blocks' matrices (not the embeddings, the head, gains or biases)."""
    return tensor.ndim == 2 and name.startswith("blocks.")


def build_schedule(config: TrainConfig, peak: float, floor: float):
    """The learning rate of each iteration, from `peak` down to `floor`."""
    if config.schedule == "wsd":
        return wsd_schedule(peak, floor, config.warmup_iters, config.max_iters, config.decay_fraction)
    decay_iters = config.max_iters if config.lr_decay_iters is None else config.lr_decay_iters
    return cosine_schedule(peak, floor, config.warmup_iters, decay_iters)


def build_model(config: TrainConfig) -> GPT:
    return GPT(config.model)


def with_dropout(model: GPT, dropout: float) -> GPT:
    """The same weights (and LayerNorm epsilons) in a GPT whose dropout is the run's."""
    rebuilt = GPT(replace(model.config, dropout=dropout))
    rebuilt.load_weights(model.named_parameters())
    for target, source in zip(rebuilt.modules(), model.modules()):
        if isinstance(source, LayerNorm):
            target.eps = source.eps
    return rebuilt


# ---- data ----------------------------------------------------------------------------------------
def corpus_path(config: TrainConfig) -> Path:
    """The training text file (the embedded Tiny Shakespeare when config.data is None), checked."""
    return checked_text_file(config.data if config.data is not None else default_corpus_path())


def checked_text_file(path: str | Path) -> Path:
    try:
        return check_corpus_file(path)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from None


def read_tokens(path: Path, tokenizer: BPETokenizer) -> np.ndarray:
    """A text file as token ids (cached, memory-mapped)."""
    try:
        return tokenize_corpus(path, tokenizer)
    except ValueError as error:
        raise ConfigError(str(error)) from None


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
        try:
            tokenizer.train(read_corpus_text(path), vocab_size)
        except ValueError as error:
            raise ConfigError(str(error)) from None
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


# ---- evaluation ----------------------------------------------------------------------------------
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
    started = time.perf_counter()
    loss, covered = whole_split_loss(model, tokens, config, max_tokens=max_tokens)
    return {"loss": loss, "bpb": loss / math.log(2) / bytes_per_token(tokens, checkpoint.tokenizer), "tokens": covered,
            "source": source, "seconds": time.perf_counter() - started}


# ---- the loop ------------------------------------------------------------------------------------
def check_device(device: str) -> None:
    if device == "cuda":
        try:
            backend.array_module("cuda")
        except RuntimeError as error:
            raise ConfigError(str(error)) from None
        if not backend.cuda_available():
            raise ConfigError("device 'cuda': CuPy is installed but sees no CUDA GPU")


class Diverged(ValueError):
    """A training step whose loss or gradient norm is not finite: the update is not applied."""


def train_step(model: GPT, optimizer: Optimizer, x: np.ndarray, y: np.ndarray, config: TrainConfig,
               world: World | None = None) -> tuple[float, float]:
    """One optimizer step on x, y, cut into gradient_accumulation_steps micro-batches (nanoGPT's accumulation):
    each micro-batch's mean loss / steps is backpropagated and the gradients add up; they are averaged over the
    ranks, clipped, and the optimizer steps. Returns the loss (its mean over micro-batches and ranks) and the
    gradient norm before clipping.

    Raises Diverged, before updating anything, when the loss or the gradient norm is NaN or infinite (the
    same on every rank: both are of the averaged gradients)."""
    steps = config.gradient_accumulation_steps
    optimizer.zero_grad()
    total = 0.0
    for inputs, targets in zip(np.array_split(x, steps), np.array_split(y, steps)):
        logits = model(Tensor(inputs, device=config.device))
        loss = CrossEntropyLoss()(logits, Tensor(targets, device=config.device), reduction="mean")
        (loss / steps).backward()
        total += loss.item()
    loss_value = (world or get_world()).average_gradients(model, total / steps)
    grad_norm = clip_grad_norm(model, config.grad_clip if config.grad_clip > 0 else math.inf)  # inf: measure only
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        raise Diverged(f"the loss is {loss_value} and the gradient norm {grad_norm}")
    optimizer.update()
    return loss_value, grad_norm


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run; a checkpoint of the interrupted iteration was saved first. str() says
    where, and the command that continues it."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what kill, a job scheduler or a container stop send


@contextmanager
def deferred_interrupt() -> Iterator[threading.Event]:
    """Within it, the first Ctrl-C (SIGINT) or SIGTERM only sets the event, so that the loop stops between two steps
    and saves; a second one interrupts at once. Off the main thread, where signals cannot be caught, the event
    never fires."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.default_int_handler)

    def request_stop(signum, frame) -> None:
        requested.set()
        restore()

    for signum in STOP_SIGNALS:
        signal.signal(signum, request_stop)
    try:
        yield requested
    finally:
        restore()


def on_any_rank(world: World, flag: bool) -> bool:
    """Whether flag is set on any rank (one all-reduce when there are several), so that the ranks stop together."""
    return flag if world.world_size == 1 else world.sum_floats([float(flag)])[0] > 0


def refuse_overwrite(out_dir: Path, config: TrainConfig) -> bool:
    """A fresh run never silently replaces a checkpoint: it needs --resume or --overwrite. Returns whether the run
    replaces one (then the old run's files stay until its first checkpoint lands)."""
    try:
        directory = find_checkpoint(out_dir)
    except ConfigError:
        return False
    if not config.overwrite:
        raise ConfigError(f"{out_dir} already holds a checkpoint ({directory}): continue it with {named('resume', True)}, "
                          f"or replace it with {named('overwrite', True)}, or give another {named('out_dir')}")
    return True


class ProgressReport:
    """A tqdm bar on a terminal (tqdm.auto: a widget in a notebook); when stderr is redirected, a plain line every
    log_interval iterations instead of carriage-return updates. Nothing when not verbose."""

    def __init__(self, config: TrainConfig, start: int, verbose: bool) -> None:
        terminal = sys.stderr.isatty() or os.environ.get(TERMINAL_VARIABLE) == "1"  # a rank's stderr is mpiexec's pipe
        self.plain = verbose and not terminal
        self.bar = tqdm(total=config.max_iters, initial=start, disable=not verbose or self.plain, unit="it",
                        mininterval=0.5, dynamic_ncols=True)
        self.log_interval, self.recent_rate = config.log_interval, 0.0

    def step(self, iteration: int, loss: float, learning_rate: float, rate: float, mfu: float = 0.0) -> None:
        self.recent_rate = 0.9 * self.recent_rate + 0.1 * rate if self.recent_rate else rate  # smoothed for the bar
        text = f"loss {loss:.4f}, lr {learning_rate:.2e}, {self.recent_rate:,.0f} tok/s, MFU {mfu:.1%}"
        if self.plain and iteration % self.log_interval == 0:
            try:
                print(f"iter {iteration}: {text}", file=sys.stderr, flush=True)
            except OSError:  # stderr redirected to a full disk: the run matters more than its progress lines
                self.plain = False
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def describe_model(model: GPT) -> str:
    """What a GPT is, in a few words: "a GPT of 1 layer, 2 heads, width 16, block 8, vocabulary 256, with biases
    (5,216 parameters)"."""
    shape = model.config
    layers = f"{shape.num_layers} layer{'s' if shape.num_layers > 1 else ''}"
    return (f"a GPT of {layers}, {shape.num_heads} heads, width {shape.embedding_dim}, block {shape.max_seq_length}, "
            f"vocabulary {shape.vocab_size}, {'with' if shape.bias else 'without'} biases "
            f"({model.num_parameters():,} parameters)")


def describe_layout(config: TrainConfig, world: World) -> str:
    """How the work is split, e.g. "2 ranks x 1 thread, 6 sequences each"."""
    threads = get_num_threads() if config.device == "cpu" else 0
    processes = f"{world.world_size} ranks" if world.world_size > 1 else "1 process"
    cores = f" x {threads} thread{'s' if threads > 1 else ''}" if threads else ""
    return f"{processes}{cores}, {sequences_per_rank(config, world)} sequences each"


def open_metrics(out_dir: Path, resumed_at: int | None, replacing: bool) -> MetricsLog:
    """The run's MetricsLog (see tinygpt.metrics); a metrics.jsonl damaged before its last line is one ConfigError."""
    try:
        return MetricsLog(out_dir / METRICS_FILE, resumed_at, pending=replacing)
    except ValueError as error:
        raise ConfigError(f"{error}; move it aside to resume without its history") from None


def check_out_dir_writable(out_dir: Path) -> None:
    """Create out_dir and a file in it now, rather than find out at the first checkpoint."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        raise ConfigError(f"--out-dir {out_dir} is not writable ({error.strerror or error})") from None


def check_finite_before_saving(model: GPT, last_eval: dict[str, float], iteration: int, directory: Path) -> None:
    """Never write a checkpoint of non-finite weights (or after a non-finite evaluation): stop the run instead."""
    if not (math.isfinite(last_eval["train_loss"]) and math.isfinite(last_eval["val_loss"])):
        raise diverged(iteration, "the evaluation loss is not finite", directory)
    try:
        check_finite_weights(model, "the model")
    except ValueError:
        raise diverged(iteration, "the weights are not finite", directory) from None


def diverged(iteration: int, reason: str, directory: Path) -> ConfigError:
    """The one line that stops a run whose loss, gradients or weights became non-finite."""
    kept = f"the last good checkpoint {directory} is kept" if directory.is_dir() else "no checkpoint was written"
    return ConfigError(f"training diverged at iteration {iteration}: {reason} (non-finite); {kept}; "
                       f"lower the learning rate ({named('learning_rate')}) or clip gradients ({named('grad_clip')})")


def train(config: TrainConfig, verbose: bool = True) -> TrainResult:
    """Train (or, with config.resume, continue) a GPT as configured; returns a TrainResult.

    Progress goes to stderr, evaluations and the final sample to stdout, when verbose; every log_interval-th
    iteration and every evaluation also to <out_dir>/metrics.jsonl. Ctrl-C saves a checkpoint and raises
    TrainingInterrupted. Under mpiexec every rank runs this, on its share of each batch (see
    docs/distributed.md); rank 0 alone writes and prints, holding the out dir's lock (a second run into it is
    refused). BLAS runs on one thread (threads.engine_threads)."""
    config.validate()
    with engine_threads():
        if not get_world().is_main:
            return _train(config, verbose)
        with removed_if_left_empty(Path(config.out_dir)):
            check_out_dir_writable(Path(config.out_dir))
            with out_dir_lock(Path(config.out_dir)):
                return _train(config, verbose)


def _train(config: TrainConfig, verbose: bool) -> TrainResult:
    started = time.perf_counter()
    check_device(config.device)
    world = get_world()
    out_dir = Path(config.out_dir)
    verbose = verbose and world.is_main
    keep_freed_memory()  # every step frees and reallocates the same arrays: reuse them, no page faults (memory.py)
    log = tqdm.write if verbose else (lambda message: None)

    checkpoint = load_checkpoint(out_dir) if config.resume else None
    replacing = checkpoint is None and refuse_overwrite(out_dir, config)
    if checkpoint is not None:
        check_architecture(checkpoint, config)
    pretrained = load_pretrained(config.init_from) if config.init_from and checkpoint is None else None
    if pretrained is not None:
        config = replace(config, model=replace(pretrained.model.config, dropout=config.model.dropout))
        config.validate()
        log(f"starting from {config.init_from}: {describe_model(pretrained.model)}; its weights, a fresh optimizer, "
            "iteration 0")
    path = corpus_path(config)
    data = data_record(data_files(path, config))
    if checkpoint is not None:
        check_same_data(checkpoint, data)
        tokenizer = checkpoint.tokenizer
    elif pretrained is not None:
        warn_of_other_data(config.init_from, pretrained.data, data)
        tokenizer = pretrained.tokenizer or train_tokenizer(path, 256)  # a source without a tokenizer: bytes
    else:
        tokenizer = train_tokenizer(path, config.model.vocab_size)
        if config.model.vocab_size > 256 and world.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            tokenizer.save(out_dir / TOKENIZER_PREFIX)
            log(f"trained a BPE tokenizer of {len(tokenizer.vocab)} tokens: {out_dir / TOKENIZER_PREFIX}.model")
    splits = dict(zip(("train", "val"), load_tokens(path, tokenizer, config)))
    byte_ratios = {name: bytes_per_token(tokens, tokenizer) for name, tokens in splits.items()}

    backend.manual_seed(config.seed + world.rank)  # each rank its own dropout stream; the weights are rank 0's
    if checkpoint is not None:
        model = checkpoint.load_model(config.device)
    elif pretrained is not None:
        model = with_dropout(pretrained.model, config.model.dropout).to(config.device)
    else:
        model = build_model(config).to(config.device)
    world.broadcast_parameters(model)
    model.train()
    optimizer = build_optimizer(model, config)
    data_rng = np.random.default_rng([config.seed, DATA_STREAM])
    history: dict[str, list] = {"iterations": [], "losses": [], "learning_rates": [], "evals": []}
    start, train_seconds = 0, 0.0
    if checkpoint is not None:
        start, history = restore_training_state(checkpoint, optimizer, data_rng, config.device, world.rank, world.world_size)
        train_seconds = float(checkpoint.state.get("elapsed", 0.0))
        if start > config.max_iters:
            raise ConfigError(f"the checkpoint in {out_dir} is at iteration {start}, beyond {named('max_iters')} "
                              f"{config.max_iters}: give a larger {named('max_iters')} to continue it")
    metrics = open_metrics(out_dir, start if checkpoint is not None else None, replacing) if world.is_main else None
    instruments = RunInstruments(model, config, out_dir if world.is_main else None, world.world_size)
    log(f"{model.num_parameters():,} parameters, {len(splits['train']):,} train and {len(splits['val']):,} val tokens, "
        f"iterations {start} -> {config.max_iters} on {config.device}: {describe_layout(config, world)}")

    micro_batches = sequences_per_rank(config, world) * config.gradient_accumulation_steps  # per rank and step
    tokens_per_iteration = micro_batches * config.model.max_seq_length * world.world_size
    step_seconds = 0.0
    evaluated = {record["iteration"] for record in history["evals"]}
    directory = checkpoint.directory if checkpoint is not None else out_dir / CHECKPOINT_DIR
    progress = ProgressReport(config, start, verbose)
    divergence = DivergenceWatch(config.model.vocab_size)
    iteration = start

    def record(entry: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.write(entry)
            instruments.write(entry)

    def save() -> Path:
        dropout_rngs = world.gather(random_state(config.device))
        if not world.is_main:
            return directory
        state = {"iteration": iteration, "data_rng": data_rng.bit_generator.state, "dropout_rng": dropout_rngs[0],
                 "dropout_rngs": dropout_rngs, "history": history, "elapsed": train_seconds, "data": data}
        saved = save_checkpoint(out_dir, model, optimizer, tokenizer, config, state)
        metrics.publish()  # a run that replaces another takes the out dir's metrics.jsonl only now
        return saved

    with deferred_interrupt() as interrupted:
        try:
            while True:
                at_end = iteration >= config.max_iters
                if (at_end or iteration % config.eval_interval == 0) and iteration not in evaluated:
                    evaluation = evaluate(model, splits, byte_ratios, config, iteration, world)
                    history["evals"].append(evaluation)
                    evaluated.add(iteration)
                    record({"type": "eval", "iter": iteration, **{key: value for key, value in evaluation.items()
                                                                  if key != "iteration"}, "elapsed": train_seconds})
                    log(f"iter {iteration}: train loss {evaluation['train_loss']:.4f} ({evaluation['train_bpb']:.3f} "
                        f"bits/byte), val loss {evaluation['val_loss']:.4f} ({evaluation['val_bpb']:.3f} bits/byte)")
                if at_end or (iteration > start and iteration % config.eval_interval == 0):
                    check_finite_before_saving(model, history["evals"][-1], iteration, directory)  # same on every rank
                    directory = save()
                if at_end:
                    break
                if on_any_rank(world, interrupted.is_set()):
                    directory = save()
                    if metrics is not None:  # the run so far, as a finished run draws it
                        plot_metrics(read_metrics(metrics.path), out_dir / PLOT_FILE)
                    launcher = f"mpiexec -n {world.world_size} " if not world.splits_batch else ""
                    raise TrainingInterrupted(f"interrupted at iteration {iteration}: checkpoint saved in {directory}; "
                                              f"continue it with: {launcher}tinygpt train --out-dir {out_dir} --resume")
                step_started = time.perf_counter()
                x, y = rank_batch(splits["train"], config, data_rng, world, micro_batches)
                learning_rate = optimizer.current_learning_rate
                try:
                    with instruments.watch(iteration):
                        loss_value, grad_norm = train_step(model, optimizer, x, y, config, world)
                except Diverged as error:
                    raise diverged(iteration, str(error), directory) from None
                elapsed = time.perf_counter() - step_started
                step_seconds += elapsed
                train_seconds += elapsed
                history["iterations"].append(iteration)
                history["losses"].append(loss_value)
                history["learning_rates"].append(learning_rate)
                if world.is_main:
                    divergence.check(iteration, loss_value)
                step_mfu = instruments.mfu(elapsed)
                if iteration % config.log_interval == 0:
                    record({"type": "train", "iter": iteration, "loss": loss_value, "lr": learning_rate,
                            "tokens_per_s": tokens_per_iteration / elapsed, "grad_norm": grad_norm, "mfu": step_mfu,
                            "elapsed": train_seconds})
                    stats = instruments.take_stats()
                    if stats is not None:
                        record(stats)
                progress.step(iteration, loss_value, learning_rate, tokens_per_iteration / elapsed, step_mfu)
                iteration += 1
        finally:
            progress.close()

    trained = config.max_iters - start
    final_eval = dict(next(record for record in history["evals"] if record["iteration"] == iteration))
    final_eval["whole_val_loss"], covered = whole_split_loss(model, splits["val"], config, world=world)
    final_eval["whole_val_bpb"] = final_eval["whole_val_loss"] / math.log(2) / byte_ratios["val"]
    log(f"final val loss over {covered:,} of the {len(splits['val']):,} validation tokens (all of its "
        f"{config.model.max_seq_length}-token windows, no sampling): {final_eval['whole_val_loss']:.4f} "
        f"({final_eval['whole_val_bpb']:.3f} bits/byte)")
    result = TrainResult(model=model, tokenizer=tokenizer, config=config, history=history, final_eval=final_eval,
                         wall_seconds=0.0, tokens_per_second=trained * tokens_per_iteration / step_seconds if trained else 0.0,
                         checkpoint_dir=directory,
                         plot=plot_metrics(read_metrics(metrics.path), out_dir / PLOT_FILE,
                                           (iteration, final_eval["whole_val_loss"])) if metrics is not None else None)
    if metrics is not None:
        instruments.close(read_metrics(metrics.path))
    if config.sample_tokens and world.is_main:
        result.sample = sample_text(model, tokenizer, "\n", config.sample_tokens, temperature=0.8, top_k=200,
                                    seed=config.seed, device=config.device)
    result.wall_seconds = time.perf_counter() - started
    log(f"done: {trained} iterations, {step_seconds:.1f} s of training steps at {result.tokens_per_second:,.0f} tokens/s, "
        f"{result.wall_seconds:.1f} s in all (start-up, evaluations, checkpoints, plot, sample); checkpoint in "
        f"{directory}, metrics in {out_dir / METRICS_FILE}" + (f", loss curve {result.plot}" if result.plot else ""))
    if verbose and result.sample:
        print(f"---- sample ----\n{printable(result.sample)}\n----------------", flush=True)
    return result


def sample_text(model: GPT, tokenizer: BPETokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                top_k: int | None = 200, seed: int = 1337, device: str = "cpu", top_p: float | None = None) -> str:
    """The prompt followed by max_new_tokens tokens drawn from the model, as text (stream_text, joined)."""
    try:
        return "".join(stream_text(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, device))
    except ValueError as error:
        raise ConfigError(str(error)) from None


__all__ = ["TrainConfig", "TrainResult", "TrainingInterrupted", "PRESETS", "ConfigError", "Checkpoint", "train", "whole_split_loss", "split_windows",
           "resolve_config", "load_checkpoint", "save_checkpoint", "find_checkpoint", "sample_text", "build_model",
           "build_optimizer", "train_step", "evaluate", "estimate_loss", "evaluate_checkpoint"]
