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
                "adam_update", "sgd_update"]


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


def test_openmp_threads_wait_instead_of_spinning_unless_the_user_chose():
    """Spinning OpenMP threads took the cores from BLAS's products (318 vs 57 ms per step, measured)."""
    code = "import os; from tinygpt import kernels; kernels.for_device('cpu'); print(os.environ['OMP_WAIT_POLICY'])"
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env | {"OMP_WAIT_POLICY": "ACTIVE"})
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert (default.stdout.strip(), chosen.stdout.strip()) == ("PASSIVE", "ACTIVE"), default.stderr + chosen.stderr
