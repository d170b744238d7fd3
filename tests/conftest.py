"""Shared oracle helpers: PyTorch (and numpy) are the references every op is compared with.

`assert_close(ours, theirs, rtol)` checks |a - b| <= rtol * max(1, max|b|): the error is measured
relative to the scale of the reference, so that values near zero are not held to an impossible
relative bound while large values are not let off with an absolute one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from threadpoolctl import threadpool_limits

import tinygpt
from tinygpt import Buffer, Tensor, kernels
from tinygpt.dataset import default_corpus_path

settings.register_profile("tinygpt", deadline=None, derandomize=True, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, derandomize=False, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tinygpt"))

# The commands the tests start run in one process, as `--ranks 1`: several tests change the command from inside
# (a crash injected in this process) and each of the others would pay MPI's start-up. tests/test_ranks.py runs
# the default, one rank per core, and removes this.
os.environ["TINYGPT_RANKS"] = "1"

SEED = 1234
LAYOUTS = ("contiguous", "permuted", "stepped", "expanded")


def pytest_addoption(parser):
    parser.addoption("--kernels", choices=("numba", "array"), default="numba",
                     help="the kernel set every test runs the CPU's fused ops with (kernel_set tests run both anyway)")


@pytest.fixture(autouse=True)
def kernels_of_the_run(request):
    """With --kernels=array, every test runs the array kernels on the CPU."""
    if request.config.getoption("--kernels") == "array":
        with kernels.array_kernels_on_cpu():
            yield
    else:
        yield


@pytest.fixture(autouse=True)
def fixed_seeds():
    """Every test starts from the same random state in TinyGPT, numpy and torch."""
    tinygpt.manual_seed(SEED)
    torch.manual_seed(SEED)
    yield


@pytest.fixture
def threads():
    """threads(n) sets TinyGPT's CPU thread count (BLAS's) for one test; restored afterwards."""
    before, blas = tinygpt.get_num_threads(), threadpool_limits(limits=None)  # records BLAS's threads
    yield tinygpt.set_num_threads
    tinygpt.set_num_threads(before)
    blas.restore_original_limits()


@pytest.fixture(params=["numba", "array"])
def kernel_set(request):
    """Run a test of a fused op with each kernel set on the CPU: numba's loops, then the array module's calls."""
    if request.param == "numba":
        yield request.param
        return
    with kernels.array_kernels_on_cpu():
        yield request.param


# A one-layer run of `tinygpt train` that takes about a second (the tests add --sample-tokens and the rest)
TINY_TRAIN_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--batch-size", "4",
                    "--eval-interval", "2", "--eval-iters", "2", "--warmup-iters", "1"]


@pytest.fixture(scope="module")
def compiled_tokenizer_loops() -> None:
    """The tokenizer's numba loops compiled before a test times an encode (a cold cache takes seconds)."""
    from tinygpt.tokenizer import fast, scanner

    scanner.prepare()
    fast.prepare()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, request) -> Path:
    """A directory with a small corpus (the head of Tiny Shakespeare), one per test module."""
    root = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    (root / "corpus.txt").write_text(default_corpus_path().read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def as_numpy(value: Any) -> np.ndarray:
    """float64 numpy view of a TinyGPT Tensor/Buffer, a torch tensor, a numpy array or a scalar."""
    if isinstance(value, (Tensor, Buffer)):
        return value.numpy().astype(np.float64)
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def assert_close(ours: Any, theirs: Any, rtol: float = 1e-5, what: str = "") -> None:
    """Same shape, NaN in the same places, and |a - b| <= rtol * max(1, max|b|) elsewhere."""
    a, b = as_numpy(ours), as_numpy(theirs)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != reference shape {b.shape}"
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: NaNs differ\nours={a}\nreference={b}"
    finite = ~np.isnan(b)
    if not finite.any():
        return
    a, b = a[finite], b[finite]
    assert np.array_equal(np.isinf(a), np.isinf(b)) and np.array_equal(a[np.isinf(b)], b[np.isinf(b)]), \
        f"{what}: infinities differ"
    a, b = a[~np.isinf(b)], b[~np.isinf(b)]
    if b.size == 0:
        return
    scale = max(1.0, float(np.abs(b).max()))
    error = float(np.abs(a - b).max())
    assert error <= rtol * scale, f"{what}: max error {error:.3g} > {rtol:g} * scale {scale:.3g}"


def to_torch(tensor: Tensor, requires_grad: bool | None = None) -> torch.Tensor:
    """A torch leaf with the same values (float32, or int64 for integer tensors)."""
    array = tensor.numpy()
    if array.dtype.kind in "iu":
        return torch.tensor(array, dtype=torch.int64)
    if requires_grad is None:
        requires_grad = tensor.requires_grad
    return torch.tensor(array, dtype=torch.float32, requires_grad=requires_grad)


def random_values(rng: np.random.Generator, shape: Sequence[int], low: float = -2.0, high: float = 2.0,
                  away_from_zero: float = 0.0) -> np.ndarray:
    """float32 values in [low, high]; with away_from_zero, values in (-x, x) are pushed out of it."""
    values = rng.uniform(low, high, size=tuple(shape))
    if away_from_zero:
        values = np.where(np.abs(values) < away_from_zero, np.copysign(away_from_zero, values) + values, values)
    return values.astype(np.float32)


def make_leaf(values: np.ndarray, layout: str = "contiguous", requires_grad: bool = True) -> Tensor:
    """A leaf Tensor holding `values` whose Buffer has the given memory layout.

    contiguous: row-major. permuted: a permute view of storage laid out in reverse dim order.
    stepped: a view with step 2 in every dim (step -2 in dim 0) into a larger storage.
    expanded: stride 0 in the first dim (the values are constant along it, see `expandable`).
    """
    values = np.asarray(values)
    if layout == "contiguous" or values.ndim == 0:
        buffer = Buffer(values.copy())
    elif layout == "permuted":
        order = tuple(reversed(range(values.ndim)))
        buffer = Buffer(np.ascontiguousarray(values.transpose(order))).permute(order)
    elif layout == "stepped":
        storage = np.full(tuple(2 * size + 1 for size in values.shape), np.nan, dtype=values.dtype)
        index = tuple(slice(0, 2 * size, 2) for size in values.shape)
        first = values.shape[0]
        if first > 0:
            storage[index] = values[::-1]
            index = (slice(2 * first - 2, None, -2),) + index[1:]
        else:
            storage[index] = values
        buffer = Buffer(storage)[index]
    elif layout == "expanded":
        assert np.all(values == values[:1]), "expanded layout needs values constant along dim 0"
        buffer = Buffer(values[:1].copy()).expand(values.shape)
    else:
        raise ValueError(layout)
    assert buffer.shape == values.shape and np.array_equal(buffer.numpy(), values, equal_nan=True)
    return Tensor(buffer, requires_grad=requires_grad and values.dtype.kind == "f")


def expandable(values: np.ndarray) -> np.ndarray:
    """The same shape, made constant along dim 0 so that the 'expanded' layout can hold it."""
    if values.ndim == 0 or values.shape[0] == 0:
        return values
    return np.ascontiguousarray(np.broadcast_to(values[:1], values.shape))


def check_against_torch(ours_fn: Callable[..., Tensor], torch_fn: Callable[..., torch.Tensor],
                        arrays: Sequence[np.ndarray], layouts: Sequence[str] | str = "contiguous",
                        rtol: float = 1e-5, grad_rtol: float | None = None, seed: int = SEED) -> tuple[Tensor, list[Tensor]]:
    """Run ours_fn on TinyGPT leaves and torch_fn on torch leaves with the same values; compare the
    forward result and, after backward of a random incoming gradient, every float input's gradient."""
    if isinstance(layouts, str):
        layouts = [layouts] * len(arrays)
    arrays = [expandable(a) if layout == "expanded" else a for a, layout in zip(arrays, layouts)]
    ours_inputs = [make_leaf(a, layout) for a, layout in zip(arrays, layouts)]
    torch_inputs = [to_torch(t) for t in ours_inputs]
    out, ref = ours_fn(*ours_inputs), torch_fn(*torch_inputs)
    assert out.dtype.name == str(ref.dtype).removeprefix("torch."), f"dtype {out.dtype} vs {ref.dtype}"
    assert_close(out, ref, rtol, "forward")
    if not ref.requires_grad:
        return out, ours_inputs
    incoming = np.random.default_rng(seed).standard_normal(ref.shape).astype(np.float32)
    out.backward(Tensor(incoming))
    ref.backward(torch.tensor(incoming))
    for i, (mine, theirs) in enumerate(zip(ours_inputs, torch_inputs)):
        if not theirs.requires_grad:
            assert mine.grad is None
            continue
        expected = theirs.grad if theirs.grad is not None else torch.zeros_like(theirs)
        assert mine.grad is not None, f"input {i} got no gradient"
        assert mine.grad.shape == mine.shape
        assert_close(mine.grad, expected, grad_rtol or rtol, f"gradient of input {i}")
    return out, ours_inputs


MEMORY_CAP_BYTES = 2 << 30  # address space of a capped subprocess: imports need ~0.6 GiB, a runaway asks for far more


def run_capped(args: Sequence[str], timeout: float = 120, memory: int = MEMORY_CAP_BYTES,
               extra_setup: Callable[[], None] | None = None, **kwargs):
    """Run `python -m tinygpt *args` (or any argv starting with a path) under an address-space cap and a timeout;
    `extra_setup` runs in the child before it starts (more limits)."""
    import resource
    import subprocess
    import sys

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if extra_setup is not None:
            extra_setup()

    argv = list(args) if str(args[0]).startswith(("/", sys.executable)) else [sys.executable, "-m", "tinygpt", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=cap_memory, **kwargs)


def assert_one_line_error(result, *fragments: str) -> None:
    """The command failed with exit status 1, no traceback, and one `tinygpt: error:` line holding every fragment."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("tinygpt: error: ")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, \
        f"status {result.returncode}, stderr:\n{result.stderr[-3000:]}"
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def small_gpt():
    """A short-context GPT (16 positions, 50 tokens) with weights large enough that greedy choices are far
    from ties and sampling distributions far from uniform."""
    from tinygpt.nn import GPT

    tinygpt.manual_seed(3)
    model = GPT(max_seq_length=16, vocab_size=50, num_layers=2, num_heads=2, embedding_dim=32)
    with tinygpt.no_grad():
        for _, parameter in model.named_parameters():
            parameter.assign(Tensor.normal(parameter.shape, std=0.3))
    return model
