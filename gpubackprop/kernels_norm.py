"""Launchers of the LayerNorm and Dropout kernels (``kernels/norm.cu``, ``kernels/dropout.cu``).

As the wrappers of :mod:`gpubackprop.kernels` (whose loader compiles these families and
whose :class:`~gpubackprop.kernels.LaunchArgs` checks the arguments): every argument is
checked before the launch (cupy array, one device, dtype, shape, C-contiguous, no
overlapping output), launches go to the current stream (capturable), nothing syncs
and nothing allocates. The math is :class:`~gpubackprop.backend.numpy_ops.NumpyOps`'s.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .arrays import Array
from .errors import ConfigError
from .kernels import LaunchArgs, column_sum_lanes, matrix_argument

#: rows (warps) per block of the LayerNorm forward
ROWS_PER_BLOCK = 8
#: most blocks of a LayerNorm launch's row part, and of its column part (grid-stride loops)
MAX_BLOCKS = 4096
_STRIP_COLS = 32


def _blocks(items: int) -> int:
    return max(1, min(items, MAX_BLOCKS))


def layer_norm_forward(
    x: Array, weight: Array, bias: Array, out: Array, mean: Array, rstd: Array, eps: float
) -> Array:
    """out = (x − μ)·r ⊙ weight + bias per row of ``x`` (rows, F), μ into ``mean`` (rows,)
    and r = 1/√(σ² + ε) into ``rstd`` (rows,), in one launch (a warp per row, fixed order).
    Returns ``out``."""
    args = LaunchArgs("layer_norm_forward")
    x, rows, cols = matrix_argument(args, "x", x)
    weight = args.array("weight", weight, shape=(cols,))
    bias = args.array("bias", bias, shape=(cols,))
    out = args.array("out", out, shape=(rows, cols), output=True)
    mean = args.array("mean", mean, shape=(rows,), output=True)
    rstd = args.array("rstd", rstd, shape=(rows,), output=True)
    args.no_overlap()
    if rows and cols:
        kernel = kernels.get_kernel("layer_norm_forward", x.dtype)
        grid = _blocks(-(-rows // ROWS_PER_BLOCK))
        launch_args = (x, weight, bias, out, mean, rstd, np.int32(rows), np.int32(cols))
        args.launch(kernel, grid, (32, ROWS_PER_BLOCK), (*launch_args, args.scalar(eps)))
    return out


def layer_norm_backward(
    delta: Array, x: Array, weight: Array, mean: Array, rstd: Array,
    dx: Array | None, dweight: Array, dbias: Array,
) -> Array | None:
    """dx (when not None), dweight and dbias of :func:`layer_norm_forward` in one launch:
    blocks of (32, K) threads, the first ones a warp per row for dx, the others a strip of
    32 columns each for the parameter gradients (K = :func:`column_sum_lanes` (rows), the
    fixed order of dense.cu's column_sum). Returns ``dx``."""
    args = LaunchArgs("layer_norm_backward")
    delta, rows, cols = matrix_argument(args, "delta", delta)
    x = args.array("x", x, shape=(rows, cols))
    weight = args.array("weight", weight, shape=(cols,))
    mean = args.array("mean", mean, shape=(rows,))
    rstd = args.array("rstd", rstd, shape=(rows,))
    dx = args.optional("dx", dx, shape=(rows, cols), output=True)
    dweight = args.array("dweight", dweight, shape=(cols,), output=True)
    dbias = args.array("dbias", dbias, shape=(cols,), output=True)
    args.no_overlap()
    if not cols:
        return dx
    lanes = column_sum_lanes(rows)
    row_blocks = 0 if dx is None or not rows else _blocks(-(-rows // lanes))
    strips = _blocks(-(-cols // _STRIP_COLS))
    kernel = kernels.get_kernel("layer_norm_backward", delta.dtype)
    launch_args = (delta, x, weight, mean, rstd, dx, dweight, dbias)
    sizes = (np.int32(rows), np.int32(cols), np.int32(row_blocks))
    args.launch(kernel, row_blocks + strips, (_STRIP_COLS, lanes), (*launch_args, *sizes))
    return dx


def dropout_forward(
    x: Array, out: Array, mask: Array, state: Array, *, threshold: int, scale: float,
    offset: int = 0,
) -> Array:
    """out = x·scale where Philox keeps the element (u_{offset+i} ≥ ``threshold``), else 0;
    ``mask`` (uint8) = keep; then ``state`` (uint64 [seed, step, 0]) step += 1 by the
    kernel's last block. ``offset`` is the 64-bit counter base (the index of x's first
    element in the global batch; an argument of the launch, so fixed in a captured graph).
    One launch, also for an empty ``x`` (the step still advances). Returns ``out``."""
    args = LaunchArgs("dropout_forward")
    x = args.array("x", x)
    out = args.array("out", out, shape=x.shape, output=True)
    mask = args.array("mask", mask, shape=x.shape, dtype=np.uint8, output=True)
    state = args.array("state", state, shape=(3,), dtype=np.uint64, output=True)
    args.no_overlap()
    if not 0 <= threshold <= 2**32:
        raise ConfigError(
            f"kernels.dropout_forward: threshold must be in [0, 2**32], got {threshold}"
        )
    n = int(x.size)
    if not 0 <= offset < 2**64 - n:
        raise ConfigError(
            f"kernels.dropout_forward: offset must be in [0, 2**64 - n) for n = {n} "
            f"elements, got {offset}"
        )
    kernel = kernels.get_kernel("dropout_forward", x.dtype)
    launch_args = (
        x, out, mask, state, np.uint64(threshold), args.scalar(scale), np.int64(n),
        np.uint64(offset),
    )
    args.grid_stride(kernel, -(-(offset % 4 + n) // 4), launch_args)
    return out


def dropout_backward(delta: Array, mask: Array, dx: Array, *, scale: float) -> Array:
    """dx = delta·scale where ``mask`` (uint8) is set, else 0. Returns ``dx``."""
    args = LaunchArgs("dropout_backward")
    delta = args.array("delta", delta)
    mask = args.array("mask", mask, shape=delta.shape, dtype=np.uint8)
    dx = args.array("dx", dx, shape=delta.shape, output=True)
    args.no_overlap()
    n = int(delta.size)
    if n:
        kernel = kernels.get_kernel("dropout_backward", delta.dtype)
        args.grid_stride(kernel, n, (delta, mask, dx, args.scalar(scale), np.int64(n)))
    return dx


__all__ = [
    "MAX_BLOCKS", "ROWS_PER_BLOCK", "dropout_backward", "dropout_forward",
    "layer_norm_backward", "layer_norm_forward",
]
