"""gpubackprop: readable, explicit backpropagation on the CPU (NumPy) and GPU (CuPy).

>>> import gpubackprop as gb
>>> model = gb.Sequential([gb.Dense(64, 32, "relu"), gb.Dense(32, 10)], device="cpu", seed=0)
>>> history = model.fit(x, y, loss=gb.losses.SoftmaxCrossEntropy(),
...                     optimizer=gb.optim.SGD(0.1, momentum=0.9), epochs=5)

Importing the package never imports CuPy; CuPy loads when a GPU device is asked for.
Likewise PyTorch and onnx load only inside :func:`to_torch`, :func:`from_torch` and
:func:`export_onnx`.
"""

from . import distributed, graph, losses, optim, viz
from .activations import ACTIVATIONS
from .anomaly import detect_anomaly
from .backend import Backend, available_devices, get_backend
from .capture import CompiledStep
from .charrnn import CharRNN
from .errors import (
    CaptureError,
    CheckpointError,
    ConfigError,
    DeviceError,
    DeviceMemoryError,
    DistributedError,
    DTypeError,
    GpuBackpropError,
    GradcheckError,
    GraphvizError,
    LabelError,
    NumericalError,
    NumpyOnTensorError,
    ShapeError,
    TensorIndexError,
)
from .explain import Explanation
from .gradcheck import GradcheckReport, gradcheck, graph_gradcheck
from .graph import (
    Gate,
    Tensor,
    concatenate,
    jacobian,
    maximum,
    softmax_cross_entropy,
    stack,
    topological_order,
    zero_grad,
)
from .io import load
from .layers import Activation, Dense, Layer
from .layers_embedding import Embedding
from .layers_norm import Dropout, LayerNorm
from .layers_recurrent import GRU, LSTM
from .model import Sequential
from .onnx_export import export_onnx
from .optim import StepReport
from .rnn import RNN, clip_grad_norm
from .torch_interop import from_torch, to_torch
from .train import History
from .version import __version__
from .viz import render, to_dot

__all__ = [
    "ACTIVATIONS",
    "GRU",
    "LSTM",
    "RNN",
    "Activation",
    "Backend",
    "CaptureError",
    "CharRNN",
    "CheckpointError",
    "CompiledStep",
    "ConfigError",
    "DTypeError",
    "Dense",
    "DeviceError",
    "DeviceMemoryError",
    "DistributedError",
    "Dropout",
    "Embedding",
    "Explanation",
    "Gate",
    "GpuBackpropError",
    "GradcheckError",
    "GradcheckReport",
    "GraphvizError",
    "History",
    "LabelError",
    "Layer",
    "LayerNorm",
    "NumericalError",
    "NumpyOnTensorError",
    "Sequential",
    "ShapeError",
    "StepReport",
    "Tensor",
    "TensorIndexError",
    "__version__",
    "available_devices",
    "clip_grad_norm",
    "concatenate",
    "detect_anomaly",
    "distributed",
    "export_onnx",
    "from_torch",
    "get_backend",
    "gradcheck",
    "graph",
    "graph_gradcheck",
    "jacobian",
    "load",
    "losses",
    "maximum",
    "optim",
    "render",
    "softmax_cross_entropy",
    "stack",
    "to_dot",
    "to_torch",
    "topological_order",
    "viz",
    "zero_grad",
]
