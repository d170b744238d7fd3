"""Module: a dict of parameters (Tensors) and sub-modules, traversed by the generic tree utilities."""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from tinygpt.buffer import Buffer
from tinygpt.serialization import load_arrays, save_arrays
from tinygpt.tensor import Tensor
from tinygpt.utils import pack, tree_flatten, tree_map, tree_unflatten


def _is_entry(value: Any) -> bool:
    """Tensors, Modules, and lists/dicts made of them are a Module's entries; anything else is a plain attribute."""
    if isinstance(value, (Tensor, Module)):
        return True
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(_is_entry(item) for item in value)
    if isinstance(value, dict):
        return len(value) > 0 and all(_is_entry(item) for item in value.values())
    return False


def _is_tensor(value: Any) -> bool:
    return isinstance(value, Tensor)


def _is_module(value: Any) -> bool:
    return isinstance(value, Module)


def _modules_in(value: Any) -> list["Module"]:
    """The modules an entry holds: itself, or those in its (nested) list or dict."""
    return [leaf for _, leaf in tree_flatten(value, is_leaf=_is_module) if _is_module(leaf)]


def gradient_storage(tensors: Sequence[Tensor]):
    """The one flat array of Module.pack_gradients that holds exactly these tensors' gradients, each in its
    slot; None when some gradient is missing or lives elsewhere."""
    homes = [tensor.grad_home() for tensor in tensors]
    if not homes or any(home is None for home in homes):
        return None
    storage = homes[0].data
    if any(home.data is not storage for home in homes) or sum(home.numel for home in homes) != storage.size:
        return None
    return storage


class Module(dict):
    """Base class of layers: entries are parameters and sub-modules; `__call__` runs `forward`."""

    def __init__(self) -> None:
        super().__init__()
        self.__dict__["training"] = True

    def __getattr__(self, key: str) -> Any:
        if key in self:
            return self[key]
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        if _is_entry(value):
            self[key] = value
        else:
            self.pop(key, None)
            super().__setattr__(key, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def __repr__(self) -> str:
        """The layer tree, as PyTorch prints it: own parameters' shapes, then each sub-module indented."""
        own = ", ".join(f"{name}={tensor.shape}" for name, tensor in self._own_parameters())
        lines = [f"({name}): {repr(child)}".replace("\n", "\n  ") for name, child in self._submodules()]
        if not lines:
            return f"{type(self).__name__}({own})"
        return "\n  ".join([f"{type(self).__name__}({own}"] + lines) + "\n)"

    def summary(self) -> str:
        """A table of the layer tree (torchinfo's): each module, its own parameters' shapes, the count under
        it; then the total (with nanoGPT's "M" figure), trainable and frozen counts."""
        rows = [(f"{'  ' * depth}{name} ({type(module).__name__})" if name else type(module).__name__,
                 ", ".join(f"{key} {tensor.shape}" for key, tensor in module._own_parameters()),
                 f"{module.num_parameters():,}") for depth, name, module in self._walk()]
        header = ("Layer (type)", "Parameters", "Count")
        widths = [max(len(row[column]) for row in rows + [header]) for column in range(3)]
        line = lambda row: f"{row[0]:<{widths[0]}}   {row[1]:<{widths[1]}}   {row[2]:>{widths[2]}}"
        rule = "=" * len(line(header))
        total = self.num_parameters()
        trainable = sum(tensor.numel for _, tensor in tree_flatten(self.trainable_parameters(), is_leaf=_is_tensor))
        return "\n".join([line(header), rule] + [line(row) for row in rows] + [
            rule, f"Total parameters: {total:,} ({total / 1e6:.2f}M)",
            f"Trainable parameters: {trainable:,}", f"Frozen parameters: {total - trainable:,}"])

    def _own_parameters(self) -> list[tuple[str, Tensor]]:
        """The parameters held by this module's own entries (not by its sub-modules, nor private `_` entries)."""
        return [(name, tensor) for key, value in self.items() if not _modules_in(value) and not key.startswith("_")
                for name, tensor in tree_flatten(value, prefix=key, is_leaf=_is_tensor) if _is_tensor(tensor)]

    def _submodules(self) -> list[tuple[str, "Module"]]:
        """The direct sub-modules with their keys ("layers.0" for the items of a list entry)."""
        return [(name, module) for key, value in self.items()
                for name, module in tree_flatten(value, prefix=key, is_leaf=_is_module) if _is_module(module)]

    def _walk(self, depth: int = 0, name: str = "") -> list[tuple[int, str, "Module"]]:
        """(depth, key, module) for this module and every sub-module, depth first."""
        walked = [(depth, name, self)]
        for key, child in self._submodules():
            walked.extend(child._walk(depth + 1, key))
        return walked

    __hash__ = object.__hash__  # modules are compared by identity, not by content
    __eq__ = object.__eq__  # type: ignore[assignment]

    # ---- traversal -----------------------------------------------------------------------------
    def _tree(self, keep: Callable[[Tensor], bool]) -> dict:
        """Nested dicts/lists of the Tensors for which keep(tensor) holds; emptied dict entries are dropped,
        emptied list items stay as {} so that list indices keep their meaning. A module's entries whose
        names start with `_` are private, not parameters (as MLX and the original TinyGPT)."""
        def visit(value):
            if isinstance(value, Tensor):
                return value if keep(value) else {}
            if isinstance(value, dict):
                children = {key: visit(child) for key, child in value.items()
                            if not (isinstance(value, Module) and key.startswith("_"))}
                return {key: child for key, child in children.items() if isinstance(child, Tensor) or child}
            children = [visit(child) for child in value]
            return children if any(isinstance(child, Tensor) or child for child in children) else []
        return visit(self)

    def parameters(self) -> dict:
        """Every Tensor entry but the private ones (`_name`), as nested dicts and lists (keys as in `self`)."""
        return self._tree(lambda tensor: True)

    def trainable_parameters(self) -> dict:
        """The parameters that are not frozen (requires_grad is True)."""
        return self._tree(lambda tensor: tensor.requires_grad)

    def named_parameters(self) -> list[tuple[str, Tensor]]:
        """[("blocks.0.attn.c_attn.weights", tensor), ...] in insertion order: the leaves of parameters(), found
        in one walk (a training step asks several times)."""
        named: list[tuple[str, Tensor]] = []

        def visit(value, prefix: str) -> None:
            if isinstance(value, Tensor):
                named.append((prefix, value))
                return
            entries = value.items() if isinstance(value, dict) else enumerate(value)
            for key, child in entries:
                if not (isinstance(value, Module) and key.startswith("_")):
                    visit(child, f"{prefix}.{key}" if prefix else str(key))
        visit(self, "")
        return named

    def children(self) -> dict:
        """The direct sub-modules (a list entry of modules stays a list)."""
        return {key: value for key, value in self.items() if _modules_in(value)}

    def named_modules(self) -> list[tuple[str, "Module"]]:
        """("", self) then every sub-module with its dotted key, depth first."""
        named = [("", self)]
        for key, value in self.items():
            for name, module in tree_flatten(value, prefix=key, is_leaf=_is_module):
                if _is_module(module):
                    named.extend((f"{name}.{sub}" if sub else name, child) for sub, child in module.named_modules())
        return named

    def modules(self) -> list["Module"]:
        return [module for _, module in self.named_modules()]

    def leaf_modules(self) -> dict:
        """Nested dict of the modules that have no sub-modules."""
        leaves = [(name, module) for name, module in self.named_modules() if name and not module.children()]
        return tree_unflatten(leaves) if leaves else {}

    def num_parameters(self) -> int:
        """Total number of scalar values in all parameters (frozen ones included)."""
        return sum(tensor.numel for _, tensor in self.named_parameters())

    # ---- changing parameters -------------------------------------------------------------------
    def pack_parameters(self, names: Sequence[str]):
        """Copy the named parameters, in this order, into one flat array and make each a view of it (a Buffer
        is an offset into flat storage, so the model computes as before); returns that array.
        An optimizer asks for this to update every parameter in one pass over one buffer."""
        tensors = dict(self.named_parameters())
        buffers = [tensors[name].buffer for name in names]
        flat = pack([buffer.array for buffer in buffers])
        for buffer, offset in zip(buffers, itertools.accumulate((buffer.numel for buffer in buffers), initial=0)):
            buffer.rehome(flat, offset)
        return flat

    def pack_gradients(self, names: Sequence[str]):
        """One flat array for the gradients of the named parameters, in this order: each parameter's gradient
        is written into its slot at every backward (Tensor.keep_grad_in), so that the all-reduce, the clipping
        and the optimizer read all of them as one array. Returns that array."""
        tensors = dict(self.named_parameters())
        chosen = [tensors[name] for name in names]
        storage = Buffer.from_array(chosen[0].buffer.xp.empty(sum(t.numel for t in chosen), dtype=chosen[0].dtype.numpy))
        for tensor, offset in zip(chosen, itertools.accumulate((tensor.numel for tensor in chosen), initial=0)):
            tensor.keep_grad_in(storage.contiguous_view(tensor.shape, offset))
        return storage.data

    def packed_gradients(self):
        """The array of pack_gradients when it holds the gradients of every trainable parameter, each in its
        slot; else None (some gradient is missing or lives elsewhere)."""
        return gradient_storage([tensor for _, tensor in self.named_parameters() if tensor.requires_grad])

    def update(self, parameters: dict) -> "Module":  # type: ignore[override]
        """Replace parameters by the Tensors of a nested dict shaped like `parameters()`."""
        def merge(target, new):
            for key, value in (new.items() if isinstance(new, dict) else enumerate(new)):
                key = int(key) if isinstance(target, list) else key
                if isinstance(value, Tensor):
                    target[key] = value
                else:
                    merge(target[key], value)
        merge(self, parameters)
        return self

    def apply(self, fn: Callable[[Tensor], Tensor]) -> "Module":
        """Replace every parameter p by fn(p)."""
        return self.update(tree_map(fn, self.parameters(), is_leaf=_is_tensor))

    def to(self, device: str) -> "Module":
        """Move every parameter to a device (cpu or cuda)."""
        return self.apply(lambda tensor: tensor.to(device))

    def _set_requires_grad(self, flag: bool, keys: str | Iterable[str] | None, recurse: bool, strict: bool) -> "Module":
        keys = [keys] if isinstance(keys, str) else keys
        modules = self.modules() if recurse else [self]
        for module in modules:
            own = [key for key, value in module.items() if not _modules_in(value)]
            selected = own if keys is None else [key for key in keys if key in own]
            if strict and keys is not None and module is self:
                missing = sorted(set(keys) - set(own))
                if missing:
                    raise KeyError(f"{type(self).__name__} has no parameters named {missing}")
            for key in selected:
                for _, tensor in tree_flatten(module[key], is_leaf=_is_tensor):
                    tensor.requires_grad = flag
                    if not flag:
                        tensor.grad = None
        return self

    def freeze(self, keys: str | Iterable[str] | None = None, recurse: bool = True, strict: bool = False) -> "Module":
        """Stop training the parameters named by keys (all when None), in sub-modules too when recurse."""
        return self._set_requires_grad(False, keys, recurse, strict)

    def unfreeze(self, keys: str | Iterable[str] | None = None, recurse: bool = True, strict: bool = False) -> "Module":
        """Train again the parameters named by keys (all when None)."""
        return self._set_requires_grad(True, keys, recurse, strict)

    def train(self, mode: bool = True) -> "Module":
        """Training mode (dropout active) for this module and every sub-module."""
        for module in self.modules():
            module.__dict__["training"] = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for _, tensor in self.named_parameters():
            tensor.grad = None

    # ---- weights on disk -------------------------------------------------------------------------
    def save_weights(self, path: str) -> None:
        """Write every parameter to `.safetensors` or `.json` (chosen by extension), atomically."""
        save_arrays(path, {name: tensor.numpy() for name, tensor in self.named_parameters()})

    def load_weights(self, path_or_list: str | list[tuple[str, Any]], strict: bool = True) -> "Module":
        """Load parameters from a weights file or a list of (name, array/Tensor); strict checks every key."""
        from_file = isinstance(path_or_list, (str, bytes)) or hasattr(path_or_list, "__fspath__")
        if from_file:
            arrays = load_arrays(path_or_list)
        else:
            arrays = {name: value.numpy() if isinstance(value, Tensor) else value for name, value in path_or_list}
        current = dict(self.named_parameters())
        problems = []
        if strict:
            problems += [f"missing key {name!r}" for name in current if name not in arrays]
            problems += [f"unexpected key {name!r}" for name in arrays if name not in current]
        for name, array in arrays.items():
            if name not in current:
                continue
            if tuple(array.shape) != current[name].shape:
                problems.append(f"key {name!r} has shape {tuple(array.shape)}, expected {current[name].shape}")
            if _dtype_differs(np.asarray(array).dtype, current[name].dtype.numpy, exact=from_file):
                problems.append(f"key {name!r} is {np.asarray(array).dtype}, expected {current[name].dtype.value}")
        if problems:
            raise ValueError(f"cannot load weights into {type(self).__name__}: " + "; ".join(problems))
        loaded = [(name, Tensor(array, dtype=current[name].dtype, requires_grad=current[name].requires_grad,
                                device=current[name].device)) for name, array in arrays.items() if name in current]
        return self.update(tree_unflatten(loaded)) if loaded else self


def _dtype_differs(stored: np.dtype, expected: np.dtype, exact: bool) -> bool:
    """A file must hold the parameter's dtype (its bits are never reinterpreted); given arrays only its kind."""
    return stored != expected if exact else (stored.kind == "f") != (expected.kind == "f")


__all__ = ["Module"]
