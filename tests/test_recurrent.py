"""LSTM and GRU layers, and RNN as a layer: finite-difference gradients (float64),
parity with PyTorch (outputs, final states, every gradient, to 1e-10), truncated BPTT,
bad inputs, checkpoints, and the reference cell ops on a CuPy-like module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.layers_recurrent import Recurrent

from .cupy_like import CUPY_LIKE
from .helpers import numeric_gradient, to_numpy

B, T, N_IN, H = 3, 5, 4, 7  # odd sizes: no dimension equals another
CELLS = [gb.LSTM, gb.GRU]
NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _state(cls: type[Recurrent], rng: np.random.Generator, batch: int = B) -> Any:
    """A random initial state of the cell's kind: (h, c) for LSTM, h for GRU."""
    if cls is gb.LSTM:
        return rng.standard_normal((batch, H)), rng.standard_normal((batch, H))
    return rng.standard_normal((batch, H))


def _parts(state: Any) -> list[Any]:
    return list(state) if isinstance(state, tuple) else [state]


def _built(cls: type[Recurrent], device: str = "cpu", seed: int = 1) -> Recurrent:
    return cls(N_IN, H).build(device, "float64", seed=seed)


# --- gradients --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_finite_difference_gradients_of_everything(
    cls: type[Recurrent], rng: np.random.Generator
) -> None:
    """L = Σ out ⊙ R + Σ final_state ⊙ S: every parameter, x and the initial state."""
    layer = _built(cls)
    x = rng.standard_normal((B, T, N_IN))
    state = _state(cls, rng)
    r = rng.standard_normal((B, T, H))
    s = _state(cls, rng)

    def loss() -> float:
        out, final = layer.forward_with_state(x, state)
        return float(np.vdot(out, r) + sum(np.vdot(f, w) for f, w in
                                            zip(_parts(final), _parts(s), strict=True)))

    loss()
    dx, d_state = layer.backward_with_state(r, s)
    analytic = {name: layer.grads[name].copy() for name in NAMES}
    analytic["x"] = np.array(dx)
    for k, part in enumerate(_parts(d_state)):
        analytic[f"state{k}"] = part
    tensors = {**layer.params, "x": x, **{f"state{k}": p for k, p in enumerate(_parts(state))}}
    for name, tensor in tensors.items():
        numeric = numeric_gradient(loss, tensor)
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


# --- PyTorch parity ---------------------------------------------------------------------------
def _torch_twin(layer: Recurrent) -> Any:
    torch = pytest.importorskip("torch")
    cls = torch.nn.LSTM if isinstance(layer, gb.LSTM) else torch.nn.GRU
    twin = cls(layer.input_size, layer.hidden_size, batch_first=True).double()
    with torch.no_grad():
        for name in NAMES:
            getattr(twin, f"{name}_l0").copy_(torch.from_numpy(to_numpy(layer.params[name])))
    return twin


def _torch_state(state: Any) -> Any:
    import torch

    if state is None:
        return None
    parts = [torch.tensor(to_numpy(p)[None], requires_grad=True) for p in _parts(state)]
    return tuple(parts) if len(parts) > 1 else parts[0]


@pytest.mark.parametrize("with_state", [False, True], ids=["zeros", "h0"])
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_matches_pytorch(
    cls: type[Recurrent], with_state: bool, device: str, rng: np.random.Generator
) -> None:
    torch = pytest.importorskip("torch")
    layer = _built(cls, device)
    twin = _torch_twin(layer)
    xp = layer.backend.xp if layer.backend is not None else np
    x = rng.standard_normal((B, T, N_IN))
    state = _state(cls, rng) if with_state else None
    r = rng.standard_normal((B, T, H))
    s = _state(cls, rng)

    dev_state = None if state is None else (
        tuple(xp.asarray(p) for p in state) if cls is gb.LSTM else xp.asarray(state))
    out, final = layer.forward_with_state(xp.asarray(x), dev_state)
    dev_s = tuple(xp.asarray(p) for p in s) if cls is gb.LSTM else xp.asarray(s)
    dx, d_state = layer.backward_with_state(xp.asarray(r), dev_s)

    xt = torch.tensor(x, requires_grad=True)
    st = _torch_state(state)
    out_t, final_t = twin(xt, st)
    loss = (out_t * torch.from_numpy(r)).sum() + sum(
        (f[0] * torch.from_numpy(w)).sum()
        for f, w in zip(_parts(final_t), _parts(s), strict=True)
    )
    loss.backward()

    tol = {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(to_numpy(out), out_t.detach().numpy(), **tol)
    for mine, theirs in zip(_parts(final), _parts(final_t), strict=True):
        np.testing.assert_allclose(to_numpy(mine), theirs[0].detach().numpy(), **tol)
    for name in NAMES:
        np.testing.assert_allclose(
            to_numpy(layer.grads[name]), getattr(twin, f"{name}_l0").grad.numpy(), **tol,
            err_msg=name,
        )
    np.testing.assert_allclose(to_numpy(dx), xt.grad.numpy(), **tol)
    if st is not None:
        for mine, theirs in zip(_parts(d_state), _parts(st), strict=True):
            np.testing.assert_allclose(to_numpy(mine), theirs.grad.numpy()[0], **tol)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_truncated_bptt_matches_pytorch_with_detach(
    cls: type[Recurrent], rng: np.random.Generator
) -> None:
    """Two windows, the state carried by initial_state = final_state: gradients of
    each window equal PyTorch's with the carried state detached."""
    torch = pytest.importorskip("torch")
    layer = _built(cls)
    twin = _torch_twin(layer)
    windows = [rng.standard_normal((B, T, N_IN)) for _ in range(2)]
    grads = [rng.standard_normal((B, T, H)) for _ in range(2)]
    state_t = None
    for x, r in zip(windows, grads, strict=True):
        out = layer.forward(x)
        layer.backward(r, True)
        layer.initial_state = layer.final_state
        twin.zero_grad()
        out_t, final_t = twin(torch.from_numpy(x), state_t)
        (out_t * torch.from_numpy(r)).sum().backward()
        state_t = tuple(p.detach() for p in final_t) if cls is gb.LSTM else final_t.detach()
        np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-10, atol=1e-10)
        for name in NAMES:
            np.testing.assert_allclose(
                layer.grads[name], getattr(twin, f"{name}_l0").grad.numpy(),
                rtol=1e-10, atol=1e-10, err_msg=name,
            )
    for mine, theirs in zip(_parts(layer.final_state), _parts(state_t), strict=True):
        np.testing.assert_allclose(mine, theirs[0].numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_pytorch_initialisation_and_layout(cls: type[Recurrent]) -> None:
    layer = cls(N_IN, H).build("cpu", "float64", seed=0)
    gates = 4 if cls is gb.LSTM else 3
    assert [(n, s) for n, s in layer.param_shapes()] == [
        ("weight_ih", (gates * H, N_IN)), ("weight_hh", (gates * H, H)),
        ("bias_ih", (gates * H,)), ("bias_hh", (gates * H,)),
    ]
    bound = 1 / np.sqrt(H)
    for name in NAMES:
        p = layer.params[name]
        assert np.all(np.abs(p) <= bound) and np.abs(p).max() > 0.8 * bound, name
    again = cls(N_IN, H).build("cpu", "float64", seed=0)
    np.testing.assert_array_equal(layer.params["weight_hh"], again.params["weight_hh"])
    assert cls.input_kind == "sequence"


# --- bad inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_bad_inputs_raise_shape_errors_naming_the_layer(
    cls: type[Recurrent], rng: np.random.Generator
) -> None:
    layer = _built(cls)
    label = f"{cls.__name__} {N_IN}->{H}"
    with pytest.raises(gb.ShapeError, match=rf"{label}.*\(batch, time, {N_IN}\).*one sequence"):
        layer.forward(rng.standard_normal((T, N_IN)))
    with pytest.raises(gb.ShapeError, match=rf"{label}.*\(batch, time, {N_IN}\)"):
        layer.forward(rng.standard_normal((B, T, N_IN + 1)))
    with pytest.raises(gb.ShapeError, match=rf"{label}.*empty"):
        layer.forward(np.zeros((B, 0, N_IN)))
    with pytest.raises(gb.ShapeError, match=rf"{label}.*backward called before forward"):
        cls(N_IN, H).build("cpu", "float64").backward(np.zeros((B, T, H)), True)
    bad_state = _state(cls, rng, batch=B + 1)
    with pytest.raises(gb.ShapeError, match=rf"{label}.*initial state.*\({B}, {H}\)"):
        layer.forward_with_state(rng.standard_normal((B, T, N_IN)), bad_state)
    layer.initial_state = bad_state
    with pytest.raises(gb.ShapeError, match=label):
        layer.forward(rng.standard_normal((B, T, N_IN)))
    layer.initial_state = None
    layer.forward(rng.standard_normal((B, T, N_IN)))
    with pytest.raises(gb.ShapeError, match=rf"{label}.*backward got a gradient"):
        layer.backward(np.zeros((B, T, H + 1)), True)
    with pytest.raises(gb.DTypeError, match=label):
        layer.forward(np.zeros((B, T, N_IN), dtype=complex))


def test_lstm_state_must_be_a_pair(rng: np.random.Generator) -> None:
    layer = _built(gb.LSTM)
    with pytest.raises(gb.ShapeError, match=r"LSTM 4->7.*\(h, c\)"):
        layer.forward_with_state(rng.standard_normal((B, T, N_IN)), (np.zeros((B, H)),))


# --- in a Sequential ------------------------------------------------------------------------------
def _copy_params(src: Any, dst: Any) -> None:
    for name, view in src.params.items():
        dst.params[name][...] = view


def test_layers_in_a_sequential_match_standalone(rng: np.random.Generator) -> None:
    model = gb.Sequential(
        [gb.LSTM(N_IN, H), gb.GRU(H, 6), gb.RNN(6, 5, device="cpu")],
        device="cpu", dtype="float64", seed=0,
    )
    assert "2: RNN 6->5, tanh" in repr(model)
    alone = [gb.LSTM(N_IN, H).build("cpu", "float64"), gb.GRU(H, 6).build("cpu", "float64"),
             gb.RNN(6, 5, device="cpu", dtype="float64")]
    for src, dst in zip(model.layers, alone, strict=True):
        _copy_params(src, dst)
    x = rng.standard_normal((B, T, N_IN))
    r = rng.standard_normal((B, T, 5))
    out = model.forward(x)
    dx = model.backward(r, return_input_grad=True)
    a = alone[0].forward_with_state(x)[0]
    b = alone[1].forward_with_state(a)[0]
    c, _ = alone[2].forward(b)
    np.testing.assert_allclose(out, c, rtol=1e-12, atol=1e-12)
    g2 = alone[2].backward(r)
    g1, _ = alone[1].backward_with_state(g2)
    g0, _ = alone[0].backward_with_state(g1)
    np.testing.assert_allclose(dx, g0, rtol=1e-12, atol=1e-12)
    for src, dst in zip(model.layers, alone, strict=True):
        for name, grad in src.grads.items():
            np.testing.assert_allclose(grad, dst.grads[name], rtol=1e-12, atol=1e-12)
    assert model.layers[2].final_state.shape == (B, 5)
    assert model.layers[2].grad_initial_state.shape == (B, 5)
    with pytest.raises(gb.ShapeError, match=r"layer 0 \(LSTM 4->7\).*\(batch, time, 4\)"):
        model.forward(rng.standard_normal((B, N_IN)))


def test_rnn_as_a_layer_carries_its_state(rng: np.random.Generator) -> None:
    """In a model, RNN.forward(x) starts from initial_state; standalone it takes h0."""
    layer = gb.RNN(N_IN, H, device="cpu", dtype="float64", seed=3)
    model = gb.Sequential([layer], device="cpu", dtype="float64", seed=0)
    alone = gb.RNN(N_IN, H, device="cpu", dtype="float64")
    _copy_params(layer, alone)
    x1, x2 = rng.standard_normal((B, T, N_IN)), rng.standard_normal((B, T, N_IN))
    model.forward(x1)
    layer.initial_state = layer.final_state
    out2 = model.forward(x2)
    h1 = alone.forward(x1)[1]
    expected, h2 = alone.forward(x2, h1)
    np.testing.assert_allclose(out2, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.final_state, h2, rtol=1e-12, atol=1e-12)
    with pytest.raises(gb.ShapeError, match=r"layer 0 \(RNN 4->7, tanh\).*h0"):
        layer.initial_state = np.zeros((B + 1, H))
        model.forward(x1)


@pytest.mark.parametrize("layers", [
    lambda: [gb.LSTM(N_IN, H)], lambda: [gb.GRU(N_IN, H)],
    lambda: [gb.RNN(N_IN, H, "relu", device="cpu")],
    lambda: [gb.LSTM(N_IN, H), gb.GRU(H, 6), gb.RNN(6, 5, device="cpu")],
], ids=["lstm", "gru", "rnn", "stack"])
def test_checkpoint_round_trip(layers: Any, tmp_path: Path, rng: np.random.Generator) -> None:
    model = gb.Sequential(layers(), device="cpu", dtype="float64", seed=4)
    path = tmp_path / "seq.safetensors"
    model.save(path)
    loaded = gb.load(path, device="cpu")
    assert repr(loaded) == repr(model)
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    x = rng.standard_normal((B, T, N_IN))
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


# --- the reference ops on a CuPy-like module -------------------------------------------------
class CupyLikeOps(NumpyOps):
    xp = CUPY_LIKE


def test_cell_ops_run_on_cupy_like(rng: np.random.Generator) -> None:
    reference, portable = NumpyOps(), CupyLikeOps()
    batch, n = 3, 5

    def run(ops: NumpyOps, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        a = {k: v.copy() for k, v in arrays.items()}
        ops.lstm_cell_forward(a["g4"], a["hh4"], a["c0"], a["c"], a["h"], a["tc"])
        ops.lstm_cell_backward(a["g4"], a["c0"], a["tc"], a["dh"], a["dn"], a["dc"], a["dg4"])
        ops.gru_cell_forward(a["g3"], a["hh3"], a["b3"], a["h0"], a["h1"], a["hn"])
        ops.gru_cell_backward(a["g3"], a["hn"], a["h0"], a["dh"], a["dn"], a["dc"], a["dg3"],
                              a["dgh3"])
        return a

    shapes = {"g4": (batch, 4 * n), "hh4": (batch, 4 * n), "g3": (batch, 3 * n),
              "hh3": (batch, 3 * n), "b3": (3 * n,), "dg4": (batch, 4 * n),
              "dg3": (batch, 3 * n), "dgh3": (batch, 3 * n)}
    arrays = {k: rng.standard_normal(shapes.get(k, (batch, n))) for k in
              ("g4", "hh4", "c0", "c", "h", "tc", "dh", "dn", "dc", "dg4", "g3", "hh3",
               "b3", "h0", "h1", "hn", "dg3", "dgh3")}
    expected, got = run(reference, arrays), run(portable, arrays)
    for name in arrays:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.parametrize("hidden", [1, 2, 5])
@pytest.mark.parametrize("cls", CELLS, ids=lambda c: c.__name__)
def test_float32_agrees_with_float64(
    cls: type[Recurrent], hidden: int, rng: np.random.Generator
) -> None:
    """Every hidden size, H = 1 included (the gate columns are then views with a 16-byte
    stride, where NumPy 2.4's in-place float32 np.negative is wrong)."""
    wide, narrow = (cls(3, hidden).build("cpu", dt, seed=0) for dt in ("float64", "float32"))
    x, d = rng.standard_normal((37, 4, 3)), rng.standard_normal((37, 4, hidden))
    np.testing.assert_allclose(narrow.forward(x.astype(np.float32)), wide.forward(x), atol=1e-6)
    dx = narrow.backward(d.astype(np.float32), True)
    np.testing.assert_allclose(dx, wide.backward(d, True), atol=1e-6)
    for name in NAMES:
        np.testing.assert_allclose(narrow.grads[name], wide.grads[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: gb.LSTM(N_IN, H), lambda: gb.GRU(N_IN, H), lambda: gb.RNN(N_IN, H, device="cpu"),
], ids=["lstm", "gru", "rnn"])
def test_gradcheck_of_a_layer_alone(make: Any, rng: np.random.Generator) -> None:
    """gb.gradcheck wraps the layer in a float64 model: every parameter and x."""
    assert gb.gradcheck(make(), rng.standard_normal((B, T, N_IN)))


def test_gradcheck_inside_a_model(rng: np.random.Generator) -> None:
    model = gb.Sequential([gb.LSTM(N_IN, H), gb.GRU(H, 6), gb.RNN(6, 5, device="cpu")],
                          device="cpu", dtype="float64", seed=2)
    report = gb.gradcheck(model, rng.standard_normal((B, T, N_IN)))
    assert {e.name for e in report.entries} >= {"0.weight_ih", "1.bias_hh", "2.Whh", "input"}


@pytest.mark.parametrize("cls", [gb.LSTM, gb.GRU, gb.RNN], ids=["lstm", "gru", "rnn"])
def test_fit_a_sequence_model_with_a_dense_readout(cls: Any, rng: np.random.Generator) -> None:
    """[cell, Dense] trained by fit on (B, T, F) inputs and (B, T, 1) targets; predict and
    a checkpoint round trip of the trained model (Dense on the last axis of (B, T, H))."""
    cell = cls(N_IN, H, device="cpu") if cls is gb.RNN else cls(N_IN, H)
    model = gb.Sequential([cell, gb.Dense(H, 1)], device="cpu", dtype="float64", seed=0)
    x = rng.standard_normal((32, T, N_IN))
    y = np.cumsum(x[..., :1], axis=1) / T  # a running sum: needs the recurrence
    history = model.fit(x, y, loss="mse", optimizer=gb.optim.Adam(1e-2), epochs=20,
                        batch_size=8, verbose=False)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert model.predict(x).shape == (32, T, 1)
    assert gb.gradcheck(model, x[:3], y[:3], loss="mse")
