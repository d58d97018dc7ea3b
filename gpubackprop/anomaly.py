"""Anomaly detection: the first NaN/Inf of a training step, named by layer and pass.

Inside ``with gb.detect_anomaly():`` (and in ``fit(..., check_finite=True)``) the
engine checks every array a step produces, in order, and raises
:class:`~gpubackprop.errors.NumericalError` for the first non-finite one, before any
optimizer update::

    input x                                  pass "input"
    a_k = layer_k(a_{k−1}),  k = 0 … L−1     pass "forward"
    L, δ_L = ∂L/∂a_L                         pass "loss"
    (dW_k, db_k), δ_{k−1},  k = L−1 … 0      pass "backward"

Cost: one reduction per array. ``Σ a`` is not finite iff a has a NaN/inf or the sum
overflowed: the cheap test (no boolean temporary the size of a), confirmed with
``isfinite(a).all()`` before anything is raised. On the CPU each sum is read at once;
on a GPU the sums go into one float64 device array (a float32 sum cannot overflow it),
read with one transfer per step.

Before training, ``fit`` and ``evaluate`` check their data once with
:func:`check_finite_input`: one ``isfinite`` pass (in blocks on the host, one
reduction on a GPU), and an error naming the row and column of the first NaN/Inf.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np

from .arrays import Array, array_module
from .errors import NumericalError

if TYPE_CHECKING:
    from .layers import Layer
    from .model import Sequential


_ENABLED: ContextVar[bool] = ContextVar("gpubackprop_detect_anomaly", default=False)


@contextlib.contextmanager
def detect_anomaly(enabled: bool = True) -> Iterator[None]:
    """Check every activation, loss and gradient for NaN/Inf while the block runs.

    ``model.forward``, ``backward``, ``loss_and_grad``, ``train_step``, ``predict``,
    ``evaluate`` and ``fit`` raise :class:`~gpubackprop.errors.NumericalError` at the
    first non-finite value, naming the layer (index and type) and the pass
    (``input``/``forward``/``loss``/``backward``); ``train_step`` raises before the
    optimizer update. ``enabled=False`` turns checking off inside an enabled block.
    """
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def is_enabled() -> bool:
    """Whether anomaly detection is on in the current context."""
    return _ENABLED.get()


def _kind(a: Array) -> str:
    """``"NaN"``, ``"+inf"`` or ``"-inf"``: the first kind of non-finite value present."""
    xp = array_module(a)
    if bool(xp.isnan(a).any()):
        return "NaN"
    return "+inf" if bool((a == np.inf).any()) else "-inf"


#: Elements per block of the host-side data check (:func:`first_nonfinite`): its boolean
#: scratch is 1 MiB, not a quarter of the data (25 MB for a 100 MB float32 array).
DATA_CHECK_BLOCK = 1 << 20


def first_nonfinite(a: Array) -> tuple[int, int, int] | None:
    """``(row, column, count)``: where the first NaN/Inf of the float array ``a`` is, in
    row-major order (column 0 for a 1-D array), and how many there are; None if none.

    One pass of ``isfinite``: on the host in blocks of rows of about
    :data:`DATA_CHECK_BLOCK` elements into one reused boolean buffer, each block
    reduced by ``all()``; on a GPU the whole array at once, one reduction read by the
    host. Only when a block has a non-finite value is it searched (``argwhere``).
    """
    xp = array_module(a)
    rows = a.reshape(len(a), -1)
    height, width = rows.shape
    step = max(1, DATA_CHECK_BLOCK // max(width, 1)) if xp is np else max(height, 1)
    finite = xp.empty((min(step, height), width), dtype=bool)
    first: tuple[int, int] | None = None
    count = 0
    for lo in range(0, height, step):
        block = rows[lo : lo + step]
        part = finite[: len(block)]
        xp.isfinite(block, out=part)
        if bool(part.all()):
            continue
        bad = xp.argwhere(~part)
        if first is None:
            row, column = (int(v) for v in bad[0])
            first = (lo + row, column)
        count += len(bad)
    return None if first is None else (*first, count)


def check_finite_input(
    a: Any, what: str, *, caller: str = "input check", advice: str = "clean the data first"
) -> None:
    """NumericalError (pass ``"input"``) unless the array ``a`` is all finite.

    The message names ``caller``, ``what`` (e.g. ``"validation x"``), the kind and
    dtype of the first non-finite value, its row and column (for an array of rank
    > 2, its row and whole index: ``row 3, index (3, 5, 1)``), how many there are,
    then ``advice``: ``"fit: non-finite float32 value (NaN) in x at row 17, column 3
    (2 non-finite values in all); clean the data first"``. Non-float arrays (ints,
    bools) are finite by construction and pass. Cost: :func:`first_nonfinite`.
    """
    if getattr(a, "dtype", None) is None or a.dtype.kind != "f" or a.size == 0:
        return
    found = first_nonfinite(a)
    if found is None:
        return
    row, column, count = found
    value = float(a.reshape(len(a), -1)[row, column])
    kind = "NaN" if math.isnan(value) else ("+inf" if value > 0 else "-inf")
    if a.ndim <= 2:
        where = f"row {row}" if a.ndim == 1 else f"row {row}, column {column}"
    else:  # (N, T, F): the rest of the index within the row
        rest = tuple(int(i) for i in np.unravel_index(column, a.shape[1:]))
        where = f"row {row}, index {(row, *rest)}"
    total = f" ({count} non-finite values in all)" if count > 1 else ""
    raise NumericalError(
        f"{caller}: non-finite {a.dtype} value ({kind}) in {what} at {where}{total}; {advice}",
        pass_="input",
    )


class AnomalyChecker:
    """The per-model recorder used while :func:`detect_anomaly` is on.

    ``record`` notes one array (its sum); ``flush`` reads the notes and raises for
    the first non-finite one. ``scope`` nests: only the outermost exit flushes, so
    a whole ``loss_and_grad`` is one read on a GPU.
    """

    def __init__(self, model: Sequential) -> None:
        self.model = model
        self.is_gpu = model.backend.is_gpu
        # input + one per layer forward + loss value + loss gradient + two per layer backward
        self.capacity = 3 + 3 * len(model.layers)
        self._sums: Array | None = None
        if self.is_gpu:
            with model.backend.activate():
                self._sums = model.backend.xp.zeros(self.capacity, dtype=np.float64)
        self._entries: list[tuple[str, Layer | None, str, Array]] = []
        self._depth = 0

    @contextlib.contextmanager
    def scope(self) -> Iterator[AnomalyChecker]:
        """A pass (or a whole step); the outermost scope flushes on a normal exit.

        NumPy's floating-point warnings are silenced inside: the check reports the
        first NaN/Inf itself, as a NumericalError that names where it arose.
        """
        if self._depth == 0:
            self._entries.clear()
        self._depth += 1
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                yield self
        finally:
            self._depth -= 1
        if self._depth == 0:
            self.flush()

    def record(self, pass_: str, layer: Layer | None, what: str, a: Array) -> None:
        """Note ``a`` (produced by ``layer`` in ``pass_``); on the CPU, check it now."""
        if self.is_gpu and len(self._entries) < self.capacity:
            assert self._sums is not None
            self.model.backend.xp.sum(a, dtype=np.float64, out=self._sums[len(self._entries)])
            self._entries.append((pass_, layer, what, a))
        elif not math.isfinite(float(a.sum())):
            self._raise_if_nonfinite(pass_, layer, what, a)

    def flush(self) -> None:
        """Read the GPU sums once and raise for the first non-finite array."""
        if not self._entries:
            return
        entries, self._entries = self._entries, []
        assert self._sums is not None
        sums = self._sums[: len(entries)].get()
        for (pass_, layer, what, a), total in zip(entries, sums, strict=True):
            if not math.isfinite(float(total)):
                self._raise_if_nonfinite(pass_, layer, what, a)

    def _raise_if_nonfinite(self, pass_: str, layer: Layer | None, what: str, a: Array) -> None:
        if bool(self.model.backend.xp.isfinite(a).all()):  # the sum overflowed, all is finite
            return
        where = "the loss" if layer is None else layer.label
        raise NumericalError(
            f"non-finite value ({_kind(a)}) in the {pass_} pass: {what} of {where}; "
            "parameters and optimizer state are unchanged (the check runs before the update)",
            pass_=pass_,
            layer_index=None if layer is None else layer.index,
            layer_type=None if layer is None else type(layer).__name__,
        )


def checker_for(model: Sequential) -> AnomalyChecker | None:
    """The model's checker while detection is on, else None (one context-var read)."""
    if not _ENABLED.get():
        return None
    checker = model.__dict__.get("_anomaly_checker")
    if checker is None:
        checker = AnomalyChecker(model)
        model.__dict__["_anomaly_checker"] = checker
    return checker


__all__ = [
    "DATA_CHECK_BLOCK", "AnomalyChecker", "check_finite_input", "checker_for", "detect_anomaly",
    "first_nonfinite", "is_enabled",
]
