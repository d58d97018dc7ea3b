"""The recurrent kernels on a GPU against their NumPy twins (``@pytest.mark.gpu``:
need CuPy and a GPU, skipped cleanly elsewhere): each of the four cell ops in float32
and float64 on odd shapes (one element, less than a warp, more than a block, more
than a grid), every output including the in-place ones; and an argument check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gpubackprop import kernels_recurrent
from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.errors import ShapeError

from .kernel_helpers import DTYPE_IDS, DTYPES, assert_close

pytestmark = pytest.mark.gpu

SHAPES = [(1, 1), (3, 7), (37, 129), (1031, 301)]  # the last: more elements than one grid

#: op -> (argument names, the (rows, G) gate width of each: 0 = (rows, H), -1 = (3H,))
OPS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "lstm_cell_forward": (("gates", "hh", "c_prev", "c", "h", "tanh_c"), (4, 4, 0, 0, 0, 0)),
    "lstm_cell_backward": (("gates", "c_prev", "tanh_c", "dh_out", "dh_next", "dc", "dgates"),
                           (4, 0, 0, 0, 0, 0, 4)),
    "gru_cell_forward": (("gates", "hh", "bias_hh", "h_prev", "h", "hn"), (3, 3, -1, 0, 0, 0)),
    "gru_cell_backward": (("gates", "hn", "h_prev", "dh_out", "dh_rec", "dh_carry", "dgx", "dgh"),
                          (3, 0, 0, 0, 0, 0, 3, 3)),
}


def _arrays(op: str, rows: int, hidden: int, dtype: Any, rng: np.random.Generator) -> list[Any]:
    """Random host arguments; gate values in (0, 1) for the backward ops (they read
    activated gates)."""
    out = []
    for width in OPS[op][1]:
        shape = (3 * hidden,) if width < 0 else (rows, (width or 1) * hidden)
        a = rng.uniform(0.01, 0.99, shape) if op.endswith("backward") and width > 0 \
            else rng.standard_normal(shape)
        out.append(a.astype(dtype))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", list(OPS))
def test_cell_kernels_match_numpy(
    op: str, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    import cupy

    host = _arrays(op, *shape, dtype, rng)
    device = [cupy.asarray(a) for a in host]
    getattr(NumpyOps(), op)(*host)
    getattr(kernels_recurrent, op)(*device)
    for name, want, got in zip(OPS[op][0], host, device, strict=True):
        assert_close(cupy.asnumpy(got), want, dtype, f"{op}: {name}")


def test_cell_kernel_checks_shapes() -> None:
    import cupy

    rows, hidden = 3, 5
    gates = cupy.zeros((rows, 4 * hidden))
    state = [cupy.zeros((rows, hidden)) for _ in range(4)]
    with pytest.raises(ShapeError, match=r"lstm_cell_forward: gates must have shape \(3, 20\)"):
        kernels_recurrent.lstm_cell_forward(gates[:, :-1].copy(), gates, *state)
    with pytest.raises(ShapeError, match=r"lstm_cell_forward: hh must have shape"):
        kernels_recurrent.lstm_cell_forward(gates, gates[:, :-1].copy(), *state)
