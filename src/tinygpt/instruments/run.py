"""What the training loop asks of the instruments: each step's MFU, the layer statistics of a step (--log-stats)
and the TensorBoard events (--tensorboard). Only the process that writes the metrics measures and writes."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tinygpt.config import TrainConfig, as_config_error
from tinygpt.instruments.flops import gpt_step_flops, measure_peak_flops, mfu
from tinygpt.instruments.stats import LayerStats, plot_stats
from tinygpt.instruments.tensorboard import TENSORBOARD_DIR, TensorBoardLog
from tinygpt.metrics import STATS_PLOT
from tinygpt.nn import GPT



class RunInstruments:
    """The instruments of one run of `train`; `out_dir` None on the ranks that do not write."""

    def __init__(self, model: GPT, config: TrainConfig, out_dir: Path | None, world_size: int = 1) -> None:
        self.config, self.out_dir, self.world_size = config, out_dir, world_size
        shape = config.model
        positions = model.position_embedding.embeddings.numel if "position_embedding" in model else 0
        tokens = config.batch_size * config.gradient_accumulation_steps * shape.max_seq_length * world_size
        self.step_flops = gpt_step_flops(model.num_parameters() - positions, shape.num_layers, shape.embedding_dim,
                                         shape.max_seq_length, tokens)
        self.stats = LayerStats(model) if config.log_stats and out_dir is not None else None
        self.board = None
        if config.tensorboard and out_dir is not None:
            with as_config_error(RuntimeError):
                self.board = TensorBoardLog(out_dir / TENSORBOARD_DIR)
        self.stats_record: dict[str, Any] | None = None

    def mfu(self, seconds: float) -> float:
        """The MFU of a step that took `seconds` (nanoGPT's estimate) against the peak of all the ranks: this
        engine's, measured here once, times the ranks."""
        if self.out_dir is None:
            return 0.0
        return mfu(self.step_flops, seconds, measure_peak_flops(self.config.device) * self.world_size)

    def watch(self, iteration: int):
        """Around a training step: with --log-stats, at --log-interval, gathers that step's layer statistics."""
        if self.stats is None or iteration % self.config.log_interval:
            return nullcontext()
        self.stats_record = {"type": "stats", "iter": iteration}
        return self.stats.watch()

    def take_stats(self) -> dict[str, Any] | None:
        """The stats record of the step just watched (once), or None."""
        if self.stats_record is None:
            return None
        record, self.stats_record = self.stats_record | self.stats.record(), None
        return record

    def write(self, record: dict[str, Any]) -> None:
        if self.board is not None:
            self.board.write(record)

    def close(self, records: list[dict[str, Any]]) -> Path | None:
        """Close the events file; with --log-stats, plot the run's statistics to out_dir/stats.png."""
        if self.board is not None:
            self.board.close()
        return plot_stats(records, self.out_dir / STATS_PLOT) if self.stats is not None else None


__all__ = ["RunInstruments", "STATS_PLOT"]
