"""Layers of the layer-wise engine: :class:`Dense` and :class:`Activation`.

A layer owns no memory of its own for parameters: :class:`~gpubackprop.Sequential`
allocates one flat parameter buffer and one flat gradient buffer for the whole
model and binds each layer's ``weight`` and ``bias`` to views into them. Work
buffers (the output kept for backward, the delta) are allocated once per leading
shape of the input and reused, so a training step allocates nothing.

Per-position layers (Dense, Activation) take ``(*lead, F)`` inputs with any leading
axes, (B, F) or (B, T, F): a (B, T, F) input is a (B·T, F) matrix to the GEMM
through a reshape view (no copy), and dW = Δᵀ A sums over all B·T rows.

Forward and backward of a Dense layer with activation f (batch-major, W of
shape (out, in), Δ already carrying the loss's 1/B)::

    Z = A Wᵀ + b              A_out = f(Z)
    Δ_Z = Δ_out ⊙ f′          (f′ from A_out where it can, else from Z)
    dW = Δ_Zᵀ A               db = Δ_Zᵀ 1               Δ_in = Δ_Z W
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .activations import ActivationSpec, get_activation
from .arrays import Array, as_rows
from .backend import Backend, get_backend
from .checks import check_int
from .errors import ConfigError, ShapeError
from .params import (
    FlatParameters,
    Workspaces,
    allocate_flat,
    he_or_xavier,
    initialise,
    resolve_dtype,
    seeded_rng,
)

if TYPE_CHECKING:
    from .graph import Tensor


class Layer:
    """Base class: a step of the forward pass with its own backward.

    Subclasses define :meth:`param_shapes`, :meth:`output_features`,
    :meth:`init_params`, :meth:`forward` and :meth:`backward`.
    """

    #: position in the model, set by Sequential (None while unattached)
    index: int | None = None
    #: training mode (True) or eval mode; ``Sequential.train()`` / ``.eval()`` set it on
    #: every layer. Only layers that act differently (Dropout) read it.
    training: bool = True
    #: what the layer takes: ``"features"`` (floats of rank ≥ 2, the last axis the
    #: features: (B, F) or (B, T, F)), ``"sequence"`` (floats (B, T, F)) or
    #: ``"tokens"`` (integer ids (B,) or (B, T)); Sequential validates inputs by it
    input_kind: str = "features"

    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.dtype: np.dtype | None = None
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.workspaces: Workspaces | None = None
        #: the model (or the :meth:`build` buffers) whose flat buffer holds the parameters
        self.owner: FlatParameters | None = None
        #: True once :meth:`build` gave the layer parameters of its own
        self.standalone = False

    # --- description ---------------------------------------------------------
    @property
    def label(self) -> str:
        """How errors name this layer: ``layer 2 (Dense 100->10, sigmoid)``."""
        where = f"layer {self.index}" if self.index is not None else "unattached layer"
        return f"{where} ({self.describe()})"

    def describe(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return self.describe()

    # --- structure -------------------------------------------------------------
    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of the parameters, in buffer order."""
        return []

    @property
    def input_features(self) -> int | None:
        """Input width this layer requires (None: any width)."""
        return None

    def output_features(self, input_features: int | None) -> int | None:
        """Output width for a given input width."""
        return input_features

    def init_params(self, rng: np.random.Generator, host: dict[str, np.ndarray]) -> None:
        """Write initial values (float64, host) into ``host``'s arrays."""

    def attach(
        self,
        owner: FlatParameters,
        index: int,
        backend: Backend,
        dtype: np.dtype,
        params: dict[str, Array],
        grads: dict[str, Array],
    ) -> None:
        """Bind to a model: device, dtype and views into the flat buffers.

        The model checks beforehand that no layer belongs to another model.
        """
        self.owner = owner
        self.index = index
        self.backend = backend
        self.dtype = dtype
        self.params = params
        self.grads = grads
        self.workspaces = Workspaces(backend, lambda: self.label)

    # --- work buffers ------------------------------------------------------------
    def _workspace(
        self, key: Hashable, shapes: Callable[[], Mapping[str, Any]] | Mapping[str, Any]
    ) -> dict[str, Array]:
        """Buffers for ``key`` (the input's leading shape ``x.shape[:-1]``), allocated on
        first use (``shapes``, or the mapping ``shapes()`` returns, names them: see
        :meth:`Workspaces.get`), then reused."""
        assert self.workspaces is not None
        return self.workspaces.get(key, shapes, self.dtype)

    def check_input_values(self, x: Array) -> None:
        """Raise unless the values of a model input ``x`` are valid for this layer as the
        model's first (reads them: a host sync on a GPU). Nothing to check by default;
        :class:`~gpubackprop.layers_embedding.Embedding` checks its ids."""

    def _check_delta(self, delta: Array, expected: tuple[int, ...]) -> None:
        if tuple(delta.shape) != expected:
            raise ShapeError(
                f"{self.label}: backward got a gradient of shape {tuple(delta.shape)}, "
                f"expected {expected} (the shape of its last forward output)"
            )

    # --- passes --------------------------------------------------------------------
    def forward(self, x: Array) -> Array:
        """Output for a validated input (its shape by :attr:`input_kind`); the result is
        an internal buffer."""
        raise NotImplementedError

    def backward(self, delta: Array, need_input_grad: bool) -> Array | None:
        """Write parameter gradients; return ∂L/∂input if asked (an internal buffer)."""
        raise NotImplementedError

    #: the attributes :meth:`forward` sets and :meth:`backward` reads
    _BACKWARD_STATE: tuple[str, ...] = ()

    def backward_state(self) -> dict[str, Any]:
        """What :meth:`backward` reads from the last :meth:`forward`: name -> value.

        Arrays among the values may be work buffers that the next forward overwrites.
        """
        return {name: getattr(self, name) for name in self._BACKWARD_STATE}

    def restore_backward_state(self, state: dict[str, Any]) -> None:
        """Make ``state`` (from :meth:`backward_state`) what the next :meth:`backward` reads."""
        for name, value in state.items():
            setattr(self, name, value)

    # --- random generator (layers that draw random numbers: Dropout) --------------------
    def generator_state(self) -> tuple[int, ...] | None:
        """The state of the layer's random generator as host integers (None: it has none).

        Checkpoints save it and :func:`~gpubackprop.gradcheck` holds it fixed, so the
        same random numbers are drawn again after :meth:`set_generator_state`."""
        return None

    def set_generator_state(self, state: tuple[int, ...]) -> None:
        """Restore a state from :meth:`generator_state` (no generator: nothing to do)."""

    def advance_generator(self) -> None:
        """Advance the random generator as one training-mode forward would, without
        computing anything (no generator: nothing to do)."""

    # --- the door to gpubackprop.graph -------------------------------------------------
    def __call__(self, x: Tensor | Array) -> Tensor:
        """``layer(t)``: the layer as one coarse gate of a graph, y = layer.forward(t).

        The result is a :class:`~gpubackprop.Tensor` whose backward is this layer's
        own fused backward (∂L/∂x = Δ_Z W, dW = Δ_Zᵀ x, db = Δ_Zᵀ 1), so layers and
        primitive gates mix freely. A layer with no parameters yet is first built
        on the tensor's device and dtype (unseeded; see :meth:`build`).

        A door: the adapter is :func:`gpubackprop.graph.layer_gate`, imported on first
        use (graph sits above layers: it imports them).
        """
        from .graph import layer_gate

        return layer_gate(self, x)

    def parameter_tensors(self) -> dict[str, Tensor]:
        """Name -> graph Tensor over this layer's live parameter view (requires grad).

        After ``backward()`` each tensor's ``.grad`` holds ∂L/∂param summed over
        every call of the layer in the graph (while ``self.grads`` holds only the
        last call's, as the layer engine overwrites it). The same Tensor objects
        are returned every time, so their gradients accumulate like any tensor's.

        A door to :func:`gpubackprop.graph.parameter_tensors` (see :meth:`__call__`).
        """
        from .graph import parameter_tensors

        return parameter_tensors(self)

    # --- standalone use ------------------------------------------------------------------
    def build(self, device: str | Backend = "cpu", dtype: Any = "float32",
              seed: int | None = None) -> Layer:
        """Give a standalone layer parameters of its own; returns the layer.

        Its flat parameter and gradient buffers are allocated and W initialised (He
        or Xavier, from ``seed``) and b = 0, exactly as in a one-layer model (see
        :mod:`gpubackprop.params`); the layer is then layer 0 of its own buffers and
        cannot join a model. In a graph, update it through :meth:`parameter_tensors`
        (``t.data -= lr * t.grad`` writes into the flat buffer), whose gradients sum
        over every call.
        """
        if self.owner is not None:
            raise ConfigError(
                f"{self.label} already has parameters (it belongs to a model); "
                "build only a standalone layer"
            )
        LayerParameters(self, get_backend(device), resolve_dtype(dtype), seed)
        self.standalone = True
        return self


class Dense(Layer):
    """Fully connected layer ``a_out = f(a_in Wᵀ + b)``.

    Args:
        in_features: width of the input.
        out_features: width of the output.
        activation: name of a fused activation (see :mod:`gpubackprop.activations`),
            or None for a linear layer.
        bias: whether the layer has a bias b.

    The weight W has shape (out_features, in_features), as in z = W a + b.
    Initialisation (seeded by the model): He normal, std √(2/in), for the
    relu family; Xavier uniform, limit √(6/(in+out)), otherwise. Biases start at 0.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = check_int("Dense: in_features", in_features)
        self.out_features = check_int("Dense: out_features", out_features)
        self.activation: ActivationSpec = get_activation(activation)
        self.use_bias = bool(bias)
        self._input: Array | None = None
        self._saved: Array | None = None
        self._lead: tuple[int, ...] = ()

    _BACKWARD_STATE = ("_input", "_saved", "_lead")

    @property
    def weight_tensor(self) -> Tensor:
        """W (out, in) as a graph Tensor; ``.grad`` = ∂L/∂W after ``backward()``."""
        return self.parameter_tensors()["weight"]

    @property
    def bias_tensor(self) -> Tensor | None:
        """b (out,) as a graph Tensor (None without a bias); ``.grad`` = ∂L/∂b."""
        return self.parameter_tensors().get("bias")

    def describe(self) -> str:
        act = "" if self.activation.is_identity else f", {self.activation.name}"
        bias = "" if self.use_bias else ", no bias"
        return f"Dense {self.in_features}->{self.out_features}{act}{bias}"

    @property
    def input_features(self) -> int:
        return self.in_features

    def output_features(self, input_features: int | None) -> int:
        return self.out_features

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        shapes: list[tuple[str, tuple[int, ...]]] = [
            ("weight", (self.out_features, self.in_features))
        ]
        if self.use_bias:
            shapes.append(("bias", (self.out_features,)))
        return shapes

    def init_params(self, rng: np.random.Generator, host: dict[str, np.ndarray]) -> None:
        host["weight"][...] = he_or_xavier(
            rng, self.activation.init, self.out_features, self.in_features
        )
        if self.use_bias:
            host["bias"][...] = 0.0

    def _buffers(self, lead: tuple[int, ...]) -> dict[str, Array]:
        """Work buffers for inputs of leading shape ``lead``: ``out`` (*lead, out) and
        ``dx`` (*lead, in); ``dz`` and ``z`` as (rows, out) matrices."""
        def shapes() -> dict[str, tuple[int, ...]]:
            rows = (math.prod(lead), self.out_features)
            named: dict[str, tuple[int, ...]] = {
                "out": (*lead, self.out_features), "dx": (*lead, self.in_features)
            }
            if not self.activation.is_identity:
                named["dz"] = rows
                if self.activation.needs_input:
                    named["z"] = rows
            return named

        return self._workspace(lead, shapes)

    def forward(self, x: Array) -> Array:
        """Z = X Wᵀ + b, out = f(Z) over the rows of X = ``x`` as a (prod(lead), in) view."""
        assert self.backend is not None
        lead = x.shape[:-1]
        ws = self._buffers(lead)
        act, out = self.activation, ws["out"]
        rows, out_rows = (x, out) if len(lead) == 1 else (as_rows(x), as_rows(out))
        z = ws["z"] if act.needs_input else out_rows
        ops = self.backend.ops
        ops.matmul(rows, self.params["weight"], out=z, trans_b=True)
        ops.bias_activation_forward(act, z, self.params.get("bias"), out_rows)
        self._input, self._saved, self._lead = rows, z, lead
        return out

    def backward(self, delta: Array, need_input_grad: bool) -> Array | None:
        """Δ_Z = Δ ⊙ f′, dW = Δ_Zᵀ X and db = Δ_Zᵀ 1 over all rows; Δ_in = Δ_Z W."""
        if self._input is None:
            raise ShapeError(f"{self.label}: backward called before forward")
        assert self.backend is not None
        ws = self._buffers(self._lead)
        self._check_delta(delta, ws["out"].shape)  # (*lead, out)
        ops = self.backend.ops
        flat = len(self._lead) == 1
        dz = ops.activation_backward_bias_grad(
            self.activation, delta if flat else as_rows(delta), self._saved, ws.get("dz"),
            self.grads.get("bias"),
        )
        ops.matmul(dz, self._input, out=self.grads["weight"], trans_a=True)
        if not need_input_grad:
            return None
        dx = ws["dx"]
        ops.matmul(dz, self.params["weight"], out=dx if flat else as_rows(dx))
        return dx


class Activation(Layer):
    """A standalone activation layer ``a_out = f(a_in)``, ``Δ_in = Δ_out ⊙ f′``.

    The same functions as the activation fused into :class:`Dense`; use it after
    a linear Dense layer when you want the pre-activation as its own step.
    """

    def __init__(self, name: str | None) -> None:
        super().__init__()
        self.activation: ActivationSpec = get_activation(name)
        self._saved: Array | None = None
        self._shape: tuple[int, ...] = ()

    _BACKWARD_STATE = ("_saved", "_shape")

    def describe(self) -> str:
        return f"Activation {self.activation.name}"

    def forward(self, x: Array) -> Array:
        assert self.backend is not None
        shape = tuple(x.shape)  # the key: this layer takes any width
        ws = self._workspace(shape, lambda: {"out": shape, "dx": shape})
        self.backend.ops.activation_forward(self.activation, x, ws["out"])
        self._saved = x if self.activation.needs_input else ws["out"]
        self._shape = shape
        return ws["out"]

    def backward(self, delta: Array, need_input_grad: bool) -> Array | None:
        if self._saved is None:
            raise ShapeError(f"{self.label}: backward called before forward")
        self._check_delta(delta, self._shape)
        if not need_input_grad:
            return None
        assert self.backend is not None
        ws = self._workspace(self._shape, lambda: {"out": self._shape, "dx": self._shape})
        ops = self.backend.ops
        return ops.activation_backward(self.activation, delta, self._saved, ws["dx"])


class LayerParameters(FlatParameters):
    """The flat buffers of one standalone layer (what :meth:`Layer.build` gives it):
    allocated, attached as layer 0 and initialised as a one-layer model would be."""

    def __init__(self, layer: Layer, backend: Backend, dtype: np.dtype, seed: int | None) -> None:
        self.backend = backend
        self.dtype = dtype
        self.seed = seed
        shapes = layer.param_shapes()
        self.flat_params, self.flat_grads, params, grads = allocate_flat(
            backend, dtype, shapes, layer.describe()
        )
        layer.attach(self, 0, backend, dtype, params, grads)
        rng = seeded_rng(seed)
        initialise(backend, self.flat_params, shapes, lambda host: layer.init_params(rng, host))


__all__ = ["Activation", "Dense", "Layer", "LayerParameters"]
