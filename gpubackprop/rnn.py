"""A vanilla recurrent network with backprop through time, and gradient clipping.

:class:`RNN` runs a batch of sequences through one recurrent layer::

    h_t = f(x_t Wxhᵀ + h_{t−1} Whhᵀ + b_h)        t = 1 .. T,  h_0 given (or 0)

with x_t (B, input), h_t (B, hidden), Wxh (hidden, input), Whh (hidden, hidden),
f = tanh or relu. Backward is BPTT with the seed notes' ``dhnext`` recurrence
(README.md), batch-major (their ``Whhᵀ dhraw`` is our ``dhraw Whh``), t = T .. 1::

    dh     = ∂L/∂h_t + dhnext                    (dhnext = ∂L/∂h_T, or 0, at t = T)
    dhraw  = dh ⊙ f′                             (tanh: 1 − h_t²;  relu: [h_t > 0])
    dhnext = dhraw Whh                           (∂L/∂h_{t−1} through the recurrence)

and the parameter gradients are the sums of the per-step terms::

    dWxh = Σ_t dhraw_tᵀ x_t      dWhh = Σ_t dhraw_tᵀ h_{t−1}      db_h = Σ_t dhraw_tᵀ 1

Only the dhnext recurrence is sequential: the per-step terms are summed by one GEMM
over all T·B rows after the loop (Σ_t Aᵀ_t B_t = [A_1; …; A_T]ᵀ [B_1; …; B_T]), and
every step's x_t Wxhᵀ is one GEMM before it. Work buffers are time-major, (T, B, n),
so each step's slice is a contiguous (B, n) matrix for cuBLAS; they are allocated
once per (B, T), so the time loops allocate nothing.

Truncated BPTT: pass the previous window's ``h_T`` as the next ``h0``. ``forward``
returns h_T as a new array, so it is *detached*: backward stops at h0.

:class:`RNN` is also a :class:`~gpubackprop.Layer` (``input_kind = "sequence"``) that can
stand in a :class:`~gpubackprop.Sequential`: see its docstring for the two protocols.
:func:`clip_grad_norm` rescales gradients whose global L2 norm is too large.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from .activations import get_activation
from .arrays import Array
from .backend import Backend, backend_of, get_backend, is_cupy_array
from .checks import check_int, check_real
from .errors import ConfigError, DTypeError, ShapeError
from .layers import Layer
from .layers_recurrent import check_sequence
from .params import (
    FlatParameters,
    Workspaces,
    allocate_flat,
    he_or_xavier,
    initialise,
    resolve_dtype,
    seeded_rng,
)

#: The nonlinearities f an RNN may use (both have f′ as a function of the output h).
NONLINEARITIES = ("tanh", "relu")


def checked_array(backend: Backend, x: Any, what: str, kinds: str, expected: str) -> Array:
    """``x`` (a list or tuple too, on the CPU) as an array of ``backend``'s device whose
    dtype kind is in ``kinds``: DeviceError, or DTypeError "<what> must be <expected>"."""
    if not backend.is_gpu and isinstance(x, (list, tuple)):
        x = np.asarray(x)
    backend.check_array(x, what)
    if x.dtype.kind not in kinds:
        raise DTypeError(f"{what} must be {expected}, got {x.dtype}")
    return x


class NamedParameters(FlatParameters):
    """An owner of flat buffers whose ``params`` / ``grads`` name live views into them."""

    flat_grads: Array
    params: dict[str, Array]
    grads: dict[str, Array]

    def parameters(self) -> OrderedDict[str, Array]:
        """Parameter name -> live view of ``flat_params``, in buffer order."""
        return OrderedDict(self.params)

    def gradients(self) -> OrderedDict[str, Array]:
        """The same names -> live views of ``flat_grads``."""
        return OrderedDict(self.grads)


class RNN(Layer, NamedParameters):
    """A vanilla RNN over a batch of sequences: h_t = f(x_t Wxhᵀ + h_{t−1} Whhᵀ + b_h).

    Args:
        input_size: features per time step of the input x.
        hidden_size: width of the hidden state h.
        nonlinearity: ``"tanh"`` (default) or ``"relu"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype: ``"float32"`` (default) or ``"float64"``.
        seed: seeds the initialisation (an int, a NumPy Generator to draw from, or
            None); the same seed gives the same weights on every device.

    ``optimizer.step(rnn.flat_params, rnn.flat_grads)`` updates every parameter;
    :meth:`parameters` / :meth:`gradients` name the views ``"Wxh"``, ``"Whh"``, ``"bh"``.

    Initialisation: Wxh Xavier uniform, limit √(6/(input+hidden)), for tanh and He
    normal, std √(2/input), for relu; Whh a uniformly random orthogonal matrix (QR of
    a Gaussian, column signs fixed): singular values of 1 keep ‖h_{t−1} Whhᵀ‖ =
    ‖h_{t−1}‖, so signals neither explode nor vanish through it; b_h = 0.

    Two protocols. *Standalone* (as constructed, with parameters of its own on
    ``device``): ``forward(x, h0) -> (H, h_T)`` and ``backward(grad_h, grad_h_last) -> dx``
    return new arrays. *As a layer* (once a :class:`~gpubackprop.Sequential` or
    :meth:`~gpubackprop.Layer.build` gave it parameters: ``owner`` is set; the model
    initialises them afresh from its seed, in its own buffers, on its device):
    ``forward(x) -> H`` starts from :attr:`initial_state` (None: zeros) and leaves h_T in
    :attr:`final_state`; ``backward(delta, need_input_grad) -> dx`` leaves ∂L/∂h0 in
    :attr:`grad_initial_state`; the results are the layer's own buffers. Both protocols
    run :meth:`forward_with_state` / :meth:`backward_with_state`.
    """

    input_kind = "sequence"
    #: always set (a Layer's are None until it has parameters)
    backend: Backend
    dtype: np.dtype

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "tanh",
        *,
        device: str | Backend = "auto",
        dtype: Any = "float32",
        seed: int | np.random.Generator | None = None,
    ) -> None:
        Layer.__init__(self)
        self.input_size = check_int("RNN: input_size", input_size)
        self.hidden_size = check_int("RNN: hidden_size", hidden_size)
        if nonlinearity not in NONLINEARITIES:
            raise ConfigError(
                f"RNN: nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}"
            )
        self.activation = get_activation(nonlinearity)
        self.backend = get_backend(device)
        self.dtype = resolve_dtype(dtype)
        shapes = self.param_shapes()
        self.flat_params, self.flat_grads, self.params, self.grads = allocate_flat(
            self.backend, self.dtype, shapes, self.describe()
        )
        rng = seeded_rng(seed)
        initialise(
            self.backend, self.flat_params, shapes, lambda host: self.init_params(rng, host)
        )
        self.workspaces = Workspaces(self.backend, self.describe)
        self._last: dict[str, Array] | None = None  # buffers of the last forward
        #: ∂L/∂h0 of the last :meth:`backward` (a new array; as a layer, the RNN's buffer),
        #: None before one
        self.grad_h0: Array | None = None
        #: as a layer: the h0 :meth:`forward` starts from (None: zeros)
        self.initial_state: Array | None = None
        #: as a layer: h_T of the last :meth:`forward` (detached; a view of the RNN's
        #: buffers, overwritten by the next forward: copy it to keep it)
        self.final_state: Array | None = None
        #: as a layer: ∂L/∂h0 of the last :meth:`backward` (the RNN's buffer)
        self.grad_initial_state: Array | None = None

    _BACKWARD_STATE = ("_last",)

    # --- description -------------------------------------------------------------
    def describe(self) -> str:
        return f"RNN {self.input_size}->{self.hidden_size}, {self.activation.name}"

    def __repr__(self) -> str:
        return (
            f"RNN({self.input_size}, {self.hidden_size}, {self.activation.name!r}, "
            f"device={self.device!r}, dtype={self.dtype.name!r})"
        )

    @property
    def _who(self) -> str:
        """How errors name it: the layer label in a model, else its description."""
        return self.label if self.owner is not None else self.describe()

    # --- structure ---------------------------------------------------------------------
    @property
    def input_features(self) -> int:
        return self.input_size

    def output_features(self, input_features: int | None) -> int:
        return self.hidden_size

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of the parameters, in buffer order."""
        h = self.hidden_size
        return [("Wxh", (h, self.input_size)), ("Whh", (h, h)), ("bh", (h,))]

    # --- parameters ------------------------------------------------------------------
    def init_params(self, rng: np.random.Generator, host: dict[str, np.ndarray]) -> None:
        """Wxh He or Xavier, Whh random orthogonal, b_h = 0 (class docstring)."""
        h = self.hidden_size
        host["Wxh"][...] = he_or_xavier(rng, self.activation.init, h, self.input_size)
        q, r = np.linalg.qr(rng.standard_normal((h, h)))
        host["Whh"][...] = q * np.where(np.diag(r) < 0, -1.0, 1.0)
        host["bh"][...] = 0.0

    # --- the recurrence over time-major buffers --------------------------------------------
    def recurrence_buffers(
        self, batch: int, steps: int, extra: Mapping[str, tuple[tuple[int, ...], Any]]
    ) -> dict[str, Array]:
        """Buffers for (B, T): U, dH, dhraw (T, B, h), H (T+1, B, h), dh, dhnext (B, h).

        ``U[t]`` holds x_t Wxhᵀ + b_h, ``H[t]`` holds h_t (``H[0]`` = h0), ``dH[t]``
        the incoming ∂L/∂h_{t+1}, ``dhraw[t]`` the step's dhraw. ``extra`` adds the
        caller's own buffers, name -> (shape, dtype); they are part of the cache key.
        """
        h, d = self.hidden_size, self.dtype
        shapes: dict[str, tuple[tuple[int, ...], Any]] = {"H": ((steps + 1, batch, h), d)}
        shapes |= {name: ((steps, batch, h), d) for name in ("U", "dH", "dhraw")}
        shapes |= {name: ((batch, h), d) for name in ("dh", "dhnext")}
        assert self.workspaces is not None
        return self.workspaces.get((batch, steps, *sorted(extra)), {**shapes, **extra})

    def run_forward(self, ws: dict[str, Array], h0: Array | None) -> None:
        """H[t+1] = f(H[t] Whhᵀ + U[t]) for t = 0 .. T−1, with H[0] = h0 (or 0)."""
        xp, ops, act = self.backend.xp, self.backend.ops, self.activation
        hs, us, whh = ws["H"], ws["U"], self.params["Whh"]
        hs[0][...] = 0 if h0 is None else h0
        for t in range(us.shape[0]):
            z = hs[t + 1]
            ops.matmul(hs[t], whh, out=z, trans_b=True)
            xp.add(z, us[t], out=z)
            ops.activation_forward(act, z, z)

    def run_backward(self, ws: dict[str, Array], dh_last: Array | None) -> Array:
        """BPTT over the buffers of the last forward: fills dhraw, dWhh and db_h.

        ``ws["dH"]`` must hold ∂L/∂h_t for every step; ``dh_last`` is an extra
        ∂L/∂h_T (None: 0). Returns ∂L/∂h0 (the ``dhnext`` buffer, overwritten by
        the next backward).
        """
        xp, ops, act = self.backend.xp, self.backend.ops, self.activation
        hs, d_hs, dhraw = ws["H"], ws["dH"], ws["dhraw"]
        dh, dhnext, whh = ws["dh"], ws["dhnext"], self.params["Whh"]
        dhnext[...] = 0 if dh_last is None else dh_last
        steps, batch, hidden = dhraw.shape
        for t in range(steps - 1, -1, -1):
            xp.add(d_hs[t], dhnext, out=dh)
            ops.activation_backward(act, dh, hs[t + 1], dhraw[t])
            ops.matmul(dhraw[t], whh, out=dhnext)
        rows = dhraw.reshape(steps * batch, hidden)
        ops.matmul(rows, hs[:steps].reshape(steps * batch, hidden), out=self.grads["Whh"],
                   trans_a=True)
        ops.column_sum(rows, out=self.grads["bh"])
        return dhnext

    # --- input checks ------------------------------------------------------------------
    def _float_array(self, x: Any, what: str) -> Array:
        return checked_array(self.backend, x, f"{self._who}: {what}", "biuf", "real numbers")

    def check_state(self, h: Any, batch: int, what: str) -> Array:
        """A (batch, hidden) state such as h0 or dh_T, validated."""
        h = self._float_array(h, what)
        if tuple(h.shape) != (batch, self.hidden_size):
            raise ShapeError(
                f"{self._who}: expected {what} of shape (batch, hidden) = "
                f"({batch}, {self.hidden_size}), got shape {tuple(h.shape)}"
            )
        return h

    # --- passes ----------------------------------------------------------------------------
    def forward_with_state(self, x: Any, h0: Any = None) -> tuple[Array, Array]:
        """Run the sequences ``x`` (B, T, input_size) from ``h0`` (B, hidden) or zeros.

        Returns ``(H, h_T)``: every hidden state H (B, T, hidden), H[:, t] = h_{t+1}, in
        the RNN's own buffer (overwritten by the next forward of this shape), and h_T
        (B, hidden) as a new array, the next window's ``h0`` (detached: module docstring).
        """
        out, h_last = self._forward(x, h0)
        return out, h_last.copy()

    def _forward(self, x: Any, h0: Any) -> tuple[Array, Array]:
        """:meth:`forward_with_state` with h_T as a view of the buffers."""
        x = self._float_array(x, "x")
        batch, steps, n_in = check_sequence(self._who, x, self.input_size)
        h0 = None if h0 is None else self.check_state(h0, batch, "h0")
        ops, d = self.backend.ops, self.dtype
        with self.backend.activate():
            ws = self.recurrence_buffers(batch, steps, {
                "X": ((steps, batch, n_in), d), "dX": ((steps, batch, n_in), d),
                "out": ((batch, steps, self.hidden_size), d), "dx": ((batch, steps, n_in), d),
            })
            ws["X"][...] = x.transpose(1, 0, 2)
            us = ws["U"].reshape(steps * batch, self.hidden_size)
            ops.matmul(ws["X"].reshape(steps * batch, n_in), self.params["Wxh"], out=us,
                       trans_b=True)
            ops.add_bias(us, self.params["bh"])
            self.run_forward(ws, h0)
            self._last = ws
            hs = ws["H"]
            ws["out"][...] = hs[1:].transpose(1, 0, 2)
            return ws["out"], hs[steps]

    def forward(self, x: Any, h0: Any = None) -> Any:
        """Standalone: new arrays ``(H, h_T)`` of :meth:`forward_with_state` from ``h0``.

        As a layer (class docstring): H (its own buffer) from :attr:`initial_state`,
        h_T left in :attr:`final_state`.
        """
        if self.owner is not None:
            out, self.final_state = self._forward(x, self.initial_state)
            return out
        hs, h_last = self.forward_with_state(x, h0)
        return hs.copy(), h_last

    __call__ = forward

    def backward_with_state(
        self, grad_h: Any, grad_h_last: Any = None, need_input_grad: bool = True
    ) -> tuple[Array | None, Array]:
        """Backprop through time for the last :meth:`forward`.

        ``grad_h`` is ∂L/∂H (B, T, hidden), like forward's H; ``grad_h_last`` an extra
        ∂L/∂h_T (B, hidden), e.g. from a loss on the final state, or None. Writes dWxh,
        dWhh and db_h (overwriting) and returns ``(dx, dh0)``: ∂L/∂x (B, T, input_size)
        in the RNN's own buffer (None without ``need_input_grad``) and ∂L/∂h0 (a new array).
        """
        dx, dh0 = self._backward(grad_h, grad_h_last, need_input_grad)
        return dx, dh0.copy()

    def _backward(
        self, grad_h: Any, grad_h_last: Any, need_input_grad: bool
    ) -> tuple[Array | None, Array]:
        """:meth:`backward_with_state` with ∂L/∂h0 in the ``dhnext`` buffer."""
        if self._last is None:
            raise ShapeError(f"{self._who}: backward called before forward")
        ws = self._last
        steps, batch, n_in = ws["X"].shape
        grad_h = self._float_array(grad_h, "grad_h")
        expected = (batch, steps, self.hidden_size)
        if tuple(grad_h.shape) != expected:
            raise ShapeError(
                f"{self._who}: expected grad_h of shape {expected} (the shape of the "
                f"last forward's H), got shape {tuple(grad_h.shape)}"
            )
        if grad_h_last is not None:
            grad_h_last = self.check_state(grad_h_last, batch, "grad_h_last")
        ops = self.backend.ops
        with self.backend.activate():
            ws["dH"][...] = grad_h.transpose(1, 0, 2)
            dh0 = self.run_backward(ws, grad_h_last)
            rows = ws["dhraw"].reshape(steps * batch, self.hidden_size)
            ops.matmul(rows, ws["X"].reshape(steps * batch, n_in), out=self.grads["Wxh"],
                       trans_a=True)
            if not need_input_grad:
                return None, dh0
            ops.matmul(rows, self.params["Wxh"], out=ws["dX"].reshape(steps * batch, n_in))
            ws["dx"][...] = ws["dX"].transpose(1, 0, 2)
            return ws["dx"], dh0

    def backward(self, grad_h: Any, grad_h_last: Any = None) -> Any:
        """Standalone: ∂L/∂x as a new array; :attr:`grad_h0` = ∂L/∂h0 (see
        :meth:`backward_with_state`; ``grad_h_last`` an extra ∂L/∂h_T or None).

        As a layer, Sequential calls ``backward(delta, need_input_grad)``: the second
        argument is that flag; ∂L/∂x comes in the layer's own buffer (None when not
        needed) and ∂L/∂h0 goes to :attr:`grad_initial_state` (and :attr:`grad_h0`).
        """
        if self.owner is not None:
            dx, self.grad_initial_state = self._backward(grad_h, None, bool(grad_h_last))
            self.grad_h0 = self.grad_initial_state
            return dx
        dx, self.grad_h0 = self.backward_with_state(grad_h, grad_h_last)
        assert dx is not None
        return dx.copy()


def clip_grad_norm(grads: Any, max_norm: float) -> float:
    """Scale gradients in place so that their global L2 norm is at most ``max_norm``.

    ``grads`` is one array (e.g. ``flat_grads``) or a list / dict of arrays, all NumPy
    or all CuPy. With ‖g‖ = √(Σ_arrays Σ_i g_i²) (``ops.global_norm``, as the
    optimizers' ``max_grad_norm``), every array is multiplied by max_norm / (‖g‖ + 1e-6)
    when ‖g‖ > max_norm (PyTorch's ``clip_grad_norm_``). A non-finite norm scales
    nothing. Returns the norm *before* clipping, as a float.
    """
    if check_real("clip_grad_norm: max_norm", max_norm) <= 0:
        raise ConfigError(f"clip_grad_norm: max_norm must be positive, got {max_norm}")
    if isinstance(grads, Mapping):
        grads = list(grads.values())
    arrays = list(grads) if isinstance(grads, (list, tuple)) else [grads]
    for i, g in enumerate(arrays):
        if not (isinstance(g, np.ndarray) or is_cupy_array(g)) or g.dtype.kind != "f":
            raise DTypeError(
                f"clip_grad_norm: gradient {i} must be a float NumPy or CuPy array, "
                f"got {getattr(g, 'dtype', type(g).__name__)}"
            )
    norm = backend_of(arrays[0]).ops.global_norm(arrays) if arrays else 0.0
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in arrays:
            g *= scale
    return norm


__all__ = ["NONLINEARITIES", "RNN", "NamedParameters", "checked_array", "clip_grad_norm"]
