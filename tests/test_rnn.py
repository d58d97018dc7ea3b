"""The vanilla RNN: forward, backprop through time, carried state, clipping, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backend import get_backend

from .helpers import numeric_gradient, to_numpy

F = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}


def reference_forward(
    params: dict[str, np.ndarray], x: np.ndarray, h0: np.ndarray | None, act: str
) -> np.ndarray:
    """h_t = f(x_t Wxhᵀ + h_{t−1} Whhᵀ + b_h), step by step; returns H (B, T, hidden)."""
    h = np.zeros((x.shape[0], params["Whh"].shape[0])) if h0 is None else h0
    out = []
    for t in range(x.shape[1]):
        h = F[act](x[:, t] @ params["Wxh"].T + h @ params["Whh"].T + params["bh"])
        out.append(h)
    return np.stack(out, axis=1)


# --- backprop through time against finite differences --------------------------------------------
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize(
    ("batch", "steps", "with_h0", "with_dh_last"),
    [(1, 1, False, False), (1, 1, True, True), (2, 3, False, True), (3, 4, True, False),
     (1, 5, True, True), (4, 1, True, True)],
)
def test_bptt_matches_central_differences(
    device: str, act: str, batch: int, steps: int, with_h0: bool, with_dh_last: bool
) -> None:
    rnn = gb.RNN(3, 4, act, device=device, dtype="float64", seed=7)
    be = rnn.backend
    rng = np.random.default_rng(batch * 10 + steps)
    x = be.asarray(rng.standard_normal((batch, steps, 3)))
    h0 = be.asarray(rng.standard_normal((batch, 4))) if with_h0 else None
    r = be.asarray(rng.standard_normal((batch, steps, 4)))
    r_last = be.asarray(rng.standard_normal((batch, 4))) if with_dh_last else None
    if act == "relu":  # keep pre-activations away from the kink at 0
        rnn.parameters()["bh"][...] = 0.3

    def loss() -> float:
        hs, h_last = rnn.forward(x, h0)
        value = float(be.xp.vdot(hs, r))
        return value + (float(be.xp.vdot(h_last, r_last)) if with_dh_last else 0.0)

    loss()
    dx = to_numpy(rnn.backward(r, r_last))
    analytic = {k: to_numpy(v).copy() for k, v in rnn.gradients().items()}
    analytic["x"] = dx
    tensors = {**rnn.parameters(), "x": x}
    if with_h0:
        analytic["h0"] = to_numpy(rnn.grad_h0)
        tensors["h0"] = h0
    for name, tensor in tensors.items():
        np.testing.assert_allclose(
            analytic[name], numeric_gradient(loss, tensor), rtol=1e-6, atol=1e-8, err_msg=name
        )


def test_without_h0_the_state_gradient_is_still_reported() -> None:
    rnn = gb.RNN(2, 3, device="cpu", dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 2))
    hs, _ = rnn.forward(x)
    rnn.backward(np.ones_like(hs))
    # ∂L/∂h0 = dhraw_1 Whh: nonzero though h0 itself was zeros
    assert rnn.grad_h0.shape == (2, 3) and np.abs(rnn.grad_h0).max() > 1e-3


# --- forward values ------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_forward_is_the_recurrence(device: str, act: str) -> None:
    rnn = gb.RNN(5, 6, act, device=device, dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    x, h0 = rng.standard_normal((3, 7, 5)), rng.standard_normal((3, 6))
    params = {k: to_numpy(v) for k, v in rnn.parameters().items()}
    hs, h_last = rnn.forward(rnn.backend.asarray(x), rnn.backend.asarray(h0))
    expected = reference_forward(params, x, h0, act)
    np.testing.assert_allclose(to_numpy(hs), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(h_last), expected[:, -1], rtol=1e-12, atol=1e-12)
    hs0, _ = rnn.forward(rnn.backend.asarray(x))  # h0 = None means zeros
    np.testing.assert_allclose(
        to_numpy(hs0), reference_forward(params, x, None, act), rtol=1e-12, atol=1e-12
    )


def test_two_windows_with_carried_state_equal_one_long_window(device: str) -> None:
    rnn = gb.RNN(4, 8, device=device, dtype="float64", seed=3)
    x = rnn.backend.asarray(np.random.default_rng(4).standard_normal((2, 10, 4)))
    whole, h_whole = rnn.forward(x)
    first, h_mid = rnn.forward(x[:, :5])
    second, h_end = rnn.forward(x[:, 5:], h_mid)
    np.testing.assert_allclose(
        to_numpy(whole), np.concatenate([to_numpy(first), to_numpy(second)], axis=1),
        rtol=1e-13, atol=1e-13,
    )
    np.testing.assert_allclose(to_numpy(h_end), to_numpy(h_whole), rtol=1e-13, atol=1e-13)
    # without the carried state the second window differs
    fresh, _ = rnn.forward(x[:, 5:])
    assert np.abs(to_numpy(fresh) - to_numpy(second)).max() > 1e-3


def test_forward_returns_new_arrays_and_backward_overwrites_gradients() -> None:
    rnn = gb.RNN(2, 3, device="cpu", dtype="float64", seed=0)
    rng = np.random.default_rng(5)
    x, dh = rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 4, 3))
    hs, h_last = rnn.forward(x)
    kept = hs.copy()
    rnn.forward(x * 2)  # reuses the work buffers, not the returned arrays
    np.testing.assert_array_equal(hs, kept)
    assert not np.shares_memory(h_last, hs)
    rnn.forward(x)
    rnn.backward(dh)
    once = rnn.flat_grads.copy()
    rnn.backward(dh)
    np.testing.assert_array_equal(rnn.flat_grads, once)


def test_dtype_float32_by_default_and_inputs_converted() -> None:
    rnn = gb.RNN(2, 3, device="cpu", seed=0)
    assert rnn.flat_params.dtype == np.float32
    hs, _ = rnn.forward(np.ones((1, 2, 2), dtype=np.float64))
    assert hs.dtype == np.float32
    hs_int, _ = rnn.forward(np.ones((1, 2, 2), dtype=np.int64))
    np.testing.assert_array_equal(hs, hs_int)


# --- parameters, init, optimizer -----------------------------------------------------------------
def test_parameters_are_views_of_one_flat_buffer_and_optimizers_step_it() -> None:
    rnn = gb.RNN(3, 5, device="cpu", dtype="float64", seed=0)
    params, grads = rnn.parameters(), rnn.gradients()
    assert list(params) == ["Wxh", "Whh", "bh"] == list(grads)
    assert [tuple(p.shape) for p in params.values()] == [(5, 3), (5, 5), (5,)]
    assert rnn.num_parameters == 15 + 25 + 5 == rnn.flat_params.size
    params["bh"][...] = 0.5
    assert np.all(rnn.flat_params[-5:] == 0.5)
    for g in grads.values():
        assert np.shares_memory(g, rnn.flat_grads)
    x = np.random.default_rng(0).standard_normal((2, 3, 3))
    hs, _ = rnn.forward(x)
    rnn.backward(np.ones_like(hs))
    before = {k: v.copy() for k, v in params.items()}
    gb.optim.SGD(lr=0.1).step(rnn.flat_params, rnn.flat_grads)
    for name, p in rnn.parameters().items():
        np.testing.assert_allclose(p, before[name] - 0.1 * grads[name])


def test_seeded_init_is_reproducible_and_whh_orthogonal() -> None:
    a = gb.RNN(4, 6, device="cpu", dtype="float64", seed=11)
    b = gb.RNN(4, 6, device="cpu", dtype="float64", seed=11)
    c = gb.RNN(4, 6, device="cpu", dtype="float64", seed=12)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert not np.array_equal(a.flat_params, c.flat_params)
    whh = a.parameters()["Whh"]
    np.testing.assert_allclose(whh @ whh.T, np.eye(6), atol=1e-12)
    limit = math.sqrt(6.0 / (4 + 6))
    assert np.abs(a.parameters()["Wxh"]).max() <= limit
    assert np.all(a.parameters()["bh"] == 0)


# --- clip_grad_norm ------------------------------------------------------------------------------
def test_clip_grad_norm_scales_to_max_norm_and_returns_the_norm_before() -> None:
    g = np.array([3.0, 4.0, 0.0, 12.0])  # norm 13
    norm = gb.clip_grad_norm(g, 6.5)
    assert norm == pytest.approx(13.0, rel=1e-15)
    np.testing.assert_allclose(
        g, np.array([3.0, 4.0, 0.0, 12.0]) * 6.5 / (13.0 + 1e-6), rtol=1e-14
    )
    assert np.linalg.norm(g) == pytest.approx(6.5, rel=1e-6)


def test_clip_grad_norm_is_a_no_op_at_or_below_max_norm() -> None:
    g = np.array([3.0, 4.0], dtype=np.float32)
    assert gb.clip_grad_norm(g, 5.0) == pytest.approx(5.0)
    assert gb.clip_grad_norm(g, 100.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(g, [3.0, 4.0])


def test_clip_grad_norm_takes_lists_and_dicts_with_one_global_norm() -> None:
    a, b = np.full((2, 2), 1.0), np.full(5, 2.0)  # norm² = 4 + 20 = 24
    norm = gb.clip_grad_norm({"a": a, "b": b}, 1.0)
    assert norm == pytest.approx(math.sqrt(24.0))
    scale = 1.0 / (math.sqrt(24.0) + 1e-6)
    np.testing.assert_allclose(a, scale)
    np.testing.assert_allclose(b, 2 * scale)
    c, d = np.ones(3), np.ones(1)
    assert gb.clip_grad_norm([c, d], 1.0) == pytest.approx(2.0)
    assert np.sqrt((c**2).sum() + (d**2).sum()) == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_on_a_model_flat_buffer(device: str) -> None:
    rnn = gb.RNN(2, 3, device=device, seed=0)
    rnn.flat_grads[...] = 1.0
    n = rnn.flat_grads.size
    assert gb.clip_grad_norm(rnn.flat_grads, 0.5) == pytest.approx(math.sqrt(n), rel=1e-6)
    assert float(rnn.backend.xp.linalg.norm(rnn.flat_grads)) == pytest.approx(0.5, rel=1e-5)


def test_clip_grad_norm_leaves_non_finite_gradients_alone_and_checks_arguments() -> None:
    g = np.array([np.inf, 1.0])
    assert gb.clip_grad_norm(g, 1.0) == math.inf
    assert g[1] == 1.0
    for bad in (0.0, -1.0, math.nan, math.inf, True, "1"):
        with pytest.raises(gb.ConfigError, match="max_norm"):
            gb.clip_grad_norm(np.ones(2), bad)
    with pytest.raises(gb.DTypeError, match="gradient 0"):
        gb.clip_grad_norm(np.ones(2, dtype=np.int64), 1.0)


# --- errors --------------------------------------------------------------------------------------
def test_wrong_input_rank_or_width_raises_shape_error_naming_the_layer() -> None:
    rnn = gb.RNN(3, 4, device="cpu", seed=0)
    with pytest.raises(gb.ShapeError, match=r"RNN 3->4, tanh.*\(batch, time, 3\).*\(5, 3\)"):
        rnn.forward(np.zeros((5, 3)))
    with pytest.raises(gb.ShapeError, match=r"\(2, 5, 2\)"):
        rnn.forward(np.zeros((2, 5, 2)))
    with pytest.raises(gb.ShapeError, match="empty"):
        rnn.forward(np.zeros((2, 0, 3)))
    with pytest.raises(gb.ShapeError, match=r"h0 of shape .*\(2, 4\), got shape \(3, 4\)"):
        rnn.forward(np.zeros((2, 5, 3)), np.zeros((3, 4)))


def test_backward_errors() -> None:
    rnn = gb.RNN(3, 4, device="cpu", seed=0)
    with pytest.raises(gb.ShapeError, match="before forward"):
        rnn.backward(np.zeros((1, 1, 4)))
    rnn.forward(np.zeros((2, 5, 3)))
    with pytest.raises(gb.ShapeError, match=r"grad_h of shape \(2, 5, 4\).*\(2, 4, 4\)"):
        rnn.backward(np.zeros((2, 4, 4)))
    with pytest.raises(gb.ShapeError, match="grad_h_last"):
        rnn.backward(np.zeros((2, 5, 4)), np.zeros((4,)))


def test_bad_configuration_and_dtypes() -> None:
    with pytest.raises(gb.ConfigError, match="nonlinearity"):
        gb.RNN(3, 4, "sigmoid", device="cpu")
    with pytest.raises(gb.ConfigError, match="hidden_size"):
        gb.RNN(3, 0, device="cpu")
    with pytest.raises(gb.ConfigError, match="input_size"):
        gb.RNN(2.5, 3, device="cpu")
    with pytest.raises(gb.DTypeError):
        gb.RNN(3, 4, device="cpu", dtype="int32")
    with pytest.raises(gb.DTypeError, match="real numbers"):
        gb.RNN(1, 2, device="cpu").forward(np.array([[["a"]]]))


# --- CPU vs GPU ----------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_cpu_and_gpu_agree(act: str) -> None:
    cpu = gb.RNN(37, 65, act, device="cpu", seed=5)
    gpu = gb.RNN(37, 65, act, device="cuda", seed=5)
    np.testing.assert_array_equal(cpu.flat_params, to_numpy(gpu.flat_params))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((19, 23, 37)).astype(np.float32)
    h0 = rng.standard_normal((19, 65)).astype(np.float32)
    dh = rng.standard_normal((19, 23, 65)).astype(np.float32)
    be = get_backend("cuda")
    hs_c, hl_c = cpu.forward(x, h0)
    hs_g, hl_g = gpu.forward(be.asarray(x), be.asarray(h0))
    np.testing.assert_allclose(to_numpy(hs_g), hs_c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(hl_g), hl_c, rtol=1e-4, atol=1e-5)
    dx_c = cpu.backward(dh)
    dx_g = gpu.backward(be.asarray(dh))
    np.testing.assert_allclose(to_numpy(dx_g), dx_c, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(to_numpy(gpu.flat_grads), cpu.flat_grads, rtol=1e-3, atol=1e-3)
    with pytest.raises(gb.DeviceError):
        gpu.forward(x)
