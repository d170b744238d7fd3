"""CPU kernels: the loops of each fused op's math, compiled by numba, on one thread: `tinygpt train` uses the
cores by data (one rank per core), not by splitting each loop among threads.

Each kernel writes into arrays its caller allocated and has the same name and arguments as its twin in
`tinygpt.kernels.array`. Storage is float32; sums over a row accumulate in float64.
With NUMBA_DISABLE_JIT=1 these run as plain Python, which a debugger can step through.

Attention is the one kernel pair that is not a single loop nest: its products per (batch, head) and block of
queries go to BLAS and only the softmax between them is a numba loop.
"""
from __future__ import annotations

import math

import numpy as np

from tinygpt.kernels import prepare_numba

prepare_numba()  # the cache directory, before numba compiles anything
from numba import boolean, float32, float64, int64, njit, void  # noqa: E402

# The array types of the kernels' signatures: one compiled version of each kernel, compiled once
Vector, Matrix, Ids = float32[::1], float32[:, ::1], int64[::1]
Heads, HeadRows = float32[:, :, :, :], float32[:, :, :]  # (B, H, T, d) and (B, H, T), any strides
Scores = float32[:, :, :, ::1]  # (B, H, Tq, Tk), contiguous
Slots, SlotRows = float32[:, :, :, ::1], float32[:, :, ::1]  # (B, T, slots, d) and (B, T, slots), contiguous
# Sums may be reordered (so that the compiler vectorises them) and a * b + c fused; nothing is assumed about
# NaN or infinity
FAST = {"reassoc", "contract"}
# Cached on disk; a division by zero gives inf or NaN, as in numpy, instead of Python's ZeroDivisionError,
# whose check in every iteration would keep a loop from vectorising (with NUMBA_DISABLE_JIT=1 it raises again)
COMPILE = dict(cache=True, error_model="numpy")

# Attention's queries per block: a block computes only the scores of the keys its last query sees, so that a row
# computes fewer than QUERY_BLOCK masked scores instead of up to T, for a few more product calls
QUERY_BLOCK = 64
GELU_C = np.float32(math.sqrt(2.0 / math.pi))
GELU_CUBIC = np.float32(0.044715)
# tanh(u) = p(u) / q(u) on |u| <= TANH_CLAMP (Eigen's float32 rational fit, within float32 rounding of tanh);
# unlike math.tanh, a scalar libm call, it vectorises
TANH_CLAMP = np.float32(7.90531110763549805)
TANH_P = tuple(np.float32(a) for a in (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
                                       5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
                                       -2.76076847742355e-16))
TANH_Q = tuple(np.float32(b) for b in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
                                       1.19825839466702e-06))


LOG2E = np.float32(1.0 / math.log(2.0))
LN2_HI, LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 in two parts, the first exact in float32
EXP_P = tuple(np.float32(c) for c in (5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3,
                                      1.3981999507e-3, 1.9875691500e-4))  # Cephes' expf polynomial
EXP_LOWEST, EXP_HIGHEST = np.float32(-87.33654), np.float32(88.72283)  # e^x is below float32's normals, above its largest
EXPONENT_BIAS, MANTISSA_BITS = np.int32(127), np.int32(23)  # float32's layout: 2^k has the bits (k + 127) << 23


@njit(inline="always", **COMPILE)
def power_of_two(k):
    """2^k for an int32 k in [-126, 127], built from its bits (a table lookup would be a gather, which is slow)."""
    return np.int32((k + EXPONENT_BIAS) << MANTISSA_BITS).view(np.float32)


@njit(inline="always", **COMPILE)
def exp(x):
    """e^x in float32 (within 1-2 ulp): x = n ln2 + r with |r| <= ln2 / 2, e^r by a polynomial, 2^n as
    2^(n // 2) 2^(n - n // 2), both halves normal floats for n in [-127, 128]; 0 below EXP_LOWEST, inf above
    EXP_HIGHEST, NaN for NaN. Unlike math.exp, a scalar libm call, it vectorises."""
    n = min(max(np.floor(x * LOG2E + np.float32(0.5)), np.float32(-127.0)), np.float32(128.0))
    r = x - n * LN2_HI - n * LN2_LO
    p = EXP_P[5]
    for i in range(4, -1, -1):
        p = p * r + EXP_P[i]
    k = np.int32(n if n == n else np.float32(0.0))  # NaN (min and max keep it): any k; the result is NaN anyway
    half = k >> np.int32(1)
    e_x = (p * r * r + r + np.float32(1.0)) * power_of_two(half) * power_of_two(k - half)
    if x < EXP_LOWEST:
        return np.float32(0.0)
    if x > EXP_HIGHEST:
        return np.float32(np.inf)
    return e_x


@njit(inline="always", **COMPILE)
def tanh(u):
    """tanh(u) = p(u) / q(u), odd polynomial p of degree 13, even q of degree 6, u clamped to +-7.9."""
    u = min(max(u, -TANH_CLAMP), TANH_CLAMP)
    u2 = u * u
    p = TANH_P[6]
    for i in range(5, -1, -1):
        p = p * u2 + TANH_P[i]
    q = TANH_Q[3]
    for i in range(2, -1, -1):
        q = q * u2 + TANH_Q[i]
    return u * p / q


@njit(void(Vector, Vector), **COMPILE)
def gelu_forward(x, out):
    """out = x/2 (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi), over flat arrays."""
    for i in range(x.size):
        xi = x[i]
        out[i] = np.float32(0.5) * xi * (np.float32(1.0) + tanh(GELU_C * (xi + GELU_CUBIC * xi * xi * xi)))


@njit(void(Vector, Vector, Vector), **COMPILE)
def gelu_backward(grad, x, grad_x):
    """grad_x = grad * ((1 + t)/2 + x/2 (1 - t^2) c (1 + 3*0.044715 x^2)), t = tanh(c (x + 0.044715 x^3))."""
    for i in range(x.size):
        xi = x[i]
        t = tanh(GELU_C * (xi + GELU_CUBIC * xi * xi * xi))
        slope = np.float32(0.5) * (np.float32(1.0) + t) + np.float32(0.5) * xi * (np.float32(1.0) - t * t) * GELU_C * (
            np.float32(1.0) + np.float32(3.0) * GELU_CUBIC * xi * xi)
        grad_x[i] = grad[i] * slope


@njit(void(Matrix, Vector, Vector, float64, Matrix, Vector, Vector), **COMPILE, fastmath=FAST)
def layer_norm_forward(x, weight, bias, eps, out, mean, rstd):
    """out = (x - mean) * rstd * weight + bias per row, rstd = 1 / sqrt(var + eps)."""
    rows, width = x.shape
    for r in range(rows):
        total = 0.0
        for c in range(width):
            total += x[r, c]
        m = np.float32(total / width)  # the sums in float64, the values' arithmetic in float32 (twice the lanes)
        squares = 0.0
        for c in range(width):
            centred = x[r, c] - m
            squares += centred * centred
        s = np.float32(1.0 / math.sqrt(squares / width + eps))
        for c in range(width):
            out[r, c] = (x[r, c] - m) * s * weight[c] + bias[c]
        mean[r], rstd[r] = m, s


@njit(void(Matrix, Matrix, Vector, Vector, Vector, Matrix, Vector, Vector), **COMPILE, fastmath=FAST)
def layer_norm_backward(grad, x, weight, mean, rstd, grad_x, grad_weight, grad_bias):
    """With xh = (x - mean) rstd and dxh = grad * weight:
    grad_x = rstd (dxh - mean(dxh) - xh mean(dxh xh)), grad_weight = sum_rows grad xh, grad_bias = sum_rows grad."""
    rows, width = x.shape
    weight_sums = np.zeros(width)
    bias_sums = np.zeros(width)
    xh = np.empty(width, dtype=np.float32)  # one row's normalised values
    for r in range(rows):
        mean_dxh = 0.0
        mean_dxh_xh = 0.0
        for c in range(width):
            xh[c] = (x[r, c] - mean[r]) * rstd[r]
            dxh = grad[r, c] * weight[c]
            mean_dxh += dxh
            mean_dxh_xh += dxh * xh[c]
            weight_sums[c] += grad[r, c] * xh[c]
            bias_sums[c] += grad[r, c]
        shift, slope = np.float32(mean_dxh / width), np.float32(mean_dxh_xh / width)
        for c in range(width):
            grad_x[r, c] = rstd[r] * (grad[r, c] * weight[c] - shift - xh[c] * slope)
    for c in range(width):
        grad_weight[c] = weight_sums[c]
        grad_bias[c] = bias_sums[c]


@njit(void(Slots, int64, Matrix, Matrix, float64, boolean, Slots, SlotRows), **COMPILE, fastmath=FAST)
def rotary_qk_norm_forward(qkv, heads, cos, sin, eps, qk_norm, normalized, rstd):
    """In place on the first `heads` slots of each (b, t) of qkv (B, T, slots, d): x <- x rstd with
    rstd = 1 / sqrt(mean(x^2) + eps) if qk_norm (x rstd kept in normalized), then, if cos has rows, the halves
    turned by position t: (x1 cos - x2 sin, x2 cos + x1 sin)."""
    batch, length, _, width = qkv.shape
    half = width // 2
    for b in range(batch):
        for t in range(length):
            for h in range(heads):
                if qk_norm:
                    squares = 0.0
                    for i in range(width):
                        squares += qkv[b, t, h, i] * qkv[b, t, h, i]
                    s = np.float32(1.0 / math.sqrt(squares / width + eps))
                    for i in range(width):
                        qkv[b, t, h, i] *= s
                        normalized[b, t, h, i] = qkv[b, t, h, i]
                    rstd[b, t, h] = s
                if len(cos):
                    for i in range(half):
                        first, second = qkv[b, t, h, i], qkv[b, t, h, half + i]
                        qkv[b, t, h, i] = first * cos[t, i] - second * sin[t, i]
                        qkv[b, t, h, half + i] = second * cos[t, i] + first * sin[t, i]


@njit(void(Slots, int64, Matrix, Matrix, boolean, Slots, SlotRows), **COMPILE, fastmath=FAST)
def rotary_qk_norm_backward(grad, heads, cos, sin, qk_norm, normalized, rstd):
    """In place on the first `heads` slots of grad (B, T, slots, d): turned back (the transpose of the
    rotation) if cos has rows, then, if qk_norm, g <- rstd (g - xh mean(g xh)) with xh = normalized."""
    batch, length, _, width = grad.shape
    half = width // 2
    for b in range(batch):
        for t in range(length):
            for h in range(heads):
                if len(cos):
                    for i in range(half):
                        first, second = grad[b, t, h, i], grad[b, t, h, half + i]
                        grad[b, t, h, i] = first * cos[t, i] + second * sin[t, i]
                        grad[b, t, h, half + i] = second * cos[t, i] - first * sin[t, i]
                if qk_norm:
                    projection = 0.0
                    for i in range(width):
                        projection += grad[b, t, h, i] * normalized[b, t, h, i]
                    mean = np.float32(projection / width)
                    for i in range(width):
                        grad[b, t, h, i] = (grad[b, t, h, i] - normalized[b, t, h, i] * mean) * rstd[b, t, h]


@njit(void(Matrix, Ids, Vector, Vector), **COMPILE, fastmath=FAST)
def cross_entropy_forward(logits, targets, losses, log_normalizer):
    """log_normalizer = logsumexp(logits) per row (shifted by the row max), losses = log_normalizer - logits[target].
    In float32 but for the sum of the exponentials, as PyTorch's log-softmax."""
    rows, classes = logits.shape
    for r in range(rows):
        largest = logits[r, 0]
        for c in range(1, classes):
            largest = max(largest, logits[r, c])
        total = 0.0
        for c in range(classes):
            total += exp(logits[r, c] - largest)
        log_normalizer[r] = largest + np.float32(math.log(total))
        losses[r] = log_normalizer[r] - logits[r, targets[r]]


@njit(void(Matrix, Ids, Vector, Vector, Matrix), **COMPILE, fastmath=FAST)
def cross_entropy_backward(logits, targets, log_normalizer, grad_rows, grad_logits):
    """grad_logits = grad_rows * (softmax(logits) - onehot(targets)), softmax = exp(logits - log_normalizer), in float32."""
    rows, classes = logits.shape
    for r in range(rows):
        for c in range(classes):
            grad_logits[r, c] = grad_rows[r] * exp(logits[r, c] - log_normalizer[r])
        grad_logits[r, targets[r]] -= grad_rows[r]


@njit(void(Ids, Matrix, Matrix), **COMPILE)
def embedding_backward(ids, grad, grad_weight):
    """grad_weight[ids[r]] += grad[r] for each row r (repeated ids accumulate)."""
    rows, width = grad.shape
    grad_weight[:] = 0.0
    for r in range(rows):
        for c in range(width):
            grad_weight[ids[r], c] += grad[r, c]


def query_blocks(queries: int, keys: int) -> list[tuple[int, int, int]]:
    """(start, stop, seen) of each block of QUERY_BLOCK queries, the last block first; `seen` is the number of keys
    the block's last query sees, the only keys whose scores the block computes."""
    return [(start, min(start + QUERY_BLOCK, queries), max(0, min(start + QUERY_BLOCK, queries) + keys - queries))
            for start in reversed(range(0, queries, QUERY_BLOCK))]


def _block_of(keep, start: int, stop: int, seen: int):
    """The dropout factors of one block of queries and its keys (none without dropout)."""
    return keep[:, :, start:stop, :seen] if keep.size else keep


def _scores(work, q, start: int, stop: int, seen: int):
    """A C-contiguous (B, H, stop - start, seen) array at the start of the flat `work` (the largest block's size):
    one allocation per call serves every block."""
    shape = q.shape[:2] + (stop - start, seen)
    return work[:math.prod(shape)].reshape(shape)


def _work(q, k):
    """Room for the scores of attention's largest block of queries."""
    return np.empty(q.shape[0] * q.shape[1] * min(QUERY_BLOCK, q.shape[2]) * k.shape[2], dtype=np.float32)


def attention_forward(q, k, v, scale, keep, out, log_normalizer):
    """P = softmax(q k^T scale) over the keys each query sees (query i: keys 0 .. i + Tk - Tq), out = (P * keep) v,
    log_normalizer = logsumexp of each row of scaled scores, all of shape (B, H, T, .); keep: dropout factors or empty.
    By blocks of queries, each with the keys it sees; the scores live only during this call (the backward
    recomputes them)."""
    work = _work(q, k)
    for start, stop, seen in query_blocks(q.shape[2], k.shape[2]):
        scores = _scores(work, q, start, stop, seen)
        np.matmul(q[:, :, start:stop], k[:, :, :seen].swapaxes(2, 3), out=scores)
        causal_softmax(scores, scale, _block_of(keep, start, stop, seen), log_normalizer[:, :, start:stop])
        np.matmul(scores, v[:, :, :seen], out=out[:, :, start:stop])


def attention_backward(grad, q, k, v, scale, keep, log_normalizer, grad_q, grad_k, grad_v):
    """With P = exp(q k^T scale - log_normalizer) (causal) recomputed and A = P * keep:
    grad_v = A^T grad, dP = (grad v^T) * keep, dS = P (dP - sum_j P dP), grad_q = dS k scale, grad_k = dS^T q scale.
    By blocks of queries, as the forward; the last block sees every key and writes grad_k and grad_v, the others
    add (so there is at least one query: the op itself answers zeros for none)."""
    work, more_work = _work(q, k), _work(q, k)
    for index, (start, stop, seen) in enumerate(query_blocks(q.shape[2], k.shape[2])):
        probs, dscores = _scores(work, q, start, stop, seen), _scores(more_work, q, start, stop, seen)
        np.matmul(q[:, :, start:stop], k[:, :, :seen].swapaxes(2, 3), out=probs)
        np.matmul(grad[:, :, start:stop], v[:, :, :seen].swapaxes(2, 3), out=dscores)
        causal_softmax_backward(probs, dscores, scale, _block_of(keep, start, stop, seen), log_normalizer[:, :, start:stop])
        np.matmul(dscores, k[:, :, :seen], out=grad_q[:, :, start:stop])
        if index == 0:
            np.matmul(probs.swapaxes(2, 3), grad[:, :, start:stop], out=grad_v[:, :, :seen])
            np.matmul(dscores.swapaxes(2, 3), q[:, :, start:stop], out=grad_k[:, :, :seen])
        else:
            grad_v[:, :, :seen] += probs.swapaxes(2, 3) @ grad[:, :, start:stop]
            grad_k[:, :, :seen] += dscores.swapaxes(2, 3) @ q[:, :, start:stop]


@njit(void(Scores, float64, Heads, HeadRows), **COMPILE, fastmath=FAST)
def causal_softmax(scores, scale, keep, log_normalizer):
    """In place, row by row of (B, H, Tq, Tk) scores: P = softmax(scores scale) over the keys query i sees
    (0 .. i + Tk - Tq; the others 0), scores = P * keep (keep: dropout factors or empty),
    log_normalizer = logsumexp of the row's scaled scores."""
    batch, heads, queries, keys = scores.shape
    dropout = keep.size > 0
    for b, h, i in np.ndindex(batch, heads, queries):  # one loop per step: each vectorises on its own
        seen = max(i + keys - queries + 1, 0)  # a query before the first key sees none
        s = scores[b, h, i]
        largest = np.float32(-np.inf)
        for j in range(seen):
            largest = max(largest, s[j])
        largest *= np.float32(scale)  # the largest scaled score: scale > 0 keeps the order
        for j in range(seen):
            s[j] = exp(s[j] * np.float32(scale) - largest)
        total = 0.0
        for j in range(seen):
            total += s[j]
        inverse = np.float32(1.0 / total)
        if dropout:
            for j in range(seen):
                s[j] *= keep[b, h, i, j] * inverse
        else:
            for j in range(seen):
                s[j] *= inverse
        s[seen:] = 0.0
        log_normalizer[b, h, i] = largest + math.log(total)


@njit(void(Scores, Scores, float64, Heads, HeadRows), **COMPILE, fastmath=FAST)
def causal_softmax_backward(probs, dscores, scale, keep, log_normalizer):
    """In place, row by row, from scores = q k^T and dscores = grad v^T: probs = A = P * keep with
    P = exp(scores scale - log_normalizer) (0 where the query does not see the key), dscores = dS scale with
    dP = dscores * keep, dS = P (dP - sum_j P dP)."""
    batch, heads, queries, keys = probs.shape
    dropout = keep.size > 0
    for b, h, i in np.ndindex(batch, heads, queries):  # one loop per step: each vectorises on its own
        seen = max(i + keys - queries + 1, 0)  # a query before the first key sees none
        p, d = probs[b, h, i], dscores[b, h, i]
        for j in range(seen):
            p[j] = exp(p[j] * np.float32(scale) - log_normalizer[b, h, i])
        if dropout:
            for j in range(seen):
                d[j] *= keep[b, h, i, j]
        projection = 0.0
        for j in range(seen):
            projection += p[j] * d[j]
        for j in range(seen):
            d[j] = p[j] * (d[j] - np.float32(projection)) * np.float32(scale)
        if dropout:
            for j in range(seen):
                p[j] *= keep[b, h, i, j]
        p[seen:], d[seen:] = 0.0, 0.0


@njit(void(Vector, Vector, Vector, Vector, int64, float64, float64, float64, float64, float64, float64),
      **COMPILE)
def adam_update(values, grads, exp_avg, exp_avg_sq, decayed, learning_rate, beta1, beta2, eps, weight_decay, step):
    """p *= 1 - lr wd (the first `decayed` values), m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), over flat arrays (torch.optim.AdamW's steps),
    in float32 as torch's: the factors are computed in float64 once, then rounded."""
    step_size = np.float32(learning_rate / (1.0 - beta1 ** step))
    correction = np.float32(math.sqrt(1.0 - beta2 ** step))
    decay = np.float32(1.0 - learning_rate * weight_decay)
    b1, b2, eps32 = np.float32(beta1), np.float32(beta2), np.float32(eps)
    one_minus_b1, one_minus_b2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    for i in range(values.size):
        g = grads[i]
        m = b1 * exp_avg[i] + one_minus_b1 * g
        v = b2 * exp_avg_sq[i] + one_minus_b2 * (g * g)
        p = values[i] * decay if i < decayed else values[i]
        values[i] = p - step_size * m / (np.sqrt(v) / correction + eps32)
        exp_avg[i], exp_avg_sq[i] = m, v


@njit(void(Vector, Vector, Vector, float64, float64, float64, float64, boolean, boolean), **COMPILE)
def sgd_update(values, grads, momentum_buffer, learning_rate, momentum, dampening, weight_decay, nesterov, first_step):
    """g += wd p; b = g (first step) or momentum b + (1 - dampening) g; p -= lr (g + momentum b if nesterov else b),
    over flat arrays (torch.optim.SGD's steps); without momentum p -= lr g and the buffer is not touched."""
    for i in range(values.size):
        g = grads[i] + weight_decay * values[i]
        if momentum != 0.0:
            b = g if first_step else momentum * momentum_buffer[i] + (1.0 - dampening) * g
            momentum_buffer[i] = b
            g = g + momentum * b if nesterov else b
        values[i] -= learning_rate * g
