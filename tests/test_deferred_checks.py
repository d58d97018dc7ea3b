"""The eager GPU step reads nothing back before the loss: target checks that read
values (labels in range, BCE targets in [0, 1]) wait for ``model.read_loss``.

On the CPU they run in ``prepare_batch`` (no sync to save) and a bad batch changes
nothing; the deferred path itself is exercised here on the CPU through a batch
marked ``values_checked=False``, and for real on a GPU (skipped without one).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.model import Batch

from .helpers import to_numpy


def _model(device: str = "cpu", out: int = 3) -> gb.Sequential:
    return gb.Sequential([gb.Dense(4, 5, "tanh"), gb.Dense(5, out)], device=device, seed=0)


def test_cpu_batches_are_checked_at_once() -> None:
    model = _model()
    batch = model.prepare_batch(np.ones((2, 4)), np.array([0, 2]), "cross_entropy")
    assert batch.values_checked
    with pytest.raises(gb.LabelError, match="label 7"):
        model.prepare_batch(np.ones((2, 4)), np.array([0, 7]), "cross_entropy")


def test_deferred_labels_are_read_only_for_a_nan_loss() -> None:
    model = _model()
    loss = gb.losses.SoftmaxCrossEntropy()
    batch = Batch(np.ones((2, 4), np.float32), np.array([0, 7]), loss, values_checked=False)
    assert model.read_loss(batch, np.float32(0.5)) == 0.5  # finite: every label was valid
    with pytest.raises(gb.LabelError, match=r"label 7 is out of range for 3 classes"):
        model.read_loss(batch, np.float32(np.nan))
    good = Batch(batch.x, np.array([0, 2]), loss, values_checked=False)
    assert math.isnan(model.read_loss(good, np.float32(np.nan)))  # NaN from the logits


def test_deferred_bce_targets_are_checked_when_read() -> None:
    model = _model(out=1)
    loss = gb.losses.BCEWithLogits()
    x = np.ones((2, 4), np.float32)
    bad = Batch(x, np.array([[0.0], [1.5]], np.float32), loss, values_checked=False)
    with pytest.raises(gb.LabelError, match=r"\[0, 1\]"):
        model.read_loss(bad, np.float32(0.3))
    checked = Batch(x, bad.y, loss)  # values_checked: nothing is read again
    assert model.read_loss(checked, np.float32(0.3)) == pytest.approx(0.3)


def test_defer_has_no_effect_on_the_cpu() -> None:
    loss = gb.losses.SoftmaxCrossEntropy()
    with pytest.raises(gb.LabelError):
        loss.prepare_target(gb.get_backend("cpu"), (2, 3), np.dtype(np.float32),
                            np.array([0, 5]), defer_device_checks=True)


@pytest.mark.gpu
def test_gpu_train_step_reports_a_bad_label_after_the_step() -> None:
    """One sync per step: the label is found when the NaN loss is read; its gradient
    row was zero, so the parameters stay finite."""
    import cupy

    model = _model("cuda")
    x = cupy.ones((3, 4), dtype=cupy.float32)
    y = cupy.asarray(np.array([0, 9, 1]))
    batch = model.prepare_batch(x, y, "cross_entropy")
    assert not batch.values_checked
    value = model.step(batch, gb.optim.SGD(0.1))  # no error, no sync
    assert math.isnan(float(value))
    assert np.isfinite(to_numpy(model.flat_params)).all()
    with pytest.raises(gb.LabelError, match="label 9 is out of range for 3 classes"):
        model.train_step(x, y, "cross_entropy", gb.optim.SGD(0.1))
    assert np.isfinite(to_numpy(model.flat_params)).all()
    good = cupy.asarray(np.array([0, 2, 1]))
    assert math.isfinite(model.train_step(x, good, "cross_entropy", gb.optim.SGD(0.1)))


@pytest.mark.gpu
def test_gpu_bce_target_checked_on_read() -> None:
    import cupy

    model = _model("cuda", out=1)
    x = cupy.ones((2, 4), dtype=cupy.float32)
    with pytest.raises(gb.LabelError, match=r"\[0, 1\]"):
        model.train_step(x, cupy.asarray([[0.0], [2.0]]), "bce_with_logits", gb.optim.SGD(0.1))
