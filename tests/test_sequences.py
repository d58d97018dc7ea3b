"""Sequences in Sequential (issue 11, part "seq"): (B, T, F) inputs through per-position
layers, integer token ids through gb.Embedding, the losses on (B, T, C) outputs, and
fit / evaluate / predict / explain / checkpoints / compile_step on such models."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backend import get_backend

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch")


def _token_model(device: str = "cpu", dtype: str = "float64", vocab: int = 7,
                 dim: int = 4, classes: int = 5, seed: int = 0) -> gb.Sequential:
    return gb.Sequential([gb.Embedding(vocab, dim), gb.Dense(dim, classes)],
                         device=device, dtype=dtype, seed=seed)


class _SequenceOnly(gb.Activation):
    """A per-position layer that declares it takes (B, T, F) only, to test the checks
    for "sequence" layers without a recurrent layer."""

    input_kind = "sequence"


# --- the layer contract -------------------------------------------------------------------------
def test_input_kinds() -> None:
    assert gb.Layer.input_kind == "features"
    assert gb.Dense(2, 3).input_kind == "features"
    assert gb.Activation("relu").input_kind == "features"
    assert gb.Embedding(3, 2).input_kind == "tokens"
    assert _token_model().input_kind == "tokens"
    assert gb.Sequential([gb.Dense(2, 3)], device="cpu").input_ranks == (2, 3)
    assert _token_model().input_ranks == (1, 2)
    ids = _token_model().to_device(np.array([[1, 2]], dtype=np.int32))
    assert ids.dtype == np.int64  # token ids stay integers (floats would be refused later)
    assert _token_model().to_device(np.zeros((1, 2))).dtype == np.float64


def test_dense_on_sequences_is_the_matrix_of_all_positions(device: str, rng) -> None:
    def model() -> gb.Sequential:
        return gb.Sequential([gb.Dense(3, 4, "tanh"), gb.Activation("relu"), gb.Dense(4, 2)],
                             device=device, dtype="float64", seed=1)

    seq, flat = model(), model()
    x = rng.standard_normal((5, 6, 3))
    y = rng.standard_normal((5, 6, 2))
    b = seq.backend
    out = seq.forward(b.asarray(x))
    assert out.shape == (5, 6, 2)
    np.testing.assert_array_equal(
        b.to_numpy(out).reshape(30, 2), b.to_numpy(flat.forward(b.asarray(x.reshape(30, 3))))
    )
    loss_seq = seq.loss_and_grad(b.asarray(x), b.asarray(y), "mse")
    loss_flat = flat.loss_and_grad(b.asarray(x.reshape(30, 3)), b.asarray(y.reshape(30, 2)), "mse")
    assert loss_seq == pytest.approx(loss_flat, rel=1e-14)
    for (name, g1), g2 in zip(seq.gradients().items(), flat.gradients().values(), strict=True):
        np.testing.assert_allclose(b.to_numpy(g1), b.to_numpy(g2), rtol=1e-12, err_msg=name)


def test_dense_takes_a_view_of_the_input_and_keys_buffers_by_leading_shape(rng) -> None:
    model = gb.Sequential([gb.Dense(3, 4, "sigmoid"), gb.Dense(4, 2)], device="cpu", seed=0)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    model.forward_batch(x)
    kept = model.layers[0].backward_state()["_input"]
    assert kept.shape == (10, 3) and np.shares_memory(kept, x)  # a view, no copy
    model.forward_batch(x.reshape(10, 3))
    assert set(model.layers[0].workspaces.cache) == {(2, 5), (10,)}
    assert model.layers[1].workspaces.cache[(2, 5)]["out"].shape == (2, 5, 2)


# --- input checks --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 4, 3), (2, 3, 4, 5, 3)])
def test_rank_four_and_more_is_refused(shape: tuple) -> None:
    model = gb.Sequential([gb.Dense(3, 2)], device="cpu")
    with pytest.raises(gb.ShapeError, match=r"layer 0 \(Dense 3->2\).*\(batch, time, 3\)"):
        model.forward(np.zeros(shape))


def test_a_sequence_layer_refuses_a_matrix() -> None:
    model = gb.Sequential([_SequenceOnly("tanh"), gb.Dense(3, 2)], device="cpu")
    assert model.input_ranks == (3,)
    with pytest.raises(gb.ShapeError, match=r"layer 0 \(Activation tanh\): expected input of "
                       r"shape \(batch, time, 3\), got shape \(4, 3\)"):
        model.forward(np.zeros((4, 3)))
    assert model.forward(np.zeros((4, 2, 3))).shape == (4, 2, 2)
    later = gb.Sequential([gb.Dense(3, 3), _SequenceOnly("tanh")], device="cpu")
    with pytest.raises(gb.ShapeError, match=r"layer 1 \(Activation tanh\).*\(batch, time, n\)"):
        later.forward(np.zeros((4, 3)))


def test_float_token_ids_name_the_embedding() -> None:
    model = _token_model()
    with pytest.raises(gb.DTypeError, match=r"layer 0 \(Embedding 7x4\): input must be integer "
                       r"token ids .* got dtype float64"):
        model.forward(np.zeros((2, 3)))
    with pytest.raises(gb.DTypeError, match="Embedding"):
        model.train_step(np.zeros((2, 3)), np.zeros((2, 3), dtype=int), "cross_entropy",
                         gb.optim.SGD(0.1))


def test_integer_ids_for_a_model_without_embedding_suggest_one() -> None:
    model = gb.Sequential([gb.Dense(3, 2)], device="cpu")
    with pytest.raises(gb.ShapeError, match=r"layer 0 \(Dense 3->2\).*got shape \(2, 5\).*"
                       r"gb\.Embedding"):
        model.forward(np.zeros((2, 5), dtype=np.int64))
    # integer features of the right width stay valid inputs (converted to floats)
    assert model.forward(np.ones((2, 3), dtype=np.int64)).dtype == np.float32


def test_token_ids_of_the_wrong_rank() -> None:
    with pytest.raises(gb.ShapeError, match=r"Embedding.*token ids of shape \(batch,\) or "
                       r"\(batch, time\), got shape \(2, 3, 4\)"):
        _token_model().forward(np.zeros((2, 3, 4), dtype=np.int64))


def test_embedding_must_come_first() -> None:
    with pytest.raises(gb.ConfigError, match=r"layer 1 \(Embedding 4x2\).*first layer"):
        gb.Sequential([gb.Dense(3, 3), gb.Embedding(4, 2)], device="cpu")


@pytest.mark.parametrize(("bad", "position"), [(7, "(1, 2)"), (-1, "(1, 2)")])
def test_an_id_out_of_range_raises_label_error(bad: int, position: str) -> None:
    model = _token_model()
    ids = np.zeros((2, 4), dtype=np.int64)
    ids[1, 2] = bad
    before = model.flat_params.copy()
    pattern = re.escape(f"layer 0 (Embedding 7x4): token id {bad} at position {position} of the "
                        "ids of shape (2, 4) is out of range (expected 0 <= id < 7)")
    for call in (
        lambda: model.forward(ids),
        lambda: model.predict(ids),
        lambda: model.train_step(ids, np.zeros((2, 4), int), "cross_entropy", gb.optim.SGD(1)),
        lambda: model.fit(ids, np.zeros((2, 4), int), loss="cross_entropy",
                          optimizer=gb.optim.SGD(1), verbose=False),
        lambda: model.evaluate(ids, np.zeros((2, 4), int), "cross_entropy"),
    ):
        with pytest.raises(gb.LabelError, match=pattern):
            call()
    np.testing.assert_array_equal(model.flat_params, before)  # checked before any step


# --- Embedding ---------------------------------------------------------------------------------
def test_embedding_forward_is_a_row_gather(device: str) -> None:
    model = _token_model(device)
    b = model.backend
    ids = np.array([[0, 3, 3], [6, 1, 0]])
    out = model.layers[0].forward(b.asarray(ids))
    weight = b.to_numpy(model.parameters()["0.weight"])
    np.testing.assert_array_equal(b.to_numpy(out), weight[ids])
    one_axis = model.layers[0].forward(b.asarray(np.array([2, 5])))
    np.testing.assert_array_equal(b.to_numpy(one_axis), weight[[2, 5]])


def test_embedding_backward_sums_rows_by_id_and_has_no_input_grad(device: str, rng) -> None:
    layer = gb.Embedding(6, 3).build(device, "float64", seed=0)
    b = layer.backend
    ids = np.array([[1, 4, 1], [1, 0, 4]])
    layer.forward(b.asarray(ids))
    delta = rng.standard_normal((2, 3, 3))
    assert layer.backward(b.asarray(delta), need_input_grad=True) is None
    expected = np.zeros((6, 3))
    for (i, j), k in np.ndenumerate(ids):
        expected[k] += delta[i, j]
    np.testing.assert_allclose(b.to_numpy(layer.grads["weight"]), expected, rtol=1e-15)
    model = _token_model(device)
    model.forward(b.asarray(ids))
    assert model.backward(b.asarray(rng.standard_normal((2, 3, 5))),
                          return_input_grad=True) is None


def test_embedding_init_is_standard_normal() -> None:
    weight = gb.Sequential([gb.Embedding(400, 50)], device="cpu", seed=3).parameters()["0.weight"]
    assert abs(float(weight.mean())) < 0.02 and abs(float(weight.std()) - 1.0) < 0.02


def test_scatter_add_rows_reference_is_deterministic(rng) -> None:
    ops = get_backend("cpu").ops
    ids = rng.integers(0, 5, 1000)
    delta = rng.standard_normal((1000, 7)).astype(np.float32)
    first, second = np.empty((5, 7), np.float32), np.full((5, 7), 9.0, np.float32)
    ops.scatter_add_rows(ids, delta, first)
    ops.scatter_add_rows(ids, delta, second)  # overwrites whatever was there
    np.testing.assert_array_equal(first, second)
    expected = np.stack([delta[ids == k].astype(np.float64).sum(axis=0) for k in range(5)])
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_scatter_add_rows_gpu_matches_the_reference_and_repeats_bit_for_bit(rng) -> None:
    gpu = get_backend("cuda")
    cp = gpu.xp
    ids = rng.integers(0, 301, 5003)
    delta = rng.standard_normal((5003, 37))
    expected = np.empty((301, 37))
    get_backend("cpu").ops.scatter_add_rows(ids, delta, expected)
    outs = []
    for _ in range(2):
        out = cp.full((301, 37), 5.0)
        gpu.ops.scatter_add_rows(cp.asarray(ids), cp.asarray(delta), out)
        outs.append(cp.asnumpy(out))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_embedding_alone() -> None:
    layer = gb.Embedding(5, 3).build("cpu", "float64", seed=0)
    ids = np.array([[0, 4, 4, 2], [1, 4, 0, 0]])
    assert gb.gradcheck(layer, x=ids)


def test_gradcheck_embedding_dense_cross_entropy(rng) -> None:
    model = gb.Sequential([gb.Embedding(6, 4), gb.Dense(4, 5, "tanh"), gb.Dense(5, 3)],
                          device="cpu", dtype="float64", seed=2)
    ids = rng.integers(0, 6, (3, 4))
    assert gb.gradcheck(model, x=ids, y=rng.integers(0, 3, (3, 4)), loss="cross_entropy")


def test_gradcheck_dense_model_on_sequences(rng) -> None:
    model = gb.Sequential([gb.Dense(3, 4, "sigmoid"), gb.Activation("tanh"), gb.Dense(4, 3)],
                          device="cpu", dtype="float64", seed=2)
    x = rng.standard_normal((2, 5, 3))
    assert gb.gradcheck(model, x=x, y=rng.integers(0, 3, (2, 5)), loss="cross_entropy")
    assert gb.gradcheck(model, x=x, y=rng.random((2, 5, 3)), loss="bce_with_logits")
    assert gb.gradcheck(model, x=x, y=rng.standard_normal((2, 5, 3)), loss="mse")
    assert gb.gradcheck(model, x=x)  # L = Σ out ⊙ R, input gradient included


@needs_torch
def test_embedding_matches_torch(rng) -> None:
    layer = gb.Embedding(9, 4).build("cpu", "float64", seed=0)
    reference = torch.nn.Embedding(9, 4).double()
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(layer.params["weight"]))
    ids = rng.integers(0, 9, (3, 5))
    delta = rng.standard_normal((3, 5, 4))
    out = layer.forward(ids)
    layer.backward(delta, need_input_grad=False)
    expected = reference(torch.from_numpy(ids))
    expected.backward(torch.from_numpy(delta))
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(layer.grads["weight"], reference.weight.grad.numpy(),
                               rtol=0, atol=1e-10)


# --- losses on (B, T, C) ------------------------------------------------------------------------
@needs_torch
def test_sequence_cross_entropy_matches_torch(rng) -> None:
    logits = rng.standard_normal((3, 4, 6)) * 3
    labels = rng.integers(0, 6, (3, 4))
    value, grad = gb.losses.SoftmaxCrossEntropy().value_and_gradient(logits, labels)
    z = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(z.reshape(-1, 6), torch.from_numpy(labels)
                                                 .reshape(-1))
    expected.backward()
    assert value == pytest.approx(expected.item(), abs=1e-12)
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=0, atol=1e-12)


def test_losses_on_sequences_average_over_all_positions(device: str, rng) -> None:
    b = get_backend(device)
    logits = rng.standard_normal((3, 4, 5))
    flat = logits.reshape(12, 5)
    labels = rng.integers(0, 5, (3, 4))
    probs = rng.dirichlet(np.ones(5), (3, 4))
    targets = rng.random((3, 4, 5))
    cases = [
        (gb.losses.SoftmaxCrossEntropy(), labels, labels.reshape(-1)),
        (gb.losses.SoftmaxCrossEntropy(), probs, probs.reshape(12, 5)),
        (gb.losses.MSE(), targets, targets.reshape(12, 5)),
        (gb.losses.MSE("sum"), targets, targets.reshape(12, 5)),
        (gb.losses.BCEWithLogits(), targets, targets.reshape(12, 5)),
    ]
    for loss, target, flat_target in cases:
        value, grad = loss.value_and_gradient(b.asarray(logits), b.asarray(target))
        value2, grad2 = loss.value_and_gradient(b.asarray(flat), b.asarray(flat_target))
        assert value == pytest.approx(value2, rel=1e-13), loss
        assert grad.shape == (3, 4, 5)
        np.testing.assert_allclose(b.to_numpy(grad).reshape(12, 5), b.to_numpy(grad2),
                                   rtol=1e-13, atol=1e-16)
    # the gradient carries 1/(B·T): softmax − onehot over 12 positions
    _, grad = gb.losses.SoftmaxCrossEntropy().value_and_gradient(np.zeros((3, 4, 5)), labels)
    np.testing.assert_allclose(grad.sum(axis=-1), 0.0, atol=1e-15)
    assert grad[0, 0, labels[0, 0]] == pytest.approx((0.2 - 1.0) / 12)


def test_sequence_label_errors_name_the_loss_and_shape() -> None:
    loss = gb.losses.SoftmaxCrossEntropy()
    labels = np.zeros((2, 3), dtype=np.int64)
    labels[1, 2] = 5
    with pytest.raises(gb.LabelError, match=r"SoftmaxCrossEntropy: label 5 is out of range for "
                       r"4 classes \(at position \(1, 2\) of the labels of shape \(2, 3\)"):
        loss(np.zeros((2, 3, 4)), labels)
    with pytest.raises(gb.ShapeError, match=r"SoftmaxCrossEntropy: labels of shape \(2, 4\) for "
                       r"outputs of shape \(2, 3, 4\) \(expected labels of shape \(2, 3\)\)"):
        loss(np.zeros((2, 3, 4)), np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(gb.DTypeError, match="labels must be integers"):
        loss(np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=bool))
    with pytest.raises(gb.ShapeError, match=r"MSE: target shape \(2, 3\) does not match the "
                       r"output shape \(2, 3, 4\)"):
        gb.losses.MSE()(np.zeros((2, 3, 4)), np.zeros((2, 3)))


# --- training, evaluation, data checks ------------------------------------------------------------
def _periodic(n: int, steps: int, period: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of the sequence 0, 1, ..., period−1, 0, ... and their next tokens."""
    starts = np.random.default_rng(seed).integers(0, period, n)
    tokens = (starts[:, None] + np.arange(steps + 1)) % period
    return tokens[:, :-1], tokens[:, 1:]


def test_fit_learns_the_next_token_of_a_periodic_sequence() -> None:
    x, y = _periodic(64, 12, 5, seed=0)
    model = gb.Sequential([gb.Embedding(5, 8), gb.Dense(8, 16, "tanh"), gb.Dense(16, 5)],
                          device="cpu", seed=0)
    history = model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.Adam(0.05), epochs=30,
                        batch_size=16, verbose=False)
    assert history["loss"][-1] < 0.01 < history["loss"][0]
    result = model.evaluate(x, y, "cross_entropy")
    assert result["accuracy"] == 1.0 and result["loss"] < 0.01
    predicted = model.predict(x, batch_size=10)
    assert predicted.shape == (64, 12, 5)
    np.testing.assert_array_equal(predicted.argmax(axis=-1), y)


def test_accuracy_counts_every_position(rng) -> None:
    model = _token_model(dtype="float32")
    ids = rng.integers(0, 7, (6, 5))
    logits = model.predict(ids)
    labels = logits.argmax(axis=-1)
    labels[0, :3] = (labels[0, :3] + 1) % 5  # 3 wrong of 30
    assert model.evaluate(ids, labels, "cross_entropy", batch_size=4)["accuracy"] == \
        pytest.approx(27 / 30)
    mae = model.evaluate(ids, labels, "cross_entropy", metrics=["mae"])["mae"]
    onehot = np.eye(5)[labels]
    assert mae == pytest.approx(float(np.abs(logits - onehot).mean()), rel=1e-5)


def test_fit_data_check_names_the_index_of_a_nan_in_a_sequence() -> None:
    model = gb.Sequential([gb.Dense(3, 2)], device="cpu")
    x = np.zeros((4, 5, 3), dtype=np.float32)
    x[2, 3, 1] = np.nan
    with pytest.raises(gb.NumericalError, match=r"fit: non-finite float32 value \(NaN\) in x at "
                       r"row 2, index \(2, 3, 1\)"):
        model.fit(x, np.zeros((4, 5, 2)), loss="mse", optimizer=gb.optim.SGD(0.1), verbose=False)
    y = np.zeros((4, 5, 2))
    y[1, 4, 0] = np.inf
    with pytest.raises(gb.NumericalError, match=r"in y at row 1, index \(1, 4, 0\)"):
        model.fit(np.zeros((4, 5, 3)), y, loss="mse", optimizer=gb.optim.SGD(0.1), verbose=False)
    with pytest.raises(gb.NumericalError, match=r"in y at row 1, index \(1, 4, 0\)"):
        model.evaluate(np.zeros((4, 5, 3)), y, "mse")


def test_explain_a_token_model(rng) -> None:
    model = _token_model()
    text = str(model.explain(rng.integers(0, 7, (2, 3)), rng.integers(0, 5, (2, 3)),
                             "cross_entropy"))
    assert "layer 0: Embedding 7x4  ->  a_1 (2, 3, 4)" in text
    assert "dW[v] = Σ_{m: x[m] = v}" in text and "B·T = 6" in text


def test_checkpoint_round_trip_of_an_embedding_model(tmp_path: Path, rng) -> None:
    model = gb.Sequential([gb.Embedding(11, 6), gb.Dense(6, 8, "relu"), gb.Dense(8, 11)],
                          device="cpu", seed=4)
    optimizer = gb.optim.Adam(0.01)
    ids = rng.integers(0, 11, (4, 7))
    model.train_step(ids, rng.integers(0, 11, (4, 7)), "cross_entropy", optimizer)
    path = tmp_path / "lm.safetensors"
    model.save(path, optimizer)
    loaded, opt = gb.load(path, device="cpu", with_optimizer=True)
    assert isinstance(loaded.layers[0], gb.Embedding)
    assert loaded.layers[0].describe() == "Embedding 11x6" and opt is not None
    np.testing.assert_array_equal(loaded.predict(ids), model.predict(ids))


def test_compile_step_on_the_cpu_is_refused_as_before() -> None:
    with pytest.raises(gb.ConfigError, match="GPU"):
        _token_model().compile_step("cross_entropy", gb.optim.SGD(0.1))


@pytest.mark.gpu
def test_compile_step_trains_a_token_model_as_train_step_does(rng) -> None:
    ids = rng.integers(0, 7, (4, 6))
    labels = rng.integers(0, 5, (4, 6))
    eager, captured = _token_model("cuda"), _token_model("cuda")
    sgd_eager, sgd_captured = gb.optim.SGD(0.1), gb.optim.SGD(0.1)
    step = captured.compile_step("cross_entropy", sgd_captured)
    cp = captured.backend.xp
    for _ in range(3):
        eager.train_step(cp.asarray(ids), cp.asarray(labels), "cross_entropy", sgd_eager)
        step(cp.asarray(ids), cp.asarray(labels))
    np.testing.assert_allclose(cp.asnumpy(captured.flat_params), cp.asnumpy(eager.flat_params),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_out_of_range_ids_on_the_gpu_are_reported_after_the_step() -> None:
    model = _token_model("cuda")
    cp = model.backend.xp
    ids = cp.asarray(np.array([[0, 9]]))
    with pytest.raises(gb.LabelError, match=r"token id 9 at position \(0, 1\)"):
        model.train_step(ids, cp.zeros((1, 2), dtype=cp.int64), "cross_entropy",
                         gb.optim.SGD(0.1))


def test_one_token_per_sample_and_anomaly_checks_on_a_token_model(rng) -> None:
    model = _token_model(dtype="float32")
    assert model.forward(np.array([1, 2, 3])).shape == (3, 5)  # ids (B,) -> (B, C)
    ids = rng.integers(0, 7, (8, 4))
    history = model.fit(ids, ids % 5, loss="cross_entropy", optimizer=gb.optim.SGD(0.1),
                        epochs=2, check_finite=True, verbose=False)
    assert np.isfinite(history["loss"]).all()
    with gb.detect_anomaly():
        assert np.isfinite(model.train_step(ids, ids % 5, "cross_entropy", gb.optim.SGD(0.1)))


@pytest.mark.parametrize("loss", ["mse", "bce_with_logits"])
def test_fit_regresses_sequences_with_elementwise_losses(loss: str, rng) -> None:
    model = gb.Sequential([gb.Dense(3, 8, "tanh"), gb.Dense(8, 2)], device="cpu", seed=0)
    x = rng.standard_normal((64, 5, 3)).astype(np.float32)
    y = (x[..., :2] > 0).astype(np.float32)
    history = model.fit(x, y, loss=loss, optimizer=gb.optim.Adam(0.02), epochs=15,
                        batch_size=16, verbose=False, metrics=["mae"])
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    result = model.evaluate(x, y, loss, metrics=["mae"])  # mae: of the raw outputs
    assert result["loss"] < 0.6 * history["loss"][0] and np.isfinite(result["mae"])
