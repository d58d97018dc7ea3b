"""Sequential: forward/backward against hand-written NumPy backprop, flat buffers, the seed."""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest

import gpubackprop as gb

from .helpers import to_numpy


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _three_layer(dtype: str = "float64", seed: int = 0, device: str = "cpu") -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(4, 6, "tanh"), gb.Dense(6, 5, "relu"), gb.Dense(5, 3, "sigmoid")],
        device=device, dtype=dtype, seed=seed,
    )


def _host_params(model: gb.Sequential) -> dict[str, np.ndarray]:
    return {k: to_numpy(v).astype(np.float64) for k, v in model.parameters().items()}


def _randomise(model: gb.Sequential, rng: np.random.Generator) -> None:
    for view in model.parameters().values():
        view[...] = model.to_device(0.5 * rng.standard_normal(view.shape))


def _ref_forward(p: dict[str, np.ndarray], x: np.ndarray):
    z1 = x @ p["0.weight"].T + p["0.bias"]
    a1 = np.tanh(z1)
    z2 = a1 @ p["1.weight"].T + p["1.bias"]
    a2 = np.maximum(z2, 0.0)
    z3 = a2 @ p["2.weight"].T + p["2.bias"]
    a3 = _sig(z3)
    return (z1, a1, z2, a2, z3, a3)


def _ref_backward(p, x, cache, delta_out):
    """The seed's recurrences: δ_k = (δ_{k+1} W_{k+1}) ⊙ σ′(z_k); dW_k = δ_kᵀ a_{k−1}."""
    _z1, a1, z2, a2, _z3, a3 = cache
    d3 = delta_out * a3 * (1 - a3)
    d2 = (d3 @ p["2.weight"]) * (z2 > 0)
    d1 = (d2 @ p["1.weight"]) * (1 - a1**2)
    grads = {
        "0.weight": d1.T @ x, "0.bias": d1.sum(0),
        "1.weight": d2.T @ a1, "1.bias": d2.sum(0),
        "2.weight": d3.T @ a2, "2.bias": d3.sum(0),
    }
    return grads, d1 @ p["0.weight"]


# --- forward / backward -----------------------------------------------------------------------
def test_forward_matches_numpy(rng: np.random.Generator) -> None:
    model = _three_layer()
    _randomise(model, rng)
    x = rng.standard_normal((7, 4))
    out = model.forward(x)
    assert isinstance(out, np.ndarray) and out.shape == (7, 3) and out.dtype == np.float64
    np.testing.assert_allclose(out, _ref_forward(_host_params(model), x)[-1], rtol=1e-13)
    np.testing.assert_array_equal(model(x), out)  # __call__ is forward


def test_backward_matches_hand_backprop(rng: np.random.Generator) -> None:
    model = _three_layer()
    _randomise(model, rng)
    p = _host_params(model)
    x = rng.standard_normal((5, 4))
    g = rng.standard_normal((5, 3))
    model.forward(x)
    assert model.backward(g) is None
    want, want_dx = _ref_backward(p, x, _ref_forward(p, x), g)
    got = model.gradients()
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(to_numpy(got[name]), want[name], rtol=1e-12, atol=1e-14)
    dx = model.backward(g, return_input_grad=True)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-14)


def test_loss_and_grad_matches_hand_backprop(rng: np.random.Generator) -> None:
    model = _three_layer()
    _randomise(model, rng)
    p = _host_params(model)
    x, y = rng.standard_normal((6, 4)), rng.uniform(0, 1, (6, 3))
    value = model.loss_and_grad(x, y, "mse")
    cache = _ref_forward(p, x)
    assert isinstance(value, float)
    assert value == pytest.approx(np.mean((cache[-1] - y) ** 2), rel=1e-13)
    want, _ = _ref_backward(p, x, cache, 2.0 * (cache[-1] - y) / y.size)
    for name, grad in model.gradients().items():
        np.testing.assert_allclose(to_numpy(grad), want[name], rtol=1e-11, atol=1e-15)


def test_backward_overwrites_gradients(rng: np.random.Generator) -> None:
    model = _three_layer()
    x, y = rng.standard_normal((6, 4)), rng.uniform(0, 1, (6, 3))
    model.loss_and_grad(x, y, "mse")
    first = model.flat_grads.copy()
    model.loss_and_grad(x, y, "mse")
    np.testing.assert_array_equal(model.flat_grads, first)  # not 2x


def test_input_grad_matches_finite_differences(rng: np.random.Generator) -> None:
    model = gb.Sequential(
        [gb.Dense(3, 5, "gelu"), gb.Dense(5, 4, "softplus"), gb.Dense(4, 2)],
        device="cpu", dtype="float64", seed=2,
    )
    x = rng.standard_normal((4, 3))
    g = rng.standard_normal((4, 2))
    model.forward(x)
    dx = model.backward(g, return_input_grad=True)
    h = 1e-6
    fd = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp_, xm_ = x.copy(), x.copy()
        xp_[i] += h
        xm_[i] -= h
        fd[i] = np.sum((model.forward(xp_) - model.forward(xm_)) * g) / (2 * h)
    np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-9)


def test_backward_result_is_fresh(rng: np.random.Generator) -> None:
    model = _three_layer()
    x = rng.standard_normal((3, 4))
    model.forward(x)
    dx1 = model.backward(np.ones((3, 3)), return_input_grad=True)
    keep = dx1.copy()
    model.forward(2 * x)
    model.backward(-np.ones((3, 3)), return_input_grad=True)
    np.testing.assert_array_equal(dx1, keep)


# --- flat buffers -----------------------------------------------------------------------------
def test_parameters_are_live_views_of_flat_buffer(rng: np.random.Generator) -> None:
    model = _three_layer()
    params, grads = model.parameters(), model.gradients()
    assert list(params) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert list(grads) == list(params)
    sizes = [v.size for v in params.values()]
    assert sum(sizes) == model.num_parameters == model.flat_params.size == model.flat_grads.size
    assert model.num_parameters == 4 * 6 + 6 + 6 * 5 + 5 + 5 * 3 + 3
    offset = 0
    for name, view in params.items():
        assert np.shares_memory(view, model.flat_params)
        assert np.shares_memory(grads[name], model.flat_grads)
        np.testing.assert_array_equal(view.ravel(), model.flat_params[offset:offset + view.size])
        offset += view.size

    x = rng.standard_normal((2, 4))
    before = model.forward(x)
    params["2.bias"][...] = 100.0  # sigmoid saturates at 1
    after = model.forward(x)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, 1.0)
    model.flat_params[...] = 0.0  # all zero: every output is sigmoid(0)
    np.testing.assert_array_equal(params["0.weight"], 0.0)
    np.testing.assert_array_equal(model.forward(x), 0.5)


def test_gradients_land_in_flat_grads(rng: np.random.Generator) -> None:
    model = _three_layer()
    model.flat_grads[...] = np.nan
    model.loss_and_grad(rng.standard_normal((3, 4)), rng.uniform(0, 1, (3, 3)), "mse")
    assert np.all(np.isfinite(model.flat_grads))
    grads = model.gradients()
    np.testing.assert_array_equal(
        np.concatenate([g.ravel() for g in grads.values()]), model.flat_grads
    )


def test_forward_returns_a_fresh_array(rng: np.random.Generator) -> None:
    model = _three_layer()
    x1, x2 = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    out1 = model.forward(x1)
    keep = out1.copy()
    out2 = model.forward(x2)
    np.testing.assert_array_equal(out1, keep)
    assert not np.shares_memory(out1, out2)
    out2[...] = 0.0  # writing into the result does not affect the model
    model.backward(np.ones((4, 3)))
    np.testing.assert_array_equal(model.forward(x1), keep)


def test_input_is_not_modified(rng: np.random.Generator) -> None:
    model = _three_layer()
    x = rng.standard_normal((4, 4))
    x0 = x.copy()
    model.forward(x)
    model.backward(np.ones((4, 3)), return_input_grad=True)
    model.loss_and_grad(x, np.zeros((4, 3)), "mse")
    np.testing.assert_array_equal(x, x0)


# --- training step ----------------------------------------------------------------------------
def test_train_step_with_sgd_equals_hand_step(rng: np.random.Generator) -> None:
    model = _three_layer()
    _randomise(model, rng)
    p = _host_params(model)
    x, y = rng.standard_normal((8, 4)), rng.uniform(0, 1, (8, 3))
    lr = 0.05
    value = model.train_step(x, y, gb.losses.MSE(), gb.optim.SGD(lr))
    cache = _ref_forward(p, x)
    assert value == pytest.approx(np.mean((cache[-1] - y) ** 2), rel=1e-13)
    grads, _ = _ref_backward(p, x, cache, 2.0 * (cache[-1] - y) / y.size)
    for name, view in model.parameters().items():
        np.testing.assert_allclose(to_numpy(view), p[name] - lr * grads[name], rtol=1e-12,
                                   atol=1e-15)


def test_train_step_softmax_ce(rng: np.random.Generator) -> None:
    model = gb.Sequential([gb.Dense(3, 4, "tanh"), gb.Dense(4, 3)], device="cpu",
                          dtype="float64", seed=5)
    p = _host_params(model)
    x, labels = rng.standard_normal((6, 3)), np.array([0, 1, 2, 2, 1, 0])
    lr = 0.3
    value = model.train_step(x, labels, "cross_entropy", gb.optim.SGD(lr))
    a1 = np.tanh(x @ p["0.weight"].T + p["0.bias"])
    z = a1 @ p["1.weight"].T + p["1.bias"]
    e = np.exp(z - z.max(1, keepdims=True))
    soft = e / e.sum(1, keepdims=True)
    assert value == pytest.approx(-np.mean(np.log(soft[np.arange(6), labels])), rel=1e-12)
    d2 = soft.copy()
    d2[np.arange(6), labels] -= 1
    d2 /= 6
    d1 = (d2 @ p["1.weight"]) * (1 - a1**2)
    want = {"0.weight": d1.T @ x, "0.bias": d1.sum(0), "1.weight": d2.T @ a1,
            "1.bias": d2.sum(0)}
    for name, view in model.parameters().items():
        np.testing.assert_allclose(to_numpy(view), p[name] - lr * want[name], rtol=1e-12,
                                   atol=1e-15)


# --- dtypes of inputs -------------------------------------------------------------------------
def test_float32_model_keeps_float32(rng: np.random.Generator) -> None:
    model = _three_layer(dtype="float32")
    assert model.flat_params.dtype == np.float32 and model.flat_grads.dtype == np.float32
    x64 = rng.standard_normal((5, 4))
    out = model.forward(x64)
    assert out.dtype == np.float32
    ref = _ref_forward(_host_params(model), x64.astype(np.float32).astype(np.float64))[-1]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    dx = model.backward(np.ones((5, 3)), return_input_grad=True)  # float64 grad_output too
    assert dx.dtype == np.float32
    model.loss_and_grad(x64, rng.uniform(0, 1, (5, 3)), "mse")
    assert model.flat_grads.dtype == np.float32


@pytest.mark.parametrize("int_dtype", [np.int64, np.int32, np.uint8])
def test_integer_inputs_work(int_dtype: type) -> None:
    model = _three_layer()
    xi = np.arange(12).reshape(3, 4).astype(int_dtype)
    np.testing.assert_array_equal(model.forward(xi), model.forward(xi.astype(np.float64)))
    model32 = _three_layer(dtype="float32")
    assert model32.forward(xi).dtype == np.float32


def test_non_contiguous_inputs(rng: np.random.Generator) -> None:
    model = _three_layer()
    base = rng.standard_normal((6, 8))
    for x in (base[:, ::2], np.asfortranarray(base[:, :4]), base[::2, 1:5], base[:, :4].T.T):
        want = _ref_forward(_host_params(model), np.ascontiguousarray(x))[-1]
        np.testing.assert_allclose(model.forward(x), want, rtol=1e-13)
        model.backward(np.ones((x.shape[0], 3)))
        grads = _ref_backward(_host_params(model), np.ascontiguousarray(x),
                              _ref_forward(_host_params(model), np.ascontiguousarray(x)),
                              np.ones((x.shape[0], 3)))[0]
        np.testing.assert_allclose(model.gradients()["0.weight"], grads["0.weight"], rtol=1e-12,
                                   atol=1e-14)


def test_list_input_works() -> None:
    model = _three_layer()
    x = [[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]]
    np.testing.assert_array_equal(model.forward(x), model.forward(np.array(x)))


def test_to_device_casts_to_model_dtype() -> None:
    model = _three_layer(dtype="float32")
    x = model.to_device(np.ones((2, 4), dtype=np.float64))
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    assert model.to_device(np.ones((2, 4), dtype=np.int64)).dtype == np.float32


# --- the seed notes ---------------------------------------------------------------------------
def test_seed_two_layer_sigmoid_network() -> None:
    n, d_in, h, d_out = 64, 1000, 100, 10
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((n, d_in)), rng.standard_normal((n, d_out))
    lr = 1e-4
    model = gb.Sequential(
        [gb.Dense(d_in, h, "sigmoid", bias=False), gb.Dense(h, d_out, bias=False)],
        device="cpu", dtype="float64", seed=0,
    )
    assert list(model.parameters()) == ["0.weight", "1.weight"]
    loss = gb.losses.MSE(reduction="sum")
    opt = gb.optim.SGD(lr)
    params = model.parameters()
    w1 = params["0.weight"].T.copy()  # the seed's (D_in, H)
    w2 = params["1.weight"].T.copy()  # the seed's (H, D_out)
    assert w1.shape == (d_in, h) and w2.shape == (h, d_out)

    # gradients of one pass equal the seed's formulas
    value = model.loss_and_grad(x, y, loss)
    hh = 1 / (1 + np.exp(-x.dot(w1)))
    y_pred = hh.dot(w2)
    assert value == pytest.approx(np.square(y_pred - y).sum(), rel=1e-12)
    grad_y_pred = 2.0 * (y_pred - y)
    grad_w2 = hh.T.dot(grad_y_pred)
    grad_h = grad_y_pred.dot(w2.T)
    grad_w1 = x.T.dot(grad_h * hh * (1 - hh))
    grads = model.gradients()
    np.testing.assert_allclose(grads["0.weight"], grad_w1.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["1.weight"], grad_w2.T, rtol=1e-10, atol=1e-12)

    # a few SGD steps: same weights as the seed's loop, and the loss goes down
    losses = []
    for _ in range(5):
        hh = 1 / (1 + np.exp(-x.dot(w1)))
        y_pred = hh.dot(w2)
        seed_loss = np.square(y_pred - y).sum()
        grad_y_pred = 2.0 * (y_pred - y)
        grad_w2 = hh.T.dot(grad_y_pred)
        grad_h = grad_y_pred.dot(w2.T)
        grad_w1 = x.T.dot(grad_h * hh * (1 - hh))
        w1 -= lr * grad_w1
        w2 -= lr * grad_w2
        engine_loss = model.train_step(x, y, loss, opt)
        assert engine_loss == pytest.approx(seed_loss, rel=1e-10)
        losses.append(engine_loss)
        np.testing.assert_allclose(params["0.weight"], w1.T, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(params["1.weight"], w2.T, rtol=1e-10, atol=1e-13)
    assert all(b < a for a, b in itertools.pairwise(losses))


# --- predict / evaluate -----------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 3, 7, 20, 1024])
def test_predict_in_batches_equals_forward(batch_size: int, rng: np.random.Generator) -> None:
    model = _three_layer()
    x = rng.standard_normal((20, 4))
    out = model.predict(x, batch_size=batch_size)
    assert isinstance(out, np.ndarray) and out.shape == (20, 3)
    np.testing.assert_allclose(out, model.forward(x), rtol=1e-14)  # BLAS may differ by an ulp
    np.testing.assert_allclose(out, _ref_forward(_host_params(model), x)[-1], rtol=1e-13)


def test_evaluate_cross_entropy_vs_hand(rng: np.random.Generator) -> None:
    model = gb.Sequential([gb.Dense(4, 5, "relu"), gb.Dense(5, 3)], device="cpu",
                          dtype="float64", seed=1)
    x, labels = rng.standard_normal((23, 4)), rng.integers(0, 3, 23)
    p = _host_params(model)
    z = np.maximum(x @ p["0.weight"].T + p["0.bias"], 0) @ p["1.weight"].T + p["1.bias"]
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    want_loss = float(np.mean(lse - z[np.arange(23), labels]))
    want_acc = float(np.mean(z.argmax(1) == labels))
    for bs in (5, 23, 100):
        result = model.evaluate(x, labels, "cross_entropy", batch_size=bs)
        assert set(result) == {"loss", "accuracy"}
        assert result["loss"] == pytest.approx(want_loss, rel=1e-12)
        assert result["accuracy"] == pytest.approx(want_acc, abs=1e-15)
    onehot = np.eye(3)[labels]
    result = model.evaluate(x, onehot, "cross_entropy", batch_size=4)
    assert result["loss"] == pytest.approx(want_loss, rel=1e-12)
    assert result["accuracy"] == pytest.approx(want_acc, abs=1e-15)
    assert model.evaluate(x, labels, "cross_entropy", metrics=()) == {
        "loss": pytest.approx(want_loss, rel=1e-12)
    }


def test_evaluate_binary_single_output(rng: np.random.Generator) -> None:
    model = gb.Sequential([gb.Dense(2, 1)], device="cpu", dtype="float64", seed=0)
    model.parameters()["0.weight"][...] = [[1.0, -1.0]]
    x = rng.standard_normal((30, 2))
    y = (rng.uniform(size=30) < 0.5).astype(float)
    z = x[:, 0] - x[:, 1]
    result = model.evaluate(x, y, "bce_with_logits", batch_size=8)
    want = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    assert result["loss"] == pytest.approx(want, rel=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean((z > 0) == (y > 0.5)))
    # MSE reports no metric by default; accuracy asked for thresholds the output at 0.5
    assert set(model.evaluate(x, y, "mse", batch_size=8)) == {"loss"}
    result = model.evaluate(x, y, "mse", metrics=("accuracy",), batch_size=8)
    assert result["loss"] == pytest.approx(np.mean((z - y) ** 2), rel=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean((z > 0.5) == (y > 0.5)))


def test_evaluate_does_not_touch_parameters(rng: np.random.Generator) -> None:
    model = _three_layer()
    before = model.flat_params.copy()
    model.evaluate(rng.standard_normal((9, 4)), rng.uniform(0, 1, (9, 3)), "mse", batch_size=4)
    np.testing.assert_array_equal(model.flat_params, before)


# --- the doors to train.py -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fit", "evaluate", "predict"])
def test_doors_have_train_signatures_and_pass_every_argument(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """help(model.fit) shows the real keywords: Sequential.<name> has train.<name>'s
    signature without ``model`` (names, kinds, defaults, annotations) and hands every
    argument over unchanged."""
    door = inspect.signature(getattr(gb.Sequential, name))
    room = inspect.signature(getattr(gb.train, name))
    assert list(door.parameters.values())[1:] == list(room.parameters.values())[1:]
    assert door.return_annotation == room.return_annotation
    assert not any(p.kind is p.VAR_KEYWORD for p in door.parameters.values())
    doc = getattr(gb.Sequential, name).__doc__
    for parameter in list(door.parameters)[1:]:
        assert parameter in doc, f"Sequential.{name}'s docstring does not explain {parameter}"
    seen: dict[str, object] = {}

    def record(*args: object, **kwargs: object) -> str:
        seen.update(room.bind(*args, **kwargs).arguments)
        return "done"

    monkeypatch.setattr(gb.train, name, record)
    model = _three_layer()
    sentinels = {p: object() for p in list(room.parameters)[1:]}
    positional = [v for p, v in sentinels.items()
                  if room.parameters[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keywords = {p: v for p, v in sentinels.items()
                if room.parameters[p].kind is inspect.Parameter.KEYWORD_ONLY}
    assert getattr(model, name)(*positional, **keywords) == "done"
    assert seen == {"model": model, **sentinels}


# --- description ------------------------------------------------------------------------------
def test_repr_lists_layers_and_parameter_count() -> None:
    model = gb.Sequential(
        [gb.Dense(100, 30, "relu"), gb.Activation("tanh"), gb.Dense(30, 10, bias=False)],
        device="cpu", dtype="float64",
    )
    text = repr(model)
    assert "Sequential(device='cpu', dtype='float64'" in text
    assert "0: Dense 100->30, relu" in text
    assert "1: Activation tanh" in text
    assert "2: Dense 30->10, no bias" in text
    count = 100 * 30 + 30 + 30 * 10
    assert model.num_parameters == count
    assert f"{count:,} parameters" in text
    assert model.device == "cpu"
    assert math.prod(model.flat_params.shape) == count


# --- GPU --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_device_forward_backward_match_cpu(
    device: str, dtype: str, rng: np.random.Generator
) -> None:
    cpu = _three_layer(dtype=dtype, seed=3)
    dev = _three_layer(dtype=dtype, seed=3, device=device)
    np.testing.assert_array_equal(to_numpy(dev.flat_params), to_numpy(cpu.flat_params))
    x, y = rng.standard_normal((16, 4)), rng.uniform(0, 1, (16, 3))
    xd, yd = dev.to_device(x), dev.to_device(y)
    assert dev.backend.is_native(xd)
    rtol, atol = (1e-5, 1e-6) if dtype == "float32" else (1e-10, 1e-13)
    out = dev.forward(xd)
    assert dev.backend.is_native(out) and out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(to_numpy(out), cpu.forward(x), rtol=rtol, atol=atol)
    v_dev = dev.loss_and_grad(xd, yd, "mse")
    v_cpu = cpu.loss_and_grad(x, y, "mse")
    assert v_dev == pytest.approx(v_cpu, rel=rtol)
    np.testing.assert_allclose(to_numpy(dev.flat_grads), cpu.flat_grads, rtol=rtol * 10,
                               atol=atol)
    dx_dev = dev.backward(dev.to_device(np.ones((16, 3))), return_input_grad=True)
    dx_cpu = cpu.backward(np.ones((16, 3)), return_input_grad=True)
    np.testing.assert_allclose(to_numpy(dx_dev), dx_cpu, rtol=rtol * 10, atol=atol)
    pred = dev.predict(x, batch_size=5)
    assert isinstance(pred, np.ndarray)
    np.testing.assert_allclose(pred, cpu.predict(x, batch_size=5), rtol=rtol, atol=atol)
