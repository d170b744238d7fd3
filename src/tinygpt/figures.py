"""Saving a matplotlib figure atomically: drawn into a temporary file beside the target, then renamed over it, so a
failure while drawing (a full disk) leaves the previous picture whole and no partial or 0-byte file."""
from __future__ import annotations

import os
from pathlib import Path

from tinygpt.serialization import atomic_write


def save_figure(figure, path: str | os.PathLike, **options) -> Path:
    """Save `figure` (a matplotlib Figure) to `path`, atomically; the format is the file's suffix (PNG without one)."""
    path = Path(path)
    file_format = options.pop("format", None) or path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda temporary: figure.savefig(temporary, format=file_format, **options))
    return path


__all__ = ["save_figure"]
