"""parallel_for: blocks cover every row once, errors reach the caller, nested calls run inline; the ops
that use it still equal torch when cut into many blocks; row-local ops give bit-identical results for any
number of threads, matrix products equal ones up to float32 rounding; OpenBLAS yields its threads to the pool."""
import multiprocessing
import os
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tinygpt
from tinygpt import Tensor, mlops, parallel
from tinygpt.losses import CrossEntropyLoss
from tinygpt.nn import GPT
from tinygpt.parallel import matmul_rows, parallel_for, side_by_side
from tinygpt.tensor import apply_op

from conftest import assert_close, check_against_torch, random_values


def _blocks(rows: int, row_elements: int = 1) -> list[tuple[int, int]]:
    seen, lock = [], threading.Lock()

    def record(start: int, stop: int) -> None:
        with lock:
            seen.append((start, stop))

    parallel_for(np, rows, row_elements, record)
    return sorted(seen)


def test_blocks_cover_every_row_exactly_once(threads):
    threads(3)
    assert _blocks(10) == [(0, 3), (3, 6), (6, 10)]
    assert _blocks(2) == [(0, 1), (1, 2)]  # never more blocks than rows
    assert _blocks(0) == [(0, 0)]


def test_one_thread_or_small_work_is_one_call(threads):
    threads(1)
    assert _blocks(10) == [(0, 10)]
    threads(4)
    parallel.MIN_BLOCK_ELEMENTS = 1000
    assert _blocks(10, 150) == [(0, 10)]  # 1,500 elements: one block's worth
    assert _blocks(10, 250) == [(0, 5), (5, 10)]


def test_an_error_in_a_worker_reaches_the_caller(threads):
    threads(2)

    def fail_in_second_block(start: int, stop: int) -> None:
        if start > 0:
            raise ValueError("block failed")

    with pytest.raises(ValueError, match="block failed"):
        parallel_for(np, 8, 1, fail_in_second_block)


def test_parallel_for_inside_a_worker_runs_inline(threads):
    threads(2)
    inner = []

    def outer(start: int, stop: int) -> None:
        calls = _blocks(6)
        if start > 0:
            inner.append(calls)

    parallel_for(np, 2, 1, outer)
    assert inner == [[(0, 6)]]


def test_set_num_threads_rejects_less_than_one():
    with pytest.raises(ValueError, match="at least 1"):
        parallel.set_num_threads(0)


# ---- the ops, cut into blocks ------------------------------------------------------------------------
@pytest.mark.parametrize("count", [2, 3])
def test_gelu_in_blocks_matches_torch(threads, count, rng):
    threads(count)
    check_against_torch(lambda x: apply_op(mlops.GELU, x), lambda x: F.gelu(x, approximate="tanh"),
                        [random_values(rng, (5, 7, 9), -4, 4)], "permuted")


@pytest.mark.parametrize("count", [2, 3])
def test_layer_norm_in_blocks_matches_torch(threads, count, rng):
    threads(count)
    arrays = [random_values(rng, (5, 7, 16)), random_values(rng, (16,), 0.5, 1.5), random_values(rng, (16,))]
    check_against_torch(lambda x, w, b: apply_op(mlops.LayerNorm, x, w, b, eps=1e-5),
                        lambda x, w, b: F.layer_norm(x, (16,), w, b, eps=1e-5), arrays, ["stepped", "contiguous", "contiguous"])


@pytest.mark.parametrize("count", [2, 3])
def test_attention_in_blocks_matches_torch(threads, count, rng):
    threads(count)
    q, k, v = (random_values(rng, (5, 2, 9, 4)) for _ in range(3))
    check_against_torch(lambda q, k, v: apply_op(mlops.ScaledDotProductAttention, q, k, v),
                        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v], "permuted")


@pytest.mark.parametrize("count", [2, 3])
def test_linear_in_blocks_matches_torch(threads, count, rng):
    threads(count)
    arrays = [random_values(rng, (4, 5, 6)), random_values(rng, (6, 7)), random_values(rng, (7,))]
    check_against_torch(lambda x, w, b: apply_op(mlops.Linear, x, w, b), lambda x, w, b: x @ w + b, arrays,
                        ["permuted", "contiguous", "contiguous"])


def _gradients(dropout: float) -> tuple[float, dict[str, np.ndarray]]:
    tinygpt.manual_seed(7)
    model = GPT(16, 50, 2, 2, 32, dropout=dropout)
    rng = np.random.default_rng(0)
    x, y = (Tensor(rng.integers(0, 50, (6, 16))) for _ in range(2))
    loss = CrossEntropyLoss()(model(x), y, reduction="mean")
    loss.backward()
    return loss.item(), {name: p.grad.numpy() for name, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradients_with_threads_equal_those_of_one_thread(threads, dropout):
    """Equal up to float32 rounding: a matrix product cut into row blocks is several BLAS calls, and BLAS
    picks its kernel (and so its summation order) by size. Everything else is bit-identical (below)."""
    threads(1)
    one_loss, one_gradients = _gradients(dropout)
    threads(3)
    loss, gradients = _gradients(dropout)
    assert loss == pytest.approx(one_loss, rel=1e-6)
    for name, expected in one_gradients.items():
        assert_close(gradients[name], expected, 1e-5, name)


@pytest.mark.parametrize("operation, arrays", [
    (mlops.GELU, [(6, 7, 9)]),
    (mlops.LayerNorm, [(6, 7, 16), (16,), (16,)]),
    (mlops.ScaledDotProductAttention, [(6, 2, 9, 4)] * 3),
], ids=["GELU", "LayerNorm", "attention"])
def test_row_local_ops_are_bit_identical_for_any_number_of_threads(threads, operation, arrays, rng):
    values = [random_values(rng, shape) for shape in arrays]
    incoming = random_values(rng, arrays[0])
    results = []
    for count in (1, 3):
        threads(count)
        inputs = [Tensor(array, requires_grad=True) for array in values]
        out = apply_op(operation, *inputs)
        out.backward(Tensor(incoming))
        results.append([out.numpy()] + [tensor.grad.numpy() for tensor in inputs])
    for one, many in zip(*results):
        np.testing.assert_array_equal(many, one)


@pytest.mark.skipif(parallel._set_blas_threads is None, reason="numpy's BLAS is not an OpenBLAS the pool can steer")
def test_the_pool_runs_openblas_on_one_thread_and_gives_its_threads_back(threads):
    threads(2)
    parallel_for(np, 4, 1, lambda start, stop: None)  # starts the pool
    assert parallel._get_blas_threads() == 1
    threads(1)
    assert parallel._get_blas_threads() == parallel._blas_threads


def test_side_by_side_returns_each_result_in_order(threads):
    threads(2)
    assert side_by_side(np, 10, lambda: "first", lambda: "second", lambda: "third") == ["first", "second", "third"]
    threads(1)
    assert side_by_side(np, 10, lambda: 1, lambda: 2) == [1, 2]


@pytest.mark.parametrize("count", [1, 3])
def test_matmul_rows_matches_torch(threads, count, rng):
    threads(count)
    a, b = random_values(rng, (7, 5)), random_values(rng, (5, 4))
    assert_close(matmul_rows(np, a, b), torch.from_numpy(a) @ torch.from_numpy(b), 1e-5)
    strided = a.T[:, :3]  # a transposed, sliced view: the layout of x^T in Linear's weight gradient
    assert_close(matmul_rows(np, strided, b[:3]), torch.from_numpy(strided.copy()) @ torch.from_numpy(b[:3]), 1e-5)


def _double_in_blocks(values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    parallel_for(np, len(values), 1, lambda start, stop: np.multiply(values[start:stop], 2, out=out[start:stop]))
    return out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_pool_of_its_own(threads):
    threads(2)
    values = np.arange(8.0)
    _double_in_blocks(values)  # the parent's pool is running now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        doubled = pool.apply_async(_double_in_blocks, (values,)).get(timeout=60)  # hung before: dead threads
    np.testing.assert_array_equal(doubled, 2 * values)


@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 2), (16, 1)])
def test_the_pool_is_the_default_only_where_it_was_measured(cpus, expected, monkeypatch):
    monkeypatch.delenv("TINYGPT_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(parallel, "_set_blas_threads", parallel._set_blas_threads or (lambda count: None))
    assert parallel._default_threads() == expected
    monkeypatch.setenv("TINYGPT_NUM_THREADS", "3")
    assert parallel._default_threads() == 3
    monkeypatch.setenv("TINYGPT_NUM_THREADS", "two")
    with pytest.warns(UserWarning, match="TINYGPT_NUM_THREADS must be a whole number.*'two'"):
        assert parallel._default_threads() == expected
