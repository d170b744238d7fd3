"""FLOPs: of each op from its inputs' shapes, of a GPT training step from its shape, and the machine's peak.

Only the products count (matmul, linear, attention): 2 FLOPs per multiply-add, as PaLM's MFU and nanoGPT's
estimate_mfu count them. Elementwise ops, norms and the loss are a few FLOPs per element, under 1% of a
GPT's step, and count as 0. Attention counts the whole T x T square of scores, causal or not, as PaLM and
nanoGPT count it (the CPU kernels compute it by blocks of queries: about 5/8 of it at T = 256).
"""
from __future__ import annotations

import functools
import math
import time

import numpy as np

from tinygpt import backend, mlops
from tinygpt.buffer import Buffer, matmul
from tinygpt.mlops import Operation


def operation_flops(operation: Operation, buffers: list[Buffer | None]) -> tuple[int, int]:
    """(forward, backward) FLOPs of an op applied to these input buffers; (0, 0) for ops that are not products."""
    needs_grad = operation.needs_input_grad
    if isinstance(operation, mlops.Linear):
        x, weight = buffers[0], buffers[1]
        products = 2 * math.prod(x.shape[:-1]) * weight.shape[0] * weight.shape[1]
        return products, products * (needs_grad[0] + needs_grad[1])
    if isinstance(operation, mlops.Matmul):
        x, y = buffers
        rows = x.shape[-2] if x.ndim > 1 else 1
        columns = y.shape[-1] if y.ndim > 1 else 1
        batch = math.prod(np.broadcast_shapes(x.shape[:-2], y.shape[:-2]))
        products = 2 * batch * rows * x.shape[-1] * columns
        return products, products * (needs_grad[0] + needs_grad[1])
    if isinstance(operation, mlops.MultiHeadAttention):
        batch, length, packed = buffers[0].shape
        return attention_flops(batch * length * length * packed // 3, any(needs_grad))
    if isinstance(operation, mlops.ScaledDotProductAttention):
        q, k, v = buffers[:3]
        heads = math.prod(q.shape[:-2])
        return attention_flops(heads * q.shape[-2] * k.shape[-2] * q.shape[-1], any(needs_grad))
    return 0, 0


def attention_flops(score_products: int, backward: bool) -> tuple[int, int]:
    """Attention of `score_products` = heads x queries x keys x head size multiply-adds per product:
    forward q k^T and P v (2 products), backward dP = dy v^T, dv = P^T dy, dq = dS k, dk = dS^T q (4)."""
    forward = 2 * 2 * score_products
    return forward, 2 * forward if backward else 0


def gpt_step_flops(num_parameters: int, num_layers: int, embedding_dim: int, seq_length: int, tokens: int) -> int:
    """nanoGPT's estimate_mfu (PaLM appendix B): 6 N per token for the products of N weights (forward 2 N,
    backward 4 N) plus 12 L C T per token for attention's, times the tokens of the step."""
    return tokens * (6 * num_parameters + 12 * num_layers * embedding_dim * seq_length)


def mfu(flops: float, seconds: float, peak_flops_per_second: float) -> float:
    """Model FLOPs utilisation: the share of the peak that `flops` done in `seconds` reach."""
    return flops / seconds / peak_flops_per_second if seconds > 0 and peak_flops_per_second > 0 else 0.0


@functools.lru_cache(maxsize=None)
def measure_peak_flops(device: str = "cpu", size: int = 1024, repeats: int = 3) -> float:
    """The machine's float32 FLOP/s, measured once per process: the best of `repeats` products of two
    size x size matrices, through the same GEMM the ops use."""
    xp = backend.array_module(device)
    rng = xp.random.default_rng(0)  # its own generator: measuring leaves the run's random streams alone
    a, b = (rng.standard_normal((size, size), dtype=xp.float32) for _ in range(2))
    matmul(xp, a, b)  # warm up: threads, first-call costs
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(xp, a, b)
        synchronize(xp)
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best


def synchronize(xp) -> None:
    """Wait for the GPU's queued work (CuPy runs asynchronously); nothing on the CPU."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


__all__ = ["operation_flops", "attention_flops", "gpt_step_flops", "mfu", "measure_peak_flops", "synchronize"]
