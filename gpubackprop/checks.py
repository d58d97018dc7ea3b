"""Argument checks shared by every module (floor 1: imports only :mod:`.errors`)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ConfigError


def check_int(what: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an int k with k >= ``minimum`` (by default a positive int).

    ``what`` names the argument and its owner as the message starts, e.g.
    ``"StepLR: step_size"``. Raises ConfigError ``"<what> must be an integer, got
    <value>"`` for a non-integer (a bool is not one; NumPy integers are) and
    ``"<what> must be >= <minimum>, got <k>"`` for one that is too small.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    out = int(value)
    if out < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {out}")
    return out


def check_bool(what: str, value: object) -> bool:
    """``value`` as a bool; ConfigError ``"<what> must be a bool, got <value>"`` unless it
    is a bool (Python's or NumPy's)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{what} must be a bool, got {value!r}")
    return bool(value)


def check_real(what: str, value: object) -> float:
    """``value`` as a float; ConfigError unless it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{what} must be finite, got {out}")
    return out


def check_nonneg(what: str, value: object) -> float:
    """``value`` as a float x with x >= 0 (finite); ConfigError otherwise."""
    out = check_real(what, value)
    if out < 0:
        raise ConfigError(f"{what} must be >= 0, got {out}")
    return out


def check_unit(what: str, value: object, *, closed: bool) -> float:
    """``value`` as a float in [0, 1] (``closed``) or [0, 1) (else); ConfigError otherwise."""
    out = check_real(what, value)
    if out < 0 or out > 1 or (out == 1 and not closed):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ConfigError(f"{what} must be in {interval}, got {out}")
    return out


__all__ = ["check_bool", "check_int", "check_nonneg", "check_real", "check_unit"]
