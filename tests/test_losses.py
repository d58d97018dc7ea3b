"""Losses: values and gradients against hand formulas, finite differences and PyTorch."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.losses import MSE, BCEWithLogits, SoftmaxCrossEntropy, get_loss

from .helpers import numeric_gradient, to_numpy


# --- hand-written references ---------------------------------------------------------------
def _logsumexp_rows(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_mse(p: np.ndarray, y: np.ndarray, reduction: str = "mean") -> float:
    total = 0.0
    for pi, yi in zip(p.ravel(), y.ravel(), strict=True):
        total += (pi - yi) ** 2
    return total / p.size if reduction == "mean" else total


def ref_ce_labels(z: np.ndarray, labels: np.ndarray) -> float:
    lse = _logsumexp_rows(z)
    return float(np.mean([lse[b] - z[b, labels[b]] for b in range(len(labels))]))


def ref_ce_probs(z: np.ndarray, t: np.ndarray) -> float:
    log_softmax = z - _logsumexp_rows(z)[:, None]
    return float(-(t * log_softmax).sum() / z.shape[0])


def ref_bce(z: np.ndarray, y: np.ndarray) -> float:
    # −[y log σ(z) + (1 − y) log(1 − σ(z))], written with math.log1p/exp per element
    total = 0.0
    for zi, yi in zip(z.ravel(), y.ravel(), strict=True):
        log_sig = -(math.log1p(math.exp(-zi)) if zi >= 0 else -zi + math.log1p(math.exp(zi)))
        log_one_minus = -(math.log1p(math.exp(zi)) if zi <= 0 else zi + math.log1p(math.exp(-zi)))
        total += -(yi * log_sig + (1 - yi) * log_one_minus)
    return total / z.size


def _fd_grad(f, p: np.ndarray, h: float = 1e-6) -> np.ndarray:
    q = p.copy()
    return numeric_gradient(lambda: f(q), q, h)


def _onehot(labels: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(labels), classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out


# --- MSE -----------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_value_and_gradient(reduction: str, rng: np.random.Generator) -> None:
    p = rng.standard_normal((5, 3))
    y = rng.standard_normal((5, 3))
    loss = MSE(reduction=reduction) if reduction == "sum" else MSE()
    value, grad = loss.value_and_gradient(p, y)
    assert isinstance(value, float)
    assert value == pytest.approx(ref_mse(p, y, reduction), rel=1e-13)
    n = p.size if reduction == "mean" else 1
    np.testing.assert_allclose(to_numpy(grad), 2.0 * (p - y) / n, rtol=1e-13)
    fd = _fd_grad(lambda q: ref_mse(q, y, reduction), p)
    np.testing.assert_allclose(to_numpy(grad), fd, rtol=1e-6, atol=1e-9)
    assert loss(p, y) == pytest.approx(value, rel=1e-15)
    np.testing.assert_array_equal(to_numpy(loss.gradient(p, y)), to_numpy(grad))


def test_mse_known_value() -> None:
    p = np.array([[1.0, 2.0], [3.0, 4.0]])
    y = np.array([[1.0, 0.0], [0.0, 4.0]])
    assert MSE()(p, y) == pytest.approx((0 + 4 + 9 + 0) / 4)
    assert MSE("sum")(p, y) == pytest.approx(13.0)


def test_mse_accepts_flat_target_for_single_output(rng: np.random.Generator) -> None:
    p = rng.standard_normal((6, 1))
    y = rng.standard_normal(6)
    value, grad = MSE().value_and_gradient(p, y)
    assert value == pytest.approx(float(np.mean((p[:, 0] - y) ** 2)), rel=1e-13)
    np.testing.assert_allclose(to_numpy(grad)[:, 0], 2 * (p[:, 0] - y) / 6, rtol=1e-13)


def test_mse_float32_keeps_dtype(rng: np.random.Generator) -> None:
    p = rng.standard_normal((4, 3)).astype(np.float32)
    y = rng.standard_normal((4, 3))  # float64 target is cast, not the prediction upcast
    value, grad = MSE().value_and_gradient(p, y)
    assert grad.dtype == np.float32
    assert value == pytest.approx(np.mean((p.astype(np.float64) - y) ** 2), rel=1e-5)


def test_mse_bad_reduction() -> None:
    with pytest.raises(gb.ConfigError, match="reduction"):
        MSE(reduction="max")


def test_loss_does_not_modify_its_inputs(rng: np.random.Generator) -> None:
    p = rng.standard_normal((4, 3))
    y = rng.standard_normal((4, 3))
    labels = np.array([0, 2, 1, 1])
    for loss, target in ((MSE(), y), (SoftmaxCrossEntropy(), labels),
                         (BCEWithLogits(), (y > 0).astype(float))):
        p0, t0 = p.copy(), target.copy()
        loss.value_and_gradient(p, target)
        np.testing.assert_array_equal(p, p0)
        np.testing.assert_array_equal(target, t0)


# --- softmax cross-entropy --------------------------------------------------------------------
def test_softmax_ce_labels_value_and_gradient(rng: np.random.Generator) -> None:
    z = rng.standard_normal((6, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2, 0])
    value, grad = SoftmaxCrossEntropy().value_and_gradient(z, labels)
    assert value == pytest.approx(ref_ce_labels(z, labels), rel=1e-13)
    closed = (_softmax_rows(z) - _onehot(labels, 4)) / 6
    np.testing.assert_allclose(to_numpy(grad), closed, rtol=1e-12, atol=1e-15)
    fd = _fd_grad(lambda q: ref_ce_labels(q, labels), z)
    np.testing.assert_allclose(to_numpy(grad), fd, rtol=1e-6, atol=1e-9)


def test_softmax_ce_known_value() -> None:
    z = np.zeros((2, 4))  # uniform softmax: loss log 4
    assert SoftmaxCrossEntropy()(z, np.array([1, 3])) == pytest.approx(math.log(4.0), rel=1e-15)


def test_softmax_ce_onehot_equals_labels(rng: np.random.Generator) -> None:
    z = rng.standard_normal((5, 3))
    labels = np.array([2, 0, 1, 2, 2])
    v_lab, g_lab = SoftmaxCrossEntropy().value_and_gradient(z, labels)
    v_hot, g_hot = SoftmaxCrossEntropy().value_and_gradient(z, _onehot(labels, 3))
    assert v_hot == pytest.approx(ref_ce_labels(z, labels), rel=1e-13)
    assert v_hot == pytest.approx(v_lab, rel=1e-13)
    closed = (_softmax_rows(z) - _onehot(labels, 3)) / 5
    np.testing.assert_allclose(to_numpy(g_hot), closed, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(to_numpy(g_lab), closed, rtol=1e-12, atol=1e-15)


def test_softmax_ce_soft_probabilities(rng: np.random.Generator) -> None:
    z = rng.standard_normal((5, 4)) * 2
    t = rng.uniform(0.0, 1.0, (5, 4))
    t /= t.sum(axis=1, keepdims=True)
    value, grad = SoftmaxCrossEntropy().value_and_gradient(z, t)
    assert value == pytest.approx(ref_ce_probs(z, t), rel=1e-13)
    np.testing.assert_allclose(to_numpy(grad), (_softmax_rows(z) - t) / 5, rtol=1e-11, atol=1e-15)
    fd = _fd_grad(lambda q: ref_ce_probs(q, t), z)
    np.testing.assert_allclose(to_numpy(grad), fd, rtol=1e-6, atol=1e-9)


def test_softmax_ce_unnormalised_target_rows(rng: np.random.Generator) -> None:
    """Rows not summing to 1 (e.g. weighted): gradient is (softmax·Σt − t)/B."""
    z = rng.standard_normal((3, 4))
    t = rng.uniform(0.0, 2.0, (3, 4))
    value, grad = SoftmaxCrossEntropy().value_and_gradient(z, t)
    assert value == pytest.approx(ref_ce_probs(z, t), rel=1e-13)
    fd = _fd_grad(lambda q: ref_ce_probs(q, t), z)
    np.testing.assert_allclose(to_numpy(grad), fd, rtol=1e-6, atol=1e-9)


def test_softmax_ce_float_whole_labels_accepted(rng: np.random.Generator) -> None:
    z = rng.standard_normal((3, 4))
    value = SoftmaxCrossEntropy()(z, np.array([1.0, 0.0, 3.0]))
    assert value == pytest.approx(ref_ce_labels(z, np.array([1, 0, 3])), rel=1e-13)


def test_softmax_ce_large_logits_finite() -> None:
    z = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]])
    labels = np.array([0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = SoftmaxCrossEntropy().value_and_gradient(z, labels)
    g = to_numpy(grad)
    assert np.isfinite(value) and np.all(np.isfinite(g))
    assert value == pytest.approx((0.0 + 2e4 + 0.0) / 3, rel=1e-12)
    want = np.array([[0, 0, 0], [1, -1, 0], [0, 0, 0]]) / 3
    np.testing.assert_allclose(g, want, atol=1e-15)


def test_softmax_ce_large_logits_float32() -> None:
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], dtype=np.float32)
    value, grad = SoftmaxCrossEntropy().value_and_gradient(z, np.array([2, 1]))
    assert grad.dtype == np.float32
    assert value == pytest.approx(1e4 / 2, rel=1e-6)
    np.testing.assert_allclose(to_numpy(grad), [[0.5, 0, -0.5], [0, 0, 0]], atol=1e-7)


# --- BCE with logits -------------------------------------------------------------------------
def test_bce_value_and_gradient(rng: np.random.Generator) -> None:
    z = rng.standard_normal((6, 2)) * 3
    y = rng.uniform(0.0, 1.0, (6, 2))
    y[0] = [0.0, 1.0]
    value, grad = BCEWithLogits().value_and_gradient(z, y)
    assert value == pytest.approx(ref_bce(z, y), rel=1e-13)
    sig = 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_allclose(to_numpy(grad), (sig - y) / z.size, rtol=1e-12, atol=1e-16)
    fd = _fd_grad(lambda q: ref_bce(q, y), z)
    np.testing.assert_allclose(to_numpy(grad), fd, rtol=1e-6, atol=1e-9)


def test_bce_known_value() -> None:
    assert BCEWithLogits()(np.zeros((3, 1)), np.array([0.0, 1.0, 1.0])) == pytest.approx(
        math.log(2.0), rel=1e-15
    )


def test_bce_large_logits_finite() -> None:
    z = np.array([[1e4], [-1e4], [1e4], [-1e4], [89.0], [-89.0]])
    y = np.array([[0.0], [1.0], [1.0], [0.0], [0.0], [1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = BCEWithLogits().value_and_gradient(z, y)
    g = to_numpy(grad)
    assert np.isfinite(value) and np.all(np.isfinite(g))
    assert value == pytest.approx((1e4 + 1e4 + 0 + 0 + 89 + 89) / 6, rel=1e-12)
    np.testing.assert_allclose(g[:, 0], np.array([1, -1, 0, 0, 1, -1]) / 6, atol=1e-15)
    z32 = z.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v32, g32 = BCEWithLogits().value_and_gradient(z32, y)
    assert np.isfinite(v32) and np.all(np.isfinite(to_numpy(g32)))
    assert v32 == pytest.approx(value, rel=1e-6)


# --- against PyTorch --------------------------------------------------------------------------
def _torch_value_grad(fn, z: np.ndarray, *args):
    torch = pytest.importorskip("torch")
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    value = fn(zt, *args)
    value.backward()
    return float(value.detach()), zt.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_torch(reduction: str, rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    p, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3))
    tv, tg = _torch_value_grad(
        lambda a: torch.nn.functional.mse_loss(a, torch.tensor(y), reduction=reduction), p
    )
    value, grad = MSE(reduction).value_and_gradient(p, y)
    assert value == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(to_numpy(grad), tg, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("target_kind", ["labels", "onehot", "probs"])
def test_cross_entropy_matches_torch(target_kind: str, rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((8, 5)) * 4
    labels = rng.integers(0, 5, 8)
    if target_kind == "labels":
        target, ttarget = labels, torch.tensor(labels)
    else:
        target = _onehot(labels, 5)
        if target_kind == "probs":
            target = rng.uniform(0, 1, (8, 5))
            target /= target.sum(axis=1, keepdims=True)
        ttarget = torch.tensor(target)
    tv, tg = _torch_value_grad(lambda a: torch.nn.functional.cross_entropy(a, ttarget), z)
    value, grad = SoftmaxCrossEntropy().value_and_gradient(z, target)
    assert value == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(to_numpy(grad), tg, rtol=1e-11, atol=1e-16)


def test_bce_matches_torch(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((9, 2)) * 5
    z[0, 0], z[1, 1] = 1e4, -1e4
    y = rng.uniform(0, 1, (9, 2))
    tv, tg = _torch_value_grad(
        lambda a: torch.nn.functional.binary_cross_entropy_with_logits(a, torch.tensor(y)), z
    )
    value, grad = BCEWithLogits().value_and_gradient(z, y)
    assert value == pytest.approx(tv, rel=1e-12)
    np.testing.assert_allclose(to_numpy(grad), tg, rtol=1e-11, atol=1e-16)


# --- label and shape errors -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (np.array([0, 4, 1]), "label 4 is out of range for 4 classes"),
        (np.array([0, 1, 100]), "label 100"),
        (np.array([0, -1, 1]), "label -1"),
        (np.array([0.0, 1.5, 2.0]), "whole numbers"),
        (np.array([0.0, np.nan, 2.0]), "whole numbers"),
    ],
)
def test_bad_labels_raise_label_error(labels: np.ndarray, fragment: str) -> None:
    z = np.zeros((3, 4))
    with pytest.raises(gb.LabelError) as info:
        SoftmaxCrossEntropy()(z, labels)
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)
    assert "SoftmaxCrossEntropy" in str(info.value)


def test_out_of_range_message_names_valid_range() -> None:
    with pytest.raises(gb.LabelError, match=r"0 <= label < 4"):
        SoftmaxCrossEntropy()(np.zeros((2, 4)), np.array([4, 0]))


@pytest.mark.parametrize("n_labels", [2, 4])
def test_wrong_number_of_labels_raises_shape_error(n_labels: int) -> None:
    with pytest.raises(gb.ShapeError) as info:
        SoftmaxCrossEntropy()(np.zeros((3, 4)), np.zeros(n_labels, dtype=int))
    assert f"{n_labels} labels" in str(info.value) and "3" in str(info.value)


def test_non_integer_label_dtype_raises_dtype_error() -> None:
    with pytest.raises(gb.DTypeError) as info:
        SoftmaxCrossEntropy()(np.zeros((2, 3)), np.array(["a", "b"]))
    assert isinstance(info.value, TypeError)
    assert "<U1" in str(info.value)


def test_labels_of_wrong_rank_raise_shape_error() -> None:
    with pytest.raises(gb.ShapeError, match=r"\(2, 1, 3\)"):
        SoftmaxCrossEntropy()(np.zeros((2, 3)), np.zeros((2, 1, 3)))


def test_onehot_of_wrong_width_raises_shape_error() -> None:
    with pytest.raises(gb.ShapeError) as info:
        SoftmaxCrossEntropy()(np.zeros((2, 3)), np.zeros((2, 4)))
    assert "(2, 4)" in str(info.value) and "(2, 3)" in str(info.value)


def test_logits_must_be_2d() -> None:
    with pytest.raises(gb.ShapeError, match="batch, classes"):
        SoftmaxCrossEntropy()(np.zeros(3), np.array([0]))


@pytest.mark.parametrize("loss", [MSE(), BCEWithLogits()])
def test_target_shape_mismatch_raises_shape_error(loss) -> None:
    with pytest.raises(gb.ShapeError) as info:
        loss(np.zeros((4, 2)), np.zeros((4, 3)))
    msg = str(info.value)
    assert "(4, 3)" in msg and "(4, 2)" in msg and loss.name in msg


@pytest.mark.parametrize("bad", [np.array([[0.5, 1.5]]), np.array([[-0.1, 0.5]])])
def test_bce_targets_outside_unit_interval(bad: np.ndarray) -> None:
    with pytest.raises(gb.LabelError, match=r"\[0, 1\]"):
        BCEWithLogits()(np.zeros((1, 2)), bad)


def test_complex_target_raises_dtype_error() -> None:
    with pytest.raises(gb.DTypeError, match="complex"):
        MSE()(np.zeros((2, 2)), np.zeros((2, 2), dtype=complex))


def test_integer_prediction_raises_dtype_error() -> None:
    with pytest.raises(gb.DTypeError, match="float32 or float64"):
        MSE()(np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2)))


@pytest.mark.parametrize(
    ("loss", "target"),
    [
        (MSE(), np.zeros((0, 3))),
        (SoftmaxCrossEntropy(), np.zeros(0, dtype=np.int64)),
        (BCEWithLogits(), np.zeros((0, 3))),
    ],
)
def test_empty_batch_raises_shape_error(loss, target: np.ndarray) -> None:
    with pytest.raises(gb.ShapeError, match="empty"):
        loss.value_and_gradient(np.zeros((0, 3)), target)


def test_get_loss_by_name() -> None:
    assert isinstance(get_loss("mse"), MSE)
    assert isinstance(get_loss("MSE"), MSE)
    assert isinstance(get_loss("cross_entropy"), SoftmaxCrossEntropy)
    assert isinstance(get_loss("softmax_cross_entropy"), SoftmaxCrossEntropy)
    assert isinstance(get_loss("bce_with_logits"), BCEWithLogits)
    inst = MSE("sum")
    assert get_loss(inst) is inst
    with pytest.raises(gb.ConfigError, match="unknown loss 'hinge'"):
        get_loss("hinge")
    with pytest.raises(gb.ConfigError):
        get_loss(None)  # type: ignore[arg-type]


def test_loss_reprs() -> None:
    assert repr(MSE()) == "MSE()"
    assert repr(MSE("sum")) == "MSE(reduction='sum')"
    assert repr(SoftmaxCrossEntropy()) == "SoftmaxCrossEntropy()"


# --- GPU ---------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_on_gpu_match_cpu(dtype: type, rng: np.random.Generator) -> None:
    cp = pytest.importorskip("cupy")
    z = (rng.standard_normal((16, 5)) * 3).astype(dtype)
    labels = rng.integers(0, 5, 16)
    soft = rng.uniform(0, 1, (16, 5))
    soft /= soft.sum(axis=1, keepdims=True)
    y = rng.uniform(0, 1, (16, 5))
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    for loss, target in (
        (MSE(), y), (MSE("sum"), y), (SoftmaxCrossEntropy(), labels),
        (SoftmaxCrossEntropy(), soft), (BCEWithLogits(), y),
    ):
        v_cpu, g_cpu = loss.value_and_gradient(z, target)
        v_gpu, g_gpu = loss.value_and_gradient(cp.asarray(z), cp.asarray(target))
        assert isinstance(g_gpu, cp.ndarray)
        assert g_gpu.dtype == dtype
        assert v_gpu == pytest.approx(v_cpu, rel=rtol)
        np.testing.assert_allclose(to_numpy(g_gpu), g_cpu, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.gpu
def test_loss_mixed_devices_raise_device_error() -> None:
    cp = pytest.importorskip("cupy")
    with pytest.raises(gb.DeviceError):
        MSE()(cp.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(gb.DeviceError):
        SoftmaxCrossEntropy()(cp.zeros((2, 2)), np.zeros(2, dtype=int))
