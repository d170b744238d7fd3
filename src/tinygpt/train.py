"""The training loop: a GPT on a text file, with periodic evaluation, atomic checkpoints and exact resume.

    from tinygpt.train import TrainConfig, train
    result = train(TrainConfig(max_iters=200, out_dir="out"))
    print(result.final_eval["val_loss"], result.sample)

Settings live in tinygpt.config (TrainConfig, presets), checkpoints in tinygpt.checkpoint; this module is the
loop: data, evaluation, the training step, and the run from start (or a checkpoint) to the end.
"""
from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tinygpt import backend, kernels
from tinygpt.checkpoint import (CHECKPOINT_DIR, HISTORY_SERIES, TOKENIZER_PREFIX, Checkpoint, check_architecture,
                                check_same_data, data_record, find_checkpoint, load_checkpoint, out_dir_lock,
                                random_state, read_checkpoint_config, removed_if_left_empty, restore_training_state,
                                save_checkpoint, training_state)
from tinygpt.checkpoint_checks import check_finite_weights
from tinygpt.config import PRESETS, ConfigError, TrainConfig, as_config_error, check_device, named
from tinygpt.corpus import (bytes_per_token, corpus_path, data_files, load_tokens, rank_batch, sequences_per_rank,
                            train_tokenizer, warn_of_other_data)
from tinygpt.distributed import World, get_world
from tinygpt.divergence import DivergenceWatch
from tinygpt.evaluation import estimate_loss, evaluate, evaluate_checkpoint, split_windows, whole_split_loss
from tinygpt.interrupts import TrainingInterrupted, deferred_interrupt, on_any_rank
from tinygpt.instruments.run import RunInstruments
from tinygpt.losses import CrossEntropyLoss
from tinygpt.memory import keep_freed_memory
from tinygpt.metrics import METRICS_FILE, PLOT_FILE, MetricsLog, plot_metrics, read_metrics
from tinygpt.nn import GPT, LayerNorm
from tinygpt.optimizers import (AdamW, Muon, Optimizer, OptimizerGroups, ParameterGroup, clip_grad_norm, cosine_schedule,
                                wsd_schedule)
from tinygpt.pretrained import load_pretrained
from tinygpt.progress import ProgressReport, describe_layout, describe_model
from tinygpt.sampling import printable, stream_text
from tinygpt.tensor import Tensor
from tinygpt.threads import engine_threads
from tinygpt.tokenizer import BPETokenizer

DATA_STREAM = 1  # the batch sampler's random stream, apart from init's (and evaluation's, EVAL_STREAM)


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


def build_optimizer(model: GPT, config: TrainConfig, world: World | None = None) -> Optimizer | OptimizerGroups:
    """AdamW decaying only matrices and embeddings (nanoGPT's groups); with optimizer "muon", Muon for the hidden
    matrices and that AdamW for the rest. The schedule (nanoGPT's warmup + cosine, or warmup-stable-decay) runs
    from learning_rate to min_lr, and Muon's from muon_learning_rate down in the same proportion. The ranks of
    `world` share AdamW's moments out among them (ZeRO stage 1, see FlatParameters)."""
    adamw_schedule = build_schedule(config, config.learning_rate, config.min_lr)
    if config.optimizer != "muon":
        return AdamW(model, adamw_schedule, (config.beta1, config.beta2), weight_decay=config.weight_decay,
                     decay_matrices_only=True, world=world)
    floor = config.min_lr / config.learning_rate if config.learning_rate else 0.0
    muon = Muon(ParameterGroup(model, is_hidden_matrix), build_schedule(config, config.muon_learning_rate,
                config.muon_learning_rate * floor), weight_decay=config.weight_decay, momentum=config.muon_momentum,
                ns_steps=config.muon_ns_steps)
    adamw = AdamW(ParameterGroup(model, lambda name, tensor: not is_hidden_matrix(name, tensor)), adamw_schedule,
                  (config.beta1, config.beta2), weight_decay=config.weight_decay, decay_matrices_only=True, world=world)
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


# ---- the loop ------------------------------------------------------------------------------------
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
        with removed_if_left_empty(Path(config.out_dir)):  # a run that fails before writing anything leaves nothing
            check_out_dir_writable(Path(config.out_dir))
            with out_dir_lock(Path(config.out_dir)):
                return _train(config, verbose)


def _train(config: TrainConfig, verbose: bool) -> TrainResult:
    started = time.perf_counter()
    run = prepare_run(config, verbose)
    run_loop(run)
    return finish_run(run, started)


@dataclass
class Run:
    """A run in progress: what prepare_run set up, and where the loop is (its iteration, history and clocks)."""

    config: TrainConfig
    world: World
    verbose: bool  # print progress, evaluations and the sample (rank 0 only)
    model: GPT
    optimizer: Optimizer | OptimizerGroups
    tokenizer: BPETokenizer
    splits: dict[str, np.ndarray]
    byte_ratios: dict[str, float]
    data: dict[str, dict[str, str]]
    data_rng: np.random.Generator
    history: dict[str, list]
    start: int
    train_seconds: float
    directory: Path  # the checkpoint the run continues or last wrote
    metrics: MetricsLog | None  # rank 0's only
    instruments: RunInstruments
    progress: ProgressReport
    step_seconds: float = 0.0
    divergence: DivergenceWatch = field(init=False)
    iteration: int = field(init=False)
    evaluated: set[int] = field(init=False)

    def __post_init__(self) -> None:
        self.iteration = self.start
        self.divergence = DivergenceWatch(self.config.model.vocab_size)
        self.evaluated = {record["iteration"] for record in self.history["evals"]}
        self.micro_batches = sequences_per_rank(self.config, self.world) * self.config.gradient_accumulation_steps
        self.tokens_per_iteration = self.micro_batches * self.config.model.max_seq_length * self.world.world_size

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    def log(self, message: str) -> None:
        say(self.verbose)(message)

    def record(self, entry: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(entry)
            self.instruments.write(entry)

    def evaluate(self) -> None:
        """Both splits' loss estimates at this iteration: kept in the history, recorded and printed."""
        evaluation = evaluate(self.model, self.splits, self.byte_ratios, self.config, self.iteration, self.world)
        self.history["evals"].append(evaluation)
        self.evaluated.add(self.iteration)
        self.record({"type": "eval", "iter": self.iteration, **{key: value for key, value in evaluation.items()
                                                                if key != "iteration"}, "elapsed": self.train_seconds})
        self.log(f"iter {self.iteration}: train loss {evaluation['train_loss']:.4f} ({evaluation['train_bpb']:.3f} "
                 f"bits/byte), val loss {evaluation['val_loss']:.4f} ({evaluation['val_bpb']:.3f} bits/byte)")

    def save(self) -> None:
        """A checkpoint of this iteration (rank 0 writes it; every rank gives its dropout generator's state and its
        share of AdamW's moments)."""
        dropout_rngs = self.world.gather(random_state(self.config.device))
        optimizer_state = self.optimizer.state_arrays()
        if not self.world.is_main:
            return
        state = training_state(self.iteration, self.data_rng, dropout_rngs, self.history, self.train_seconds, self.data)
        self.directory = save_checkpoint(self.out_dir, self.model, self.optimizer, self.tokenizer, self.config, state,
                                         optimizer_state)
        self.metrics.publish()  # a run that replaces another takes the out dir's metrics.jsonl only now

    def step(self) -> None:
        """One training step on a fresh batch, recorded (metrics every log_interval, the progress every step)."""
        config, started = self.config, time.perf_counter()
        x, y = rank_batch(self.splits["train"], config, self.data_rng, self.world, self.micro_batches)
        learning_rate = self.optimizer.current_learning_rate
        try:
            with self.instruments.watch(self.iteration):
                loss, grad_norm = train_step(self.model, self.optimizer, x, y, config, self.world)
        except Diverged as error:
            raise diverged(self.iteration, str(error), self.directory) from None
        elapsed = time.perf_counter() - started
        self.step_seconds += elapsed
        self.train_seconds += elapsed
        for series, value in zip(HISTORY_SERIES, (self.iteration, loss, learning_rate)):
            self.history[series].append(value)
        if self.world.is_main:
            self.divergence.check(self.iteration, loss)
        mfu, rate = self.instruments.mfu(elapsed), self.tokens_per_iteration / elapsed
        if self.iteration % config.log_interval == 0:
            self.record({"type": "train", "iter": self.iteration, "loss": loss, "lr": learning_rate,
                         "tokens_per_s": rate, "grad_norm": grad_norm, "mfu": mfu, "elapsed": self.train_seconds})
            stats = self.instruments.take_stats()
            if stats is not None:
                self.record(stats)
        self.progress.step(self.iteration, loss, learning_rate, rate, mfu)
        self.iteration += 1

    def draw(self, final: tuple[int, float] | None = None) -> Path | None:
        """Rank 0's pictures of its metrics (the loss plot, `final` marked; the instruments'): the plot's path."""
        if self.metrics is None:
            return None
        records = read_metrics(self.metrics.path)
        self.instruments.close(records)
        return plot_metrics(records, self.out_dir / PLOT_FILE, final)

    def interrupted(self) -> TrainingInterrupted:
        launcher = f"mpiexec -n {self.world.world_size} " if not self.world.splits_batch else ""
        return TrainingInterrupted(f"interrupted at iteration {self.iteration}: checkpoint saved in {self.directory}; "
                                   f"continue it with: {launcher}tinygpt train --out-dir {self.out_dir} --resume")


def prepare_run(config: TrainConfig, verbose: bool) -> Run:
    """Everything a run needs before its first step: where it starts (fresh, a checkpoint, or pretrained
    weights), its tokenizer and token ids, the model, the optimizer, the history so far, the metrics log."""
    check_device(config.device)
    world = get_world()
    verbose = verbose and world.is_main
    keep_freed_memory()  # every step frees and reallocates the same arrays: reuse them, no page faults (memory.py)
    log = say(verbose)
    checkpoint, pretrained, config, replacing = starting_point(config, log)
    path = corpus_path(config)
    data = data_record(data_files(path, config))
    tokenizer = run_tokenizer(config, path, data, checkpoint, pretrained, log)
    splits = dict(zip(("train", "val"), load_tokens(path, tokenizer, config)))
    model = run_model(config, checkpoint, pretrained, world)
    kernels.for_device(config.device)  # loaded (or compiled) now, as start-up, not inside the first step's time
    optimizer = build_optimizer(model, config, world)
    data_rng = np.random.default_rng([config.seed, DATA_STREAM])
    history: dict[str, list] = {"iterations": [], "losses": [], "learning_rates": [], "evals": []}
    start, train_seconds = 0, 0.0
    if checkpoint is not None:
        start, history, train_seconds = resumed_state(checkpoint, optimizer, data_rng, config, world)
    out_dir = Path(config.out_dir)
    log(f"{model.num_parameters():,} parameters, {len(splits['train']):,} train and {len(splits['val']):,} val tokens, "
        f"iterations {start} -> {config.max_iters} on {config.device}: {describe_layout(config, world)}")
    return Run(config, world, verbose, model, optimizer, tokenizer, splits,
               {name: bytes_per_token(tokens, tokenizer) for name, tokens in splits.items()}, data, data_rng, history,
               start, train_seconds, checkpoint.directory if checkpoint is not None else out_dir / CHECKPOINT_DIR,
               open_metrics(out_dir, start if checkpoint is not None else None, replacing) if world.is_main else None,
               RunInstruments(model, config, out_dir if world.is_main else None, world.world_size),
               ProgressReport(config, start, verbose))


def say(verbose: bool) -> Callable[[str], None]:
    """How a run prints a line: above the progress bar when verbose, else nowhere."""
    return tqdm.write if verbose else (lambda message: None)


def starting_point(config: TrainConfig, log: Callable[[str], None]):
    """(the checkpoint the run continues (--resume) or None, the pretrained model it starts from (--init-from) or
    None, the config that follows from them, whether the run replaces another's checkpoint (--overwrite))."""
    out_dir = Path(config.out_dir)
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
    return checkpoint, pretrained, config, replacing


def run_tokenizer(config: TrainConfig, path: Path, data: dict, checkpoint: Checkpoint | None, pretrained,
                  log: Callable[[str], None]) -> BPETokenizer:
    """The checkpoint's tokenizer (for the same data), the pretrained model's, or one trained on the corpus now
    (saved in the out dir when it has merges)."""
    if checkpoint is not None:
        check_same_data(checkpoint, data)
        return checkpoint.tokenizer
    if pretrained is not None:
        warn_of_other_data(config.init_from, pretrained.data, data)
        return pretrained.tokenizer or train_tokenizer(path, 256)  # a source without a tokenizer: bytes
    tokenizer = train_tokenizer(path, config.model.vocab_size)
    if config.model.vocab_size > 256 and get_world().is_main:
        out_dir = Path(config.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out_dir / TOKENIZER_PREFIX)
        log(f"trained a BPE tokenizer of {len(tokenizer.vocab)} tokens: {out_dir / TOKENIZER_PREFIX}.model")
    return tokenizer


def run_model(config: TrainConfig, checkpoint: Checkpoint | None, pretrained, world: World) -> GPT:
    """The checkpoint's model, the pretrained one with the run's dropout, or a fresh one; rank 0's weights on every
    rank, each rank its own dropout stream."""
    backend.manual_seed(config.seed + world.rank)
    if checkpoint is not None:
        model = checkpoint.load_model(config.device)
    elif pretrained is not None:
        model = with_dropout(pretrained.model, config.model.dropout).to(config.device)
    else:
        model = build_model(config).to(config.device)
    world.broadcast_parameters(model)
    model.train()
    return model


def resumed_state(checkpoint: Checkpoint, optimizer, data_rng: np.random.Generator, config: TrainConfig,
                  world: World) -> tuple[int, dict[str, list], float]:
    """The optimizer and generators put back as the checkpoint left them; its iteration, history and training
    seconds."""
    start, history = restore_training_state(checkpoint, optimizer, data_rng, config.device, world.rank, world.world_size)
    if start > config.max_iters:
        raise ConfigError(f"the checkpoint in {config.out_dir} is at iteration {start}, beyond {named('max_iters')} "
                          f"{config.max_iters}: give a larger {named('max_iters')} to continue it")
    return start, history, float(checkpoint.state.get("elapsed", 0.0))


def run_loop(run: Run) -> None:
    """Evaluate every eval_interval iterations (0: at the end only), save a checkpoint after each evaluation, step,
    until max_iters; the first Ctrl-C or SIGTERM saves and raises TrainingInterrupted (on every rank together)."""
    config = run.config
    with deferred_interrupt() as interrupted:
        try:
            while True:
                at_end = run.iteration >= config.max_iters
                due = at_end or (config.eval_interval > 0 and run.iteration % config.eval_interval == 0)
                if due and run.iteration not in run.evaluated:
                    run.evaluate()
                if due and (at_end or run.iteration > run.start):
                    check_finite_before_saving(run.model, run.history["evals"][-1], run.iteration, run.directory)
                    run.save()
                if at_end:
                    return
                if on_any_rank(run.world, interrupted.is_set()):
                    run.save()
                    run.draw()  # the run so far, as a finished run draws it
                    raise run.interrupted()
                run.step()
        finally:
            run.progress.close()


def finish_run(run: Run, started: float) -> TrainResult:
    """The exact loss over the whole validation split, the plot, the sample and the closing line."""
    config, out_dir = run.config, run.out_dir
    trained = config.max_iters - run.start
    final_eval = dict(next(record for record in run.history["evals"] if record["iteration"] == run.iteration))
    final_eval["whole_val_loss"], covered = whole_split_loss(run.model, run.splits["val"], config, world=run.world)
    final_eval["whole_val_bpb"] = final_eval["whole_val_loss"] / math.log(2) / run.byte_ratios["val"]
    run.log(f"final val loss over {covered:,} of the {len(run.splits['val']):,} validation tokens (all of its "
            f"{config.model.max_seq_length}-token windows, no sampling): {final_eval['whole_val_loss']:.4f} "
            f"({final_eval['whole_val_bpb']:.3f} bits/byte)")
    rate = trained * run.tokens_per_iteration / run.step_seconds if trained else 0.0
    result = TrainResult(model=run.model, tokenizer=run.tokenizer, config=config, history=run.history,
                         final_eval=final_eval, wall_seconds=0.0, tokens_per_second=rate, checkpoint_dir=run.directory)
    result.plot, result.sample = plot_and_sample(run, (run.iteration, final_eval["whole_val_loss"]))
    result.wall_seconds = time.perf_counter() - started
    run.log(f"done: {trained} iterations, {run.step_seconds:.1f} s of training steps at {rate:,.0f} tokens/s, "
            f"{result.wall_seconds:.1f} s in all (start-up, evaluations, checkpoints, plot, sample); checkpoint in "
            f"{run.directory}, metrics in {out_dir / METRICS_FILE}" + (f", loss curve {result.plot}" if result.plot else ""))
    if run.verbose and result.sample:
        print(f"---- sample ----\n{printable(result.sample)}\n----------------", flush=True)
    return result


def plot_and_sample(run: Run, final: tuple[int, float]) -> tuple[Path | None, str]:
    """Rank 0's loss plot (`final` marked) and the closing sample, which with several ranks the last rank draws in
    the meantime; an error on the sampling rank reaches rank 0 through the gather, so no rank waits for it."""
    config, sampler = run.config, run.world.world_size - 1
    sample, failure = "", None
    if config.sample_tokens and run.world.rank == sampler:
        try:
            sample = sample_text(run.model, run.tokenizer, "\n", config.sample_tokens, temperature=0.8, top_k=200,
                                 seed=config.seed, device=config.device)
        except Exception as error:  # noqa: BLE001  (raised again below, once every rank has reached the gather)
            failure = error
    plot = run.draw(final)
    gathered = run.world.gather((sample, failure))  # every rank's on rank 0, None elsewhere
    sample, failure = gathered[sampler] if gathered else (sample, failure)
    if failure is not None:
        raise failure
    return plot, sample


def sample_text(model: GPT, tokenizer: BPETokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                top_k: int | None = 200, seed: int = 1337, device: str = "cpu", top_p: float | None = None) -> str:
    """The prompt followed by max_new_tokens tokens drawn from the model, as text (stream_text, joined)."""
    with as_config_error():
        return "".join(stream_text(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, device))


__all__ = ["TrainConfig", "TrainResult", "TrainingInterrupted", "PRESETS", "ConfigError", "Checkpoint", "train", "whole_split_loss", "split_windows",
           "resolve_config", "load_checkpoint", "save_checkpoint", "find_checkpoint", "sample_text", "build_model",
           "build_optimizer", "train_step", "evaluate", "estimate_loss", "evaluate_checkpoint"]
