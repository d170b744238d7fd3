"""Optimizers (numerically those of PyTorch's of the same name), optimizer groups, schedules and gradient clipping."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from tinygpt import backend, kernels
from tinygpt.buffer import Buffer
from tinygpt.distributed import World, get_world, share_counts, starts
from tinygpt.module import Module, gradient_storage
from tinygpt.serialization import load_arrays, save_arrays
from tinygpt.tensor import Tensor
from tinygpt.utils import check_count, check_finite, check_fraction, is_real, pack, unpack

LearningRate = float | Callable[[int], float]


class Optimizer:
    """Updates a module's trainable parameters from their .grad; `state` maps parameter names to per-parameter state."""

    STATE_FIELDS: tuple[str, ...] = ()  # the arrays each parameter's state holds, as save_state writes them
    world: World | None = None  # the ranks this optimizer's state is shared out among, if any (Adam's moments)

    def __init__(self, module: Module, learning_rate: LearningRate = 1e-3) -> None:
        self.module = module
        self.learning_rate = learning_rate if callable(learning_rate) else check_finite("learning_rate", learning_rate)
        self.step_learning_rate = 0.0  # the learning rate of the step being applied, set by update()
        self.state: dict[str, dict[str, Any]] = {}
        self.step_count = 0

    @property
    def current_learning_rate(self) -> float:
        """The learning rate of the next update (a schedule is called with the number of updates done)."""
        if not callable(self.learning_rate):
            return self.learning_rate
        learning_rate = self.learning_rate(self.step_count)
        if not is_real(learning_rate) or not math.isfinite(learning_rate) or learning_rate < 0:
            raise ValueError(f"the learning rate of step {self.step_count} is {learning_rate}: a schedule must give "
                             "finite numbers >= 0")
        return float(learning_rate)

    def update(self) -> None:
        """Apply one step to every trainable parameter that has a gradient."""
        self.step_learning_rate = self.current_learning_rate
        self.step_count += 1
        updated = [(name, p) for name, p in self.module.named_parameters() if p.requires_grad and p.grad is not None]
        self.apply_all(updated)
        for _, parameter in updated:
            parameter._version += 1

    def apply_all(self, parameters: list[tuple[str, Tensor]]) -> None:
        """Update these (name, parameter) pairs in place: one at a time through apply_single, unless an
        optimizer does better with all of them at once (Muon: stacks of same-shape matrices)."""
        for name, parameter in parameters:
            self.apply_single(parameter, self.state.setdefault(name, {}))

    def step(self) -> None:
        """The same as update() (PyTorch's name)."""
        self.update()

    def apply_single(self, parameter: Tensor, state: dict[str, Any]) -> None:
        """Update one parameter in place (its buffer) and its state, with `self.step_learning_rate`."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        self.module.zero_grad()

    # ---- state on disk ---------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The per-parameter state as {"<parameter name>.<field>": array}, as save_state writes it."""
        return {f"{name}.{key}": backend.to_numpy(value) for name, state in self.state.items() for key, value in state.items()}

    def save_state(self, path: str, arrays: dict[str, np.ndarray] | None = None) -> None:
        """Write the per-parameter state and the step count (`.safetensors` or `.json`), atomically. With the
        state shared out among ranks every rank calls it (state_arrays is a collective) and rank 0 writes;
        `arrays`: state_arrays() taken before (then only rank 0 needs to call it)."""
        arrays = self.state_arrays() if arrays is None else arrays
        if _writes(self):
            save_arrays(path, arrays, metadata={"step_count": str(self.step_count), "optimizer": type(self).__name__})

    def load_state(self, path_or_list, strict: bool = True) -> None:
        """Read state written by save_state; strict checks that it names only this module's parameters."""
        if isinstance(path_or_list, list):
            arrays, metadata = dict(path_or_list), {}
        else:
            arrays, metadata = load_arrays(path_or_list, with_metadata=True)
        if strict and metadata.get("optimizer", type(self).__name__) != type(self).__name__:
            raise ValueError(f"optimizer state of {metadata['optimizer']} cannot be loaded into {type(self).__name__}")
        shapes = {name: tensor.shape for name, tensor in self.module.named_parameters()}
        state: dict[str, dict[str, Any]] = {}
        for key, array in arrays.items():
            name, _, field = key.rpartition(".")
            if name not in shapes:
                if strict:
                    raise ValueError(f"optimizer state names {name!r}, which is not a parameter of the module")
                continue
            if array.ndim and tuple(array.shape) != shapes[name]:
                raise ValueError(f"optimizer state {key!r} has shape {tuple(array.shape)}, expected {shapes[name]}")
            state.setdefault(name, {})[field] = np.array(array)
        step_count = metadata.get("step_count", str(self.step_count))
        if not step_count.isdigit():
            raise ValueError(f"optimizer state: step_count must be an integer >= 0, got {step_count!r}")
        most_steps = int(step_count) if "step_count" in metadata else math.inf  # a list (a group's part) has none
        for name, fields in state.items():
            self._check_state_fields(name, fields, most_steps)
        self.state = state
        self.step_count = int(step_count)

    def _check_state_fields(self, name: str, fields: dict[str, np.ndarray], most_steps: float) -> None:
        """One parameter's loaded state: exactly STATE_FIELDS, float moments, a step that is a count <= most_steps."""
        if self.STATE_FIELDS and sorted(fields) != sorted(self.STATE_FIELDS):
            raise ValueError(f"optimizer state of {name!r} has {sorted(fields)}, expected {sorted(self.STATE_FIELDS)}")
        for field, array in fields.items():
            if field == "step":
                step = float(array) if array.ndim == 0 and array.dtype.kind in "iuf" else math.nan
                if not (math.isfinite(step) and step == int(step) and 0 <= step <= most_steps):
                    raise ValueError(f"optimizer state {name}.step must be a whole number in [0, {most_steps}] "
                                     f"(the steps taken), got {array!r}")
            elif array.dtype.kind != "f":
                raise ValueError(f"optimizer state {name}.{field} is {array.dtype}, expected a float array")


class SGD(Optimizer):
    """p -= lr * g with optional weight decay, momentum (with dampening) and Nesterov momentum, as torch.optim.SGD."""

    STATE_FIELDS = ("momentum_buffer",)

    def __init__(self, module: Module, learning_rate: LearningRate = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(module, learning_rate)
        momentum, weight_decay = check_finite("momentum", momentum), check_finite("weight_decay", weight_decay)
        dampening = check_finite("dampening", dampening)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and zero dampening")
        self.momentum, self.weight_decay, self.dampening, self.nesterov = momentum, weight_decay, dampening, nesterov

    def apply_single(self, parameter: Tensor, state: dict[str, Any]) -> None:
        values, grads = _flat(parameter.buffer), _flat(parameter.grad.buffer)
        first_step = "momentum_buffer" not in state
        if self.momentum and first_step:
            state["momentum_buffer"] = parameter.buffer.xp.empty_like(parameter.buffer.array)
        momentum_buffer = state["momentum_buffer"].reshape(-1) if self.momentum else values[:0]
        kernels.for_device(parameter.device).sgd_update(
            values, grads, momentum_buffer, float(self.step_learning_rate), float(self.momentum), float(self.dampening),
            float(self.weight_decay), bool(self.nesterov), first_step)


def _flat(buffer: Buffer):
    """A contiguous buffer's values as a flat array that shares its storage (what the update kernels write)."""
    if not buffer.is_contiguous():
        raise ValueError(f"an optimizer updates contiguous parameters in place, got strides {buffer.stride} for shape {buffer.shape}")
    return buffer.data[buffer.offset:buffer.offset + buffer.numel]


class Adam(Optimizer):
    """m, v running moments of g and g^2; p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps), as torch.optim.Adam.

    When every trainable parameter has a gradient, one step is one kernel over flat arrays: the optimizer
    asks the module to pack its parameters into one flat buffer (Module.pack_parameters), and the
    moments live in flat arrays too (see FlatParameters).

    `world`: the data-parallel ranks (distributed.World) that train the same parameters on averaged gradients.
    Given several, each rank keeps the moments of its share of the parameters only, and state_arrays (so
    save_state) becomes a collective: every rank calls it, and save_state writes on rank 0 only.
    """

    STATE_FIELDS = ("exp_avg", "exp_avg_sq", "step")

    def __init__(self, module: Module, learning_rate: LearningRate = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, world: World | None = None) -> None:
        super().__init__(module, learning_rate)
        self.betas, self.eps = _check_betas(betas), check_finite("eps", eps)
        self.weight_decay, self.decay_matrices_only, self.world = 0.0, False, world
        self._flat: FlatParameters | None = None

    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = super().state_arrays()  # with the moments shared out among ranks, the steps alone
        if self._flat is None or self._flat.world is None:
            return arrays
        for name, fields in self._flat.gathered_state().items():
            arrays.update({f"{name}.{key}": backend.to_numpy(value) for key, value in fields.items()})
        return arrays

    def load_state(self, path_or_list, strict: bool = True) -> None:
        super().load_state(path_or_list, strict)
        self._flat = None  # rebuilt from the loaded state at the next update

    def decays(self, parameter: Tensor) -> bool:
        """Whether weight decay applies to this parameter (nanoGPT decays only matrices and embeddings)."""
        return self.weight_decay != 0.0 and (parameter.ndim >= 2 or not self.decay_matrices_only)

    def apply_single(self, parameter: Tensor, state: dict[str, Any]) -> None:
        values = _flat(parameter.buffer)
        if "exp_avg" not in state:
            state["step"] = np.array(0.0, dtype=np.float32)
            state["exp_avg"], state["exp_avg_sq"] = parameter.buffer.xp.zeros_like(values), parameter.buffer.xp.zeros_like(values)
        state["step"] = state["step"] + 1
        exp_avg, exp_avg_sq = (state[key].reshape(-1) for key in ("exp_avg", "exp_avg_sq"))
        self.adam_update(parameter.device, values, _flat(parameter.grad.buffer), exp_avg, exp_avg_sq,
                         values.size if self.decays(parameter) else 0, float(state["step"]), self.step_learning_rate)
        state["exp_avg"], state["exp_avg_sq"] = exp_avg.reshape(parameter.shape), exp_avg_sq.reshape(parameter.shape)

    def adam_update(self, device: str, values, grads, exp_avg, exp_avg_sq, decayed: int, step: float, learning_rate: float) -> None:
        """One step of the update kernel over flat arrays, weight decay on the first `decayed` values."""
        beta1, beta2 = self.betas
        kernels.for_device(device).adam_update(values, grads, exp_avg, exp_avg_sq, int(decayed), float(learning_rate),
                                               float(beta1), float(beta2), float(self.eps), float(self.weight_decay), float(step))

    def apply_all(self, parameters: list[tuple[str, Tensor]]) -> None:
        """All of them in one kernel over flat arrays (FlatParameters) where every trainable parameter has a
        gradient, on one device, and all took the same number of steps so far; else one at a time, as PyTorch."""
        trainable = sum(parameter.requires_grad for _, parameter in self.module.named_parameters())
        if not parameters or len(parameters) != trainable or len({p.device for _, p in parameters}) > 1:
            self._release_flat()  # its step count would go stale: rebuilt (if the steps agree again) at a later update
            return super().apply_all(parameters)
        if self._flat is None or not self._flat.holds(parameters):
            self._release_flat()
            if len({float(self.state.get(name, {}).get("step", 0.0)) for name, _ in parameters}) > 1:
                return super().apply_all(parameters)
            self._flat = FlatParameters(parameters, self)
        self._flat.step(self, self.step_learning_rate)

    def _release_flat(self) -> None:
        """Stop updating through the flat arrays, the per-parameter state whole again."""
        if self._flat is not None:
            self._flat.release(self)
        self._flat = None


def _writes(*optimizers: Optimizer) -> bool:
    """Whether this process writes the optimizers' state: rank 0 of the ranks their state is shared among."""
    return all(optimizer.world is None or optimizer.world.is_main for optimizer in optimizers)


def _check_betas(betas: Any) -> tuple[float, float]:
    """Adam's (beta1, beta2), each a real number in [0, 1)."""
    try:
        beta1, beta2 = betas
        return check_fraction("beta1", beta1), check_fraction("beta2", beta2)
    except (TypeError, ValueError):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}") from None


class FlatParameters:
    """The trainable parameters packed by the module into one flat array (decayed ones first), with flat
    gradients and Adam moments. In one process the per-parameter `state` entries of the optimizer are views
    into the flat moments, so saving, loading and the per-parameter path all see the same numbers.

    With a world of several ranks (ZeRO stage 1) each rank keeps the moments of its own share of the flat
    array only (`mine`) and updates that share; one all-gather then gives every rank all the parameters. The
    `state` entries then hold the step alone: the moments come back whole through gathered_state (on rank 0)
    or release (on every rank)."""

    MOMENTS = ("exp_avg", "exp_avg_sq")

    def __init__(self, parameters: list[tuple[str, Tensor]], optimizer: Adam) -> None:
        ordered = sorted(parameters, key=lambda item: not optimizer.decays(item[1]))  # stable: decayed first
        self.names, self.tensors = [name for name, _ in ordered], [tensor for _, tensor in ordered]
        self.device = self.tensors[0].device
        self.values = optimizer.module.pack_parameters(self.names)
        self.grads = optimizer.module.pack_gradients(self.names)
        self.decayed = sum(tensor.numel for tensor in self.tensors if optimizer.decays(tensor))
        world = optimizer.world
        self.world = world if world is not None and world.world_size > 1 else None
        self.counts = share_counts(self.values.size, world.world_size) if self.world else [self.values.size]
        rank = self.world.rank if self.world else 0
        first = starts(self.counts)[rank]
        self.mine = slice(first, first + self.counts[rank])
        self.exp_avg, self.exp_avg_sq = (backend.array_module(self.device).zeros_like(self.values[self.mine])
                                         for _ in self.MOMENTS)
        self.step_number = 0.0
        for name, tensor, (start, stop) in zip(self.names, self.tensors, self.bounds()):
            state = optimizer.state.setdefault(name, {})
            self.step_number = float(state.get("step", self.step_number))
            for key in self.MOMENTS:
                self._take(key, state, start, stop, tensor.shape)

    def bounds(self) -> list[tuple[int, int]]:
        """Where each parameter lies in the flat array."""
        sizes = [tensor.numel for tensor in self.tensors]
        return [(start, start + size) for start, size in zip(starts(sizes), sizes)]

    def _take(self, key: str, state: dict[str, Any], start: int, stop: int, shape: tuple[int, ...]) -> None:
        """Copy this rank's part of one parameter's moment `key` from its state entry, if it has one; without
        ranks the entry then becomes a view of the flat moment, with ranks it is dropped."""
        moment, first, last = getattr(self, key), max(start, self.mine.start), min(stop, self.mine.stop)
        if key in state and first < last:
            whole = backend.array_module(self.device).asarray(state[key]).reshape(-1)
            moment[first - self.mine.start:last - self.mine.start] = whole[first - start:last - start]
        if self.world:
            state.pop(key, None)
        else:
            state[key] = moment[start:stop].reshape(shape)

    def holds(self, parameters: list[tuple[str, Tensor]]) -> bool:
        """Whether these are still the same parameters, still living in the flat storage."""
        return (len(parameters) == len(self.tensors)
                and all(tensor.buffer.data is self.values for _, tensor in parameters)
                and {id(t) for _, t in parameters} == {id(t) for t in self.tensors})

    def step(self, optimizer: Adam, learning_rate: float) -> None:
        if gradient_storage(self.tensors) is not self.grads:  # a gradient was replaced or accumulated elsewhere
            pack([tensor.grad.buffer.array for tensor in self.tensors], self.grads)
        self.step_number += 1.0
        mine = self.mine
        decayed = min(max(self.decayed - mine.start, 0), mine.stop - mine.start)
        optimizer.adam_update(self.device, self.values[mine], self.grads[mine], self.exp_avg, self.exp_avg_sq, decayed,
                              self.step_number, learning_rate)
        if self.world:
            self.world.all_gather(self.values, self.counts)
        step = np.array(self.step_number, dtype=np.float32)
        for name in self.names:
            optimizer.state[name]["step"] = step

    def gathered_state(self) -> dict[str, dict[str, Any]]:
        """Each parameter's whole moments, gathered from the ranks' shares on rank 0 (a collective: every rank
        calls it; the others get {})."""
        whole = {key: self.world.gather_parts(getattr(self, key), self.counts) for key in self.MOMENTS}
        if not self.world.is_main:
            return {}
        return self._split(whole)

    def release(self, optimizer: Adam) -> None:
        """Put the whole moments back into the per-parameter state of every rank (one all-gather each), for the
        per-parameter path or a new FlatParameters; nothing to do without ranks (the state holds views)."""
        if not self.world:
            return
        xp, whole = backend.array_module(self.device), {}
        for key in self.MOMENTS:
            whole[key] = xp.empty_like(self.values)
            whole[key][self.mine] = getattr(self, key)
            self.world.all_gather(whole[key], self.counts)
        for name, fields in self._split(whole).items():
            optimizer.state[name].update(fields)

    def _split(self, whole: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Flat whole moments as {parameter name: {moment: view of the parameter's shape}}."""
        views = {key: unpack(array, [tensor.shape for tensor in self.tensors]) for key, array in whole.items()}
        return {name: {key: views[key][index] for key in whole} for index, name in enumerate(self.names)}


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr * weight_decay before the Adam step, as torch.optim.AdamW.
    With decay_matrices_only, biases and LayerNorm parameters are not decayed (nanoGPT's parameter groups)."""

    def __init__(self, module: Module, learning_rate: LearningRate = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, decay_matrices_only: bool = False,
                 world: World | None = None) -> None:
        super().__init__(module, learning_rate, betas, eps, world)
        self.weight_decay, self.decay_matrices_only = check_finite("weight_decay", weight_decay), decay_matrices_only


def cosine_schedule(max_learning_rate: float, min_learning_rate: float, warmup_steps: int, decay_steps: int) -> Callable[[int], float]:
    """nanoGPT's schedule: linear warmup to max over warmup_steps, cosine decay to min at decay_steps, then min."""
    def learning_rate(step: int) -> float:
        if step < warmup_steps:
            return max_learning_rate * (step + 1) / (warmup_steps + 1)
        if step > decay_steps:
            return min_learning_rate
        progress = (step - warmup_steps) / max(decay_steps - warmup_steps, 1)
        return min_learning_rate + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_learning_rate - min_learning_rate)
    return learning_rate


def _squared_norm(array):
    """sum(array ** 2) in one pass without a temporary."""
    flat = array.reshape(-1)
    return flat @ flat


def clip_grad_norm(module: Module, max_norm: float) -> float:
    """Scale all gradients so that their global L2 norm is at most max_norm; return the norm before clipping."""
    tensors = [tensor for _, tensor in module.named_parameters()]
    grads = [tensor.grad.buffer.array for tensor in tensors if tensor.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float(_squared_norm(g)) for g in grads))
    scale = max_norm / (total + 1e-6)
    if scale >= 1.0:
        return total
    flat = gradient_storage([tensor for tensor in tensors if tensor.requires_grad])
    if flat is not None:  # in place, in the optimizer's flat gradient storage
        flat *= scale
        return total
    for tensor in tensors:
        if tensor.grad is not None:
            tensor.grad = Tensor._wrap(tensor.grad.buffer * scale)
    return total


# ---- Muon and optimizer groups -------------------------------------------------------------------
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic: the steepest slope at zero
MUON_SCALINGS = ("original", "match_rms_adamw")
MAX_NS_STEPS = 99


def newton_schulz(xp, matrix, steps: int = 5, coefficients: tuple[float, float, float] = NEWTON_SCHULZ_COEFFICIENTS,
                  eps: float = 1e-7):
    """X = G / max(|G|_F, eps), then X <- a X + (b A + c A^2) X with A = X X^T, on the wide side of G:
    about U S' V^T for G = U S V^T, S' in (0.5, 1.5) (the orthogonal factor, to within what training needs).
    G is a matrix or a stack (n, ., .) of matrices of one shape, each orthogonalised on its own."""
    a, b, c = coefficients
    tall = matrix.shape[-2] > matrix.shape[-1]
    x = xp.ascontiguousarray(xp.swapaxes(matrix, -1, -2) if tall else matrix)
    norms = [xp.sqrt(_squared_norm(one)) for one in x.reshape((-1,) + x.shape[-2:])]
    x = x / xp.maximum(xp.stack(norms), eps).astype(x.dtype).reshape(x.shape[:-2] + (1, 1))
    for _ in range(steps):
        gram = xp.matmul(x, xp.swapaxes(x, -1, -2))
        x = a * x + xp.matmul(b * gram + c * xp.matmul(gram, gram), x)
    return xp.swapaxes(x, -1, -2) if tall else x


class Muon(Optimizer):
    """Momentum orthogonalised by Newton-Schulz, for 2-D weights, as torch.optim.Muon (in float32, not bfloat16):
    B = mu B + (1 - mu) g;  u = (1 - mu) g + mu B (Nesterov) or B;  p *= 1 - lr wd;  p -= lr s NS(u).

    s is the shape scaling: "original" (Keller Jordan's, the speedrun's) sqrt(max(1, out / in)), or
    "match_rms_adamw" (Moonshot's) 0.2 sqrt(max(in, out)), which lets Muon reuse AdamW's learning rate.
    Our weights are (in, out), torch's (out, in): the same matrix, so the same s."""

    STATE_FIELDS = ("momentum_buffer",)

    def __init__(self, module: Module, learning_rate: LearningRate = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, adjust_lr_fn: str | None = None,
                 ns_coefficients: tuple[float, float, float] = NEWTON_SCHULZ_COEFFICIENTS, eps: float = 1e-7) -> None:
        super().__init__(module, learning_rate)
        if adjust_lr_fn is not None and adjust_lr_fn not in MUON_SCALINGS:
            raise ValueError(f"Muon: adjust_lr_fn must be one of {', '.join(MUON_SCALINGS)} or None, got {adjust_lr_fn!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        weight_decay, eps = check_finite("weight_decay", weight_decay), check_finite("eps", eps)
        ns_steps = check_count("Muon: ns_steps", ns_steps)
        if ns_steps > MAX_NS_STEPS:
            raise ValueError(f"Muon: ns_steps must be at most {MAX_NS_STEPS}, got {ns_steps}")
        for name, tensor in module.named_parameters():
            if tensor.requires_grad and tensor.ndim != 2:
                raise ValueError(f"Muon updates matrices only: {name} has shape {tensor.shape} (give it to AdamW)")
        self.weight_decay, self.momentum, self.nesterov, self.ns_steps = weight_decay, momentum, nesterov, ns_steps
        self.adjust_lr_fn, self.ns_coefficients, self.eps = adjust_lr_fn or "original", ns_coefficients, eps

    def shape_scale(self, shape: tuple[int, int]) -> float:
        """The learning-rate factor of an (in, out) weight."""
        inputs, outputs = shape
        if self.adjust_lr_fn == "match_rms_adamw":
            return 0.2 * math.sqrt(max(inputs, outputs))
        return math.sqrt(max(1.0, outputs / inputs))

    def apply_all(self, parameters: list[tuple[str, Tensor]]) -> None:
        """Matrices of one shape are orthogonalised together, as one stack: the same math, in fewer and larger
        products (the speedrun's 16 matrices: 4 stacks)."""
        stacks: dict[tuple, list[tuple[Tensor, Any]]] = {}
        for name, parameter in parameters:
            direction = self._direction(parameter, self.state.setdefault(name, {}))
            stacks.setdefault((parameter.shape, parameter.dtype, parameter.device), []).append((parameter, direction))
        members = list(stacks.values())
        directions = [members_of_one[0][0].buffer.xp.stack([direction for _, direction in members_of_one])
                      for members_of_one in members]
        for members_of_one, orthogonal in zip(members, self._orthogonalise(directions)):
            for (parameter, _), update in zip(members_of_one, orthogonal):
                self._step(parameter, update)

    def _orthogonalise(self, stacks: list) -> list:
        """Newton-Schulz of every stack. Under several ranks (which hold the same directions) each rank computes an
        equal share of every stack into a zeroed flat buffer, and one all-reduce, a sum, gives every rank all of
        them: the result of one process, in a rank's share of the time (the NanoGPT speedrun shares Muon's work
        out so)."""
        world = get_world()
        xp = backend.array_module(backend.device_of(stacks[0])) if stacks else np
        if world.world_size == 1 or len({stack.dtype for stack in stacks}) != 1:
            return [newton_schulz(xp, stack, self.ns_steps, self.ns_coefficients, self.eps) for stack in stacks]
        flat = xp.zeros(sum(stack.size for stack in stacks), dtype=stacks[0].dtype)
        outputs = unpack(flat, [stack.shape for stack in stacks])
        for stack, out in zip(stacks, outputs):
            mine = slice(len(stack) * world.rank // world.world_size, len(stack) * (world.rank + 1) // world.world_size)
            if mine.start < mine.stop:
                out[mine] = newton_schulz(xp, stack[mine], self.ns_steps, self.ns_coefficients, self.eps)
        world.all_reduce(flat)
        return outputs

    def apply_single(self, parameter: Tensor, state: dict[str, Any]) -> None:
        direction = self._direction(parameter, state)
        self._step(parameter, newton_schulz(parameter.buffer.xp, direction, self.ns_steps, self.ns_coefficients, self.eps))

    def _direction(self, parameter: Tensor, state: dict[str, Any]):
        """The momentum step: B = mu B + (1 - mu) g, and the direction to orthogonalise."""
        g, xp = parameter.grad.buffer.array, parameter.buffer.xp
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = xp.zeros_like(parameter.buffer.array)
        momentum = state["momentum_buffer"]
        momentum *= self.momentum
        momentum += (1.0 - self.momentum) * g
        return (1.0 - self.momentum) * g + self.momentum * momentum if self.nesterov else momentum

    def _step(self, parameter: Tensor, orthogonal) -> None:
        p, learning_rate = parameter.buffer.array, self.step_learning_rate
        p *= 1.0 - learning_rate * self.weight_decay
        p -= (learning_rate * self.shape_scale(p.shape)) * orthogonal


class ParameterGroup(Module):
    """The parameters of `module` for which select(name, tensor) holds, under their names in `module`:
    an optimizer built on a group updates only those (read afresh each step, so load_weights is seen)."""

    def __init__(self, module: Module, select: Callable[[str, Tensor], bool]) -> None:
        super().__init__()
        self.__dict__["source"], self.__dict__["select"] = module, select

    def named_parameters(self) -> list[tuple[str, Tensor]]:
        return [(name, tensor) for name, tensor in self.source.named_parameters() if self.select(name, tensor)]


class OptimizerGroups:
    """Several optimizers over disjoint parameter groups of one model, stepped together by one update():
    e.g. Muon for the hidden matrices and AdamW for embeddings, head, gains and biases (the speedrun's split)."""

    def __init__(self, *optimizers: Optimizer) -> None:
        seen: dict[int, str] = {}
        for optimizer in optimizers:
            for name, tensor in optimizer.module.named_parameters():
                if id(tensor) in seen:
                    raise ValueError(f"optimizer groups overlap: {name} is in two of them")
                seen[id(tensor)] = name
        self.optimizers = list(optimizers)

    @property
    def step_count(self) -> int:
        return self.optimizers[0].step_count

    @property
    def current_learning_rate(self) -> float:
        """The first group's learning rate of the next update (each group follows its own schedule)."""
        return self.optimizers[0].current_learning_rate

    @property
    def state(self) -> dict[str, dict[str, Any]]:
        """Every group's per-parameter state (the same dicts), keyed by parameter name."""
        return {name: state for optimizer in self.optimizers for name, state in optimizer.state.items()}

    def update(self) -> None:
        for optimizer in self.optimizers:
            optimizer.update()

    def step(self) -> None:
        self.update()

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def _kind(self) -> str:
        return f"OptimizerGroups({', '.join(type(optimizer).__name__ for optimizer in self.optimizers)})"

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Group i's arrays under "i.<parameter name>.<field>"."""
        return {f"{index}.{key}": array for index, optimizer in enumerate(self.optimizers)
                for key, array in optimizer.state_arrays().items()}

    def save_state(self, path: str, arrays: dict[str, np.ndarray] | None = None) -> None:
        """One file: state_arrays() and the step count (ranks that share a group's state: as Optimizer's)."""
        arrays = self.state_arrays() if arrays is None else arrays
        if _writes(*self.optimizers):
            save_arrays(path, arrays, metadata={"step_count": str(self.step_count), "optimizer": self._kind()})

    def load_state(self, path: str, strict: bool = True) -> None:
        """Read state written by save_state of groups of the same optimizers in the same order."""
        arrays, metadata = load_arrays(path, with_metadata=True)
        if strict and metadata.get("optimizer", self._kind()) != self._kind():
            raise ValueError(f"optimizer state of {metadata['optimizer']} cannot be loaded into {self._kind()}")
        parts: list[list[tuple[str, np.ndarray]]] = [[] for _ in self.optimizers]
        for key, array in arrays.items():
            index, _, rest = key.partition(".")
            if not index.isdigit() or int(index) >= len(parts):
                raise ValueError(f"optimizer state {key!r} names no group of {self._kind()}")
            parts[int(index)].append((rest, array))
        step_count = int(metadata.get("step_count", self.step_count))
        for optimizer, part in zip(self.optimizers, parts):
            optimizer.load_state(part, strict)
            optimizer.step_count = step_count


def wsd_schedule(max_learning_rate: float, min_learning_rate: float, warmup_steps: int, total_steps: int,
                 decay_fraction: float) -> Callable[[int], float]:
    """Warmup-stable-decay (trapezoidal): nanoGPT's linear warmup, max until the last decay_fraction of
    total_steps, then linear to min at total_steps (modded-nanogpt's cooldown), then min."""
    if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(f"wsd_schedule: decay_fraction must be in (0, 1], got {decay_fraction}")

    def learning_rate(step: int) -> float:
        if step < warmup_steps:
            return max_learning_rate * (step + 1) / (warmup_steps + 1)
        progress = min(step / max(total_steps, 1), 1.0)
        if progress < 1.0 - decay_fraction:
            return max_learning_rate
        remaining = (1.0 - progress) / decay_fraction
        return remaining * max_learning_rate + (1.0 - remaining) * min_learning_rate
    return learning_rate


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "cosine_schedule", "clip_grad_norm", "NEWTON_SCHULZ_COEFFICIENTS",
           "newton_schulz", "Muon", "ParameterGroup", "OptimizerGroups", "wsd_schedule"]
