"""Command-line parsing shared by `tinygpt` and `tinygpt bench`: a parser whose errors are one line, and
flags generated from a dataclass's fields (name, type, default, and the help in the field's metadata)."""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and exit 2), like every other error of the command, and that
    takes no abbreviation of a flag (`--max-iter` is an unknown flag, not silently `--max-iters`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Setting:
    """One field of a settings dataclass: its (flat) name, value type, default, help, and whether None is allowed."""

    name: str
    kind: type
    default: Any
    help: str
    optional: bool = False

    def accepts(self, value: Any) -> bool:
        """Whether value has this setting's type (an int is a float; a bool is not an int)."""
        if value is None:
            return self.optional
        if self.kind is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, self.kind)


def dataclass_settings(cls: type, renames: dict[str, str] | None = None) -> list[Setting]:
    """The fields of dataclass cls as Settings, a field named in renames taking the name it maps to."""
    renames = renames or {}
    hints = typing.get_type_hints(cls)
    settings = []
    for item in fields(cls):
        hint = hints[item.name]
        kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kind = next(kind for kind in kinds if kind is not type(None))
        default = item.default if item.default is not MISSING else item.default_factory()  # type: ignore[misc]
        settings.append(Setting(renames.get(item.name, item.name), kind, default, item.metadata.get("help", ""),
                                type(None) in kinds))
    return settings


def add_setting_flags(parser: argparse.ArgumentParser, settings: list[Setting]) -> None:
    """A flag per setting, spelt both --n-layer and --n_layer (nanoGPT's); a bool gets --x / --no-x. Each
    defaults to SUPPRESS, so that the namespace holds only the flags actually given."""
    for setting in settings:
        names = [f"--{setting.name.replace('_', '-')}"] + ([f"--{setting.name}"] if "_" in setting.name else [])
        shown = "none" if setting.default is None else setting.default
        text = f"{setting.help} (default: {shown})"
        if setting.kind is bool:
            parser.add_argument(*names, dest=setting.name, action=argparse.BooleanOptionalAction, help=text,
                                default=argparse.SUPPRESS)
        else:
            metavar = {int: "N", float: "X"}.get(setting.kind, setting.name.upper())
            parser.add_argument(*names, dest=setting.name, type=setting.kind, metavar=metavar, help=text,
                                default=argparse.SUPPRESS)


__all__ = ["OneLineParser", "Setting", "dataclass_settings", "add_setting_flags"]
