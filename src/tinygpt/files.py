"""Reading a file from disk, the one way every reader does it: a regular file (after resolving links) or a clear
refusal, a size bound named for what the file is, and a read that never holds more than that bound.

The file is opened without blocking and its type checked on the open descriptor, so a FIFO (also one a symlink
points to) is refused instead of waited on, and a device such as /dev/zero is refused instead of read until
memory runs out. Every refusal is a FileNotFoundError (nothing there) or a ValueError naming the file and
what it is.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

MiB = 1 << 20
CONFIG_FILE_BYTES = 4 * MiB          # a settings file: --config, a checkpoint's or a Hugging Face config.json
STATE_FILE_BYTES = 512 * MiB         # a checkpoint's state.json: the loss history of every iteration
TOKENIZER_FILE_BYTES = 512 * MiB     # a tokenizer file: tokenizer.model, tokenizer.json, vocab.json, merges.txt
PROMPT_FILE_BYTES = 16 * MiB         # --prompt FILE:path, and the text `tokenizer encode` reads on stdin
METRICS_FILE_BYTES = 1 << 30         # metrics.jsonl: one line per logged iteration
READ_PIECE_BYTES = 16 * MiB          # what read_bytes asks the OS for at a time


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words."""
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def regular_file(path: str | os.PathLike, what: str, limit: int | None = None) -> Path:
    """`path` if it is (or links to) a regular file of at most `limit` bytes; else FileNotFoundError or ValueError
    naming `what` it should have been. Checked with stat, so nothing is opened: a FIFO cannot block."""
    path = Path(path)
    try:
        status = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be read ({error.strerror or error})") from None
    _check_status(path, what, status, limit)
    return path


def _check_status(path: Path, what: str, status: os.stat_result, limit: int | None) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"{what} {path} is {file_kind(status.st_mode)}, not a regular file")
    if limit is not None and status.st_size > limit:
        raise ValueError(f"{what} {path} is {status.st_size:,} bytes, more than the {limit:,} such a file may have")


def open_regular(path: str | os.PathLike, what: str, limit: int | None = None) -> BinaryIO:
    """The regular file at `path` opened for binary reading, its type and size checked on the open descriptor
    (so a file swapped for a FIFO between a check and the open is refused too)."""
    path = regular_file(path, what, limit)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be read ({error.strerror or error})") from None
    try:
        _check_status(path, what, os.fstat(descriptor), limit)
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "rb")


def read_bytes(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """All the bytes of a regular file of at most `limit` bytes (a file still growing is cut off and refused)."""
    with open_regular(path, what, limit) as file:
        data = _read_at_most(file, limit + 1)
    if len(data) > limit:
        raise ValueError(f"{what} {path} is more than the {limit:,} bytes such a file may have")
    return data


def _read_at_most(file, count: int) -> bytes:
    """Up to `count` bytes of `file`, in pieces: file.read(count) would allocate all of `count` first."""
    pieces, left = [], count
    while left > 0 and (piece := file.read(min(left, READ_PIECE_BYTES))):
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


def decode_utf8(data: bytes, what: str) -> str:
    """`data` as UTF-8 text; ValueError naming `what` and the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_text(path: str | os.PathLike, what: str, limit: int) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes, exactly as stored (no newline translation)."""
    return decode_utf8(read_bytes(path, what, limit), f"{what} {path}")


def parse_json(text: str, what: str):
    """The value of JSON text; a JSONDecodeError (a ValueError) when it is not JSON, and a ValueError naming `what`
    when it nests deeper than Python's parser follows (which would otherwise end in a RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{what} is not readable JSON: it nests too deeply") from None


def read_json(path: str | os.PathLike, what: str, limit: int):
    """The JSON value of a regular file of at most `limit` bytes (see read_text and parse_json)."""
    return parse_json(read_text(path, what, limit), f"{what} {path}")


def read_stream(stream: BinaryIO, what: str, limit: int) -> bytes:
    """At most `limit` bytes of an open stream (stdin); ValueError when it holds more."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{what} holds more than the {limit:,} bytes it may have")
    return data


__all__ = ["regular_file", "open_regular", "read_bytes", "read_text", "read_json", "parse_json", "read_stream", "decode_utf8",
           "file_kind"]
