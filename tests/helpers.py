"""Small helpers shared by the tests."""

from __future__ import annotations

import numpy as np


def to_numpy(x: object) -> np.ndarray:
    """Host copy of a NumPy or CuPy array."""
    return x.get() if hasattr(x, "get") else np.asarray(x)
