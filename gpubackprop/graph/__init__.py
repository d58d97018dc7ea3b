"""Computational graphs: tensors, gates, and backprop in reverse topological order.

A :class:`Tensor` wraps an array (NumPy on the CPU, CuPy on a GPU) and remembers
the :class:`Gate` that produced it and the gate's inputs. Every operation on
tensors is one gate, applied eagerly; ``loss.backward()`` visits the graph in
reverse topological order, applies the chain rule at every node and sums over
every gate that reads a tensor (fan-out)::

    ∂L/∂input = ∂L/∂output · ∂output/∂input     (downstream = upstream × local)

Three modules, each importing only the ones before it (import-linter's
``graph-floors`` contract): :mod:`~gpubackprop.graph.tensor` (Tensor, Gate, the
gates of Tensor's operators and methods, the backprop engine),
:mod:`~gpubackprop.graph.functions` (concatenate, stack, the fused loss) and
:mod:`~gpubackprop.graph.layer_gates` (a layer called on a Tensor is one coarse
gate). Every public name is here too. The gates, broadcasting, dtypes and layers
in graphs are explained in ``docs/graph.md``.
"""

from .functions import (
    ConcatenateGate,
    SoftmaxCrossEntropyGate,
    StackGate,
    concatenate,
    softmax_cross_entropy,
    stack,
)
from .layer_gates import LayerGate, layer_gate, parameter_tensors
from .tensor import (
    ActivationGate,
    AddGate,
    DivGate,
    ExpGate,
    Gate,
    IndexGate,
    LogGate,
    LogSoftmaxGate,
    MatMulGate,
    MaxGate,
    MaximumGate,
    MeanGate,
    MinGate,
    MulGate,
    NegGate,
    PowGate,
    ReshapeGate,
    SoftmaxGate,
    SubGate,
    SumGate,
    Tensor,
    TransposeGate,
    as_tensor,
    gradients,
    jacobian,
    maximum,
    normalize_axes,
    scatter_add,
    topological_order,
    zero_grad,
)

__all__ = [
    "ActivationGate", "AddGate", "ConcatenateGate", "DivGate", "ExpGate", "Gate", "IndexGate",
    "LayerGate", "LogGate", "LogSoftmaxGate", "MatMulGate", "MaxGate", "MaximumGate", "MeanGate",
    "MinGate", "MulGate", "NegGate", "PowGate", "ReshapeGate", "SoftmaxCrossEntropyGate",
    "SoftmaxGate", "StackGate", "SubGate", "SumGate", "Tensor", "TransposeGate", "as_tensor",
    "concatenate", "gradients", "jacobian", "layer_gate", "maximum", "normalize_axes",
    "parameter_tensors", "scatter_add", "softmax_cross_entropy", "stack", "topological_order",
    "zero_grad",
]
