"""Per-op overhead and one transformer block, TinyGPT against numpy and PyTorch eager on the same numbers.

1. A small add (4x4 float32): microseconds per call through a TinyGPT Tensor (without and with
   requires_grad, i.e. without and with a graph node), through numpy (the floor: TinyGPT computes with
   it) and through torch (without and with requires_grad). This is the fixed Python cost of one op.
2. Forward + backward of one GPT-2 transformer block (pre-LayerNorm, causal multi-head attention,
   GELU MLP of width 4C, residuals), built from Tensor ops and the fused ops of tinygpt.mlops through
   apply_op, against the same block in PyTorch eager with the same weights and the same input. The
   script checks that both compute the same output and gradients before timing them.

Each time is the best of --repeats rounds; the two frameworks alternate so that both see the same
machine noise. Ratios above 1 mean TinyGPT is slower. Both use every core by default; on a machine
busy with other work, torch's multi-threaded kernels can stall (100x on a tiny block), so compare
single-threaded there: OMP_NUM_THREADS=1 pins torch and numpy's BLAS alike.

    python benchmarks/bench_ops.py                      # the full run
    python benchmarks/bench_ops.py --quick              # a smoke run of a few seconds
    OMP_NUM_THREADS=1 python benchmarks/bench_ops.py    # one thread each
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import tinygpt
from tinygpt import Tensor, apply_op, mlops


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def best_time(fn, repeats: int, calls: int = 1) -> float:
    """The fastest of `repeats` rounds of `calls` calls, in seconds per call."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return min(times)


# ---- 1. per-op overhead --------------------------------------------------------------------------------
def op_overhead(repeats: int, calls: int) -> dict[str, float]:
    """Microseconds per 4x4 add through each path."""
    a_np, b_np = np.random.default_rng(0).standard_normal((2, 4, 4)).astype(np.float32)
    ours, ours_grad = (Tensor(a_np), Tensor(b_np)), (Tensor(a_np, requires_grad=True), Tensor(b_np, requires_grad=True))
    theirs = (torch.tensor(a_np), torch.tensor(b_np))
    theirs_grad = (torch.tensor(a_np, requires_grad=True), torch.tensor(b_np, requires_grad=True))
    paths = {
        "numpy": lambda: a_np + b_np,
        "tinygpt": lambda: ours[0] + ours[1],
        "tinygpt requires_grad": lambda: ours_grad[0] + ours_grad[1],
        "torch": lambda: theirs[0] + theirs[1],
        "torch requires_grad": lambda: theirs_grad[0] + theirs_grad[1],
    }
    for fn in paths.values():  # warm up
        fn()
    return {name: best_time(fn, repeats, calls) * 1e6 for name, fn in paths.items()}


# ---- 2. one transformer block ----------------------------------------------------------------------------
def block_weights(width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """GPT-2 style initialisation, weights stored (in, out) so that y = x @ W + b."""
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    return {
        "ln1.weight": 1.0 + normal(width, std=0.1), "ln1.bias": normal(width),
        "attn.weight": normal(width, 3 * width), "attn.bias": normal(3 * width),
        "proj.weight": normal(width, width), "proj.bias": normal(width),
        "ln2.weight": 1.0 + normal(width, std=0.1), "ln2.bias": normal(width),
        "fc.weight": normal(width, 4 * width), "fc.bias": normal(4 * width),
        "out.weight": normal(4 * width, width), "out.bias": normal(width),
    }


def tinygpt_block(x: Tensor, p: dict[str, Tensor], num_heads: int) -> Tensor:
    """x + attn(ln1(x)), then + mlp(ln2(.)), from Tensor ops and mlops' fused ops."""
    batch, length, width = x.shape
    head_dims = width // num_heads
    h = apply_op(mlops.LayerNorm, x, p["ln1.weight"], p["ln1.bias"], eps=1e-5)
    qkv = h @ p["attn.weight"] + p["attn.bias"]

    def heads(i: int) -> Tensor:
        part = qkv[:, :, i * width:(i + 1) * width]
        return part.reshape((batch, length, num_heads, head_dims)).permute((0, 2, 1, 3))

    attended = apply_op(mlops.ScaledDotProductAttention, heads(0), heads(1), heads(2))
    merged = attended.permute((0, 2, 1, 3)).reshape((batch, length, width))
    x = x + (merged @ p["proj.weight"] + p["proj.bias"])
    h = apply_op(mlops.LayerNorm, x, p["ln2.weight"], p["ln2.bias"], eps=1e-5)
    h = (h @ p["fc.weight"] + p["fc.bias"]).gelu()
    return x + (h @ p["out.weight"] + p["out.bias"])


def torch_block(x: torch.Tensor, p: dict[str, torch.Tensor], num_heads: int) -> torch.Tensor:
    """The same block in PyTorch eager (fused scaled_dot_product_attention, tanh GELU)."""
    batch, length, width = x.shape
    head_dims = width // num_heads
    h = F.layer_norm(x, (width,), p["ln1.weight"], p["ln1.bias"], eps=1e-5)
    qkv = h @ p["attn.weight"] + p["attn.bias"]
    q, k, v = (part.reshape(batch, length, num_heads, head_dims).transpose(1, 2) for part in qkv.split(width, dim=-1))
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + (attended.transpose(1, 2).reshape(batch, length, width) @ p["proj.weight"] + p["proj.bias"])
    h = F.layer_norm(x, (width,), p["ln2.weight"], p["ln2.bias"], eps=1e-5)
    h = F.gelu(h @ p["fc.weight"] + p["fc.bias"], approximate="tanh")
    return x + (h @ p["out.weight"] + p["out.bias"])


def block_step(args: argparse.Namespace) -> dict[str, float]:
    """Seconds per forward + backward of one block in each framework, after checking they agree."""
    weights = block_weights(args.n_embd)
    x_np = np.random.default_rng(1).standard_normal((args.batch_size, args.block_size, args.n_embd)).astype(np.float32)
    incoming_np = np.random.default_rng(2).standard_normal(x_np.shape).astype(np.float32)
    ours = {name: Tensor(value, requires_grad=True) for name, value in weights.items()}
    theirs = {name: torch.tensor(value, requires_grad=True) for name, value in weights.items()}
    x, tx = Tensor(x_np, requires_grad=True), torch.tensor(x_np, requires_grad=True)
    incoming, tincoming = Tensor(incoming_np), torch.tensor(incoming_np)

    def step_tinygpt():
        for tensor in (x, *ours.values()):
            tensor.zero_grad()
        out = tinygpt_block(x, ours, args.n_head)
        out.backward(incoming)
        return out

    def step_torch():
        for tensor in (tx, *theirs.values()):
            tensor.grad = None
        out = torch_block(tx, theirs, args.n_head)
        out.backward(tincoming)
        return out

    check_agreement(step_tinygpt(), step_torch(), [x, *ours.values()], [tx, *theirs.values()])
    for _ in range(args.warmup):  # torch's first steps run 100x slower (kernel selection, allocator)
        step_tinygpt()
        step_torch()
    times = {"tinygpt": [], "torch": []}
    for _ in range(args.repeats):  # alternate, so that both frameworks see the same machine noise
        times["tinygpt"].append(best_time(step_tinygpt, 1))
        times["torch"].append(best_time(step_torch, 1))
    return {name: min(values) for name, values in times.items()}


def check_agreement(out: Tensor, reference: torch.Tensor, ours: list[Tensor], theirs: list[torch.Tensor]) -> None:
    """Refuse to time two computations that differ: output and every gradient within 1e-4 of scale."""
    pairs = [("output", out.numpy(), reference.detach().numpy())]
    pairs += [(f"gradient {i}", a.grad.numpy(), b.grad.numpy()) for i, (a, b) in enumerate(zip(ours, theirs))]
    for what, mine, expected in pairs:
        error = float(np.abs(mine - expected).max()) / max(1.0, float(np.abs(expected).max()))
        if not error <= 1e-4:
            raise AssertionError(f"TinyGPT and PyTorch disagree on the block's {what}: relative error {error:.2g}")


# ---- report ---------------------------------------------------------------------------------------------
def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny block and few repeats (smoke run)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20, help="timing rounds; the best is kept")
    parser.add_argument("--calls", type=int, default=2000, help="adds per round in the per-op timing")
    parser.add_argument("--warmup", type=int, default=10, help="untimed block steps before timing")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.block_size, args.n_embd, args.n_head, args.repeats, args.calls = 2, 8, 16, 2, 3, 200
    if args.n_embd % args.n_head:
        parser.error(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(argv)
    tinygpt.manual_seed(0)
    load = os.getloadavg()[0]
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, {platform.machine()}, load average {load:.1f}")
    if load > (os.cpu_count() or 1) - 0.5:
        print("note: the machine is busy with other work; timings are noisy (see OMP_NUM_THREADS=1 in the docstring)")

    overhead = op_overhead(args.repeats, args.calls)
    print("\n4x4 float32 add, microseconds per call")
    for name, micros in overhead.items():
        print(f"  {name:<24}{micros:8.2f} us")
    print(f"  tinygpt / numpy          {overhead['tinygpt'] / overhead['numpy']:8.1f}x")
    print(f"  tinygpt / torch          {overhead['tinygpt'] / overhead['torch']:8.2f}x")
    print(f"  with grad: tinygpt / torch {overhead['tinygpt requires_grad'] / overhead['torch requires_grad']:6.2f}x")

    seconds = block_step(args)
    shape = f"B={args.batch_size} T={args.block_size} C={args.n_embd} H={args.n_head}"
    print(f"\ntransformer block forward + backward ({shape}), outputs and gradients checked equal")
    print(f"  tinygpt                 {seconds['tinygpt'] * 1e3:9.2f} ms")
    print(f"  torch eager             {seconds['torch'] * 1e3:9.2f} ms")
    print(f"  tinygpt / torch         {seconds['tinygpt'] / seconds['torch']:9.2f}x")
    environment = [f"{name}={os.environ[name]}" for name in THREAD_VARIABLES if name in os.environ]
    print(f"\nreproduce: {shlex.join([*environment, 'python', 'benchmarks/bench_ops.py', *argv])}")


if __name__ == "__main__":
    main()
