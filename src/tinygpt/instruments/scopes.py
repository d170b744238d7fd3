"""Which module is running: while a ModuleScopes is active, Module.__call__ keeps a stack of module names.

The swap lasts as long as the `with` block: outside it Module.__call__ is the plain one, at no cost.
"""
from __future__ import annotations

from typing import Any, Callable

from tinygpt import tensor
from tinygpt.module import Module


class ModuleScopes:
    """Context manager: `current` is the dotted name in `model` of the innermost module running ("blocks.2.attn");
    modules outside `model` go by their class name. on_output(name, module, output) sees each call's result."""

    def __init__(self, model: Module | None = None, on_output: Callable[[str, Module, Any], None] | None = None) -> None:
        named = model.named_modules() if model is not None else []
        self.names = {id(module): name or type(module).__name__ for name, module in named}
        self.on_output = on_output
        self.stack: list[str] = []

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else ""

    def __enter__(self) -> "ModuleScopes":
        self.original_call = Module.__call__
        scopes = self

        def call_in_scope(module: Module, *args, **kwargs):
            scopes.stack.append(scopes.names.get(id(module), type(module).__name__))
            try:
                output = scopes.original_call(module, *args, **kwargs)
            finally:
                name = scopes.stack.pop()
            if scopes.on_output is not None:
                scopes.on_output(name, module, output)
            return output

        Module.__call__ = call_in_scope
        return self

    def __exit__(self, *exc_info) -> None:
        Module.__call__ = self.original_call


class OpObserver:
    """Base of what tensor.apply_op and GradientFunction.backward hand every op to while it is installed
    (`with observer:`): forward and backward must run the op and return its result. One at a time; with
    `scopes`, its ModuleScopes is active as long as the observer is."""

    scopes: ModuleScopes | None = None

    def forward(self, operation, buffers: list, kwargs: dict):
        return operation.forward(*buffers, **kwargs)

    def backward(self, operation, grad):
        return operation.backward(grad)

    def __enter__(self):
        if tensor._observer is not None:
            raise RuntimeError(f"{type(tensor._observer).__name__} is already recording: one instrument at a time")
        if self.scopes is not None:
            self.scopes.__enter__()
        tensor._observer = self
        return self

    def __exit__(self, *exc_info) -> None:
        tensor._observer = None
        if self.scopes is not None:
            self.scopes.__exit__()


__all__ = ["ModuleScopes", "OpObserver"]
