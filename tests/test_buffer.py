"""Buffer against numpy: views (and that they never copy), reductions, construction, clear errors.

The property tests draw random shapes and random chains of movement ops with hypothesis; every
element of the test arrays is distinct, so a wrong stride or offset cannot go unnoticed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt
from tinygpt import Buffer, DType

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)


def distinct_values(shape) -> np.ndarray:
    """0, 1, 2, ... as float32 (exact: sums of these stay below 2**24 in these tests)."""
    return np.arange(math.prod(shape), dtype=np.float32).reshape(shape)


def assert_same(buffer: Buffer, expected: np.ndarray) -> None:
    expected = np.asarray(expected)
    assert buffer.shape == expected.shape
    assert np.array_equal(buffer.numpy(), expected)


def shares_storage(view: Buffer, base: Buffer) -> bool:
    return view.data is base.data


# ---- strategies for movement ops -------------------------------------------------------------------
def prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


@st.composite
def reshape_targets(draw, shape) -> tuple[int, ...]:
    """A random shape with the same number of elements (sometimes with one -1 to infer)."""
    numel = math.prod(shape)
    if numel == 0:
        sizes = draw(st.lists(st.integers(1, 3), max_size=3))
        sizes.insert(draw(st.integers(0, len(sizes))), 0)
        return tuple(sizes)
    factors = draw(st.permutations(prime_factors(numel)))
    cuts = sorted(draw(st.lists(st.integers(0, len(factors)), max_size=3)))
    bounds = [0] + cuts + [len(factors)]
    sizes = [math.prod(factors[a:b]) for a, b in zip(bounds, bounds[1:])]
    for _ in range(draw(st.integers(0, 2))):
        sizes.insert(draw(st.integers(0, len(sizes))), 1)
    if sizes and draw(st.booleans()):
        sizes[draw(st.integers(0, len(sizes) - 1))] = -1
    return tuple(sizes)


@st.composite
def expand_targets(draw, shape) -> tuple[int, ...]:
    return tuple(draw(st.integers(0, 3)) if size == 1 else size for size in shape)


@st.composite
def movement(draw, shape):
    """One movement op that fits `shape`, as (name, argument)."""
    kind = draw(st.sampled_from(["reshape", "expand", "permute", "index"]))
    if kind == "reshape":
        return kind, draw(reshape_targets(shape))
    if kind == "expand":
        return kind, draw(expand_targets(shape))
    if kind == "permute":
        return kind, tuple(draw(st.permutations(range(len(shape)))))
    return kind, draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))


def apply_numpy(array: np.ndarray, op) -> np.ndarray:
    name, argument = op
    if name == "reshape":
        return array.reshape(argument)
    if name == "expand":
        return np.broadcast_to(array, argument)
    if name == "permute":
        return array.transpose(argument)
    index = argument if isinstance(argument, tuple) else (argument,)
    if not any(item is Ellipsis for item in index):
        index += (Ellipsis,)  # so that numpy returns a 0-d view, not a scalar copy, for an all-int index
    return array[index]


def apply_buffer(buffer: Buffer, op) -> Buffer:
    name, argument = op
    return getattr(buffer, name)(argument) if name != "index" else buffer[argument]


# ---- views --------------------------------------------------------------------------------------------
@given(SHAPES, st.data())
def test_chains_of_movement_ops_match_numpy_and_share_storage_like_numpy(shape, data):
    base_array = distinct_values(shape)
    base = Buffer(base_array)
    array, buffer = base_array, base
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(movement(buffer.shape))
        previous = buffer
        array, buffer = apply_numpy(array, op), apply_buffer(buffer, op)
        assert_same(buffer, array)
        if op[0] != "reshape":
            assert shares_storage(buffer, previous), "expand / permute / index are views"
        if array.size:  # np.shares_memory is False for any empty array
            assert shares_storage(buffer, base) == np.shares_memory(array, base_array), op


@given(SHAPES, st.data())
def test_expand_permute_and_index_never_copy(shape, data):
    base = Buffer(distinct_values(shape))
    buffer = base
    for _ in range(3):
        name, argument = data.draw(movement(buffer.shape).filter(lambda op: op[0] != "reshape"))
        buffer = apply_buffer(buffer, (name, argument))
        assert shares_storage(buffer, base)


@given(SHAPES, st.data())
def test_reshape_of_a_contiguous_buffer_is_a_view(shape, data):
    base = Buffer(distinct_values(shape))
    target = data.draw(reshape_targets(shape))
    reshaped = base.reshape(target)
    assert shares_storage(reshaped, base)
    assert_same(reshaped, distinct_values(shape).reshape(target))


def test_reshape_copies_exactly_when_numpy_does():
    base_array = distinct_values((4, 6))
    base = Buffer(base_array)
    transposed, transposed_array = base.permute((1, 0)), base_array.T
    flat = transposed.reshape((24,))
    assert not shares_storage(flat, base) and not np.shares_memory(transposed_array.reshape(24), base_array)
    assert_same(flat, transposed_array.reshape(24))
    split = transposed.reshape((2, 3, 4))  # splitting one dim keeps a view even of a transposed buffer
    assert shares_storage(split, base) and np.shares_memory(transposed_array.reshape(2, 3, 4), base_array)
    assert_same(split, transposed_array.reshape(2, 3, 4))


@given(SHAPES, st.data())
def test_indexing_matches_numpy(shape, data):
    array = distinct_values(shape)
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    view = Buffer(array)[index]
    assert_same(view, np.asarray(array[index]))


def test_indexing_with_negative_steps_and_offsets():
    array = distinct_values((5, 6, 7))
    buffer = Buffer(array)
    for index in [(slice(None, None, -1),), (slice(4, 0, -2), Ellipsis, slice(-1, None, -3)), (-1, None, slice(5, 1, -1), 3),
                  (Ellipsis, -7), (slice(-100, 100, 2),), (slice(3, 3),), (None, Ellipsis, None)]:
        assert_same(buffer[index], array[index])
    assert_same(buffer[::-1][::-2][1:], array[::-1][::-2][1:])


@given(SHAPES, st.data())
def test_setitem_writes_through_to_the_storage_like_numpy(shape, data):
    array = distinct_values(shape)
    buffer = Buffer(array.copy())
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    array[index] = -1.0
    buffer[index] = -1.0
    assert_same(buffer, array)


def test_setitem_through_a_permuted_view_changes_the_base():
    array = distinct_values((3, 4))
    base = Buffer(array.copy())
    view = base.permute((1, 0))
    view[1:3, 0] = Buffer(np.array([100.0, 200.0], np.float32))
    array.T[1:3, 0] = [100.0, 200.0]
    assert_same(base, array)


# ---- reductions ---------------------------------------------------------------------------------------
@st.composite
def axes_for(draw, ndim):
    if draw(st.booleans()) or ndim == 0:
        return None
    chosen = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    chosen = [axis - ndim if draw(st.booleans()) else axis for axis in chosen]
    return chosen[0] if len(chosen) == 1 and draw(st.booleans()) else tuple(chosen)


@given(SHAPES, st.data(), st.booleans(), st.sampled_from(["sum", "max"]))
def test_reductions_of_views_match_numpy(shape, data, keepdim, name):
    array, buffer = distinct_values(shape) - 10.0, Buffer(distinct_values(shape) - 10.0)
    for _ in range(data.draw(st.integers(0, 2))):  # reduce a view, not only a contiguous buffer
        op = data.draw(movement(buffer.shape))
        array, buffer = apply_numpy(array, op), apply_buffer(buffer, op)
    axes = data.draw(axes_for(buffer.ndim))
    normalized = tuple(range(array.ndim)) if axes is None else np.atleast_1d(axes) % max(array.ndim, 1)
    if name == "max" and any(array.shape[axis] == 0 for axis in normalized):
        with pytest.raises(ValueError, match="empty"):
            buffer.max(axes, keepdim)
        return
    expected = getattr(np, name)(array, axis=axes, keepdims=keepdim)
    result = getattr(buffer, name)(axes, keepdim)
    assert result.dtype == DType.float32
    assert_same(result, expected)


def test_reduction_rejects_bad_and_repeated_axes():
    buffer = Buffer(distinct_values((2, 3)))
    with pytest.raises(IndexError, match=r"axis 2 .*shape \(2, 3\) \(2 dimensions\)"):
        buffer.sum(2)
    with pytest.raises(IndexError, match="axis -3"):
        buffer.max((0, -3))
    with pytest.raises(ValueError, match="repeated axis"):
        buffer.sum((1, -1))


# ---- compute ------------------------------------------------------------------------------------------
@given(SHAPES, st.data())
def test_elementwise_ops_on_views_match_numpy(shape, data):
    array, buffer = distinct_values(shape) + 1.0, Buffer(distinct_values(shape) + 1.0)
    op = data.draw(movement(shape))
    array, buffer = apply_numpy(array, op), apply_buffer(buffer, op)
    other = np.full(array.shape, 3.0, np.float32)
    for ours, theirs in [(buffer + Buffer(other), array + other), (buffer * 2.0, array * 2.0), (2.0 - buffer, 2.0 - array),
                         (buffer / Buffer(other), array / other), (buffer ** 2.0, array ** 2.0), (-buffer, -array),
                         (buffer.maximum(Buffer(other)), np.maximum(array, other)), (buffer.log(), np.log(array)),
                         ((buffer * 0.01).exp(), np.exp(array * np.float32(0.01)))]:
        assert ours.dtype == DType.float32
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6)
        assert ours.shape == theirs.shape and ours.is_contiguous()


def test_comparisons_return_bool_buffers_and_float_converts():
    buffer = Buffer([1.0, 2.0, 3.0])
    less = buffer < Buffer([2.0, 2.0, 2.0])
    assert less.dtype == DType.bool and less.to_python() == [True, False, False]
    assert (buffer == 2.0).to_python() == [False, True, False]
    assert (buffer >= 2.0).float().to_python() == [0.0, 1.0, 1.0]


def test_batched_matmul_broadcasts_leading_dims_like_numpy(rng):
    a, b = rng.standard_normal((2, 1, 3, 4)).astype(np.float32), rng.standard_normal((5, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(Buffer(a).matmul(Buffer(b)).numpy(), a @ b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose((Buffer(a[0, 0]) @ Buffer(b[0])).numpy(), a[0, 0] @ b[0], rtol=1e-5, atol=1e-6)


def test_concatenate_and_tril_match_numpy():
    a, b = distinct_values((2, 3)), distinct_values((2, 2))
    assert_same(Buffer.concatenate([Buffer(a), Buffer(b)], axis=-1), np.concatenate([a, b], axis=-1))
    square = distinct_values((2, 4, 4))
    for diagonal in (-1, 0, 2):
        assert_same(Buffer(square).permute((0, 2, 1)).tril(diagonal), np.tril(square.transpose(0, 2, 1), diagonal))


def test_factories_give_the_requested_shape_and_dtype():
    assert_same(Buffer.zeros((2, 3)), np.zeros((2, 3), np.float32))
    assert_same(Buffer.ones((2,), DType.int32), np.ones(2, np.int32))
    assert Buffer.ones((2,), DType.int32).dtype == DType.int32
    assert Buffer.zeros(()).shape == ()
    assert Buffer.uniform((100,), -1.0, 1.0).numpy().min() >= -1.0
    assert Buffer.normal((3, 4)).dtype == DType.float32


def test_random_factories_are_reproducible_with_manual_seed():
    tinygpt.manual_seed(3)
    first = (Buffer.uniform((5,)).numpy(), Buffer.normal((5,)).numpy())
    tinygpt.manual_seed(3)
    second = (Buffer.uniform((5,)).numpy(), Buffer.normal((5,)).numpy())
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


# ---- construction -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, dtype", [(3, DType.int32), (2.5, DType.float32), (True, DType.bool),
                                          (np.float64(1.5), DType.float32), (np.int64(7), DType.int32)])
def test_buffer_from_a_scalar_is_0d_with_a_deduced_dtype(value, dtype):
    buffer = Buffer(value)
    assert buffer.shape == () and buffer.dtype == dtype and buffer.ndim == 0 and buffer.numel == 1
    assert buffer.to_python() == value and buffer.item() == value


@given(hnp.arrays(st.sampled_from([np.float32, np.int32, np.bool_]), SHAPES.filter(lambda shape: 0 not in shape[:-1])))
def test_buffer_from_nested_lists_round_trips(array):
    """(Only shapes that nested lists can express: [] has shape (0,), whatever shape made it.)"""
    buffer = Buffer(array.tolist())
    assert buffer.shape == array.shape
    if array.size:
        assert buffer.dtype == {"f": DType.float32, "i": DType.int32, "b": DType.bool}[array.dtype.kind]
    assert np.array_equal(buffer.numpy(), array, equal_nan=array.dtype.kind == "f")


@pytest.mark.parametrize("dtype, expected", [(np.float32, DType.float32), (np.float64, DType.float32), (np.int32, DType.int32),
                                             (np.int64, DType.int64), (np.uint8, DType.int32), (np.bool_, DType.bool)])
def test_buffer_from_a_numpy_array_keeps_shape_and_maps_the_dtype(dtype, expected):
    array = np.arange(6).reshape(2, 3).astype(dtype)
    buffer = Buffer(array)
    assert buffer.dtype == expected and buffer.shape == (2, 3) and buffer.is_contiguous()
    assert np.array_equal(buffer.numpy(), array)


def test_buffer_from_a_buffer_shares_storage():
    base = Buffer(distinct_values((2, 3)))
    assert Buffer(base).data is base.data
    view = Buffer(base.permute((1, 0)))
    assert view.data is base.data and view.shape == (3, 2)


def test_nested_lists_mixing_tuples_and_lists_and_empty_lists():
    assert Buffer([(1, 2), [3, 4]]).to_python() == [[1, 2], [3, 4]]
    empty = Buffer([[], []])
    assert empty.shape == (2, 0) and empty.dtype == DType.float32
    assert Buffer([1, 2.5]).dtype == DType.float32


@pytest.mark.parametrize("nested", [[[1, 2], [3]], [[1], [2, 3]], [[[1, 2]], [[3]]], [[], [1]]], ids=str)
def test_ragged_nested_lists_raise_value_error(nested):
    with pytest.raises(ValueError, match="ragged"):
        Buffer(nested)


@pytest.mark.parametrize("nested", [[[1, 2], 3], [1, [2]], [[1, [2]], [3, 4]]], ids=str)
def test_lists_mixed_with_scalars_raise_type_error(nested):
    with pytest.raises(TypeError, match="mix lists and scalars"):
        Buffer(nested)


# ---- clear errors ---------------------------------------------------------------------------------------
def test_shape_mismatch_errors_name_both_shapes():
    a, b = Buffer(distinct_values((2, 3))), Buffer(distinct_values((3, 2)))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 2\)"):
        a + b
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 3\)"):
        a.matmul(a)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        a.reshape((4, 2))
    with pytest.raises(ValueError, match=r"\(2, 3\) to \(4, 3\)"):
        a.expand((4, 3))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 2\)"):
        Buffer.concatenate([a, b], axis=0)
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 2\)"):
        a.assign_(b)


def test_non_integer_shapes_raise_type_error_naming_the_shape():
    with pytest.raises(TypeError, match=r"\(2\.5, 3\)"):
        Buffer.zeros((2.5, 3))
    with pytest.raises(TypeError, match=r"\(2, 'a'\)"):
        Buffer(distinct_values((2, 3))).reshape((2, "a"))
    with pytest.raises(TypeError, match=r"\(-2, 3\)"):
        Buffer.ones((-2, 3))


def test_reshape_infers_one_minus_one_and_rejects_two():
    buffer = Buffer(distinct_values((2, 3, 4)))
    assert buffer.reshape((-1, 4)).shape == (6, 4)
    with pytest.raises(ValueError, match="only one"):
        buffer.reshape((-1, -1))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(5, -1\)"):
        buffer.reshape((5, -1))


def test_reshape_and_expand_take_new_shape_as_keyword():
    values = distinct_values((1, 6))
    buffer = Buffer(values)
    np.testing.assert_array_equal(buffer.reshape(new_shape=(2, 3)).numpy(), values.reshape(2, 3))
    np.testing.assert_array_equal(buffer.expand(new_shape=(4, 6)).numpy(), np.broadcast_to(values, (4, 6)))


def test_out_of_range_and_unsupported_indices_raise_clearly():
    buffer = Buffer(distinct_values((2, 3)))
    with pytest.raises(IndexError, match=r"index 5 .* dim 1 of size 3 \(shape \(2, 3\)\)"):
        buffer[0, 5]
    with pytest.raises(IndexError, match=r"index -3 .* dim 0"):
        buffer[-3]
    with pytest.raises(IndexError, match="too many indices"):
        buffer[0, 0, 0]
    with pytest.raises(TypeError, match="unsupported index"):
        buffer[1.5]
    with pytest.raises(IndexError, match="single ellipsis"):
        buffer[..., 0, ...]


def test_permute_rejects_what_is_not_a_permutation():
    buffer = Buffer(distinct_values((2, 3)))
    for dims in [(0,), (0, 0), (0, 2), (-3, 0)]:
        with pytest.raises(ValueError, match=r"not a permutation .* \(2, 3\)"):
            buffer.permute(dims)
    assert buffer.permute((-1, 0)).shape == (3, 2)


def test_a_dtype_without_a_tinygpt_dtype_raises_type_error():
    with pytest.raises(TypeError, match="complex64"):
        Buffer(np.zeros(2, np.complex64))
