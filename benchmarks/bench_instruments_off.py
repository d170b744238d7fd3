"""The instruments cost nothing unused: a training step of the default preset's GPT (--what step), the step
as `tinygpt bench` times it in `tinygpt train`'s layout (--what bench: ranks under MPI, one per core), or the
application of a one-element Add where apply_op's own Python is all the time (--what op), with this tree's
TinyGPT against another tree's (one without the instruments), fresh processes alternated round by round.

    python benchmarks/bench_instruments_off.py --baseline /tmp/base/src [--what step|bench|op] [--rounds 7] [--steps 20]
    python benchmarks/bench_instruments_off.py --quick      # a smoke run: this tree against itself

Prints each round's median time on both sides and the ratio (this tree / baseline), then the median ratio
and its spread over the rounds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tinygpt.bench import start_load

SETUPS = {  # each defines step() and the number of applications it times (per)
    "step": """
import numpy as np
import tinygpt
from tinygpt import Tensor
from tinygpt.config import default_model
from tinygpt.losses import CrossEntropyLoss
from tinygpt.nn import GPT
from tinygpt.optimizers import AdamW
tinygpt.manual_seed(0)
model = GPT(default_model())
optimizer = AdamW(model, 1e-3)
ids = np.random.default_rng(0).integers(0, 256, (12, 65))
per = 1
def step():
    optimizer.zero_grad()
    CrossEntropyLoss()(model(Tensor(ids[:, :-1])), Tensor(ids[:, 1:]), reduction="mean").backward()
    optimizer.update()
""",
    "bench": """
import statistics
from tinygpt.bench import run_tinygpt
from tinygpt.distributed import default_ranks, usable_cores
result = run_tinygpt("shakespeare-char-cpu", {steps}, {warmup}, default_ranks(len(usable_cores()), 12))
print(statistics.median(result["times"]))
""",
    "op": """
from tinygpt import Tensor
x, y = Tensor([1.0], requires_grad=True), Tensor([2.0])
per = 10000
def step():
    for _ in range(per):
        x + y
""",
}
TIMING = """
import statistics, time
times = []
for index in range({warmup} + {steps}):
    started = time.perf_counter()
    step()
    if index >= {warmup}:
        times.append(time.perf_counter() - started)
print(statistics.median(times) / per)
"""


def step_seconds(source: Path, what: str, steps: int, warmup: int) -> float:
    """The median time of `steps` steps (after `warmup`) in a fresh process importing tinygpt from source."""
    timing = "" if what == "bench" else TIMING  # bench's setup times itself, in the processes it starts
    code = (SETUPS[what] + timing).format(steps=steps, warmup=warmup)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")]))
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=environment)
    return float(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, help="the src directory of the tree to compare with")
    parser.add_argument("--what", choices=tuple(SETUPS), default="step")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--load", action="store_true", help="keep about 30%% of one core busy in the background")
    parser.add_argument("--quick", action="store_true", help="smoke run: this tree against itself, 1 round of 2 steps")
    args = parser.parse_args()
    ours_source = Path(__file__).resolve().parent.parent / "src"
    if args.quick:
        args.baseline, args.rounds, args.steps, args.warmup = args.baseline or ours_source, 1, 2, 1
    elif args.baseline is None:
        parser.error("--baseline is required (the src directory of a tree without the instruments)")
    load = start_load() if args.load else None
    try:
        ratios = compare(args.baseline, ours_source, args)
    finally:
        if load is not None:
            load.kill()
    print(f"ratio (instruments unused / baseline): median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}-{max(ratios):.3f} over {args.rounds} rounds{' under load' if args.load else ''}")
    given = ("--quick" if args.quick else f"--baseline {args.baseline} --what {args.what} --rounds {args.rounds} "
             f"--steps {args.steps}{' --load' if args.load else ''}")
    print(f"command: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_instruments_off.py {given}")


def compare(baseline: Path, ours_source: Path, args: argparse.Namespace) -> list[float]:
    """Each round's ratio (this tree / baseline), the two sides' order alternating."""
    ratios = []
    for round_index in range(args.rounds):
        sides = [("baseline", baseline), ("instruments", ours_source)]
        if round_index % 2:
            sides.reverse()
        seconds = {name: step_seconds(source, args.what, args.steps, args.warmup) for name, source in sides}
        ratios.append(seconds["instruments"] / seconds["baseline"])
        print(f"round {round_index}: baseline {seconds['baseline'] * 1e6:.2f} us, with the instruments unused "
              f"{seconds['instruments'] * 1e6:.2f} us, ratio {ratios[-1]:.3f}", flush=True)
    return ratios


if __name__ == "__main__":
    main()
