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
    """One field of a settings dataclass: its (flat) name, value type, default, help, whether None is allowed, and
    how --help shows it: its choices, its metavar and the group it is listed in."""

    name: str
    kind: type
    default: Any
    help: str
    optional: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    group: str | None = None  # None: with the command's own options

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


class OnOffFlag(argparse.BooleanOptionalAction):
    """--x / --no-x, shown once in the usage line as --[no-]x."""

    def format_usage(self) -> str:
        return self.option_strings[0].replace("--", "--[no-]", 1)


def add_setting_flags(parser: argparse.ArgumentParser, settings: list[Setting]) -> None:
    """A flag per setting, listed under its group; a bool gets --x / --no-x. nanoGPT's spelling (--n_layer) is taken
    too, but not shown. Each defaults to SUPPRESS, so that the namespace holds only the flags actually given."""
    groups: dict[str | None, Any] = {None: parser}
    for setting in settings:
        if setting.group not in groups:
            groups[setting.group] = parser.add_argument_group(setting.group)
        group = groups[setting.group]
        shown = "none" if setting.default is None else setting.default
        dashed = f"--{setting.name.replace('_', '-')}"
        spellings = [(group, [dashed], f"{setting.help} (default: {shown})")]
        if "_" in setting.name:
            spellings.append((parser, [f"--{setting.name}"], argparse.SUPPRESS))
        for owner, names, text in spellings:
            if setting.kind is bool:
                owner.add_argument(*names, dest=setting.name, action=OnOffFlag, help=text, default=argparse.SUPPRESS)
            else:
                metavar = setting.metavar or {int: "N", float: "X"}.get(setting.kind, setting.name.upper())
                owner.add_argument(*names, dest=setting.name, type=setting.kind, metavar=None if setting.choices else metavar,
                                   choices=setting.choices, help=text, default=argparse.SUPPRESS)


__all__ = ["OneLineParser", "OnOffFlag", "Setting", "dataclass_settings", "add_setting_flags"]
