"""Tests of the fused CUDA kernels on a GPU (``@pytest.mark.gpu``: need CuPy and a
GPU, skipped cleanly elsewhere).

Every kernel against its NumPy twin in float32 and float64 on small odd shapes (one
element, less than a warp, more than a block), plus one case per kernel larger than
a grid (4097 × 2049, float32); loss values against exact (``math.fsum``) sums; edge
values; determinism over 10 runs; several optimizer steps, bit for bit, also with
subnormal values (CuPy compiles with -ftz=true) and replayed from a captured CUDA
graph; and the argument checks that need device arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from gpubackprop import kernels
from gpubackprop.activations import ACTIVATIONS
from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.errors import ConfigError, DeviceError, DTypeError, ShapeError
from gpubackprop.optim import SGD, AdamW

from .kernel_helpers import (
    ACT_NAMES,
    ADAM_CONFIGS,
    DTYPE_IDS,
    DTYPES,
    FINITE_EDGES,
    INF,
    OPT_STEPS,
    SGD_CONFIGS,
    assert_close,
    check_activation_values,
    opt_data,
    reference_activation,
)

gpu = pytest.mark.gpu
DTYPE_PAIRS = list(zip(DTYPES, DTYPE_IDS, strict=True))  # (dtype, id)

#: small odd shapes: one element, less than a warp, more than a block
SMALL_SHAPES = [(1, 1), (7, 13), (257, 1031)]
#: more than one grid of every launch (8.4 M elements; the grids cap at 8 blocks of 256
#: threads per SM): each kernel gets this once, in float32, to prove grid coverage
BIG = (4097, 2049)


def shape_cases(small: list[tuple[int, int]] = SMALL_SHAPES) -> list[Any]:
    """(shape, dtype) params: every small shape in both dtypes, then BIG in float32."""
    cases = [pytest.param(s, d, id=f"{s}-{i}") for s in small for d, i in DTYPE_PAIRS]
    return [*cases, pytest.param(BIG, np.float32, id=f"{BIG}-float32")]


def activation_cases(big_activation: str) -> list[Any]:
    """(name, shape, dtype) params: every activation on every small case, and
    ``big_activation`` alone on BIG in float32."""
    cases = [
        pytest.param(name, s, d, id=f"{name}-{s}-{i}")
        for name in ACT_NAMES
        for s in SMALL_SHAPES
        for d, i in DTYPE_PAIRS
    ]
    return [*cases, pytest.param(big_activation, BIG, np.float32, id=f"{big_activation}-{BIG}")]


@pytest.fixture(scope="module")
def cp() -> Any:
    return pytest.importorskip("cupy")


def _sum_close(got: Any, ref64: Any, magnitude: Any, dtype: Any) -> None:
    """A sum against its exact value, within rounding of the summed magnitudes."""
    rel = 2e-5 if np.dtype(dtype) == np.float32 else 1e-13
    err = np.abs(np.asarray(got, dtype=np.float64) - ref64)
    bound = rel * np.asarray(magnitude) + np.finfo(dtype).tiny
    assert (err <= bound).all(), f"max error {err.max()} vs bound {bound.ravel()[err.argmax()]}"


def _assert_loss_value(value: Any, terms64: np.ndarray, scale: float, dtype: Any) -> None:
    """A loss value = scale · Σ terms against the exact sum (math.fsum) of the float64
    terms: a float32 reference (numpy.dot or .sum over millions of terms) is itself
    off by more than the tolerance."""
    terms = np.asarray(terms64, dtype=np.float64).ravel()
    exact = scale * math.fsum(terms.tolist())
    magnitude = abs(scale) * float(np.abs(terms).sum())  # only scales the tolerance
    _sum_close(value, exact, magnitude, dtype)


@gpu
@pytest.mark.parametrize("name,shape,dtype", activation_cases("gelu"))
def test_bias_act_forward(
    cp: Any, name: str, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    z_ref = z + b
    a_ref, _ = reference_activation(name, z_ref)
    zd, out = cp.asarray(z), cp.empty(shape, dtype)
    assert kernels.bias_act_forward(name, zd, cp.asarray(b), out) is out
    np.testing.assert_array_equal(zd.get(), z_ref)  # z + b: one IEEE add either way
    assert_close(out.get(), a_ref, dtype, name, activation=True)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ACT_NAMES)
def test_bias_act_forward_in_place_and_without_bias(
    cp: Any, name: str, dtype: Any, rng: np.random.Generator
) -> None:
    z = (rng.standard_normal((257, 1031)) * 3).astype(dtype)
    b = rng.standard_normal(1031).astype(dtype)
    a_ref, _ = reference_activation(name, z + b)
    zd = cp.asarray(z)
    kernels.bias_act_forward(name, zd, cp.asarray(b), zd)  # out is z
    assert_close(zd.get(), a_ref, dtype, f"{name} in place", activation=True)
    a_ref, _ = reference_activation(name, z)
    zd, out = cp.asarray(z), cp.empty_like(cp.asarray(z))
    kernels.bias_act_forward(name, zd, None, out)
    np.testing.assert_array_equal(zd.get(), z)  # no bias: z untouched
    assert_close(out.get(), a_ref, dtype, f"{name} without bias", activation=True)


def _backward_case(
    name: str, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """delta, saved (a or z) and the reference delta ⊙ f′."""
    act = ACTIVATIONS[name]
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    delta = rng.standard_normal(shape).astype(dtype)
    a, _ = reference_activation(name, z)
    saved = z if act.needs_input else a
    dz_ref = act.backward(np, delta, saved, np.empty_like(z))
    return delta, saved, dz_ref


@gpu
@pytest.mark.parametrize("name,shape,dtype", activation_cases("tanh"))
def test_act_backward(
    cp: Any, name: str, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    delta, saved, dz_ref = _backward_case(name, shape, dtype, rng)
    dz = cp.empty(shape, dtype)
    kernels.act_backward(name, cp.asarray(delta), cp.asarray(saved), dz)
    assert_close(dz.get(), dz_ref, dtype, name, activation=True)


@gpu
@pytest.mark.parametrize("name,shape,dtype", activation_cases("sigmoid"))
def test_act_backward_colsum(
    cp: Any, name: str, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    delta, saved, dz_ref = _backward_case(name, shape, dtype, rng)
    dz, db = cp.empty(shape, dtype), cp.empty(shape[1], dtype)
    kernels.act_backward_colsum(name, cp.asarray(delta), cp.asarray(saved), dz, db)
    assert_close(dz.get(), dz_ref, dtype, name, activation=True)
    ref64 = dz_ref.astype(np.float64)
    _sum_close(db.get(), ref64.sum(axis=0), np.abs(ref64).sum(axis=0), dtype)


@gpu
@pytest.mark.parametrize("shape,dtype", shape_cases([*SMALL_SHAPES, (0, 5), (3, 0)]))
def test_identity_colsum_and_column_sum(
    cp: Any, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    x = rng.standard_normal(shape).astype(dtype)
    ref64 = x.astype(np.float64)
    xd = cp.asarray(x)
    db = cp.full(shape[1], np.nan, dtype)
    kernels.act_backward_colsum("identity", xd, None, None, db)  # dz not written
    _sum_close(db.get(), ref64.sum(axis=0), np.abs(ref64).sum(axis=0), dtype)
    out = cp.full(shape[1], np.nan, dtype)
    kernels.column_sum(xd, out)
    np.testing.assert_array_equal(out.get(), db.get())  # the same order, the same bits
    dz = cp.empty(shape, dtype)
    kernels.act_backward_colsum(None, xd, None, dz, db)  # identity with dz: a copy
    np.testing.assert_array_equal(dz.get(), x)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ACT_NAMES)
def test_activation_edge_values(cp: Any, name: str, dtype: Any) -> None:
    z = np.array([[*FINITE_EDGES, -INF, INF]], dtype=dtype)
    act = ACTIVATIONS[name]
    zd = cp.asarray(z)
    a = cp.empty_like(zd)
    kernels.bias_act_forward(name, zd, None, a)
    dz = cp.empty_like(zd)
    kernels.act_backward(name, cp.ones_like(zd), zd if act.needs_input else a, dz)
    check_activation_values(name, dtype, z.ravel(), a.get().ravel(), dz.get().ravel())
    db = cp.empty(z.shape[1], dtype)
    kernels.act_backward_colsum(name, cp.ones_like(zd), zd if act.needs_input else a, None, db)
    np.testing.assert_array_equal(db.get(), dz.get().ravel())


@gpu
def test_column_reductions_are_deterministic(cp: Any, rng: np.random.Generator) -> None:
    shape = BIG
    delta = cp.asarray(rng.standard_normal(shape).astype(np.float32))
    a = cp.asarray(rng.uniform(0, 1, shape).astype(np.float32))
    dz, db, out, total = (
        cp.empty(shape, np.float32),
        cp.empty(shape[1], np.float32),
        cp.empty(shape[1], np.float32),
        cp.empty((), np.float32),
    )
    runs = []
    for _ in range(10):
        kernels.act_backward_colsum("sigmoid", delta, a, dz, db)
        kernels.column_sum(delta, out)
        kernels.sum_reduce(delta, total)
        runs.append((db.get().tobytes(), dz.get().tobytes(), out.get().tobytes(), total.get()))
    assert all(r[0] == runs[0][0] and r[1] == runs[0][1] for r in runs)
    assert all(r[2] == runs[0][2] for r in runs)
    assert all(r[3].tobytes() == runs[0][3].tobytes() for r in runs)


#: one pass (up to 65536), two passes above
SUM_SIZES = [0, 1, 7, 1000, 65536, 65537]


@gpu
@pytest.mark.parametrize(
    "n,dtype",
    [
        *(pytest.param(n, d, id=f"{n}-{i}") for n in SUM_SIZES for d, i in DTYPE_PAIRS),
        pytest.param(math.prod(BIG), np.float32, id=f"{math.prod(BIG)}-float32"),
    ],
)
def test_sum_reduce(cp: Any, n: int, dtype: Any, rng: np.random.Generator) -> None:
    x = rng.standard_normal(n).astype(dtype)
    out = cp.empty((1,), dtype)
    kernels.sum_reduce(cp.asarray(x), out, scale=0.5)
    _assert_loss_value(out.get(), x, 0.5, dtype)
    workspace = cp.empty(max(kernels.sum_reduce_workspace_size(n), 1), dtype)
    again = cp.empty((), dtype)
    kernels.sum_reduce(cp.asarray(x), again, scale=0.5, workspace=workspace)
    assert again.get().tobytes() == out.get()[0].tobytes()


#: softmax: one warp per row, so more rows than one grid of warps (16 blocks of 8 per
#: SM: 16896 rows on 132 SMs) is what covers the grid; cheap at 3 columns
LOSS_SHAPES = [*SMALL_SHAPES, (20000, 3)]


def _check_softmax_xent(
    cp: Any, kernel: Any, logits: np.ndarray, target: np.ndarray, grad_ref: np.ndarray
) -> None:
    """Run one softmax cross-entropy kernel; check grad against the NumPy reference's,
    and row_loss and value against float64 (t = the one-hot rows for labels)."""
    rows, dtype = logits.shape[0], logits.dtype
    z64 = logits.astype(np.float64)
    if target.ndim == 1:  # labels
        t64 = np.zeros_like(z64)
        t64[np.arange(rows), target] = 1.0
    else:
        t64 = target.astype(np.float64)
    shifted = z64 - z64.max(1, keepdims=True)
    row_ref = (t64 * (np.log(np.exp(shifted).sum(1, keepdims=True)) - shifted)).sum(1)
    grad, row_loss, value = (
        cp.empty(logits.shape, dtype),
        cp.empty(rows, dtype),
        cp.empty((), dtype),
    )
    kernel(cp.asarray(logits), cp.asarray(target), grad, row_loss, value)
    assert_close(grad.get(), grad_ref, dtype, "grad")
    assert_close(row_loss.get(), row_ref, dtype, "row_loss")
    _assert_loss_value(value.get(), row_ref, 1.0 / rows, dtype)


@gpu
@pytest.mark.parametrize("shape,dtype", shape_cases(LOSS_SHAPES))
def test_softmax_xent_labels(
    cp: Any, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    rows, cols = shape
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    labels = rng.integers(0, cols, size=rows)
    grad_ref = np.empty_like(logits)
    NumpyOps().softmax_cross_entropy_labels(logits, labels, grad_ref)
    _check_softmax_xent(cp, kernels.softmax_xent_labels, logits, labels, grad_ref)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softmax_xent_labels_edge_logits(cp: Any, dtype: Any) -> None:
    logits = np.array(
        [[1e4, -1e4, 0.0], [-INF, 0.0, 1.0], [89.0, -89.0, 0.0], [20.0, 20.0, -20.0]], dtype
    )
    labels = np.array([1, 2, 0, 2])
    grad_ref = np.empty_like(logits)
    with np.errstate(all="ignore"):
        value_ref = NumpyOps().softmax_cross_entropy_labels(logits, labels, grad_ref)
    grad, row_loss, value = (
        cp.empty_like(cp.asarray(logits)),
        cp.empty(4, dtype),
        cp.empty((), dtype),
    )
    kernels.softmax_xent_labels(cp.asarray(logits), cp.asarray(labels), grad, row_loss, value)
    assert np.isfinite(grad.get()).all() and np.isfinite(row_loss.get()).all()
    assert_close(grad.get(), grad_ref, dtype, "grad")
    assert_close(value.get(), value_ref, dtype, "value")
    # a label outside [0, C) flags its row (NaN loss, zero gradient), not the memory
    # around it; the value is NaN
    bad = cp.asarray(np.array([3, 0, -1, 1]))
    kernels.softmax_xent_labels(cp.asarray(logits), bad, grad, row_loss, value)
    rl = row_loss.get()
    assert np.isnan(rl[[0, 2]]).all() and np.isfinite(rl[[1, 3]]).all()
    assert (grad.get()[[0, 2]] == 0).all() and np.isfinite(grad.get()).all()
    assert np.isnan(float(value))


@gpu
@pytest.mark.parametrize("shape,dtype", shape_cases(LOSS_SHAPES))
def test_softmax_xent_probs(
    cp: Any, shape: tuple[int, int], dtype: Any, rng: np.random.Generator
) -> None:
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    probs = rng.uniform(0, 1, shape)
    probs[rng.uniform(0, 1, shape) < 0.3] = 0.0
    probs = (probs / np.maximum(probs.sum(1, keepdims=True), 1e-3)).astype(dtype)
    grad_ref = np.empty_like(logits)
    NumpyOps().softmax_cross_entropy_probs(logits, probs, grad_ref)
    _check_softmax_xent(cp, kernels.softmax_xent_probs, logits, probs, grad_ref)


@gpu
@pytest.mark.parametrize(
    "shape,dtype,mean",
    [
        pytest.param(*case.values, mean, id=f"{case.id}-{'mean' if mean else 'sum'}")
        for case in shape_cases()
        for mean in (True, False)
        if mean or case.values[0] != BIG  # the large case once
    ],
)
def test_mse_grad(
    cp: Any, shape: tuple[int, int], mean: bool, dtype: Any, rng: np.random.Generator
) -> None:
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    grad_ref = np.empty_like(pred)
    NumpyOps().mse(pred, target, grad_ref, mean=mean)
    scale = 1.0 / pred.size if mean else 1.0
    grad, sq, value = cp.empty(shape, dtype), cp.empty(shape, dtype), cp.empty((), dtype)
    kernels.mse_grad(cp.asarray(pred), cp.asarray(target), grad, sq, scale=scale, value=value)
    np.testing.assert_array_equal(grad.get(), grad_ref)  # (p − y)·2s: the same two roundings
    _assert_loss_value(value.get(), (pred.astype(np.float64) - target) ** 2, scale, dtype)


@gpu
@pytest.mark.parametrize("shape,dtype", shape_cases())
def test_bce_logits(cp: Any, shape: tuple[int, int], dtype: Any, rng: np.random.Generator) -> None:
    z = (rng.standard_normal(shape) * 5).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)
    grad_ref = np.empty_like(z)
    NumpyOps().bce_with_logits(z, y, grad_ref)
    z64, y64 = z.astype(np.float64), y.astype(np.float64)
    elem_ref = np.maximum(z64, 0) - z64 * y64 + np.log1p(np.exp(-np.abs(z64)))
    grad, elem, value = cp.empty(shape, dtype), cp.empty(shape, dtype), cp.empty((), dtype)
    kernels.bce_logits(cp.asarray(z), cp.asarray(y), grad, elem, value)
    assert_close(grad.get(), grad_ref, dtype, "grad")
    assert_close(elem.get(), elem_ref, dtype, "elem_loss")
    _assert_loss_value(value.get(), elem_ref, 1.0 / z.size, dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bce_logits_edge_values(cp: Any, dtype: Any) -> None:
    z = np.array([*FINITE_EDGES, INF, -INF, INF, -INF], dtype)
    y = np.zeros_like(z)
    y[1::2] = 1.0
    y[-4:] = [1.0, 0.0, 0.0, 1.0]
    grad, elem = cp.empty_like(cp.asarray(z)), cp.empty_like(cp.asarray(z))
    kernels.bce_logits(cp.asarray(z), cp.asarray(y), grad, elem)
    loss = elem.get()
    k = len(FINITE_EDGES)
    assert np.isfinite(loss[:k]).all() and np.isfinite(grad.get()).all()
    grad_ref = np.empty_like(z[:k])
    NumpyOps().bce_with_logits(z[:k], y[:k], grad_ref)
    assert_close(grad.get()[:k] * (z.size / k), grad_ref, dtype, "grad")  # 1/N vs 1/k
    np.testing.assert_array_equal(loss[k:], [0.0, 0.0, INF, INF])


def optimizer_cases(configs: list[Any], big: int) -> list[Any]:
    """(config, n, dtype) params: every config in both dtypes on a small odd size,
    and ``configs[big]`` alone on BIG (more than one grid) in float32."""

    def name(config: Any) -> str:  # "{...}" or "AdamW{...}"
        return f"{config[0].__name__}{config[1]}" if isinstance(config, tuple) else str(config)

    small, n_big = math.prod(SMALL_SHAPES[-1]), math.prod(BIG)
    cases = [
        pytest.param(c, small, d, id=f"{name(c)}-{small}-{i}")
        for c in configs
        for d, i in DTYPE_PAIRS
    ]
    big_case = pytest.param(configs[big], n_big, np.float32, id=f"{name(configs[big])}-{n_big}")
    return [*cases, big_case]


@gpu
@pytest.mark.parametrize("config,n,dtype", optimizer_cases(SGD_CONFIGS, big=3))
def test_sgd_step_matches_optim_bit_for_bit(
    cp: Any, config: dict[str, Any], n: int, dtype: Any, rng: np.random.Generator
) -> None:
    params, grads = opt_data(n, dtype, rng)
    lrs = [0.05, 0.05, 0.02, 0.02, 0.01, 0.01]  # a schedule, through the device lr
    opt, p_ref = SGD(lr=lrs[0], **config), params.copy()
    p, lr, state = cp.asarray(params), cp.empty(1, dtype), cp.zeros(2, np.int32)
    buf = cp.empty(n, dtype) if config.get("momentum", 0.0) else None
    hyper = {k: v for k, v in config.items()}
    for step, g in enumerate(grads):
        opt.lr = lrs[step]
        opt.step(p_ref, g)
        lr.fill(lrs[step])
        kernels.sgd_step(p, cp.asarray(g), buf, lr, state, **hyper)
    np.testing.assert_array_equal(p.get(), p_ref)
    if buf is not None:
        np.testing.assert_array_equal(buf.get(), opt.state_dict()["state"]["momentum_buffer"])
    np.testing.assert_array_equal(state.get(), [OPT_STEPS, 0])


@gpu
@pytest.mark.parametrize("case,n,dtype", optimizer_cases(ADAM_CONFIGS, big=2))
def test_adam_matches_optim(
    cp: Any, case: tuple[type, dict[str, Any]], n: int, dtype: Any, rng: np.random.Generator
) -> None:
    cls, config = case
    params, grads = opt_data(n, dtype, rng)
    opt, p_ref = cls(lr=1e-3, **config), params.copy()
    p, m, v = cp.asarray(params), cp.zeros(n, dtype), cp.zeros(n, dtype)
    lr, state, scalars = cp.full(1, 1e-3, dtype), cp.zeros(2, np.int32), cp.empty(3, dtype)
    beta1, beta2 = config.get("betas", (0.9, 0.999))
    for g in grads:
        opt.step(p_ref, g)
        kernels.adam_update(
            p, cp.asarray(g), m, v, lr, state, scalars,
            betas=(beta1, beta2), eps=config.get("eps", 1e-8),
            weight_decay=config["weight_decay"], decoupled=cls is AdamW,
        )  # fmt: skip
    ref_state = opt.state_dict()["state"]
    rtol = 1e-6 if np.dtype(dtype) == np.float32 else 1e-14
    np.testing.assert_allclose(p.get(), p_ref, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(m.get(), ref_state["exp_avg"], rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(v.get(), ref_state["exp_avg_sq"], rtol=rtol, atol=rtol * 1e-4)
    assert int(state.get()[0]) == OPT_STEPS


def _subnormal_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 params and one gradient, a third of each subnormal (below 2^-126)."""
    tiny = np.finfo(np.float32).tiny
    params = rng.standard_normal(n).astype(np.float32)
    grad = rng.standard_normal(n).astype(np.float32)
    for x in (params, grad):
        sub = rng.uniform(0, 1, n) < 1 / 3
        x[sub] = (rng.uniform(-1, 1, sub.sum()) * tiny).astype(np.float32)
    assert (np.abs(params[params != 0]) < tiny).any()
    return params, grad


@gpu
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_sgd_step_keeps_subnormals_bit_for_bit(
    cp: Any, config: dict[str, Any], rng: np.random.Generator
) -> None:
    """CuPy compiles with -ftz=true; the SGD kernel must still give NumPy's bits where
    values are subnormal: subnormal params and gradients, then a dead unit (zero
    gradients) whose momentum buffer decays through the subnormal range."""
    n, steps, lr = 4099, 900, 2.0**-7
    params, grad = _subnormal_data(n, rng)
    opt, p_ref = SGD(lr=lr, **config), params.copy()
    p, g = cp.asarray(params), cp.asarray(grad)
    lr_d, state = cp.full(1, lr, np.float32), cp.zeros(2, np.int32)
    buf = cp.empty(n, np.float32) if config.get("momentum", 0.0) else None
    zero, dead = np.zeros(n, np.float32), cp.zeros(n, np.float32)
    for step in range(steps):
        opt.step(p_ref, grad if step == 0 else zero)
        kernels.sgd_step(p, g if step == 0 else dead, buf, lr_d, state, **config)
    np.testing.assert_array_equal(p.get(), p_ref)
    if buf is not None:
        ref_buf = opt.state_dict()["state"]["momentum_buffer"]
        np.testing.assert_array_equal(buf.get(), ref_buf)


@gpu
@pytest.mark.parametrize("cls,config", ADAM_CONFIGS, ids=lambda x: str(x))
def test_adam_keeps_subnormals_bit_for_bit(
    cp: Any, cls: type, config: dict[str, Any], rng: np.random.Generator
) -> None:
    """As above for Adam/AdamW: exp_avg of a dead unit reaches the subnormal range
    after ~800 steps; with an lr exact in float32 the bits must match NumPy's."""
    n, steps, lr = 4099, 900, 2.0**-7
    params, grad = _subnormal_data(n, rng)
    opt, p_ref = cls(lr=lr, **config), params.copy()
    p, g = cp.asarray(params), cp.asarray(grad)
    m, v = cp.zeros(n, np.float32), cp.zeros(n, np.float32)
    lr_d, state, scalars = (
        cp.full(1, lr, np.float32),
        cp.zeros(2, np.int32),
        cp.empty(3, np.float32),
    )
    zero, dead = np.zeros(n, np.float32), cp.zeros(n, np.float32)
    for step in range(steps):
        opt.step(p_ref, grad if step == 0 else zero)
        kernels.adam_update(
            p, g if step == 0 else dead, m, v, lr_d, state, scalars,
            betas=config.get("betas", (0.9, 0.999)), eps=config.get("eps", 1e-8),
            weight_decay=config["weight_decay"], decoupled=cls is AdamW,
        )  # fmt: skip
    ref_state = opt.state_dict()["state"]
    np.testing.assert_array_equal(m.get(), ref_state["exp_avg"])
    np.testing.assert_array_equal(v.get(), ref_state["exp_avg_sq"])
    np.testing.assert_array_equal(p.get(), p_ref)


@gpu
def test_optimizer_steps_replay_from_a_cuda_graph(cp: Any, rng: np.random.Generator) -> None:
    """SGD (momentum) and AdamW captured once, replayed with a changing device lr."""
    n, dtype = 10007, np.float32
    params, grads = opt_data(n, dtype, rng)
    g = cp.empty(n, dtype)
    lrs = [0.1, 0.05, 0.025, 0.0125, 0.01, 0.01]
    sgd_ref, p_sgd_ref = SGD(lr=lrs[0], momentum=0.9), params.copy()
    adam_ref, p_adam_ref = AdamW(lr=lrs[0], weight_decay=0.1), params.copy()
    p_sgd, buf = cp.asarray(params), cp.empty(n, dtype)
    p_adam, m, v = cp.asarray(params), cp.zeros(n, dtype), cp.zeros(n, dtype)
    lr, s_sgd, s_adam = cp.empty(1, dtype), cp.zeros(2, np.int32), cp.zeros(2, np.int32)
    scalars = cp.empty(3, dtype)

    def step() -> None:
        kernels.sgd_step(p_sgd, g, buf, lr, s_sgd, momentum=0.9)
        kernels.adam_update(
            p_adam, g, m, v, lr, s_adam, scalars, betas=(0.9, 0.999), eps=1e-8,
            weight_decay=0.1, decoupled=True,
        )  # fmt: skip

    # compile and load outside the capture (no compilation may happen inside it)
    for name in ("sgd_step", "adam_prepare", "adam_step"):
        kernels.get_kernel(name, dtype).kernel  # noqa: B018 - the property loads it
    kernels.mse_grad(g, g, cp.empty_like(g), None, scale=1.0)  # warms the grid helper
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        step()
        graph = stream.end_capture()
    for k, grad in enumerate(grads):
        sgd_ref.lr = adam_ref.lr = lrs[k]
        sgd_ref.step(p_sgd_ref, grad)
        adam_ref.step(p_adam_ref, grad)
        with stream:
            g.set(grad, stream=stream)
            lr.fill(lrs[k])
            graph.launch(stream)
        stream.synchronize()
    np.testing.assert_array_equal(p_sgd.get(), p_sgd_ref)
    np.testing.assert_allclose(p_adam.get(), p_adam_ref, rtol=1e-6, atol=1e-8)
    assert int(s_sgd.get()[0]) == int(s_adam.get()[0]) == OPT_STEPS


@gpu
def test_argument_checks_raise_package_errors(cp: Any) -> None:
    z = cp.zeros((4, 3), np.float32)
    with pytest.raises(DTypeError, match=r"bias_act_forward: bias is float64 but z is float32"):
        kernels.bias_act_forward("relu", z, cp.zeros(3, np.float64), z)
    with pytest.raises(DTypeError, match=r"z must be float32 or float64, got int32"):
        kernels.bias_act_forward("relu", z.astype(np.int32), None, z)
    with pytest.raises(ShapeError, match=r"bias must have shape \(3,\)"):
        kernels.bias_act_forward("relu", z, cp.zeros(4, np.float32), z)
    with pytest.raises(ShapeError, match="must be C-contiguous"):
        kernels.act_backward("tanh", z.T, z.T.copy(), cp.empty((3, 4), np.float32))
    with pytest.raises(ShapeError, match="z must be 2-D"):
        kernels.bias_act_forward("relu", z.ravel(), None, z.ravel())
    with pytest.raises(DeviceError, match="saved is a numpy array"):
        kernels.act_backward("tanh", z, np.zeros((4, 3), np.float32), cp.empty_like(z))
    with pytest.raises(ConfigError, match=r"(dz and delta|delta and dz) share memory"):
        kernels.act_backward_colsum("tanh", z, z.copy(), z, cp.empty(3, np.float32))
    with pytest.raises(ConfigError, match="needs saved"):
        kernels.act_backward("gelu", z, None, cp.empty_like(z))
    with pytest.raises(ConfigError, match="unknown activation"):
        kernels.act_backward("swish", z, z.copy(), cp.empty_like(z))
    logits = cp.zeros((4, 3), np.float32)
    with pytest.raises(DTypeError, match="labels must be int64"):
        kernels.softmax_xent_labels(
            logits, cp.zeros(4, np.int32), cp.empty_like(logits), cp.empty(4, np.float32)
        )
    with pytest.raises(ShapeError, match="value must have one element"):
        kernels.mse_grad(z, z, cp.empty_like(z), cp.empty_like(z), scale=1.0, value=z)
    p = cp.zeros(5, np.float32)
    with pytest.raises(ConfigError, match="needs a momentum_buffer"):
        kernels.sgd_step(p, p.copy(), None, cp.ones(1, np.float32), cp.zeros(2, np.int32),
                         momentum=0.9)  # fmt: skip
    with pytest.raises(DTypeError, match="step_state must be int32"):
        kernels.sgd_step(p, p.copy(), None, cp.ones(1, np.float32), cp.zeros(2, np.int64))
    with pytest.raises(ShapeError, match="lr must have one element"):
        kernels.sgd_step(p, p.copy(), None, cp.ones(2, np.float32), cp.zeros(2, np.int32))
    with pytest.raises(DTypeError, match="lr is float64 but params is float32"):
        kernels.sgd_step(p, p.copy(), None, cp.ones(1, np.float64), cp.zeros(2, np.int32))
    with pytest.raises(ShapeError, match="scalars must have shape"):
        kernels.adam_step(p, p.copy(), p.copy(), p.copy(), cp.zeros(2, np.float32),
                          betas=(0.9, 0.999), eps=1e-8)  # fmt: skip


@gpu
def test_arrays_on_two_devices_raise(cp: Any) -> None:
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cp.cuda.Device(0):
        z = cp.zeros((4, 3), np.float32)
    with cp.cuda.Device(1):
        out = cp.zeros((4, 3), np.float32)
    with pytest.raises(DeviceError, match=r"out is on cuda:1 but z is on cuda:0"):
        kernels.bias_act_forward("relu", z, None, out)
