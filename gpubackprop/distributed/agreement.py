"""What every rank of a data-parallel run must agree on, described as plain values
that can be compared across ranks: the model, the optimizer, the data and the
training arguments. A difference is found before the first step and raised on every
rank at once (:class:`~gpubackprop.errors.DistributedError`)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arrays import Array, array_module
from ..backend import is_cupy_array
from ..errors import DistributedError

if TYPE_CHECKING:
    from ..model import Sequential
    from ..optim import Optimizer

#: rows of the data hashed for its fingerprint (spread evenly, first and last included)
SAMPLED_ROWS = 16


def describe_model(model: Sequential) -> dict[str, Any]:
    """The model as every rank must have it: layers, dtype, precision, device kind
    (``cpu`` / ``cuda``: each rank has its own GPU), parameter count."""
    return {
        "layers": [layer.describe() for layer in model.layers],
        "dtype": model.dtype.name,
        "precision": model.precision,
        "device kind": "cuda" if model.backend.is_gpu else "cpu",
        "parameters": model.num_parameters,
    }


def describe_optimizer(optimizer: Optimizer) -> dict[str, Any]:
    """The optimizer's type, hyper-parameters, step count and which state it holds."""
    held = optimizer.buffers()  # the live arrays, no copies (state and workspace)
    return {
        "type": type(optimizer).__name__,
        "hyperparameters": optimizer.hyperparameters(),
        "step_count": optimizer.step_count,
        "state": sorted(name for name in optimizer.state_names if name in held),
    }


def describe_data(x: Array, y: Array) -> dict[str, Any]:
    """Rows, shapes and dtypes of (x, y), and a hash of :data:`SAMPLED_ROWS` rows of
    each (every rank must pass the same whole dataset; a full hash would read it all)."""
    n = len(x)
    rows: Any = np.unique(np.linspace(0, n - 1, SAMPLED_ROWS).astype(np.int64)) if n else []
    digest = hashlib.sha256()
    for array in (x, y):
        sample = array[array_module(array).asarray(rows)] if n else array[:0]
        host = sample.get() if is_cupy_array(sample) else np.asarray(sample)
        digest.update(np.ascontiguousarray(host).tobytes())
    return {
        "rows": n,
        "x": (tuple(x.shape[1:]), x.dtype.name),
        "y": (tuple(y.shape[1:]), y.dtype.name),
        "sampled rows": digest.hexdigest()[:16],
    }


def flatten(description: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, keys joined by " / " (``{"model": {"dtype": ..}}`` ->
    ``{"model / dtype": ..}``), so that a difference names the innermost key."""
    flat: dict[str, Any] = {}
    for key, value in description.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key} / "))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def disagreements(descriptions: list[dict[str, Any]]) -> list[str]:
    """One line per (innermost) key on which some rank's description differs from rank
    0's, naming the ranks and their values (empty: all agree)."""
    lines = []
    flat = [flatten(d) for d in descriptions]
    keys = list(dict.fromkeys(key for d in flat for key in d))
    for key in keys:
        values = [d.get(key) for d in flat]
        if any(v != values[0] for v in values):
            groups: dict[str, list[int]] = {}
            for rank, value in enumerate(values):
                groups.setdefault(repr(value), []).append(rank)
            said = "; ".join(
                f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {value}"
                for value, ranks in groups.items()
            )
            lines.append(f"{key}: {said}")
    return lines


def raise_if_disagree(who: str, descriptions: list[dict[str, Any]], advice: str) -> None:
    """DistributedError listing :func:`disagreements` (every rank calls this with the
    same gathered ``descriptions``, so every rank raises the same error)."""
    lines = disagreements(descriptions)
    if lines:
        raise DistributedError(
            f"{who}: the {len(descriptions)} ranks disagree before training:\n  "
            + "\n  ".join(lines)
            + f"\n{advice}"
        )


__all__ = [
    "SAMPLED_ROWS",
    "describe_data",
    "describe_model",
    "describe_optimizer",
    "disagreements",
    "flatten",
    "raise_if_disagree",
]
