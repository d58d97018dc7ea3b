"""Activations: forward and derivative of every entry of the table.

The references are hand-written here in plain NumPy / ``math`` (overflow-safe
textbook formulas), independent of ``gpubackprop.activations``; derivatives are
checked against central finite differences of those references.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.activations import get_activation

from .helpers import to_numpy

NAMES = [
    "identity",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "gelu",
    "gelu_tanh",
    "silu",
    "softplus",
]

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# --- hand-written references (float64) ---------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))  # never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _tanh(z: np.ndarray) -> np.ndarray:
    e = np.exp(-2.0 * np.abs(z))
    return np.sign(z) * (-np.expm1(-2.0 * np.abs(z))) / (1.0 + e)


def _gelu(z: np.ndarray) -> np.ndarray:
    # z Φ(z) with Φ(z) = erfc(−z/√2)/2 (accurate in both tails), via math.erfc
    cdf = np.vectorize(lambda v: 0.5 * math.erfc(-v / math.sqrt(2.0)))(z)
    return z * cdf


def _gelu_tanh(z: np.ndarray) -> np.ndarray:
    u = SQRT_2_OVER_PI * (z + 0.044715 * z * z * z)
    return 0.5 * z * (1.0 + _tanh(u))


REF = {
    "identity": lambda z: z.copy(),
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "relu": lambda z: np.where(z > 0, z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0.0))),
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": lambda z: z * _sigmoid(z),
    "softplus": lambda z: np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z))),
}

# closed-form derivatives, for the extreme points where finite differences are useless
DREF = {
    "identity": lambda z: np.ones_like(z),
    "sigmoid": lambda z: _sigmoid(z) * _sigmoid(-z),
    "tanh": lambda z: 4.0 * _sigmoid(2 * z) * _sigmoid(-2 * z),
    "relu": lambda z: np.where(z > 0, 1.0, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, 1.0, 0.01),
    "elu": lambda z: np.where(z > 0, 1.0, np.exp(np.minimum(z, 0.0))),
    "gelu": lambda z: (
        np.vectorize(lambda v: 0.5 * math.erfc(-v / math.sqrt(2.0)))(z)
        + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    ),
    "gelu_tanh": None,  # compared by finite differences only
    "silu": lambda z: _sigmoid(z) * (1.0 + z * _sigmoid(-z)),
    "softplus": _sigmoid,
}

KINKED = {"relu", "leaky_relu", "elu"}

EXTREMES = np.array(
    [0.0, 1e-8, -1e-8, 1.0, -1.0, 20.0, -20.0, 89.0, -89.0, 1e4, -1e4, 0.5, -3.0]
)


def _forward(name: str, z: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    act = gb.ACTIVATIONS[name]
    zz = z.copy()
    out = zz if in_place else np.empty_like(zz)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid warning may escape
        result = act.forward(np, zz, out)
    assert result is out
    return result


def _backward(name: str, z: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """delta ⊙ f′(z) through the table's backward, fed what a layer would save."""
    act = gb.ACTIVATIONS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = act.forward(np, z.copy(), np.empty_like(z))
        saved = z if act.needs_input else a
        out = np.empty_like(z)
        result = act.backward(np, delta, saved, out)
    assert result is out
    return result


def test_table_has_every_activation() -> None:
    assert set(gb.ACTIVATIONS) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_float64_matches_formula(name: str, rng: np.random.Generator) -> None:
    z = np.concatenate([EXTREMES, rng.standard_normal(200) * 4.0]).reshape(-1, 1)
    got = _forward(name, z)
    want = REF[name](z)
    assert got.dtype == np.float64
    assert np.all(np.isfinite(got)), f"{name}: non-finite output at {z[~np.isfinite(got)]}"
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("name", NAMES)
def test_forward_exact_values(name: str) -> None:
    """A few values known without any formula."""
    z = np.array([[0.0, 1e4, -1e4]])
    got = _forward(name, z)
    assert got[0, 0] == 0.0 or (name == "sigmoid" and got[0, 0] == 0.5) or (
        name == "softplus" and got[0, 0] == pytest.approx(math.log(2.0), rel=1e-15)
    )
    # far right every activation is z (sigmoid 1, tanh 1)
    right = 1.0 if name in ("sigmoid", "tanh") else 1e4
    assert got[0, 1] == pytest.approx(right, rel=1e-15)
    # far left: 0, except tanh (−1), leaky_relu (−100), elu (−1), identity (−1e4)
    left = {"tanh": -1.0, "leaky_relu": -100.0, "elu": -1.0, "identity": -1e4}.get(name, 0.0)
    assert got[0, 2] == pytest.approx(left, rel=1e-15, abs=1e-300)


@pytest.mark.parametrize("name", NAMES)
def test_forward_float32_matches_formula(name: str, rng: np.random.Generator) -> None:
    z64 = np.concatenate([EXTREMES, rng.standard_normal(299) * 4.0])
    z32 = z64.astype(np.float32).reshape(3, -1)
    got = _forward(name, z32)
    assert got.dtype == np.float32
    assert np.all(np.isfinite(got)), f"{name}: non-finite float32 output"
    want = REF[name](z32.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_in_place_equals_out_of_place(
    name: str, dtype: type, rng: np.random.Generator
) -> None:
    z = (rng.standard_normal((7, 5)) * 3).astype(dtype)
    z[0, :] = [0.0, 1e4, -1e4, 89.0, -89.0]
    out_of_place = _forward(name, z)
    in_place = _forward(name, z, in_place=True)
    np.testing.assert_array_equal(in_place, out_of_place)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_finite_differences(name: str, rng: np.random.Generator) -> None:
    z = rng.uniform(-6.0, 6.0, size=(40, 3))
    if name in KINKED:  # stay away from the kink at 0
        z = np.where(np.abs(z) < 1e-2, z + np.sign(z + 1e-300) * 0.1, z)
    delta = rng.standard_normal(z.shape)
    h = 1e-6
    fd = (REF[name](z + h) - REF[name](z - h)) / (2 * h)
    got = _backward(name, z, delta)
    np.testing.assert_allclose(got, delta * fd, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("name", [n for n in NAMES if DREF[n] is not None])
def test_derivative_at_extremes_is_finite_and_right(name: str, rng: np.random.Generator) -> None:
    z = EXTREMES[np.abs(EXTREMES) > 1e-3].reshape(1, -1)  # not at the kinks
    delta = rng.uniform(0.5, 2.0, z.shape)
    got = _backward(name, z, delta)
    assert np.all(np.isfinite(got)), f"{name}: non-finite derivative"
    np.testing.assert_allclose(got, delta * DREF[name](z), rtol=1e-7, atol=1e-12, err_msg=name)


def test_gelu_tanh_derivative_at_extremes_is_finite() -> None:
    z = EXTREMES.reshape(1, -1)
    got = _backward("gelu_tanh", z, np.ones_like(z))
    assert np.all(np.isfinite(got))
    # derivative → 1 on the right, → 0 on the left; 1/2 at 0
    np.testing.assert_allclose(got[0, [5, 7, 9]], 1.0, atol=1e-12)
    np.testing.assert_allclose(got[0, [6, 8, 10]], 0.0, atol=1e-12)
    assert got[0, 0] == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_float32(name: str, rng: np.random.Generator) -> None:
    z = rng.uniform(-5.0, 5.0, size=(10, 6))
    if name in KINKED:
        z = np.where(np.abs(z) < 1e-2, 0.5, z)
    delta = rng.standard_normal(z.shape)
    z[0, :] = [20.0, -20.0, 89.0, -89.0, 1e4, -1e4]
    z32, d32 = z.astype(np.float32), delta.astype(np.float32)
    got = _backward(name, z32, d32)
    assert got.dtype == np.float32
    assert np.all(np.isfinite(got))
    z64, d64 = z32.astype(np.float64), d32.astype(np.float64)
    if DREF[name] is not None:
        want = d64 * DREF[name](z64)
    else:
        h = 1e-6
        want = d64 * (REF[name](z64 + h) - REF[name](z64 - h)) / (2 * h)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)


def test_relu_family_derivative_values() -> None:
    z = np.array([[-2.0, -0.5, 0.5, 2.0]])
    delta = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(_backward("relu", z, delta), [[0.0, 0.0, 3.0, 4.0]])
    np.testing.assert_allclose(_backward("leaky_relu", z, delta), [[0.01, 0.02, 3.0, 4.0]])
    np.testing.assert_allclose(
        _backward("elu", z, delta), [[math.exp(-2.0), 2 * math.exp(-0.5), 3.0, 4.0]], rtol=1e-14
    )


@pytest.mark.parametrize("name", NAMES)
def test_standalone_activation_layer_forward_and_input_grad(
    name: str, rng: np.random.Generator
) -> None:
    """gb.Activation in a float64 model: forward = f(x), input grad = g ⊙ f′(x)."""
    x = rng.uniform(-4.0, 4.0, size=(6, 5))
    if name in KINKED:
        x = np.where(np.abs(x) < 1e-2, 0.3, x)
    model = gb.Sequential([gb.Activation(name)], device="cpu", dtype="float64")
    out = to_numpy(model.forward(x))
    np.testing.assert_allclose(out, REF[name](x), rtol=1e-12, atol=1e-14)
    g = rng.standard_normal(x.shape)
    dx = to_numpy(model.backward(g, return_input_grad=True))
    h = 1e-6
    fd = (REF[name](x + h) - REF[name](x - h)) / (2 * h)
    np.testing.assert_allclose(dx, g * fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_fused_dense_activation_matches_formula(name: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((8, 4))
    model = gb.Sequential([gb.Dense(4, 3, name)], device="cpu", dtype="float64", seed=0)
    params = model.parameters()
    b = rng.standard_normal(3)
    params["0.bias"][...] = b
    w = to_numpy(params["0.weight"]).copy()
    z = x @ w.T + b
    np.testing.assert_allclose(to_numpy(model.forward(x)), REF[name](z), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", [None, "identity"])
def test_none_means_identity(name: str | None) -> None:
    assert get_activation(name).name == "identity"
    assert gb.Dense(2, 3, name).activation.name == "identity"


@pytest.mark.parametrize("bad", ["Relu", "swish", "", "softmax", 3])
def test_unknown_activation_raises_config_error(bad: object) -> None:
    with pytest.raises(gb.ConfigError, match="unknown activation") as info:
        get_activation(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert "relu" in str(info.value)  # lists what is known
    with pytest.raises(gb.ConfigError):
        gb.Dense(2, 3, bad)  # type: ignore[arg-type]
    with pytest.raises(gb.ConfigError):
        gb.Activation(bad)  # type: ignore[arg-type]


def test_init_kind_per_activation() -> None:
    he = {"relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu"}
    for name in NAMES:
        assert gb.ACTIVATIONS[name].init == ("he" if name in he else "xavier"), name
