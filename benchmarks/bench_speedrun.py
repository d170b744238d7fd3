"""Whole commands, wall clock, as a user waits for them: nanoGPT's own train.py with its README's CPU recipe
against `tinygpt train` (the same recipe: model, batch and 2,000 iterations) and `tinygpt train --preset
shakespeare-speedrun-cpu`, each alone, rounds alternating. Every command is timed from start to exit:
start-up, data, training, evaluations, checkpoints, the plot and the sample.

nanoGPT is not ours to ship: give a checkout of github.com/karpathy/nanoGPT with --nanogpt DIR; its
data/shakespeare_char is prepared from TinyGPT's embedded corpus (no network) before the first round.

    python benchmarks/bench_speedrun.py --nanogpt ~/nanoGPT                 # 5 rounds, about 20 minutes on 2 cores
    python benchmarks/bench_speedrun.py --nanogpt ~/nanoGPT --stretch       # also: the preset in nanoGPT's time
    python benchmarks/bench_speedrun.py --nanogpt ~/nanoGPT --quick         # smoke run: a few iterations
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tinygpt.bench import blas_kernel, busy_cores, load_report, spread, start_load
from tinygpt.config import PRESETS
from tinygpt.dataset import default_corpus_path

NANOGPT_RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                  "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                  "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]  # its README, word for word
SPEEDRUN = "shakespeare-speedrun-cpu"
TARGET = 1.88  # nanoGPT's README: "gets us a loss of only 1.88"
SEEDS = (1337, 1, 2)
QUICK_NANOGPT = ["--max_iters=2", "--lr_decay_iters=2", "--eval_iters=2", "--eval_interval=2"]
QUICK_TINYGPT = ["--max-iters", "2", "--eval-interval", "2", "--eval-iters", "2", "--sample-tokens", "20"]


def prepare_nanogpt(checkout: Path) -> None:
    """nanoGPT's character-level Tiny Shakespeare, made by its own prepare.py from our copy of the corpus."""
    data = checkout / "data" / "shakespeare_char"
    if not (data / "train.bin").exists():
        shutil.copyfile(default_corpus_path(), data / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)


def timed(command: list[str], cwd: Path | None = None) -> tuple[float, str]:
    """Wall seconds of a whole command, and its output (stdout and stderr)."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_speedrun: {shlex.join(command)} failed: {(done.stderr or done.stdout)[-500:]}")
    return seconds, done.stdout + done.stderr


def run_nanogpt(checkout: Path, out_dir: Path, quick: bool) -> tuple[float, float]:
    """(wall seconds, its last logged val loss: an estimate over eval_iters batches, as its log prints it)."""
    seconds, output = timed([sys.executable, "train.py", *NANOGPT_RECIPE, *(QUICK_NANOGPT if quick else []),
                             f"--out_dir={out_dir}"], cwd=checkout)
    return seconds, float(re.findall(r"val loss (\d+\.\d+)", output)[-1])


def run_tinygpt(arguments: list[str], out_dir: Path, quick: bool) -> tuple[float, float]:
    """(wall seconds, the final whole-split val loss it printed)."""
    seconds, output = timed([sys.executable, "-m", "tinygpt", "train", *arguments, *(QUICK_TINYGPT if quick else []),
                             "--out-dir", str(out_dir), "--overwrite"])
    return seconds, float(re.search(r"final val loss over .*?: (\d+\.\d+)", output).group(1))


def stretched(nanogpt_seconds: float, preset_seconds: float, scratch: Path, quick: bool) -> str:
    """The preset with as many more iterations as nanoGPT's time allows (overheads scale too: a lower bound)."""
    preset = PRESETS[SPEEDRUN]["max_iters"]
    iterations = max(preset, int(preset * nanogpt_seconds / preset_seconds))
    seconds, loss = run_tinygpt(["--preset", SPEEDRUN, "--max-iters", str(iterations)], scratch / "stretch", quick)
    return (f"the preset stretched to {iterations} iterations: whole-split val loss {loss:.4f} in {seconds:.1f} s "
            f"({seconds / nanogpt_seconds:.2f}x nanoGPT's median time)")


def summary(name: str, times: list[float], nanogpt: list[float]) -> str:
    ratios = [ours / theirs for ours, theirs in zip(times, nanogpt)]
    return (f"  {name:<40} median {np.median(times):7.1f} s, {np.median(ratios):.2f}x nanoGPT's time "
            f"({1 / np.median(ratios):.2f}x faster; rounds {min(ratios):.2f}-{max(ratios):.2f}x, spread {spread(ratios):.0%})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, default=os.environ.get("NANOGPT_DIR"),
                        help="a checkout of karpathy/nanoGPT (default: $NANOGPT_DIR)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three commands (default: 5)")
    parser.add_argument("--stretch", action="store_true", help="also the preset with nanoGPT's time")
    parser.add_argument("--load", action="store_true", help="keep about 30%% of one core busy in the background")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 iterations each, 1 round")
    args = parser.parse_args(argv)
    if args.nanogpt is None or not (args.nanogpt / "train.py").is_file():
        parser.error("--nanogpt DIR must be a checkout of github.com/karpathy/nanoGPT (with its train.py)")
    rounds = 1 if args.quick else args.rounds
    prepare_nanogpt(args.nanogpt)
    print(f"products: tinygpt on {blas_kernel('tinygpt')}, nanoGPT on {blas_kernel('torch')}")
    print(load_report("before", busy_cores()), flush=True)
    load = start_load() if args.load else None
    times: dict[str, list[float]] = {"nanoGPT": [], "default": [], "speedrun": []}
    reached = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for index in range(rounds):
                seed = SEEDS[index % len(SEEDS)]
                seconds, nanogpt_loss = run_nanogpt(args.nanogpt, Path(scratch) / "nanogpt", args.quick)
                times["nanoGPT"].append(seconds)
                seconds, default_loss = run_tinygpt([], Path(scratch) / "default", args.quick)
                times["default"].append(seconds)
                seconds, speedrun_loss = run_tinygpt(["--preset", SPEEDRUN, "--seed", str(seed)],
                                                     Path(scratch) / "speedrun", args.quick)
                times["speedrun"].append(seconds)
                reached.append((seed, speedrun_loss <= TARGET))
                print(f"round {index + 1}/{rounds}: nanoGPT {times['nanoGPT'][-1]:.1f} s (its val estimate "
                      f"{nanogpt_loss:.4f}), tinygpt train {times['default'][-1]:.1f} s (whole-split val "
                      f"{default_loss:.4f}), speedrun seed {seed} {seconds:.1f} s (whole-split val {speedrun_loss:.4f})",
                      flush=True)
            extra = stretched(float(np.median(times["nanoGPT"])), float(np.median(times["speedrun"])), Path(scratch),
                              args.quick) if args.stretch else None
    finally:
        if load is not None:
            load.kill()
            load.wait()
    print(f"whole commands, wall clock, median of {rounds} rounds (rounds alternating; background load: "
          f"{'a process busy 30% of one core' if args.load else 'none'}):")
    print(f"  {'nanoGPT train.py, README CPU recipe':<40} median {np.median(times['nanoGPT']):7.1f} s "
          f"(spread {spread(times['nanoGPT']):.0%})")
    print(summary("tinygpt train (same recipe)", times["default"], times["nanoGPT"]))
    print(summary(f"tinygpt train --preset {SPEEDRUN}", times["speedrun"], times["nanoGPT"]))
    print(f"  speedrun whole-split val loss <= {TARGET}: "
          + ", ".join(f"seed {seed} {'yes' if ok else 'no'}" for seed, ok in reached))
    if extra:
        print(f"  {extra}")
    print(load_report("after", busy_cores()))
    print("command: python benchmarks/bench_speedrun.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
