"""Per-token generation time against context length: GPT.generate (KV cache) vs GPT.generate_uncached.

With the KV cache each new token runs the model on one position and attends over the cached keys,
so its cost barely grows with the context T; without it, every token recomputes all T positions,
so its cost grows with T. Both decode greedily from the same weights and the same prompt, and the
script checks that they produce the same tokens.

The cached time per token is measured as (time of prompt + 1 + n tokens - time of prompt + 1 token) / n,
which removes the one-off prefill of the prompt; the uncached time is the time of n tokens / n.
Each measurement is the best of --repeats runs.

    python benchmarks/bench_generate.py            # the full table
    python benchmarks/bench_generate.py --quick    # a smoke run of a few seconds
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np

import tinygpt
from tinygpt import Tensor
from tinygpt.nn import GPT


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(model: GPT, context: int, new_tokens: int, repeats: int, vocab_size: int) -> tuple[float, float]:
    """(cached, uncached) seconds per generated token once the context holds `context` tokens."""
    prompt = Tensor(np.random.default_rng(context).integers(0, vocab_size, (1, context)))
    cached = model.generate_greedy(prompt, 1 + new_tokens).numpy()
    uncached = model.generate_uncached(prompt, 1 + new_tokens).numpy()
    if not np.array_equal(cached, uncached):
        raise AssertionError(f"T={context}: the KV cache and the uncached path generated different tokens")
    prefill = best_time(lambda: model.generate_greedy(prompt, 1), repeats)
    with_cache = best_time(lambda: model.generate_greedy(prompt, 1 + new_tokens), repeats)
    without_cache = best_time(lambda: model.generate_uncached(prompt, new_tokens), repeats)
    return max(with_cache - prefill, 0.0) / new_tokens, without_cache / new_tokens


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model and short contexts (smoke run)")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=512, help="max_seq_length of the model")
    parser.add_argument("--contexts", type=int, nargs="+", default=[16, 32, 64, 128, 256, 480],
                        help="prompt lengths T (T + 1 + new tokens must fit in the block size)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens timed per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.n_layer, arguments.n_head, arguments.n_embd, arguments.vocab_size = 2, 2, 64, 256
        arguments.block_size, arguments.contexts, arguments.new_tokens, arguments.repeats = 128, [8, 32, 96], 8, 2
    too_long = [t for t in arguments.contexts if t + 1 + arguments.new_tokens > arguments.block_size]
    if too_long:
        parser.error(f"contexts {too_long} + 1 + {arguments.new_tokens} new tokens exceed --block-size "
                     f"{arguments.block_size} (the cache would be dropped by cropping)")
    return arguments


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    tinygpt.manual_seed(arguments.seed)
    model = GPT(arguments.block_size, arguments.vocab_size, arguments.n_layer, arguments.n_head, arguments.n_embd)
    model.eval()

    print(f"GPT: {arguments.n_layer} layers, {arguments.n_head} heads, {arguments.n_embd} dims, "
          f"vocab {arguments.vocab_size}, block size {arguments.block_size}, {model.num_parameters():,} parameters")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}; best of {arguments.repeats}, {arguments.new_tokens} tokens per measurement")
    print()
    print(f"{'T':>6} {'cached ms/token':>16} {'uncached ms/token':>18} {'uncached / cached':>18}")
    for context in arguments.contexts:
        cached, uncached = measure(model, context, arguments.new_tokens, arguments.repeats, arguments.vocab_size)
        ratio = uncached / cached if cached > 0 else float("inf")
        print(f"{context:>6} {cached * 1e3:>16.2f} {uncached * 1e3:>18.2f} {ratio:>17.1f}x", flush=True)
    print()
    print("reproduce with:", shlex.join(["python", "benchmarks/bench_generate.py", *argv]))


if __name__ == "__main__":
    main()
