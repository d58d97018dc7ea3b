"""Gated recurrent layers: :class:`LSTM` and :class:`GRU` (PyTorch's layouts).

Both take batch-first sequences x (B, T, input_size) and return the hidden state of
every step (B, T, hidden_size); ``input_kind = "sequence"``. Parameters, with G gates
(G = 4 for LSTM, gate order i, f, g, o; G = 3 for GRU, order r, z, n)::

    weight_ih (G·H, input)   weight_hh (G·H, H)   bias_ih (G·H,)   bias_hh (G·H,)

initialised uniform in ±1/√H, as PyTorch does, so weights move between the two as they are.

One forward: every step's input projection is ONE GEMM before the time loop
(X Wᵢₕᵀ + b over all T·B rows); each step is one GEMM h_{t−1} W_hhᵀ and one fused
pointwise op (``ops.lstm_cell_forward`` / ``ops.gru_cell_forward``: one kernel on the
GPU). Backward runs the loop in reverse (one fused op and one GEMM per step), then the
parameter gradients are one GEMM each over all T·B rows (Σ_t Aᵀ_t B_t = [A_1; …]ᵀ[B_1; …]).
Work buffers are time-major (T, B, n), allocated once per (B, T): the loops allocate
nothing. The formulas are in docs/recurrent.md and the ops' docstrings.

State: ``forward_with_state(x, state) -> (out, final_state)`` for custom loops; inside a
Sequential, ``forward(x)`` starts from :attr:`Recurrent.initial_state` (None = zeros) and leaves
the final state in :attr:`Recurrent.final_state`. The final state is detached: truncated BPTT sets
``layer.initial_state = layer.final_state`` between windows, and backward stops there.
``forward_with_state`` returns it as new arrays; :attr:`Recurrent.final_state` holds views of the
layer's buffers (overwritten by the next forward, after it has read its initial state),
so a step in a Sequential allocates nothing and can be captured into a CUDA graph.
LSTM's state is a pair (h, c), GRU's an array h, each (B, H).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arrays import Array
from .checks import check_int
from .errors import DTypeError, ShapeError
from .layers import Layer


def check_sequence(label: str, x: Any, input_size: int) -> tuple[int, int, int]:
    """(B, T, input_size) of a batch-first sequence batch ``x``; ShapeError naming ``label``
    for another rank or width, or an empty batch or sequence."""
    shape = tuple(x.shape)
    if len(shape) != 3 or shape[2] != input_size:
        hint = " (one sequence? use x[None])" if len(shape) == 2 else ""
        raise ShapeError(
            f"{label}: expected x of shape (batch, time, {input_size}), got shape {shape}{hint}"
        )
    if shape[0] == 0 or shape[1] == 0:
        raise ShapeError(f"{label}: empty input (x of shape {shape})")
    return shape


class Recurrent(Layer):
    """What LSTM and GRU share: parameters, checks, buffers, the two time loops.

    A subclass names its gate count (:attr:`GATES`), its state arrays
    (:attr:`STATES`, each a (T+1, B, H) buffer whose slot 0 is the initial state), its
    extra per-step buffers, and the two per-step ops.
    """

    input_kind = "sequence"
    #: gates G: the parameters stack G blocks of H rows
    GATES = 1
    #: the state arrays, in the order of the public state tuple
    STATES: tuple[str, ...] = ("H",)
    #: extra time-major (T, B, H) buffers the cell keeps for backward
    SAVED: tuple[str, ...] = ()
    #: extra time-major (T, B, G·H) gradient buffers of the cell
    GATE_GRADS: tuple[str, ...] = ()
    #: extra (G·H,) work vectors of the cell
    GATE_VECTORS: tuple[str, ...] = ()

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        name = type(self).__name__
        self.input_size = check_int(f"{name}: input_size", input_size)
        self.hidden_size = check_int(f"{name}: hidden_size", hidden_size)
        #: the state :meth:`forward` starts from (None: zeros); see the module docstring
        self.initial_state: Any = None
        #: the state after the last :meth:`forward` (detached; the layer's buffers: copy it
        #: to keep it past the next forward)
        self.final_state: Any = None
        #: ∂L/∂initial_state after the last :meth:`backward` (the layer's buffers)
        self.grad_initial_state: Any = None
        self._last: dict[str, Array] | None = None

    _BACKWARD_STATE = ("_last",)

    # --- structure -------------------------------------------------------------------
    def describe(self) -> str:
        return f"{type(self).__name__} {self.input_size}->{self.hidden_size}"

    @property
    def input_features(self) -> int:
        return self.input_size

    def output_features(self, input_features: int | None) -> int:
        return self.hidden_size

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        rows = self.GATES * self.hidden_size
        return [
            ("weight_ih", (rows, self.input_size)),
            ("weight_hh", (rows, self.hidden_size)),
            ("bias_ih", (rows,)),
            ("bias_hh", (rows,)),
        ]

    def init_params(self, rng: np.random.Generator, host: dict[str, np.ndarray]) -> None:
        """Every parameter uniform in ±1/√H (PyTorch's initialisation)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, shape in self.param_shapes():
            host[name][...] = rng.uniform(-bound, bound, shape)

    # --- state -------------------------------------------------------------------------
    def _state_tuple(self, state: Any, batch: int, what: str) -> tuple[Array, ...] | None:
        """``state`` as a tuple of (B, H) arrays in :attr:`STATES` order (None stays None)."""
        if state is None:
            return None
        names = ", ".join(s.lower() for s in self.STATES)
        if len(self.STATES) > 1 and not isinstance(state, (tuple, list)):
            raise ShapeError(
                f"{self.label}: {what} must be the pair ({names}) of (batch, hidden) arrays, "
                f"got one {type(state).__name__}"
            )
        parts = tuple(state) if len(self.STATES) > 1 else (state,)
        if len(parts) != len(self.STATES):
            raise ShapeError(f"{self.label}: {what} must be ({names}), got {len(parts)} arrays")
        expected = (batch, self.hidden_size)
        assert self.backend is not None
        for name, part in zip(self.STATES, parts, strict=True):
            self.backend.check_array(part, f"{self.label}: {what} {name.lower()}")
            if tuple(part.shape) != expected:
                raise ShapeError(
                    f"{self.label}: expected {what} {name.lower()} of shape (batch, hidden) = "
                    f"{expected}, got shape {tuple(part.shape)}"
                )
        return parts

    def _public_state(self, parts: tuple[Array, ...]) -> Any:
        return parts if len(parts) > 1 else parts[0]

    # --- buffers ---------------------------------------------------------------------------
    def _buffers(self, batch: int, steps: int) -> dict[str, Array]:
        def shapes() -> dict[str, tuple[int, ...]]:
            h, gh, n_in = self.hidden_size, self.GATES * self.hidden_size, self.input_size
            named: dict[str, tuple[int, ...]] = {
                "X": (steps, batch, n_in), "dX": (steps, batch, n_in),
                "G": (steps, batch, gh), "dG": (steps, batch, gh), "dH": (steps, batch, h),
                "hh": (batch, gh), "dh_rec": (batch, h), "carry": (batch, h), "W_hhT": (h, gh),
                "out": (batch, steps, h), "dx": (batch, steps, n_in),
            }
            named |= {name: (steps + 1, batch, h) for name in self.STATES}
            named |= {name: (steps, batch, h) for name in self.SAVED}
            named |= {name: (steps, batch, gh) for name in self.GATE_GRADS}
            named |= {name: (gh,) for name in self.GATE_VECTORS}
            return named

        assert self.workspaces is not None
        return self.workspaces.get((batch, steps), shapes, self.dtype)

    # --- the cell (subclasses) ----------------------------------------------------------------
    def _input_bias(self, ws: dict[str, Array], rows: Array) -> None:
        """Add the biases that enter the precomputed input projection."""
        raise NotImplementedError

    def _step_forward(self, ws: dict[str, Array], t: int) -> None:
        """State t+1 from state t, with ws["G"][t] + ws["hh"] as the gates' pre-activations."""
        raise NotImplementedError

    def _step_backward(self, ws: dict[str, Array], t: int) -> Array:
        """Fill the step's gradients; return ∂L/∂(h_{t−1} W_hhᵀ + b_hh) (B, G·H)."""
        raise NotImplementedError

    def _grad_hh_rows(self, ws: dict[str, Array]) -> Array | None:
        """The (T·B, G·H) rows whose GEMMs give dW_hh and db_hh; None: the rows of ws["dG"]
        (those of dW_ih and db_ih)."""
        raise NotImplementedError

    def _grad_initial(self, ws: dict[str, Array]) -> tuple[Array, ...]:
        """∂L/∂state_0 (in work buffers), after the backward loop."""
        raise NotImplementedError

    # --- passes ----------------------------------------------------------------------------------
    def forward_with_state(self, x: Array, state: Any = None) -> tuple[Array, Any]:
        """Run ``x`` (B, T, input_size) from ``state`` (None: zeros).

        Returns ``(out, final_state)``: ``out`` (B, T, hidden) holds h_1 … h_T (the layer's
        own buffer, overwritten by the next forward of this shape), ``final_state`` the last
        step's state as new arrays (detached: the next window's ``state``).
        """
        out, final = self._forward(x, state)
        return out, self._public_state(tuple(part.copy() for part in final))

    def _forward(self, x: Array, state: Any) -> tuple[Array, tuple[Array, ...]]:
        """:meth:`forward_with_state` with the final state as views of the buffers."""
        assert self.backend is not None
        self.backend.check_array(x, f"{self.label}: x")
        if x.dtype.kind not in "biuf":
            raise DTypeError(f"{self.label}: x must be real numbers, got {x.dtype}")
        batch, steps, n_in = check_sequence(self.label, x, self.input_size)
        parts = self._state_tuple(state, batch, "initial state")
        ops, p = self.backend.ops, self.params
        with self.backend.activate():
            ws = self._buffers(batch, steps)
            ws["X"][...] = x.transpose(1, 0, 2)
            rows = ws["G"].reshape(steps * batch, self.GATES * self.hidden_size)
            ops.matmul(ws["X"].reshape(steps * batch, n_in), p["weight_ih"], out=rows,
                       trans_b=True)
            self._input_bias(ws, rows)
            for k, name in enumerate(self.STATES):
                ws[name][0][...] = 0 if parts is None else parts[k]
            # W_hhᵀ stored once per forward: the per-step GEMM h W_hhᵀ on a contiguous
            # (H, G·H) operand ran 0.78 ms against 1.0 ms through the transpose flag.
            # Copied one (H, H) gate block at a time: 1.5 ms against 4.6 ms for the whole
            # (G·H, H) transpose at H = 512 (a source row stride of H, not G·H, per block)
            h = self.hidden_size
            for k in range(self.GATES):
                ws["W_hhT"][:, k * h:(k + 1) * h] = p["weight_hh"][k * h:(k + 1) * h].T
            for t in range(steps):
                ops.matmul(ws["H"][t], ws["W_hhT"], out=ws["hh"])
                self._step_forward(ws, t)
            ws["out"][...] = ws["H"][1:].transpose(1, 0, 2)
            self._last = ws
            final = tuple(ws[name][steps] for name in self.STATES)
        return ws["out"], final

    def forward(self, x: Array) -> Array:
        """``out`` of :meth:`forward_with_state` from :attr:`initial_state`; the final
        state goes to :attr:`final_state`."""
        out, final = self._forward(x, self.initial_state)
        self.final_state = self._public_state(final)
        return out

    def backward_with_state(
        self, delta: Array, grad_final_state: Any = None, need_input_grad: bool = True
    ) -> tuple[Array | None, Any]:
        """Backprop through time for the last forward.

        ``delta`` = ∂L/∂out (B, T, hidden); ``grad_final_state`` an extra ∂L/∂final_state
        (None: 0). Writes every parameter gradient (overwriting) and returns
        ``(dx, grad_initial_state)``: ∂L/∂x (B, T, input), the layer's own buffer, or None
        without ``need_input_grad``; ∂L/∂initial_state as new arrays.
        """
        dx, grad_initial = self._backward(delta, grad_final_state, need_input_grad)
        return dx, self._public_state(tuple(part.copy() for part in grad_initial))

    def _backward(
        self, delta: Array, grad_final_state: Any, need_input_grad: bool
    ) -> tuple[Array | None, tuple[Array, ...]]:
        """:meth:`backward_with_state` with ∂L/∂initial state in the buffers."""
        if self._last is None:
            raise ShapeError(f"{self.label}: backward called before forward")
        assert self.backend is not None
        ws = self._last
        steps, batch, n_in = ws["X"].shape
        self._check_delta(delta, (batch, steps, self.hidden_size))
        final = self._state_tuple(grad_final_state, batch, "grad_final_state")
        ops, p, g = self.backend.ops, self.params, self.grads
        gh = self.GATES * self.hidden_size
        with self.backend.activate():
            ws["dH"][...] = delta.transpose(1, 0, 2)
            ws["dh_rec"][...] = 0 if final is None else final[0]
            ws["carry"][...] = 0 if final is None or len(final) == 1 else final[1]
            for t in range(steps - 1, -1, -1):
                ops.matmul(self._step_backward(ws, t), p["weight_hh"], out=ws["dh_rec"])
            rows_x = ws["dG"].reshape(steps * batch, gh)
            ops.matmul(rows_x, ws["X"].reshape(steps * batch, n_in), out=g["weight_ih"],
                       trans_a=True)
            ops.column_sum(rows_x, out=g["bias_ih"])
            rows_h = self._grad_hh_rows(ws)
            if rows_h is None:  # the same rows: the same sum
                rows_h = rows_x
                g["bias_hh"][...] = g["bias_ih"]
            else:
                ops.column_sum(rows_h, out=g["bias_hh"])
            hidden_rows = ws["H"][:steps].reshape(steps * batch, self.hidden_size)
            ops.matmul(rows_h, hidden_rows, out=g["weight_hh"], trans_a=True)
            grad_initial = self._grad_initial(ws)
            if not need_input_grad:
                return None, grad_initial
            ops.matmul(rows_x, p["weight_ih"], out=ws["dX"].reshape(steps * batch, n_in))
            ws["dx"][...] = ws["dX"].transpose(1, 0, 2)
        return ws["dx"], grad_initial

    def backward(self, delta: Array, need_input_grad: bool) -> Array | None:
        """:meth:`backward_with_state` with no gradient on the final state; ∂L/∂initial
        state goes to :attr:`grad_initial_state`."""
        dx, grad_initial = self._backward(delta, None, need_input_grad)
        self.grad_initial_state = self._public_state(grad_initial)
        return dx


class LSTM(Recurrent):
    """Long short-term memory over batch-first sequences, PyTorch's ``nn.LSTM`` cell.

    Args:
        input_size: features per step of x (B, T, input_size).
        hidden_size: H, the width of h and c.

    Per step, with gates a = x_t Wᵢₕᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh split as i, f, g, o::

        i, f, o = σ(a_i), σ(a_f), σ(a_o)     g = tanh(a_g)
        c_t = f ⊙ c_{t−1} + i ⊙ g            h_t = o ⊙ tanh(c_t)

    The state is the pair (h, c), each (B, H). See the module docstring for buffers,
    state handling and truncated BPTT.
    """

    GATES = 4
    STATES = ("H", "C")
    SAVED = ("TC",)
    GATE_VECTORS = ("bias",)

    def _input_bias(self, ws: dict[str, Array], rows: Array) -> None:
        assert self.backend is not None
        # b_ih + b_hh first: one pass over the (T·B, 4H) rows instead of two
        bias = self.backend.xp.add(self.params["bias_ih"], self.params["bias_hh"],
                                   out=ws["bias"])
        self.backend.ops.add_bias(rows, bias)

    def _step_forward(self, ws: dict[str, Array], t: int) -> None:
        assert self.backend is not None
        self.backend.ops.lstm_cell_forward(
            ws["G"][t], ws["hh"], ws["C"][t], ws["C"][t + 1], ws["H"][t + 1], ws["TC"][t]
        )

    def _step_backward(self, ws: dict[str, Array], t: int) -> Array:
        assert self.backend is not None
        return self.backend.ops.lstm_cell_backward(
            ws["G"][t], ws["C"][t], ws["TC"][t], ws["dH"][t], ws["dh_rec"], ws["carry"],
            ws["dG"][t],
        )

    def _grad_hh_rows(self, ws: dict[str, Array]) -> Array | None:
        return None  # both biases and both GEMMs enter the gates alike

    def _grad_initial(self, ws: dict[str, Array]) -> tuple[Array, ...]:
        return ws["dh_rec"], ws["carry"]


class GRU(Recurrent):
    """Gated recurrent unit over batch-first sequences, PyTorch's ``nn.GRU`` cell.

    Args:
        input_size: features per step of x (B, T, input_size).
        hidden_size: H, the width of h.

    Per step, gate blocks r, z, n of Wᵢₕ, W_hh, b_ih, b_hh::

        r = σ(W_ir x + b_ir + W_hr h + b_hr)     z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h

    The state is h (B, H). See the module docstring for buffers, state handling and
    truncated BPTT.
    """

    GATES = 3
    STATES = ("H",)
    SAVED = ("HN",)
    GATE_GRADS = ("dGh",)

    def _input_bias(self, ws: dict[str, Array], rows: Array) -> None:
        assert self.backend is not None
        self.backend.ops.add_bias(rows, self.params["bias_ih"])

    def _step_forward(self, ws: dict[str, Array], t: int) -> None:
        assert self.backend is not None
        self.backend.ops.gru_cell_forward(
            ws["G"][t], ws["hh"], self.params["bias_hh"], ws["H"][t], ws["H"][t + 1],
            ws["HN"][t],
        )

    def _step_backward(self, ws: dict[str, Array], t: int) -> Array:
        assert self.backend is not None
        self.backend.ops.gru_cell_backward(
            ws["G"][t], ws["HN"][t], ws["H"][t], ws["dH"][t], ws["dh_rec"], ws["carry"],
            ws["dG"][t], ws["dGh"][t],
        )
        return ws["dGh"][t]

    def _grad_hh_rows(self, ws: dict[str, Array]) -> Array:
        steps, batch, gh = ws["dGh"].shape
        return ws["dGh"].reshape(steps * batch, gh)

    def _grad_initial(self, ws: dict[str, Array]) -> tuple[Array, ...]:
        assert self.backend is not None
        return (self.backend.xp.add(ws["dh_rec"], ws["carry"], out=ws["carry"]),)


__all__ = ["GRU", "LSTM", "Recurrent", "check_sequence"]
