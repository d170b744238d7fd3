"""Tensor and the array world: numpy's __array__ protocol, DLPack both ways with torch and numpy,
Tensor(np_array) keeping its dtype, Tensor(torch_tensor), and the copy / no-copy rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tinygpt import DType, Tensor


def test_np_asarray_gives_the_values_with_their_dtype():
    x = Tensor([[1.0, 2.0], [3.0, 4.0]])
    array = np.asarray(x)
    assert array.dtype == np.float32 and array.shape == (2, 2)
    assert np.array_equal(array, [[1.0, 2.0], [3.0, 4.0]])
    assert np.asarray(Tensor([1, 2, 3])).dtype == np.int32
    assert np.asarray(Tensor([True, False])).dtype == np.bool_


def test_np_asarray_shares_storage_and_np_array_copies():
    x = Tensor([1.0, 2.0, 3.0])
    shared, copied = np.asarray(x), np.array(x)
    x.buffer.data[0] = 9.0
    assert shared[0] == 9.0 and copied[0] == 1.0


def test_array_protocol_honours_dtype_and_copy_false_on_a_view():
    x = Tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert np.asarray(x, dtype=np.float64).dtype == np.float64
    view = np.asarray(x.transpose(0, 1), copy=False)
    assert view.shape == (3, 2) and np.shares_memory(view, x.buffer.data)
    assert np.array_equal(view, x.numpy().T)


def test_numpy_functions_accept_tensors():
    x = Tensor([[1.0, -2.0], [3.0, 4.0]])
    assert np.allclose(np.linalg.norm(x), np.linalg.norm(x.numpy()))
    assert np.abs(x).tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("dtype", ["float32", "float16", "int32", "int64", "bool"])
def test_tensor_of_a_numpy_array_keeps_the_dtype(dtype):
    array = (np.arange(6) % 2).reshape(2, 3).astype(dtype)
    tensor = Tensor(array)
    assert tensor.dtype == DType(dtype)
    assert np.array_equal(tensor.numpy(), array)


def test_tensor_of_a_numpy_array_copies():
    array = np.ones(3, dtype=np.float32)
    tensor = Tensor(array)
    array[0] = 5.0
    assert tensor.to_python() == [1.0, 1.0, 1.0]


def test_torch_from_dlpack_shares_our_storage():
    x = Tensor([[1.0, 2.0], [3.0, 4.0]])
    shared = torch.from_dlpack(x)
    assert shared.dtype == torch.float32 and shared.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    shared[0, 0] = 7.0
    assert x.to_python()[0][0] == 7.0


def test_torch_from_dlpack_of_a_strided_view_keeps_its_strides():
    x = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    view = x.transpose(0, 1)[1:, ::2]
    shared = torch.from_dlpack(view)
    assert shared.tolist() == view.to_python()
    assert np.shares_memory(shared.numpy(), x.buffer.data)


def test_a_reversed_view_exports_a_copy_torch_can_read():
    x = Tensor([1.0, 2.0, 3.0])
    assert torch.from_dlpack(x[::-1]).tolist() == [3.0, 2.0, 1.0]


def test_dlpack_device_is_cpu():
    assert Tensor([1.0]).__dlpack_device__() == (1, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int32, torch.int64, torch.bool])
def test_from_dlpack_of_torch_shares_storage_and_keeps_dtype(dtype):
    source = (torch.arange(6) % 2).reshape(2, 3).to(dtype)
    tensor = Tensor.from_dlpack(source)
    assert tensor.dtype == DType(str(dtype).removeprefix("torch."))
    assert tensor.to_python() == source.tolist()
    source[0, 0] = 1
    assert tensor.to_python()[0][0] == source[0, 0].item()


def test_from_dlpack_of_a_transposed_torch_tensor_is_a_view():
    source = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()
    tensor = Tensor.from_dlpack(source)
    assert tensor.shape == (3, 2) and tensor.to_python() == source.tolist()
    source[2, 1] = -1.0
    assert tensor.to_python()[2][1] == -1.0


def test_from_dlpack_of_a_numpy_array_shares_storage():
    array = np.zeros((2, 2), dtype=np.float32)
    tensor = Tensor.from_dlpack(array)
    array[1, 1] = 3.0
    assert tensor.to_python() == [[0.0, 0.0], [0.0, 3.0]]


def test_from_dlpack_of_an_unsupported_dtype_copies_into_the_nearest():
    source = torch.tensor([1.0, 2.5], dtype=torch.float64)
    tensor = Tensor.from_dlpack(source)
    assert tensor.dtype == DType.float32 and tensor.to_python() == [1.0, 2.5]


def test_tensor_of_a_torch_tensor_copies_its_values():
    source = torch.tensor([[1.0, 2.0]], dtype=torch.float32)
    tensor = Tensor(source, requires_grad=True)
    source[0, 0] = 5.0
    assert tensor.dtype == DType.float32 and tensor.requires_grad and tensor.to_python() == [[1.0, 2.0]]
    assert Tensor(torch.tensor([1, 2])).dtype == DType.int64


def test_a_round_trip_through_torch_keeps_values_and_gradients_match():
    values = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    ours = Tensor(values, requires_grad=True)
    theirs = torch.from_dlpack(Tensor(values)).clone().requires_grad_()
    (ours.tanh() * 2.0).sum().backward()
    (theirs.tanh() * 2.0).sum().backward()
    assert np.allclose(np.asarray(ours.grad), theirs.grad.numpy(), atol=1e-6)
    assert np.array_equal(Tensor.from_dlpack(torch.from_dlpack(ours)).numpy(), values)
