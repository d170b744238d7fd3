"""Layers and the GPT (GPT-2 architecture), read top to bottom like the paper."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

import numpy as np

from tinygpt import gpt2, mlops
from tinygpt.mlops.modern import rotary_angles
from tinygpt.module import Module
from tinygpt.tensor import Tensor, apply_op, no_grad
from tinygpt.utils import check_count, check_fraction, is_real


class FullyConnectedLayer(Module):
    """y = x @ weights + bias, weights of shape (input_dims, output_dims); init U(-1/sqrt(in), 1/sqrt(in)) as PyTorch."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(input_dims) if input_dims else 0.0
        self.weights = Tensor.uniform((input_dims, output_dims), -bound, bound, requires_grad=True)
        if bias:
            self.bias = Tensor.uniform((output_dims,), -bound, bound, requires_grad=True)

    def forward(self, x: Tensor) -> Tensor:
        return apply_op(mlops.Linear, x, self.weights, self.get("bias"))


class MLP(Module):
    """Fully connected layers of sizes input_dims -> hidden_dims[0] -> ..., activation_fn after every layer
    (the last included, as the original TinyGPT); 'linear' makes the last layer's output the logits."""

    activation_functions = {
        "linear": lambda x: x,
        "relu": Tensor.relu,
        "gelu": Tensor.gelu,
        "tanh": Tensor.tanh,
    }

    def __init__(self, input_dims: int, hidden_dims: list[int], activation_fn: str = "relu", bias: bool = True) -> None:
        super().__init__()
        if activation_fn not in self.activation_functions:
            raise ValueError(f"unknown activation {activation_fn!r}, expected one of {', '.join(self.activation_functions)}")
        sizes = [input_dims] + list(hidden_dims)
        self.layers = [FullyConnectedLayer(a, b, bias) for a, b in zip(sizes[:-1], sizes[1:])]
        self.activation_fn = activation_fn

    def forward(self, x: Tensor) -> Tensor:
        activation = self.activation_functions[self.activation_fn]
        for layer in self.layers:
            x = activation(layer(x))
        return x


class Embedding(Module):
    """y = embeddings[ids], embeddings of shape (num_embeddings, embedding_dim) ~ N(0, 1)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.embeddings = Tensor.normal((num_embeddings, embedding_dim), requires_grad=True)

    @property
    def weights(self) -> Tensor:
        """The table under the name FullyConnectedLayer and LayerNorm use (read only; the entry is `embeddings`)."""
        return self.embeddings

    def forward(self, ids: Tensor) -> Tensor:
        return apply_op(mlops.Embedding, self.embeddings, _as_ids(ids))


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weights + bias over the trailing `normalized_shape` dims."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        if elementwise_affine:
            self.weights = Tensor.ones(self.normalized_shape, requires_grad=True)
            if bias:
                self.bias = Tensor.zeros(self.normalized_shape, requires_grad=True)

    def forward(self, x: Tensor) -> Tensor:
        size = math.prod(self.normalized_shape)
        if x.shape[x.ndim - len(self.normalized_shape):] != self.normalized_shape:
            raise ValueError(f"layer norm over {self.normalized_shape} got input of shape {x.shape}")
        flat = x if len(self.normalized_shape) == 1 else x.reshape(x.shape[: x.ndim - len(self.normalized_shape)] + (size,))
        weights = self.get("weights")
        bias = self.get("bias")
        if len(self.normalized_shape) > 1:
            weights = weights.reshape((size,)) if weights is not None else None
            bias = bias.reshape((size,)) if bias is not None else None
        y = apply_op(mlops.LayerNorm, flat, weights, bias, eps=self.eps)
        return y if y.shape == x.shape else y.reshape(x.shape)


class RMSNorm(Module):
    """y = x / sqrt(mean(x^2) + eps) * weights over the last axis (no mean subtracted, no bias)."""

    def __init__(self, dims: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.dims, self.eps = dims, eps
        if elementwise_affine:
            self.weights = Tensor.ones((dims,), requires_grad=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.dims,):
            raise ValueError(f"RMS norm over {self.dims} values got input of shape {x.shape}")
        return apply_op(mlops.RMSNorm, x, self.get("weights"), eps=self.eps)


NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, dims: int, bias: bool) -> Module:
    """GPT-2's LayerNorm or the speedrun's RMSNorm over `dims` values."""
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}, expected one of {', '.join(NORMS)}")
    return LayerNorm(dims, bias=bias) if kind == "layernorm" else RMSNorm(dims)


class Dropout(Module):
    """Zero each value with probability p while training and scale the rest by 1 / (1 - p); identity in eval()."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return apply_op(mlops.Dropout, x, p=self.p)


class CasualSelfAttention(Module):
    """Causal multi-head self-attention: one projection to q, k, v, fused attention, output projection.
    Optionally q and k are RMS-normalised per head (qk_norm) and turned by rotary position embeddings."""

    def __init__(self, embedding_dim: int, max_seq_length: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 rotary: bool = False, qk_norm: bool = False) -> None:
        super().__init__()
        if embedding_dim % num_heads:
            raise ValueError(f"embedding_dim {embedding_dim} is not divisible by num_heads {num_heads}")
        if rotary and (embedding_dim // num_heads) % 2:
            raise ValueError(f"rotary embeddings need an even head size, got {embedding_dim // num_heads}")
        self.embedding_dim, self.max_seq_length, self.num_heads, self.dropout = embedding_dim, max_seq_length, num_heads, dropout
        self.rotary, self.qk_norm = rotary, qk_norm
        self.c_attn = FullyConnectedLayer(embedding_dim, 3 * embedding_dim, bias)
        self.c_proj = FullyConnectedLayer(embedding_dim, embedding_dim, bias)
        self.resid_dropout = Dropout(dropout)

    def forward(self, x: Tensor, kv_cache: dict | None = None) -> Tensor:
        qkv = self.c_attn(x)
        if self.rotary or self.qk_norm:
            start = kv_cache["k"].shape[2] if kv_cache and "k" in kv_cache else 0  # positions continue after the cache
            angles = rotary_angles(np, start, x.shape[1], self.embedding_dim // self.num_heads,
                                              dtype=np.float32) if self.rotary else None
            qkv = apply_op(mlops.RotaryQKNorm, qkv, num_heads=self.num_heads, angles=angles, qk_norm=self.qk_norm)
        dropout_p = self.dropout if self.training else 0.0
        if kv_cache is None:
            y = apply_op(mlops.MultiHeadAttention, qkv, num_heads=self.num_heads, dropout_p=dropout_p)
        else:
            y = self._attend_with_cache(qkv, kv_cache)
        return self.resid_dropout(self.c_proj(y))

    def _attend_with_cache(self, qkv: Tensor, kv_cache: dict) -> Tensor:
        """Generation: keys and values of earlier positions come from the cache, new ones are appended."""
        batch, length, packed = qkv.shape
        heads = qkv.reshape((batch, length, 3, self.num_heads, packed // (3 * self.num_heads))).permute((2, 0, 3, 1, 4))
        q, k, v = heads[0], heads[1], heads[2]  # each (B, H, T, head_dims)
        if "k" in kv_cache:
            k = Tensor.concatenate([kv_cache["k"], k], axis=2)
            v = Tensor.concatenate([kv_cache["v"], v], axis=2)
        kv_cache["k"], kv_cache["v"] = k, v
        y = apply_op(mlops.ScaledDotProductAttention, q, k, v)
        return y.permute((0, 2, 1, 3)).reshape((batch, length, packed // 3))


CausalSelfAttention = CasualSelfAttention


class GPTMLP(Module):
    """GPT-2's feed-forward: c_proj(gelu(c_fc(x))), width 4x, no activation after the output projection;
    activation "relu2" is the speedrun's max(x, 0)^2 instead of GELU."""

    activations = {"gelu": Tensor.gelu, "relu2": lambda x: apply_op(mlops.ReluSquared, x)}

    def __init__(self, embedding_dim: int, bias: bool = True, activation: str = "gelu") -> None:
        super().__init__()
        if activation not in self.activations:
            raise ValueError(f"unknown MLP activation {activation!r}, expected one of {', '.join(self.activations)}")
        self.activation = activation
        self.c_fc = FullyConnectedLayer(embedding_dim, 4 * embedding_dim, bias)
        self.c_proj = FullyConnectedLayer(4 * embedding_dim, embedding_dim, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.activations[self.activation](self.c_fc(x)))


class TransformerBlock(Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)): a pre-LayerNorm GPT-2 block with a GELU MLP of width 4x
    (or the speedrun's options: RMSNorm, rotary, QK-norm, ReLU^2)."""

    def __init__(self, embedding_dim: int, max_seq_length: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 norm: str = "layernorm", rotary: bool = False, qk_norm: bool = False, mlp_activation: str = "gelu") -> None:
        super().__init__()
        self.ln_1 = make_norm(norm, embedding_dim, bias)
        self.attn = CasualSelfAttention(embedding_dim, max_seq_length, num_heads, dropout, bias, rotary, qk_norm)
        self.ln_2 = make_norm(norm, embedding_dim, bias)
        self.mlp = GPTMLP(embedding_dim, bias, mlp_activation)
        self.mlp_dropout = Dropout(dropout)

    def forward(self, x: Tensor, kv_cache: dict | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp_dropout(self.mlp(self.ln_2(x)))


MAX_MODEL_PARAMETERS = 1 << 31  # 8 GiB of float32: GPT-2 XL (1.56 B) fits, a crafted config of 10**9 layers does not


@dataclass
class GPTConfig:
    """The shape of a GPT, named as GPT's arguments (nanoGPT's GPTConfig); the defaults are GPT-2 small's.
    The fields after `bias` are the speedrun's options, all off by default (GPT-2 exactly)."""

    max_seq_length: int = field(default=1024, metadata={"help": "context length in tokens"})
    vocab_size: int = field(default=50257, metadata={"help": "256 is byte level; more trains a BPE tokenizer first"})
    num_layers: int = field(default=12, metadata={"help": "transformer blocks"})
    num_heads: int = field(default=12, metadata={"help": "attention heads"})
    embedding_dim: int = field(default=768, metadata={"help": "embedding width"})
    dropout: float = field(default=0.0, metadata={"help": "dropout rate"})
    bias: bool = field(default=True, metadata={"help": "biases in linear layers and LayerNorms"})
    rotary: bool = field(default=False, metadata={"help": "rotary position embeddings instead of a learned table"})
    qk_norm: bool = field(default=False, metadata={"help": "RMS-normalise queries and keys per head"})
    norm: str = field(default="layernorm", metadata={"help": "layernorm, or rmsnorm"})
    mlp_activation: str = field(default="gelu", metadata={"help": "gelu, or relu2 (max(x, 0)^2)"})
    tied_head: bool = field(default=True, metadata={"help": "the output head is the token embedding (else lm_head)"})
    zero_init_projections: bool = field(default=False, metadata={"help": "start the residual projections and lm_head at 0"})
    logit_soft_cap: float = field(default=0.0, metadata={"help": "logits = cap * tanh(logits / cap) (0: off)"})

    def validate(self) -> None:
        """ValueError naming the first size that cannot make a GPT (each >= 1, heads dividing the width, at most
        MAX_MODEL_PARAMETERS parameters)."""
        for name in ("max_seq_length", "vocab_size", "num_layers", "num_heads", "embedding_dim"):
            check_count(name, getattr(self, name))
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} is not divisible by num_heads {self.num_heads}")
        check_fraction("dropout", self.dropout)
        if not self.logit_soft_cap >= 0.0 or math.isinf(self.logit_soft_cap):
            raise ValueError(f"logit_soft_cap must be 0 (off) or a positive finite number, got {self.logit_soft_cap}")
        if self.minimum_parameters() > MAX_MODEL_PARAMETERS:
            raise ValueError(f"a GPT of {self.num_layers:,} layers of width {self.embedding_dim:,}, a vocabulary of "
                             f"{self.vocab_size:,} and max_seq_length {self.max_seq_length:,} has over {MAX_MODEL_PARAMETERS:,} parameters, the bound on a model")

    def minimum_parameters(self) -> int:
        """A lower bound on the parameter count, whatever the options: the token table V C, the position table T C
        (without rotary embeddings) and each block's attention projections 4 C^2 (the MLP, norms and biases only
        add to it)."""
        positions = 0 if self.rotary else self.max_seq_length * self.embedding_dim
        return self.vocab_size * self.embedding_dim + positions + self.num_layers * 4 * self.embedding_dim ** 2


class GPT(Module):
    """GPT-2: token + position embeddings, pre-LN blocks, final LayerNorm, LM head tied to the token embedding.

    Built from its arguments, `GPT(max_seq_length, vocab_size, num_layers, num_heads, embedding_dim)`, or from
    one GPTConfig, `GPT(config)`; either way `model.config` is the GPTConfig. The speedrun's options, all off
    by default, are GPTConfig fields (also keywords after the sizes): rotary embeddings instead of learned
    positions, QK-norm, RMSNorm instead of LayerNorm, a ReLU^2 MLP, an untied head (`lm_head`),
    zero-initialised output projections (attn.c_proj, mlp.c_proj and the untied head), and a logit soft-cap."""

    def __init__(self, max_seq_length: int | GPTConfig, vocab_size: int | None = None, num_layers: int | None = None,
                 num_heads: int | None = None, embedding_dim: int | None = None, dropout: float = 0.0,
                 bias: bool = True, **options) -> None:
        super().__init__()
        config = _as_config(max_seq_length, vocab_size, num_layers, num_heads, embedding_dim, dropout, bias, options)
        config.validate()
        self.config = config
        self.max_seq_length = config.max_seq_length
        self.token_embedding = Embedding(config.vocab_size, config.embedding_dim)
        if not config.rotary:
            self.position_embedding = Embedding(config.max_seq_length, config.embedding_dim)
        self.embedding_dropout = Dropout(config.dropout)
        self.blocks = [TransformerBlock(config.embedding_dim, config.max_seq_length, config.num_heads, config.dropout,
                                        config.bias, config.norm, config.rotary, config.qk_norm, config.mlp_activation)
                       for _ in range(config.num_layers)]
        self.ln_f = make_norm(config.norm, config.embedding_dim, config.bias)
        if not config.tied_head:
            self.lm_head = FullyConnectedLayer(config.embedding_dim, config.vocab_size, bias=False)
        self._init_weights(config.num_layers, config.zero_init_projections)

    def _init_weights(self, num_layers: int, zero_init_projections: bool = False) -> None:
        """GPT-2 / nanoGPT: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 * n_layer);
        with zero_init_projections the projections into the residual stream and the untied head start at 0."""
        with no_grad():
            for name, tensor in self.named_parameters():
                if name.startswith("ln") or ".ln_" in name:
                    continue
                if name.endswith("bias"):
                    tensor.assign(0.0)
                    continue
                projection = name.endswith("c_proj.weights") or name == "lm_head.weights"
                if zero_init_projections and projection:
                    tensor.assign(0.0)
                    continue
                std = 0.02 / math.sqrt(2 * num_layers) if name.endswith("c_proj.weights") else 0.02
                tensor.assign(Tensor.normal(tensor.shape, std=std))

    def forward(self, token_ids: Tensor, kv_cache: list[dict] | None = None) -> Tensor:
        """Logits of shape (B, T, vocab_size) for token ids of shape (B, T)."""
        token_ids = _as_ids(token_ids)
        batch, length = token_ids.shape
        start = kv_cache[0]["k"].shape[2] if kv_cache and "k" in kv_cache[0] else 0
        if start + length > self.max_seq_length:
            raise ValueError(f"sequence of {start + length} tokens is longer than max_seq_length {self.max_seq_length}")
        x = self.token_embedding(token_ids)
        if "position_embedding" in self:
            x = x + self.position_embedding(Tensor.arange(start, start + length, device=token_ids.device))
        x = self.embedding_dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache[i] if kv_cache is not None else None)
        x = self.ln_f(x)
        logits = self.lm_head(x) if "lm_head" in self else x @ self.token_embedding.embeddings.transpose(0, 1)
        return apply_op(mlops.SoftCap, logits, cap=self.config.logit_soft_cap) if self.config.logit_soft_cap else logits

    # ---- generation ------------------------------------------------------------------------------
    def generate(self, token_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 rng: np.random.Generator | None = None, top_p: float | None = None) -> Tensor:
        """Append max_new_tokens sampled tokens (greedy when temperature == 0; top_k, then the top_p nucleus) using
        a KV cache: each new token costs one position's work; a context longer than max_seq_length is cropped."""
        steps = [step.numpy()[:, None] for step in self.stream(token_ids, max_new_tokens, temperature, top_k, rng, top_p)]
        return Tensor(np.concatenate([_as_ids(token_ids).numpy()] + steps, axis=1).astype(np.int32))

    def stream(self, token_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               rng: np.random.Generator | None = None, top_p: float | None = None) -> Iterator[Tensor]:
        """The tokens of generate one step at a time: yields each sequence's next token, shape (batch,), as it is
        sampled. The arguments are checked (and the seed drawn) at the call, the work is done as it is iterated."""
        ids = _as_ids(token_ids).numpy()
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"generate: token ids must have shape (batch, length >= 1), got {ids.shape}")
        if ids.size and not 0 <= ids.min() <= ids.max() < self.config.vocab_size:
            raise ValueError(f"generate: token ids must lie in [0, {self.config.vocab_size}) (the model's vocabulary), "
                             f"got ids from {ids.min()} to {ids.max()}")
        check_count("max_new_tokens", max_new_tokens, minimum=0)
        if not (is_real(temperature) and math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"generate: needs temperature >= 0 and finite, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"generate: needs top_k >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"generate: needs 0 < top_p <= 1, got {top_p}")
        rng = rng or np.random.default_rng(int(Tensor.uniform((), 0, 2**31 - 1).item()))
        return self._sampled_tokens(ids, max_new_tokens, lambda logits: _pick_next(logits, temperature, top_k, top_p, rng))

    def _sampled_tokens(self, ids: np.ndarray, max_new_tokens: int, pick) -> Iterator[Tensor]:
        """The loop of stream: feed only the tokens the KV cache has not seen; restart it on the cropped window
        once the context outgrows max_seq_length. Each step runs in eval mode without a graph."""
        kv_cache, fed = None, 0
        for _ in range(max_new_tokens):
            if kv_cache is None:
                kv_cache, fed = [{} for _ in self.blocks], max(0, ids.shape[1] - self.max_seq_length)
            was_training = self.training
            try:
                self.eval()
                with no_grad():
                    logits = self(Tensor(ids[:, fed:]), kv_cache)
            finally:
                self.train(was_training)
            fed = ids.shape[1]
            next_ids = pick(logits.numpy()[:, -1, :])
            ids = np.concatenate([ids, next_ids[:, None]], axis=1)
            if ids.shape[1] > self.max_seq_length:  # only the window the next step sees is kept
                kv_cache, ids = None, ids[:, -self.max_seq_length:]
            yield Tensor(next_ids.astype(np.int32))

    def generate_greedy(self, token_ids: Tensor, max_new_tokens: int) -> Tensor:
        return self.generate(token_ids, max_new_tokens, temperature=0.0)

    def generate_sample_with_temperature(self, token_ids: Tensor, max_new_tokens: int, temperature: float = 1.0) -> Tensor:
        return self.generate(token_ids, max_new_tokens, temperature=temperature)

    @no_grad()
    def generate_uncached(self, token_ids: Tensor, max_new_tokens: int) -> Tensor:
        """Greedy decoding that recomputes the whole (cropped) context each step: the reference for the cache."""
        ids = _as_ids(token_ids).numpy()
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            logits = self(Tensor(ids[:, -self.max_seq_length:]))
            ids = np.concatenate([ids, logits.numpy()[:, -1, :].argmax(axis=-1)[:, None]], axis=1)
        self.train(was_training)
        return Tensor(ids.astype(np.int32))

    # ---- Hugging Face GPT-2 checkpoints (the name map and the files: gpt2.py) ---------------------
    @classmethod
    def load_gpt2_checkpoint(cls, path: str | Path) -> "GPT":
        """Build a GPT from a Hugging Face GPT-2 directory (config.json + model.safetensors) and load its weights."""
        directory = Path(path)
        arguments = gpt2.read_gpt2_config(directory)
        epsilon = arguments.pop("layer_norm_epsilon")
        model = cls(**arguments)
        for layer_norm in [model.ln_f] + [norm for block in model.blocks for norm in (block.ln_1, block.ln_2)]:
            layer_norm.eps = epsilon
        model.load_weights(gpt2.read_gpt2_weights(directory, arguments["num_layers"]), strict=True)
        return model

    def save_gpt2_checkpoint(self, path: str | Path, end_of_text_id: int | None = None) -> Path:
        """Write this model as a Hugging Face GPT-2 directory that transformers.GPT2LMHeadModel.from_pretrained
        loads with the same logits (zero biases added to a model without biases); end_of_text_id is the config's
        eos_token_id (tinygpt export gives its tokenizer's <|endoftext|>)."""
        return gpt2.save_gpt2(self, path, end_of_text_id)


def _as_config(max_seq_length: int | GPTConfig, vocab_size: int | None, num_layers: int | None, num_heads: int | None,
               embedding_dim: int | None, dropout: float, bias: bool, options: dict) -> GPTConfig:
    """GPT's arguments as a GPTConfig: the config itself when one is given, else the five sizes (all required)
    and the options (GPTConfig's other fields)."""
    sizes = dict(vocab_size=vocab_size, num_layers=num_layers, num_heads=num_heads, embedding_dim=embedding_dim)
    if isinstance(max_seq_length, GPTConfig):
        given = [name for name, value in sizes.items() if value is not None]
        given += ["dropout"] * (dropout != 0.0) + ["bias"] * (bias is not True) + sorted(options)
        if given:
            raise TypeError(f"GPT: give either a GPTConfig or the sizes, got a GPTConfig and {', '.join(given)}")
        return max_seq_length
    missing = [name for name, value in sizes.items() if value is None]
    if missing:
        raise TypeError(f"GPT: missing {', '.join(missing)} (or give one GPTConfig)")
    unknown = sorted(set(options) - {item.name for item in fields(GPTConfig)})
    if unknown:
        raise TypeError(f"GPT: unknown options {', '.join(unknown)}")
    return GPTConfig(max_seq_length, vocab_size, num_layers, num_heads, embedding_dim, dropout, bias, **options)


def _as_ids(ids) -> Tensor:
    ids = ids if isinstance(ids, Tensor) else Tensor(np.asarray(ids))
    if ids.dtype.is_float:
        raise TypeError(f"token ids must be integers, got {ids.dtype.name}")
    return ids


def _pick_next(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
               rng: np.random.Generator) -> np.ndarray:
    """Greedy when temperature == 0, else sample from softmax(logits / temperature) restricted to the top k,
    then to the top_p nucleus."""
    if temperature == 0.0:
        return logits.argmax(axis=-1)
    logits = logits.astype(np.float64) / temperature
    if top_k is not None:
        kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        probs = _nucleus(probs, top_p)
    return np.array([rng.choice(len(row), p=row) for row in probs])


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of the likeliest tokens whose probabilities
    sum to top_p or more (a token stays while the mass of the likelier ones is below top_p), renormalised."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    likelier_mass = np.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep = np.zeros(probs.shape, dtype=bool)
    np.put_along_axis(keep, order, likelier_mass < top_p, axis=-1)
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum(axis=-1, keepdims=True)


__all__ = ["FullyConnectedLayer", "MLP", "Embedding", "LayerNorm", "RMSNorm", "Dropout", "CasualSelfAttention",
           "CausalSelfAttention", "GPTMLP", "TransformerBlock", "GPT", "GPTConfig"]
