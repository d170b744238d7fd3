"""What sharing AdamW's moments among the ranks (ZeRO stage 1) costs a training step: two ranks train the same
model from the same weights on the same batches, once with AdamW(world=...) and once with each rank holding all
the moments, the two alternating round by round; rank 0 prints the median step of each and the per-round ratios.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_shared_moments.py --config large --steps 8 --rounds 6
    python benchmarks/bench_shared_moments.py --quick        # smoke run

It starts `mpiexec -n 2` itself (mpi4py and mpich come with TinyGPT).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

WARMUP = 3


def timed_rounds(config_name: str, steps: int, rounds: int) -> None:
    """On every rank: `rounds` rounds of each optimizer, alternating; rank 0 prints the table."""
    from tinygpt.bench import CONFIGS, timed_steps, tinygpt_stepper
    from tinygpt.distributed import get_world
    from tinygpt.memory import keep_freed_memory

    keep_freed_memory()  # as the trainer does
    config, world = CONFIGS[config_name], get_world()
    steppers = {name: tinygpt_stepper(config, world, share_moments=name == "shared")[1] for name in ("shared", "whole")}
    times: dict[str, list[float]] = {name: [] for name in steppers}
    losses: dict[str, list[float]] = {name: [] for name in steppers}
    for round_index in range(rounds):
        for name in (("shared", "whole") if round_index % 2 == 0 else ("whole", "shared")):
            seconds, round_losses = timed_steps(steppers[name], config, steps, WARMUP, world.rank, world.world_size)
            times[name].append(float(np.mean(seconds)) * 1e3)
            losses[name] += round_losses
    if world.is_main:
        ratios = [shared / whole for shared, whole in zip(times["shared"], times["whole"])]
        for name, values in times.items():
            print(f"  {name:6} moments  median {np.median(values):8.2f} ms/step  rounds "
                  + " ".join(f"{value:.2f}" for value in values))
        print(f"  shared / whole: median {np.median(ratios):.3f}, rounds {min(ratios):.3f}-{max(ratios):.3f}")
        print(f"  the same losses: {'yes' if losses['shared'] == losses['whole'] else 'no'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="shakespeare-char-cpu", choices=("shakespeare-char-cpu", "large", "tiny"))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per optimizer and round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of each optimizer, alternating")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny config, 2 steps, 1 round")
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)  # set for the ranks it starts
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.steps, args.rounds = "tiny", 2, 1
    if args.rank:
        timed_rounds(args.config, args.steps, args.rounds)
        return 0
    from tinygpt.distributed import LAUNCHER_RANK_VARIABLES, mpiexec_path, why_mpi_cannot_start

    if (reason := why_mpi_cannot_start()) is not None:
        print(f"bench_shared_moments: {reason}", file=sys.stderr)
        return 1
    print(f"config {args.config}: 2 ranks x 1 thread, median of {args.rounds} rounds x {args.steps} timed steps "
          f"after {WARMUP}, the two optimizers alternating", flush=True)
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_RANK_VARIABLES}
    command = [mpiexec_path(), "-n", "2", sys.executable, __file__, "--rank", "--config", args.config,
               "--steps", str(args.steps), "--rounds", str(args.rounds)]
    status = subprocess.run(command, env=env).returncode  # each rank takes its share of the cores (MPIWorld)
    quick = " --quick" if args.quick else f" --config {args.config} --steps {args.steps} --rounds {args.rounds}"
    print(f"command: python benchmarks/bench_shared_moments.py{quick}")
    return status


if __name__ == "__main__":
    sys.exit(main())
