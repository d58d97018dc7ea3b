"""The reference ops use only what CuPy also accepts.

The GPU backend inherits every reference op it has no fused kernel for and runs
it on CuPy arrays, so a NumPy-only keyword there (``where=`` on a ufunc, say)
fails only on a GPU. Here each op runs once with NumPy and once with
:data:`tests.cupy_like.CUPY_LIKE` (NumPy with CuPy's refusals) on the same
inputs: the results must be the same bits, and no call may be refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gpubackprop.activations import ACTIVATIONS
from gpubackprop.backend.cupy_ops import CupyOps
from gpubackprop.backend.numpy_ops import NumpyOps

from .cupy_like import CUPY_LIKE, RefusedByCupy

EDGES = [0.0, -0.0, 1e-30, -1e-30, 17.0, -17.0, 20.0, -20.0, 89.0, -89.0, 1e4, -1e4,
         np.inf, -np.inf]


class CupyLikeOps(NumpyOps):
    """The reference ops over the CuPy-like array module."""

    xp = CUPY_LIKE


def _inputs(dtype: str, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    z = rng.standard_normal(shape) * 4.0
    flat = z.reshape(-1)
    flat[: len(EDGES)] = EDGES[: flat.size]
    return z.astype(dtype)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cupy_like_refuses_where() -> None:
    """The guard itself: a ufunc with where= is refused, as CuPy refuses it."""
    x = np.ones(3)
    with pytest.raises(RefusedByCupy, match="where"):
        CUPY_LIKE.multiply(x, x, out=x, where=x != 0)
    with pytest.raises(RefusedByCupy):
        CUPY_LIKE.sum(x, where=x > 0)
    CUPY_LIKE.multiply(x, x, out=x)  # what CuPy takes passes


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(7, 13), (5,), (2, 3, 4)])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_run_on_cupy_like(
    name: str, shape: tuple[int, ...], dtype: str, rng: np.random.Generator
) -> None:
    act = ACTIVATIONS[name]
    reference, portable = NumpyOps(), CupyLikeOps()
    z = _inputs(dtype, rng, shape)
    delta = rng.standard_normal(shape).astype(dtype)
    with np.errstate(all="ignore"):
        a_ref = reference.activation_forward(act, z, np.empty_like(z))
        a_port = portable.activation_forward(act, z, np.empty_like(z))
        _same(a_port, a_ref)
        saved = z if act.needs_input else a_ref
        _same(
            portable.activation_backward(act, delta, saved, np.empty_like(z)),
            reference.activation_backward(act, delta, saved, np.empty_like(z)),
        )
        in_place = z.copy()
        portable.activation_forward(act, in_place, in_place)
        _same(in_place, a_ref)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_losses_run_on_cupy_like(dtype: str, rng: np.random.Generator) -> None:
    reference, portable = NumpyOps(), CupyLikeOps()
    logits = _inputs(dtype, rng, (9, 5))
    logits[0, :] = -np.inf  # the 0·(−inf) limits of the probability-target path
    logits[1, 0] = np.inf
    labels = rng.integers(0, 5, size=9)
    probs = rng.random((9, 5)).astype(dtype)
    probs[0, :2] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    binary = (rng.random((9, 5)) > 0.5).astype(dtype)
    with np.errstate(all="ignore"):
        for op, args in [
            ("softmax_cross_entropy_labels", (logits, labels)),
            ("softmax_cross_entropy_probs", (logits, probs)),
            ("bce_with_logits", (logits, binary)),
        ]:
            g_ref, g_port = np.empty_like(logits), np.empty_like(logits)
            v_ref = getattr(reference, op)(*args, g_ref)
            v_port = getattr(portable, op)(*args, g_port)
            _same(v_port, v_ref)
            _same(g_port, g_ref)
        finite = rng.standard_normal((9, 5)).astype(dtype)
        g_ref, g_port = np.empty_like(finite), np.empty_like(finite)
        _same(
            portable.mse(finite, binary, g_port, mean=True),
            reference.mse(finite, binary, g_ref, mean=True),
        )
        _same(g_port, g_ref)


def test_dense_pairs_run_on_cupy_like(rng: np.random.Generator) -> None:
    reference, portable = NumpyOps(), CupyLikeOps()
    act = ACTIVATIONS["gelu"]
    z = rng.standard_normal((6, 4))
    bias = rng.standard_normal(4)
    delta = rng.standard_normal((6, 4))
    z_ref, z_port = z.copy(), z.copy()
    _same(
        portable.bias_activation_forward(act, z_port, bias, np.empty_like(z)),
        reference.bias_activation_forward(act, z_ref, bias, np.empty_like(z)),
    )
    db_ref, db_port = np.empty(4), np.empty(4)
    _same(
        portable.activation_backward_bias_grad(act, delta, z_port, np.empty_like(z), db_port),
        reference.activation_backward_bias_grad(act, delta, z_ref, np.empty_like(z), db_ref),
    )
    _same(db_port, db_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["3-D", "1-D", "transposed"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_gpu_activations_of_any_layout(name: str, layout: str, rng: np.random.Generator) -> None:
    """CupyOps runs every activation on arrays that are not (B, n) matrices: contiguous
    ones through the fused kernel as a (1, n) view, others through the reference on
    CuPy arrays; both agree with NumPy."""
    import cupy

    from gpubackprop import get_backend

    act = ACTIVATIONS[name]
    ops = get_backend("cuda").ops
    shape = {"3-D": (3, 5, 7), "1-D": (11,), "transposed": (6, 9)}[layout]
    z = _inputs("float64", rng, shape)
    delta = rng.standard_normal(shape)
    if layout == "transposed":
        z, delta = z.T, delta.T
    zd, dd = cupy.asarray(z), cupy.asarray(delta)
    if layout == "transposed":
        zd, dd = cupy.asarray(z.T).T, cupy.asarray(delta.T).T  # non-contiguous on the GPU
    with np.errstate(all="ignore"):
        a_ref = NumpyOps().activation_forward(act, z, np.empty_like(z))
        saved_ref = z if act.needs_input else a_ref
        g_ref = NumpyOps().activation_backward(act, delta, saved_ref, np.empty_like(z))
    a = ops.activation_forward(act, zd, cupy.empty_like(zd))
    saved = zd if act.needs_input else a
    g = ops.activation_backward(act, dd, saved, cupy.empty_like(zd))
    np.testing.assert_allclose(cupy.asnumpy(a), a_ref, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(cupy.asnumpy(g), g_ref, rtol=1e-12, atol=1e-300)


def test_optimizer_ops_run_on_cupy_like(rng: np.random.Generator) -> None:
    """global_norm runs on CuPy arrays as written (CupyOps does not override it); the
    update ops are checked too, since they are the reference the kernels mirror."""
    reference, portable = NumpyOps(), CupyLikeOps()
    grads = [rng.standard_normal(17), rng.standard_normal((3, 5)), np.full(4, 1e308)]
    assert portable.global_norm(grads) == reference.global_norm(grads)
    results = []
    for ops in (reference, portable):
        params, g = np.linspace(-1, 1, 23), np.linspace(2, -3, 23)
        buf, m, v = np.zeros(23), np.zeros(23), np.zeros(23)
        work = ops.optimizer_workspace("sgd", params, scratch=2, steps=0)
        ops.sgd_step(params, g, buf, work, lr=0.1, first=True, momentum=0.9,
                     dampening=0.0, weight_decay=0.01, nesterov=True)
        work = ops.optimizer_workspace("adam", params, scratch=3, steps=0)
        ops.adam_step(params, g, m, v, work, lr=0.01, step=1, betas=(0.9, 0.999),
                      eps=1e-8, weight_decay=0.01, decoupled=True)
        results.append((params, buf, m, v))
    for a, b in zip(*results, strict=True):
        _same(a, b)


class _OneHotOnHost(CupyOps):
    """CuPy's ops with CuPy's rules on host arrays: its buffers and GEMM from NumPy."""

    def __init__(self) -> None:  # no device, no cuBLAS handle
        self.xp = CUPY_LIKE

    def scratch(self, purpose: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.full(shape, np.nan, dtype=dtype)

    def arange(self, n: int, dtype: Any) -> np.ndarray:
        return np.arange(n, dtype=dtype)

    def matmul(self, a: Any, b: Any, out: Any, *, trans_a: bool = False,
               trans_b: bool = False) -> Any:
        return NumpyOps().matmul(a, b, out, trans_a=trans_a, trans_b=trans_b)


def test_embedding_ops_run_on_cupy_like(rng: np.random.Generator) -> None:
    """gather_rows (inherited by CuPy) and CuPy's one-hot GEMM scatter-add, on the host."""
    table = rng.standard_normal((13, 5))
    ids = rng.integers(0, 13, (4, 7))
    _same(CupyLikeOps().gather_rows(table, ids, np.empty((4, 7, 5))),
          NumpyOps().gather_rows(table, ids, np.empty((4, 7, 5))))
    delta = rng.standard_normal((28, 5))
    expected = NumpyOps().scatter_add_rows(ids.reshape(-1), delta, np.empty((13, 5)))
    got = _OneHotOnHost().scatter_add_rows(ids.reshape(-1), delta, np.full((13, 5), 7.0))
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-14)
