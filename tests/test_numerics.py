"""Stable formulations at the edges: activations and losses at logits of 0, ±17, ±20,
±88.7, ±89, ±104, ±1e4 and ±inf, in float32 and float64, forward and backward.

Each value is compared with a float64 reference written from SciPy's stable
primitives (expit, logaddexp, ndtr), with the mathematical limits at ±inf; no NaN
may appear where the true value is defined, and no floating-point warning may
escape.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from scipy.special import expit, ndtr

import gpubackprop as gb
from gpubackprop.activations import ACTIVATIONS
from gpubackprop.backend import get_backend

EDGES = [0.0, 17.0, -17.0, 20.0, -20.0, 88.7, -88.7, 89.0, -89.0, 104.0, -104.0, 1e4, -1e4]
WITH_INF = [*EDGES, math.inf, -math.inf]
DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


def _pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _times(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a·b with the limit 0·(±inf) = 0."""
    with np.errstate(invalid="ignore"):
        return np.where((a == 0) | (b == 0), 0.0, a * b)


# name -> (f, f′), float64 references valid at ±inf
REFERENCE: dict[str, tuple[Callable[[np.ndarray], np.ndarray], ...]] = {
    "sigmoid": (expit, lambda z: expit(z) * expit(-z)),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "softplus": (lambda z: np.logaddexp(0.0, z), expit),
    "gelu": (lambda z: _times(z, ndtr(z)), lambda z: ndtr(z) + _times(z, _pdf(z))),
    "silu": (
        lambda z: _times(z, expit(z)),
        lambda z: expit(z) + _times(z, expit(z) * expit(-z)),
    ),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "elu": (
        lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0.0))),
        lambda z: np.where(z > 0, 1.0, np.exp(np.minimum(z, 0.0))),
    ),
}
GELU_TANH_LIMITS = {math.inf: (math.inf, 1.0), -math.inf: (0.0, 0.0)}


def _close(got: np.ndarray, want: np.ndarray, dtype: type) -> None:
    """Relative agreement, or within one ulp of 1 absolutely.

    The absolute term is the precision of values of order 1: a derivative taken
    from the output (σ′ = a(1 − a) with a = σ(17) = 1 − 4e-8) or Φ(z) = (1 + erf)/2
    cannot resolve less.
    """
    assert not np.isnan(got).any(), f"NaN where the true value is {want[np.isnan(got)]}"
    eps = float(np.finfo(dtype).eps)
    np.testing.assert_allclose(got, want.astype(dtype), rtol=RTOL[dtype], atol=eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_activation_edges(device: str, dtype: type, name: str) -> None:
    backend = get_backend(device)
    act = ACTIVATIONS[name]
    z64 = np.array(WITH_INF)
    z = backend.asarray(z64.astype(dtype))
    f_ref, df_ref = REFERENCE[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = backend.xp.empty_like(z)
        backend.ops.activation_forward(act, z, out)
        saved = z if act.needs_input else out
        grad = backend.xp.empty_like(z)
        backend.ops.activation_backward(act, backend.xp.ones_like(z), saved, grad)
    with np.errstate(all="ignore"):
        want_f, want_df = f_ref(z64), df_ref(z64)
    _close(backend.to_numpy(out), want_f, dtype)
    _close(backend.to_numpy(grad), want_df, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_tanh_finite_and_limits(device: str, dtype: type) -> None:
    backend = get_backend(device)
    act = ACTIVATIONS["gelu_tanh"]
    z = backend.asarray(np.array(WITH_INF, dtype=dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = backend.ops.activation_forward(act, z, backend.xp.empty_like(z))
        grad = backend.ops.activation_backward(
            act, backend.xp.ones_like(z), z, backend.xp.empty_like(z)
        )
    out, grad = backend.to_numpy(out), backend.to_numpy(grad)
    for i, v in enumerate(WITH_INF):
        if math.isinf(v):
            assert (out[i], grad[i]) == GELU_TANH_LIMITS[v]
        else:
            assert math.isfinite(out[i]) and math.isfinite(grad[i])
    # agrees with exact gelu far from 0 (both are z·[z > 0] there)
    big = np.abs(np.array(WITH_INF)) >= 17
    np.testing.assert_allclose(out[big], np.where(np.array(WITH_INF) > 0, WITH_INF, 0)[big])


def _bce_reference(z: float, y: float) -> tuple[float, float]:
    """(y·softplus(−z) + (1 − y)·softplus(z), σ(z) − y) with 0·inf = 0."""
    loss = 0.0
    if y != 0:
        loss += y * np.logaddexp(0.0, -z)
    if y != 1:
        loss += (1 - y) * np.logaddexp(0.0, z)
    return float(loss), float(expit(z) - y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("y", [0.0, 0.5, 1.0])
def test_bce_with_logits_edges(device: str, dtype: type, y: float) -> None:
    backend = get_backend(device)
    z = backend.asarray(np.array(WITH_INF, dtype=dtype).reshape(-1, 1))
    bce = gb.losses.BCEWithLogits()
    for i, v in enumerate(WITH_INF):
        zi = z[i : i + 1]
        target = backend.asarray(np.full((1, 1), y, dtype=dtype))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            value, grad = bce.value_and_gradient(zi, target)
        want_value, want_grad = _bce_reference(float(np.asarray(v, dtype)), y)
        assert not math.isnan(value), (v, y)
        if math.isinf(want_value):
            assert value == want_value, (v, y, value)
        else:
            assert value == pytest.approx(want_value, rel=RTOL[dtype], abs=1e-30), (v, y)
        _close(backend.to_numpy(grad).reshape(-1), np.array([want_grad]), dtype)


def _log_softmax(row: np.ndarray) -> np.ndarray:
    """log softmax with the limits: a +inf entry takes all the mass."""
    top = row == math.inf
    if top.any():
        return np.where(top, -math.log(top.sum()), -math.inf)
    shifted = row - row.max()
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.exp(shifted).sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("one_hot", [False, True])
def test_softmax_cross_entropy_edges(
    device: str, dtype: type, label: int, one_hot: bool
) -> None:
    backend = get_backend(device)
    ce = gb.losses.SoftmaxCrossEntropy()
    for v in WITH_INF:
        row = np.array([v, 0.0, -1.0], dtype=dtype)
        logp = _log_softmax(row.astype(np.float64))
        want_value = -logp[label]
        want_grad = np.exp(logp) - np.eye(3)[label]
        target = np.eye(3, dtype=dtype)[[label]] if one_hot else np.array([label])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            value, grad = ce.value_and_gradient(
                backend.asarray(row[None, :]), backend.asarray(target)
            )
        assert not math.isnan(value), (v, label)
        if math.isinf(want_value):
            assert value == want_value
        else:
            assert value == pytest.approx(want_value, rel=RTOL[dtype], abs=1e-6), (v, label)
        _close(backend.to_numpy(grad).reshape(-1), want_grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "softplus", "silu", "gelu", "tanh"])
def test_dense_layer_at_huge_logits_is_finite(device: str, dtype: type, name: str) -> None:
    """Through the model: pre-activations of ±1e4 give finite outputs and gradients."""
    model = gb.Sequential([gb.Dense(1, 2, name), gb.Dense(2, 1)], device=device,
                          dtype=dtype, seed=0)
    model.parameters()["0.weight"][...] = model.to_device(np.array([[1.0], [-1.0]]))
    x = np.array([[1e4], [-1e4], [89.0], [-104.0]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = model.loss_and_grad(model.to_device(x), model.to_device(np.zeros((4, 1))),
                                    "bce_with_logits")
    assert math.isfinite(value)
    assert np.isfinite(get_backend(device).to_numpy(model.flat_grads)).all()
