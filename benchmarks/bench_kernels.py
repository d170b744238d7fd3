"""Every kernel at the shapes of one training step, numba's CPU kernels against the array (numpy) kernels.

For each benchmark configuration (tinygpt.bench.CONFIGS) the script builds inputs of the shapes one
training step gives each kernel, times forward and backward of each kernel set on the same inputs
(median of --repeats, the two sets alternating so that both see the same machine load), and prints
milliseconds per training step: the time of one call times the calls a step makes (per layer: two
layer norms, one GELU, one attention; one more layer norm, the loss, two embeddings and one AdamW
update per step). It checks first that both sets give the same results.

    python benchmarks/bench_kernels.py                 # both configurations
    python benchmarks/bench_kernels.py --quick         # a smoke run on a tiny configuration
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import numpy as np

import tinygpt
from tinygpt import kernels
from tinygpt.bench import CONFIGS
from tinygpt.kernels import array as array_kernels

TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=2, vocab_size=65)


def kernel_calls(config: dict, rng: np.random.Generator) -> dict[str, tuple[int, str, tuple]]:
    """name -> (calls per training step, kernel function name, its arguments) at the shapes of one step."""
    batch, length, width, heads = config["batch_size"], config["block_size"], config["n_embd"], config["n_head"]
    rows, vocab, layers = batch * length, config["vocab_size"], config["n_layer"]

    def values(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, weight, bias = values(rows, width), values(width), values(width)
    mean, rstd, out = np.empty(rows, np.float32), np.empty(rows, np.float32), np.empty_like(x)
    array_kernels.layer_norm_forward(x, weight, bias, 1e-5, out, mean, rstd)
    hidden = values(rows * 4 * width)
    qkv = values(batch, length, 3, heads, width // heads).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    empty_keep = np.zeros((0, 0, 0, 0), np.float32)
    log_normalizer = np.empty(q.shape[:-1], np.float32)
    attention_out = np.empty(q.shape, np.float32)
    array_kernels.attention_forward(q, k, v, 0.125, empty_keep, attention_out, log_normalizer)
    logits, targets = values(rows, vocab), rng.integers(0, vocab, rows)
    losses, normalizer = np.empty(rows, np.float32), np.empty(rows, np.float32)
    array_kernels.cross_entropy_forward(logits, targets, losses, normalizer)
    parameters = 12 * layers * width * width + (vocab + length) * width
    flat = [values(parameters) for _ in range(2)] + [np.abs(values(parameters)) for _ in range(2)]
    return {
        "layer_norm_forward": (2 * layers + 1, "layer_norm_forward", (x, weight, bias, 1e-5, out, mean, rstd)),
        "layer_norm_backward": (2 * layers + 1, "layer_norm_backward",
                                (values(rows, width), x, weight, mean, rstd, np.empty_like(x), np.empty_like(weight), np.empty_like(weight))),
        "gelu_forward": (layers, "gelu_forward", (hidden, np.empty_like(hidden))),
        "gelu_backward": (layers, "gelu_backward", (values(hidden.size), hidden, np.empty_like(hidden))),
        "attention_forward": (layers, "attention_forward", (q, k, v, 0.125, empty_keep, attention_out, log_normalizer)),
        "attention_backward": (layers, "attention_backward", (values(*q.shape), q, k, v, 0.125, empty_keep, log_normalizer,
                                                              np.empty(q.shape, np.float32), np.empty(q.shape, np.float32),
                                                              np.empty(q.shape, np.float32))),
        "cross_entropy_forward": (1, "cross_entropy_forward", (logits, targets, losses, normalizer)),
        "cross_entropy_backward": (1, "cross_entropy_backward", (logits, targets, normalizer, np.full(rows, 1.0 / rows, np.float32),
                                                                 np.empty_like(logits))),
        "embedding_backward": (2, "embedding_backward", (rng.integers(0, vocab, rows), values(rows, width),
                                                         np.empty((vocab, width), np.float32))),
        "adam_update": (1, "adam_update", (*flat, parameters // 2, 1e-3, 0.9, 0.95, 1e-8, 0.1, 3.0)),
    }


def time_call(function, arguments: tuple) -> float:
    start = time.perf_counter()
    function(*arguments)
    return time.perf_counter() - start


def compare(config: dict, repeats: int) -> list[tuple[str, float, float]]:
    """(kernel, ms per step with the array kernels, ms per step with numba's), medians of `repeats`."""
    cpu_kernels = kernels.for_device("cpu")
    rows = []
    for name, (calls, function, arguments) in kernel_calls(config, np.random.default_rng(0)).items():
        copies = [tuple(a.copy() if isinstance(a, np.ndarray) else a for a in arguments) for _ in range(2)]
        for kernel_set, copy in zip((array_kernels, cpu_kernels), copies):
            getattr(kernel_set, function)(*copy)  # compiles numba's once, before timing
        outputs = [next(a for a in reversed(copy) if isinstance(a, np.ndarray)) for copy in copies]
        if not np.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-4):
            raise SystemExit(f"{name}: the two kernel sets disagree")
        times: dict[str, list[float]] = {"array": [], "numba": []}
        for _ in range(repeats):
            times["array"].append(time_call(getattr(array_kernels, function), copies[0]))
            times["numba"].append(time_call(getattr(cpu_kernels, function), copies[1]))
        rows.append((name, calls * 1e3 * statistics.median(times["array"]), calls * 1e3 * statistics.median(times["numba"])))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on a tiny configuration")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    configs = {"tiny": TINY} if args.quick else {name: CONFIGS[name] for name in ("shakespeare-char-cpu", "large")}
    repeats = 2 if args.quick else args.repeats
    print(f"$ python benchmarks/bench_kernels.py {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    for name, config in configs.items():
        rows = compare(config, repeats)
        print(f"\nconfig {name}: ms per training step, median of {repeats}")
        print("| kernel | array | numba | array / numba |\n|---|---|---|---|")
        for kernel, array_ms, numba_ms in rows:
            print(f"| {kernel} | {array_ms:.2f} | {numba_ms:.2f} | {array_ms / max(numba_ms, 1e-9):.1f}x |")
        total_array, total_numba = sum(r[1] for r in rows), sum(r[2] for r in rows)
        print(f"| all | {total_array:.2f} | {total_numba:.2f} | {total_array / max(total_numba, 1e-9):.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
