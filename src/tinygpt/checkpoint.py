"""Checkpoints: written atomically, read back validated, and restored into a run that resumes exactly.

A checkpoint is the directory `<out_dir>/ckpt` (weights.safetensors, optimizer.safetensors, config.json,
tokenizer.model/.vocab, state.json with the iteration, the RNG states and the loss history). It is
written into a fresh `ckpt.tmp-*` directory first; then the previous `ckpt` is renamed to `ckpt.old`,
the new one renamed to `ckpt`, and `ckpt.old` deleted. Whatever instant a run is killed at, one
complete checkpoint is left: `ckpt` when it exists (only ever created whole, by a rename), otherwise
`ckpt.old`, which the loader falls back to and the next save puts back in place. A staging directory is
named after the process writing it, and a save deletes only those of processes that are gone; a run holds an
advisory lock on the out dir (`out_dir_lock`), so a second run into it is refused rather than mixed in.

config.json holds {"format", "model": the GPTConfig, "train": the run's flat settings (tinygpt.config)}.
The weights are not called model.safetensors: with that name and a config.json beside it, the directory
looks like a Hugging Face one, and transformers' from_pretrained built a random GPT-2 from it without an
error. Checkpoints written before are still read. `tinygpt export` writes a real Hugging Face directory.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt import backend
from tinygpt.config import NANOGPT_NAMES, ConfigError, TrainConfig, named
from tinygpt.checkpoint_checks import check_finite_weights, check_optimizer_covers_model, check_weights_fit_config
from tinygpt.files import CONFIG_FILE_BYTES, STATE_FILE_BYTES, TOKENIZER_FILE_BYTES, read_json, regular_file
from tinygpt.dataset import file_digest
from tinygpt.nn import GPT, GPTConfig
from tinygpt.optimizers import Optimizer
from tinygpt.tokenizer import BPETokenizer
from tinygpt.utils import is_real

CHECKPOINT_FORMAT = "tinygpt-checkpoint v1"
CHECKPOINT_DIR, PREVIOUS_CHECKPOINT_DIR, STAGING_PREFIX = "ckpt", "ckpt.old", "ckpt.tmp-"
MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, STATE_FILE = "weights.safetensors", "optimizer.safetensors", "config.json", "state.json"
EARLIER_MODEL_FILE = "model.safetensors"  # the name before, read back when MODEL_FILE is absent
TOKENIZER_PREFIX = "tokenizer"
TOKENIZER_MODEL_FILE = f"{TOKENIZER_PREFIX}.model"
BOUND_FILES = (MODEL_FILE, OPTIMIZER_FILE, TOKENIZER_MODEL_FILE)  # state.json records their SHA-256
DATA_SETTINGS = ("data", "val_data")
LOCK_FILE = ".lock"


def find_checkpoint(out_dir: str | os.PathLike) -> Path:
    """The directory of the latest complete checkpoint in out_dir (see the module docstring)."""
    out_dir = Path(out_dir)
    for name in (CHECKPOINT_DIR, PREVIOUS_CHECKPOINT_DIR):
        if (out_dir / name).is_dir():
            return out_dir / name
    if (out_dir / STATE_FILE).is_file():  # the checkpoint folder itself was given, not the run's
        raise ConfigError(f"{out_dir} is a checkpoint folder, not a run's: give the folder that holds it, "
                          f"{named('out_dir', str(out_dir.parent))}")
    raise ConfigError(f"no checkpoint in {out_dir} (train one with: tinygpt train --out-dir {out_dir})")


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    """config.json of a checkpoint: {"format", "model": GPTConfig as a dict, "train": flat settings}."""
    try:
        config = read_json(directory / CONFIG_FILE, "checkpoint file", CONFIG_FILE_BYTES)
        if config.get("format") != CHECKPOINT_FORMAT or not isinstance(config["model"], dict):
            raise ValueError(f"format {config.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        config["train"] = dict(config["train"])
        return config
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"corrupt checkpoint {directory}: cannot read {CONFIG_FILE} ({error})") from None


@dataclass
class Checkpoint:
    """A checkpoint read back from disk: its directory, config.json, state.json, and tokenizer."""

    directory: Path
    config: dict[str, Any]
    state: dict[str, Any]
    tokenizer: BPETokenizer

    @property
    def model_config(self) -> GPTConfig:
        """The GPTConfig of config.json, checked by GPTConfig.validate."""
        try:
            model_config = GPTConfig(**self.config["model"])
            model_config.validate()
            return model_config
        except (TypeError, ValueError) as error:
            raise ConfigError(f"corrupt checkpoint {self.directory}: {CONFIG_FILE} model: {error}") from None

    @property
    def weights_file(self) -> Path:
        """MODEL_FILE, or the earlier name in a checkpoint written before the rename."""
        earlier = self.directory / EARLIER_MODEL_FILE
        return earlier if not (self.directory / MODEL_FILE).exists() and earlier.is_file() else self.directory / MODEL_FILE

    def load_model(self, device: str = "cpu") -> GPT:
        """The GPT of config.json with the saved weights, on `device`. The size config.json implies is checked
        against the tensors the weights file holds before the model is built, and the weights must be finite."""
        model_config = self.model_config
        largest_id = max(self.tokenizer.vocab)
        if largest_id >= model_config.vocab_size:
            raise ConfigError(f"corrupt checkpoint {self.directory}: the tokenizer has ids up to {largest_id}, beyond "
                              f"the model's vocabulary of {model_config.vocab_size}")
        try:
            check_weights_fit_config(self.weights_file, model_config)
            model = GPT(model_config)
            model.load_weights(str(self.weights_file))
            check_finite_weights(model, self.weights_file.name)
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(f"corrupt checkpoint {self.directory}: {error}") from None
        check_bound_files(self, (MODEL_FILE, TOKENIZER_MODEL_FILE))
        return model.to(device) if device != "cpu" else model


def load_checkpoint(out_dir: str | os.PathLike) -> Checkpoint:
    """Read the latest complete checkpoint of out_dir; anything missing or malformed raises ConfigError."""
    directory = find_checkpoint(out_dir)
    config = read_checkpoint_config(directory)
    try:
        state = read_json(directory / STATE_FILE, "checkpoint file", STATE_FILE_BYTES)
        check_state(state)
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as error:
        raise ConfigError(f"corrupt checkpoint {directory}: cannot read {STATE_FILE} ({error})") from None
    tokenizer = BPETokenizer()
    try:
        tokenizer.load(regular_file(directory / TOKENIZER_MODEL_FILE, "tokenizer file", TOKENIZER_FILE_BYTES))
    except (OSError, ValueError) as error:
        raise ConfigError(f"corrupt checkpoint {directory}: {error}") from None
    return Checkpoint(directory, config, state, tokenizer)


def save_checkpoint(out_dir: Path, model: GPT, optimizer: Optimizer, tokenizer: BPETokenizer,
                    config: TrainConfig, state: dict[str, Any], optimizer_state: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint next to the current one, then swap it in (see the module docstring).
    `optimizer_state`: the optimizer's state_arrays(), where the ranks gathered them (else taken here)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    current, previous = out_dir / CHECKPOINT_DIR, out_dir / PREVIOUS_CHECKPOINT_DIR
    if not current.exists() and previous.is_dir():
        os.rename(previous, current)  # an earlier save was killed between its two renames
    for stale in out_dir.glob(f"{STAGING_PREFIX}*"):
        if not _staged_by_a_live_process(stale):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    try:
        _write_checkpoint_files(staging, model, optimizer, tokenizer, config, state, optimizer_state)
    except OSError as error:  # a full disk, most likely: the previous checkpoint is untouched
        shutil.rmtree(staging, ignore_errors=True)
        kept = f"the previous checkpoint {current} is kept" if current.exists() else "no earlier checkpoint exists"
        raise ConfigError(f"could not write a checkpoint in {out_dir} ({error}); {kept}") from None
    if current.exists():
        _remove(previous)
        os.rename(current, previous)
    os.rename(staging, current)
    _fsync(out_dir)
    _remove(previous)
    return current


def _remove(path: Path) -> None:
    """Delete a directory, or only the link when it is a symlink (a checkpoint linked from elsewhere)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _staged_by_a_live_process(staging: Path) -> bool:
    """Whether the process whose id names a staging directory (ckpt.tmp-<pid>-...) still runs (then it is not ours
    to delete); a directory of a process that died, or of another name, is stale."""
    pid = staging.name.removeprefix(STAGING_PREFIX).partition("-")[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


@contextmanager
def out_dir_lock(out_dir: Path) -> Iterator[None]:
    """Hold an advisory lock on out_dir (flock on out_dir/.lock) while a run writes there; a second run into the
    same out_dir is refused with ConfigError. The operating system releases the lock when the process ends, however
    it ends, so a killed run never leaves the directory locked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            raise ConfigError(f"--out-dir {out_dir} is in use by another run (process {holder or 'unknown'}); wait for "
                              "it to end or give another --out-dir") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock


@contextmanager
def removed_if_left_empty(out_dir: Path) -> Iterator[None]:
    """A run that fails before writing anything leaves no out_dir it created behind (a folder that was there
    stays, and so does one holding anything but the lock file)."""
    existed = out_dir.exists()
    try:
        yield
    except BaseException:
        if not existed and out_dir.is_dir() and {path.name for path in out_dir.iterdir()} <= {LOCK_FILE}:
            (out_dir / LOCK_FILE).unlink(missing_ok=True)
            out_dir.rmdir()
        raise


def _write_checkpoint_files(staging: Path, model: GPT, optimizer: Optimizer, tokenizer: BPETokenizer,
                            config: TrainConfig, state: dict[str, Any], optimizer_state: dict[str, Any] | None) -> None:
    model.save_weights(str(staging / MODEL_FILE))
    optimizer.save_state(str(staging / OPTIMIZER_FILE), optimizer_state)
    tokenizer.save(staging / TOKENIZER_PREFIX)
    settings = config.settings()
    for key in DATA_SETTINGS:  # absolute: the run's file, from whichever directory it is resumed or evaluated
        settings[key] = str(Path(settings[key]).resolve()) if settings[key] is not None else None
    (staging / CONFIG_FILE).write_text(json.dumps(
        {"format": CHECKPOINT_FORMAT, "model": asdict(model.config), "train": settings}, indent=2) + "\n")
    state = state | {"files": {name: file_digest(staging / name) for name in BOUND_FILES}}
    (staging / STATE_FILE).write_text(json.dumps(state) + "\n")
    for path in [*staging.iterdir(), staging]:
        _fsync(path)


def check_bound_files(checkpoint: Checkpoint, names: tuple[str, ...]) -> None:
    """Refuse a checkpoint file that is not the one the checkpoint was written with (state.json holds the SHA-256
    of each; a checkpoint written before they were recorded is taken as it is)."""
    recorded = checkpoint.state.get("files") or {}
    for name in names:
        path = checkpoint.weights_file if name == MODEL_FILE else checkpoint.directory / name
        if name in recorded and file_digest(path) != recorded[name]:
            raise ConfigError(f"corrupt checkpoint {checkpoint.directory}: {name} is not the file this checkpoint was "
                              "written with (its SHA-256 differs): a file of another run, or a damaged one")


def data_record(paths: dict[str, Path]) -> dict[str, dict[str, str]]:
    """What state.json records of a run's text files ({"data": path, "val_data": path or absent}): the absolute
    path and SHA-256 of each."""
    return {key: {"path": str(path.resolve()), "sha256": file_digest(path)} for key, path in paths.items()}


def check_same_data(checkpoint: Checkpoint, data: dict[str, dict[str, str]]) -> None:
    """Refuse text files (their data_record) that differ from those the checkpoint was trained on (when it recorded
    them)."""
    recorded = checkpoint.state.get("data") or {}
    for key, record in data.items():
        if key in recorded and record["sha256"] != recorded[key].get("sha256"):
            raise ConfigError(f"data file {record['path']} has changed since checkpoint {checkpoint.directory} was written (its "
                              f"SHA-256 differs): give the text it was trained on, or start from it with {named('init_from')}")


def _fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk, so that a rename never publishes unwritten data."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_architecture(checkpoint: Checkpoint, config: TrainConfig) -> None:
    """Refuse to resume a checkpoint into a model of another shape (dropout may change; it holds no weights)."""
    saved, asked = asdict(checkpoint.model_config), asdict(config.model)
    differing = [item.name for item in fields(GPTConfig) if item.name != "dropout" and saved[item.name] != asked[item.name]]
    if differing:
        have = ", ".join(f"{NANOGPT_NAMES.get(name, name)}={saved[name]}" for name in differing)
        wanted = ", ".join(f"{NANOGPT_NAMES.get(name, name)}={asked[name]}" for name in differing)
        raise ConfigError(f"checkpoint {checkpoint.directory} has {have} but this run asks for {wanted}; "
                          f"use the checkpoint's architecture or drop {named('resume', True)}")


# ---- state.json: its schema, written, checked and restored here ------------------------------------------
HISTORY_SERIES = ("iterations", "losses", "learning_rates")


def training_state(iteration: int, data_rng: np.random.Generator, dropout_rngs: list[dict | None],
                   history: dict[str, list], elapsed: float, data: dict[str, dict[str, str]]) -> dict[str, Any]:
    """state.json's content for a run at `iteration` (save_checkpoint adds the SHA-256 of the files it writes)."""
    return {"iteration": iteration, "data_rng": data_rng.bit_generator.state, "dropout_rng": dropout_rngs[0],
            "dropout_rngs": dropout_rngs, "history": history, "elapsed": elapsed, "data": data}


def check_state(state: Any) -> None:
    """state.json as the training loop writes it: each field of STATE_FIELDS of its type and range, the required
    ones present (the others came later: a checkpoint written before them lacks them)."""
    if not isinstance(state, dict):
        raise ValueError(f"expected an object, got {type(state).__name__}")
    for name, (required, is_valid, expected) in STATE_FIELDS.items():
        if (name in state or required) and not is_valid(state.get(name)):
            raise ValueError(f"{name} must be {expected}, got {_shown(state.get(name))}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_generator_state(value: Any) -> bool:
    """Whether numpy's generator (PCG64, as np.random.default_rng makes for the sampler and dropout) takes it."""
    try:
        np.random.PCG64().state = value
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return True


def _is_history(history: Any) -> bool:
    return (isinstance(history, dict)
            and all(isinstance(history.get(name), list) and all(map(is_real, history[name])) for name in HISTORY_SERIES)
            and isinstance(history.get("evals"), list) and all(map(_is_eval_record, history["evals"])))


def _is_eval_record(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("iteration"), int)
            and all(is_real(value) for value in record.values()))


STATE_FIELDS = {  # name: (required, check, what it must be)
    "iteration": (True, _is_count, "an integer >= 0"),
    "data_rng": (True, _is_generator_state, "a PCG64 generator's state"),
    "history": (True, _is_history, "an object of lists of numbers (iterations, losses, learning_rates) and evals, "
                                   "a list of {iteration: integer, <name>: number} records"),
    "dropout_rng": (False, lambda value: value is None or _is_generator_state(value),
                    "a PCG64 generator's state or null"),
    "dropout_rngs": (False, lambda value: isinstance(value, list) and all(item is None or _is_generator_state(item)
                                                                         for item in value),
                     "a list of PCG64 generator states (or nulls), one per rank"),
    "elapsed": (False, lambda value: is_real(value) and math.isfinite(value) and value >= 0,
                "the training seconds so far (a number >= 0)"),
    "files": (False, lambda files: isinstance(files, dict) and all(isinstance(digest, str) for digest in files.values()),
              "an object of {file name: SHA-256}"),
    "data": (False, lambda data: isinstance(data, dict) and all(
        isinstance(record, dict) and isinstance(record.get("sha256"), str) and isinstance(record.get("path"), str)
        for record in data.values()), "an object of {setting: {path, sha256}}"),
}


def restore_training_state(checkpoint: Checkpoint, optimizer: Optimizer, data_rng: np.random.Generator,
                           device: str, rank: int = 0, ranks: int = 1) -> tuple[int, dict[str, list]]:
    """Put the optimizer and the random generators (the sampler's, and rank `rank` of `ranks`'s dropout one) back
    as they were at the checkpoint; return its iteration and history. (Checkpoint.load_model loaded the weights.)"""
    iteration = int(checkpoint.state["iteration"])
    try:
        optimizer.load_state(str(checkpoint.directory / OPTIMIZER_FILE))
        if optimizer.step_count != iteration:
            raise ValueError(f"optimizer took {optimizer.step_count} steps but state.json says iteration {iteration}")
        check_optimizer_covers_model(optimizer, iteration)
        data_rng.bit_generator.state = checkpoint.state["data_rng"]
        dropout_rng = saved_dropout_state(checkpoint.state, rank, ranks)
        if dropout_rng is not None and device == "cpu":
            backend.generator("cpu").bit_generator.state = dropout_rng
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as error:
        raise ConfigError(f"corrupt checkpoint {checkpoint.directory}: {error}") from None
    check_bound_files(checkpoint, (OPTIMIZER_FILE,))
    if device != "cpu":
        xp = backend.array_module(device)
        for state in optimizer.state.values():
            for key, value in state.items():
                if np.ndim(value):
                    state[key] = xp.asarray(value)
    return iteration, checkpoint.state["history"]


def saved_dropout_state(state: dict[str, Any], rank: int, ranks: int) -> dict | None:
    """Rank `rank`'s dropout generator state in state.json: its own when the checkpoint was written by as many
    ranks; else (another number of ranks) rank 0's for rank 0 and none (its fresh stream) for the others."""
    saved = state.get("dropout_rngs") or [state.get("dropout_rng")]
    if len(saved) == ranks:
        return saved[rank]
    return saved[0] if rank == 0 else None


def random_state(device: str) -> dict | None:
    """The dropout generator's state as JSON-able data (CPU only: CuPy's generator exposes none)."""
    return backend.generator(device).bit_generator.state if device == "cpu" else None


__all__ = ["Checkpoint", "CHECKPOINT_DIR", "CHECKPOINT_FORMAT", "TOKENIZER_PREFIX", "find_checkpoint", "load_checkpoint",
           "read_checkpoint_config", "save_checkpoint", "out_dir_lock", "data_record", "check_same_data", "check_architecture", "restore_training_state", "random_state",
           "training_state", "check_state", "HISTORY_SERIES"]
