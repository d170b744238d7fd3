"""The profile: the time and FLOPs of every op's forward and backward, grouped by op or by module, and MFU.

    with tinygpt.profile(model) as p:
        loss = loss_fn(model(x), y)
        loss.backward()
    print(p.table())                # by op
    print(p.table(by="module"))     # by module: blocks.2.attn, blocks.2.mlp, ...

What runs outside the ops (the graph's bookkeeping, Python, the optimizer unless timed as a `region`) is
the row "Python and the rest": the rows add up to the time inside the `with` block.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from weakref import WeakKeyDictionary

from tinygpt.instruments.flops import measure_peak_flops, mfu, operation_flops, synchronize
from tinygpt.instruments.scopes import ModuleScopes, OpObserver
from tinygpt.module import Module

OUTSIDE = "Python and the rest"


@dataclass
class Row:
    """One line of the table: what (an op's forward, a module's backward, a region), calls, seconds and FLOPs."""

    name: str
    calls: int
    seconds: float
    flops: int


class Profile(OpObserver):
    """Context manager timing every op applied (forward) and differentiated (backward) inside it."""

    def __init__(self, model: Module | None = None, peak_flops: float | None = None) -> None:
        self.scopes = ModuleScopes(model)
        self.peak = peak_flops
        self.device = "cpu"
        self.records: dict[tuple[str, str, str], list] = defaultdict(lambda: [0, 0.0, 0])  # (op, module, phase)
        self.regions: dict[str, list] = defaultdict(lambda: [0, 0.0])
        self.pending: WeakKeyDictionary = WeakKeyDictionary()  # op -> (module, backward FLOPs) until its backward
        self.seconds = self.op_seconds = 0.0

    # ---- recording -------------------------------------------------------------------------------
    def __enter__(self) -> "Profile":
        super().__enter__()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        self.seconds += time.perf_counter() - self.started
        super().__exit__()

    def forward(self, operation, buffers, kwargs):
        module = self.scopes.current
        forward_flops, backward_flops = operation_flops(operation, buffers)
        started = time.perf_counter()
        out = operation.forward(*buffers, **kwargs)
        synchronize(out.xp)
        self._record(type(operation).__name__, module, "forward", time.perf_counter() - started, forward_flops)
        self.device = out.device
        if any(operation.needs_input_grad):
            self.pending[operation] = (module, backward_flops)
        return out

    def backward(self, operation, grad):
        module, flops = self.pending.pop(operation, ("", 0))
        started = time.perf_counter()
        grads = operation.backward(grad)
        synchronize(grad.xp)
        self._record(type(operation).__name__, module, "backward", time.perf_counter() - started, flops)
        return grads

    def _record(self, op: str, module: str, phase: str, seconds: float, flops: int) -> None:
        record = self.records[op, module, phase]
        record[0] += 1
        record[1] += seconds
        record[2] += flops
        self.op_seconds += seconds

    @contextmanager
    def region(self, name: str) -> Iterator[None]:
        """Time a stretch of code that is not an op (the optimizer's update, the batch) as its own row;
        ops run inside it keep their own rows."""
        started, ops_before = time.perf_counter(), self.op_seconds
        try:
            yield
        finally:
            region = self.regions[name]
            region[0] += 1
            region[1] += time.perf_counter() - started - (self.op_seconds - ops_before)

    # ---- reading ---------------------------------------------------------------------------------
    @property
    def flops(self) -> int:
        return sum(flops for _, _, flops in self.records.values())

    def rows(self, by: str = "op", depth: int = 3) -> list[Row]:
        """The table's rows, longest first, then the regions and "Python and the rest": by "op" (Linear.forward)
        or by "module" (blocks.2.attn.backward, names cut to `depth` parts)."""
        if by not in ("op", "module"):
            raise ValueError(f"profile rows: by must be 'op' or 'module', got {by!r}")
        grouped: dict[str, list] = defaultdict(lambda: [0, 0.0, 0])
        for (op, module, phase), (calls, seconds, flops) in self.records.items():
            key = op if by == "op" else ".".join(module.split(".")[:depth]) or "(no module)"
            row = grouped[f"{key}.{phase}"]
            row[0] += calls
            row[1] += seconds
            row[2] += flops
        rows = sorted((Row(name, *values) for name, values in grouped.items()), key=lambda row: -row.seconds)
        rows += [Row(name, calls, seconds, 0) for name, (calls, seconds) in self.regions.items()]
        accounted = sum(row.seconds for row in rows)
        return rows + [Row(OUTSIDE, 1, self.seconds - accounted, 0)]

    def peak_flops(self) -> float:
        """The peak FLOP/s MFU is measured against: given, or a large float32 product measured on the spot."""
        if self.peak is None:
            self.peak = measure_peak_flops(self.device)
        return self.peak

    def mfu(self) -> float:
        return mfu(self.flops, self.seconds, self.peak_flops())

    def table(self, by: str = "op", depth: int = 3) -> str:
        """The profile as text: calls, milliseconds, share of the time, GFLOP and GFLOP/s per row, then the total
        with its MFU against the measured peak."""
        header = f"{'':<34} {'calls':>7} {'ms':>10} {'share':>7} {'GFLOP':>9} {'GFLOP/s':>9}"
        lines = [header, "-" * len(header)]
        for row in self.rows(by, depth):
            rate = f"{row.flops / row.seconds / 1e9:9.2f}" if row.flops and row.seconds > 0 else f"{'':>9}"
            gflop = f"{row.flops / 1e9:9.3f}" if row.flops else f"{'':>9}"
            share = row.seconds / self.seconds if self.seconds else 0.0
            lines.append(f"{row.name:<34} {row.calls:>7} {row.seconds * 1e3:>10.2f} {share:>7.1%} {gflop} {rate}".rstrip())
        lines.append("-" * len(header))
        lines.append(f"{'total':<34} {'':>7} {self.seconds * 1e3:>10.2f} {1:>7.1%} {self.flops / 1e9:9.3f} "
                     f"{self.flops / max(self.seconds, 1e-12) / 1e9:9.2f}")
        lines.append(f"MFU {self.mfu():.1%} of a peak of {self.peak_flops() / 1e9:.1f} GFLOP/s "
                     f"(a float32 product measured on {self.device})")
        return "\n".join(lines)


def profile(model: Module | None = None, peak_flops: float | None = None) -> Profile:
    """A Profile: `with tinygpt.profile(model) as p: ...` then `print(p.table())`. With `model`, ops are grouped
    under its modules' names; `peak_flops` (FLOP/s) skips measuring the peak."""
    return Profile(model, peak_flops)


__all__ = ["Profile", "Row", "profile", "OUTSIDE"]
