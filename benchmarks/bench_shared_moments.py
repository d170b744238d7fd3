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
import time

import numpy as np

WARMUP = 3


def timed_rounds(config_name: str, steps: int, rounds: int) -> None:
    """On every rank: `rounds` rounds of each optimizer, alternating; rank 0 prints the table."""
    from tinygpt.bench import ADAMW, CONFIGS, batches, build_tinygpt
    from tinygpt.distributed import get_world
    from tinygpt.losses import CrossEntropyLoss
    from tinygpt.memory import keep_freed_memory
    from tinygpt.optimizers import AdamW
    from tinygpt.tensor import Tensor

    keep_freed_memory()  # as the trainer does
    config, world = CONFIGS[config_name], get_world()
    mine = slice(world.rank * config["batch_size"] // world.world_size,
                 (world.rank + 1) * config["batch_size"] // world.world_size)

    def stepper(shared: bool):
        model = build_tinygpt(config)
        world.broadcast_parameters(model)
        optimizer = AdamW(model, ADAMW["lr"], ADAMW["betas"], ADAMW["eps"], ADAMW["weight_decay"],
                          world=world if shared else None)

        def step(x, y) -> float:
            loss = CrossEntropyLoss()(model(Tensor(x[mine])), Tensor(y[mine]), reduction="mean")
            optimizer.zero_grad()
            loss.backward()
            value = world.average_gradients(model, loss.item())
            optimizer.update()
            return value
        return step

    steppers = {"shared": stepper(True), "whole": stepper(False)}
    data = list(batches(config, WARMUP + steps))
    times: dict[str, list[float]] = {name: [] for name in steppers}
    losses: dict[str, list[float]] = {name: [] for name in steppers}
    for round_index in range(rounds):
        for name in (("shared", "whole") if round_index % 2 == 0 else ("whole", "shared")):
            for x, y in data[:WARMUP]:
                losses[name].append(steppers[name](x, y))
            world.barrier()
            started = time.perf_counter()
            for x, y in data[WARMUP:]:
                losses[name].append(steppers[name](x, y))
            world.barrier()
            times[name].append((time.perf_counter() - started) / steps * 1e3)
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
