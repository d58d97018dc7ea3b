"""Same seed, same device: the same bits over a whole training run; CPU and GPU
runs of one seed follow the same loss curve within float32 tolerance."""

from __future__ import annotations

import numpy as np
import pytest

import gpubackprop as gb


def _run(device: str, seed: int = 7) -> tuple[np.ndarray, list[float]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + (x[:, 3] > 1)
    model = gb.Sequential([gb.Dense(6, 16, "gelu"), gb.Dense(16, 16, "tanh"),
                           gb.Dense(16, 3)], device=device, seed=seed)
    history = model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.Adam(1e-2),
                        epochs=4, batch_size=32, verbose=False)
    return model.backend.to_numpy(model.flat_params).copy(), history["loss"]


def test_same_seed_same_bits(device: str) -> None:
    params_a, loss_a = _run(device)
    params_b, loss_b = _run(device)
    assert params_a.tobytes() == params_b.tobytes()
    assert loss_a == loss_b


def test_another_seed_differs() -> None:
    assert _run("cpu", seed=7)[0].tobytes() != _run("cpu", seed=8)[0].tobytes()


@pytest.mark.gpu
def test_cpu_and_gpu_follow_the_same_loss_curve() -> None:
    params_cpu, loss_cpu = _run("cpu")
    params_gpu, loss_gpu = _run("cuda")
    np.testing.assert_allclose(loss_gpu, loss_cpu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params_gpu, params_cpu, rtol=1e-3, atol=1e-4)
