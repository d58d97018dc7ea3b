"""ONNX export of a model's inference graph: :func:`export_onnx`.

Input ``"x"`` of shape (batch, in) with a dynamic batch dimension, output ``"y"``
of shape (batch, out), in the model's dtype. Each Dense layer is one
``Gemm(a, W, b, transB=1)`` (W is stored (out, in), as in the model) followed by
its activation written in standard ONNX operators (:data:`ONNX_ACTIVATIONS`):

=============  =====================================================
activation     ONNX operators
=============  =====================================================
identity       (none)
sigmoid        ``Sigmoid``
tanh           ``Tanh``
relu           ``Relu``
leaky_relu     ``Max``(z, 0.01 · z)
elu            ``Elu(alpha=1.0)``
softplus       ``Softplus``
gelu           0.5 · z · (1 + ``Erf``(z / √2))   (exact GELU)
gelu_tanh      0.5 · z · (1 + ``Tanh``(√(2/π) · (z + 0.044715 · z³)))
silu           z · ``Sigmoid``(z)
=============  =====================================================

Every operator accepts float32 and float64 in the ONNX standard; onnxruntime's CPU
provider (1.x) has no float64 kernels for ``Elu``, ``Softplus`` and ``Erf``, so a
float64 model with elu, softplus or gelu runs in ``onnx.reference`` or another
runtime, not in onnxruntime.

The ``onnx`` package is optional (``pip install gpubackprop[onnx]``): it is
imported inside :func:`export_onnx`, never by ``import gpubackprop``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .activations import ELU_ALPHA, GELU_TANH_C, LEAKY_RELU_SLOPE
from .errors import ConfigError
from .layers import Activation, Dense
from .model import Sequential

#: the ONNX opset :func:`export_onnx` writes by default (every operator used is in it)
OPSET = 17


class OnnxGraph:
    """Nodes and initializers of an ONNX graph being written, in one dtype.

    ``op`` appends a node and returns the name of its output; ``constant`` and
    ``initializer`` add tensors (in the graph's dtype) and return their names.
    """

    def __init__(self, onnx: Any, dtype: np.dtype) -> None:
        self.onnx = onnx
        self.dtype = np.dtype(dtype)
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def _name(self, stem: str) -> str:
        return f"{stem}_{len(self.nodes) + len(self.initializers)}"

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        """Append ``op_type(inputs, attributes)``; the name of its output."""
        out = self._name(op_type.lower())
        self.nodes.append(
            self.onnx.helper.make_node(op_type, list(inputs), [out], **attributes)
        )
        return out

    def initializer(self, name: str, value: Any) -> str:
        """Store ``value`` (in the graph's dtype) as the tensor ``name``."""
        array = np.ascontiguousarray(value, dtype=self.dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def constant(self, value: float) -> str:
        """A scalar constant; the name of its tensor."""
        return self.initializer(self._name("const"), value)


def _gelu(g: OnnxGraph, z: str) -> str:
    # 0.5 · z · (1 + erf(z / √2))
    cdf = g.op("Add", g.op("Erf", g.op("Mul", z, g.constant(1.0 / math.sqrt(2.0)))),
               g.constant(1.0))
    return g.op("Mul", g.op("Mul", z, cdf), g.constant(0.5))


def _gelu_tanh(g: OnnxGraph, z: str) -> str:
    # 0.5 · z · (1 + tanh(√(2/π) · z · (1 + 0.044715 · z²)))
    inner = g.op("Add", g.op("Mul", g.op("Mul", z, z), g.constant(GELU_TANH_C)), g.constant(1.0))
    u = g.op("Mul", g.op("Mul", inner, z), g.constant(math.sqrt(2.0 / math.pi)))
    half = g.op("Add", g.op("Tanh", u), g.constant(1.0))
    return g.op("Mul", g.op("Mul", z, half), g.constant(0.5))


#: activation name -> writes f(z) into the graph, returning the output's name
ONNX_ACTIVATIONS: dict[str, Callable[[OnnxGraph, str], str]] = {
    "identity": lambda g, z: z,
    "sigmoid": lambda g, z: g.op("Sigmoid", z),
    "tanh": lambda g, z: g.op("Tanh", z),
    "relu": lambda g, z: g.op("Relu", z),
    # max(z, slope·z), as the model computes it: LeakyRelu's alpha is a float32
    # attribute, which would round the slope of a float64 model
    "leaky_relu": lambda g, z: g.op("Max", z, g.op("Mul", z, g.constant(LEAKY_RELU_SLOPE))),
    "elu": lambda g, z: g.op("Elu", z, alpha=ELU_ALPHA),
    "softplus": lambda g, z: g.op("Softplus", z),
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": lambda g, z: g.op("Mul", z, g.op("Sigmoid", z)),
}


def _onnx() -> Any:
    """``onnx``, or an ImportError that says how to get it."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(
            "gpubackprop's ONNX export needs the onnx package: pip install gpubackprop[onnx]"
        ) from exc
    return onnx


def export_onnx(model: Sequential, path: str | os.PathLike[str], opset: int = OPSET) -> Any:
    """Write the inference graph of ``model`` to ``path`` as an ONNX model; returns it.

    ``y = f_L(… f_1(x W_1ᵀ + b_1) …)``: per Dense layer ``Gemm(transB=1)`` and its
    activation (see :data:`ONNX_ACTIVATIONS`), per Activation layer the activation,
    with the model's weights and dtype (float32 or float64). ``x`` has a dynamic
    batch dimension ``"batch"``. ``opset`` is 17 or newer. The model is checked
    with ``onnx.checker`` before it is saved. Raises ConfigError for an opset below
    17 or a layer ONNX export does not know; ImportError without ``onnx``.

    Run it with onnxruntime::

        session = onnxruntime.InferenceSession(path)
        y = session.run(["y"], {"x": x})[0]     # == model.predict(x)
    """
    onnx = _onnx()
    if not isinstance(opset, int) or opset < OPSET:
        raise ConfigError(f"export_onnx: opset must be an int >= {OPSET}, got {opset!r}")
    graph = OnnxGraph(onnx, model.dtype)
    a = "x"
    for layer in model.layers:
        if isinstance(layer, Dense):
            names = [
                graph.initializer(f"{layer.index}.{name}", model.backend.to_numpy(view))
                for name, view in layer.params.items()
            ]
            a = graph.op("Gemm", a, *names, transB=1)
        elif not isinstance(layer, Activation):
            raise ConfigError(
                f"export_onnx: {layer.label} has no ONNX export; supported: Dense, Activation"
            )
        a = ONNX_ACTIVATIONS[layer.activation.name](graph, a)
    graph.nodes.append(onnx.helper.make_node("Identity", [a], ["y"]))
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(model.dtype))
    # a model of Activation layers only takes any width: a symbolic dimension
    width_in = model.input_features or "features"
    width_out = model.output_features or "features"
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            graph.nodes,
            "gpubackprop",
            [onnx.helper.make_tensor_value_info("x", elem, ["batch", width_in])],
            [onnx.helper.make_tensor_value_info("y", elem, ["batch", width_out])],
            graph.initializers,
        ),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        producer_name="gpubackprop",
    )
    proto.ir_version = onnx.helper.find_min_ir_version_for(proto.opset_import)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, os.fspath(path))
    return proto
