"""The LayerNorm and Dropout kernels against their NumPy twins, on odd sizes (GPU only).

Each kernel gets one element, less than a warp, more than a block and more than one
grid (the launches cap their grids at 4096 blocks); the dropout masks must equal the
CPU's bit for bit, and a replayed CUDA graph must draw a new mask at every replay.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import kernels_norm
from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.philox import keep_threshold

from .kernel_helpers import DTYPE_IDS, DTYPES

pytestmark = pytest.mark.gpu

#: (rows, cols): one element, under a warp, over a block, over a grid of row blocks
SHAPES = [(1, 1), (7, 13), (257, 1031), (40961, 33)]


@pytest.fixture(scope="module")
def cp() -> Any:
    return pytest.importorskip("cupy")


def _tolerance(dtype: Any) -> dict[str, float]:
    return {"rtol": 2e-5, "atol": 2e-5} if np.dtype(dtype) == np.float32 else {
        "rtol": 1e-12, "atol": 1e-12}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm_kernels_match_the_reference(
    cp: Any, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    rows, cols = shape
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = rng.standard_normal(cols).astype(dtype), rng.standard_normal(cols).astype(dtype)
    delta = rng.standard_normal(shape).astype(dtype)
    ref = NumpyOps()
    out, mean, rstd = np.empty_like(x), np.empty(rows, dtype), np.empty(rows, dtype)
    ref.layer_norm_forward(x, w, b, out, mean, rstd, eps=1e-5)
    dx, dw, db = np.empty_like(x), np.empty(cols, dtype), np.empty(cols, dtype)
    ref.layer_norm_backward(delta, x, w, mean, rstd, dx, dw, db)

    xd, wd, bd = cp.asarray(x), cp.asarray(w), cp.asarray(b)
    outd, meand, rstdd = cp.empty_like(xd), cp.empty(rows, dtype), cp.empty(rows, dtype)
    kernels_norm.layer_norm_forward(xd, wd, bd, outd, meand, rstdd, 1e-5)
    tol = _tolerance(dtype)
    np.testing.assert_allclose(outd.get(), out, **tol)
    np.testing.assert_allclose(meand.get(), mean, **tol)
    np.testing.assert_allclose(rstdd.get(), rstd, **tol)
    dxd, dwd, dbd = cp.empty_like(xd), cp.empty(cols, dtype), cp.empty(cols, dtype)
    deltad = cp.asarray(delta)
    kernels_norm.layer_norm_backward(deltad, xd, wd, meand, rstdd, dxd, dwd, dbd)
    np.testing.assert_allclose(dxd.get(), dx, **tol)
    scale = {"rtol": tol["rtol"], "atol": tol["atol"] * max(1.0, rows ** 0.5)}
    np.testing.assert_allclose(dwd.get(), dw, **scale)
    np.testing.assert_allclose(dbd.get(), db, **scale)
    # deterministic: the same bits again, and without dx the same parameter gradients
    dw2, db2 = cp.empty_like(dwd), cp.empty_like(dbd)
    kernels_norm.layer_norm_backward(deltad, xd, wd, meand, rstdd, None, dw2, db2)
    assert bool((dw2 == dwd).all()) and bool((db2 == dbd).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dropout_kernels_match_the_cpu_bit_for_bit(
    cp: Any, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    x = (rng.standard_normal(shape) + 5).astype(dtype)
    delta = rng.standard_normal(shape).astype(dtype)
    threshold, scale = keep_threshold(0.3), 1 / 0.7
    state = np.array([0xFEEDFACE12345678, 2**32 + 9, 0], dtype=np.uint64)
    ref = NumpyOps()
    out, mask = np.empty_like(x), np.empty(shape, np.uint8)
    ref.dropout_forward(x, out, mask, state.copy(), threshold=threshold, scale=scale)
    dx = ref.dropout_backward(delta, mask, np.empty_like(x), scale=scale)

    stated = cp.asarray(state)
    outd, maskd = cp.empty(shape, dtype), cp.empty(shape, np.uint8)
    kernels_norm.dropout_forward(
        cp.asarray(x), outd, maskd, stated, threshold=threshold, scale=scale
    )
    np.testing.assert_array_equal(maskd.get(), mask)
    np.testing.assert_array_equal(outd.get(), out)
    np.testing.assert_array_equal(stated.get(), [state[0], state[1] + 1, 0])
    dxd = kernels_norm.dropout_backward(cp.asarray(delta), maskd, cp.empty(shape, dtype),
                                        scale=scale)
    np.testing.assert_array_equal(dxd.get(), dx)


@pytest.mark.parametrize("offset", [1, 6, 4 * 2**32 - 3, 2**62 + 2])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (257, 1031)])
def test_dropout_kernel_from_a_counter_base_matches_the_cpu(
    cp: Any, shape: tuple[int, int], offset: int, rng: np.random.Generator
) -> None:
    """A 64-bit counter base (a data-parallel shard's first element in the global
    batch; past 2³² groups of four too): the kernel's mask = the reference's bit for bit."""
    x = (rng.standard_normal(shape) + 5).astype(np.float32)
    threshold, scale = keep_threshold(0.3), 1 / 0.7
    state = np.array([0xFEEDFACE12345678, 2**32 + 9, 0], dtype=np.uint64)
    out, mask = np.empty_like(x), np.empty(shape, np.uint8)
    NumpyOps().dropout_forward(
        x, out, mask, state.copy(), threshold=threshold, scale=scale, offset=offset
    )
    outd, maskd, stated = cp.empty(shape, np.float32), cp.empty(shape, np.uint8), cp.asarray(state)
    kernels_norm.dropout_forward(
        cp.asarray(x), outd, maskd, stated, threshold=threshold, scale=scale, offset=offset
    )
    np.testing.assert_array_equal(maskd.get(), mask)
    np.testing.assert_array_equal(outd.get(), out)
    np.testing.assert_array_equal(stated.get(), [state[0], state[1] + 1, 0])


def test_a_captured_shard_step_keeps_its_counter_base(cp: Any, rng: np.random.Generator) -> None:
    """model.row_offset at capture is the kernel's counter base at every replay: the
    replayed masks of rows 3:67 are the eager whole-batch masks of those rows."""
    x = rng.standard_normal((70, 6)).astype(np.float32)
    y = rng.integers(0, 3, 70)
    shard = _model("cuda")
    shard.row_offset = 3
    step = shard.compile_step("cross_entropy", gb.optim.SGD(lr=0.0))
    whole = _model("cuda")
    for _ in range(3):
        step(cp.asarray(x[3:67]), cp.asarray(y[3:67]))
        whole.train_step(x, y, "cross_entropy", gb.optim.SGD(lr=0.0))
        np.testing.assert_array_equal(
            cp.asnumpy(shard.layers[1].workspaces.get((64, 32), {})["mask"]),
            cp.asnumpy(whole.layers[1].workspaces.get((70, 32), {})["mask"])[3:67],
        )
    assert step.replays == 3


def _model(device: str) -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(6, 32, "relu"), gb.Dropout(0.5), gb.LayerNorm(32), gb.Dense(32, 3)],
        device=device, seed=4,
    )


def test_cpu_and_gpu_models_agree(cp: Any, rng: np.random.Generator) -> None:
    x, y = rng.standard_normal((64, 6)).astype(np.float32), rng.integers(0, 3, 64)
    cpu, gpu = _model("cpu"), _model("cuda")
    for _ in range(3):
        lc = cpu.train_step(x, y, "cross_entropy", gb.optim.SGD(lr=0.1))
        lg = gpu.train_step(x, y, "cross_entropy", gb.optim.SGD(lr=0.1))
        assert abs(lc - lg) < 1e-4
        np.testing.assert_array_equal(
            cp.asnumpy(gpu.layers[1].workspaces.get((64, 32), {})["mask"]),
            cpu.layers[1].workspaces.get((64, 32), {})["mask"],
        )
    assert gpu.generator_states() == cpu.generator_states()


def test_a_replayed_graph_draws_new_masks(cp: Any, rng: np.random.Generator) -> None:
    model = _model("cuda")
    step = model.compile_step("cross_entropy", gb.optim.SGD(lr=0.01))
    x = cp.asarray(rng.standard_normal((64, 6)).astype(np.float32))
    y = cp.asarray(rng.integers(0, 3, 64))
    masks = []
    for _ in range(3):
        step(x, y)
        masks.append(cp.asnumpy(model.layers[1].workspaces.get((64, 32), {})["mask"]))
    assert step.replays == 3
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    assert model.layers[1].generator_state()[1] == 3
    # the eager steps of the same seed draw the same masks
    eager = _model("cuda")
    for k in range(3):
        eager.train_step(x, y, "cross_entropy", gb.optim.SGD(lr=0.01))
        np.testing.assert_array_equal(
            cp.asnumpy(eager.layers[1].workspaces.get((64, 32), {})["mask"]), masks[k]
        )
