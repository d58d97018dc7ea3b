"""argparse helpers shared by the command lines (``__main__``, ``charrnn``)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

from .checks import check_int
from .errors import ConfigError, GpuBackpropError


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


def add_training_options(
    parser: argparse.ArgumentParser, *, lr: float, lr_help: str, seed_help: str, quiet_help: str
) -> None:
    """Add ``--device``, ``--lr``, ``--seed`` and ``--quiet``, the options every trainer has."""
    parser.add_argument("--device", default="auto",
                        help="'cpu', 'cuda', 'cuda:N' or 'auto' (default: the GPU if available)")
    parser.add_argument("--lr", type=positive_float, default=lr,
                        help=f"{lr_help} (default: %(default)s)")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help=f"{seed_help} (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help=quiet_help)


def run_command(name: str, run: Callable[..., object], *args: Any, **kwargs: Any) -> int:
    """``run(*args, **kwargs)``; the exit code: 0, or 1 after printing a GpuBackpropError
    as ``gpubackprop <name>: error: <message>`` to stderr."""
    try:
        run(*args, **kwargs)
    except GpuBackpropError as exc:
        print(f"gpubackprop {name}: error: {exc}", file=sys.stderr)
        return 1
    return 0
