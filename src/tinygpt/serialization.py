"""Named arrays on disk: `.safetensors` (the standard) or `.json` (readable); atomic writes, no pickle."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from tinygpt.files import read_json, regular_file

FORMATS = (".safetensors", ".json")
JSON_WEIGHTS_BYTES = 1 << 30  # the readable format is for small models


def _format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown weights format {suffix!r}, expected one of {', '.join(FORMATS)}")
    return suffix


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(temporary_path) next to `path`, then rename it over `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; give it the mode of any new file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write named arrays (and string metadata) to `.safetensors` or `.json`, atomically."""
    arrays = {name: np.asarray(array, order="C") for name, array in arrays.items()}  # 0-d stays 0-d
    if _format(path) == ".safetensors":
        atomic_write(path, lambda temporary: _save_safetensors(arrays, temporary, metadata))
        return
    record = {"metadata": metadata or {}, "tensors": {
        name: {"dtype": str(array.dtype), "shape": list(array.shape), "data": array.reshape(-1).tolist()}
        for name, array in arrays.items()}}
    atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(record)))


def _save_safetensors(arrays: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None) -> None:
    """safetensors' save_file, its write errors (a full disk) raised as the OSError they are."""
    try:
        save_file(arrays, path, metadata=metadata)
    except SafetensorError as error:
        raise OSError(f"{path}: {error}") from None


def _numeric_dtype(name: str) -> np.dtype:
    """The numpy dtype a json file names, if it is a bool, integer or float type (never object or string)."""
    dtype = np.dtype(name)
    if dtype.kind not in "biuf":
        raise ValueError(f"dtype {name!r} is not a numeric type")
    return dtype


def load_arrays(path: str | os.PathLike, with_metadata: bool = False):
    """Read named arrays written by save_arrays; a corrupt or foreign file raises ValueError naming it."""
    regular_file(path, "weights file")
    if _format(path) == ".safetensors":
        try:
            with safe_open(str(path), framework="numpy") as file:
                metadata = file.metadata() or {}
                arrays = {name: file.get_tensor(name) for name in file.keys()}
        except (SafetensorError, ValueError, OSError) as error:
            raise ValueError(f"{path}: not a valid safetensors file ({error})") from None
    else:
        try:
            record = read_json(path, "weights file", JSON_WEIGHTS_BYTES)
            metadata = record.get("metadata", {})
            arrays = {name: np.array(entry["data"], dtype=_numeric_dtype(entry["dtype"])).reshape(entry["shape"])
                      for name, entry in record["tensors"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: not a valid TinyGPT weights json ({error})") from None
    return (arrays, metadata) if with_metadata else arrays
