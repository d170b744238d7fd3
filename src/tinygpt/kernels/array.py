"""Array kernels: the same functions as `tinygpt.kernels.cpu`, as vectorised calls of the array module
(numpy on the CPU, CuPy on the GPU). They run on device="cuda", and on the CPU where numba is missing."""
from __future__ import annotations

import math

import numpy as np

from tinygpt import backend

GELU_C = math.sqrt(2.0 / math.pi)


def _xp(array):
    return backend.array_module(backend.device_of(array))


def gelu_forward(x, out):
    """out = x/2 (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi), over flat arrays."""
    xp = _xp(x)
    t = xp.tanh(GELU_C * (x + 0.044715 * x * x * x))
    xp.multiply(0.5 * x, 1.0 + t, out=out)


def gelu_backward(grad, x, grad_x):
    """grad_x = grad * ((1 + t)/2 + x/2 (1 - t^2) c (1 + 3*0.044715 x^2)), t = tanh(c (x + 0.044715 x^3))."""
    xp = _xp(x)
    t = xp.tanh(GELU_C * (x + 0.044715 * x * x * x))
    slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x)
    xp.multiply(grad, slope, out=grad_x)


def layer_norm_forward(x, weight, bias, eps, out, mean, rstd):
    """out = (x - mean) * rstd * weight + bias per row, rstd = 1 / sqrt(var + eps)."""
    xp = _xp(x)
    mean[...] = x.mean(axis=1)
    centred = x - mean[:, None]
    rstd[...] = 1.0 / xp.sqrt((centred * centred).mean(axis=1) + eps)
    out[...] = centred * rstd[:, None] * weight + bias


def layer_norm_backward(grad, x, weight, mean, rstd, grad_x, grad_weight, grad_bias):
    """With xh = (x - mean) rstd and dxh = grad * weight:
    grad_x = rstd (dxh - mean(dxh) - xh mean(dxh xh)), grad_weight = sum_rows grad xh, grad_bias = sum_rows grad."""
    xh = (x - mean[:, None]) * rstd[:, None]
    dxh = grad * weight
    grad_x[...] = rstd[:, None] * (dxh - dxh.mean(axis=1, keepdims=True) - xh * (dxh * xh).mean(axis=1, keepdims=True))
    grad_weight[...] = (grad * xh).sum(axis=0)
    grad_bias[...] = grad.sum(axis=0)


def rms_normalize(xp, rows, eps: float):
    """(x * rstd, rstd) over the last axis, rstd = 1 / sqrt(mean(x^2) + eps)."""
    mean_square = xp.einsum("...i,...i->...", rows, rows)[..., None] * (1.0 / rows.shape[-1])
    rstd = 1.0 / xp.sqrt(mean_square + eps)
    return rows * rstd, rstd


def rms_normalize_backward(xp, grad_normalized, normalized, rstd):
    """dx = rstd * (dxh - xh * mean(dxh * xh)) for xh = x * rstd."""
    projection = xp.einsum("...i,...i->...", grad_normalized, normalized)[..., None] * (1.0 / normalized.shape[-1])
    return (grad_normalized - normalized * projection) * rstd


def rotate(xp, x, cos, sin, direction: float = 1.0):
    """(x1 cos - x2 sin, x2 cos + x1 sin) for the halves x1, x2 of the last axis; direction -1 turns back (the transpose)."""
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    sin = sin * direction
    return xp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def rotary_qk_norm_forward(qkv, heads, cos, sin, eps, qk_norm, normalized, rstd):
    """In place on the first `heads` slots of each (b, t) of qkv (B, T, slots, d): x <- x rstd with
    rstd = 1 / sqrt(mean(x^2) + eps) if qk_norm (x rstd kept in normalized), then, if cos has rows, the halves
    turned by position t: (x1 cos - x2 sin, x2 cos + x1 sin)."""
    xp = _xp(qkv)
    query_key = qkv[:, :, :heads]
    if qk_norm:
        query_key[...], row_rstd = rms_normalize(xp, query_key, eps)
        normalized[...], rstd[...] = query_key, row_rstd[..., 0]
    if len(cos):
        query_key[...] = rotate(xp, query_key, cos[:, None, :], sin[:, None, :])


def rotary_qk_norm_backward(grad, heads, cos, sin, qk_norm, normalized, rstd):
    """In place on the first `heads` slots of grad (B, T, slots, d): turned back (the transpose of the
    rotation) if cos has rows, then, if qk_norm, g <- rstd (g - xh mean(g xh)) with xh = normalized."""
    xp = _xp(grad)
    grad_query_key = grad[:, :, :heads]
    if len(cos):
        grad_query_key[...] = rotate(xp, grad_query_key, cos[:, None, :], sin[:, None, :], direction=-1.0)
    if qk_norm:
        grad_query_key[...] = rms_normalize_backward(xp, grad_query_key, normalized, rstd[..., None])


def cross_entropy_forward(logits, targets, losses, log_normalizer):
    """log_normalizer = logsumexp(logits) per row (shifted by the row max), losses = log_normalizer - logits[target]."""
    xp = _xp(logits)
    largest = logits.max(axis=1, keepdims=True)
    log_normalizer[...] = largest[:, 0] + xp.log(xp.exp(logits - largest).sum(axis=1))
    losses[...] = log_normalizer - logits[xp.arange(len(targets)), targets]


def cross_entropy_backward(logits, targets, log_normalizer, grad_rows, grad_logits):
    """grad_logits = grad_rows * (softmax(logits) - onehot(targets)), softmax = exp(logits - log_normalizer)."""
    xp = _xp(logits)
    grad_logits[...] = xp.exp(logits - log_normalizer[:, None]) * grad_rows[:, None]
    grad_logits[xp.arange(len(targets)), targets] -= grad_rows


def embedding_backward(ids, grad, grad_weight):
    """grad_weight[ids[r]] += grad[r] for each row r (repeated ids accumulate).

    numpy: sort the ids and sum each run with reduceat (np.add.at, unbuffered, is much slower on an
    embedding gradient); CuPy: cupyx.scatter_add (atomic adds on the GPU)."""
    grad_weight[...] = 0.0
    if len(ids) == 0:
        return
    if _xp(grad) is not np:
        import cupyx

        cupyx.scatter_add(grad_weight, ids, grad)
        return
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    run_starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
    grad_weight[sorted_ids[run_starts]] += np.add.reduceat(grad[order], run_starts, axis=0)


def _causal_scores(q, k, scale):
    """q k^T scale with -inf where a query may not see a key (query i sees keys 0 .. i + Tk - Tq)."""
    xp = _xp(q)
    queries, keys = q.shape[2], k.shape[2]
    scores = xp.matmul(q, xp.swapaxes(k, -1, -2)) * scale
    allowed = xp.tri(queries, keys, k=keys - queries, dtype=bool)
    return xp.where(allowed, scores, -xp.inf)


def attention_forward(q, k, v, scale, keep, out, log_normalizer):
    """P = softmax(q k^T scale) over the keys each query sees (query i: keys 0 .. i + Tk - Tq), out = (P * keep) v,
    log_normalizer = logsumexp of each row of scaled scores, all of shape (B, H, T, .); keep: dropout factors or empty."""
    xp = _xp(q)
    scores = _causal_scores(q, k, scale)
    largest = scores.max(axis=-1, keepdims=True)
    probs = xp.exp(scores - largest)
    total = probs.sum(axis=-1, keepdims=True)
    probs /= total
    log_normalizer[...] = (largest + xp.log(total))[..., 0]
    out[...] = xp.matmul(probs * keep if keep.size else probs, v)


def attention_backward(grad, q, k, v, scale, keep, log_normalizer, grad_q, grad_k, grad_v):
    """With P = exp(q k^T scale - log_normalizer) (causal) recomputed and A = P * keep:
    grad_v = A^T grad, dP = (grad v^T) * keep, dS = P (dP - sum_j P dP), grad_q = dS k scale, grad_k = dS^T q scale."""
    xp = _xp(q)
    probs = xp.exp(_causal_scores(q, k, scale) - log_normalizer[..., None])
    dprobs = xp.matmul(grad, xp.swapaxes(v, -1, -2))
    if keep.size:
        grad_v[...] = xp.matmul(xp.swapaxes(probs * keep, -1, -2), grad)
        dprobs *= keep
    else:
        grad_v[...] = xp.matmul(xp.swapaxes(probs, -1, -2), grad)
    dscores = probs * (dprobs - (probs * dprobs).sum(axis=-1, keepdims=True)) * scale
    grad_q[...] = xp.matmul(dscores, k)
    grad_k[...] = xp.matmul(xp.swapaxes(dscores, -1, -2), q)


def adam_update(values, grads, exp_avg, exp_avg_sq, decayed, learning_rate, beta1, beta2, eps, weight_decay, step):
    """p *= 1 - lr wd (the first `decayed` values), m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), over flat arrays (torch.optim.AdamW's steps)."""
    xp = _xp(values)
    values[:decayed] *= 1.0 - learning_rate * weight_decay
    exp_avg *= beta1
    exp_avg += (1.0 - beta1) * grads
    exp_avg_sq *= beta2
    exp_avg_sq += (1.0 - beta2) * (grads * grads)
    denominator = xp.sqrt(exp_avg_sq) / math.sqrt(1.0 - beta2 ** step) + eps
    values -= learning_rate / (1.0 - beta1 ** step) * exp_avg / denominator


def sgd_update(values, grads, momentum_buffer, learning_rate, momentum, dampening, weight_decay, nesterov, first_step):
    """g += wd p; b = g (first step) or momentum b + (1 - dampening) g; p -= lr (g + momentum b if nesterov else b),
    over flat arrays (torch.optim.SGD's steps); without momentum p -= lr g and the buffer is not touched."""
    grads = grads + weight_decay * values
    if momentum != 0.0:
        if first_step:
            momentum_buffer[...] = grads
        else:
            momentum_buffer *= momentum
            momentum_buffer += (1.0 - dampening) * grads
        grads = grads + momentum * momentum_buffer if nesterov else momentum_buffer
    values -= learning_rate * grads
