"""The op layer: one class per differentiable op, forward(Buffers) and a hand-derived backward(grad).

    operation.py   Operation, the base class (a user's own op subclasses it: docs/operation.md)
    primitives.py  the documented primitives (Add ... Tril), written in Buffer operations
    fused.py       the fused ops (Matmul, Linear, Softmax, CrossEntropy, LayerNorm, GELU, Embedding, Dropout,
                   attention): a whole piece of math in one op, each calling its kernels (tinygpt.kernels)
    modern.py      the fused ops of the modern GPT recipe (RMSNorm, rotary embeddings with QK-norm, ReLU^2,
                   the logits' soft-cap)

Every op is reached as `tinygpt.mlops.<Name>`, as the SPEC names them.
"""
from tinygpt.mlops import fused, modern, operation, primitives
from tinygpt.mlops.fused import *  # noqa: F403  (each file's __all__: a new op is named in its own file only)
from tinygpt.mlops.modern import *  # noqa: F403
from tinygpt.mlops.operation import *  # noqa: F403
from tinygpt.mlops.primitives import *  # noqa: F403

__all__ = operation.__all__ + primitives.__all__ + fused.__all__ + modern.__all__
