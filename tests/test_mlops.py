"""Every Operation, forward and every input gradient, against PyTorch on random float32 inputs.

Inputs come in several memory layouts (contiguous, permuted, stepped and expanded Buffers, see
conftest.make_leaf), with broadcasting in both directions, 0-d tensors and size-0 dimensions.
Tolerance everywhere: |ours - torch| <= 1e-5 * max(1, max|torch|) (conftest.assert_close).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tinygpt
from conftest import LAYOUTS, assert_close, check_against_torch, random_values, to_torch
from tinygpt import Tensor, apply_op, mlops

# ---- elementwise, binary, with broadcasting ----------------------------------------------------------
# (ours, torch, domain of x, domain of y); a domain is (low, high, away_from_zero)
BINARY = {
    "add": (lambda x, y: x + y, torch.add, (-2, 2, 0), (-2, 2, 0)),
    "sub": (lambda x, y: x - y, torch.sub, (-2, 2, 0), (-2, 2, 0)),
    "mul": (lambda x, y: x * y, torch.mul, (-2, 2, 0), (-2, 2, 0)),
    "div": (lambda x, y: x / y, torch.div, (-2, 2, 0), (-2, 2, 0.5)),
    "pow": (lambda x, y: x ** y, torch.pow, (0.5, 2, 0), (-2, 2, 0)),
    "maximum": (lambda x, y: x.maximum(y), torch.maximum, (-2, 2, 0), (-2, 2, 0)),
}
BROADCAST_SHAPES = [
    ((3, 4), (3, 4)),
    ((3, 4), (4,)),        # y broadcast to x
    ((4,), (3, 4)),        # x broadcast to y
    ((2, 1, 4), (3, 1)),   # both broadcast, to (2, 3, 4)
    ((3, 1), (1, 4)),
    ((), (3, 4)),          # 0-d with a matrix, both orders
    ((3, 4), ()),
    ((), ()),
    ((0, 4), (4,)),        # size-0 dims
    ((2, 0, 3), (1, 3)),
]
LAYOUT_PAIRS = [("contiguous", "contiguous"), ("permuted", "stepped"), ("stepped", "expanded"), ("expanded", "permuted")]


def _values(rng, shape, domain):
    low, high, away = domain
    return random_values(rng, shape, low, high, away)


@pytest.mark.parametrize("layouts", LAYOUT_PAIRS, ids="-".join)
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
@pytest.mark.parametrize("name", BINARY)
def test_binary_op_matches_torch(name, shapes, layouts, rng):
    ours, theirs, domain_x, domain_y = BINARY[name]
    x, y = _values(rng, shapes[0], domain_x), _values(rng, shapes[1], domain_y)
    check_against_torch(ours, theirs, [x, y], layouts)


@pytest.mark.parametrize("operation, theirs", [(mlops.Add, torch.add), (mlops.Sub, torch.sub), (mlops.Mul, torch.mul),
                                               (mlops.Div, torch.div), (mlops.Pow, torch.pow), (mlops.Maximum, torch.maximum)],
                         ids=lambda v: getattr(v, "__name__", ""))
def test_binary_operation_through_apply_op(operation, theirs, rng):
    x, y = random_values(rng, (3, 5), 0.5, 2), random_values(rng, (3, 5), 0.5, 2)
    check_against_torch(lambda a, b: apply_op(operation, a, b), theirs, [x, y])


SCALAR_FORMS = {
    "x+2.5": (lambda x: x + 2.5, lambda x: x + 2.5),
    "2.5+x": (lambda x: 2.5 + x, lambda x: 2.5 + x),
    "x-2.5": (lambda x: x - 2.5, lambda x: x - 2.5),
    "2.5-x": (lambda x: 2.5 - x, lambda x: 2.5 - x),
    "x*-3": (lambda x: x * -3, lambda x: x * -3),
    "-3*x": (lambda x: -3 * x, lambda x: -3 * x),
    "x/0.7": (lambda x: x / 0.7, lambda x: x / 0.7),
    "0.7/x": (lambda x: 0.7 / x, lambda x: 0.7 / x),
    "x**2": (lambda x: x ** 2, lambda x: x ** 2),
    "x**0.5": (lambda x: x ** 0.5, lambda x: x ** 0.5),
    "x**-1.5": (lambda x: x ** -1.5, lambda x: x ** -1.5),
    "2.0**x": (lambda x: 2.0 ** x, lambda x: 2.0 ** x),
    "x.maximum(1.0)": (lambda x: x.maximum(1.0), lambda x: torch.clamp_min(x, 1.0)),
    "np.float32*x": (lambda x: np.float32(1.5) * x, lambda x: 1.5 * x),
}


@pytest.mark.parametrize("form", SCALAR_FORMS)
def test_python_scalar_operand_matches_torch(form, rng):
    ours, theirs = SCALAR_FORMS[form]
    check_against_torch(ours, theirs, [random_values(rng, (3, 4), 0.5, 2)])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy warns about log(0) and 0 ** -1 on the way
def test_pow_at_zero_and_negative_bases_gives_torchs_gradients():
    """d(x^y)/dx is 0 at y = 0 and d(x^y)/dy is 0 at x = 0, y >= 0 (limits, not the formulas' 0 * inf)."""
    x = np.array([0.0, 0.0, 0.0, -2.0, 0.0, 0.0, 2.0], np.float32)
    y = np.array([2.0, 0.0, 0.5, 2.0, 1.0, -1.0, 0.0], np.float32)
    check_against_torch(lambda a, b: a ** b, torch.pow, [x, y])


def test_maximum_splits_the_gradient_on_ties_like_torch():
    x = np.array([1.0, 2.0, 3.0, -1.0], np.float32)
    y = np.array([1.0, 0.0, 3.0, 5.0], np.float32)
    check_against_torch(lambda a, b: a.maximum(b), torch.maximum, [x, y])


def test_same_tensor_on_both_sides_accumulates_both_gradients(rng):
    check_against_torch(lambda x: x * x + x / (x * x + 1.0), lambda x: x * x + x / (x * x + 1.0),
                        [random_values(rng, (4, 3))])


# ---- elementwise, unary ----------------------------------------------------------------------------------
UNARY = {
    "neg": (lambda x: -x, torch.neg, (-2, 2, 0)),
    "log": (lambda x: x.log(), torch.log, (0.2, 3, 0)),
    "exp": (lambda x: x.exp(), torch.exp, (-3, 3, 0)),
    "relu": (lambda x: x.relu(), torch.relu, (-2, 2, 0.01)),
    "tanh": (lambda x: x.tanh(), torch.tanh, (-3, 3, 0)),
    "gelu": (lambda x: x.gelu(), lambda x: F.gelu(x, approximate="tanh"), (-5, 5, 0)),
}
UNARY_SHAPES = [(3, 4), (), (0, 3), (2, 3, 4)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", UNARY_SHAPES, ids=str)
@pytest.mark.parametrize("name", UNARY)
def test_unary_op_matches_torch(name, shape, layout, rng):
    ours, theirs, domain = UNARY[name]
    check_against_torch(ours, theirs, [_values(rng, shape, domain)], layout)


@pytest.mark.parametrize("operation, theirs", [(mlops.Neg, torch.neg), (mlops.Log, torch.log), (mlops.Exp, torch.exp),
                                               (mlops.Relu, torch.relu), (mlops.Tanh, torch.tanh),
                                               (mlops.GELU, lambda x: F.gelu(x, approximate="tanh"))],
                         ids=lambda v: getattr(v, "__name__", ""))
def test_unary_operation_through_apply_op(operation, theirs, rng):
    check_against_torch(lambda x: apply_op(operation, x), theirs, [random_values(rng, (2, 5), 0.5, 2)])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 40), (0, 3)], ids=str)
def test_gelu_with_each_kernel_set_matches_torch(shape, layout, rng, kernel_set):
    check_against_torch(lambda t: t.gelu(), lambda t: F.gelu(t, approximate="tanh"), [random_values(rng, shape, -6, 6)], layout)


def test_gelu_on_large_inputs_saturates_like_torch(kernel_set):
    x = np.array([-30.0, -10.0, -4.0, 0.0, 4.0, 10.0, 30.0], np.float32)
    check_against_torch(lambda t: t.gelu(), lambda t: F.gelu(t, approximate="tanh"), [x])


# ---- reduce ----------------------------------------------------------------------------------------------
REDUCE_AXES = [None, 0, -1, (0, 2), (1,), (2, 0, 1)]


def _torch_reduce(reduce, axes, keepdim):
    def run(x):
        if axes is None and not keepdim:
            return reduce(x)
        dims = tuple(range(x.ndim)) if axes is None else axes
        return reduce(x, dim=dims, keepdim=keepdim)
    return run


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("axes", REDUCE_AXES, ids=str)
@pytest.mark.parametrize("name", ["sum", "max", "mean"])
def test_reduction_matches_torch(name, axes, keepdim, layout, rng):
    theirs = {"sum": torch.sum, "max": torch.amax, "mean": torch.mean}[name]
    check_against_torch(lambda x: getattr(x, name)(axes, keepdim=keepdim), _torch_reduce(theirs, axes, keepdim),
                        [random_values(rng, (2, 3, 4))], layout)


@pytest.mark.parametrize("name", ["sum", "max", "mean"])
def test_reduction_of_a_0d_tensor_matches_torch(name):
    theirs = {"sum": torch.sum, "max": torch.amax, "mean": torch.mean}[name]
    check_against_torch(lambda x: getattr(x, name)(), theirs, [np.array(1.5, np.float32)])


@pytest.mark.parametrize("name, axes", [("sum", 1), ("sum", (0, 1)), ("sum", None), ("max", 0), ("max", 2), ("mean", 0)])
def test_reduction_with_a_size_0_dim_matches_torch(name, axes, rng):
    theirs = {"sum": torch.sum, "max": torch.amax, "mean": torch.mean}[name]
    check_against_torch(lambda x: getattr(x, name)(axes), _torch_reduce(theirs, axes, False),
                        [random_values(rng, (2, 0, 3))])


def test_max_over_an_empty_axis_raises():
    with pytest.raises(ValueError, match=r"\(2, 0, 3\)"):
        Tensor(np.zeros((2, 0, 3), np.float32)).max(1)


@pytest.mark.parametrize("axes", [None, 1, 0])
def test_max_shares_the_gradient_evenly_among_ties_like_torch_amax(axes):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [3.0, 0.0, -1.0]], np.float32)
    check_against_torch(lambda t: t.max(axes), _torch_reduce(torch.amax, axes, False), [x])


@pytest.mark.parametrize("operation, theirs", [(mlops.Sum, torch.sum), (mlops.Max, torch.amax)], ids=["Sum", "Max"])
def test_reduce_operation_through_apply_op(operation, theirs, rng):
    check_against_torch(lambda x: apply_op(operation, x, axes=(0, 2), keepdim=True),
                        lambda x: theirs(x, dim=(0, 2), keepdim=True), [random_values(rng, (3, 2, 4))])


# ---- movement --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, new_shape", [((2, 3, 4), (6, 4)), ((2, 3, 4), (4, -1)), ((2, 3, 4), (24,)),
                                              ((2, 3, 4), (2, 1, 12, 1)), ((), (1, 1)), ((1, 1), ()),
                                              ((0, 3), (3, 0)), ((0, 3), (-1, 6))], ids=str)
def test_reshape_matches_torch(shape, new_shape, layout, rng):
    check_against_torch(lambda x: x.reshape(new_shape), lambda x: x.reshape(new_shape),
                        [random_values(rng, shape)], layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, new_shape", [((3, 1), (3, 4)), ((1, 1), (2, 5)), ((1, 3, 1), (2, 3, 4)),
                                              ((1,), (0,)), ((), ()), ((2, 3), (2, 3)),
                                              ((3,), (2, 3)), ((3, 1), (2, 3, 4)), ((), (2, 3)),  # new leading dims
                                              ((1,), (2, 2, -1)), ((2, 1), (5, -1, 3))], ids=str)  # -1 keeps a size
def test_expand_matches_torch(shape, new_shape, layout, rng):
    check_against_torch(lambda x: x.expand(new_shape), lambda x: x.expand(new_shape),
                        [random_values(rng, shape)], layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, dims", [((2, 3, 4), (2, 0, 1)), ((2, 3, 4), (-1, 0, 1)), ((3, 3), (-1, 0)),
                                         ((3, 3), (1, -2)), ((2, 0, 3), (1, 2, 0)), ((), ())], ids=str)
def test_permute_matches_torch(shape, dims, layout, rng):
    check_against_torch(lambda x: x.permute(dims), lambda x: x.permute(dims), [random_values(rng, shape)], layout)


@pytest.mark.parametrize("axes", [(0, 2), (-1, -2), (1, 1)], ids=str)
def test_transpose_matches_torch(axes, rng):
    check_against_torch(lambda x: x.transpose(*axes), lambda x: x.transpose(*axes), [random_values(rng, (2, 3, 4))])


SLICE_INDICES = [
    1, -1, slice(None, None, 2), (Ellipsis, 1), (None, 0, slice(4, 0, -1)), (slice(1, 3), Ellipsis, None),
    (slice(None, None, -1), 2, slice(1, None, 3)), (slice(2, 2),), (slice(10, None),), (-2, -1, slice(-4, None, -2)),
    (), Ellipsis, (0, 0, 0),
]


def _torch_basic_index(index):
    """torch has no negative-step slicing: gather through the flat positions numpy's indexing picks."""
    def run(x):
        positions = np.asarray(np.arange(x.numel()).reshape(tuple(x.shape))[index], order="C")
        return x.reshape(-1)[torch.as_tensor(positions, dtype=torch.int64)]
    return run


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("index", SLICE_INDICES, ids=repr)
def test_slice_matches_torch(index, layout, rng):
    check_against_torch(lambda x: x[index], _torch_basic_index(index), [random_values(rng, (4, 5, 6))], layout)


def test_slice_of_a_0d_tensor():
    for index in [(), Ellipsis, None]:
        check_against_torch(lambda x: x[index], lambda x: x[index], [np.array(2.0, np.float32)])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shapes, axis", [([(2, 3), (4, 3)], 0), ([(2, 3), (2, 1), (2, 0)], -1), ([(3,)], 0),
                                          ([(2, 3, 4), (2, 2, 4), (2, 1, 4)], 1), ([(0, 2), (0, 2)], 0)], ids=str)
def test_concatenate_matches_torch(shapes, axis, layout, rng):
    arrays = [random_values(rng, shape) for shape in shapes]
    check_against_torch(lambda *xs: Tensor.concatenate(xs, axis), lambda *xs: torch.cat(xs, axis), arrays, layout)


def test_concatenate_gives_no_gradient_to_an_input_without_requires_grad(rng):
    a = Tensor(random_values(rng, (2, 3)), requires_grad=True)
    b = Tensor(random_values(rng, (1, 3)))
    Tensor.concatenate([a, b, a], axis=0).sum().backward()
    assert b.grad is None
    assert_close(a.grad, np.full((2, 3), 2.0))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (2, 4, 3)], ids=str)
@pytest.mark.parametrize("diagonal", [-1, 0, 2])
def test_tril_matches_torch(shape, diagonal, layout, rng):
    check_against_torch(lambda x: x.tril(diagonal), lambda x: torch.tril(x, diagonal), [random_values(rng, shape)], layout)


# ---- matmul ----------------------------------------------------------------------------------------------
MATMUL_SHAPES = [
    ((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (3, 4, 5)), ((2, 3, 4), (4,)), ((4,), (2, 4, 5)), ((0, 4), (4, 5)), ((3, 0), (0, 5)),
    ((2, 3, 16), (16, 7)),
]


@pytest.mark.parametrize("layouts", LAYOUT_PAIRS, ids="-".join)
@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_matches_torch(shapes, layouts, rng):
    x, y = random_values(rng, shapes[0]), random_values(rng, shapes[1])
    check_against_torch(lambda a, b: a @ b, torch.matmul, [x, y], layouts)


def test_matmul_with_a_long_inner_dimension_stays_within_1e_5(rng):
    """Summing K float32 products rounds K times; for random signs the errors add like a random walk,
    about sqrt(K) * 2**-24 of the scale (6e-7 measured at K=1024 against a float64 product), and both
    libraries' BLAS block the sum, so the two stay far inside 1e-5: no looser bound is needed."""
    x, y = random_values(rng, (2, 16, 1024)), random_values(rng, (1024, 24))
    check_against_torch(lambda a, b: a @ b, torch.matmul, [x, y])


def test_matmul_through_dot_and_apply_op(rng):
    x, y = random_values(rng, (3, 4)), random_values(rng, (4, 2))
    check_against_torch(lambda a, b: a.dot(b), torch.matmul, [x, y])
    check_against_torch(lambda a, b: apply_op(mlops.Matmul, a, b), torch.matmul, [x, y])


def test_matmul_with_only_one_input_requiring_grad(rng):
    x, y = random_values(rng, (2, 3, 4)), random_values(rng, (4, 5))
    for needs in [(True, False), (False, True)]:
        a, b = Tensor(x, requires_grad=needs[0]), Tensor(y, requires_grad=needs[1])
        ta, tb = to_torch(a), to_torch(b)
        (a @ b).sum().backward()
        (ta @ tb).sum().backward()
        for mine, theirs in [(a, ta), (b, tb)]:
            assert (mine.grad is None) == (theirs.grad is None)
            if theirs.grad is not None:
                assert_close(mine.grad, theirs.grad)


# ---- softmax and cross-entropy ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, axis", [((2, 3, 5), -1), ((2, 3, 5), 0), ((2, 3, 5), 1), ((0, 5), -1), ((3, 0), -1),
                                         ((4,), 0)], ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # log of the empty sum over a size-0 axis
def test_softmax_matches_torch(name, shape, axis, layout, rng):
    theirs = {"softmax": torch.softmax, "log_softmax": torch.log_softmax}[name]
    check_against_torch(lambda x: getattr(x, name)(axis), lambda x: theirs(x, axis), [random_values(rng, shape, -3, 3)], layout)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_of_large_logits_is_stable(name, rng):
    theirs = {"softmax": torch.softmax, "log_softmax": torch.log_softmax}[name]
    logits = random_values(rng, (3, 6), -1, 1) * 80.0
    check_against_torch(lambda x: getattr(x, name)(-1), lambda x: theirs(x, -1), [logits])


@pytest.mark.parametrize("operation, theirs", [(mlops.Softmax, torch.softmax), (mlops.LogSoftmax, torch.log_softmax)],
                         ids=["Softmax", "LogSoftmax"])
def test_softmax_operation_through_apply_op(operation, theirs, rng):
    check_against_torch(lambda x: apply_op(operation, x, axis=0), lambda x: theirs(x, 0), [random_values(rng, (4, 3))])


def _torch_cross_entropy(reduction):
    def run(logits, targets):
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)
        return loss.reshape(targets.shape) if reduction == "none" else loss
    return run


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("logits_shape", [(4, 5), (2, 3, 5), (5,), (1, 1)], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_matches_torch(reduction, logits_shape, layout, rng, kernel_set):
    logits = random_values(rng, logits_shape, -3, 3)
    targets = rng.integers(0, logits_shape[-1], size=logits_shape[:-1]).astype(np.int32)
    check_against_torch(lambda x, t: apply_op(mlops.CrossEntropy, x, t, reduction=reduction),
                        _torch_cross_entropy(reduction), [logits, targets], [layout, "contiguous"])


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_cross_entropy_of_an_empty_batch_matches_torch(reduction, rng, kernel_set):
    check_against_torch(lambda x, t: apply_op(mlops.CrossEntropy, x, t, reduction=reduction),
                        _torch_cross_entropy(reduction), [random_values(rng, (0, 5)), np.zeros((0,), np.int32)])


def test_cross_entropy_mean_of_an_empty_batch_is_nan_like_torch():
    loss = apply_op(mlops.CrossEntropy, Tensor(np.zeros((0, 5), np.float32)), Tensor(np.zeros((0,), np.int32)))
    assert math.isnan(loss.item())
    assert math.isnan(F.cross_entropy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64)).item())


def test_cross_entropy_of_extreme_logits_matches_torch(rng, kernel_set):
    logits = random_values(rng, (4, 6), -1, 1) * 60.0
    check_against_torch(lambda x, t: apply_op(mlops.CrossEntropy, x, t, reduction="none"), _torch_cross_entropy("none"),
                        [logits, np.array([0, 1, 2, 3], np.int32)])


def test_cross_entropy_rejects_bad_targets():
    logits = Tensor(np.zeros((2, 3), np.float32), requires_grad=True)
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        apply_op(mlops.CrossEntropy, logits, Tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        apply_op(mlops.CrossEntropy, logits, Tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        apply_op(mlops.CrossEntropy, logits, Tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        apply_op(mlops.CrossEntropy, logits, Tensor([0, 1]), reduction="avg")


# ---- layer norm, embedding -------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 8), (5, 8), (8,), (0, 8)], ids=str)
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "bias", "none"])
def test_layer_norm_matches_torch(affine, shape, layout, rng, kernel_set):
    if layout == "expanded" and len(shape) == 1:
        pytest.skip("a 1-d expanded input is one constant row: torch's mean of it is one ulp off, and 1/sqrt(eps) "
                    "amplifies that to 1e-4 (ours is exact); test_layer_norm_of_a_constant_row covers that case")
    use_weight, use_bias = "weight" in affine, "bias" in affine
    arrays = [random_values(rng, shape, -3, 3) + 1.0]
    if use_weight:
        arrays.append(random_values(rng, (8,), 0.5, 1.5))
    if use_bias:
        arrays.append(random_values(rng, (8,)))

    def split(inputs):
        inputs = list(inputs)
        return inputs.pop(0), inputs.pop(0) if use_weight else None, inputs.pop(0) if use_bias else None

    def ours(*inputs):
        x, weight, bias = split(inputs)
        return apply_op(mlops.LayerNorm, x, weight, bias, eps=1e-5)

    def theirs(*inputs):
        x, weight, bias = split(inputs)
        return F.layer_norm(x, (8,), weight, bias, eps=1e-5)

    check_against_torch(ours, theirs, arrays, [layout] + ["contiguous"] * (len(arrays) - 1))


def test_layer_norm_of_a_constant_row_uses_eps_like_torch(kernel_set):
    x = np.full((2, 4), 3.0, np.float32)
    weight, bias = np.ones(4, np.float32), np.zeros(4, np.float32)
    check_against_torch(lambda *t: apply_op(mlops.LayerNorm, *t, eps=1e-5),
                        lambda x, w, b: F.layer_norm(x, (4,), w, b, eps=1e-5), [x, weight, bias])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ids_shape", [(2, 6), (7,), (), (0,)], ids=str)
def test_embedding_matches_torch_and_repeated_ids_accumulate(ids_shape, layout, rng, kernel_set):
    weight = random_values(rng, (10, 4))
    ids = rng.integers(0, 4, size=ids_shape).astype(np.int32)  # only 4 distinct ids: many repeats
    _, (weight_tensor, _) = check_against_torch(lambda w, i: apply_op(mlops.Embedding, w, i), lambda w, i: F.embedding(i, w),
                                                [weight, ids], [layout, "contiguous"])
    assert np.all(weight_tensor.grad.numpy()[4:] == 0.0)


def test_embedding_rejects_out_of_range_and_float_ids():
    weight = Tensor(np.zeros((5, 2), np.float32), requires_grad=True)
    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        apply_op(mlops.Embedding, weight, Tensor([1, 5]))
    with pytest.raises(TypeError, match="integer"):
        apply_op(mlops.Embedding, weight, Tensor([1.0]))


# ---- dropout -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dropout_with_p_0_is_the_identity(layout, rng):
    check_against_torch(lambda x: apply_op(mlops.Dropout, x, p=0.0), lambda x: x * 1.0,
                        [random_values(rng, (3, 4), 0.5, 2)], layout)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_zeroes_or_scales_and_the_gradient_uses_the_same_mask(p, rng):
    values = random_values(rng, (64, 64), 0.5, 2)
    x = Tensor(values, requires_grad=True)
    y = apply_op(mlops.Dropout, x, p=p)
    out = y.numpy()
    kept = out != 0.0
    assert np.allclose(out[kept], values[kept] / (1.0 - p), rtol=1e-6)
    assert abs((~kept).mean() - p) < 0.05  # 4096 Bernoulli draws: the standard deviation is below 0.008
    incoming = rng.standard_normal((64, 64)).astype(np.float32)
    y.backward(Tensor(incoming))
    assert_close(x.grad, np.where(kept, incoming / (1.0 - p), 0.0))


def test_dropout_is_reproducible_with_manual_seed(rng):
    x = Tensor(random_values(rng, (8, 8), 0.5, 2))
    tinygpt.manual_seed(7)
    first = apply_op(mlops.Dropout, x, p=0.5).numpy()
    tinygpt.manual_seed(7)
    assert np.array_equal(first, apply_op(mlops.Dropout, x, p=0.5).numpy())


def test_dropout_rejects_p_outside_0_1():
    with pytest.raises(ValueError, match="dropout"):
        apply_op(mlops.Dropout, Tensor([1.0]), p=1.0)


# ---- scaled dot-product attention ------------------------------------------------------------------------
def _attention(q, k, v, **kwargs):
    return apply_op(mlops.ScaledDotProductAttention, q, k, v, **kwargs)


def _explicit_causal_attention(q, k, v, keep=None):
    """softmax(q k^T / sqrt(d) with key j visible to query i when j <= i + Tk - Tq) v, in plain torch ops:
    the last query sits at the last key, as in a KV cache (torch's is_causal aligns the first ones instead)."""
    query_length, key_length = q.shape[-2], k.shape[-2]
    allowed = torch.ones(query_length, key_length, dtype=torch.bool).tril(key_length - query_length)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return (probs * keep if keep is not None else probs) @ v


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 8), (1, 1, 1, 4), (2, 7, 16), (3, 4, 2)], ids=str)
def test_causal_attention_matches_torch_sdpa(shape, layout, rng, kernel_set):
    q, k, v = (random_values(rng, shape) for _ in range(3))
    check_against_torch(_attention, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                        [q, k, v], layout)


def test_causal_attention_at_gpt_sizes_matches_torch_sdpa(rng, kernel_set):
    q, k, v = (random_values(rng, (2, 4, 64, 32)) for _ in range(3))
    check_against_torch(_attention, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v])


@pytest.mark.parametrize("query_length, key_length", [(150, 150), (130, 200), (64, 65), (1, 300)])
def test_attention_over_several_blocks_of_queries_matches_an_explicit_mask(query_length, key_length, rng, kernel_set):
    """The CPU kernels take the queries in blocks of 64, each with only the keys it sees: several blocks, a
    partial last one, and more keys than queries give what the whole masked matrix gives."""
    q = random_values(rng, (1, 2, query_length, 8))
    k, v = random_values(rng, (1, 2, key_length, 8)), random_values(rng, (1, 2, key_length, 8))
    check_against_torch(_attention, _explicit_causal_attention, [q, k, v], ["contiguous", "permuted", "stepped"])


@pytest.mark.parametrize("query_length, key_length", [(3, 7), (1, 6), (4, 4), (1, 1), (0, 0), (0, 3)])
def test_attention_with_fewer_queries_than_keys_matches_an_explicit_kv_cache_mask(query_length, key_length, rng, kernel_set):
    q = random_values(rng, (2, 2, query_length, 8))
    k, v = random_values(rng, (2, 2, key_length, 8)), random_values(rng, (2, 2, key_length, 8))
    check_against_torch(_attention, _explicit_causal_attention, [q, k, v], ["stepped", "permuted", "contiguous"])


def test_explicit_reference_agrees_with_torch_sdpa_when_lengths_match():
    q, k, v = (torch.randn(2, 3, 6, 4) for _ in range(3))
    torch.testing.assert_close(_explicit_causal_attention(q, k, v),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_attention_on_heads_split_from_one_projection_matches_torch(rng, kernel_set):
    """The layout a transformer block feeds it: (B, T, 3C) -> three (B, T, H, d) slices -> permuted to (B, H, T, d)."""
    batch, length, heads, head_dim = 2, 5, 3, 4
    width = heads * head_dim

    def heads_of(qkv, i, permute, reshape):
        part = qkv[:, :, i * width:(i + 1) * width]
        return permute(reshape(part, (batch, length, heads, head_dim)), (0, 2, 1, 3))

    def ours(qkv):
        q, k, v = (heads_of(qkv, i, Tensor.permute, Tensor.reshape) for i in range(3))
        assert not q.buffer.is_contiguous()
        return _attention(q, k, v).permute((0, 2, 1, 3)).reshape((batch, length, width))

    def theirs(qkv):
        q, k, v = (heads_of(qkv, i, torch.permute, torch.reshape) for i in range(3))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).permute(0, 2, 1, 3).reshape(batch, length, width)

    check_against_torch(ours, theirs, [random_values(rng, (batch, length, 3 * width))])


@pytest.mark.parametrize("shape", [(2, 2, 5, 4), (1, 2, 130, 4)], ids=["one-block", "several-blocks"])
def test_attention_dropout_drops_probabilities_and_backpropagates_through_the_same_mask(shape, rng, kernel_set):
    """Over several blocks of queries too (the CPU kernels take 64 at a time): each block its own factors."""
    q, k, v = (random_values(rng, shape) for _ in range(3))
    ours_inputs = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = _attention(*ours_inputs, dropout_p=0.5)
    keep = out.grad_fn.operation.keep
    assert set(np.unique(keep)) <= {0.0, 2.0}
    torch_inputs = [to_torch(t) for t in ours_inputs]
    ref = _explicit_causal_attention(*torch_inputs, keep=torch.tensor(keep))
    assert_close(out, ref)
    incoming = rng.standard_normal(ref.shape).astype(np.float32)
    out.backward(Tensor(incoming))
    ref.backward(torch.tensor(incoming))
    for mine, theirs in zip(ours_inputs, torch_inputs):
        assert_close(mine.grad, theirs.grad)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
def test_attention_with_only_some_inputs_requiring_grad(needs, rng, kernel_set):
    arrays = [random_values(rng, (1, 2, 4, 4)) for _ in range(3)]
    ours_inputs = [Tensor(a, requires_grad=n) for a, n in zip(arrays, needs)]
    torch_inputs = [to_torch(t) for t in ours_inputs]
    _attention(*ours_inputs).sum().backward()
    F.scaled_dot_product_attention(*torch_inputs, is_causal=True).sum().backward()
    for mine, theirs in zip(ours_inputs, torch_inputs):
        assert (mine.grad is None) == (theirs.grad is None)
        if theirs.grad is not None:
            assert_close(mine.grad, theirs.grad)


def _torch_packed_attention(num_heads):
    def run(qkv):
        batch, length, packed = qkv.shape
        width = packed // 3
        q, k, v = (part.reshape(batch, length, num_heads, width // num_heads).transpose(1, 2) for part in qkv.split(width, -1))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, length, width)
    return run


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, num_heads", [((2, 5, 24), 2), ((1, 1, 12), 4), ((3, 4, 6), 1)], ids=str)
def test_packed_multi_head_attention_matches_torch(shape, num_heads, layout, rng, kernel_set):
    check_against_torch(lambda qkv: apply_op(mlops.MultiHeadAttention, qkv, num_heads=num_heads),
                        _torch_packed_attention(num_heads), [random_values(rng, shape)], layout)


def test_packed_multi_head_attention_rejects_a_width_that_does_not_split():
    with pytest.raises(ValueError, match="3 x num_heads"):
        apply_op(mlops.MultiHeadAttention, Tensor(np.zeros((1, 2, 10), np.float32)), num_heads=2)


@pytest.mark.parametrize("layouts", [("contiguous",) * 3, ("permuted", "stepped", "expanded"), ("stepped", "permuted", "contiguous")],
                         ids="-".join)
@pytest.mark.parametrize("x_shape", [(2, 3, 4), (5, 4), (4,), (0, 4)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_matches_torch(bias, x_shape, layouts, rng):
    arrays = [random_values(rng, x_shape), random_values(rng, (4, 6))] + ([random_values(rng, (6,))] if bias else [])
    check_against_torch(lambda *inputs: apply_op(mlops.Linear, *inputs),
                        lambda x, w, b=None: x @ w + b if b is not None else x @ w, arrays, layouts[:len(arrays)])


def test_fused_linear_rejects_weights_that_do_not_fit():
    with pytest.raises(ValueError, match=r"\(2, 3\) .* \(4, 6\)"):
        apply_op(mlops.Linear, Tensor(np.zeros((2, 3), np.float32)), Tensor(np.zeros((4, 6), np.float32)))


def test_cross_entropy_of_far_apart_logits_is_finite_like_torch(kernel_set):
    """-log(softmax) would round the target's probability to 0 and give inf; logsumexp - x_t does not."""
    logits = np.array([[0.0, -200.0], [300.0, -300.0]], dtype=np.float32)
    targets = np.array([1, 1])
    ours = Tensor(logits, requires_grad=True)
    loss = apply_op(mlops.CrossEntropy, ours, Tensor(targets), reduction="none")
    theirs = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(theirs, torch.tensor(targets), reduction="none")
    assert_close(loss, expected.detach(), 1e-5, "loss")
    loss.sum().backward()
    expected.sum().backward()
    assert_close(ours.grad, theirs.grad, 1e-5, "gradient")
