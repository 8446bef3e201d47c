"""Argument types shared by the benchmarks' command lines: a bad value stops the command
with one line that says what is allowed."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < 3600:
        raise argparse.ArgumentTypeError(f"{text}: allowed: 0 to 3600 seconds")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: allowed: a whole number >= 0")
    return value


def names_among(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """A comma-separated list of names, each one of ``allowed``, in the order given."""
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names or any(name not in allowed for name in names):
            raise argparse.ArgumentTypeError(f"{text}: allowed: {', '.join(allowed)}")
        return names
    return parse
