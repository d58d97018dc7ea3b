"""Launchers of the recurrent kernels (``kernels/recurrent.cu``): one LSTM or GRU step's
pointwise part, one launch each way.

Each checks every argument before launching, as :mod:`gpubackprop.kernels` does
(cupy arrays on one device, one float dtype, the expected shapes, C-contiguous, no
output overlapping another argument), then launches one grid-stride kernel over the
(rows, H) state elements on the current stream (capturable). The math is the NumPy
reference's (``NumpyOps.lstm_cell_forward`` and the three others in
:mod:`gpubackprop.backend.numpy_ops`).
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .arrays import Array
from .errors import ShapeError


def _cell(
    args: kernels.LaunchArgs, gates: Array, name: str, state: Array, gate_count: int, *,
    gates_out: bool, state_out: bool = False,
) -> tuple[Array, Array, int, int]:
    """``gates`` (rows, G·H) and the (rows, H) state ``name`` checked, in that order of
    sizes: returns (gates, state, rows, H)."""
    state = args.array(name, state, ndim=2, output=state_out)
    rows, hidden = (int(d) for d in state.shape)
    if rows * hidden * gate_count > 2**31 - 1:
        raise ShapeError(
            f"kernels.{args.kernel}: {rows} x {gate_count * hidden} gates exceed the int32 limit"
        )
    gates = args.array("gates", gates, shape=(rows, gate_count * hidden), output=gates_out)
    return gates, state, rows, hidden


def _launch(args: kernels.LaunchArgs, rows: int, hidden: int, *arrays: Array | None) -> None:
    assert args.dtype is not None
    kernel = kernels.get_kernel(args.kernel, args.dtype)
    if rows * hidden:
        args.grid_stride(kernel, rows * hidden, (*arrays, np.int32(rows), np.int32(hidden)))


def lstm_cell_forward(
    gates: Array, hh: Array, c_prev: Array, c: Array, h: Array, tanh_c: Array
) -> Array:
    """One LSTM step's pointwise part (``NumpyOps.lstm_cell_forward``): ``gates`` and
    ``hh`` (rows, 4H), ``gates`` overwritten with [i, f, g, o]; ``c_prev``, ``c``, ``h``,
    ``tanh_c`` (rows, H). Returns ``h``."""
    args = kernels.LaunchArgs("lstm_cell_forward")
    gates, c_prev, rows, hidden = _cell(args, gates, "c_prev", c_prev, 4, gates_out=True)
    hh = args.array("hh", hh, shape=gates.shape)
    c, h, tanh_c = (args.array(name, a, shape=(rows, hidden), output=True)
                    for name, a in (("c", c), ("h", h), ("tanh_c", tanh_c)))
    args.no_overlap()
    _launch(args, rows, hidden, gates, hh, c_prev, c, h, tanh_c)
    return h


def lstm_cell_backward(
    gates: Array, c_prev: Array, tanh_c: Array, dh_out: Array, dh_next: Array, dc: Array,
    dgates: Array,
) -> Array:
    """Backward of :func:`lstm_cell_forward` (``NumpyOps.lstm_cell_backward``): ``dc``
    (rows, H) in and out, ``dgates`` (rows, 4H) written. Returns ``dgates``."""
    args = kernels.LaunchArgs("lstm_cell_backward")
    gates, dc, rows, hidden = _cell(args, gates, "dc", dc, 4, gates_out=False, state_out=True)
    c_prev, tanh_c, dh_out, dh_next = (
        args.array(name, a, shape=(rows, hidden))
        for name, a in (("c_prev", c_prev), ("tanh_c", tanh_c), ("dh_out", dh_out),
                        ("dh_next", dh_next))
    )
    dgates = args.array("dgates", dgates, shape=gates.shape, output=True)
    args.no_overlap()
    _launch(args, rows, hidden, gates, c_prev, tanh_c, dh_out, dh_next, dc, dgates)
    return dgates


def gru_cell_forward(
    gates: Array, hh: Array, bias_hh: Array, h_prev: Array, h: Array, hn: Array
) -> Array:
    """One GRU step's pointwise part (``NumpyOps.gru_cell_forward``): ``gates`` and
    ``hh`` (rows, 3H), ``gates`` overwritten with [r, z, n]; ``bias_hh`` (3H,); ``h_prev``,
    ``h``, ``hn`` (rows, H). Returns ``h``."""
    args = kernels.LaunchArgs("gru_cell_forward")
    gates, h_prev, rows, hidden = _cell(args, gates, "h_prev", h_prev, 3, gates_out=True)
    hh = args.array("hh", hh, shape=gates.shape)
    bias_hh = args.array("bias_hh", bias_hh, shape=(3 * hidden,))
    h, hn = (args.array(name, a, shape=(rows, hidden), output=True)
             for name, a in (("h", h), ("hn", hn)))
    args.no_overlap()
    _launch(args, rows, hidden, gates, hh, bias_hh, h_prev, h, hn)
    return h


def gru_cell_backward(
    gates: Array, hn: Array, h_prev: Array, dh_out: Array, dh_rec: Array, dh_carry: Array,
    dgx: Array, dgh: Array,
) -> Array:
    """Backward of :func:`gru_cell_forward` (``NumpyOps.gru_cell_backward``):
    ``dh_carry`` (rows, H) in and out, ``dgx`` and ``dgh`` (rows, 3H) written. Returns
    ``dgx``."""
    args = kernels.LaunchArgs("gru_cell_backward")
    gates, h_prev, rows, hidden = _cell(args, gates, "h_prev", h_prev, 3, gates_out=False)
    hn, dh_out, dh_rec = (args.array(name, a, shape=(rows, hidden))
                          for name, a in (("hn", hn), ("dh_out", dh_out), ("dh_rec", dh_rec)))
    dh_carry = args.array("dh_carry", dh_carry, shape=(rows, hidden), output=True)
    dgx, dgh = (args.array(name, a, shape=gates.shape, output=True)
                for name, a in (("dgx", dgx), ("dgh", dgh)))
    args.no_overlap()
    _launch(args, rows, hidden, gates, hn, h_prev, dh_out, dh_rec, dh_carry, dgx, dgh)
    return dgx


__all__ = ["gru_cell_backward", "gru_cell_forward", "lstm_cell_backward", "lstm_cell_forward"]
