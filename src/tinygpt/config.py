"""The settings of a training run: TrainConfig, which holds the model's GPTConfig, and the presets.

Presets, checkpoints and the command line speak the *flat settings*: one dict with every TrainConfig
field and every GPTConfig field, the latter under nanoGPT's names (n_layer, n_head, n_embd, block_size;
vocab_size, dropout and bias keep theirs). `TrainConfig.from_settings` and `TrainConfig.settings` convert.

    from tinygpt.config import TrainConfig
    config = TrainConfig.from_settings({"n_layer": 2, "max_iters": 100})
    assert config.model.num_layers == 2 and config.settings()["n_layer"] == 2
"""
from __future__ import annotations

import contextvars
import json
import re
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

from tinygpt import backend
from tinygpt.files import CONFIG_FILE_BYTES, read_text
from tinygpt.flags import Setting, dataclass_settings
from tinygpt.nn import NORMS, GPTConfig, GPTMLP
from tinygpt.optimizers import MAX_NS_STEPS
from tinygpt.tokenizer import MAX_TOKEN_ID
from tinygpt.utils import check_count, check_finite

OPTIMIZERS, SCHEDULES = ("adamw", "muon"), ("cosine", "wsd")

NANOGPT_NAMES = {"max_seq_length": "block_size", "num_layers": "n_layer", "num_heads": "n_head", "embedding_dim": "n_embd"}
MODEL_SETTINGS = {NANOGPT_NAMES.get(item.name, item.name): item.name for item in fields(GPTConfig)}  # flat -> GPTConfig

PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's README command for a CPU (config/train_shakespeare_char.py shrunk), at byte level.
    # lr_decay_iters is left to follow max_iters, as both nanoGPT configurations have it.
    # Evaluation: 20 batches every 250 iterations, as nanoGPT's README command has it.
    "shakespeare-char-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0, bias=False,
                                 max_iters=2000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
                                 beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20),
    # The same model size, data and split with the NanoGPT speedrun's recipe (docs/speedrun.md): Muon on the
    # hidden matrices, AdamW on the rest, warmup-stable-decay, rotary, QK-norm, RMSNorm, ReLU^2, soft-capped
    # logits; the head tied to the embedding (the speedrun's untied zero-initialised head cost 0.05 here).
    # Chosen by whole-split val loss per iteration and time to 1.88 over three seeds (docs/speedrun.md). Fewer,
    # larger steps (a batch of 24: Muon's orthogonalisation costs per step, not per token) with Muon's momentum at
    # 0.8, which in a run this short beats 0.95. The periodic estimate runs at the end only (10 batches of 24), just
    # before the whole-split loss.
    "shakespeare-speedrun-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=24, dropout=0.0, bias=False,
                                     rotary=True, qk_norm=True, norm="rmsnorm", mlp_activation="relu2", tied_head=True,
                                     zero_init_projections=False, logit_soft_cap=30.0, optimizer="muon",
                                     muon_learning_rate=0.03, muon_momentum=0.8, learning_rate=3e-3, min_lr=0.0,
                                     schedule="wsd", decay_fraction=0.5, warmup_iters=10, weight_decay=0.0, beta2=0.99,
                                     grad_clip=1.0, max_iters=180, eval_interval=0, eval_iters=10),
    # nanoGPT's config/train_shakespeare_char.py as it is (a GPU run).
    "shakespeare-char-gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2, bias=False,
                                 max_iters=5000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
                                 beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=200,
                                 device="cuda"),
}


class ConfigError(ValueError):
    """A problem with the settings, the data or a checkpoint, told in one line (the CLI prints just that)."""


@contextmanager
def as_config_error(*kinds: type[Exception]) -> Iterator[None]:
    """Within it, a ValueError (bad input, found by a lower layer) or an error of `kinds` becomes a ConfigError: the
    one line the command prints, with no traceback."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, *kinds) as error:
        raise ConfigError(str(error)) from None


FLAG_SPELLING: contextvars.ContextVar[bool] = contextvars.ContextVar("flag_spelling", default=False)


@contextmanager
def flag_spelling() -> Iterator[None]:
    """Within it, messages name settings as the command line's flags (the `tinygpt` command runs in it)."""
    token = FLAG_SPELLING.set(True)
    try:
        yield
    finally:
        FLAG_SPELLING.reset(token)


def named(setting: str, value: Any = None) -> str:
    """A setting as the one who gave it spells it: `--resume`, `--out-dir x` on the command line; `resume=True`,
    `out_dir='x'` from Python (the TrainConfig field). Without a value, the flag or the field's name alone."""
    if FLAG_SPELLING.get():
        flag = f"--{setting.replace('_', '-')}"
        return flag if value is None or value is True else f"{flag} {value}"
    return setting if value is None else f"{setting}={value!r}"


def default_model() -> GPTConfig:
    """The model of the `shakespeare-char-cpu` preset, at byte level."""
    return GPTConfig(max_seq_length=64, vocab_size=256, num_layers=4, num_heads=4, embedding_dim=128, dropout=0.0,
                     bias=False)


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every knob of a run, named as nanoGPT's; the defaults are the `shakespeare-char-cpu` preset."""

    data: str | None = _setting(None, "UTF-8 text file to train on; none is the embedded Tiny Shakespeare")
    val_data: str | None = _setting(None, "UTF-8 text file to validate on, all of it; none holds out the end of --data")
    out_dir: str = _setting("out", "where checkpoints and metrics.jsonl go")
    model: GPTConfig = field(default_factory=default_model, metadata={"help": "the GPT's shape"})
    batch_size: int = _setting(12, "sequences per micro-batch (per rank under mpiexec: the global batch is this x ranks)")
    gradient_accumulation_steps: int = _setting(1, "micro-batches per optimizer step, their losses averaged (nanoGPT's)")
    max_iters: int = _setting(2000, "total training iterations")
    learning_rate: float = _setting(1e-3, "peak learning rate")
    min_lr: float = _setting(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = _setting(100, "linear warmup")
    lr_decay_iters: int | None = _setting(None, "iteration where the cosine decay ends, then --min-lr holds; none is "
                                          "--max-iters (on --resume: the resumed run's end, see docs/training.md)")
    weight_decay: float = _setting(0.1, "AdamW weight decay on matrices and embeddings")
    beta1: float = _setting(0.9, "AdamW beta1")
    beta2: float = _setting(0.99, "AdamW beta2")
    grad_clip: float = _setting(1.0, "clip the global gradient norm to this (0: off)")
    optimizer: str = _setting("adamw", "adamw, or muon (Muon on the hidden matrices, AdamW on the rest)")
    muon_learning_rate: float = _setting(0.03, "Muon's peak learning rate (decays as --learning-rate does)")
    muon_momentum: float = _setting(0.95, "Muon's momentum")
    muon_ns_steps: int = _setting(5, "Newton-Schulz iterations that orthogonalise Muon's update")
    schedule: str = _setting("cosine", "cosine, or wsd (warmup, stable, then a linear decay to --min-lr)")
    decay_fraction: float = _setting(0.5, "wsd: the share of --max-iters spent decaying")
    eval_interval: int = _setting(250, "evaluate and save a checkpoint every this many iterations (0: at the end only)")
    eval_iters: int = _setting(20, "batches per evaluation")
    log_interval: int = _setting(10, "write a line to metrics.jsonl (and, when not a terminal, to stderr) every this many iterations")
    log_stats: bool = _setting(False, "at --log-interval, each parameter's gradient norm and update / weight ratio and "
                               "each block's activation mean and std, to metrics.jsonl and out_dir/stats.png")
    tensorboard: bool = _setting(False, "write TensorBoard events to out_dir/tensorboard (needs tinygpt[tensorboard])")
    val_fraction: float = _setting(0.1, "share of the data held out for validation (its end)")
    sample_tokens: int = _setting(300, "length of the sample printed at the end (0: none)")
    device: str = _setting("cpu", "cpu, or cuda (needs CuPy)")
    seed: int = _setting(1337, "random seed")
    resume: bool = _setting(False, "continue from the checkpoint in --out-dir")
    init_from: str | None = _setting(None, "start from a TinyGPT out dir or a Hugging Face GPT-2 directory: its "
                                     "architecture, weights and tokenizer, a fresh optimizer, iteration 0")
    overwrite: bool = _setting(False, "train afresh into an --out-dir that holds a checkpoint, replacing it")

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TrainConfig:
        """A TrainConfig from flat settings (see the module docstring); those not given take the defaults."""
        known = set(MODEL_SETTINGS) | {item.name for item in fields(cls) if item.name != "model"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}")
        model = asdict(default_model()) | {MODEL_SETTINGS[key]: value for key, value in settings.items()
                                           if key in MODEL_SETTINGS}
        run = {key: value for key, value in settings.items() if key not in MODEL_SETTINGS}
        return cls(model=GPTConfig(**model), **run)

    def settings(self) -> dict[str, Any]:
        """This config as flat settings (see the module docstring)."""
        model = asdict(self.model)
        run = {key: value for key, value in asdict(self).items() if key != "model"}
        return {flat: model[name] for flat, name in MODEL_SETTINGS.items()} | run

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work (of the wrong type, out of range)."""
        settings = self.settings()
        self._check_types(settings)
        positive = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                    "eval_iters", "log_interval")
        for name in positive:
            if not isinstance(settings[name], int) or settings[name] < 1:
                raise ConfigError(f"{name} must be a positive integer, got {settings[name]!r}")
        if self.model.vocab_size < 256:
            raise ConfigError(f"vocab_size must be >= 256 (the byte tokens), got {self.model.vocab_size}")
        for name in ("learning_rate", "weight_decay", "grad_clip"):
            if not settings[name] >= 0.0:
                raise ConfigError(f"{name} must be >= 0, got {settings[name]}")
        if not 0.0 <= self.min_lr <= self.learning_rate:
            raise ConfigError(f"min_lr must be in [0, learning_rate {self.learning_rate}], got {self.min_lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= settings[name] < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {settings[name]}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.lr_decay_iters is not None and self.lr_decay_iters < self.warmup_iters:
            raise ConfigError(f"lr_decay_iters {self.lr_decay_iters} is shorter than warmup_iters {self.warmup_iters}")
        self._validate_speedrun()
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other: continue the checkpoint or replace it")
        if self.device not in backend.DEVICES:
            raise ConfigError(f"unknown device {self.device!r}, expected one of {', '.join(backend.DEVICES)}")
        if self.model.vocab_size > MAX_TOKEN_ID + 1:
            raise ConfigError(f"vocab_size must be at most {MAX_TOKEN_ID + 1:,} (the tokenizer's bound), "
                              f"got {self.model.vocab_size:,}")
        try:
            self.model.validate()
        except ValueError as error:  # named as the model's fields: say the settings' names
            raise ConfigError(re.sub(r"\b(\w+)\b", lambda word: NANOGPT_NAMES.get(word[1], word[1]), str(error))) from None

    @staticmethod
    def _check_types(settings: dict[str, Any]) -> None:
        """Each setting of the type its default has: integers, finite numbers, strings, booleans."""
        kinds = TrainConfig().settings()
        with as_config_error():
            for name, value in settings.items():
                default = kinds[name]
                if value is None and (default is None or name == "lr_decay_iters"):
                    continue
                if isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise ValueError(f"{name} must be true or false, got {value!r}")
                elif isinstance(default, int) or name == "lr_decay_iters":  # its default is None
                    check_count(name, value, minimum=0)
                elif isinstance(default, float):
                    check_finite(name, value)
                elif isinstance(default, str) and not isinstance(value, str):
                    raise ValueError(f"{name} must be a string, got {value!r}")


    def _validate_speedrun(self) -> None:
        """The optimizer, schedule and GPT options of the speedrun."""
        choices = dict(optimizer=(self.optimizer, OPTIMIZERS), schedule=(self.schedule, SCHEDULES),
                       norm=(self.model.norm, NORMS), mlp_activation=(self.model.mlp_activation, tuple(GPTMLP.activations)))
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if not 1 <= self.muon_ns_steps <= MAX_NS_STEPS:
            raise ConfigError(f"muon_ns_steps must be an integer in [1, {MAX_NS_STEPS}], got {self.muon_ns_steps}")
        if not self.muon_learning_rate >= 0.0:
            raise ConfigError(f"muon_learning_rate must be >= 0, got {self.muon_learning_rate}")
        if not 0.0 <= self.model.logit_soft_cap < float("inf"):
            raise ConfigError(f"logit_soft_cap must be 0 (off) or a positive finite number, got {self.model.logit_soft_cap}")


GROUPS = {  # how `tinygpt train --help` lists the settings; the model's settings are "model"
    "data and output": ("data", "val_data", "val_fraction", "out_dir"),
    "optimization": ("batch_size", "gradient_accumulation_steps", "max_iters", "learning_rate", "min_lr", "warmup_iters",
                     "lr_decay_iters", "weight_decay", "beta1", "beta2", "grad_clip", "optimizer", "muon_learning_rate",
                     "muon_momentum", "muon_ns_steps", "schedule", "decay_fraction"),
    "evaluation and logging": ("eval_interval", "eval_iters", "log_interval", "log_stats", "tensorboard", "sample_tokens"),
    "run": ("device", "seed", "resume", "init_from", "overwrite"),
}
METAVARS = {"data": "FILE", "val_data": "FILE", "out_dir": "DIR", "init_from": "DIR"}


def setting_choices() -> dict[str, tuple[str, ...]]:
    """The settings that take one of a few names, and those names."""
    return {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": tuple(backend.DEVICES), "norm": tuple(NORMS),
            "mlp_activation": tuple(GPTMLP.activations)}


def setting_schema() -> list[Setting]:
    """Every flat setting with its type, default, help and how --help shows it: TrainConfig's fields, then GPTConfig's."""
    group_of = {name: group for group, names in GROUPS.items() for name in names}
    choices = setting_choices()
    run = [replace(setting, group=group_of[setting.name], choices=choices.get(setting.name),
                   metavar=METAVARS.get(setting.name))
           for setting in dataclass_settings(TrainConfig) if setting.name != "model"]
    defaults = asdict(default_model())
    model = [Setting(setting.name, setting.kind, defaults[MODEL_SETTINGS[setting.name]], setting.help, setting.optional,
                     choices.get(setting.name), group="model")
             for setting in dataclass_settings(GPTConfig, NANOGPT_NAMES)]
    return run + model

def check_settings(settings: dict[str, Any], origin: str) -> None:
    """Raise ConfigError for a setting of origin (a file, a checkpoint) that is unknown or of the wrong type."""
    schema = {setting.name: setting for setting in setting_schema()}
    unknown = sorted(set(settings) - set(schema))
    if unknown:
        raise ConfigError(f"{origin}: unknown training settings {unknown}")
    for name, value in settings.items():
        if not schema[name].accepts(value):
            raise ConfigError(f"{origin}: {name} must be {schema[name].kind.__name__}"
                              f"{' or none' if schema[name].optional else ''}, got {value!r}")


def check_device(device: str) -> None:
    """Refuse, in one line, a device this machine cannot run ("cuda" without CuPy or without a GPU)."""
    if device == "cuda":
        with as_config_error(RuntimeError):
            backend.array_module("cuda")
        if not backend.cuda_available():
            raise ConfigError("device 'cuda': CuPy is installed but sees no CUDA GPU")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Flat settings from a .toml (Python 3.11+, tomllib) or .json file, checked by name and type."""
    path = Path(path)
    with as_config_error(OSError):
        text = read_text(path, "config file", CONFIG_FILE_BYTES)
    if path.suffix == ".toml":
        if sys.version_info < (3, 11):
            raise ConfigError(f"config file {path}: TOML needs Python 3.11+ (tomllib); write it as .json instead")
        import tomllib

        parse, errors = tomllib.loads, (tomllib.TOMLDecodeError, RecursionError)
    elif path.suffix == ".json":
        parse, errors = json.loads, (ValueError, RecursionError)
    else:
        raise ConfigError(f"config file {path}: expected a .toml or .json file")
    try:
        settings = parse(text)
    except errors as error:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"config file {path}: expected a table of settings, got {type(settings).__name__}")
    check_settings(settings, f"config file {path}")
    return settings


__all__ = ["TrainConfig", "ConfigError", "check_device", "PRESETS", "MODEL_SETTINGS", "NANOGPT_NAMES", "default_model", "setting_schema", "named", "flag_spelling",
           "check_settings", "read_config_file"]
