"""Sequential: the layer-wise forward/backward engine over flat buffers.

All parameters of a model live in one flat array and all gradients in another;
each layer's ``weight`` and ``bias`` are views into them, so one optimizer pass
updates the whole model and a checkpoint is a handful of arrays.

Backward follows the recurrences of the seed notes, batch-major::

    δ_L = ∂L/∂a_L                              (from the loss; carries 1/B)
    δ_k = (δ_{k+1} W_{k+1}) ⊙ σ′(z_k)          dW_k = δ_kᵀ a_{k−1}    db_k = δ_kᵀ 1
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .anomaly import checker_for
from .backend import PRECISIONS, Backend, get_backend
from .errors import CaptureError, ConfigError, DTypeError, ShapeError
from .layers import Layer, device_allocation
from .losses import Loss, get_loss
from .optim import Optimizer

if TYPE_CHECKING:
    from .capture import CompiledStep
    from .train import History

Array = Any

_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def resolve_dtype(dtype: Any) -> np.dtype:
    """np.float32 / np.float64 from a name or dtype; DTypeError for anything else."""
    if dtype is None:
        raise DTypeError("dtype must be 'float32' or 'float64', got None")
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise DTypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from exc
    if resolved.name not in _DTYPES:
        raise DTypeError(f"dtype must be 'float32' or 'float64', got {resolved.name}")
    return resolved


def resolve_precision(precision: Any, dtype: np.dtype) -> str:
    """``"fp32"`` or ``"tf32"`` (the float32 GEMM precision); ConfigError for anything
    else, DTypeError for ``"tf32"`` with float64 (TF32 is a float32 mode)."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}"
        )
    if precision == "tf32" and dtype != np.float32:
        raise DTypeError(
            f"precision='tf32' is a mode of float32 GEMMs, but the model's dtype is "
            f"{dtype.name}; use dtype='float32' or precision='fp32'"
        )
    return str(precision)


def check_optimizer(optimizer: Any) -> None:
    """ConfigError unless ``optimizer`` is a gpubackprop optimizer."""
    if not isinstance(optimizer, Optimizer):
        raise ConfigError(
            "optimizer must be a gpubackprop optimizer such as gb.optim.SGD(lr=0.1), "
            f"got {type(optimizer).__name__}"
        )


class FlatParameters:
    """What every owner of one flat parameter buffer (``flat_params``, on ``backend``)
    tells about itself: its device and its parameter count."""

    backend: Backend
    flat_params: Array

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def num_parameters(self) -> int:
        return int(self.flat_params.size)


class Sequential(FlatParameters):
    """A stack of layers trained by explicit backprop.

    Args:
        layers: the layers, input first (e.g. ``[gb.Dense(784, 128, "relu"),
            gb.Dense(128, 10)]``). Each layer object belongs to one model.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (see
            :func:`gpubackprop.get_backend`).
        dtype: ``"float32"`` (default) or ``"float64"``.
        seed: seeds the weight initialisation and the shuffling in :meth:`fit`;
            the same seed gives the same initial weights on every device.
        precision: ``"fp32"`` (default: IEEE float32 GEMMs) or ``"tf32"``: on a
            GPU, float32 GEMMs run on TF32 tensor cores (inputs rounded to a 10-bit
            mantissa, float32 accumulation; about 1e-3 relative error, several
            times the throughput on wide layers); elementwise kernels stay float32.
            Accepted on the CPU, where it has no effect. float64 models reject
            ``"tf32"``. Saved in checkpoints.
    """

    def __init__(
        self,
        layers: Iterable[Layer],
        device: str | Backend = "auto",
        dtype: Any = "float32",
        seed: int | None = None,
        precision: str = "fp32",
    ) -> None:
        self.layers: list[Layer] = list(layers)
        if not self.layers:
            raise ConfigError("Sequential needs at least one layer")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise ConfigError(
                    f"Sequential: item {i} is a {type(layer).__name__}, not a gpubackprop Layer"
                )
        if len({id(layer) for layer in self.layers}) != len(self.layers):
            raise ConfigError("Sequential: the same layer object appears twice; create one each")
        for i, layer in enumerate(self.layers):
            if layer._owner is not None:
                raise ConfigError(
                    f"Sequential: item {i} ({layer.describe()}) already belongs to another "
                    "model; create a new layer object for each model"
                )
        self.dtype = resolve_dtype(dtype)
        self.precision = resolve_precision(precision, self.dtype)
        self.backend = get_backend(device).with_precision(self.precision)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.input_features = self._check_widths()
        #: output width (None when it follows the input, e.g. a model of Activation layers)
        self.output_features = (
            None if self.input_features is None else self.output_width(self.input_features)
        )
        self._build()
        self._output: Array | None = None
        self._loss_grad: dict[tuple[int, ...], Array] = {}

    # --- construction ------------------------------------------------------------
    def _check_widths(self) -> int | None:
        width: int | None = None
        first: int | None = None
        previous: Layer | None = None
        for i, layer in enumerate(self.layers):
            layer.index = i
            need = layer.input_features
            if need is not None:
                if width is not None and width != need:
                    assert previous is not None
                    raise ShapeError(
                        f"{layer.label} expects {need} input features but "
                        f"{previous.label} gives {width}"
                    )
                if first is None and width is None:
                    first = need
            width = layer.output_features(width if width is not None else need)
            previous = layer
        return first

    def output_width(self, input_width: int) -> int:
        """Width of the output for inputs of ``input_width`` features."""
        width = input_width
        for layer in self.layers:
            width = layer.output_features(width)
        return width

    def _build(self) -> None:
        shapes = [layer.param_shapes() for layer in self.layers]
        total = sum(int(np.prod(shape)) for s in shapes for _, shape in s)
        xp = self.backend.xp
        with self.backend.activate(), device_allocation(
            f"Sequential: flat parameter and gradient buffers ({total:,} parameters each)",
            2 * total * self.dtype.itemsize,
        ):
            self.flat_params = xp.zeros(total, dtype=self.dtype)
            self.flat_grads = xp.zeros(total, dtype=self.dtype)
        host = np.zeros(total, dtype=np.float64)
        self._slices: dict[str, tuple[int, int, tuple[int, ...]]] = OrderedDict()
        offset = 0
        for layer, layer_shapes in zip(self.layers, shapes, strict=True):
            params, grads, host_views = {}, {}, {}
            for name, shape in layer_shapes:
                size = int(np.prod(shape))
                end = offset + size
                params[name] = self.flat_params[offset:end].reshape(shape)
                grads[name] = self.flat_grads[offset:end].reshape(shape)
                host_views[name] = host[offset:end].reshape(shape)
                self._slices[f"{layer.index}.{name}"] = (offset, end, shape)
                offset = end
            layer.attach(self, layer.index or 0, self.backend, self.dtype, params, grads)
            layer.init_params(self.rng, host_views)
        with self.backend.activate():
            self.flat_params[...] = self.backend.asarray(host.astype(self.dtype))

    # --- description ---------------------------------------------------------------
    def __repr__(self) -> str:
        extra = "" if self.precision == "fp32" else f", precision={self.precision!r}"
        lines = [f"Sequential(device={self.device!r}, dtype={self.dtype.name!r}{extra}, ["]
        lines += [f"  {layer.index}: {layer.describe()}," for layer in self.layers]
        lines.append(f"])  # {self.num_parameters:,} parameters")
        return "\n".join(lines)

    def parameters(self) -> OrderedDict[str, Array]:
        """Ordered ``"i.weight"`` / ``"i.bias"`` -> live views into the flat buffer.

        Writing into a view (``p["0.weight"][...] = w``) changes the model.
        """
        return OrderedDict(
            (f"{layer.index}.{name}", view)
            for layer in self.layers
            for name, view in layer.params.items()
        )

    def gradients(self) -> OrderedDict[str, Array]:
        """Ordered names -> live views of the gradient buffer (same names as parameters)."""
        return OrderedDict(
            (f"{layer.index}.{name}", view)
            for layer in self.layers
            for name, view in layer.grads.items()
        )

    # --- input checks ------------------------------------------------------------------
    def to_device(self, x: Any) -> Array:
        """Copy ``x`` onto the model's device and dtype (the explicit transfer)."""
        arr = self.backend.asarray(x)
        if arr.dtype.kind in "biuf" and arr.dtype != self.dtype:
            arr = arr.astype(self.dtype)
        return arr

    def check_input(self, shape: tuple[int, ...], dtype: np.dtype, what: str = "input") -> None:
        """Raise ShapeError / DTypeError unless (shape, dtype) is a valid input batch.

        ``what`` names the argument in the message (e.g. ``"validation x"``).
        """
        first = self.layers[0]
        if np.dtype(dtype).kind not in "biuf":
            raise DTypeError(
                f"{first.label}: {what} must be a real numeric array, got dtype {dtype}"
            )
        want = self.input_features
        width = "n" if want is None else str(want)
        shape = tuple(shape)
        if len(shape) != 2 or (want is not None and shape[1] != want):
            hint = " (a single sample? use x[None, :])" if len(shape) == 1 else ""
            raise ShapeError(
                f"{first.label}: expected {what} of shape (batch, {width}), "
                f"got shape {shape}{hint}"
            )
        if shape[0] == 0:
            raise ShapeError(f"{first.label}: empty batch ({what} of shape {shape})")

    def _prepare_input(self, x: Any, what: str = "Sequential.forward: x") -> Array:
        if not self.backend.is_gpu and isinstance(x, (list, tuple)):
            x = np.asarray(x)
        self.backend.check_array(x, what)
        self.check_input(x.shape, x.dtype)
        if x.dtype != self.dtype or not x.flags.c_contiguous:
            with self.backend.activate():
                x = self.backend.xp.ascontiguousarray(x, dtype=self.dtype)
        return x

    # --- passes ------------------------------------------------------------------------
    def _forward(self, x: Array) -> Array:
        """Forward over a validated input; returns the last layer's buffer.

        Under :func:`~gpubackprop.detect_anomaly` the input and each layer's output
        are checked for NaN/Inf (see :mod:`gpubackprop.anomaly`).
        """
        check = checker_for(self)
        if check is not None:
            with self.backend.activate(), check.scope():
                check.record("input", self.layers[0], "input x", x)
                for layer in self.layers:
                    x = layer.forward(x)
                    check.record("forward", layer, "output", x)
            self._output = x
            return x
        with self.backend.activate():
            for layer in self.layers:
                x = layer.forward(x)
        self._output = x
        return x

    def forward(self, x: Any) -> Array:
        """The network's output for a batch ``x`` of shape (B, in_features).

        Returns a new array on the model's device; the activations the backward
        pass needs are kept inside the layers.
        """
        return self._forward(self._prepare_input(x)).copy()

    __call__ = forward

    def _backward(self, delta: Array, need_input_grad: bool = False) -> Array | None:
        check = checker_for(self)
        with self.backend.activate(), contextlib.ExitStack() as scope:
            if check is not None:
                scope.enter_context(check.scope())
            last = len(self.layers) - 1
            for i in range(last, -1, -1):
                need = need_input_grad or i > 0
                layer = self.layers[i]
                delta = layer.backward(delta, need)
                if check is not None:
                    for name, grad in layer.grads.items():
                        check.record("backward", layer, f"gradient d{name}", grad)
                    if delta is not None:
                        check.record("backward", layer, "input gradient δ", delta)
        return delta

    def backward(self, grad_output: Any, *, return_input_grad: bool = False) -> Array | None:
        """Backprop ``grad_output`` = ∂L/∂output of the last forward pass.

        Writes every layer's dW and db into the gradient buffer (overwriting, not
        accumulating; see :meth:`gradients`). With ``return_input_grad`` returns
        ∂L/∂x as a new array.
        """
        if self._output is None:
            raise ShapeError("Sequential.backward: call forward first")
        self.backend.check_array(grad_output, "Sequential.backward: grad_output")
        if tuple(grad_output.shape) != tuple(self._output.shape):
            raise ShapeError(
                f"{self.layers[-1].label}: grad_output has shape {tuple(grad_output.shape)}, "
                f"expected {tuple(self._output.shape)} (the shape of the last forward output)"
            )
        if grad_output.dtype != self.dtype:
            grad_output = grad_output.astype(self.dtype)
        result = self._backward(grad_output, return_input_grad)
        return None if result is None else result.copy()

    def _loss_grad_buffer(self, shape: tuple[int, ...]) -> Array:
        buf = self._loss_grad.get(shape)
        if buf is None:
            nbytes = math.prod(shape) * self.dtype.itemsize
            with self.backend.activate(), device_allocation(
                f"loss gradient buffer of shape {shape}", nbytes
            ):
                buf = self.backend.xp.empty(shape, dtype=self.dtype)
            self._loss_grad = {shape: buf}
        return buf

    def _check_batch(self, x: Array, y: Array, loss: Loss) -> None:
        if getattr(y, "ndim", 0) == 0:
            raise ShapeError(f"{loss.name}: target must be an array with a batch axis")
        if y.shape[0] != x.shape[0]:
            raise ShapeError(
                f"{loss.name}: inputs have batch size {x.shape[0]} but targets have "
                f"{y.shape[0]}"
            )

    def _loss_and_grad(self, x: Array, y: Array, loss: Loss) -> Array:
        """Forward, loss, backward on validated arrays; the loss as a 0-d device array."""
        check = checker_for(self)
        with contextlib.ExitStack() as scope:
            if check is not None:  # one read of the GPU flags for the whole step
                scope.enter_context(check.scope())
            out = self._forward(x)
            grad = self._loss_grad_buffer(tuple(out.shape))
            with self.backend.activate():
                value = loss.value_and_grad(self.backend, out, y, grad)
                if check is not None:
                    check.record("loss", None, f"{loss.name} value", value)
                    check.record("loss", None, f"{loss.name} gradient ∂L/∂output", grad)
            self._backward(grad)
        return value

    def _prepare_batch(self, x: Any, y: Any, loss: Loss | str) -> tuple[Array, Array, Loss]:
        loss = get_loss(loss)
        x = self._prepare_input(x)
        if not self.backend.is_gpu and isinstance(y, (list, tuple)):
            y = np.asarray(y)
        self.backend.check_array(y, f"{loss.name}: target")
        self._check_batch(x, y, loss)
        expected = (x.shape[0], self.output_width(x.shape[1]))
        with self.backend.activate():
            y = loss.prepare_target(self.backend, expected, self.dtype, y)
        return x, y, loss

    def loss_and_grad(self, x: Any, y: Any, loss: Loss | str) -> float:
        """Forward ``x``, the loss against ``y``, and backward: fills :meth:`gradients`.

        Returns the loss value as a float.
        """
        x, y, loss = self._prepare_batch(x, y, loss)
        return float(self._loss_and_grad(x, y, loss))

    def train_step(self, x: Any, y: Any, loss: Loss | str, optimizer: Optimizer) -> float:
        """One step: forward, loss, backward, ``optimizer.step`` on the flat buffers.

        Returns the loss before the update.
        """
        check_optimizer(optimizer)
        x, y, loss = self._prepare_batch(x, y, loss)
        value = self._loss_and_grad(x, y, loss)
        with self.backend.activate():
            optimizer.step(self.flat_params, self.flat_grads)
        return float(value)

    def explain(
        self, x: Any, y: Any = None, loss: Loss | str | None = None, *, file: Any = None
    ) -> str:
        """Print and return, layer by layer, the shapes and the exact formulas used
        forward and backward for batch ``x`` (z = a Wᵀ + b, δ = ∂L/∂a ⊙ σ′,
        dW = δᵀ a, db = δᵀ 1, ∂L/∂a_prev = δ W), with statistics of the actual
        values; given ``y`` and ``loss``, also the loss and the gradient norms.
        No parameter changes.
        """
        from .explain import explain

        return explain(self, x, y, loss, file=file)

    def compile_step(self, loss: Loss | str, optimizer: Optimizer) -> CompiledStep:
        """The training step (forward, loss, backward, update) as a replayable CUDA graph.

        Returns a :class:`~gpubackprop.capture.CompiledStep`: call it as
        ``step(x, y)`` with device arrays; it records a graph on the first call
        (and again when the batch shape changes) and replays it after that.
        GPU models only.
        """
        from .capture import CompiledStep

        if optimizer.max_grad_norm is not None or optimizer.skip_nonfinite:
            raise CaptureError(
                "compile_step: an optimizer with max_grad_norm or skip_nonfinite decides "
                "on the host at every step and cannot be recorded; call train_step instead"
            )
        return CompiledStep(self, loss, optimizer)

    # --- training loop API (in train.py) -------------------------------------------------
    def predict(self, x: Any, batch_size: int = 1024) -> Array:
        """Outputs for ``x`` in batches; NumPy in, NumPy out (device array in, same out)."""
        from .train import predict

        return predict(self, x, batch_size=batch_size)

    def evaluate(
        self,
        x: Any,
        y: Any,
        loss: Loss | str,
        metrics: Sequence[str] = ("accuracy",),
        batch_size: int = 1024,
    ) -> dict[str, float]:
        """Mean loss and metrics over a dataset, e.g. ``{"loss": 0.1, "accuracy": 0.97}``."""
        from .train import evaluate

        return evaluate(self, x, y, loss, metrics=metrics, batch_size=batch_size)

    def fit(self, x: Any, y: Any, **kwargs: Any) -> History:
        """Train with mini-batches; see :func:`gpubackprop.train.fit` for the arguments."""
        from .train import fit

        return fit(self, x, y, **kwargs)

    # --- checkpoints (in io.py) --------------------------------------------------------
    def save(self, path: Any, optimizer: Optimizer | None = None) -> None:
        """Write the training state (parameters, ``optimizer``'s state, random generator,
        architecture) to ``path`` (a str or os.PathLike), atomically, as a safetensors
        file; see :func:`gpubackprop.io.save`. ``gb.load(path)`` reads it back.
        """
        from .io import save

        save(self, path, optimizer)

    def load_state(self, path: Any, optimizer: Optimizer | None = None) -> None:
        """Load a checkpoint of this architecture into this model (and ``optimizer``) in
        place; on CheckpointError nothing has changed. See :func:`gpubackprop.io.load_state`.
        """
        from .io import load_state

        load_state(self, path, optimizer)


__all__ = [
    "FlatParameters",
    "Sequential",
    "check_optimizer",
    "resolve_dtype",
    "resolve_precision",
]
