"""Training-step benchmark of what a user runs: TinyGPT's default layout (one single-threaded rank per core, the
recipe's batch split among them, as `tinygpt train` runs it) against PyTorch eager at every thread count up to
the cores (its best is the peer) and PyTorch DDP on as many single-threaded ranks as TinyGPT, from the same
weights, on the same batches, each step a forward, backward, gradient all-reduce (ranks) and AdamW.

Every setup trains alone in fresh processes; rounds alternate the setups so that all see the same drift in the
machine's load, and `--load` keeps a background process busy for about 30% of one core throughout. Peak memory
is that of all of a setup's processes together. Run it as `tinygpt bench` or `python benchmarks/bench_training.py`.
"""
from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tinygpt.flags import OneLineParser

CONFIGS = {
    "shakespeare-char-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),
    "large": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8, vocab_size=65),
    "tiny": dict(n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=2, vocab_size=65),
}
ADAMW = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
SPREAD_TOLERANCE = 0.2  # per-round ratios spread wider than this around their median are not quoted
BUSY_CORE_LIMIT = 0.5  # cores kept busy by other processes beyond which the ratios are called unreliable
LOAD_SHARE = 0.3  # the share of one core that --load keeps busy
PACKAGE_ROOT = Path(__file__).resolve().parent  # src/tinygpt in a checkout, site-packages/tinygpt once installed


def build_tinygpt(config: dict):
    import tinygpt
    from tinygpt.nn import GPT

    tinygpt.manual_seed(1337)
    return GPT(config["block_size"], config["vocab_size"], config["n_layer"], config["n_head"], config["n_embd"])


def build_torch(config: dict, weights: dict[str, np.ndarray]):
    """nanoGPT's model (fused attention, tied LM head) with TinyGPT's weights copied in; config may set
    "bias" (default True) and "gelu" ("tanh", the default and GPT-2's, or "none" for the exact erf form)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    bias, gelu = config.get("bias", True), config.get("gelu", "tanh")  # nanoGPT itself uses erf ("none")

    from tinygpt.gpt2 import hf_name

    class Block(nn.Module):  # parameter names are Hugging Face GPT-2's, so that tinygpt.gpt2's map serves here too
        def __init__(self, dims: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.ln_1, self.ln_2 = nn.LayerNorm(dims, bias=bias), nn.LayerNorm(dims, bias=bias)
            self.attn = nn.ModuleDict(dict(c_attn=nn.Linear(dims, 3 * dims, bias=bias), c_proj=nn.Linear(dims, dims, bias=bias)))
            self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(dims, 4 * dims, bias=bias), c_proj=nn.Linear(4 * dims, dims, bias=bias)))

        def forward(self, x):
            batch, length, dims = x.shape
            q, k, v = self.attn["c_attn"](self.ln_1(x)).split(dims, dim=2)
            q, k, v = (t.view(batch, length, self.heads, dims // self.heads).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, length, dims)
            x = x + self.attn["c_proj"](y)
            return x + self.mlp["c_proj"](F.gelu(self.mlp["c_fc"](self.ln_2(x)), approximate=gelu))

    class TorchGPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(config["vocab_size"], config["n_embd"])
            self.wpe = nn.Embedding(config["block_size"], config["n_embd"])
            self.h = nn.ModuleList(Block(config["n_embd"], config["n_head"]) for _ in range(config["n_layer"]))
            self.ln_f = nn.LayerNorm(config["n_embd"], bias=bias)

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
            for block in self.h:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.T

    model = TorchGPT()
    state = {}
    for ours, array in weights.items():
        theirs = hf_name(ours)
        is_linear_weight = theirs.endswith(".weight") and array.ndim == 2 and not theirs.startswith(("wte", "wpe"))
        state[theirs] = torch.from_numpy(np.ascontiguousarray(array.T if is_linear_weight else array))
    model.load_state_dict(state, strict=True)
    return model


def tinygpt_stepper(config: dict, world=None, share_moments: bool = True):
    """A training step as `tinygpt train` takes it: this rank's share of the batch, gradients averaged over the
    ranks, AdamW (its moments shared out among the ranks, as the trainer's, unless share_moments is False)."""
    from tinygpt.distributed import World
    from tinygpt.losses import CrossEntropyLoss
    from tinygpt.optimizers import AdamW
    from tinygpt.tensor import Tensor

    world = world or World()
    model = build_tinygpt(config)
    world.broadcast_parameters(model)
    optimizer = AdamW(model, ADAMW["lr"], ADAMW["betas"], ADAMW["eps"], ADAMW["weight_decay"],
                      world=world if share_moments else None)
    loss_fn = CrossEntropyLoss()

    def step(x: np.ndarray, y: np.ndarray) -> float:
        loss = loss_fn(model(Tensor(x)), Tensor(y), reduction="mean")
        optimizer.zero_grad()
        loss.backward()
        value = world.average_gradients(model, loss.item())
        optimizer.update()
        return value
    return model, step


def torch_stepper(config: dict, weights: dict[str, np.ndarray], wrap: Callable = lambda model: model):
    """A training step of build_torch's model; `wrap` may wrap the model first (DistributedDataParallel)."""
    import torch
    from torch.nn import functional as F

    model = wrap(build_torch(config, weights))
    optimizer = torch.optim.AdamW(model.parameters(), **ADAMW)

    def step(x: np.ndarray, y: np.ndarray) -> float:
        logits = model(torch.from_numpy(x))
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), torch.from_numpy(y).view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def batches(config: dict, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (config["batch_size"], config["block_size"])
    return [(rng.integers(0, config["vocab_size"], shape), rng.integers(0, config["vocab_size"], shape)) for _ in range(count)]


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited from the parent)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_use() -> dict:
    """This process's peak resident memory, and the MB now resident of each file it maps (libraries, shared
    memory segments) as the file's own pages, not the private copies the process wrote, by device and inode:
    the ranks of one program map the same files, which the machine holds once however many ranks count them."""
    files: dict[str, float] = {}
    key = None
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                fields = line.split()
                if "-" in fields[0] and len(fields) >= 5:  # a mapping's header: address perms offset device inode path
                    key = f"{fields[3]}:{fields[4]}" if fields[4] != "0" else None
                elif key is not None and fields[0] in ("Rss:", "Anonymous:"):  # a private copy of a page is its own
                    sign = 1 if fields[0] == "Rss:" else -1
                    files[key] = files.get(key, 0.0) + sign * int(fields[1]) / 1024
    except OSError:  # no /proc (not Linux): every process is counted whole
        pass
    return {"peak_mb": peak_rss_mb(), "files_mb": files}


def memory_together(uses: list[dict]) -> tuple[float, float]:
    """The peak memory of processes together: summed as each counts itself, and with each file they map
    counted once, at the most any one of them has resident (a lower bound of the pages they hold together)."""
    summed = sum(use["peak_mb"] for use in uses)
    files = {key for use in uses for key in use["files_mb"]}
    counted = sum(sum(use["files_mb"].values()) for use in uses)
    once = sum(max(use["files_mb"].get(key, 0.0) for use in uses) for key in files)
    return summed, summed - counted + once


def timed_steps(step, config: dict, steps: int, warmup: int, rank: int, ranks: int) -> tuple[list[float], list[float]]:
    """Seconds and loss of each step after `warmup`; every rank takes its share of the same global batches."""
    share = slice(rank * config["batch_size"] // ranks, (rank + 1) * config["batch_size"] // ranks)
    times, losses = [], []
    for i, (x, y) in enumerate(batches(config, warmup + steps)):
        start = time.perf_counter()
        losses.append(step(x[share], y[share]))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, losses


def worker(setup: str, config_name: str, steps: int, warmup: int, threads: int = 1) -> None:
    """Train one setup ("tinygpt", "torch" on `threads` threads, or "ddp": one of its ranks) in this process; its
    first rank prints step times, losses and the peak memory of all its ranks as JSON."""
    config = CONFIGS[config_name]
    if setup == "tinygpt":
        times, losses, memory, layout = tinygpt_worker(config, steps, warmup)
    else:
        times, losses, memory, layout = torch_worker(config, steps, warmup, threads, distributed=setup == "ddp")
    if memory is not None:
        print(json.dumps({"times": times, "losses": losses, "summed_peak_mb": memory[0], "peak_mb": memory[1], "layout": layout,
                          "blas": blas_kernel("tinygpt" if setup == "tinygpt" else "torch")}), flush=True)
    if setup == "ddp":  # gloo's threads can abort the interpreter's teardown ("terminate called without an active
        os._exit(0)     # exception") after the work is done and reported: end the process without it


def tinygpt_worker(config: dict, steps: int, warmup: int):
    from tinygpt.distributed import get_world
    from tinygpt.memory import keep_freed_memory
    from tinygpt.threads import engine_threads, get_num_threads

    world = get_world()
    keep_freed_memory()  # as the trainer does
    with engine_threads():
        _, step = tinygpt_stepper(config, world)
        times, losses = timed_steps(step, config, steps, warmup, world.rank, world.world_size)
        threads = get_num_threads()
    uses = world.gather(memory_use())
    layout = f"{world.world_size} rank{'s' if world.world_size > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
    return times, losses, memory_together(uses) if uses is not None else None, layout


def torch_worker(config: dict, steps: int, warmup: int, threads: int, distributed: bool):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    rank, ranks = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if distributed else (0, 1)
    weights = {name: tensor.numpy() for name, tensor in build_tinygpt(config).named_parameters()}
    if distributed:
        dist.init_process_group("gloo", rank=rank, world_size=ranks)
    step = torch_stepper(config, weights, torch.nn.parallel.DistributedDataParallel if distributed else (lambda model: model))
    times, losses = timed_steps(step, config, steps, warmup, rank, ranks)
    uses = [memory_use()]
    if distributed:
        uses = [None] * ranks
        dist.all_gather_object(uses, memory_use())
        dist.destroy_process_group()
    layout = f"DDP {ranks} ranks x {threads} thread" if distributed else f"1 process x {threads} thread{'s' if threads > 1 else ''}"
    return times, losses, memory_together(uses) if rank == 0 else None, layout


def blas_kernel(framework: str) -> str:
    """Which BLAS computes a framework's products, with the processor kernel it picked (OpenBLAS picks one at
    start, and OPENBLAS_CORETYPE may force an older one: on AVX-512 machines its SkylakeX kernel is 2x Haswell's)."""
    if framework == "torch":
        import torch

        return f"torch {'MKL' if torch.backends.mkl.is_available() else 'BLAS'} ({torch.backends.cpu.get_cpu_capability()})"
    from threadpoolctl import threadpool_info

    blas = next((info for info in threadpool_info() if info["user_api"] == "blas"), None)
    if blas is None:
        return "numpy's BLAS (unknown)"
    return f"numpy's {blas['internal_api']} {blas['version']} ({blas.get('architecture') or 'its default kernel'})"


# ---- launching the setups --------------------------------------------------------------------------
def worker_code(setup: str, config_name: str, steps: int, warmup: int, threads: int = 1) -> list[str]:
    return [sys.executable, "-c", f"from tinygpt import bench; bench.worker({setup!r}, {config_name!r}, {steps}, "
                                  f"{warmup}, {threads})"]


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def run_tinygpt(config_name: str, steps: int, warmup: int, ranks: int) -> dict:
    """TinyGPT as `tinygpt train` lays it out: `ranks` ranks under mpiexec sharing the batch, or one process."""
    from tinygpt.distributed import LAUNCHER_RANK_VARIABLES, SPLIT_BATCH_VARIABLE, mpiexec_path

    command = worker_code("tinygpt", config_name, steps, warmup)
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_RANK_VARIABLES}
    if ranks > 1:
        command, env = [mpiexec_path(), "-n", str(ranks), *command], env | {SPLIT_BATCH_VARIABLE: "1"}
    return last_json(subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout)


def run_torch(config_name: str, steps: int, warmup: int, threads: int) -> dict:
    command = worker_code("torch", config_name, steps, warmup, threads)
    return last_json(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def run_ddp(config_name: str, steps: int, warmup: int, ranks: int) -> dict:
    """PyTorch DDP (gloo, on loopback): `ranks` processes of one thread, each its share of the batch."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(ranks))
    processes = [subprocess.Popen(worker_code("ddp", config_name, steps, warmup), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env | {"RANK": str(rank)}) for rank in range(ranks)]
    outputs = [process.communicate() for process in processes]
    failed = next((process for process in processes if process.returncode), None)
    if failed is not None:
        raise subprocess.CalledProcessError(failed.returncode, "ddp worker", stderr=outputs[processes.index(failed)][1])
    return last_json(outputs[0][0])


def start_load() -> subprocess.Popen:
    """A process that keeps about LOAD_SHARE of one core busy (busy 30 ms, asleep 70 ms), as other work would."""
    busy = round(0.1 * LOAD_SHARE, 3)
    code = (f"import time\nwhile True:\n    end = time.perf_counter() + {busy}\n"
            f"    while time.perf_counter() < end: pass\n    time.sleep({round(0.1 - busy, 3)})")
    return subprocess.Popen([sys.executable, "-c", code])


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) CPU time of all cores since boot from /proc/stat; None where there is none (not Linux)."""
    try:
        with open("/proc/stat") as stat:
            values = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(seconds: float = 1.0) -> float | None:
    """How many cores other processes kept busy over the next `seconds` (this one sleeps meanwhile)."""
    before = cpu_times()
    time.sleep(seconds)
    after = cpu_times()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def load_report(moment: str, busy: float | None) -> str:
    """One line on the machine's load at a moment ("before", "after"), a warning when another process holds a core."""
    cores, average = os.cpu_count() or 1, os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if busy is None:
        return f"machine load {moment}: load average {average:.2f} on {cores} cores (no /proc/stat to measure more)"
    line = f"machine load {moment}: {busy:.2f} of {cores} cores busy with other processes, load average {average:.2f}"
    if busy >= BUSY_CORE_LIMIT:
        line += " -- warning: another process holds a core, the ratios below are not reliable; rerun on a quiet machine"
    return line


def spread(ratios: list[float]) -> float:
    """(max - min) / median of per-round ratios: 0 when every round agrees."""
    return (max(ratios) - min(ratios)) / float(np.median(ratios))


def setups(config_name: str, steps: int, warmup: int, cores: int) -> dict[str, Callable[[], dict]]:
    """Every setup of one round, by name, in the order they run."""
    from tinygpt.distributed import default_ranks

    ranks = default_ranks(cores, CONFIGS[config_name]["batch_size"])
    chosen = {"tinygpt": lambda: run_tinygpt(config_name, steps, warmup, ranks)}
    for threads in range(1, cores + 1):
        chosen[f"torch {threads}"] = lambda threads=threads: run_torch(config_name, steps, warmup, threads)
    chosen["ddp"] = lambda: run_ddp(config_name, steps, warmup, ranks)
    return chosen


def run(config_name: str, steps: int, warmup: int, rounds: int = 5, cores: int | None = None,
        progress: Callable[[str], None] = lambda line: None) -> dict:
    """`rounds` rounds of every setup, alternating; per round the ratio of TinyGPT's median step to PyTorch
    eager's best and to DDP's. Each finished setup is told to `progress` as a line."""
    cores = cores or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    runs: dict[str, list[dict]] = {}
    for round_index in range(rounds):
        for name, measure in setups(config_name, steps, warmup, cores).items():
            runs.setdefault(name, []).append(measure())
            progress(f"  round {round_index + 1}/{rounds}: {runs[name][-1]['layout']:<24} "
                     f"{1000 * np.median(runs[name][-1]['times']):8.2f} ms/step")
    medians = {name: [float(np.median(result["times"])) for result in results] for name, results in runs.items()}
    eager = [name for name in runs if name.startswith("torch ")]
    best = min(eager, key=lambda name: float(np.median(medians[name])))
    per_round = {"eager": [min(medians[name][i] for name in eager) / medians["tinygpt"][i] for i in range(rounds)],
                 "ddp": [medians["ddp"][i] / medians["tinygpt"][i] for i in range(rounds)]}
    tokens = CONFIGS[config_name]["batch_size"] * CONFIGS[config_name]["block_size"]
    rows = {name: {"layout": results[0]["layout"], "ms_per_step": 1000 * float(np.median(medians[name])),
                   "tokens_per_s": tokens / float(np.median(medians[name])),
                   "peak_mb": max(result["peak_mb"] for result in results),
                   "summed_peak_mb": max(result["summed_peak_mb"] for result in results)} for name, results in runs.items()}
    return {"config": config_name, "steps": steps, "warmup": warmup, "rounds": rounds, "rows": rows, "best_eager": best,
            "blas": {"tinygpt": runs["tinygpt"][0]["blas"], "torch": runs["ddp"][0]["blas"]},
            "ratios": {peer: float(np.median(values)) for peer, values in per_round.items()},
            "round_ratios": per_round, "spread": {peer: spread(values) for peer, values in per_round.items()},
            "memory_ratio": {peer: rows["tinygpt"]["peak_mb"] / rows[name]["peak_mb"]
                             for peer, name in (("eager", best), ("ddp", "ddp"))},
            "summed_memory_ratio": {peer: rows["tinygpt"]["summed_peak_mb"] / rows[name]["summed_peak_mb"]
                                    for peer, name in (("eager", best), ("ddp", "ddp"))},
            "max_loss_difference": float(np.abs(np.array(runs["tinygpt"][0]["losses"])
                                                - np.array(runs[best][0]["losses"])).max())}


def memory_cell(row: dict) -> str:
    """A setup's peak memory, its files counted once; for several processes also their own peaks summed."""
    if row["summed_peak_mb"] - row["peak_mb"] < 0.5:
        return f"{row['peak_mb']:.0f} MB"
    return f"{row['peak_mb']:.0f} MB ({row['summed_peak_mb']:.0f} MB summed per process)"


def report(result: dict) -> str:
    config = CONFIGS[result["config"]]
    lines = [f"config {result['config']} (batch {config['batch_size']} x {config['block_size']} tokens): median of "
             f"{result['rounds']} rounds x {result['steps']} timed steps after {result['warmup']}, each setup alone in "
             "its own processes, rounds alternating",
             f"  products: tinygpt on {result['blas']['tinygpt']}, torch on {result['blas']['torch']}"]
    if os.environ.get("OPENBLAS_CORETYPE"):
        lines.append(f"  OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set: numpy's OpenBLAS runs that kernel, "
                     "not the one it would pick for this processor")
    for name, row in result["rows"].items():
        lines.append(f"  {'tinygpt' if name == 'tinygpt' else 'torch':8s} {row['layout']:<24} {row['ms_per_step']:8.2f} "
                     f"ms/step {row['tokens_per_s']:10,.0f} tokens/s, peak memory {memory_cell(row)}")
    for peer, label in (("eager", f"torch eager at its best ({result['rows'][result['best_eager']]['layout']})"),
                        ("ddp", "torch DDP")):
        rounds, width = result["round_ratios"][peer], result["spread"][peer]
        verdict = "quotable" if width <= SPREAD_TOLERANCE else "too wide to quote"
        lines.append(f"  tinygpt / {label}: {result['ratios'][peer]:.2f}x (rounds {min(rounds):.2f}-{max(rounds):.2f}, "
                     f"spread {width:.0%}: {verdict}), peak memory ratio {result['memory_ratio'][peer]:.2f} "
                     f"(summed per process {result['summed_memory_ratio'][peer]:.2f})")
    lines.append(f"  largest loss difference from torch over the run: {result['max_loss_difference']:.1e}")
    return "\n".join(lines)


def torch_install_advice() -> str:
    """How to get PyTorch: from a checkout (src/tinygpt beside pyproject.toml), its test extra, which pins the
    version the benchmarks were measured with; for an installed package, PyTorch itself."""
    root = PACKAGE_ROOT.parent.parent
    if PACKAGE_ROOT.parent.name == "src" and (root / "pyproject.toml").is_file():
        return f'pip install "{root}[test]"'
    return "pip install torch"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = OneLineParser(prog="tinygpt bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append",
                        help="configuration(s) to run (default: shakespeare-char-cpu and large)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setup and round (default: 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every setup, alternating (default: 5)")
    parser.add_argument("--load", action="store_true", help="keep about 30%% of one core busy in the background")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny config, 2 steps, 1 round")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be at least 1, --warmup at least 0")
    try:
        import torch  # noqa: F401
    except ImportError:
        print(f"tinygpt: error: tinygpt bench needs PyTorch as its peer: {torch_install_advice()}", file=sys.stderr)
        return 1
    configs = ["tiny"] if args.quick else (args.config or ["shakespeare-char-cpu", "large"])
    steps, warmup, rounds = (2, 1, 1) if args.quick else (args.steps, args.warmup, args.rounds)
    print("command:", " ".join(["tinygpt bench", *argv]))
    print(load_report("before", busy_cores()), flush=True)
    load = start_load() if args.load else None
    try:
        for name in configs:
            print(f"config {name}: {rounds} rounds ...", flush=True)
            print(report(run(name, steps, warmup, rounds, progress=lambda line: print(line, flush=True))), flush=True)
    except subprocess.CalledProcessError as error:
        reason = (error.stderr or "").strip().splitlines()[-1:] or [f"exit status {error.returncode}"]
        print(f"tinygpt: error: a benchmark worker failed: {reason[0]}", file=sys.stderr)
        return 1
    finally:
        if load is not None:
            load.kill()
            load.wait()
    print(f"background load: a process busy {LOAD_SHARE:.0%} of one core throughout" if args.load else "background load: none")
    print(load_report("after", busy_cores()))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "run", "CONFIGS", "build_torch"]
