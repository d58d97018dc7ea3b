"""Small helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gpubackprop.gradcheck import central_difference


def to_numpy(x: object) -> np.ndarray:
    """Host copy of a NumPy or CuPy array."""
    return x.get() if hasattr(x, "get") else np.asarray(x)


def numeric_gradient(f: Callable[[], float], array: Any, eps: float = 1e-6) -> np.ndarray:
    """Central differences ∂f/∂array at every entry (the library's one helper).

    ``array`` (NumPy or CuPy) is perturbed in place and restored; ``f`` reads it.
    """
    entries = central_difference(f, array, list(np.ndindex(array.shape)), eps)
    return entries.reshape(array.shape)
