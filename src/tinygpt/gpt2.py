"""GPT-2 in Hugging Face's format: the one map between our parameter names and theirs, and reading and
writing a GPT-2 directory (config.json + model.safetensors) as transformers.GPT2LMHeadModel saves it.

Their Conv1D layers keep weights as (in, out), like our FullyConnectedLayer, so no weight is transposed;
their LM head is tied to `wte` like ours, so it is not stored.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt.files import CONFIG_FILE_BYTES, read_json
from tinygpt.module import Module
from tinygpt.serialization import atomic_write, load_arrays, save_arrays

TOP_LEVEL_NAMES = {  # ours -> Hugging Face GPT2Model's
    "token_embedding.embeddings": "wte.weight", "position_embedding.embeddings": "wpe.weight",
    "ln_f.weights": "ln_f.weight", "ln_f.bias": "ln_f.bias",
}
BLOCK_NAMES = {  # ours -> theirs, inside block i ("blocks.i." <-> "h.i.")
    "ln_1.weights": "ln_1.weight", "ln_1.bias": "ln_1.bias", "ln_2.weights": "ln_2.weight", "ln_2.bias": "ln_2.bias",
    "attn.c_attn.weights": "attn.c_attn.weight", "attn.c_attn.bias": "attn.c_attn.bias",
    "attn.c_proj.weights": "attn.c_proj.weight", "attn.c_proj.bias": "attn.c_proj.bias",
    "mlp.c_fc.weights": "mlp.c_fc.weight", "mlp.c_fc.bias": "mlp.c_fc.bias",
    "mlp.c_proj.weights": "mlp.c_proj.weight", "mlp.c_proj.bias": "mlp.c_proj.bias",
}
GPT2_ARGUMENTS = {"max_seq_length", "vocab_size", "num_layers", "num_heads", "embedding_dim", "dropout", "bias",
                  "zero_init_projections"}  # the last changes only the initial weights, not the function
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


def hf_name(ours: str) -> str:
    """Our parameter name -> Hugging Face GPT2Model's: "blocks.0.mlp.c_fc.weights" -> "h.0.mlp.c_fc.weight"."""
    if ours in TOP_LEVEL_NAMES:
        return TOP_LEVEL_NAMES[ours]
    head, _, rest = ours.partition(".")
    index, _, inside = rest.partition(".")
    if head != "blocks" or not index.isdigit() or inside not in BLOCK_NAMES:
        raise ValueError(f"parameter {ours!r} has no GPT-2 counterpart")
    return f"h.{index}.{BLOCK_NAMES[inside]}"


def hf_names(num_layers: int) -> dict[str, str]:
    """ours -> theirs for every parameter of a GPT-2 of num_layers blocks, biases included."""
    names = dict(TOP_LEVEL_NAMES)
    for i in range(num_layers):
        names.update({f"blocks.{i}.{ours}": f"h.{i}.{theirs}" for ours, theirs in BLOCK_NAMES.items()})
    return names


# ---- reading ---------------------------------------------------------------------------------------
def read_gpt2_config(directory: Path) -> dict[str, Any]:
    """The GPT arguments (and "layer_norm_epsilon") of a Hugging Face GPT-2 config.json; anything GPT-2's
    architecture as we build it cannot express raises ValueError naming it."""
    try:
        config = read_json(directory / CONFIG_FILE, CONFIG_FILE, CONFIG_FILE_BYTES)
    except (OSError, ValueError) as error:
        raise ValueError(f"{directory}: no readable GPT-2 config.json ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{directory}: config.json is not a JSON object")
    missing = [key for key in ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd") if key not in config]
    if missing:
        raise ValueError(f"{directory}: config.json lacks the GPT-2 settings {missing}")
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{directory}: activation {config['activation_function']!r} is not GPT-2's tanh GELU")
    unsupported = {"n_inner": config.get("n_inner") not in (None, 4 * config["n_embd"]),
                   "tie_word_embeddings": config.get("tie_word_embeddings", True) is not True,
                   "scale_attn_weights": config.get("scale_attn_weights", True) is not True,
                   "scale_attn_by_inverse_layer_idx": bool(config.get("scale_attn_by_inverse_layer_idx", False))}
    if any(unsupported.values()):
        raise ValueError(f"{directory}: GPT-2 settings we do not build: "
                         + ", ".join(f"{key}={config.get(key)!r}" for key, bad in unsupported.items() if bad))
    return dict(max_seq_length=config["n_positions"], vocab_size=config["vocab_size"], num_layers=config["n_layer"],
                num_heads=config["n_head"], embedding_dim=config["n_embd"],
                layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5))


def read_gpt2_weights(directory: Path, num_layers: int) -> list[tuple[str, np.ndarray]]:
    """(our name, array) for every parameter of a GPT-2 checkpoint, with or without the "transformer." prefix."""
    arrays = load_arrays(directory / WEIGHTS_FILE)
    arrays = {name.removeprefix("transformer."): array for name, array in arrays.items()}
    missing = [theirs for theirs in hf_names(num_layers).values() if theirs not in arrays]
    if missing:
        raise ValueError(f"{directory}: model.safetensors has no GPT-2 tensor {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return [(ours, arrays[theirs]) for ours, theirs in hf_names(num_layers).items()]


def is_gpt2_directory(directory: Path) -> bool:
    """Whether a directory holds a Hugging Face GPT-2 (config.json of model_type gpt2 and model.safetensors)."""
    try:
        config = read_json(directory / CONFIG_FILE, CONFIG_FILE, CONFIG_FILE_BYTES)
    except (OSError, ValueError):
        return (directory / CONFIG_FILE).exists() and (directory / WEIGHTS_FILE).exists()  # then _from_gpt2 says why
    return isinstance(config, dict) and config.get("model_type") == "gpt2" and (directory / WEIGHTS_FILE).is_file()


# ---- writing ---------------------------------------------------------------------------------------
def save_gpt2(model: Module, path: str | Path, end_of_text_id: int | None = None) -> Path:
    """Write `model` (a tinygpt.nn.GPT) as a Hugging Face GPT-2 directory; a model without biases gets zero biases (the same
    function). A model with options GPT-2 does not have raises ValueError naming them. end_of_text_id, the
    tokenizer's <|endoftext|> if it has one, is written as the config's eos and bos token ids."""
    options = _non_gpt2_options(model.config)
    if options:
        raise ValueError(f"cannot export as GPT-2: the model uses {', '.join(options)}, which GPT-2 does not have")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    parameters = dict(model.named_parameters())
    arrays = {}
    for ours, theirs in hf_names(len(model.blocks)).items():
        if ours in parameters:
            arrays[f"transformer.{theirs}"] = parameters[ours].numpy()
        else:  # a bias of a model built without biases: as wide as the output of its weights
            width = parameters[ours.removesuffix("bias") + "weights"].shape[-1]
            arrays[f"transformer.{theirs}"] = np.zeros((width,), dtype=np.float32)
    unmapped = sorted(set(parameters) - set(hf_names(len(model.blocks))))
    if unmapped:
        raise ValueError(f"cannot export as GPT-2: parameters {unmapped} have no GPT-2 counterpart")
    save_arrays(directory / WEIGHTS_FILE, arrays, metadata={"format": "pt"})
    config = gpt2_config(model) | {"bos_token_id": end_of_text_id, "eos_token_id": end_of_text_id}
    atomic_write(directory / CONFIG_FILE, lambda temporary: Path(temporary).write_text(json.dumps(config, indent=2)))
    return directory


def gpt2_config(model: Module) -> dict[str, Any]:
    """The config.json of transformers' GPT2Config for this model."""
    arguments = _arguments(model.config)
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": arguments["vocab_size"], "n_positions": arguments["max_seq_length"],
        "n_embd": arguments["embedding_dim"], "n_layer": arguments["num_layers"], "n_head": arguments["num_heads"],
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": model.ln_f.eps,
        "resid_pdrop": arguments["dropout"], "embd_pdrop": arguments["dropout"], "attn_pdrop": arguments["dropout"],
        "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
        "bos_token_id": None, "eos_token_id": None, "use_cache": True,
    }


def _arguments(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


def _non_gpt2_options(config: Any) -> list[str]:
    """The fields of a GPT config beyond GPT-2's that are not at their (GPT-2) default."""
    if not dataclasses.is_dataclass(config):
        return []
    return [f"{field.name}={getattr(config, field.name)!r}" for field in dataclasses.fields(config)
            if field.name not in GPT2_ARGUMENTS and field.default is not dataclasses.MISSING
            and getattr(config, field.name) != field.default]
