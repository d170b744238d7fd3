"""The op layer: one class per differentiable op, forward(Buffers) and a hand-derived backward(grad).

    operation.py   Operation, the base class (a user's own op subclasses it: docs/operation.md)
    primitives.py  the documented primitives (Add ... Tril), written in Buffer operations
    fused.py       the fused ops (Matmul, Linear, Softmax, CrossEntropy, LayerNorm, GELU, Embedding, Dropout,
                   attention): a whole piece of math in one op, each calling its kernels (tinygpt.kernels)
    modern.py      the fused ops of the modern GPT recipe (RMSNorm, rotary embeddings with QK-norm, ReLU^2,
                   the logits' soft-cap)

Every op is reached as `tinygpt.mlops.<Name>`, as the SPEC names them.
"""
from tinygpt.mlops.fused import (GELU, CrossEntropy, Dropout, Embedding, LayerNorm, Linear, LogSoftmax, Matmul,
                                 MultiHeadAttention, ScaledDotProductAttention, Softmax)
from tinygpt.mlops.modern import ReluSquared, RMSNorm, RotaryQKNorm, SoftCap
from tinygpt.mlops.operation import Operation
from tinygpt.mlops.primitives import (Add, Cast, Concatenate, Div, Exp, Expand, Log, Max, Maximum, Mul, Neg, Permute,
                                      Pow, Relu, Reshape, Slice, Sub, Sum, Tanh, Tril)

__all__ = [
    "Operation", "Add", "Sub", "Neg", "Mul", "Div", "Pow", "Log", "Exp", "Maximum", "Relu", "Cast", "Tanh", "GELU",
    "Sum", "Max", "Reshape", "Expand", "Permute", "Slice", "Concatenate", "Tril", "Matmul", "Softmax",
    "LogSoftmax", "CrossEntropy", "LayerNorm", "Embedding", "Dropout", "ScaledDotProductAttention",
    "MultiHeadAttention", "Linear", "RMSNorm", "RotaryQKNorm", "ReluSquared", "SoftCap",
]
