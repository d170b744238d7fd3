"""The CuPy backend (device="cuda") against the CPU path and PyTorch. Skips without CuPy and a GPU.

CI has no GPU: these run only on a machine with one (see README, "GPU").
"""
import numpy as np
import pytest

from tinygpt import Tensor, apply_op, backend, mlops
from tinygpt.losses import CrossEntropyLoss
from tinygpt.nn import GPT
from tinygpt.optimizers import AdamW

pytestmark = pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA GPU")

CASES = {
    "linear": (mlops.Linear, [(2, 5, 8), (8, 6), (6,)], {}),
    "layer_norm": (mlops.LayerNorm, [(2, 5, 8), (8,), (8,)], {}),
    "gelu": (mlops.GELU, [(4, 7)], {}),
    "attention": (mlops.MultiHeadAttention, [(2, 6, 24)], {"num_heads": 2}),
    "softmax": (mlops.Softmax, [(3, 9)], {"axis": -1}),
    "matmul": (mlops.Matmul, [(3, 4, 5), (3, 5, 2)], {}),
}


def run_on(device: str, op, arrays, kwargs, grad_seed: int = 0):
    tensors = [Tensor(a, requires_grad=True, device=device) for a in arrays]
    out = apply_op(op, *tensors, **kwargs)
    grad = np.random.default_rng(grad_seed).standard_normal(out.shape).astype(np.float32)
    out.backward(Tensor(grad, device=device))
    return out.numpy(), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_on_gpu_equals_cpu(name, rng):
    op, shapes, kwargs = CASES[name]
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    cpu_out, cpu_grads = run_on("cpu", op, arrays, kwargs)
    gpu_out, gpu_grads = run_on("cuda", op, arrays, kwargs)
    np.testing.assert_allclose(gpu_out, cpu_out, rtol=1e-5, atol=1e-5)
    for gpu_grad, cpu_grad in zip(gpu_grads, cpu_grads):
        np.testing.assert_allclose(gpu_grad, cpu_grad, rtol=1e-5, atol=1e-5)


def test_cross_entropy_and_embedding_on_gpu_equal_cpu(rng):
    logits = rng.standard_normal((4, 6, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (4, 6))
    results = []
    for device in ("cpu", "cuda"):
        tensor = Tensor(logits, requires_grad=True, device=device)
        loss = CrossEntropyLoss()(tensor, Tensor(targets, device=device), reduction="mean")
        loss.backward()
        results.append((loss.item(), tensor.grad.numpy()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5, atol=1e-6)


def test_gpt_training_steps_on_gpu_follow_the_cpu(rng):
    """Three AdamW steps of a small GPT moved with Module.to('cuda') give the CPU's losses."""
    ids = rng.integers(0, 50, (2, 16))
    targets = rng.integers(0, 50, (2, 16))
    losses = {}
    for device in ("cpu", "cuda"):
        import tinygpt

        tinygpt.manual_seed(0)
        model = GPT(16, 50, 2, 2, 32).to(device)
        optimizer = AdamW(model, 1e-3)
        losses[device] = []
        for _ in range(3):
            loss = CrossEntropyLoss()(model(Tensor(ids, device=device)), Tensor(targets, device=device), reduction="mean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.update()
            losses[device].append(loss.item())
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-4)
