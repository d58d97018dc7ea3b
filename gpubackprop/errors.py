"""The package's own exceptions.

Every error a user can trigger with bad input is one of these. Each subclasses
the matching built-in (``ValueError`` or ``TypeError``) so generic handlers keep
working, and every message names the layer (index and type) or the argument,
what was expected and what came.
"""

from __future__ import annotations


class GpuBackpropError(Exception):
    """Base class of every error raised by gpubackprop."""


class ShapeError(GpuBackpropError, ValueError):
    """An array has the wrong rank or size for the layer, loss or argument."""


class DTypeError(GpuBackpropError, TypeError):
    """An array or argument has a dtype gpubackprop cannot use there."""


class DeviceError(GpuBackpropError, ValueError):
    """An array lives on another device than the model, or a device is unavailable."""


class LabelError(GpuBackpropError, ValueError):
    """Class labels are out of range, not integers, or the wrong length."""


class ConfigError(GpuBackpropError, ValueError):
    """An argument value is not allowed (unknown activation name, negative rate, ...)."""


class GradcheckError(GpuBackpropError, AssertionError):
    """The analytic gradient disagrees with central finite differences."""


class CaptureError(GpuBackpropError, RuntimeError):
    """A training step could not be recorded into a CUDA graph (the reason is in the message)."""


class GraphvizError(GpuBackpropError, RuntimeError):
    """Graphviz's ``dot`` program is missing or failed (the message says how to fix it)."""


class NumericalError(GpuBackpropError, FloatingPointError):
    """A NaN or Inf appeared in an input, an activation, the loss or a gradient.

    Raised by :func:`gpubackprop.detect_anomaly` and ``fit(..., check_finite=True)``
    before the optimizer update, so parameters and optimizer state are unchanged, and
    by the data check of ``fit`` and ``evaluate`` (``check_data=True``) before any step.
    ``pass_`` is ``"input"``, ``"forward"``, ``"loss"`` or ``"backward"``;
    ``layer_index`` and ``layer_type`` name the layer (None for the input and loss).
    """

    def __init__(
        self,
        message: str,
        *,
        pass_: str,
        layer_index: int | None = None,
        layer_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.pass_ = pass_
        self.layer_index = layer_index
        self.layer_type = layer_type


class DeviceMemoryError(GpuBackpropError, MemoryError):
    """The device ran out of memory; the message names the buffer and the bytes asked for.

    The model stays usable: nothing was half-written, and a smaller batch may fit.
    """


class CheckpointError(GpuBackpropError, ValueError):
    """A checkpoint file is invalid, corrupted, or does not fit the model (the message
    says what and where)."""


class TensorIndexError(GpuBackpropError, IndexError):
    """An index of a graph Tensor is out of range or not an index (the message names the
    index and the tensor's shape). An IndexError, so ``for row in t`` stops at the end."""


class NumpyOnTensorError(GpuBackpropError, TypeError):
    """A NumPy function or ufunc was applied to a graph Tensor, which would bypass the graph;
    the message names the Tensor method or ``gb`` function to use (``np.exp(t)`` -> ``t.exp()``)."""


class DistributedError(GpuBackpropError, RuntimeError):
    """The ranks of a data-parallel run disagree (model, optimizer, data length, ...);
    raised on every rank at once, naming what differs and on which ranks
    (:mod:`gpubackprop.distributed`)."""
