"""Training-step benchmark: the same GPT in TinyGPT and in PyTorch eager, from the same weights.

Each framework trains (forward, backward, AdamW) alone in a fresh process, alternating over a few
rounds; the same process reports its peak memory. Run it as `tinygpt bench` or
`python benchmarks/bench_training.py`.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Callable

import numpy as np

from tinygpt.flags import OneLineParser

CONFIGS = {
    "shakespeare-char-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),
    "large": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8, vocab_size=65),
    "tiny": dict(n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=2, vocab_size=65),
}
ADAMW = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
SPREAD_TOLERANCE = 0.05  # rounds are added until the per-round ratios lie within 5% of their median
BUSY_CORE_LIMIT = 0.5  # cores kept busy by other processes beyond which the ratios are called unreliable


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


def tinygpt_stepper(config: dict):
    from tinygpt.losses import CrossEntropyLoss
    from tinygpt.optimizers import AdamW
    from tinygpt.tensor import Tensor

    model = build_tinygpt(config)
    optimizer = AdamW(model, ADAMW["lr"], ADAMW["betas"], ADAMW["eps"], ADAMW["weight_decay"])
    loss_fn = CrossEntropyLoss()

    def step(x: np.ndarray, y: np.ndarray) -> float:
        loss = loss_fn(model(Tensor(x)), Tensor(y), reduction="mean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.update()
        return loss.item()
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


def worker(framework: str, config_name: str, steps: int, warmup: int) -> None:
    """Train one framework alone in this process; print step times, losses and peak memory as JSON."""
    import tinygpt
    from tinygpt.memory import keep_freed_memory

    config = CONFIGS[config_name]
    if framework == "tinygpt":
        keep_freed_memory()  # as the trainer does
    model, step = tinygpt_stepper(config)
    if framework == "torch":
        step = torch_stepper(config, {name: tensor.numpy() for name, tensor in model.named_parameters()})
        del model
    times, losses = [], []
    for i, (x, y) in enumerate(batches(config, warmup + steps)):
        start = time.perf_counter()
        losses.append(step(x, y))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    print(json.dumps({"times": times, "losses": losses, "peak_rss_mb": peak_rss_mb(), "threads": tinygpt.get_num_threads(),
                      "blas": blas_kernel(framework)}))


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


def run_worker(framework: str, config_name: str, steps: int, warmup: int) -> dict:
    code = f"from tinygpt import bench; bench.worker({framework!r}, {config_name!r}, {steps}, {warmup})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


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


def rounds_are_enough(ratios: list[float], minimum: int, maximum: int) -> bool:
    """At least `minimum` rounds, then more until the spread is within SPREAD_TOLERANCE or `maximum` is reached."""
    return len(ratios) >= maximum or (len(ratios) >= minimum and spread(ratios) <= SPREAD_TOLERANCE)


def run(config_name: str, steps: int, warmup: int, rounds: int = 3, max_rounds: int | None = None) -> dict:
    """Each framework trains alone in a fresh process (so neither pays for the other's spinning BLAS or
    OpenMP threads), alternating over at least `rounds` rounds so that both see the same drift in machine load,
    and over more (up to max_rounds, default 2 x rounds) until the per-round ratios agree within 5%."""
    import torch

    config = CONFIGS[config_name]
    runs: dict[str, list[dict]] = {"tinygpt": [], "torch": []}
    ratios: list[float] = []
    while not ratios or not rounds_are_enough(ratios, rounds, max_rounds or 2 * rounds):
        for name in runs:
            runs[name].append(run_worker(name, config_name, steps, warmup))
        ratios.append(float(np.median(runs["torch"][-1]["times"]) / np.median(runs["tinygpt"][-1]["times"])))
    tokens = config["batch_size"] * config["block_size"]
    first_losses = {name: np.array(results[0]["losses"]) for name, results in runs.items()}
    result = {"config": config_name, "torch_threads": torch.get_num_threads(), "tinygpt_threads": runs["tinygpt"][0]["threads"],
              "blas": {name: results[0]["blas"] for name, results in runs.items()},
              "steps": steps, "rounds": len(ratios), "round_ratios": ratios, "spread": spread(ratios),
              "first_loss_difference": float(abs(first_losses["tinygpt"][0] - first_losses["torch"][0])),
              "max_loss_difference": float(np.abs(first_losses["tinygpt"] - first_losses["torch"]).max())}
    for name, results in runs.items():
        ms = 1000 * float(np.median([t for r in results for t in r["times"]]))
        result[name] = {"ms_per_iter": ms, "tokens_per_s": tokens / ms * 1000,
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}
    result["speedup"] = result["torch"]["ms_per_iter"] / result["tinygpt"]["ms_per_iter"]
    result["memory_ratio"] = result["tinygpt"]["peak_rss_mb"] / result["torch"]["peak_rss_mb"]
    return result


def report(result: dict) -> str:
    lines = [f"config {result['config']}: median of {result['rounds']} x {result['steps']} timed steps, "
             f"each framework alone in its own process, threads: tinygpt {result['tinygpt_threads']}, "
             f"torch {result['torch_threads']}",
             f"  products: tinygpt on {result['blas']['tinygpt']}, torch on {result['blas']['torch']}"]
    if os.environ.get("OPENBLAS_CORETYPE"):
        lines.append(f"  OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set: numpy's OpenBLAS runs that kernel, "
                     "not the one it would pick for this processor (docs/operation.md, Threads)")
    for name in ("tinygpt", "torch"):
        row = result[name]
        lines.append(f"  {name:8s} {row['ms_per_iter']:8.2f} ms/iter {row['tokens_per_s']:10.0f} tokens/s, "
                     f"peak RSS {row['peak_rss_mb']:.0f} MB")
    lines.append(f"  throughput ratio tinygpt/torch: {result['speedup']:.2f}x, peak memory ratio tinygpt/torch: "
                 f"{result['memory_ratio']:.2f}")
    verdict = ("within" if result["spread"] <= SPREAD_TOLERANCE else "NOT within") + f" {SPREAD_TOLERANCE:.0%}"
    lines.append(f"  per-round ratios {min(result['round_ratios']):.2f}-{max(result['round_ratios']):.2f} over "
                 f"{result['rounds']} rounds: spread {result['spread']:.1%}, {verdict}"
                 + ("" if result["spread"] <= SPREAD_TOLERANCE else " (a busy or drifting machine: do not quote them)"))
    lines.append(f"  loss difference: step 1 {result['first_loss_difference']:.1e}, largest over the run "
                 f"{result['max_loss_difference']:.1e} (Adam amplifies float32 rounding in near-zero gradients)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="tinygpt bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append",
                        help="configuration(s) to run (default: shakespeare-char-cpu and large)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per framework, alternated; more are "
                        "run (up to twice as many) until the per-round ratios agree within 5%%")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny config, 2 steps")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be at least 1, --warmup at least 0")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("tinygpt bench needs PyTorch as its peer: pip install 'tinygpt[test]'", file=sys.stderr)
        return 1
    configs = ["tiny"] if args.quick else (args.config or ["shakespeare-char-cpu", "large"])
    steps, warmup, rounds = (2, 1, 1) if args.quick else (args.steps, args.warmup, args.rounds)
    print("command:", " ".join(["tinygpt bench"] + (argv if argv is not None else sys.argv[1:])))
    print(load_report("before", busy_cores()), flush=True)
    for name in configs:
        try:
            print(report(run(name, steps, warmup, rounds, rounds if args.quick else None)), flush=True)
        except subprocess.CalledProcessError as error:
            reason = (error.stderr or "").strip().splitlines()[-1:] or [f"exit status {error.returncode}"]
            print(f"tinygpt bench: error: a benchmark worker failed: {reason[0]}", file=sys.stderr)
            return 1
    print(load_report("after", busy_cores()))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "run", "CONFIGS", "build_torch"]
