"""Command-line parsing shared by `tinygpt` and `tinygpt bench`: a parser whose errors are one line."""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and exit 2), like every other error of the command."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


__all__ = ["OneLineParser"]
