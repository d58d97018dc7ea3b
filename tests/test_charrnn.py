"""The character-level language model and ``python -m gpubackprop charrnn``."""

from __future__ import annotations

import importlib.util
import io
import math
import time
from pathlib import Path

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import charrnn
from gpubackprop.backend import get_backend

from .helpers import to_numpy

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "char_rnn.py"
CHARS = "abcdefg"


def seed_notes_loop(
    p: dict[str, np.ndarray], inputs: np.ndarray, targets: np.ndarray, h0: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """The seed notes' char-RNN, one sequence at a time, with column vectors.

    Loss and gradients summed over every sequence and step, then divided by B·T
    (CharRNN's loss is the mean over batch and time).
    """
    hidden, vocab = p["Wxh"].shape
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    loss = 0.0
    batch, steps = inputs.shape
    for b in range(batch):
        xs, hs, ps = {}, {-1: h0[b][:, None]}, {}
        for t in range(steps):
            xs[t] = np.zeros((vocab, 1))
            xs[t][inputs[b, t]] = 1
            hs[t] = np.tanh(p["Wxh"] @ xs[t] + p["Whh"] @ hs[t - 1] + p["bh"][:, None])
            ys = p["Why"] @ hs[t] + p["by"][:, None]
            ps[t] = np.exp(ys) / np.sum(np.exp(ys))
            loss += -np.log(ps[t][targets[b, t], 0])
        dhnext = np.zeros((hidden, 1))
        for t in reversed(range(steps)):
            dy = ps[t].copy()
            dy[targets[b, t]] -= 1  # softmax − onehot
            grads["Why"] += dy @ hs[t].T
            grads["by"] += dy[:, 0]
            dh = p["Why"].T @ dy + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            grads["bh"] += dhraw[:, 0]
            grads["Wxh"] += dhraw @ xs[t].T
            grads["Whh"] += dhraw @ hs[t - 1].T
            dhnext = p["Whh"].T @ dhraw
    n = batch * steps
    return loss / n, {k: g / n for k, g in grads.items()}


#: the seed notes' names of the "rnn" cell's parameters
SEED_NAMES = {"0.Wxh": "Wxh", "0.Whh": "Whh", "0.bh": "bh", "1.weight": "Why", "1.bias": "by"}


def small_model(device: str = "cpu", **kwargs) -> gb.CharRNN:
    return gb.CharRNN(len(CHARS), 6, device, "float64", 3, chars=CHARS, **kwargs)


def initial_state(rng: np.random.Generator, cell: str, batch: int, hidden: int = 6):  # type: ignore[no-untyped-def]
    """A random (B, H) state, or the pair (h, c) for the LSTM."""
    parts = [rng.standard_normal((batch, hidden)) * 0.5 for _ in range(2 if cell == "lstm" else 1)]
    return tuple(parts) if cell == "lstm" else parts[0]


def state_parts(state) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    return [to_numpy(s) for s in (state if isinstance(state, tuple) else (state,))]


def readout(model: gb.CharRNN) -> tuple[np.ndarray, np.ndarray]:
    """The last Dense layer's (weight, bias): Why and by."""
    last = len(model.model.layers) - 1
    return model.parameters()[f"{last}.weight"], model.parameters()[f"{last}.bias"]


def windows(rng: np.random.Generator, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, len(CHARS), (batch, steps)), rng.integers(0, len(CHARS), (batch, steps))


# --- gradients -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("batch", "steps"), [(1, 1), (2, 4), (3, 1), (1, 6)])
def test_gradients_equal_the_seed_notes_loop(device: str, batch: int, steps: int) -> None:
    model = small_model(device, cell="rnn")
    rng = np.random.default_rng(batch * 7 + steps)
    inputs, targets = windows(rng, batch, steps)
    h0 = rng.standard_normal((batch, 6)) * 0.5
    be = model.backend
    loss, _ = model.loss_and_grad(be.asarray(inputs), be.asarray(targets), be.asarray(h0))
    params = {SEED_NAMES[k]: to_numpy(v) for k, v in model.parameters().items()}
    want_loss, want = seed_notes_loop(params, inputs, targets, h0)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert list(model.gradients()) == list(SEED_NAMES)
    for name, grad in model.gradients().items():
        np.testing.assert_allclose(to_numpy(grad), want[SEED_NAMES[name]], rtol=1e-9,
                                   atol=1e-13, err_msg=name)


@pytest.mark.parametrize("cell", charrnn.CELLS)
def test_gradients_match_central_differences(cell: str) -> None:
    model = small_model(cell=cell, embedding_dim=4)
    rng = np.random.default_rng(0)
    inputs, targets = windows(rng, 3, 5)
    h0 = initial_state(rng, cell, 3)
    model.loss_and_grad(inputs, targets, h0)
    analytic = {k: v.copy() for k, v in model.gradients().items()}
    for name, p in model.parameters().items():
        numeric = np.zeros(p.shape)
        for i in np.ndindex(p.shape):
            saved = p[i]
            p[i] = saved + 1e-6
            plus = model.loss(inputs, targets, h0)[0]
            p[i] = saved - 1e-6
            minus = model.loss(inputs, targets, h0)[0]
            p[i] = saved
            numeric[i] = (plus - minus) / 2e-6
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("cell", charrnn.CELLS)
def test_loss_is_the_mean_negative_log_likelihood_of_the_logits(cell: str) -> None:
    model = small_model(cell=cell)
    inputs, targets = windows(np.random.default_rng(1), 2, 5)
    logits, h_last = model.forward(inputs)
    assert logits.shape == (2, 5, len(CHARS))
    log_p = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
    nll = -np.take_along_axis(log_p, targets[..., None], axis=2).mean()
    value, h2 = model.loss(inputs, targets)
    assert value == pytest.approx(nll, rel=1e-12)
    assert model.loss_and_grad(inputs, targets)[0] == pytest.approx(nll, rel=1e-12)
    for a, b in zip(state_parts(h_last), state_parts(h2), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", charrnn.CELLS)
def test_carried_state_makes_two_windows_one_long_window(device: str, cell: str) -> None:
    model = small_model(device, cell=cell)
    be = model.backend
    inputs, targets = (be.asarray(a) for a in windows(np.random.default_rng(2), 2, 8))
    logits, h_whole = model.forward(inputs)
    first, h_mid = model.forward(inputs[:, :4])
    second, h_end = model.forward(inputs[:, 4:], h_mid)
    joined = np.concatenate([to_numpy(first), to_numpy(second)], axis=1)
    np.testing.assert_allclose(joined, to_numpy(logits), rtol=1e-13, atol=1e-13)
    for a, b in zip(state_parts(h_end), state_parts(h_whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    whole = model.loss(inputs, targets)[0]
    a, h = model.loss_and_grad(inputs[:, :4], targets[:, :4])
    b, _ = model.loss_and_grad(inputs[:, 4:], targets[:, 4:], h)
    assert (a + b) / 2 == pytest.approx(whole, rel=1e-12)
    fresh = model.loss(inputs[:, 4:], targets[:, 4:])[0]
    assert fresh != pytest.approx(b, rel=1e-6)


# --- one flat buffer -----------------------------------------------------------------------------
@pytest.mark.parametrize("cell", charrnn.CELLS)
def test_every_parameter_lives_in_one_flat_buffer_stepped_by_one_optimizer(cell: str) -> None:
    model = small_model(cell=cell, embedding_dim=5)
    v, h, e = len(CHARS), 6, 5
    shapes = {k: p.shape for k, p in model.parameters().items()}
    gates = {"lstm": 4, "gru": 3}.get(cell, 1)
    if cell == "rnn":  # the seed notes' Wxh, Whh, bh, Why, by
        assert shapes == {"0.Wxh": (h, v), "0.Whh": (h, h), "0.bh": (h,),
                          "1.weight": (v, h), "1.bias": (v,)}
    else:  # PyTorch's layouts: Embedding, then the cell's gates stacked
        assert shapes == {"0.weight": (v, e), "1.weight_ih": (gates * h, e),
                          "1.weight_hh": (gates * h, h), "1.bias_ih": (gates * h,),
                          "1.bias_hh": (gates * h,), "2.weight": (v, h), "2.bias": (v,)}
    assert model.num_parameters == sum(p.size for p in model.parameters().values())
    assert model.num_parameters == model.flat_params.size
    for p in model.parameters().values():
        assert np.shares_memory(p, model.flat_params)
    for p in model.recurrent.params.values():
        assert np.shares_memory(p, model.flat_params)
    inputs, targets = windows(np.random.default_rng(3), 2, 5)
    model.loss_and_grad(inputs, targets)
    before = {k: p.copy() for k, p in model.parameters().items()}
    gb.optim.Adam(lr=0.01).step(model.flat_params, model.flat_grads)
    for name, p in model.parameters().items():
        assert np.abs(p - before[name]).max() > 1e-4, name


def test_seed_fixes_every_initial_weight() -> None:
    a, b = small_model(), small_model()
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    c = gb.CharRNN(len(CHARS), 6, "cpu", "float64", 4, chars=CHARS)
    why, by = readout(a)
    assert not np.array_equal(why, readout(c)[0])
    assert np.all(by == 0) and np.abs(why).max() > 0


# --- text, sampling ------------------------------------------------------------------------------
def test_encode_decode_and_sampling() -> None:
    model = small_model()
    np.testing.assert_array_equal(model.encode("gab"), [6, 0, 1])
    assert model.decode([6, 0, 1]) == "gab"
    text = model.sample("abc", 50, temperature=0.7, rng=0)
    assert len(text) == 50 and set(text) <= set(CHARS)
    assert model.sample("abc", 50, temperature=0.7, rng=0) == text
    assert model.sample(2, 50, rng=1) != model.sample(2, 50, rng=2)
    assert model.sample("a", 0) == ""


def test_low_temperature_samples_the_likeliest_character() -> None:
    model = small_model()
    why, by = readout(model)
    by[...] = np.arange(len(CHARS))  # "g" is by far the likeliest
    why[...] = 0.0
    assert model.sample("a", 20, temperature=0.01, rng=0) == "g" * 20


def test_sampling_and_text_errors() -> None:
    model = small_model()
    with pytest.raises(gb.LabelError, match="'z' is not in the vocabulary"):
        model.encode("abz")
    with pytest.raises(gb.ConfigError, match="temperature"):
        model.sample("a", 5, temperature=0.0)
    with pytest.raises(gb.ConfigError, match="n must be"):
        model.sample("a", -1)
    with pytest.raises(gb.ConfigError, match="at least one"):
        model.sample("", 3)
    bare = gb.CharRNN(4, 3, "cpu", seed=0)
    with pytest.raises(gb.ConfigError, match="chars="):
        bare.sample(0, 3)
    assert len(bare.sample_indices([0, 1], 5, rng=0)) == 5
    with pytest.raises(gb.ConfigError, match="distinct"):
        gb.CharRNN(3, 4, "cpu", chars="aab")


# --- input errors --------------------------------------------------------------------------------
def test_out_of_vocabulary_indices_raise_label_error() -> None:
    model = small_model()
    good = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(gb.LabelError, match=r"inputs holds index 7.*vocabulary of 7"):
        model.loss_and_grad(np.full((2, 3), 7), good)
    with pytest.raises(gb.LabelError, match=r"targets holds index -1"):
        model.loss_and_grad(good, np.full((2, 3), -1))
    with pytest.raises(gb.LabelError):
        model.forward([[0, 9]])
    with pytest.raises(gb.LabelError):
        model.sample_indices([8], 3)


def test_wrong_rank_or_shape_raises_shape_error_naming_the_model() -> None:
    model = small_model()
    named = r"CharRNN\(vocab=7, hidden=6, cell=lstm\).*\(batch, time\).*\(5,\)"
    with pytest.raises(gb.ShapeError, match=named):
        model.loss_and_grad(np.zeros(5, dtype=np.int64), np.zeros(5, dtype=np.int64))
    with pytest.raises(gb.ShapeError, match=r"\(2, 3, 1\)"):
        model.forward(np.zeros((2, 3, 1), dtype=np.int64))
    with pytest.raises(gb.ShapeError, match=r"targets have shape \(2, 4\), inputs \(2, 3\)"):
        model.loss_and_grad(np.zeros((2, 3), np.int64), np.zeros((2, 4), np.int64))
    pair = r"LSTM.*initial state must be the pair \(h, c\).*got one ndarray"
    with pytest.raises(gb.ShapeError, match=pair):
        model.loss_and_grad(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64),
                            np.zeros((2, 5)))
    with pytest.raises(gb.DTypeError, match="integer"):
        model.forward(np.zeros((2, 3)))


# --- training on a text --------------------------------------------------------------------------
def test_text_streams_cut_parallel_windows() -> None:
    data = np.arange(23)
    inputs, targets = charrnn.text_streams(data, 2, 5)
    # streams of (23 − 1) // 2 = 11 characters, 2 whole windows of 5 each
    np.testing.assert_array_equal(inputs, [list(range(0, 10)), list(range(11, 21))])
    np.testing.assert_array_equal(targets, inputs + 1)
    with pytest.raises(gb.ConfigError, match="too short"):
        charrnn.text_streams(data, 4, 6)


def test_split_text_holds_out_the_last_tenth() -> None:
    data = np.arange(105)
    train, held_out = charrnn.split_text(data)
    np.testing.assert_array_equal(train, np.arange(95))
    np.testing.assert_array_equal(held_out, np.arange(95, 105))  # ⌊105 / 10⌋ = 10
    with pytest.raises(gb.ConfigError, match="too short to hold out"):
        charrnn.split_text(np.arange(19))


def test_text_loss_reads_the_text_as_one_sequence() -> None:
    model = small_model()
    data = np.random.default_rng(5).integers(0, len(CHARS), 23)
    whole = model.loss(data[None, :-1], data[None, 1:])[0]
    for seq_len in (1, 4, 22, 50):  # windows with the state carried, the last one short
        assert charrnn.text_loss(model, data, seq_len) == pytest.approx(whole, rel=1e-12)


def test_training_never_sees_the_held_out_text(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[np.ndarray] = []
    original = gb.CharRNN.loss_and_grad

    def recording(self, inputs, targets, h0=None):  # type: ignore[no-untyped-def]
        seen.extend([np.asarray(inputs), np.asarray(targets)])
        return original(self, inputs, targets, h0)

    monkeypatch.setattr(gb.CharRNN, "loss_and_grad", recording)
    story = "the cat sat on the mat. " * 20  # 480 characters
    tail = ("xyz" * 18)[:53]  # ⌊533 / 10⌋ = 53: exactly the held-out part
    result = charrnn.run_charrnn(
        story + tail, device="cpu", steps=40, hidden=16, seq_len=12, batch=4, lr=0.01,
        sample_every=20, quiet=True, file=io.StringIO(),
    )
    held_out = {result.model.encode(c)[0] for c in "xyz"}
    assert len(seen) == 80
    assert not any(np.isin(a, list(held_out)).any() for a in seen)
    assert [s for s, _ in result.validation_losses] == [20, 40]
    assert math.isfinite(result.validation_loss)
    assert result.validation_loss == result.validation_losses[-1][1]
    assert result.validation_loss > 2 * result.final_loss  # never trained on x, y, z


def test_the_default_text_ships_with_the_package() -> None:
    text = charrnn.default_text()
    assert len(text) > 4000 and "public domain" in text
    assert 30 <= len(set(text)) <= 80


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as log:
        result = charrnn.run_charrnn(
            "the cat sat on the mat. " * 20, device="cpu", steps=60, hidden=24, seq_len=12,
            batch=4, lr=0.01, sample_every=0, quiet=True, file=log,
        )
    first = result.losses[0]  # an untrained model: close to uniform, ln V per character
    assert first == pytest.approx(math.log(len(set("the cat sat on the mat. "))), rel=0.2)
    assert result.final_loss < 0.5 * first
    assert len(result.losses) == 60


def test_main_prints_loss_lines_and_samples(tmp_path: Path, capsys) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text("hello world, hello backprop. " * 8, encoding="utf-8")
    code = charrnn.main([
        "--text", str(text), "--device", "cpu", "--steps", "6", "--hidden", "16",
        "--seq-len", "8", "--batch", "2", "--sample-every", "3", "--seed", "1",
    ])
    out = capsys.readouterr().out
    assert code == 0
    assert str(text) in out and "vocabulary 15" in out
    loss_lines = [line for line in out.splitlines() if line.startswith("steps ")]
    assert len(loss_lines) == 2 and all("loss " in line for line in loss_lines)
    assert "3/3" in loss_lines[0]
    assert out.count("--- sample") == 2  # one after the first chunk, one at the end
    assert all("training loss" in line and "validation loss" in line for line in loss_lines)
    assert "trained 6 steps" in out and "nats/char" in out
    assert "the first 209, the last 23 (10%) held out for validation" in out
    final = {line.split()[0]: line for line in out.splitlines() if " nats/char (" in line}
    assert set(final) == {"training", "validation"}
    value = float(final["validation"].split()[2])
    assert math.isfinite(value) and 0 < value < 10
    assert "held-out last 10% (23 characters)" in final["validation"]
    assert "learned nothing" in out and "scores ln V = " in out and "the target is 60%" in out


@pytest.mark.parametrize("cell", charrnn.CELLS)
def test_main_trains_each_cell(tmp_path: Path, capsys, cell: str) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text("hello world, hello backprop. " * 8, encoding="utf-8")
    code = charrnn.main(["--text", str(text), "--device", "cpu", "--cell", cell, "--steps", "4",
                         "--hidden", "8", "--seq-len", "8", "--batch", "2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and f"char-RNN ({cell})" in out and f"cell={cell!r}" in out
    assert "validation loss was lowest" in out


def test_an_unknown_cell_is_refused(capsys) -> None:
    with pytest.raises(gb.ConfigError, match="cell must be one of lstm, gru, rnn"):
        gb.CharRNN(4, 3, "cpu", cell="transformer")
    with pytest.raises(SystemExit):
        charrnn.main(["--cell", "transformer"])
    assert "invalid choice" in capsys.readouterr().err


def test_main_quiet_and_errors(tmp_path: Path, capsys) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text("abcabcabcabc abc abc " * 4, encoding="utf-8")
    args = ["--text", str(text), "--device", "cpu", "--steps", "4", "--hidden", "8",
            "--seq-len", "4", "--batch", "2"]
    assert charrnn.main([*args, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert not any(line.startswith("steps ") for line in out.splitlines())
    assert out.count("--- sample") == 1
    assert charrnn.main([*args[:-1], "40"]) == 1
    assert "too short" in capsys.readouterr().err
    assert charrnn.main(["--text", str(tmp_path / "missing.txt")]) == 1
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        charrnn.main(["--steps", "0"])


def test_example_runs(capsys) -> None:
    spec = importlib.util.spec_from_file_location("char_rnn_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    losses = module.main(["--steps", "40", "--device", "cpu"])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert "sample" in capsys.readouterr().out


def test_default_run_gets_below_60_percent_of_ln_vocab(tmp_path: Path) -> None:
    start = time.perf_counter()
    with open(tmp_path / "log", "w") as log:
        result = charrnn.run_charrnn(device="cpu", file=log)
    vocab = result.model.vocab_size
    assert result.target_loss == pytest.approx(0.6 * math.log(vocab))
    assert result.model.cell == "lstm"
    assert result.final_loss < result.target_loss  # the training loss
    assert result.validation_loss < result.target_loss  # and the held-out text's
    assert [step for step, _ in result.validation_losses] == [50, 100, 150]
    assert all(math.isfinite(v) for _, v in result.validation_losses)
    assert time.perf_counter() - start < 120


# --- CPU vs GPU ----------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("cell", charrnn.CELLS)
def test_cpu_and_gpu_agree(cell: str) -> None:
    chars = "".join(chr(c) for c in range(32, 32 + 67))
    cpu = gb.CharRNN(67, 129, "cpu", "float32", 0, chars=chars, cell=cell)
    gpu = gb.CharRNN(67, 129, "cuda", "float32", 0, chars=chars, cell=cell)
    np.testing.assert_array_equal(cpu.flat_params, to_numpy(gpu.flat_params))
    rng = np.random.default_rng(1)
    inputs, targets = rng.integers(0, 67, (17, 33)), rng.integers(0, 67, (17, 33))
    h0 = initial_state(rng, cell, 17, 129)
    h0 = tuple(a.astype(np.float32) for a in h0) if cell == "lstm" else h0.astype(np.float32)
    be = get_backend("cuda")
    h0_gpu = tuple(be.asarray(a) for a in h0) if cell == "lstm" else be.asarray(h0)
    loss_c, h_c = cpu.loss_and_grad(inputs, targets, h0)
    loss_g, h_g = gpu.loss_and_grad(be.asarray(inputs), be.asarray(targets), h0_gpu)
    assert loss_g == pytest.approx(loss_c, rel=1e-5)
    for g, c in zip(state_parts(h_g), state_parts(h_c), strict=True):
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(gpu.flat_grads), cpu.flat_grads, rtol=1e-3, atol=1e-5)
    assert len(gpu.sample("abc", 20, rng=0)) == 20
    with pytest.raises(gb.DeviceError):
        gpu.loss_and_grad(inputs, targets)
