"""CPU kernels: the loops of each fused op's math, compiled by numba (`prange` shares rows among threads).
The matrix products are in `tinygpt.kernels.products`.

Each kernel writes into arrays its caller allocated and has the same name and arguments as its twin in
`tinygpt.kernels.array`. Storage is float32; sums over a row accumulate in float64.
With NUMBA_DISABLE_JIT=1 these run as plain Python, which a debugger can step through.
"""
from __future__ import annotations

import math

import numpy as np
from numba import boolean, float32, float64, int64, njit, prange, void

from tinygpt.kernels.products import matmul, matmul_nt, matmul_tn  # noqa: F401  (part of this kernel set)

# The array types of the kernels' signatures: one compiled version of each kernel, compiled once
Vector, Matrix, Ids = float32[::1], float32[:, ::1], int64[::1]
Heads, HeadRows = float32[:, :, :, :], float32[:, :, ::1]  # (B, H, T, d) with any strides, (B, H, T)

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


@njit(inline="always", cache=True)
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


@njit(void(Vector, Vector), parallel=True, cache=True)
def gelu_forward(x, out):
    """out = x/2 (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi), over flat arrays."""
    for i in prange(x.size):
        xi = x[i]
        out[i] = np.float32(0.5) * xi * (np.float32(1.0) + tanh(GELU_C * (xi + GELU_CUBIC * xi * xi * xi)))


@njit(void(Vector, Vector, Vector), parallel=True, cache=True)
def gelu_backward(grad, x, grad_x):
    """grad_x = grad * ((1 + t)/2 + x/2 (1 - t^2) c (1 + 3*0.044715 x^2)), t = tanh(c (x + 0.044715 x^3))."""
    for i in prange(x.size):
        xi = x[i]
        t = tanh(GELU_C * (xi + GELU_CUBIC * xi * xi * xi))
        slope = np.float32(0.5) * (np.float32(1.0) + t) + np.float32(0.5) * xi * (np.float32(1.0) - t * t) * GELU_C * (
            np.float32(1.0) + np.float32(3.0) * GELU_CUBIC * xi * xi)
        grad_x[i] = grad[i] * slope


@njit(void(Matrix, Vector, Vector, float64, Matrix, Vector, Vector), parallel=True, cache=True)
def layer_norm_forward(x, weight, bias, eps, out, mean, rstd):
    """out = (x - mean) * rstd * weight + bias per row, rstd = 1 / sqrt(var + eps)."""
    rows, width = x.shape
    for r in prange(rows):
        total = 0.0
        for c in range(width):
            total += x[r, c]
        m = total / width
        squares = 0.0
        for c in range(width):
            centred = x[r, c] - m
            squares += centred * centred
        s = 1.0 / math.sqrt(squares / width + eps)
        for c in range(width):
            out[r, c] = (x[r, c] - m) * s * weight[c] + bias[c]
        mean[r], rstd[r] = m, s


@njit(void(Matrix, Matrix, Vector, Vector, Vector, Matrix, Vector, Vector), parallel=True, cache=True)
def layer_norm_backward(grad, x, weight, mean, rstd, grad_x, grad_weight, grad_bias):
    """With xh = (x - mean) rstd and dxh = grad * weight:
    grad_x = rstd (dxh - mean(dxh) - xh mean(dxh xh)), grad_weight = sum_rows grad xh, grad_bias = sum_rows grad."""
    rows, width = x.shape
    parts = max(min(rows, 64), 1)  # row blocks, each with its own partial sums of grad_weight and grad_bias
    weight_parts = np.zeros((parts, width))
    bias_parts = np.zeros((parts, width))
    for part in prange(parts):
        for r in range(part * rows // parts, (part + 1) * rows // parts):
            mean_dxh = 0.0
            mean_dxh_xh = 0.0
            for c in range(width):
                xh = (x[r, c] - mean[r]) * rstd[r]
                dxh = grad[r, c] * weight[c]
                mean_dxh += dxh
                mean_dxh_xh += dxh * xh
                weight_parts[part, c] += grad[r, c] * xh
                bias_parts[part, c] += grad[r, c]
            mean_dxh /= width
            mean_dxh_xh /= width
            for c in range(width):
                xh = (x[r, c] - mean[r]) * rstd[r]
                grad_x[r, c] = rstd[r] * (grad[r, c] * weight[c] - mean_dxh - xh * mean_dxh_xh)
    for c in prange(width):
        grad_weight[c] = weight_parts[:, c].sum()
        grad_bias[c] = bias_parts[:, c].sum()


@njit(void(Matrix, Ids, Vector, Vector), parallel=True, cache=True)
def cross_entropy_forward(logits, targets, losses, log_normalizer):
    """log_normalizer = logsumexp(logits) per row (shifted by the row max), losses = log_normalizer - logits[target].
    In float32 but for the sum of the exponentials, as PyTorch's log-softmax."""
    rows, classes = logits.shape
    for r in prange(rows):
        largest = logits[r, 0]
        for c in range(1, classes):
            largest = max(largest, logits[r, c])
        total = 0.0
        for c in range(classes):
            total += math.exp(logits[r, c] - largest)
        log_normalizer[r] = largest + np.float32(math.log(total))
        losses[r] = log_normalizer[r] - logits[r, targets[r]]


@njit(void(Matrix, Ids, Vector, Vector, Matrix), parallel=True, cache=True)
def cross_entropy_backward(logits, targets, log_normalizer, grad_rows, grad_logits):
    """grad_logits = grad_rows * (softmax(logits) - onehot(targets)), softmax = exp(logits - log_normalizer), in float32."""
    rows, classes = logits.shape
    for r in prange(rows):
        for c in range(classes):
            grad_logits[r, c] = grad_rows[r] * math.exp(logits[r, c] - log_normalizer[r])
        grad_logits[r, targets[r]] -= grad_rows[r]


@njit(void(Ids, Matrix, Matrix), parallel=True, cache=True)
def embedding_backward(ids, grad, grad_weight):
    """grad_weight[ids[r]] += grad[r] for each row r (repeated ids accumulate); columns shared among threads."""
    rows, width = grad.shape
    grad_weight[:] = 0.0
    parts = max(min(width // 16, 64), 1)
    for part in prange(parts):
        for r in range(rows):
            for c in range(part * width // parts, (part + 1) * width // parts):
                grad_weight[ids[r], c] += grad[r, c]


@njit(void(Heads, Heads, Heads, float64, Heads, Heads, HeadRows), parallel=True, cache=True)
def attention_forward(q, k, v, scale, keep, out, log_normalizer):
    """P = softmax(q k^T scale) over the keys each query sees (query i: keys 0 .. i + Tk - Tq), out = (P * keep) v,
    log_normalizer = logsumexp of each row of scaled scores, all of shape (B, H, T, .); keep: dropout factors or empty.
    One (batch, head) per thread, one query row at a time: no T x T array. The innermost loops run along
    contiguous rows of k^T and v (copied per head), where the compiler vectorises them."""
    batch, heads, queries, dims = q.shape
    keys = k.shape[2]
    dropout = keep.size > 0
    for pair in prange(batch * heads):
        b, h = pair // heads, pair % heads
        keys_t, values = np.ascontiguousarray(k[b, h].T), np.ascontiguousarray(v[b, h])  # (d, Tk), (Tk, d)
        scores = np.empty(keys, dtype=np.float32)
        row = np.empty(dims, dtype=np.float32)
        for i in range(queries):
            seen = i + keys - queries + 1
            scores[:seen] = 0.0
            for c in range(dims):
                scaled_q = q[b, h, i, c] * np.float32(scale)
                for j in range(seen):
                    scores[j] += scaled_q * keys_t[c, j]
            largest = scores[:seen].max()
            total = 0.0
            for j in range(seen):
                scores[j] = math.exp(scores[j] - largest)
                total += scores[j]
            row[:] = 0.0
            for j in range(seen):
                p = scores[j] / np.float32(total)
                if dropout:
                    p *= keep[b, h, i, j]
                for c in range(dims):
                    row[c] += p * values[j, c]
            out[b, h, i, :] = row
            log_normalizer[b, h, i] = largest + math.log(total)


@njit(void(Heads, Heads, Heads, Heads, float64, Heads, HeadRows, Heads, Heads, Heads), parallel=True, cache=True)
def attention_backward(grad, q, k, v, scale, keep, log_normalizer, grad_q, grad_k, grad_v):
    """With P = exp(q k^T scale - log_normalizer) (causal) recomputed and A = P * keep:
    grad_v = A^T grad, dP = (grad v^T) * keep, dS = P (dP - sum_j P dP), grad_q = dS k scale, grad_k = dS^T q scale.
    As the forward: per (batch, head), one query row at a time, innermost loops along contiguous rows."""
    batch, heads, queries, dims = q.shape
    keys = k.shape[2]
    dropout = keep.size > 0
    for pair in prange(batch * heads):
        b, h = pair // heads, pair % heads
        keys_t, values_t = np.ascontiguousarray(k[b, h].T), np.ascontiguousarray(v[b, h].T)  # (d, Tk) each
        keys_rows = np.ascontiguousarray(k[b, h])
        head_grad_k, head_grad_v = np.zeros((keys, dims), dtype=np.float32), np.zeros((keys, dims), dtype=np.float32)
        probs, weights = np.empty(keys, dtype=np.float32), np.empty(keys, dtype=np.float32)
        dprobs = np.empty(keys, dtype=np.float32)
        query, grad_row, row = np.empty(dims, dtype=np.float32), np.empty(dims, dtype=np.float32), np.empty(dims, dtype=np.float32)
        for i in range(queries):
            seen = i + keys - queries + 1
            query[:], grad_row[:] = q[b, h, i, :], grad[b, h, i, :]
            probs[:seen], dprobs[:seen] = 0.0, 0.0
            for c in range(dims):
                scaled_q, g = query[c] * np.float32(scale), grad_row[c]
                for j in range(seen):
                    probs[j] += scaled_q * keys_t[c, j]
                    dprobs[j] += g * values_t[c, j]
            projection = 0.0
            for j in range(seen):
                probs[j] = math.exp(probs[j] - log_normalizer[b, h, i])
                weights[j] = probs[j]
                if dropout:
                    dprobs[j] *= keep[b, h, i, j]
                    weights[j] *= keep[b, h, i, j]
                projection += probs[j] * dprobs[j]
            row[:] = 0.0
            for j in range(seen):
                dscore = probs[j] * (dprobs[j] - np.float32(projection)) * np.float32(scale)
                for c in range(dims):
                    head_grad_v[j, c] += weights[j] * grad_row[c]
                    head_grad_k[j, c] += dscore * query[c]
                    row[c] += dscore * keys_rows[j, c]
            grad_q[b, h, i, :] = row
        grad_k[b, h, :, :] = head_grad_k
        grad_v[b, h, :, :] = head_grad_v


@njit(void(Vector, Vector, Vector, Vector, int64, float64, float64, float64, float64, float64, float64),
      parallel=True, cache=True)
def adam_update(values, grads, exp_avg, exp_avg_sq, decayed, learning_rate, beta1, beta2, eps, weight_decay, step):
    """p *= 1 - lr wd (the first `decayed` values), m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), over flat arrays (torch.optim.AdamW's steps)."""
    step_size = learning_rate / (1.0 - beta1 ** step)
    correction = math.sqrt(1.0 - beta2 ** step)
    decay = 1.0 - learning_rate * weight_decay
    for i in prange(values.size):
        g = grads[i]
        m = beta1 * exp_avg[i] + (1.0 - beta1) * g
        v = beta2 * exp_avg_sq[i] + (1.0 - beta2) * g * g
        p = values[i] * decay if i < decayed else values[i]
        values[i] = p - step_size * m / (math.sqrt(v) / correction + eps)
        exp_avg[i], exp_avg_sq[i] = m, v


@njit(void(Vector, Vector, Vector, float64, float64, float64, float64, boolean, boolean), parallel=True, cache=True)
def sgd_update(values, grads, momentum_buffer, learning_rate, momentum, dampening, weight_decay, nesterov, first_step):
    """g += wd p; b = g (first step) or momentum b + (1 - dampening) g; p -= lr (g + momentum b if nesterov else b),
    over flat arrays (torch.optim.SGD's steps); without momentum p -= lr g and the buffer is not touched."""
    for i in prange(values.size):
        g = grads[i] + weight_decay * values[i]
        if momentum != 0.0:
            b = g if first_step else momentum * momentum_buffer[i] + (1.0 - dampening) * g
            momentum_buffer[i] = b
            g = g + momentum * b if nesterov else b
        values[i] -= learning_rate * g
