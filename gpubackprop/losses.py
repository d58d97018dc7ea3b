"""Losses: a value and its gradient with respect to the network output.

Each loss validates its inputs, then calls one op of the backend, which returns
the value (a 0-d device array, so no host sync is forced) and writes
δ_L = ∂L/∂output into a preallocated buffer. The loss gradient is the one
place the batch size divides (1/B for softmax cross-entropy, 1/N for the
element means); no other part of the engine scales by it. Outputs of any rank
≥ 2 are taken: (B, C) or, for sequences, (B, T, C); the backend ops see the
(B·T, C) matrix view, so softmax cross-entropy averages over the B·T positions
(its gradient carries 1/(B·T)) and MSE and BCE over all elements, as for (B, C). The losses:
:class:`MSE`, :class:`SoftmaxCrossEntropy` (from logits, integer or one-hot /
probability targets) and :class:`BCEWithLogits`, each with its formula below.
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import Array, as_rows
from .backend import Backend, backend_of
from .errors import ConfigError, DTypeError, LabelError, ShapeError


class Loss:
    """Base class. ``loss(pred, target)`` returns the value as a Python float."""

    name = "loss"

    def __call__(self, pred: Array, target: Array) -> float:
        """L(pred, target) as a float."""
        return self.value_and_gradient(pred, target)[0]

    def gradient(self, pred: Array, target: Array) -> Array:
        """δ_L = ∂L/∂pred as a new array on pred's device."""
        return self.value_and_gradient(pred, target)[1]

    def value_and_gradient(self, pred: Array, target: Array) -> tuple[float, Array]:
        """(L, ∂L/∂pred) for a float32/float64 ``pred`` on any device."""
        if isinstance(pred, (list, tuple)):
            pred = np.asarray(pred, dtype=np.float64)
        backend = backend_of(pred)
        backend.check_array(pred, f"{self.name}: pred")
        if pred.dtype not in (np.float32, np.float64):
            raise DTypeError(f"{self.name}: pred must be float32 or float64, got {pred.dtype}")
        if pred.ndim == 0 or pred.size == 0:
            raise ShapeError(f"{self.name}: empty prediction of shape {tuple(pred.shape)}")
        if isinstance(target, (list, tuple)) and not backend.is_gpu:
            target = np.asarray(target)
        target = self.prepare_target(backend, tuple(pred.shape), pred.dtype, target)
        with backend.activate():
            # C order beyond 2-D: the ops write the gradient through its (rows, C) view
            grad = (backend.xp.empty_like(pred) if pred.ndim == 2
                    else backend.xp.empty(pred.shape, dtype=pred.dtype))
            value = self.write_value_and_grad(backend, pred, target, grad)
        return float(value), grad

    def prepare_target(
        self, backend: Backend, shape: tuple[int, ...], dtype: np.dtype, target: Array,
        *, check_values: bool = True, defer_device_checks: bool = False,
    ) -> Array:
        """Validate ``target`` for an output of ``shape``/``dtype``; return it ready to use.

        Raises ShapeError / DTypeError / LabelError / DeviceError naming the loss,
        the expected and the actual shape or values. ``check_values=False`` skips the
        checks that read the values (labels in range, targets in [0, 1]): for data
        checked before. ``defer_device_checks``: on a GPU those checks would read the
        target back to the host (a sync), so they are left to :meth:`check_after_read`,
        which the engine calls once it reads the loss value anyway.
        """
        target = self.convert_target(backend, shape, dtype, target, check_values=check_values)
        if check_values and not (defer_device_checks and backend.is_gpu):
            self.check_target_values(backend, target, shape)
        return target

    def convert_target(
        self, backend: Backend, shape: tuple[int, ...], dtype: np.dtype, target: Array,
        *, check_values: bool = True,
    ) -> Array:
        """``target`` checked for shape and dtype and converted, C-contiguous on
        ``backend``'s device: here a numeric array of the output's shape (a (B,)
        target for a (B, 1) output is reshaped) in ``dtype``."""
        backend.check_array(target, f"{self.name}: target")
        if target.dtype.kind not in "biuf":
            raise DTypeError(f"{self.name}: target must be numeric, got dtype {target.dtype}")
        if target.ndim == 1 and len(shape) == 2 and shape[1] == 1:
            target = target.reshape(-1, 1)
        if tuple(target.shape) != shape:
            raise ShapeError(
                f"{self.name}: target shape {tuple(target.shape)} does not match "
                f"the output shape {shape}"
            )
        with backend.activate():
            return backend.xp.ascontiguousarray(target, dtype=dtype)

    def check_target_values(self, backend: Backend, target: Array, shape: tuple[int, ...]) -> None:
        """LabelError unless the values of a converted ``target`` are valid for this loss
        (reads them: a host sync on a GPU). Nothing to check by default."""

    def check_after_read(
        self, backend: Backend, target: Array, shape: tuple[int, ...], value: float
    ) -> None:
        """The checks :meth:`prepare_target` deferred, once the loss ``value`` is on the
        host: by default :meth:`check_target_values`."""
        self.check_target_values(backend, target, shape)

    def write_value_and_grad(
        self, backend: Backend, pred: Array, target: Array, grad: Array
    ) -> Array:
        """The engine's form of :meth:`value_and_gradient`: for a validated ``pred`` and a
        target from :meth:`prepare_target`, write ∂L/∂pred into the caller's buffer
        ``grad`` and return L as a 0-d device array (no host sync)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MSE(Loss):
    """Mean squared error, L = 1/N Σ (p − y)² over the N elements (PyTorch's ``mse_loss``):
    N = B·out for (B, out) outputs, B·T·out for (B, T, out); ∂L/∂p = 2 (p − y) / N.
    ``reduction="sum"``: Σ (p − y)², as in the seed notes (see README.md)."""

    name = "MSE"

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in ("mean", "sum"):
            raise ConfigError(f"MSE: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def __repr__(self) -> str:
        return "MSE()" if self.reduction == "mean" else f"MSE(reduction={self.reduction!r})"

    def write_value_and_grad(
        self, backend: Backend, pred: Array, target: Array, grad: Array
    ) -> Array:
        if pred.ndim != 2:
            pred, target, grad = as_rows(pred), as_rows(target), as_rows(grad)
        return backend.ops.mse(pred, target, grad, mean=self.reduction == "mean")


class SoftmaxCrossEntropy(Loss):
    """Softmax cross-entropy from logits (PyTorch's ``cross_entropy``).

    Target: integer class labels of shape (B,) in [0, C), or (B, C) rows of
    one-hot vectors or probabilities; for sequence logits (B, T, C), labels (B, T)
    or probabilities (B, T, C). With M positions (M = B, or B·T)::

        L = 1/M Σ_m (logsumexp(z_m) − z_m[y_m])        δ_L = (softmax(z) − y) / M

    (PyTorch's ``F.cross_entropy(z.reshape(-1, C), y.reshape(-1))``). The softmax is
    folded in, so the network's last layer must be linear (no activation).
    """

    name = "SoftmaxCrossEntropy"

    def convert_target(
        self, backend: Backend, shape: tuple[int, ...], dtype: np.dtype, target: Array,
        *, check_values: bool = True,
    ) -> Array:
        backend.check_array(target, f"{self.name}: target")
        if len(shape) < 2:
            raise ShapeError(
                f"{self.name}: logits must be (batch, classes) or (batch, time, classes), "
                f"got {shape}"
            )
        lead = shape[:-1]
        if target.ndim == len(shape):
            return super().convert_target(backend, shape, dtype, target)
        labels = "(" + ", ".join(str(n) for n in lead) + ("," if len(lead) == 1 else "") + ")"
        if target.ndim != len(lead):
            raise ShapeError(
                f"{self.name}: target must be labels of shape {labels} or one-hot "
                f"rows of shape {shape}, got shape {tuple(target.shape)}"
            )
        if target.shape[0] != lead[0]:
            raise ShapeError(
                f"{self.name}: {target.shape[0]} labels for a batch of {lead[0]} outputs"
            )
        if tuple(target.shape) != lead:
            raise ShapeError(
                f"{self.name}: labels of shape {tuple(target.shape)} for outputs of shape "
                f"{shape} (expected labels of shape {labels})"
            )
        kind = target.dtype.kind
        if kind == "f":
            if check_values and bool((target != backend.xp.round(target)).any()):
                raise LabelError(f"{self.name}: float labels must be whole numbers")
        elif kind not in "iu":
            raise DTypeError(
                f"{self.name}: labels must be integers, got dtype {target.dtype}"
            )
        with backend.activate():
            return backend.xp.ascontiguousarray(target, dtype=np.int64)

    def check_target_values(self, backend: Backend, target: Array, shape: tuple[int, ...]) -> None:
        """Labels y must satisfy 0 <= y < C (probability rows are not checked); the error
        names the first bad label, its position and the labels' shape."""
        classes = shape[-1]
        if target.ndim != len(shape) - 1 or not target.size:
            return
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            flat = int((target.reshape(-1) == bad).argmax())
            position = tuple(int(i) for i in np.unravel_index(flat, target.shape))
            where = f"index {position[0]}" if target.ndim == 1 else f"position {position}"
            raise LabelError(
                f"{self.name}: label {bad} is out of range for {classes} classes "
                f"(at {where} of the labels of shape {tuple(target.shape)}; "
                f"expected 0 <= label < {classes})"
            )

    def check_after_read(
        self, backend: Backend, target: Array, shape: tuple[int, ...], value: float
    ) -> None:
        """Labels are read back only when the loss is NaN: the kernel gives a label
        outside [0, C) a NaN row loss (and a zero gradient row), so a finite value
        proves every label was in range."""
        if math.isnan(value):
            self.check_target_values(backend, target, shape)

    def write_value_and_grad(
        self, backend: Backend, pred: Array, target: Array, grad: Array
    ) -> Array:
        labels = target.ndim == pred.ndim - 1
        if pred.ndim != 2:
            pred, grad = as_rows(pred), as_rows(grad)
            target = target.reshape(-1) if labels else as_rows(target)
        if labels:
            return backend.ops.softmax_cross_entropy_labels(pred, target, grad)
        return backend.ops.softmax_cross_entropy_probs(pred, target, grad)


class BCEWithLogits(Loss):
    """Binary cross-entropy on logits (PyTorch's ``binary_cross_entropy_with_logits``):
    L = 1/N Σ (max(z,0) − z y + log(1 + e^{−|z|})), δ = (σ(z) − y) / N.

    Targets in [0, 1], same shape as the logits ((B,) is accepted for a (B, 1)
    output), N all their elements (B·out, or B·T·out for sequences). Stable for
    logits of any finite size.
    """

    name = "BCEWithLogits"

    def check_target_values(self, backend: Backend, target: Array, shape: tuple[int, ...]) -> None:
        """Targets must lie in [0, 1]."""
        if target.size and bool(((target < 0) | (target > 1)).any()):
            raise LabelError(f"{self.name}: targets must lie in [0, 1]")

    def write_value_and_grad(
        self, backend: Backend, pred: Array, target: Array, grad: Array
    ) -> Array:
        if pred.ndim != 2:
            pred, target, grad = as_rows(pred), as_rows(target), as_rows(grad)
        return backend.ops.bce_with_logits(pred, target, grad)


_BY_NAME: dict[str, type[Loss]] = {
    "mse": MSE,
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "bce_with_logits": BCEWithLogits,
}


def get_loss(loss: Loss | str) -> Loss:
    """A loss object from an instance or a name (``"mse"``, ``"cross_entropy"``, ...)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in _BY_NAME:
        return _BY_NAME[loss.lower()]()
    known = ", ".join(repr(k) for k in _BY_NAME)
    raise ConfigError(f"unknown loss {loss!r}; expected a gb.losses.Loss or one of {known}")


__all__ = ["MSE", "BCEWithLogits", "Loss", "SoftmaxCrossEntropy", "get_loss"]
