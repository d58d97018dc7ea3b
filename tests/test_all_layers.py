"""Every new layer in one model (issue 11, "checks that must exist"): Embedding, Dropout,
LSTM, LayerNorm, GRU (or RNN), Dense on (B, T) token ids, and Dense/LayerNorm/Dropout on
(B, T, F) floats with (B, T, C) MSE targets: gradcheck, fit, eval mode, explain,
checkpoints with the optimizer (bit for bit on the CPU), compile_step on the CPU."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import gpubackprop as gb

V, E, H, H2 = 7, 5, 6, 4


def _all_layers(recurrent: str = "gru", dtype: str = "float64", seed: int = 0,
                p: float = 0.2) -> gb.Sequential:
    second = gb.GRU(H, H2) if recurrent == "gru" else gb.RNN(H, H2, "tanh")
    return gb.Sequential(
        [gb.Embedding(V, E), gb.Dropout(p), gb.LSTM(E, H), gb.LayerNorm(H), second,
         gb.Dropout(p), gb.Dense(H2, V)],
        device="cpu", dtype=dtype, seed=seed,
    )


def _next_token_task(rng: np.random.Generator, batch: int = 32,
                     steps: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Sequences that count up modulo V from a random start: the next token is t + 1."""
    ids = (rng.integers(0, V, (batch, 1)) + np.arange(steps)) % V
    return ids, (ids + 1) % V


@pytest.mark.parametrize("recurrent", ["gru", "rnn"])
def test_gradcheck_in_training_and_eval_mode(recurrent: str, rng) -> None:
    """float64 central differences; in training mode gradcheck holds the dropout masks."""
    model = _all_layers(recurrent, p=0.3)
    ids, labels = _next_token_task(rng, batch=3, steps=4)
    assert model.training
    assert gb.gradcheck(model, x=ids, y=labels, loss="cross_entropy")
    model.eval()
    assert gb.gradcheck(model, x=ids, y=labels, loss="cross_entropy")


@pytest.mark.parametrize("recurrent", ["gru", "rnn"])
def test_fit_learns_next_token_and_predicts_in_eval_mode(recurrent: str, rng) -> None:
    model = _all_layers(recurrent, dtype="float32", seed=1, p=0.1)
    ids, labels = _next_token_task(rng)
    before = model.evaluate(ids, labels, "cross_entropy")["loss"]
    model.fit(ids, labels, loss="cross_entropy", optimizer=gb.optim.Adam(0.02), epochs=60,
              batch_size=8, verbose=False)
    assert model.training  # fit leaves the mode as it found it
    model.eval()
    after = model.evaluate(ids, labels, "cross_entropy")
    assert before > 1.5 and after["loss"] < 0.1 and after["accuracy"] == 1.0
    probs = model.predict(ids)
    assert probs.shape == (32, 8, V)
    np.testing.assert_array_equal(model.predict(ids), probs)  # eval: no dropout


def test_explain_names_every_layer(rng) -> None:
    model = _all_layers()
    ids, labels = _next_token_task(rng, batch=2, steps=3)
    text = str(model.explain(ids, labels, "cross_entropy"))
    for index, layer in enumerate(model.layers):
        assert f"layer {index}: {layer.describe()}" in text


@pytest.mark.parametrize("recurrent", ["gru", "rnn"])
def test_checkpoint_round_trip_and_bitwise_resume(recurrent: str, tmp_path: Path,
                                                  rng) -> None:
    """save -> gb.load gives the same predictions; a resumed run (optimizer and the
    dropout generators' state in the file) continues bit for bit like the unbroken run."""
    ids, labels = _next_token_task(rng, batch=4, steps=5)

    def train(model: gb.Sequential, optimizer: gb.optim.Optimizer, steps: int) -> None:
        for _ in range(steps):
            model.train_step(ids, labels, "cross_entropy", optimizer)

    unbroken, opt = _all_layers(recurrent, dtype="float32", seed=3), gb.optim.Adam(0.01)
    train(unbroken, opt, 3)
    path = tmp_path / "all.safetensors"
    unbroken.save(path, opt)
    loaded, loaded_opt = gb.load(path, device="cpu", with_optimizer=True)
    assert [la.describe() for la in loaded.layers] == [la.describe() for la in unbroken.layers]
    np.testing.assert_array_equal(loaded.eval().predict(ids), unbroken.eval().predict(ids))
    unbroken.train()
    loaded.train()
    train(unbroken, opt, 3)
    assert loaded_opt is not None
    train(loaded, loaded_opt, 3)
    np.testing.assert_array_equal(loaded.flat_params, unbroken.flat_params)


def test_compile_step_on_the_cpu_is_refused() -> None:
    with pytest.raises(gb.ConfigError, match="GPU"):
        _all_layers().compile_step("cross_entropy", gb.optim.SGD(0.1))


def test_per_position_layers_on_sequences_with_mse(rng) -> None:
    """Dense, LayerNorm, Dropout on (B, T, F) with (B, T, C) float targets."""
    model = gb.Sequential(
        [gb.Dense(3, 8, "tanh"), gb.LayerNorm(8), gb.Dropout(0.25), gb.Dense(8, 2)],
        device="cpu", dtype="float64", seed=5,
    )
    x = rng.standard_normal((4, 6, 3))
    y = np.stack([x[..., 0] * x[..., 1], np.sin(x[..., 2])], axis=-1)
    assert gb.gradcheck(model, x=x, y=y, loss="mse")
    before = model.evaluate(x, y, "mse")["loss"]
    model.fit(x, y, loss="mse", optimizer=gb.optim.Adam(0.01), epochs=150, batch_size=4,
              verbose=False)
    model.eval()
    assert model.predict(x).shape == (4, 6, 2)
    assert model.evaluate(x, y, "mse")["loss"] < 0.2 * before
    assert gb.gradcheck(model, x=x, y=y, loss="mse")


# --- bad inputs: the package's errors, naming the layer, the expected and the actual ------------
def _lstm_first() -> gb.Sequential:
    return gb.Sequential([gb.LSTM(5, 4), gb.LayerNorm(4), gb.Dense(4, 2)], device="cpu")


def _calls(model: gb.Sequential, x: np.ndarray) -> list:
    """forward, predict, evaluate and fit on input ``x``: each checks it the same way."""
    y = np.zeros((2, 3, 2))
    return [
        lambda: model.forward(x),
        lambda: model.predict(x),
        lambda: model.evaluate(x, y, "mse"),
        lambda: model.fit(x, y, loss="mse", optimizer=gb.optim.SGD(0.1), verbose=False),
    ]


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((2, 3, 6)), r"got shape \(2, 3, 6\)$"),
        (np.zeros((2, 3)), r"got shape \(2, 3\) \(one sequence\? use x\[None\]\)$"),
        (np.zeros((2, 3), dtype=np.int64), r"got shape \(2, 3\); integer token ids\? a model "
                                           r"that takes token ids starts with gb\.Embedding"),
        (np.zeros((2, 3, 5, 1)), r"got shape \(2, 3, 5, 1\)$"),
    ],
)
def test_wrong_input_to_a_model_starting_with_lstm(x: np.ndarray, message: str) -> None:
    """Every entry point names layer 0, the shape it takes and the shape that came (the
    hint for integer ids survives fit/predict/evaluate's conversion to floats)."""
    for call in _calls(_lstm_first(), x):
        with pytest.raises(gb.ShapeError, match=r"^layer 0 \(LSTM 5->4\): expected (input|x) of "
                           r"shape \(batch, time, 5\), " + message):
            call()


def test_a_sequence_layer_after_a_dense_on_2d_input_names_both() -> None:
    model = gb.Sequential([gb.Dense(5, 3), gb.LSTM(3, 4)], device="cpu")
    for call in _calls(model, np.zeros((2, 5))):
        with pytest.raises(gb.ShapeError, match=r"layer 1 \(LSTM 3->4\): expected (input|x) of "
                           r"shape \(batch, time, 5\), got shape \(2, 5\) " + re.escape(
                               "(it takes (batch, time, 3) from layer 0 (Dense 5->3))")):
            call()


def test_token_ids_to_a_model_without_an_embedding() -> None:
    model = gb.Sequential([gb.LayerNorm(5), gb.GRU(5, 4)], device="cpu")
    with pytest.raises(gb.ShapeError, match=r"^layer 1 \(GRU 5->4\): expected input of shape "
                       r"\(batch, time, 5\), got shape \(2, 5\) .*gb\.Embedding"):
        model.predict(np.zeros((2, 5), dtype=np.int64))


def test_bad_token_ids_to_the_all_layers_model() -> None:
    model = _all_layers()
    with pytest.raises(gb.DTypeError, match=r"^layer 0 \(Embedding 7x5\): input must be integer "
                       r"token ids .* got dtype float64"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(gb.ShapeError, match=re.escape(
        "layer 0 (Embedding 7x5): expected input to be integer token ids of shape "
        "(batch, time), got shape (2, 3, 5)"
    )):
        model.predict(np.zeros((2, 3, 5), dtype=np.int64))
    with pytest.raises(gb.ShapeError, match=re.escape(
        "layer 2 (LSTM 5->6): expected input to be integer token ids of shape (batch, time), "
        "got shape (2,) (it takes (batch, time, 5) from layer 1 (Dropout"
    )):
        model.predict(np.zeros(2, dtype=np.int64))
    with pytest.raises(gb.LabelError, match=r"layer 0 \(Embedding 7x5\): token id 9 "):
        model.predict(np.full((2, 3), 9))


def test_embedding_not_first_and_widths_that_do_not_chain() -> None:
    with pytest.raises(gb.ConfigError, match=r"^layer 2 \(Embedding 7x5\) takes integer token "
                       r"ids and must be the model's first layer, but comes after layer 1 "):
        gb.Sequential([gb.Dense(3, 4), gb.LSTM(4, 4), gb.Embedding(V, E)], device="cpu")
    with pytest.raises(gb.ShapeError, match=r"^layer 3 \(GRU 5->4\) expects 5 input features "
                       r"but layer 2 \(LayerNorm 6\) gives 6"):
        gb.Sequential([gb.Embedding(V, E), gb.LSTM(E, H), gb.LayerNorm(H), gb.GRU(E, H2)],
                      device="cpu")
