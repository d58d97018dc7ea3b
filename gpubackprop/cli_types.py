"""argparse ``type=`` validators shared by the command lines (``__main__``, ``charrnn``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .checks import check_int
from .errors import ConfigError


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A parser of whole numbers >= ``minimum`` (argparse reports the bad value)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return check_int("the value", value, minimum=minimum)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value
