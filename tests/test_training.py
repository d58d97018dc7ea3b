"""fit / History / progress output, checked against hand-written loops, and a real task."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

import gpubackprop as gb

from .helpers import to_numpy


def _blobs(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centers = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    x = centers[y] + 0.6 * rng.standard_normal((n, 2))
    return x, y


def _classifier(seed: int = 0, device: str = "cpu", dtype: str = "float32") -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(2, 16, "tanh"), gb.Dense(16, 3)], device=device, dtype=dtype, seed=seed
    )


def _ce_and_acc(model: gb.Sequential, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Cross-entropy and accuracy of the model, computed here with plain NumPy."""
    p = {k: to_numpy(v).astype(np.float64) for k, v in model.parameters().items()}
    z = np.tanh(x @ p["0.weight"].T + p["0.bias"]) @ p["1.weight"].T + p["1.bias"]
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y])), float(np.mean(z.argmax(1) == y))


# --- basic training ---------------------------------------------------------------------------
def test_fit_decreases_loss_and_fills_history() -> None:
    x, y = _blobs()
    model = _classifier()
    start_loss, _ = _ce_and_acc(model, x, y)
    history = model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.2, momentum=0.9),
                        epochs=6, batch_size=16, verbose=False)
    assert isinstance(history, gb.History)
    assert set(history.history) == {"loss", "accuracy", "lr", "seconds"}
    assert history.epochs == 6
    assert all(len(v) == 6 for v in history.history.values())
    assert history["loss"][-1] < 0.3 * history["loss"][0]
    end_loss, end_acc = _ce_and_acc(model, x, y)
    assert end_loss < 0.3 * start_loss
    assert end_acc > 0.9
    assert all(s >= 0 for s in history["seconds"])
    assert history["lr"] == [0.2] * 6
    text = repr(history)
    assert "epochs=6" in text and "loss=" in text


def test_epoch_metrics_with_frozen_model_equal_full_dataset_values() -> None:
    """lr = 0: the model never changes, so the epoch means are the dataset's loss/accuracy."""
    x, y = _blobs(50)
    model = _classifier(seed=3, dtype="float64")
    want_loss, want_acc = _ce_and_acc(model, x, y)
    history = model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.0), epochs=2,
                        batch_size=7, verbose=False)
    for e in range(2):
        assert history["loss"][e] == pytest.approx(want_loss, rel=1e-12)
        assert history["accuracy"][e] == pytest.approx(want_acc, abs=1e-15)


def test_zero_epochs_is_a_no_op() -> None:
    x, y = _blobs(20)
    model = _classifier()
    before = model.flat_params.copy()
    history = model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1), epochs=0,
                        verbose=False)
    assert history.epochs == 0
    np.testing.assert_array_equal(model.flat_params, before)


def test_metrics_can_be_turned_off() -> None:
    x, y = _blobs(20)
    history = _classifier().fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1),
                                metrics=(), verbose=False)
    assert set(history.history) == {"loss", "lr", "seconds"}


def _regressor(seed: int = 0) -> gb.Sequential:
    return gb.Sequential([gb.Dense(2, 3)], device="cpu", dtype="float64", seed=seed)


def test_metrics_default_by_loss(capsys: pytest.CaptureFixture[str]) -> None:
    x, labels = _blobs(30)
    assert gb.train.default_metrics(gb.losses.SoftmaxCrossEntropy()) == ("accuracy",)
    assert gb.train.default_metrics(gb.losses.BCEWithLogits()) == ("accuracy",)
    assert gb.train.default_metrics(gb.losses.MSE()) == ()
    target = np.eye(3)[labels]
    history = _regressor().fit(x, target, loss="mse", optimizer=gb.optim.SGD(0.1), epochs=1,
                               validation_data=(x, target))
    assert set(history.history) == {"loss", "val_loss", "lr", "seconds"}
    assert "accuracy" not in capsys.readouterr().out  # the epoch line shows what is measured
    assert set(_regressor().evaluate(x, target, "mse")) == {"loss"}
    history = _classifier().fit(x, labels, loss="cross_entropy", optimizer=gb.optim.SGD(0.1),
                                metrics=None, verbose=False)
    assert set(history.history) == {"loss", "accuracy", "lr", "seconds"}


def test_mae_is_the_mean_absolute_error_of_the_outputs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """lr = 0: the model never changes, so the epoch's mae is the dataset's."""
    x, labels = _blobs(50)
    target = np.eye(3)[labels] + 0.25
    model = _regressor(seed=3)
    out = model.predict(x)
    want = float(np.mean(np.abs(out - target)))
    history = model.fit(x, target, loss="mse", optimizer=gb.optim.SGD(0.0), epochs=2,
                        batch_size=7, metrics=("mae",), validation_data=(x, target))
    assert set(history.history) == {"loss", "mae", "val_loss", "val_mae", "lr", "seconds"}
    np.testing.assert_allclose(history["mae"], [want, want], rtol=1e-12)
    assert history["val_mae"][-1] == pytest.approx(want, rel=1e-12)
    assert "  mae " in capsys.readouterr().out
    result = model.evaluate(x, target, "mse", metrics="mae", batch_size=8)
    assert result["mae"] == pytest.approx(want, rel=1e-12)
    # with labels, the raw outputs (logits) against one-hot rows; with accuracy too
    result = model.evaluate(x, labels, "cross_entropy", metrics=("accuracy", "mae"))
    assert result["mae"] == pytest.approx(np.mean(np.abs(out - np.eye(3)[labels])), rel=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean(out.argmax(1) == labels))


# --- batches and shuffling --------------------------------------------------------------------
def _linear(seed: int = 0) -> gb.Sequential:
    return gb.Sequential([gb.Dense(3, 2)], device="cpu", dtype="float64", seed=seed)


def test_unshuffled_fit_equals_hand_written_sgd_with_short_last_batch() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    model = _linear()
    w = to_numpy(model.parameters()["0.weight"]).copy()
    b = to_numpy(model.parameters()["0.bias"]).copy()
    lr, batch = 0.1, 4
    epoch_losses = []
    for _ in range(2):
        total = 0.0
        for lo in range(0, 10, batch):  # batches of 4, 4 and 2
            xb, yb = x[lo:lo + batch], y[lo:lo + batch]
            err = xb @ w.T + b - yb
            total += np.mean(err**2) * len(xb)
            g = 2.0 * err / err.size
            w = w - lr * g.T @ xb
            b = b - lr * g.sum(axis=0)
        epoch_losses.append(total / 10)
    history = model.fit(x, y, loss="mse", optimizer=gb.optim.SGD(lr), epochs=2, batch_size=batch,
                        shuffle=False, metrics=(), verbose=False)
    np.testing.assert_allclose(model.parameters()["0.weight"], w, rtol=1e-12)
    np.testing.assert_allclose(model.parameters()["0.bias"], b, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(history["loss"], epoch_losses, rtol=1e-12)


def _record_batches(model: gb.Sequential) -> list[np.ndarray]:
    seen: list[np.ndarray] = []
    original = model.loss_and_grad_batch

    def spy(batch):
        seen.append(to_numpy(batch.x).copy())
        return original(batch)

    model.loss_and_grad_batch = spy  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_epoch_visits_every_row_once(shuffle: bool) -> None:
    x = np.arange(11 * 3, dtype=np.float64).reshape(11, 3)  # row i is identifiable
    y = np.zeros((11, 2))
    model = _linear()
    seen = _record_batches(model)
    model.fit(x, y, loss="mse", optimizer=gb.optim.SGD(0.0), epochs=3, batch_size=4,
              shuffle=shuffle, verbose=False)
    assert [len(b) for b in seen] == [4, 4, 3] * 3
    orders = []
    for e in range(3):
        rows = np.concatenate(seen[3 * e:3 * e + 3])
        ids = (rows[:, 0] / 3).astype(int)
        assert sorted(ids) == list(range(11))
        orders.append(list(ids))
    if shuffle:
        assert orders[0] != list(range(11)) or orders[1] != list(range(11))
        assert orders[0] != orders[1] or orders[1] != orders[2]
    else:
        assert orders == [list(range(11))] * 3


def test_shuffled_fit_is_deterministic_for_a_seed() -> None:
    x, y = _blobs(70)
    params = []
    for _ in range(2):
        model = _classifier(seed=42)
        model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.Adam(1e-2), epochs=3,
                  batch_size=8, verbose=False)
        params.append(model.flat_params.copy())
    np.testing.assert_array_equal(params[0], params[1])
    other = _classifier(seed=43)
    other.flat_params[...] = _classifier(seed=42).flat_params  # same start, other shuffle
    other.fit(x, y, loss="cross_entropy", optimizer=gb.optim.Adam(1e-2), epochs=3, batch_size=8,
              verbose=False)
    assert not np.array_equal(other.flat_params, params[0])


def test_shuffle_changes_the_result() -> None:
    x, y = _blobs(40)
    results = []
    for shuffle in (True, False):
        model = _classifier(seed=1, dtype="float64")
        model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1), epochs=2,
                  batch_size=8, shuffle=shuffle, verbose=False)
        results.append(model.flat_params.copy())
    assert not np.allclose(results[0], results[1])


# --- validation, scheduler, output ------------------------------------------------------------
def test_validation_data_adds_val_keys() -> None:
    x, y = _blobs(90)
    x_val, y_val = _blobs(30, seed=9)
    model = _classifier()
    history = model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1, momentum=0.9),
                        epochs=3, batch_size=16, validation_data=(x_val, y_val), verbose=False)
    assert set(history.history) == {
        "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
    }
    assert len(history["val_loss"]) == len(history["val_accuracy"]) == 3
    want_loss, want_acc = _ce_and_acc(model, x_val, y_val)  # after the last epoch
    assert history["val_loss"][-1] == pytest.approx(want_loss, rel=1e-5)
    assert history["val_accuracy"][-1] == pytest.approx(want_acc, abs=1e-12)
    # a list pair works too
    history = model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1), epochs=1,
                        validation_data=[x_val, y_val], verbose=False)
    assert "val_loss" in history.history


def test_scheduler_is_stepped_once_per_epoch() -> None:
    x, y = _blobs(30)
    opt = gb.optim.SGD(0.4)
    sched = gb.optim.StepLR(opt, step_size=1, gamma=0.5)
    history = _classifier().fit(x, y, loss="cross_entropy", optimizer=opt, epochs=4,
                                batch_size=8, scheduler=sched, verbose=False)
    assert history["lr"] == pytest.approx([0.4, 0.2, 0.1, 0.05])
    assert opt.lr == pytest.approx(0.025)


def test_cosine_schedule_in_history() -> None:
    x, y = _blobs(30)
    opt = gb.optim.SGD(0.1, momentum=0.9)
    sched = gb.optim.CosineAnnealingLR(opt, T_max=4)
    history = _classifier().fit(x, y, loss="cross_entropy", optimizer=opt, epochs=4,
                                scheduler=sched, verbose=False)
    want = [0.05 * (1 + np.cos(np.pi * t / 4)) for t in range(4)]
    np.testing.assert_allclose(history["lr"], want, rtol=1e-12)


def test_verbose_output(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _blobs(50)
    _classifier().fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1), epochs=2,
                      batch_size=16, validation_data=(x, y))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("Training 50 samples, batch 16, 4 steps/epoch on cpu")
    assert len(lines) == 3
    for epoch, line in enumerate(lines[1:], start=1):
        assert line.startswith(f"epoch {epoch}/2 [")
        assert "=" * 28 in line and "4/4" in line
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "ms/step"):
            assert key in line
    assert "lr " not in out and "seconds" not in out


def test_verbose_writes_to_file_and_quiet_prints_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    x, y = _blobs(20)
    buf = io.StringIO()
    _classifier().fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1), epochs=1,
                      file=buf)
    assert "epoch 1/1" in buf.getvalue()
    _classifier().fit(x, y, loss="cross_entropy", optimizer=gb.optim.SGD(0.1), epochs=1,
                      verbose=False)
    assert capsys.readouterr().out == ""


def test_bce_single_output_fit() -> None:
    x, y3 = _blobs(60)
    y = (y3 == 0).astype(np.float64)
    model = gb.Sequential([gb.Dense(2, 8, "relu"), gb.Dense(8, 1)], device="cpu", seed=0)
    history = model.fit(x, y, loss="bce_with_logits", optimizer=gb.optim.Adam(3e-2), epochs=15,
                        batch_size=10, verbose=False)
    assert history["loss"][-1] < history["loss"][0]
    assert history["accuracy"][-1] > 0.9


# --- a real task ------------------------------------------------------------------------------
def test_digits_reach_97_percent() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    x, y = digits.data / 16.0, digits.target
    x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=0
    )
    model = gb.Sequential([gb.Dense(64, 128, "relu"), gb.Dense(128, 10)], device="cpu", seed=0)
    opt = gb.optim.SGD(0.1, momentum=0.9)
    started = time.perf_counter()
    history = model.fit(x_tr, y_tr, loss="cross_entropy", optimizer=opt, epochs=20,
                        batch_size=32, scheduler=gb.optim.CosineAnnealingLR(opt, T_max=20),
                        validation_data=(x_te, y_te), verbose=False)
    elapsed = time.perf_counter() - started
    result = model.evaluate(x_te, y_te, "cross_entropy")
    logits = model.predict(x_te)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y_te))
    assert accuracy >= 0.97
    assert result["accuracy"] == pytest.approx(accuracy)
    assert history["val_accuracy"][-1] == pytest.approx(accuracy)
    assert history["loss"][-1] < 0.1 < history["loss"][0]
    assert elapsed < 10.0


# --- GPU --------------------------------------------------------------------------------------
def test_training_curves_match_cpu(device: str) -> None:
    x, y = _blobs(96)
    curves = {}
    for dev in ("cpu", device):
        model = _classifier(seed=7, device=dev)
        history = model.fit(x, y, loss="cross_entropy",
                            optimizer=gb.optim.SGD(0.1, momentum=0.9), epochs=4, batch_size=16,
                            validation_data=(x, y), verbose=False)
        curves[dev] = (history, to_numpy(model.flat_params))
        assert model.device == ("cpu" if dev == "cpu" else "cuda:0")
    (h_cpu, p_cpu), (h_dev, p_dev) = curves["cpu"], curves[device]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(h_dev[key], h_cpu[key], rtol=1e-4)
    np.testing.assert_allclose(p_dev, p_cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_fit_on_device_arrays() -> None:
    cp = pytest.importorskip("cupy")
    x, y = _blobs(64)
    model = _classifier(seed=2, device="cuda")
    history = model.fit(cp.asarray(x, dtype=cp.float32), cp.asarray(y), loss="cross_entropy",
                        optimizer=gb.optim.Adam(1e-2), epochs=3, batch_size=16, verbose=False)
    assert history["loss"][-1] < history["loss"][0]
    out = model.predict(cp.asarray(x, dtype=cp.float32), batch_size=10)
    assert isinstance(out, cp.ndarray) and out.shape == (64, 3)
    np.testing.assert_allclose(to_numpy(out), model.predict(x), rtol=1e-5, atol=1e-6)
