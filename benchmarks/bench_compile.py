"""How long the numba kernels take to compile (a cold cache) and to load (a warm one), at start-up.

Each start is a fresh process that imports tinygpt and runs one training step of a tiny GPT:
- cold: with NUMBA_CACHE_DIR an empty directory, so every kernel is compiled (goal: at most 20 s);
- warm: again, with the cache the cold start wrote (goal: at most 1 s more than the array start);
- array: with the array kernels, which compile nothing: the start-up every other cost is in.
Each is run --repeats times (a cold start in a new empty directory each time); medians are printed.

    python benchmarks/bench_compile.py
    python benchmarks/bench_compile.py --quick        # one repetition
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

START = """
import json, time
started = time.perf_counter()
import numpy as np
import tinygpt
from tinygpt import Tensor, kernels
from tinygpt.losses import CrossEntropyLoss
from tinygpt.nn import GPT
from tinygpt.optimizers import AdamW

def step():
    model = GPT(8, 65, 1, 2, 16)
    optimizer = AdamW(model, 1e-3)
    ids = Tensor(np.random.default_rng(0).integers(0, 65, (2, 8)))
    CrossEntropyLoss()(model(ids), ids, reduction="mean").backward()
    optimizer.update()

if {array}:
    with kernels.array_kernels_on_cpu():
        step()
else:
    step()
print(json.dumps(time.perf_counter() - started))
"""


def start_seconds(cache_directory: str, array: bool) -> float:
    environment = dict(os.environ, NUMBA_CACHE_DIR=cache_directory)
    result = subprocess.run([sys.executable, "-c", START.format(array=array)], env=environment, capture_output=True,
                            text=True, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    times: dict[str, list[float]] = {"cold": [], "warm": [], "array": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache_directory:
            times["cold"].append(start_seconds(cache_directory, array=False))
            times["warm"].append(start_seconds(cache_directory, array=False))
            times["array"].append(start_seconds(cache_directory, array=True))
    print(f"$ python benchmarks/bench_compile.py {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name} start: median {medians[name]:.2f} s (min {min(values):.2f}, max {max(values):.2f}, {len(values)} runs)")
    print(f"cold compile: {medians['cold'] - medians['array']:.1f} s; a warm start adds {medians['warm'] - medians['array']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
