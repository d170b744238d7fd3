"""Operation: the base class of every differentiable op (the primitives, the fused ops and the modern recipe's)."""
from __future__ import annotations

from tinygpt.buffer import Buffer


class Operation:
    """A differentiable op: forward keeps what backward needs; backward maps the output grad to input grads."""

    def __init__(self, needs_input_grad: list[bool]) -> None:
        self.needs_input_grad = needs_input_grad

    def forward(self, *buffers: Buffer, **kwargs) -> Buffer:
        raise NotImplementedError

    def backward(self, grad: Buffer) -> Buffer | None | tuple[Buffer | None, ...]:
        raise NotImplementedError


__all__ = ["Operation"]
