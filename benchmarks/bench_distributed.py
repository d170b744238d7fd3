"""Data-parallel training throughput: TinyGPT over MPI against one process, and against PyTorch DDP.

For each configuration (tinygpt/bench.py's shapes; batch_size is per rank), in the same run:
  tinygpt  1 process x 1 thread,  batch B        the one-rank baseline
  tinygpt  1 process x 2 threads, batch 2 x B    the same global batch, threads instead of ranks
  tinygpt  2 ranks x 1 thread (mpiexec -n 2),    batch B per rank
  torch    1 process x 1 thread,  batch B
  torch    DDP, gloo, 2 processes x 1 thread on loopback, batch B per rank
Each is a forward, backward, gradient all-reduce (ranks only) and AdamW step; tokens/s counts every rank's tokens.

    python benchmarks/bench_distributed.py                 # shakespeare-char-cpu and large
    python benchmarks/bench_distributed.py --config large --steps 10   # a few minutes on 2 cores
    python benchmarks/bench_distributed.py --quick         # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tinygpt.bench import ADAMW, CONFIGS, batches, build_tinygpt, busy_cores, load_report, torch_stepper

ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tinygpt_worker(config_name: str, steps: int, warmup: int, batch_scale: int) -> dict | None:
    """Train under this process's world (one process, or a rank of mpiexec); rank 0 returns the timing."""
    import tinygpt
    from tinygpt.distributed import get_world
    from tinygpt.losses import CrossEntropyLoss
    from tinygpt.optimizers import AdamW
    from tinygpt.tensor import Tensor

    world, config = get_world(), CONFIGS[config_name]
    config = dict(config, batch_size=config["batch_size"] * batch_scale)
    model = build_tinygpt(config)
    world.broadcast_parameters(model)
    optimizer, loss_fn = AdamW(model, ADAMW["lr"], ADAMW["betas"], ADAMW["eps"], ADAMW["weight_decay"]), CrossEntropyLoss()

    def step(x, y) -> float:
        loss = loss_fn(model(Tensor(x)), Tensor(y), reduction="mean")
        optimizer.zero_grad()
        loss.backward()
        value = world.average_gradients(model, loss.item())
        optimizer.update()
        return value

    seconds = timed_steps(config, steps, warmup, world.rank, step, world.barrier)
    if not world.is_main:
        return None
    return dict(seconds=seconds, ranks=world.world_size, threads=tinygpt.get_num_threads(), batch=config["batch_size"])


def torch_worker(config_name: str, steps: int, warmup: int, rank: int, ranks: int) -> dict | None:
    """Train nanoGPT's model in PyTorch; with ranks > 1 under DistributedDataParallel (gloo)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    config = CONFIGS[config_name]
    weights = {name: tensor.numpy() for name, tensor in build_tinygpt(config).named_parameters()}
    if ranks > 1:
        dist.init_process_group("gloo", rank=rank, world_size=ranks)
    step = torch_stepper(config, weights, torch.nn.parallel.DistributedDataParallel if ranks > 1 else (lambda model: model))
    seconds = timed_steps(config, steps, warmup, rank, step, dist.barrier if ranks > 1 else (lambda: None))
    if ranks > 1:
        dist.destroy_process_group()
    if rank:
        return None
    return dict(seconds=seconds, ranks=ranks, threads=torch.get_num_threads(), batch=config["batch_size"])


def timed_steps(config: dict, steps: int, warmup: int, rank: int, step, barrier) -> float:
    """Wall seconds of `steps` steps after `warmup`, between two barriers; each rank trains on its own batches."""
    data = batches(config, warmup + steps, seed=rank)
    for x, y in data[:warmup]:
        step(x, y)
    barrier()
    start = time.perf_counter()
    for x, y in data[warmup:]:
        step(x, y)
    barrier()
    return time.perf_counter() - start


# ---- launching -------------------------------------------------------------------------------------
def worker_command(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", *args]


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def run_tinygpt(config_name: str, steps: int, warmup: int, ranks: int, threads: int, batch_scale: int = 1) -> dict:
    env = dict(os.environ, **(ONE_THREAD if threads == 1 else {"NUMBA_NUM_THREADS": str(threads)}))
    if ranks > 1:  # the default threads of ranks: cores / ranks (tinygpt.distributed)
        env = {key: value for key, value in env.items() if key not in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    command = worker_command("tinygpt", config_name, str(steps), str(warmup), str(batch_scale))
    if ranks > 1:
        command = [mpiexec(), "-n", str(ranks), *command]
    return last_json(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout)


def run_torch(config_name: str, steps: int, warmup: int, ranks: int) -> dict:
    env = dict(os.environ, **ONE_THREAD, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    processes = [subprocess.Popen(worker_command("torch", config_name, str(steps), str(warmup), str(rank), str(ranks)),
                                  stdout=subprocess.PIPE, text=True, env=env) for rank in range(ranks)]
    outputs = [process.communicate()[0] for process in processes]
    if any(process.returncode for process in processes):
        raise RuntimeError("a PyTorch worker failed")
    return last_json(outputs[0])


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        raise SystemExit("no mpiexec: pip install mpi4py mpich")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tokens_per_second(config_name: str, result: dict) -> float:
    config = CONFIGS[config_name]
    return result["steps"] * result["batch"] * config["block_size"] * result["ranks"] / result["seconds"]


def measure(config_name: str, steps: int, warmup: int) -> dict[str, tuple[float, float]]:
    """(tokens/s, wall seconds of the whole setup, start-up included) of every setup, each in its own
    processes, one after the other; each setup's name goes to stderr as it starts."""
    setups = {
        "tinygpt 1 process x 1 thread": lambda: run_tinygpt(config_name, steps, warmup, ranks=1, threads=1),
        "tinygpt 1 process x 2 threads (2B)": lambda: run_tinygpt(config_name, steps, warmup, ranks=1, threads=2, batch_scale=2),
        "tinygpt 2 ranks x 1 thread": lambda: run_tinygpt(config_name, steps, warmup, ranks=2, threads=1),
        "torch 1 process x 1 thread": lambda: run_torch(config_name, steps, warmup, ranks=1),
        "torch DDP gloo 2 ranks x 1 thread": lambda: run_torch(config_name, steps, warmup, ranks=2),
    }
    measured = {}
    for name, run in setups.items():
        print(f"{config_name}: {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        rate = tokens_per_second(config_name, dict(run(), steps=steps))
        measured[name] = (rate, time.perf_counter() - started)
    return measured


def report(config_name: str, measured: dict[str, tuple[float, float]], steps: int, warmup: int) -> str:
    config, rates = CONFIGS[config_name], {name: rate for name, (rate, _) in measured.items()}
    lines = [f"config {config_name} (batch {config['batch_size']} per rank x {config['block_size']} tokens), "
             f"{steps} timed steps after {warmup}:"]
    lines += [f"  {name:<36} {rate:>10,.0f} tokens/s   ({seconds:.0f} s)" for name, (rate, seconds) in measured.items()]
    ours, theirs = rates["tinygpt 2 ranks x 1 thread"], rates["torch DDP gloo 2 ranks x 1 thread"]
    speedup = ours / rates["tinygpt 1 process x 1 thread"]
    lines.append(f"  scaling efficiency, 2 ranks / (2 x 1 rank): tinygpt {speedup / 2:.2f}, "
                 f"torch {theirs / (2 * rates['torch 1 process x 1 thread']):.2f}")
    lines.append(f"  2 ranks / 1 process x 2 threads (tinygpt): {ours / rates['tinygpt 1 process x 2 threads (2B)']:.2f}x")
    lines.append(f"  tinygpt/torch on 2 ranks: {ours / theirs:.2f}x")
    met = speedup >= 1.8 and ours >= theirs
    lines.append(f"  goal (2 ranks >= 1.8x one rank, and >= torch DDP): {'met' if met else 'not met'} "
                 f"({speedup:.2f}x one rank, {ours / theirs:.2f}x DDP); {sum(s for _, s in measured.values()):.0f} s in all")
    return "\n".join(lines)


def worker(args: list[str]) -> None:
    """One setup's process: `tinygpt CONFIG STEPS WARMUP BATCH_SCALE` or `torch CONFIG STEPS WARMUP RANK RANKS`."""
    framework, config_name, steps, warmup, *rest = args
    run = tinygpt_worker if framework == "tinygpt" else torch_worker
    result = run(config_name, int(steps), int(warmup), *map(int, rest))
    if result is not None:
        print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append",
                        help="configuration(s) to run (default: shakespeare-char-cpu and large)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setup (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--quick", action="store_true", help="the tiny configuration, 3 steps: a smoke run")
    args = parser.parse_args(argv)
    configs = ["tiny"] if args.quick else (args.config or ["shakespeare-char-cpu", "large"])
    steps, warmup = (3, 1) if args.quick else (args.steps, args.warmup)
    print(load_report("before", busy_cores()), flush=True)
    for config_name in configs:
        print(report(config_name, measure(config_name, steps, warmup), steps, warmup), flush=True)
    print(load_report("after", busy_cores()))
    print(" ".join(["command: python benchmarks/bench_distributed.py", *map(shlex.quote, argv)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
