"""Threads: set_num_threads sets BLAS's, an engine runs on one unless told, results do not depend on the count,
and importing tinygpt changes nothing process-wide."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import tinygpt
from conftest import assert_close, random_values
from tinygpt import Tensor, apply_op, mlops
from tinygpt.losses import CrossEntropyLoss
from tinygpt.nn import GPT
from tinygpt.threads import blas_threads


def _blas_thread_counts() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_set_num_threads_sets_blas_threads(threads):
    threads(1)
    assert tinygpt.get_num_threads() == 1 and set(_blas_thread_counts()) == {1}
    threads(2)
    assert tinygpt.get_num_threads() == 2 and set(_blas_thread_counts()) == {2}


def test_an_engine_computes_on_one_thread_unless_set_num_threads_chose(threads, monkeypatch):
    from tinygpt import threads as threads_module

    threads(2)
    monkeypatch.setattr(threads_module, "_chosen", None)  # as in a process where nobody chose
    with threads_module.engine_threads():
        assert set(_blas_thread_counts()) == {1}
    assert set(_blas_thread_counts()) == {2}
    threads(2)
    with threads_module.engine_threads():
        assert set(_blas_thread_counts()) == {2}


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_set_num_threads_rejects_anything_but_a_whole_number_of_at_least_one(count):
    with pytest.raises(ValueError, match="at least 1"):
        tinygpt.set_num_threads(count)


def test_blas_threads_is_scoped(threads):
    before = _blas_thread_counts()
    with blas_threads(1):
        assert set(_blas_thread_counts()) == {1}
    assert _blas_thread_counts() == before


def test_importing_tinygpt_changes_no_thread_setting():
    script = ("import json, numpy; from threadpoolctl import threadpool_info; before = threadpool_info(); import tinygpt; "
              "print(json.dumps([before == threadpool_info(), 'numba' in __import__('sys').modules]))")
    unchanged, imported_numba = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                          check=True).stdout)
    assert unchanged and not imported_numba


def _gradients(dropout: float) -> tuple[float, dict[str, np.ndarray]]:
    tinygpt.manual_seed(7)
    model = GPT(16, 50, 2, 2, 32, dropout=dropout)
    rng = np.random.default_rng(0)
    x, y = (Tensor(rng.integers(0, 50, (6, 16))) for _ in range(2))
    loss = CrossEntropyLoss()(model(x), y, reduction="mean")
    loss.backward()
    return loss.item(), {name: p.grad.numpy() for name, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradients_with_two_threads_equal_those_of_one(threads, dropout):
    """Equal up to float32 rounding: BLAS may pick another summation order for another thread count;
    the kernels themselves are bit-identical (below)."""
    threads(1)
    one_loss, one_gradients = _gradients(dropout)
    threads(2)
    loss, gradients = _gradients(dropout)
    assert loss == pytest.approx(one_loss, rel=1e-6)
    for name, expected in one_gradients.items():
        assert_close(gradients[name], expected, 1e-5, name)


@pytest.mark.parametrize("operation, arrays", [
    (mlops.GELU, [(6, 7, 9)]),
    (mlops.LayerNorm, [(6, 7, 16), (16,), (16,)]),
    (mlops.ScaledDotProductAttention, [(6, 2, 9, 4)] * 3),
], ids=["GELU", "LayerNorm", "attention"])
def test_kernels_are_bit_identical_for_any_number_of_threads(threads, operation, arrays, rng):
    values = [random_values(rng, shape) for shape in arrays]
    incoming = random_values(rng, arrays[0])
    results = []
    for count in (1, 2):
        threads(count)
        inputs = [Tensor(array, requires_grad=True) for array in values]
        out = apply_op(operation, *inputs)
        out.backward(Tensor(incoming))
        results.append([out.numpy()] + [tensor.grad.numpy() for tensor in inputs])
    for one, many in zip(*results):
        np.testing.assert_array_equal(many, one)
