"""What a run prints while it trains: a progress bar on a terminal, plain lines when stderr is redirected, and the
few words that describe its model and how its work is split."""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

from tinygpt.config import TrainConfig
from tinygpt.corpus import sequences_per_rank
from tinygpt.distributed import TERMINAL_VARIABLE, World
from tinygpt.nn import GPT
from tinygpt.threads import get_num_threads


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
