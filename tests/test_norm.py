"""LayerNorm, Dropout (with its Philox generator) and the train/eval modes, on the CPU.

The GPU kernels' twins are in tests/test_norm_gpu.py; the checkpoint round trips in
tests/test_io.py; the kernels' host harness in tests/test_kernel_functors.py.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.gradcheck import central_difference
from gpubackprop.philox import dropout_words, keep_threshold, philox4x32_10

from .cupy_like import CUPY_LIKE

#: Random123's known-answer vectors for Philox4x32-10 (tests/kat_vectors): counter, key, output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


# --- Philox ------------------------------------------------------------------------------------
@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_matches_random123_known_answers(
    counter: tuple[int, ...], key: tuple[int, int], expected: tuple[int, ...]
) -> None:
    out = philox4x32_10(np, np.array(counter, dtype=np.uint32)[:, None], key)
    assert out.dtype == np.uint32
    assert tuple(int(v) for v in out[:, 0]) == expected


def test_dropout_words_follow_the_counter_scheme() -> None:
    """u_i = word i % 4 of Philox((i // 4 low, high, step low, high), seed halves)."""
    seed, step, n = 0x0123456789ABCDEF, (5 << 32) + 7, 4 * 2 + 3
    words = dropout_words(np, n, seed, step)
    assert words.shape == (n,) and words.dtype == np.uint32
    for i in range(n):
        counter = np.array([i // 4, 0, 7, 5], dtype=np.uint32)[:, None]
        block = philox4x32_10(np, counter, (0x89ABCDEF, 0x01234567))
        assert words[i] == block[i % 4, 0]
    # a group index above 2**32 uses the high counter word
    big = philox4x32_10(np, np.array([[1], [1], [0], [0]], dtype=np.uint32), (0, 0))
    j = (1 << 32) + 1
    counter = np.array([[j & 0xFFFFFFFF], [j >> 32], [0], [0]], dtype=np.uint64)
    np.testing.assert_array_equal(philox4x32_10(np, counter, (0, 0)), big)


def test_keep_threshold_is_round_p_times_2_to_32() -> None:
    assert keep_threshold(0.0) == 0
    assert keep_threshold(0.5) == 2**31
    assert keep_threshold(0.1) == round(0.1 * 2**32)
    assert keep_threshold(1 - 2**-40) == 2**32  # never kept
    assert gb.Dropout(0.25).threshold == 2**30


# --- LayerNorm ------------------------------------------------------------------------------------
def _layer_norm(features: int, rng: np.random.Generator, **kwargs: Any) -> gb.LayerNorm:
    layer = gb.LayerNorm(features, **kwargs).build("cpu", "float64", seed=0)
    layer.params["weight"][...] = rng.standard_normal(features)
    layer.params["bias"][...] = rng.standard_normal(features)
    return layer


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 9), (1, 1)])
def test_layer_norm_matches_torch(shape: tuple[int, ...], rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    f = shape[-1]
    layer = _layer_norm(f, rng, eps=1e-3)
    x = rng.standard_normal(shape) * 3 + 1
    delta = rng.standard_normal(shape)
    out = layer.forward(x).copy()
    dx = layer.backward(delta, True).copy()
    ref = torch.nn.LayerNorm(f, eps=1e-3).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.params["weight"].copy()))
        ref.bias.copy_(torch.from_numpy(layer.params["bias"].copy()))
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(delta))
    np.testing.assert_allclose(out, yt.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(layer.grads["weight"], ref.weight.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(layer.grads["bias"], ref.bias.grad.numpy(), rtol=0, atol=1e-10)


def test_layer_norm_defaults_and_formula(rng: np.random.Generator) -> None:
    layer = gb.LayerNorm((6,)).build("cpu", "float64")
    assert layer.eps == 1e-5 and layer.describe() == "LayerNorm 6"
    np.testing.assert_array_equal(layer.params["weight"], np.ones(6))
    np.testing.assert_array_equal(layer.params["bias"], np.zeros(6))
    x = rng.standard_normal((4, 6))
    mu = x.mean(axis=1, keepdims=True)
    expected = (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-13, atol=1e-13)


def test_layer_norm_gradcheck_alone_and_in_a_model(rng: np.random.Generator) -> None:
    assert gb.gradcheck(_layer_norm(6, rng), rng.standard_normal((5, 6)))
    model = gb.Sequential(
        [gb.Dense(4, 6, "tanh"), gb.LayerNorm(6), gb.Dense(6, 3)], device="cpu",
        dtype="float64", seed=1,
    )
    x, y = rng.standard_normal((7, 4)), rng.integers(0, 3, 7)
    assert gb.gradcheck(model, x, y, "cross_entropy")


def test_layer_norm_gradcheck_on_a_3d_input(rng: np.random.Generator) -> None:
    """The per-position contract: (B, T, F) through the (B·T, F) view, every gradient."""
    layer = _layer_norm(5, rng)
    x = rng.standard_normal((2, 3, 5))
    r = rng.standard_normal((2, 3, 5))

    def loss() -> float:
        return float(np.vdot(layer.forward(x), r))

    loss()
    dx = layer.backward(r, True).copy()
    grads = {k: v.copy() for k, v in layer.grads.items()}
    every = [tuple(int(i) for i in idx) for idx in np.ndindex(*x.shape)]
    np.testing.assert_allclose(dx.reshape(-1), central_difference(loss, x, every, 1e-6),
                               rtol=1e-6, atol=1e-8)
    for name in ("weight", "bias"):
        idx = [(j,) for j in range(5)]
        numeric = central_difference(loss, layer.params[name], idx, 1e-6)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-8)


def test_layer_norm_bad_arguments_and_inputs() -> None:
    with pytest.raises(gb.ConfigError, match="only the last axis is supported"):
        gb.LayerNorm((3, 4))
    with pytest.raises(gb.ConfigError, match="eps"):
        gb.LayerNorm(4, eps=0.0)
    with pytest.raises(gb.ConfigError, match="normalized_shape"):
        gb.LayerNorm(0)
    layer = gb.LayerNorm(4).build("cpu", "float64")
    with pytest.raises(gb.ShapeError, match=r"LayerNorm 4\): expected an input of shape"):
        layer.forward(np.zeros((2, 5)))
    with pytest.raises(gb.ShapeError, match="backward called before forward"):
        gb.LayerNorm(4).build("cpu").backward(np.zeros((2, 4)), True)
    with pytest.raises(gb.ShapeError, match=r"LayerNorm 5.*expects 5 input features"):
        gb.Sequential([gb.Dense(3, 4), gb.LayerNorm(5)], device="cpu")


# --- Dropout -----------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1.0, 1.5, -0.1, True, "0.5", math.nan])
def test_dropout_rejects_bad_p(p: Any) -> None:
    with pytest.raises(gb.ConfigError, match=r"Dropout: p must be a number in \[0, 1\)"):
        gb.Dropout(p)


def _dropout(p: float, seed: int = 0) -> gb.Dropout:
    return gb.Dropout(p).build("cpu", "float64", seed=seed)


def test_dropout_training_values_and_kept_fraction(rng: np.random.Generator) -> None:
    p = 0.3
    layer = _dropout(p)
    x = rng.standard_normal((300, 101)) + 5.0  # no zero inputs
    out = layer.forward(x)
    kept = out != 0
    np.testing.assert_array_equal(out[kept], x[kept] * (1.0 / (1.0 - p)))
    n = x.size
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept.sum() - n * (1 - p)) <= 4 * sigma
    # the mask is the Philox scheme's, element by element
    seed, _ = layer.generator_state()
    words = dropout_words(np, n, seed, 0)
    np.testing.assert_array_equal(kept.reshape(-1), words >= keep_threshold(p))


def test_dropout_backward_uses_the_forward_mask(rng: np.random.Generator) -> None:
    layer = _dropout(0.5)
    x = rng.standard_normal((40, 13)) + 5.0
    out = layer.forward(x).copy()
    delta = rng.standard_normal(x.shape)
    dx = layer.backward(delta, True)
    np.testing.assert_array_equal(dx, np.where(out != 0, delta * 2.0, 0.0))
    assert layer.backward(delta, False) is None


def test_dropout_steps_give_new_masks_and_eval_is_identity(rng: np.random.Generator) -> None:
    layer = _dropout(0.5, seed=3)
    x = rng.standard_normal((20, 30)) + 5.0
    first = layer.forward(x) != 0
    second = layer.forward(x) != 0
    assert not np.array_equal(first, second)
    assert layer.generator_state()[1] == 2
    layer.training = False
    assert layer.forward(x) is x  # the identity: no copy, no draw
    assert layer.backward(x, True) is x
    assert layer.generator_state()[1] == 2
    assert _dropout(0.0).forward(x) is x  # p = 0: the identity in training too


def test_dropout_same_seed_same_masks_and_layers_differ(rng: np.random.Generator) -> None:
    x = rng.standard_normal((16, 24)) + 5.0

    def masks(seed: int | None) -> list[np.ndarray]:
        model = gb.Sequential([gb.Dropout(0.5), gb.Dropout(0.5)], device="cpu", seed=seed)
        outs = []
        for _ in range(3):
            model.forward(x)
            outs += [layer.workspaces.get(x.shape, {})["mask"].copy() for layer in model.layers]
        return outs

    a, b = masks(7), masks(7)
    for m, n in zip(a, b, strict=True):
        np.testing.assert_array_equal(m, n)
    assert not np.array_equal(a[0], a[1])  # layer 0 and layer 1: other keys
    assert not np.array_equal(masks(8)[0], a[0])
    unseeded = gb.Sequential([gb.Dropout(0.5)], device="cpu").layers[0].generator_state()
    assert unseeded[1] == 0


def test_dropout_seed_is_the_model_seed_with_the_layer_index() -> None:
    from gpubackprop.layers_norm import dropout_seed

    model = gb.Sequential([gb.Dense(3, 3), gb.Dropout(0.2)], device="cpu", seed=11)
    expected = int(np.random.SeedSequence([11, 1]).generate_state(1, np.uint64)[0])
    assert model.layers[1].generator_state() == (expected, 0) == (dropout_seed(11, 1), 0)
    built = gb.Dropout(0.2).build("cpu", seed=11)
    assert built.generator_state() == (dropout_seed(11, 0), 0)


def test_dropout_generator_state_round_trip_and_errors() -> None:
    layer = _dropout(0.5)
    layer.set_generator_state((2**64 - 1, 41))
    assert layer.generator_state() == (2**64 - 1, 41)
    with pytest.raises(gb.ConfigError, match=r"two ints in \[0, 2\*\*64\)"):
        layer.set_generator_state((1, -1))
    with pytest.raises(gb.ConfigError, match="no generator yet"):
        gb.Dropout(0.5).generator_state()
    with pytest.raises(gb.ShapeError, match="backward called before forward"):
        layer.backward(np.zeros((1, 1)), True)


def test_dropout_on_a_3d_input(rng: np.random.Generator) -> None:
    layer = _dropout(0.4)
    x = rng.standard_normal((3, 5, 7)) + 5.0
    out = layer.forward(x)
    assert out.shape == x.shape
    seed, _ = layer.generator_state()
    np.testing.assert_array_equal(
        (out != 0).reshape(-1), dropout_words(np, x.size, seed, 0) >= keep_threshold(0.4)
    )
    assert layer.backward(np.ones(x.shape), True).shape == x.shape


def test_gradcheck_of_a_model_with_dropout_holds_the_mask(rng: np.random.Generator) -> None:
    """In training mode every finite-difference forward starts from the same generator
    state (a fixed counter), so the analytic and numeric gradients see one mask."""
    model = gb.Sequential(
        [gb.Dense(5, 8, "tanh"), gb.Dropout(0.5), gb.LayerNorm(8), gb.Dense(8, 3)],
        device="cpu", dtype="float64", seed=2,
    )
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    assert model.training
    assert gb.gradcheck(model, x, y, "cross_entropy")
    model.eval()
    assert gb.gradcheck(model, x, y, "cross_entropy")


# --- modes -------------------------------------------------------------------------------------
def _model(seed: int = 0) -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(4, 16, "relu"), gb.Dropout(0.5), gb.LayerNorm(16), gb.Dense(16, 3)],
        device="cpu", seed=seed,
    )


def test_train_and_eval_switch_every_layer() -> None:
    model = _model()
    assert model.training and all(layer.training for layer in model.layers)
    assert model.eval() is model and not model.training
    assert not any(layer.training for layer in model.layers)
    assert model.train() is model and model.training
    with model.mode(False):
        assert not model.training
    assert model.training
    assert gb.Layer.training is True


def test_fit_trains_in_training_mode_evaluate_and_predict_in_eval(
    rng: np.random.Generator,
) -> None:
    model = _model()
    dropout = model.layers[1]
    x, y = rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    model.eval()
    model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(lr=0.1), epochs=2,
              batch_size=10, validation_data=(x, y), verbose=False)
    assert dropout.generator_state()[1] == 8  # one draw per training step, none in validation
    assert not model.training  # the mode it found
    model.train()
    model.evaluate(x, y, "cross_entropy")
    out = model.predict(x)
    assert dropout.generator_state()[1] == 8 and model.training
    with model.mode(False):
        np.testing.assert_array_equal(out, model.forward(x))
    print(model.explain(x[:3]), file=io.StringIO())
    text = str(model.explain(x[:3], y[:3], "cross_entropy"))
    assert "Mode: eval" in text and "eval mode: a_2 = a_1" in text
    assert "(g − mean(g) − x̂ mean(g ⊙ x̂))" in text
    assert dropout.generator_state()[1] == 8 and model.training


def test_same_seed_same_training_run(rng: np.random.Generator) -> None:
    x, y = rng.standard_normal((30, 4)).astype(np.float32), rng.integers(0, 3, 30)
    runs = []
    for _ in range(2):
        model = _model(seed=5)
        model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.Adam(1e-2), epochs=2,
                  batch_size=8, verbose=False)
        runs.append(model.flat_params.copy())
    np.testing.assert_array_equal(*runs)


# --- the reference ops run on CuPy's rules --------------------------------------------------------
class _CupyLikeOps(NumpyOps):
    xp = CUPY_LIKE


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_norm_reference_ops_take_only_what_cupy_takes(
    dtype: str, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((7, 13)).astype(dtype)
    w, b = rng.standard_normal(13).astype(dtype), rng.standard_normal(13).astype(dtype)
    delta = rng.standard_normal((7, 13)).astype(dtype)
    results = []
    for ops in (NumpyOps(), _CupyLikeOps()):
        out, mean, rstd = np.empty_like(x), np.empty(7, dtype), np.empty(7, dtype)
        ops.layer_norm_forward(x, w, b, out, mean, rstd, eps=1e-5)
        dx, dw, db = np.empty_like(x), np.empty(13, dtype), np.empty(13, dtype)
        ops.layer_norm_backward(delta, x, w, mean, rstd, dx, dw, db)
        state = np.array([12345, 6, 0], dtype=np.uint64)
        mask, dropped = np.empty(x.shape, np.uint8), np.empty_like(x)
        ops.dropout_forward(x, dropped, mask, state, threshold=keep_threshold(0.3), scale=1 / 0.7)
        ddx = ops.dropout_backward(delta, mask, np.empty_like(x), scale=1 / 0.7)
        assert int(state[1]) == 7
        results.append((out, mean, rstd, dx, dw, db, mask, dropped, ddx))
    for a, c in zip(*results, strict=True):
        np.testing.assert_array_equal(a, c)


def test_dropout_gradcheck_alone(rng: np.random.Generator) -> None:
    x = rng.standard_normal((6, 9))
    assert gb.gradcheck(gb.Dropout(0.4), x)  # wrapped in a float64 model, training mode
    assert gb.gradcheck(_dropout(0.4, seed=2), x)  # built standalone
    assert gb.LayerNorm.input_kind == gb.Dropout.input_kind == "features"


def test_dropout_words_in_chunks_equal_one_philox_call() -> None:
    from gpubackprop.philox import CHUNK

    n, seed, step = 4 * CHUNK + 4 * 3 + 2, 2**63 + 12345, 2**33 + 1
    groups = -(-n // 4)
    j = np.arange(groups, dtype=np.uint64)
    counter = np.stack([j & 0xFFFFFFFF, j >> 32, np.full(groups, 1), np.full(groups, 2)])
    block = philox4x32_10(np, counter.astype(np.uint64), (12345, 2**31))
    np.testing.assert_array_equal(dropout_words(np, n, seed, step), block.T.reshape(-1)[:n])


def test_layers_called_twice_in_a_graph(rng: np.random.Generator) -> None:
    """As graph gates each call keeps its own μ, r and mask (backward_state), so a layer
    used twice gets the sum of both calls' gradients."""
    norm = _layer_norm(6, rng)
    drop = _dropout(0.3, seed=5)
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((4, 6)) * 3 + 2
    states = drop.generator_state()

    def f(x: gb.Tensor, y: gb.Tensor) -> gb.Tensor:
        drop.set_generator_state(states)  # the same masks at every evaluation
        return (drop(norm(x)) * drop(norm(y)) * norm(x)).sum()

    assert gb.graph_gradcheck(f, a, b)
