"""Sequential: the layer-wise forward/backward engine over flat buffers.

All parameters of a model live in one flat array and all gradients in another
(:mod:`gpubackprop.params`); each layer's ``weight`` and ``bias`` are views into
them, so one optimizer pass updates the whole model and a checkpoint is a handful
of arrays.

Backward follows the recurrences of the seed notes (the lecture notes this project
grew from; see README.md), batch-major::

    δ_L = ∂L/∂a_L                              (from the loss; carries 1/B)
    δ_k = (δ_{k+1} W_{k+1}) ⊙ σ′(z_k)          dW_k = δ_kᵀ a_{k−1}    db_k = δ_kᵀ 1

The engine API, public for whatever drives a model (``fit``, ``compile_step``,
``explain``, ``gradcheck``, the benchmarks): :meth:`Sequential.prepare_batch`
checks a batch once into a :class:`Batch`; :meth:`Sequential.step` is THE training
step on it (:meth:`~Sequential.loss_and_grad_batch`, then the optimizer), with
:meth:`~Sequential.forward_batch` and :meth:`~Sequential.backward_batch` below it.

Doors, not rooms: ``fit``, ``evaluate``, ``predict``, ``save``, ``load_state``,
``explain`` and ``compile_step`` import their module (train, io, explain, capture:
the floor above) inside the method, when called; the import-linter contracts in
pyproject.toml allow only these upward imports."""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

import numpy as np

from .anomaly import AnomalyChecker, checker_for
from .arrays import Array
from .backend import NO_CONTEXT, Backend, get_backend
from .checks import check_int
from .errors import CaptureError, ConfigError, DTypeError, ShapeError
from .layers import Layer, LayerParameters
from .losses import Loss, get_loss
from .optim import Optimizer
from .params import (
    FlatParameters,
    allocate_flat,
    device_allocation,
    initialise,
    resolve_dtype,
    resolve_precision,
)

if TYPE_CHECKING:
    from .capture import CompiledStep
    from .distributed import Communicator
    from .explain import Explanation
    from .train import History


def check_optimizer(optimizer: Any) -> None:
    """ConfigError unless ``optimizer`` is a gpubackprop optimizer."""
    if not isinstance(optimizer, Optimizer):
        raise ConfigError(
            "optimizer must be a gpubackprop optimizer such as gb.optim.SGD(lr=0.1), "
            f"got {type(optimizer).__name__}"
        )


def _scope(check: AnomalyChecker | None) -> contextlib.AbstractContextManager[Any]:
    """The anomaly checker's scope while detection is on, else a context that does nothing."""
    return NO_CONTEXT if check is None else check.scope()


def _of_layer(layer: Layer, named: dict[str, Any]) -> dict[str, Any]:
    """The entries ``"i.name"`` of layer i, as ``name`` -> value."""
    prefix = f"{layer.index}."
    return {k.removeprefix(prefix): v for k, v in named.items() if k.startswith(prefix)}


#: input kind (:attr:`.Layer.input_kind`) -> the input ranks a layer of it takes
_RANKS = {"features": (2, 3), "sequence": (3,), "tokens": (1, 2)}
#: input kind -> the input it takes, in words (``{width}``: the feature width)
_EXPECTED = {
    "features": "of shape (batch, {width}) or (batch, time, {width})",
    "sequence": "of shape (batch, time, {width})",
    "tokens": "to be integer token ids of shape (batch,) or (batch, time)",
}
#: model input rank -> its shape in words, for real inputs and for token ids
_SHAPES = {2: "(batch, {width})", 3: "(batch, time, {width})"}
_TOKEN_SHAPES = {1: "(batch,)", 2: "(batch, time)"}


class Batch(NamedTuple):
    """A batch ready for the engine (what :meth:`Sequential.prepare_batch` returns):
    ``x`` ((B, in), (B, T, in) or token ids (B, T) in ``Sequential.input_dtype``)
    and the target ``y`` on the model's device in its dtype, validated,
    with the :class:`~gpubackprop.losses.Loss` they were prepared for.

    ``values_checked`` is False when the checks that read ``y``'s values (labels in
    range, targets in [0, 1]) were left for :meth:`Sequential.read_loss` (on a GPU,
    where they would sync the host). A named tuple: immutable and cheap to build."""

    x: Array
    y: Array
    loss: Loss
    values_checked: bool = True


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
            GPU, float32 GEMMs on TF32 tensor cores (about 1e-3 relative error, several
            times the throughput on wide layers; see :meth:`.Backend.with_precision`).
            No effect on the CPU; float64 models reject it. Saved in checkpoints.
    """

    _row_offset = 0

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
            if layer.owner is not None:
                raise ConfigError(
                    f"Sequential: item {i} ({layer.describe()}) already belongs to another "
                    "model; create a new layer object for each model"
                )
        resolved = resolve_dtype(dtype)
        precision = resolve_precision(precision, resolved)
        self._setup(get_backend(device).with_precision(precision), resolved, seed)
        self._build()

    @classmethod
    def over_built_layer(cls, layer: Layer) -> Sequential:
        """A one-layer model over a layer given parameters by :meth:`Layer.build`.

        The model shares the layer's flat buffers (no copy, no new initialisation),
        so checking or training it checks or trains that layer (how
        :func:`~gpubackprop.gradcheck` checks a built layer).
        """
        owner = layer.owner
        if not (layer.standalone and isinstance(owner, LayerParameters)):
            raise ConfigError(
                f"{layer.label}: Sequential.over_built_layer takes a layer built with "
                "layer.build()"
            )
        model = cls.__new__(cls)
        model.layers = [layer]
        model._setup(owner.backend, owner.dtype, None)
        model.flat_params, model.flat_grads = owner.flat_params, owner.flat_grads
        return model

    # --- construction ------------------------------------------------------------
    def _setup(self, backend: Backend, dtype: np.dtype, seed: int | None) -> None:
        """Everything but the parameter buffers, for checked ``self.layers``."""
        self.backend = backend
        self.dtype = dtype
        self.precision = backend.precision
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.input_features = self._check_widths()
        #: what the first layer takes (:attr:`.Layer.input_kind`): ``"features"``,
        #: ``"sequence"`` or ``"tokens"`` (integer ids, prepared as int64)
        self.input_kind: str = getattr(self.layers[0], "input_kind", "features")
        self.input_dtype = np.dtype(np.int64) if self.input_kind == "tokens" else dtype
        #: the input ranks every layer accepts, e.g. (2, 3) for a model of Dense layers
        self.input_ranks = tuple(r for r in (1, 2, 3) if self._rank_problem(r) is None)
        #: output width (None when it follows the input, e.g. a model of Activation layers)
        self.output_features = (
            None if self.input_features is None and self.input_kind != "tokens"
            else self.output_width(self.input_features)
        )
        self._output: Array | None = None
        self._loss_grad: dict[tuple[int, ...], Array] = {}

    def _check_widths(self) -> int | None:
        """Number the layers and check that each takes the width the one before gives;
        returns the model's input width (None when every layer takes any width)."""
        width: int | None = None
        first: int | None = None
        for i, layer in enumerate(self.layers):
            layer.index = i
            need = layer.input_features
            if need is not None and width is not None and width != need:
                raise ShapeError(
                    f"{layer.label} expects {need} input features but "
                    f"{self.layers[i - 1].label} gives {width}"
                )
            if first is None and width is None:
                first = need
            width = layer.output_features(width if width is not None else need)
            if i and getattr(layer, "input_kind", "features") == "tokens":
                raise ConfigError(
                    f"{layer.label} takes integer token ids and must be the model's first "
                    f"layer, but comes after {self.layers[i - 1].label}"
                )
        return first

    def _rank_problem(self, rank: int) -> Layer | None:
        """For a model input of ``rank``: the first layer that cannot take the rank it
        gets (by its :attr:`.Layer.input_kind`), or None when every layer can."""
        for layer in self.layers:
            kind = getattr(layer, "input_kind", "features")
            if rank not in _RANKS[kind]:
                return layer
            if kind == "tokens":
                rank += 1
        return None

    def output_width(self, input_width: int | None) -> int:
        """Width of the output for inputs of ``input_width`` features (None for token ids)."""
        width: int | None = input_width
        for layer in self.layers:
            width = layer.output_features(width)
        assert width is not None  # a known input width gives a known output width
        return width

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the output for a valid input of ``input_shape``: (*lead, out), where
        lead is the input's shape without its feature axis ((B,) or (B, T)), or the
        whole shape of token ids."""
        if self.input_kind == "tokens":
            return (*input_shape, self.output_width(None))
        width = self.output_features
        return (*input_shape[:-1], self.output_width(input_shape[-1]) if width is None else width)

    def _build(self) -> None:
        """One flat parameter and one flat gradient buffer for all layers (named
        ``"i.weight"``, ``"i.bias"``), each layer attached to its views and
        initialised in order from the model's generator."""
        shapes = [
            (f"{layer.index}.{name}", shape)
            for layer in self.layers
            for name, shape in layer.param_shapes()
        ]
        self.flat_params, self.flat_grads, params, grads = allocate_flat(
            self.backend, self.dtype, shapes, "Sequential"
        )
        for layer in self.layers:
            layer.attach(
                self, layer.index or 0, self.backend, self.dtype,
                _of_layer(layer, params), _of_layer(layer, grads),
            )

        def init(host: dict[str, np.ndarray]) -> None:
            for layer in self.layers:
                layer.init_params(self.rng, _of_layer(layer, host))

        initialise(self.backend, self.flat_params, shapes, init)

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
        return self._named("params")

    def gradients(self) -> OrderedDict[str, Array]:
        """Ordered names -> live views of the gradient buffer (same names as parameters)."""
        return self._named("grads")

    def _named(self, which: str) -> OrderedDict[str, Array]:
        """``"i.name"`` -> view, for each layer i's ``params`` or ``grads`` (``which``)."""
        return OrderedDict(
            (f"{layer.index}.{name}", view)
            for layer in self.layers for name, view in getattr(layer, which).items()
        )

    # --- train / eval mode ---------------------------------------------------------------
    @property
    def training(self) -> bool:
        """True when every layer is in training mode (the default; see :meth:`train`)."""
        return all(layer.training for layer in self.layers)

    def train(self, mode: bool = True) -> Sequential:
        """Put every layer in training mode (``mode`` true: Dropout drops) or eval mode
        (false: Dropout is the identity); returns the model."""
        for layer in self.layers:
            layer.training = bool(mode)
        return self

    def eval(self) -> Sequential:
        """Put every layer in eval mode (``train(False)``); returns the model."""
        return self.train(False)

    @contextlib.contextmanager
    def mode(self, training: bool) -> Iterator[Sequential]:
        """Every layer in training (``training`` true) or eval mode inside the block, and
        back to the mode each layer had before it afterwards (how ``fit``, ``evaluate``,
        ``predict`` and ``explain`` switch)."""
        saved = [layer.training for layer in self.layers]
        self.train(training)
        try:
            yield self
        finally:
            for layer, was in zip(self.layers, saved, strict=True):
                layer.training = was

    def generator_states(self) -> dict[int, tuple[int, ...]]:
        """Layer index -> the state of that layer's random generator, for every layer that
        has one (Dropout: (seed, step)); host integers (a device read on a GPU)."""
        states = {layer.index or 0: layer.generator_state() for layer in self.layers}
        return {i: state for i, state in states.items() if state is not None}

    def set_generator_states(self, states: dict[int, tuple[int, ...]]) -> None:
        """Restore states from :meth:`generator_states` (the same draws follow)."""
        for index, state in states.items():
            self.layers[index].set_generator_state(state)

    def advance_generators(self) -> None:
        """Advance every layer's random generator as one training-mode forward would
        (Dropout: step ← step + 1), without computing: what a data-parallel rank with no
        rows in a batch does, so that its generators stay with the other ranks'."""
        for layer in self.layers:
            layer.advance_generator()

    @property
    def row_offset(self) -> int:
        """The index, within the global batch, of the first row of the batches this model
        processes (default 0; an int ≥ 0). Dropout's counter of element i of a batch is
        ``row_offset · (elements per row) + i``, so a data-parallel rank forwarding rows
        r ... of every global batch with ``row_offset = r`` draws exactly the masks those
        rows get in the one-process forward (``fit(distributed=...)`` sets it)."""
        return self._row_offset

    @row_offset.setter
    def row_offset(self, value: int) -> None:
        self._row_offset = check_int("Sequential.row_offset", value, minimum=0)

    # --- input checks ------------------------------------------------------------------
    def to_device(self, x: Any) -> Array:
        """Copy ``x`` onto the model's device and input dtype (the explicit transfer):
        the model's dtype, or int64 for the token ids of a model that starts with an
        Embedding (float ids are left as they are, for :meth:`check_input` to refuse)."""
        arr = self.backend.asarray(x)
        if arr.dtype.kind in self._convertible and arr.dtype != self.input_dtype:
            arr = arr.astype(self.input_dtype)
        return arr

    @property
    def _convertible(self) -> str:
        """The dtype kinds an input is converted from: integers to int64 token ids, or
        any real kind to the model's float dtype."""
        return "iu" if self.input_kind == "tokens" else "biuf"

    def check_input(self, shape: tuple[int, ...], dtype: np.dtype, what: str = "input") -> None:
        """Raise ShapeError / DTypeError unless (shape, dtype) is a valid input batch.

        Valid: (B, in) or (B, T, in) reals for a model of per-position layers, (B, T, in)
        when a layer takes sequences, integer token ids (B,) or (B, T) when the first
        layer is an Embedding. ``what`` names the argument in the message (e.g.
        ``"validation x"``); the message names the layer that cannot take it.
        """
        first = self.layers[0]
        kind = np.dtype(dtype).kind
        if kind not in "biuf":
            raise DTypeError(
                f"{first.label}: {what} must be a real numeric array, got dtype {dtype}"
            )
        if self.input_kind == "tokens" and kind not in "iu":
            raise DTypeError(
                f"{first.label}: {what} must be integer token ids of shape (batch,) or "
                f"(batch, time), got dtype {dtype} (convert with x.astype(np.int64))"
            )
        shape = tuple(shape)
        if not self.takes_shape(shape):
            raise ShapeError(self._shape_message(shape, kind, what))
        if shape[0] == 0:
            raise ShapeError(f"{first.label}: empty batch ({what} of shape {shape})")

    def takes_shape(self, shape: tuple[int, ...]) -> bool:
        """Whether an input of ``shape`` has a rank every layer takes and the model's
        input width (see :meth:`check_input`; the dtype is not looked at)."""
        want = self.input_features
        return len(shape) in self.input_ranks and (want is None or shape[-1] == want)

    def _shape_message(self, shape: tuple[int, ...], kind: str, what: str) -> str:
        """Why an input of ``shape`` (dtype kind ``kind``) is refused: the layer that
        cannot take it, the model inputs that fit, the shape that came."""
        layer = self._rank_problem(len(shape)) or self.layers[0]
        width = self.input_features or "n"
        table = _TOKEN_SHAPES if self.input_kind == "tokens" else _SHAPES
        shapes = " or ".join(table[r].format(width=width) for r in self.input_ranks)
        if not shapes:  # no input fits every layer: say what the first one takes
            expected = _EXPECTED[self.input_kind].format(width=width)
        elif self.input_kind == "tokens":
            expected = f"to be integer token ids of shape {shapes}"
        else:
            expected = f"of shape {shapes}"
        hint = ""
        if layer is not self.layers[0]:
            takes = _EXPECTED[getattr(layer, "input_kind", "features")]
            takes = takes.format(width=layer.input_features or "n").removeprefix("of shape ")
            before = self.layers[self.layers.index(layer) - 1]
            hint = f" (it takes {takes} from {before.label})"
        if len(shape) == 1 and self.input_kind != "tokens":
            hint += " (a single sample? use x[None, :])"
        if len(shape) == 2 and self.input_ranks == (3,) and kind not in "iu":
            hint += " (one sequence? use x[None])"
        if kind in "iu" and self.input_kind != "tokens" and len(shape) in (1, 2):
            hint += (
                "; integer token ids? a model that takes token ids starts with "
                "gb.Embedding(num_embeddings, embedding_dim)"
            )
        return f"{layer.label}: expected {what} {expected}, got shape {shape}{hint}"

    def check_input_values(self, x: Array) -> None:
        """LabelError unless the values of input ``x`` suit the first layer (an
        Embedding's ids in [0, V)); reads them: a host sync on a GPU."""
        self.layers[0].check_input_values(x)

    def prepare_input(
        self, x: Any, what: str = "Sequential.forward: x", *, defer_device_checks: bool = False
    ) -> Array:
        """``x`` validated as an input batch and made ready for :meth:`forward_batch`.

        ``x`` must be on the model's device (DeviceError naming ``what`` otherwise:
        nothing is copied between devices) with a shape :meth:`check_input` accepts;
        it is converted to the model's input dtype (``input_dtype``: the float
        dtype, or int64 token ids) and made C-contiguous where needed, and its values
        checked (:meth:`check_input_values`: token ids in range), on a GPU not before
        :meth:`read_loss` with ``defer_device_checks``. An array of another library
        (PyTorch, JAX) on the model's device is taken by DLPack without a copy
        (:meth:`.Backend.adopt`) when its dtype and layout fit.
        """
        if not self.backend.is_gpu and isinstance(x, (list, tuple)):
            x = np.asarray(x)
        x = self.backend.adopt(x, what)
        self.backend.check_array(x, what)
        self.check_input(x.shape, x.dtype)
        if x.dtype != self.input_dtype or not x.flags.c_contiguous:
            with self.backend.activate():
                x = self.backend.xp.ascontiguousarray(x, dtype=self.input_dtype)
        if self.input_kind == "tokens" and not (defer_device_checks and self.backend.is_gpu):
            self.check_input_values(x)
        return x

    def prepare_batch(self, x: Any, y: Any, loss: Loss | str) -> Batch:
        """(x, y) validated, converted and on the model's device, for ``loss``.

        The one way a batch is checked: x as in :meth:`prepare_input`, y against the
        output shape (:meth:`output_shape`: (B, out), or (B, T, out) for sequences) by
        ``loss.prepare_target`` (ShapeError, DTypeError, LabelError naming the loss).
        The result feeds :meth:`loss_and_grad_batch` and :meth:`step` any number of
        times without further checks. On a GPU the checks that read y's values
        (labels in range, BCE targets in [0, 1]) and the token ids in range would
        sync the host; they wait for :meth:`read_loss` (``values_checked`` false).
        """
        loss = get_loss(loss)
        x = self.prepare_input(x, defer_device_checks=True)
        if not self.backend.is_gpu and isinstance(y, (list, tuple)):
            y = np.asarray(y)
        y = self.backend.adopt(y, f"{loss.name}: target")
        self.backend.check_array(y, f"{loss.name}: target")
        if getattr(y, "ndim", 0) == 0:
            raise ShapeError(f"{loss.name}: target must be an array with a batch axis")
        if y.shape[0] != x.shape[0]:
            raise ShapeError(
                f"{loss.name}: inputs have batch size {x.shape[0]} but targets have "
                f"{y.shape[0]}"
            )
        expected = self.output_shape(x.shape)
        with self.backend.activate():
            y = loss.prepare_target(
                self.backend, expected, self.dtype, y, defer_device_checks=True
            )
        return Batch(x, y, loss, values_checked=not self.backend.is_gpu)

    # --- passes ------------------------------------------------------------------------
    @property
    def last_output(self) -> Array | None:
        """The output of the last forward pass: the last layer's own buffer (no copy,
        overwritten by the next forward), or None before the first."""
        return self._output

    def forward_batch(self, x: Array, outputs: list[Array] | None = None) -> Array:
        """a_L for an input from :meth:`prepare_input`: a_k = layer_k(a_{k−1}), a_0 = x.

        Returns the last layer's own output buffer (no copy; see :attr:`last_output`);
        the activations backward needs stay inside the layers. With ``outputs``, each
        a_k is appended to it. Under :func:`~gpubackprop.detect_anomaly` the input and
        each layer's output are checked for NaN/Inf (see :mod:`gpubackprop.anomaly`).
        """
        check = checker_for(self)
        with self.backend.activate(), _scope(check):
            if check is not None:
                check.record("input", self.layers[0], "input x", x)
            for layer in self.layers:
                x = layer.forward(x)
                if check is not None:
                    check.record("forward", layer, "output", x)
                if outputs is not None:
                    outputs.append(x)
        self._output = x
        return x

    def forward(self, x: Any) -> Array:
        """The network's output for a batch ``x`` of shape (B, in_features), (B, T,
        in_features) or, for a model that starts with an Embedding, integer ids (B, T).

        Returns a new array on the model's device; the activations the backward
        pass needs are kept inside the layers.
        """
        return self.forward_batch(self.prepare_input(x)).copy()

    __call__ = forward

    def backward_batch(
        self,
        delta: Array,
        need_input_grad: bool = False,
        on_gradients: Callable[[int], None] | None = None,
    ) -> Array | None:
        """Backprop δ_L = ``delta`` (∂L/∂a_L, the shape and dtype of :attr:`last_output`)::

            δ_k = (δ_{k+1} W_{k+1}) ⊙ σ′(z_k)      dW_k = δ_kᵀ a_{k−1}      db_k = δ_kᵀ 1

        Writes every dW_k, db_k into the flat gradient buffer (overwriting). Returns
        ∂L/∂x (the first layer's own buffer, no copy) when ``need_input_grad``, else None.
        ``on_gradients(k)``, when given, is called as soon as layer k's gradients are
        written (last layer first): how data-parallel training starts reducing them
        while backward goes on (:mod:`gpubackprop.distributed`).
        """
        check = checker_for(self)
        with self.backend.activate(), _scope(check):
            for i in range(len(self.layers) - 1, -1, -1):
                layer = self.layers[i]
                delta = layer.backward(delta, need_input_grad or i > 0)
                if on_gradients is not None:
                    on_gradients(i)
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
        grad_output = self.backend.adopt(grad_output, "Sequential.backward: grad_output")
        self.backend.check_array(grad_output, "Sequential.backward: grad_output")
        if tuple(grad_output.shape) != tuple(self._output.shape):
            raise ShapeError(
                f"{self.layers[-1].label}: grad_output has shape {tuple(grad_output.shape)}, "
                f"expected {tuple(self._output.shape)} (the shape of the last forward output)"
            )
        if grad_output.dtype != self.dtype:
            grad_output = grad_output.astype(self.dtype)
        result = self.backward_batch(grad_output, return_input_grad)
        return None if result is None else result.copy()

    def loss_grad_buffer(self, shape: tuple[int, ...]) -> Array:
        """The model's buffer for ∂L/∂a_L of ``shape`` (allocated once per shape, then
        reused; the loss writes into it, backward reads it)."""
        buf = self._loss_grad.get(shape)
        if buf is None:
            nbytes = math.prod(shape) * self.dtype.itemsize
            with self.backend.activate(), device_allocation(
                f"loss gradient buffer of shape {shape}", nbytes
            ):
                buf = self.backend.xp.empty(shape, dtype=self.dtype)
            self._loss_grad = {shape: buf}
        return buf

    def loss_and_grad_batch(
        self, batch: Batch, on_gradients: Callable[[int], None] | None = None
    ) -> Array:
        """Forward, loss and backward for a prepared batch; the loss as a 0-d device array.

        L = loss(a_L, y); δ_L = ∂L/∂a_L (carrying the 1/B) goes through
        :meth:`backward_batch` (with ``on_gradients``), which fills :meth:`gradients`.
        Nothing waits for the GPU; under :func:`~gpubackprop.detect_anomaly` the whole
        pass reads the GPU's NaN/Inf flags once.
        """
        loss = batch.loss
        check = checker_for(self)
        # the outer scope: one read of the GPU flags for the whole step
        with self.backend.activate(), _scope(check):
            out = self.forward_batch(batch.x)
            grad = self.loss_grad_buffer(out.shape)
            value = loss.write_value_and_grad(self.backend, out, batch.y, grad)
            if check is not None:
                check.record("loss", None, f"{loss.name} value", value)
                check.record("loss", None, f"{loss.name} gradient ∂L/∂output", grad)
            self.backward_batch(grad, on_gradients=on_gradients)
        return value

    def step(self, batch: Batch, optimizer: Optimizer) -> Array:
        """THE training step on a prepared batch: forward, loss, backward, then
        ``optimizer.step(flat_params, flat_grads)``. Returns the loss before the update
        as a 0-d device array: no host sync on a GPU (:meth:`read_loss` reads it and
        runs the target checks a GPU batch left for then)."""
        value = self.loss_and_grad_batch(batch)
        optimizer.step(self.flat_params, self.flat_grads)
        return value

    def read_loss(self, batch: Batch, value: Array) -> float:
        """A loss ``value`` from :meth:`step` / :meth:`loss_and_grad_batch` as a float
        (a host sync on a GPU), with the target checks :meth:`prepare_batch` left for
        this moment (``batch.values_checked`` false): LabelError for a label outside
        [0, C) or a BCE target outside [0, 1], or a token id outside the Embedding's
        range. By then the step has run: an out-of-range label contributed a zero
        gradient row and a NaN loss, an out-of-range id a wrapped-around row.
        """
        result = float(value)
        if not batch.values_checked:
            with self.backend.activate():
                if self.input_kind == "tokens":
                    self.check_input_values(batch.x)
                shape = self.output_shape(batch.x.shape)
                batch.loss.check_after_read(self.backend, batch.y, shape, result)
        return result

    def loss_and_grad(self, x: Any, y: Any, loss: Loss | str) -> float:
        """Forward ``x``, the loss against ``y``, and backward: fills :meth:`gradients`.

        Returns the loss value as a float.
        """
        batch = self.prepare_batch(x, y, loss)
        return self.read_loss(batch, self.loss_and_grad_batch(batch))

    def train_step(self, x: Any, y: Any, loss: Loss | str, optimizer: Optimizer) -> float:
        """One step: forward, loss, backward, ``optimizer.step`` on the flat buffers.

        Returns the loss before the update (:meth:`read_loss`: the one host sync of
        the step on a GPU, where the target's values are checked after the step; on
        the CPU they are checked before it and a bad batch changes nothing).
        """
        check_optimizer(optimizer)
        batch = self.prepare_batch(x, y, loss)
        return self.read_loss(batch, self.step(batch, optimizer))

    def explain(self, x: Any, y: Any = None, loss: Loss | str | None = None) -> Explanation:
        """Layer by layer, the shapes and the exact formulas used forward and backward
        for batch ``x`` (z = a Wᵀ + b, δ = ∂L/∂a ⊙ σ′, dW = δᵀ a, db = δᵀ 1,
        ∂L/∂a_prev = δ W), with statistics of the actual values; given ``y`` and
        ``loss``, also the loss and the gradient norms. No parameter changes. Runs in
        eval mode (Dropout is the identity) and restores the model's mode afterwards.
        Returns an :class:`~gpubackprop.explain.Explanation`, shown once by a REPL or
        notebook; ``print(model.explain(x))`` prints it.
        """
        from .explain import explain

        return explain(self, x, y, loss)

    def compile_step(
        self,
        loss: Loss | str,
        optimizer: Optimizer,
        *,
        distributed: Communicator | None = None,
        weight: float = 1.0,
    ) -> CompiledStep:
        """The training step (forward, loss, backward, update) as a replayable CUDA graph.

        Returns a :class:`~gpubackprop.capture.CompiledStep`: call it as
        ``step(x, y)`` with device arrays; it records a graph on the first call
        (and again when the batch shape changes) and replays it after that.
        GPU models only. The graph is recorded in training mode (Dropout draws a new
        mask at every replay, from its generator state on the device). With
        ``distributed`` (a communicator with NCCL), the graph also holds the gradient
        all-reduce, g ← Σ_r w_r g_r with this rank's ``weight`` w_r, between backward
        and the update (see :mod:`gpubackprop.distributed`).
        """
        from .capture import CompiledStep

        if optimizer.max_grad_norm is not None or optimizer.skip_nonfinite:
            raise CaptureError(
                "compile_step: an optimizer with max_grad_norm or skip_nonfinite decides "
                "on the host at every step and cannot be recorded; call train_step instead"
            )
        return CompiledStep(self, loss, optimizer, distributed=distributed, weight=weight)

    # --- training loop API (in train.py) -------------------------------------------------
    # Doors with the real signatures, for help() and editors: a test checks that each
    # equals train's function's signature without ``model`` and passes every argument on.
    def predict(
        self, x: Any, batch_size: int = 1024, *, distributed: Communicator | None = None
    ) -> Array:
        """Outputs a_L for all rows of ``x``, computed ``batch_size`` rows at a time.

        NumPy in gives NumPy out (each batch is copied to the device and back); an
        array on the model's device gives an array on that device. The data is not
        checked for NaN/Inf: a non-finite input row gives a non-finite output row.
        Runs in eval mode (Dropout is the identity); the model's mode is restored after.

        With ``distributed`` (from :func:`gpubackprop.distributed.init`), each rank
        predicts its contiguous shard of the rows and every rank returns all of them.
        """
        from .train import predict

        return predict(self, x, batch_size=batch_size, distributed=distributed)

    def evaluate(
        self,
        x: Any,
        y: Any,
        loss: Loss | str,
        metrics: Sequence[str] | None = None,
        batch_size: int = 1024,
        *,
        check_data: bool = True,
        distributed: Communicator | None = None,
    ) -> dict[str, float]:
        """Mean loss and metrics over a dataset, e.g. ``{"loss": 0.1, "accuracy": 0.97}``.

        The loss is the mean over rows, L = (1/N) Σ_b B_b L_b over batches b of B_b
        rows; each metric is its sum over rows divided by N. Runs in eval mode (Dropout
        is the identity); the model's mode is restored after.

        Args:
            x: inputs (N, in), sequences (N, T, in) or token ids (N, T) (see
                docs/sequences.md): a NumPy array (copied batch by batch) or an array
                on the model's device.
            y: targets, labels (N,) or (N, out), or (N, T) / (N, T, out) for
                sequences, likewise.
            loss: a :class:`~gpubackprop.losses.Loss` or its name (``"mse"``, ...).
            metrics: names from :data:`gpubackprop.train.METRICS` (``"accuracy"``,
                ``"mae"``); None (the default): by loss, ``accuracy`` for
                SoftmaxCrossEntropy and BCEWithLogits, none for MSE; ``()``: none.
            batch_size: rows per forward pass.
            check_data: check x and float targets for NaN/Inf first, one pass (a
                NumericalError names the row and column of the first); False skips it.
            distributed: the communicator of :func:`gpubackprop.distributed.init`: each
                rank evaluates its contiguous shard of the rows and every rank returns
                the means over all of them.
        """
        from .train import evaluate

        return evaluate(
            self, x, y, loss, metrics=metrics, batch_size=batch_size, check_data=check_data,
            distributed=distributed,
        )

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        loss: Loss | str,
        optimizer: Optimizer,
        epochs: int = 1,
        batch_size: int = 32,
        shuffle: bool = True,
        validation_data: tuple[Any, Any] | None = None,
        metrics: Sequence[str] | None = None,
        scheduler: Any = None,
        capture: bool = True,
        verbose: bool = True,
        file: TextIO | None = None,
        check_finite: bool = False,
        check_data: bool = True,
        distributed: Communicator | None = None,
    ) -> History:
        """Train with mini-batch steps; returns a :class:`~gpubackprop.train.History`.

        Each epoch visits every row once, in an order drawn from the model's seeded
        generator when ``shuffle``; the last batch may be shorter. Each batch is one
        :meth:`step`: θ ← update(θ, ∂L/∂θ) with L the batch's mean loss. The
        epoch's loss is the mean over rows, (1/N) Σ_b B_b L_b (before each step's
        update), and likewise each metric. Trains in training mode (Dropout drops),
        evaluates ``validation_data`` in eval mode, and restores the model's mode after.

        Args:
            x: inputs (N, in), sequences (N, T, in) or token ids (N, T), batched over
                N (see docs/sequences.md): a NumPy array (rows copied to the device
                batch by batch) or an array on the model's device.
            y: targets, labels (N,) or (N, out), or (N, T) / (N, T, out) for
                sequences, likewise.
            loss: a :class:`~gpubackprop.losses.Loss` or its name (``"cross_entropy"``).
            optimizer: a gpubackprop optimizer, e.g. ``gb.optim.Adam(1e-3)``.
            epochs: passes over the data (0: no step).
            batch_size: rows per step.
            shuffle: a new order of the rows each epoch.
            validation_data: a pair (x_val, y_val), evaluated after each epoch
                (History keys ``val_loss``, ``val_<metric>``).
            metrics: names from :data:`gpubackprop.train.METRICS`: ``"accuracy"``
                (argmax, or one output thresholded), ``"mae"`` (mean |output − target|).
                None (the default): by loss, ``accuracy`` for SoftmaxCrossEntropy and
                BCEWithLogits, none for MSE; ``()``: none.
            scheduler: e.g. ``gb.optim.CosineAnnealingLR``, stepped once per epoch.
            capture: on a GPU, run every full batch as one replay of a CUDA graph of
                the whole step (:meth:`compile_step`); the last, shorter batch of an
                epoch runs eagerly (same math, same kernels). If recording fails, fit
                warns with the reason and trains eagerly.
            verbose: print a progress bar per epoch and a summary line (loss, metrics,
                validation) to ``file`` (stdout by default).
            check_finite: run every step under :func:`gpubackprop.detect_anomaly`: the
                first NaN/Inf in an activation, the loss or a gradient raises
                :class:`~gpubackprop.errors.NumericalError` naming the layer and the
                pass, before that step's update (parameters and optimizer state stay
                as they were). Such steps run eagerly, as do all steps of an optimizer
                with ``max_grad_norm`` or ``skip_nonfinite`` (host-side decisions
                cannot be recorded in a CUDA graph). Implies ``check_data``.
            check_data: before training, check x, float targets and the validation
                data for NaN/Inf, one pass each (in blocks on the host, one reduction
                on a GPU): a NumericalError names the first row and column. False
                skips it (a NaN would then turn the loss into NaN).
            distributed: the communicator of :func:`gpubackprop.distributed.init` for
                data-parallel training (docs/distributed.md): every rank passes the
                same whole dataset; each batch of ``batch_size`` rows is split into
                contiguous shards, one per rank, and the gradients are summed with
                weights B_r / B, so each step equals the one-process step on the same
                batch. Rank 0's parameters and order are broadcast first; the ranks
                check that they agree on the model, optimizer and data
                (DistributedError on every rank otherwise); History is the same on
                every rank; only rank 0 prints. An error on one rank aborts the job.
        """
        from .train import fit

        return fit(
            self, x, y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
            shuffle=shuffle, validation_data=validation_data, metrics=metrics,
            scheduler=scheduler, capture=capture, verbose=verbose, file=file,
            check_finite=check_finite, check_data=check_data, distributed=distributed,
        )

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


__all__ = ["Batch", "Sequential", "check_optimizer"]
