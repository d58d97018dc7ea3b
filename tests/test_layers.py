"""Layers: Dense forward/backward against plain NumPy, initialisation, descriptions."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpubackprop as gb

from .helpers import to_numpy


def _tanh_model(bias: bool, dtype: str = "float64", seed: int = 0) -> gb.Sequential:
    return gb.Sequential([gb.Dense(4, 3, "tanh", bias=bias)], device="cpu", dtype=dtype, seed=seed)


# --- forward / backward of one Dense layer ----------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_dense_forward_and_backward_match_numpy(bias: bool, rng: np.random.Generator) -> None:
    model = _tanh_model(bias)
    layer = model.layers[0]
    w = rng.standard_normal((3, 4))
    layer.params["weight"][...] = w
    b = rng.standard_normal(3) if bias else np.zeros(3)
    if bias:
        layer.params["bias"][...] = b
    x = rng.standard_normal((5, 4))
    out = to_numpy(model.forward(x))
    # Z = A Wᵀ + b, A_out = tanh(Z), written out entry by entry
    z = np.array([[sum(x[i, k] * w[j, k] for k in range(4)) + b[j] for j in range(3)]
                  for i in range(5)])
    a = np.tanh(z)
    np.testing.assert_allclose(out, a, rtol=1e-13)

    delta = rng.standard_normal((5, 3))
    dx = to_numpy(model.backward(delta, return_input_grad=True))
    dz = delta * (1.0 - a**2)
    np.testing.assert_allclose(to_numpy(layer.grads["weight"]), dz.T @ x, rtol=1e-12)
    np.testing.assert_allclose(dx, dz @ w, rtol=1e-12)
    if bias:
        np.testing.assert_allclose(to_numpy(layer.grads["bias"]), dz.sum(axis=0), rtol=1e-12)
    else:
        assert "bias" not in layer.params and "bias" not in layer.grads


def test_dense_without_bias_has_no_bias_parameter() -> None:
    model = gb.Sequential([gb.Dense(4, 3, bias=False)], device="cpu", seed=0)
    assert list(model.parameters()) == ["0.weight"]
    assert model.num_parameters == 12
    with_bias = gb.Sequential([gb.Dense(4, 3)], device="cpu", seed=0)
    assert list(with_bias.parameters()) == ["0.weight", "0.bias"]
    assert with_bias.num_parameters == 15


def test_param_shapes_weight_is_out_by_in() -> None:
    layer = gb.Dense(7, 2, "relu")
    assert layer.param_shapes() == [("weight", (2, 7)), ("bias", (2,))]
    model = gb.Sequential([layer], device="cpu")
    assert tuple(model.parameters()["0.weight"].shape) == (2, 7)
    assert tuple(model.parameters()["0.bias"].shape) == (2,)


def test_changing_batch_size_between_passes(rng: np.random.Generator) -> None:
    """Work buffers are per batch size: every size gives the right answer, any order."""
    model = gb.Sequential(
        [gb.Dense(3, 4, "gelu"), gb.Dense(4, 2)], device="cpu", dtype="float64", seed=1
    )
    p = {k: to_numpy(v).copy() for k, v in model.parameters().items()}

    def ref(x: np.ndarray) -> np.ndarray:
        from scipy.special import erf

        z = x @ p["0.weight"].T + p["0.bias"]
        h = 0.5 * z * (1 + erf(z / math.sqrt(2)))
        return h @ p["1.weight"].T + p["1.bias"]

    for batch in (5, 1, 7, 5, 2, 3, 9, 1, 5):  # more sizes than the cache holds
        x = rng.standard_normal((batch, 3))
        np.testing.assert_allclose(to_numpy(model.forward(x)), ref(x), rtol=1e-12)
        g = rng.standard_normal((batch, 2))
        dx = to_numpy(model.backward(g, return_input_grad=True))
        h = 1e-6
        fd = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            xp_, xm_ = x.copy(), x.copy()
            xp_[i] += h
            xm_[i] -= h
            fd[i] = ((ref(xp_) - ref(xm_)) * g).sum() / (2 * h)
        np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-9)


# --- initialisation ---------------------------------------------------------------------------
def _kurtosis(w: np.ndarray) -> float:
    c = w - w.mean()
    return float((c**4).mean() / (c**2).mean() ** 2)


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu"])
def test_he_normal_init_for_relu_family(act: str) -> None:
    fan_in, fan_out = 800, 500
    model = gb.Sequential([gb.Dense(fan_in, fan_out, act)], device="cpu", dtype="float64", seed=3)
    w = to_numpy(model.parameters()["0.weight"])
    n = w.size
    std = math.sqrt(2.0 / fan_in)
    assert abs(w.mean()) < 4 * std / math.sqrt(n)
    assert w.std() == pytest.approx(std, rel=0.01)
    assert _kurtosis(w) == pytest.approx(3.0, abs=0.05)  # normal, not uniform
    np.testing.assert_array_equal(to_numpy(model.parameters()["0.bias"]), 0.0)


@pytest.mark.parametrize("act", [None, "sigmoid", "tanh", "softplus"])
def test_xavier_uniform_init_otherwise(act: str | None) -> None:
    fan_in, fan_out = 800, 500
    model = gb.Sequential([gb.Dense(fan_in, fan_out, act)], device="cpu", dtype="float64", seed=3)
    w = to_numpy(model.parameters()["0.weight"])
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.999 * limit
    assert w.min() < -0.999 * limit
    assert abs(w.mean()) < 4 * limit / math.sqrt(3 * w.size)
    assert w.var() == pytest.approx(limit**2 / 3, rel=0.01)
    assert _kurtosis(w) == pytest.approx(1.8, abs=0.02)  # uniform
    np.testing.assert_array_equal(to_numpy(model.parameters()["0.bias"]), 0.0)


def _weights(seed: int | None, dtype: str = "float64") -> list[np.ndarray]:
    model = gb.Sequential(
        [gb.Dense(6, 5, "relu"), gb.Dense(5, 4, "tanh"), gb.Dense(4, 2)],
        device="cpu", dtype=dtype, seed=seed,
    )
    return [to_numpy(v).copy() for v in model.parameters().values()]


def test_same_seed_same_weights() -> None:
    for a, b in zip(_weights(7), _weights(7), strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seed_different_weights() -> None:
    for a, b in zip(_weights(7)[::2], _weights(8)[::2], strict=True):  # weights only
        assert not np.any(a == b)


def test_unseeded_models_differ() -> None:
    assert not np.array_equal(_weights(None)[0], _weights(None)[0])


def test_same_seed_same_weights_across_dtypes() -> None:
    for w64, w32 in zip(_weights(11), _weights(11, "float32"), strict=True):
        assert w32.dtype == np.float32
        np.testing.assert_array_equal(w32, w64.astype(np.float32))


def test_layers_get_different_weights(rng: np.random.Generator) -> None:
    model = gb.Sequential([gb.Dense(5, 5), gb.Dense(5, 5)], device="cpu", seed=0)
    p = model.parameters()
    assert not np.array_equal(to_numpy(p["0.weight"]), to_numpy(p["1.weight"]))


# --- descriptions and construction errors -----------------------------------------------------
def test_describe_and_label() -> None:
    model = gb.Sequential(
        [gb.Dense(10, 8, "relu"), gb.Activation("tanh"), gb.Dense(8, 3, bias=False)],
        device="cpu",
    )
    assert model.layers[0].label == "layer 0 (Dense 10->8, relu)"
    assert model.layers[1].label == "layer 1 (Activation tanh)"
    assert model.layers[2].label == "layer 2 (Dense 8->3, no bias)"
    assert gb.Dense(3, 2, "gelu").label == "unattached layer (Dense 3->2, gelu)"
    assert repr(gb.Dense(3, 2)) == "Dense 3->2"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((0, 3), "in_features"),
        ((3, 0), "out_features"),
        ((-1, 3), "in_features"),
        ((2.0, 3), "in_features"),
        ((True, 3), "in_features"),
        ((3, "4"), "out_features"),
    ],
)
def test_dense_bad_sizes_raise_config_error(args: tuple, fragment: str) -> None:
    with pytest.raises(gb.ConfigError, match=fragment) as info:
        gb.Dense(*args)
    assert isinstance(info.value, ValueError)


def test_dense_accepts_numpy_integers() -> None:
    layer = gb.Dense(np.int64(3), np.int32(2))
    assert (layer.in_features, layer.out_features) == (3, 2)
    assert type(layer.in_features) is int


def test_activation_layer_keeps_width() -> None:
    model = gb.Sequential(
        [gb.Dense(3, 6), gb.Activation("relu"), gb.Dense(6, 2)], device="cpu", seed=0
    )
    assert model.input_features == 3
    assert model.output_features == 2
    out = model.forward(np.ones((4, 3)))
    assert out.shape == (4, 2)


def test_activation_layer_first_takes_width_from_next_dense() -> None:
    model = gb.Sequential([gb.Activation("tanh"), gb.Dense(3, 2)], device="cpu", seed=0)
    assert model.input_features == 3
    with pytest.raises(gb.ShapeError, match=r"\(batch, 3\)"):
        model.forward(np.ones((2, 4)))
