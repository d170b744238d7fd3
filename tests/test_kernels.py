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
                "adam_update", "sgd_update", "rotary_qk_norm_forward", "rotary_qk_norm_backward"]


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
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kernels.cache_directory() == tmp_path / ".cache" / "tinygpt" / "numba"


def test_compiled_kernels_are_cached_where_cache_directory_says(monkeypatch):
    kernels.for_device("cpu")
    assert Path(numba.config.CACHE_DIR) == kernels.cache_directory()


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


def test_the_cpu_exp_is_within_two_ulp_of_the_exact_value_over_all_of_float32s_normal_results():
    import numpy as np
    from numba import njit

    from tinygpt.kernels.cpu import EXP_HIGHEST, EXP_LOWEST, exp

    @njit
    def exp_of_each(x, out):
        for i in range(x.size):
            out[i] = exp(x[i])

    x = np.linspace(EXP_LOWEST, EXP_HIGHEST, 2_000_001, dtype=np.float32)
    ours = np.empty_like(x)
    exp_of_each(x, ours)
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert (np.abs(ours - exact) / ulp).max() <= 2.0  # the docstring's promise
