"""Layers as coarse gates: ``layer(x)`` on a Tensor is one :class:`LayerGate` whose backward is
the layer's own (``Layer.__call__`` and ``Layer.parameter_tensors`` are the layer's doors here)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arrays import Array
from ..backend import is_cupy_array
from ..errors import ConfigError, DTypeError, ShapeError
from .tensor import Gate, Tensor, as_tensor

if TYPE_CHECKING:
    from ..layers import Layer


class LayerGate(Gate):
    """A whole layer as one coarse gate: y = layer(x; W, b), backward = the layer's own.

    Inputs are x and the layer's parameter tensors (:func:`parameter_tensors`). The
    gate keeps its own copies of the output and of ``layer.backward_state()`` (the
    layer's next call overwrites them) and restores them before ``layer.backward``;
    it hands copies of ``layer.grads`` (dW = Δ_Zᵀ x, db = Δ_Zᵀ 1) to the engine,
    which adds them up, so a layer used k times gets the sum of its k contributions.
    """

    def __init__(self, layer: Layer, param_names: tuple[str, ...]) -> None:
        super().__init__()
        self.layer = layer
        self.param_names = param_names
        self.name = type(layer).__name__

    def describe(self) -> str:
        return self.layer.describe()

    def forward(self, x: Array, *params: Array) -> Array:
        layer = self.layer
        if x.ndim != 2 or (layer.input_features is not None and x.shape[1] != layer.input_features):
            width = "n" if layer.input_features is None else layer.input_features
            raise ShapeError(
                f"{layer.label}: expected an input of shape (batch, {width}), "
                f"got shape {tuple(x.shape)}"
            )
        if x.dtype != layer.dtype:
            assert layer.dtype is not None
            raise DTypeError(
                f"{layer.label}: its parameters are {layer.dtype.name} but the input tensor "
                f"is {x.dtype}; build the layer with the input's dtype"
            )
        x = self.xp.ascontiguousarray(x)
        out = layer.forward(x)
        result = out.copy()
        self.state = {
            name: _own(value, x, out, result) for name, value in layer.backward_state().items()
        }
        return result

    def backward(self, grad: Array, needs: tuple[bool, ...]) -> Sequence[Array | None]:
        layer = self.layer
        layer.restore_backward_state(self.state)
        dx = layer.backward(self.xp.ascontiguousarray(grad, dtype=layer.dtype), needs[0])
        return (None if dx is None else dx.copy(),
                *(layer.grads[name].copy() for name in self.param_names))


def _own(value: Any, x: Array, out: Array, result: Array) -> Any:
    """A layer's saved ``value`` as this gate call keeps it (the layer's next call overwrites
    its buffers): the output as the gate's copy ``result``, x as it is, a work buffer copied."""
    if value is out:
        return result
    if value is x or not (isinstance(value, np.ndarray) or is_cupy_array(value)):
        return value
    return value.copy()


#: each layer's parameter tensors, made once (weak keys: a dropped layer takes them along)
_PARAMETER_TENSORS: weakref.WeakKeyDictionary[Layer, dict[str, Tensor]] = (
    weakref.WeakKeyDictionary()
)


def parameter_tensors(layer: Layer) -> dict[str, Tensor]:
    """Name -> Tensor over ``layer``'s live parameter view (what ``layer.parameter_tensors()``
    returns): the same objects every time, so after ``backward()`` each ``.grad`` holds
    ∂L/∂param summed over every call of the layer in the graph."""
    if layer.backend is None:
        raise ConfigError(
            f"{layer.label} has no parameters yet: call layer.build(device, dtype, seed) "
            "or apply it to a Tensor first"
        )
    tensors = _PARAMETER_TENSORS.get(layer)
    if tensors is None:
        tensors = {
            name: Tensor(view, requires_grad=True, name=name) for name, view in layer.params.items()
        }
        _PARAMETER_TENSORS[layer] = tensors
    return dict(tensors)


def layer_gate(layer: Layer, x: Any) -> Tensor:
    """``layer(x)`` as a graph gate (what ``Layer.__call__`` runs); see :class:`LayerGate`.

    y = layer.forward(x); ∂L/∂x, ∂L/∂W, ∂L/∂b from ``layer.backward``. A layer
    with no parameters yet (not in a model, never built) is first built on x's
    device and dtype with an unseeded initialisation; call
    ``layer.build(device, dtype, seed)`` beforehand for a reproducible one.
    """
    x = as_tensor(x)
    if layer.backend is None:
        if x.dtype not in (np.float32, np.float64):
            raise DTypeError(
                f"{layer.label}: a layer is built with its input's dtype, which must be "
                f"float32 or float64, got {x.dtype}"
            )
        layer.build(device=x.device, dtype=x.dtype)
    params = parameter_tensors(layer)
    return LayerGate(layer, tuple(params))(x, *params.values())


__all__ = ["LayerGate", "layer_gate", "parameter_tensors"]
