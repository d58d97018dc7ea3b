"""Gates of several tensors or of a tensor and labels: ``gb.concatenate``, ``gb.stack`` and
the fused ``gb.softmax_cross_entropy`` (the gates Tensor's own methods apply are in
:mod:`gpubackprop.graph.tensor`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..arrays import Array
from ..errors import ConfigError, DTypeError, ShapeError
from ..losses import SoftmaxCrossEntropy
from .tensor import Gate, Tensor, normalize_axes


class ConcatenateGate(Gate):
    """Z = [X₁, X₂, …] joined along ``axis``: ∂L/∂X_k = the slice of ∂L/∂Z that X_k filled."""

    name = "concatenate"

    def __init__(self, axis: int) -> None:
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise ConfigError(f"{self.name}: axis must be an int, got {type(axis).__name__}")
        self.axis = int(axis)

    def describe(self) -> str:
        return f"{self.name}(axis={self.axis})"

    def forward(self, *xs: Array) -> Array:
        shapes = [tuple(x.shape) for x in xs]
        if not shapes[0]:
            raise ShapeError(f"{self.name}: tensor 0 is 0-d (shape ()); concatenate joins along "
                             "an existing axis (gb.stack adds one)")
        self.ax = normalize_axes(self.axis, shapes[0])[0]
        rest = shapes[0][: self.ax] + shapes[0][self.ax + 1 :]
        for k, shape in enumerate(shapes[1:], start=1):
            if len(shape) != len(shapes[0]) or shape[: self.ax] + shape[self.ax + 1 :] != rest:
                raise ShapeError(
                    f"{self.name}: tensor {k} has shape {shape} but tensor 0 has shape "
                    f"{shapes[0]}; all axes but axis {self.axis} must match"
                )
        self.ends = np.cumsum([shape[self.ax] for shape in shapes]).tolist()
        return self.xp.concatenate(xs, axis=self.ax)

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        pieces = self.xp.split(grad, self.ends[:-1], axis=self.ax)
        return [g if need else None for g, need in zip(pieces, needs, strict=True)]


class StackGate(ConcatenateGate):
    """Z = [X₁, X₂, …] along a new axis ``axis`` (equal shapes): ∂L/∂X_k = ∂L/∂Z taken at k."""

    name = "stack"

    def forward(self, *xs: Array) -> Array:
        self.in_shape = tuple(xs[0].shape)
        for k, x in enumerate(xs[1:], start=1):
            if tuple(x.shape) != self.in_shape:
                raise ShapeError(f"{self.name}: tensor {k} has shape {tuple(x.shape)} but tensor 0 "
                                 f"has shape {self.in_shape}; stack needs equal shapes")
        ax = normalize_axes(self.axis, (*self.in_shape, 1))[0]  # one axis more
        return super().forward(*(self.xp.expand_dims(x, ax) for x in xs))

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        return [None if g is None else g.reshape(self.in_shape)
                for g in super().backward(grad, needs)]


class SoftmaxCrossEntropyGate(Gate):
    """L = 1/B Σ_b (logsumexp(z_b) − z_b[y_b]), the gate of :func:`softmax_cross_entropy`.

    ∂L/∂z = (softmax(z) − onehot(y)) / B is written by the fused loss op in the
    forward pass and scaled by the upstream ∂L_total/∂L in the backward.
    """

    name = "softmax_cross_entropy"

    def forward(self, logits: Array, targets: Array) -> Array:
        if logits.dtype not in (np.float32, np.float64):
            raise DTypeError(
                f"softmax_cross_entropy: logits must be float32 or float64, got {logits.dtype}"
            )
        assert self.backend is not None
        loss = SoftmaxCrossEntropy()
        logits = self.xp.ascontiguousarray(logits)
        targets = loss.prepare_target(self.backend, tuple(logits.shape), logits.dtype, targets)
        self.dlogits = self.xp.empty_like(logits)
        value = loss.write_value_and_grad(self.backend, logits, targets, self.dlogits)
        # a copy: the GPU op returns a cached buffer that the next loss overwrites
        return self.xp.array(value, dtype=logits.dtype)

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        return (grad * self.dlogits, None)


def concatenate(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Z = [X₁, X₂, …] joined along ``axis`` (as ``np.concatenate``); ∂L/∂X_k = the slice of
    ∂L/∂Z that X_k filled. All axes but ``axis`` must match (ShapeError naming the tensor)."""
    return ConcatenateGate(axis)(*_tensor_list("concatenate", tensors))


def stack(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Z = [X₁, X₂, …] along a new axis ``axis`` (as ``np.stack``; equal shapes); ∂L/∂X_k =
    ∂L/∂Z taken at index k of that axis."""
    return StackGate(axis)(*_tensor_list("stack", tensors))


def _tensor_list(what: str, tensors: Sequence[Any]) -> list[Any]:
    """The inputs of concatenate/stack: a non-empty list or tuple (not a single tensor)."""
    if not isinstance(tensors, (list, tuple)) or not tensors:
        got = "an empty sequence" if isinstance(tensors, (list, tuple)) else type(tensors).__name__
        raise ConfigError(f"{what}: takes a non-empty list or tuple of tensors, got {got}")
    return list(tensors)


def softmax_cross_entropy(logits: Any, labels: Any) -> Tensor:
    """L = 1/B Σ_b (logsumexp(z_b) − z_b[y_b]) as one fused gate; ∂L/∂z = (softmax(z) − Y)/B.

    ``logits`` (B, C) float32/float64; ``labels`` integer classes (B,) or rows of
    probabilities (B, C) (validated as :class:`gpubackprop.losses.SoftmaxCrossEntropy`
    does). Returns a 0-d tensor.
    """
    if isinstance(labels, Tensor) and labels.requires_grad:
        raise ConfigError(
            "softmax_cross_entropy: there is no gradient with respect to the targets; "
            "pass them with requires_grad=False"
        )
    return SoftmaxCrossEntropyGate()(logits, labels)


__all__ = [
    "ConcatenateGate", "SoftmaxCrossEntropyGate", "StackGate", "concatenate",
    "softmax_cross_entropy", "stack",
]
