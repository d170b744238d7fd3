"""The kernel sets: which one a device gets, the fallback without numba, and where compiled kernels are cached."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numba
import pytest

from tinygpt import kernels

KERNEL_NAMES = ["layer_norm_forward", "layer_norm_backward", "gelu_forward", "gelu_backward", "cross_entropy_forward",
                "cross_entropy_backward", "attention_forward", "attention_backward", "embedding_backward",
                "adam_update", "sgd_update", "matmul", "matmul_nt", "matmul_tn", "matmul_stacked", "at_once"]


def test_both_kernel_sets_define_the_same_kernels_with_the_same_arguments():
    import inspect

    from tinygpt.kernels import array, cpu
    for name in KERNEL_NAMES:
        numba_kernel = getattr(cpu, name)
        python_function = getattr(numba_kernel, "py_func", numba_kernel)  # the function numba compiled
        assert inspect.signature(python_function) == inspect.signature(getattr(array, name)), name


def test_the_cpu_gets_numbas_kernels_the_gpu_and_a_scoped_block_the_array_ones():
    from tinygpt.kernels import array, cpu
    assert kernels.for_device("cpu") is cpu
    assert kernels.for_device("cuda") is array
    with kernels.array_kernels_on_cpu():
        assert kernels.for_device("cpu") is array
    assert kernels.for_device("cpu") is cpu


def test_without_numba_the_cpu_runs_the_array_kernels_and_warns_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    monkeypatch.setattr(kernels, "_cpu_kernels", None)
    with pytest.warns(UserWarning, match="numba cannot be imported"):
        assert kernels.for_device("cpu") is kernels.array
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.for_device("cpu") is kernels.array


def test_the_cache_directory_is_numba_cache_dir_or_under_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert kernels.cache_directory() == tmp_path
    assert not kernels.cache_is_warm()  # an empty directory: the kernels would be compiled first
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kernels.cache_directory() == tmp_path / ".cache" / "tinygpt" / "numba"


def test_compiled_kernels_are_cached_where_cache_directory_says(monkeypatch):
    kernels.for_device("cpu")
    assert Path(numba.config.CACHE_DIR) == kernels.cache_directory()
    assert kernels.cache_is_warm()


def test_openmp_threads_spin_briefly_then_wait_unless_the_user_chose():
    """Spinning OpenMP threads took the cores from the products (318 vs 57 ms per step, measured)."""
    code = ("import os; from tinygpt import kernels; kernels.for_device('cpu'); "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    env = {key: value for key, value in os.environ.items() if key not in kernels.OPENMP_WAITING}

    def waiting(**chosen) -> str:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env | chosen)
        return run.stdout.strip() or run.stderr

    assert waiting() == "PASSIVE 1000"
    assert waiting(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None"
    assert waiting(GOMP_SPINCOUNT="5") == "PASSIVE 5"


PRODUCT_SHAPES = [(1, 1, 1), (3, 5, 2), (768, 128, 512), (7, 0, 4), (0, 3, 4), (257, 33, 65)]  # (rows, inner, columns)


@pytest.mark.parametrize("rows, inner, columns", PRODUCT_SHAPES)
def test_products_of_both_kernel_sets_equal_torchs_with_either_operand_transposed(kernel_set, threads, rows, inner, columns):
    import numpy as np
    import torch

    threads(2)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(shape).astype(np.float32) for shape in ((rows, inner), (inner, columns)))
    expected = (torch.from_numpy(a).double() @ torch.from_numpy(b).double()).numpy()
    for a_stored, b_stored in [(a, b), (a, b.T.copy().T), (a.T.copy().T, b)]:  # plain, b^T in place, a^T in place
        product = kernels.gemm(a_stored, b_stored)
        assert product.dtype == np.float32 and product.shape == (rows, columns)
        np.testing.assert_allclose(product, expected, rtol=1e-5, atol=1e-5 * max(inner, 1) ** 0.5)


@pytest.mark.parametrize("count, rows, inner, columns", [(1, 3, 5, 2), (4, 128, 384, 128), (5, 7, 0, 3), (3, 33, 17, 65)])
def test_stacked_products_of_both_kernel_sets_equal_torchs(kernel_set, threads, count, rows, inner, columns):
    """Stacks of matrices (Muon's Newton-Schulz), each whole matrix on one thread; either operand transposed."""
    import numpy as np
    import torch

    threads(2)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(shape).astype(np.float32) for shape in ((count, rows, inner), (count, inner, columns)))
    expected = (torch.from_numpy(a).double() @ torch.from_numpy(b).double()).numpy()
    for a_stored, b_stored in [(a, b), (a, b.swapaxes(1, 2).copy().swapaxes(1, 2)), (a.swapaxes(1, 2).copy().swapaxes(1, 2), b)]:
        product = kernels.gemm(a_stored, b_stored)
        assert product.dtype == np.float32 and product.shape == (count, rows, columns)
        np.testing.assert_allclose(product, expected, rtol=1e-5, atol=1e-5 * max(inner, 1) ** 0.5)


def test_products_at_once_equal_the_products_one_by_one(kernel_set, threads):
    """A Linear's two gradients, collected in one block and run together when it ends (each on half the threads)."""
    import numpy as np

    threads(2)
    rng = np.random.default_rng(2)
    g, w, x = (rng.standard_normal(shape).astype(np.float32) for shape in [(768, 384), (128, 384), (768, 128)])
    expected = (g @ w.T.astype(np.float64), x.T.astype(np.float64) @ g)
    with kernels.products_at_once("cpu"):
        grad_x, grad_w = kernels.gemm(g, w.T), kernels.gemm(x.T, g)
    for ours, reference in zip((grad_x, grad_w), expected):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5 * 768 ** 0.5)


def test_products_on_two_threads_equal_those_on_one_up_to_float32_rounding(threads):
    """Each thread computes whole rows of the product with the same inner sums, but BLAS may pick another order
    of the sum for another block size (its kernel for a block's edge): equal within float32 rounding."""
    import numpy as np

    rng = np.random.default_rng(1)
    a, b, c, d = (rng.standard_normal(shape).astype(np.float32) for shape in [(768, 128), (768, 512), (128, 512), (512, 128)])
    for x, y in [(a.T, b), (a, c), (a, d.T)]:  # a^T b, a c, a d^T: each operand as stored
        threads(1)
        one = kernels.gemm(x, y)
        threads(2)
        rounding = 4 * np.finfo(np.float32).eps * x.shape[1] ** 0.5 * np.abs(one).max()  # a sum's typical float32 error
        np.testing.assert_allclose(kernels.gemm(x, y), one, rtol=0, atol=rounding)


def test_the_products_on_blas_threads_give_blas_its_threads_back_afterwards(threads):
    from threadpoolctl import threadpool_info

    from tinygpt.kernels.products import on_blas_threads

    threads(2)
    kernels.for_device("cpu")  # loading the CPU kernels sets BLAS to one thread
    counts = lambda: {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}  # noqa: E731
    assert counts() == {1}
    with on_blas_threads(2):
        assert counts() == {2}
    assert counts() == {1}


def test_a_forked_child_computes_products_with_a_pool_of_its_own(threads):
    """The parent's product threads do not exist in a forked child: it must not wait for them."""
    import multiprocessing

    import numpy as np

    threads(2)
    a = np.ones((512, 256), dtype=np.float32)
    kernels.gemm(a, a.T)  # the parent's pool now exists
    child = multiprocessing.get_context("fork").Process(target=kernels.gemm, args=(a, a.T))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0


def test_the_cpu_exp_equals_numpys_at_the_edges_of_float32():
    """NaN stays NaN, +-inf and overflow give inf and 0 (a NaN once indexed outside the table of 2^n)."""
    import numpy as np
    from numba import njit

    from tinygpt.kernels.cpu import EXP_LOWEST, exp

    @njit
    def exp_of_each(x, out):
        for i in range(x.size):
            out[i] = exp(x[i])

    x = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 100.0, 88.7, 20.5, 1.0, 0.0, -1e-7, -30.0, -87.3, -100.0], np.float32)
    ours = np.empty_like(x)
    exp_of_each(x, ours)
    with np.errstate(over="ignore"):  # e^100 and up are inf in float32, as they should be
        expected = np.where(x < EXP_LOWEST, 0.0, np.exp(x.astype(np.float64))).astype(np.float32)  # below: 0, not subnormal
    np.testing.assert_allclose(ours, expected, rtol=2 * np.finfo(np.float32).eps)


def test_a_nan_logit_or_score_gives_nan_with_both_kernel_sets(kernel_set):
    """As PyTorch: NaN in, NaN out (the trainer then stops with one line), never a crash."""
    import numpy as np

    from tinygpt.kernels import array, cpu
    kernel = cpu if kernel_set == "numba" else array
    logits = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], np.float32)
    losses, normalizer = np.empty(2, np.float32), np.empty(2, np.float32)
    kernel.cross_entropy_forward(logits, np.array([0, 1]), losses, normalizer)
    assert np.isnan(losses[0]) and np.isfinite(losses[1])
    q, v = np.random.default_rng(0).standard_normal((2, 1, 1, 3, 4)).astype(np.float32)
    k = q.copy()
    k[0, 0, 1, 2] = np.nan  # key 1: the first query does not see it, the others do
    out, log_normalizer = np.empty_like(q), np.empty((1, 1, 3), np.float32)
    kernel.attention_forward(q, k, v, 0.5, np.zeros((0, 0, 0, 0), np.float32), out, log_normalizer)
    assert np.isfinite(out[0, 0, 0]).all() and np.isnan(out[0, 0, 1:]).all()
