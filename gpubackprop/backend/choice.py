"""The environment settings of the CPU's fast paths (``GPUBACKPROP_CPU_BLAS``,
``GPUBACKPROP_CPU_KERNELS``): one reader, one error for a bad value."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import ConfigError


def read_choice(variable: str, choices: Sequence[str], choice: str | None = None
                ) -> tuple[str, str]:
    """(choice, source): ``choice`` when given (source ``"choice"``), else the environment
    ``variable`` (source: its name; unset or empty means ``choices[0]``), lower-cased.

    Raises :class:`ConfigError` naming the source and the accepted values when the value
    is not one of ``choices``."""
    source = "choice"
    if choice is None:
        choice, source = os.environ.get(variable, "").strip().lower() or choices[0], variable
    if choice not in choices:
        raise ConfigError(f"{source} must be one of {', '.join(choices)}, got {choice!r}")
    return choice, source


__all__ = ["read_choice"]
