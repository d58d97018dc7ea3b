"""Tests of gpubackprop.optim: update rules, schedules, validation, no per-step allocation.

References are written out here in plain NumPy (textbook formulas, independent of the
module), and checked against torch.optim where torch is installed.
"""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.errors import ConfigError, DeviceError, DTypeError, ShapeError
from gpubackprop.optim import (
    SGD,
    Adam,
    AdamW,
    CosineAnnealingLR,
    LinearWarmup,
    LRSchedule,
    Optimizer,
    StepLR,
)

STEPS = 6


def _data(n: int, dtype: type = np.float64, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Random initial params and one fresh gradient per step."""
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(STEPS)]
    return params, grads


def _run(opt: Optimizer, params: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    p = params.copy()
    for g in grads:
        opt.step(p, g)
    return p


# --- plain-NumPy references ----------------------------------------------------------
def ref_sgd(
    params: np.ndarray,
    grads: list[np.ndarray],
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> np.ndarray:
    p = params.astype(np.float64)
    buf = None
    for grad in grads:
        g = grad.astype(np.float64) + weight_decay * p
        if momentum != 0:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def ref_adam(
    params: np.ndarray,
    grads: list[np.ndarray],
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = False,
) -> np.ndarray:
    beta1, beta2 = betas
    p = params.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, grad in enumerate(grads, start=1):
        g = grad.astype(np.float64)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


CASES: dict[str, tuple[Callable[[], Optimizer], Callable[..., np.ndarray]]] = {
    "sgd": (lambda: SGD(lr=0.1), lambda p, g: ref_sgd(p, g, 0.1)),
    "sgd_momentum": (
        lambda: SGD(lr=0.1, momentum=0.9),
        lambda p, g: ref_sgd(p, g, 0.1, momentum=0.9),
    ),
    "sgd_dampening": (
        lambda: SGD(lr=0.1, momentum=0.9, dampening=0.3),
        lambda p, g: ref_sgd(p, g, 0.1, momentum=0.9, dampening=0.3),
    ),
    "sgd_nesterov": (
        lambda: SGD(lr=0.1, momentum=0.8, nesterov=True),
        lambda p, g: ref_sgd(p, g, 0.1, momentum=0.8, nesterov=True),
    ),
    "sgd_weight_decay": (
        lambda: SGD(lr=0.1, weight_decay=0.05),
        lambda p, g: ref_sgd(p, g, 0.1, weight_decay=0.05),
    ),
    "sgd_all": (
        lambda: SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
        lambda p, g: ref_sgd(p, g, 0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    ),
    "sgd_momentum_dampening_wd": (
        lambda: SGD(lr=0.05, momentum=0.5, dampening=0.5, weight_decay=0.1),
        lambda p, g: ref_sgd(p, g, 0.05, momentum=0.5, dampening=0.5, weight_decay=0.1),
    ),
    "adam": (lambda: Adam(lr=0.01), lambda p, g: ref_adam(p, g, lr=0.01)),
    "adam_wd": (
        lambda: Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        lambda p, g: ref_adam(p, g, 0.01, (0.8, 0.99), 1e-6, weight_decay=0.1),
    ),
    "adamw": (
        lambda: AdamW(lr=0.01, weight_decay=0.1),
        lambda p, g: ref_adam(p, g, lr=0.01, weight_decay=0.1, decoupled=True),
    ),
    "adamw_defaults": (
        lambda: AdamW(),
        lambda p, g: ref_adam(p, g, weight_decay=1e-2, decoupled=True),
    ),
}


@pytest.mark.parametrize("n", [37, 1001])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_numpy_reference_float64(case: str, n: int) -> None:
    make, ref = CASES[case]
    params, grads = _data(n, seed=n)
    out = _run(make(), params, grads)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref(params, grads), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_numpy_reference_float32(case: str) -> None:
    make, ref = CASES[case]
    params, grads = _data(1001, np.float32, seed=3)
    out = _run(make(), params, grads)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref(params, grads), rtol=2e-5, atol=2e-6)


def test_step_count_and_lr_change_between_steps() -> None:
    params, grads = _data(37)
    opt = SGD(lr=0.1)
    p = params.copy()
    opt.step(p, grads[0])
    opt.lr = 0.02
    opt.step(p, grads[1])
    assert opt.step_count == 2
    np.testing.assert_allclose(p, params - 0.1 * grads[0] - 0.02 * grads[1], rtol=1e-14)


# --- torch.optim -------------------------------------------------------------------------
TORCH_CASES = {
    "sgd_nesterov_wd": (
        lambda: SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda torch, p: torch.optim.SGD(
            [p], lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, foreach=False
        ),
    ),
    "sgd_momentum_dampening": (
        lambda: SGD(lr=0.05, momentum=0.9, dampening=0.2),
        lambda torch, p: torch.optim.SGD([p], lr=0.05, momentum=0.9, dampening=0.2, foreach=False),
    ),
    "adam_wd": (
        lambda: Adam(lr=0.01, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.1),
        lambda torch, p: torch.optim.Adam(
            [p], lr=0.01, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.1, foreach=False
        ),
    ),
    "adamw": (
        lambda: AdamW(lr=0.01, weight_decay=0.1),
        lambda torch, p: torch.optim.AdamW([p], lr=0.01, weight_decay=0.1, foreach=False),
    ),
}


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_matches_torch_optim(case: str, dtype: type, rtol: float) -> None:
    torch = pytest.importorskip("torch")
    make, make_torch = TORCH_CASES[case]
    params, grads = _data(1001, dtype, seed=7)
    tp = torch.tensor(params.copy(), requires_grad=True)
    topt = make_torch(torch, tp)
    for g in grads[:5]:
        tp.grad = torch.tensor(g)
        topt.step()
    out = _run(make(), params, grads[:5])
    np.testing.assert_allclose(out, tp.detach().numpy(), rtol=rtol, atol=rtol / 10)


# --- schedules -----------------------------------------------------------------------------
def _lrs(sched: LRSchedule, n: int) -> list[float]:
    """The lr applied at counts 0..n-1 (also checks the optimizer received it)."""
    out = []
    for _ in range(n):
        assert sched.optimizer.lr == sched.last_lr
        out.append(sched.last_lr)
        sched.step()
    return out


def test_step_lr_closed_form() -> None:
    opt = SGD(lr=0.3)
    got = _lrs(StepLR(opt, step_size=3, gamma=0.5), 12)
    assert got == pytest.approx([0.3 * 0.5 ** (t // 3) for t in range(12)], rel=1e-15)


def test_cosine_closed_form_and_held_after_t_max() -> None:
    opt = Adam(lr=0.2)
    sched = CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
    want = [0.01 + 0.19 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(11)]
    assert _lrs(sched, 16) == pytest.approx(want + [0.01] * 5, rel=1e-15)
    assert sched.get_lr(3) == pytest.approx(want[3], rel=1e-15)  # pure in t
    assert sched.count == 16


def test_linear_warmup_alone() -> None:
    opt = SGD(lr=0.4)
    sched = LinearWarmup(opt, warmup_steps=4, start_factor=0.25)
    assert opt.lr == pytest.approx(0.1)  # applied at creation
    want = [0.4 * (0.25 + 0.75 * t / 4) for t in range(4)] + [0.4] * 4
    assert _lrs(sched, 8) == pytest.approx(want, rel=1e-15)


def test_linear_warmup_then_cosine() -> None:
    opt = SGD(lr=0.5)
    cosine = CosineAnnealingLR(opt, T_max=6)
    sched = LinearWarmup(opt, warmup_steps=3, after=cosine)
    ramp = [0.5 * t / 3 for t in range(3)]
    tail = [0.5 * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(7)] + [0.0] * 2
    assert _lrs(sched, 12) == pytest.approx(ramp + tail, rel=1e-15, abs=1e-17)
    assert cosine.count == sched.count - 3
    assert cosine.last_lr == sched.last_lr


def test_schedule_drives_optimizer_lr() -> None:
    params, grads = _data(37)
    opt = SGD(lr=0.1)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    p = params.copy()
    for g in grads[:3]:
        opt.step(p, g)
        sched.step()
    want = params - 0.1 * grads[0] - 0.05 * grads[1] - 0.025 * grads[2]
    np.testing.assert_allclose(p, want, rtol=1e-14)


def _torch_lrs(torch: object, make_sched: Callable[..., object], n: int) -> list[float]:
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.3)
    sched = make_sched(opt)
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_schedules_match_torch() -> None:
    torch = pytest.importorskip("torch")
    sched_mod = torch.optim.lr_scheduler
    got = _lrs(StepLR(SGD(lr=0.3), step_size=4, gamma=0.3), 20)
    want = _torch_lrs(torch, lambda o: sched_mod.StepLR(o, step_size=4, gamma=0.3), 20)
    assert got == pytest.approx(want, rel=1e-12)

    # torch's recursive cosine keeps oscillating after T_max: compare up to T_max
    got = _lrs(CosineAnnealingLR(SGD(lr=0.3), T_max=12, eta_min=0.01), 13)
    want = _torch_lrs(torch, lambda o: sched_mod.CosineAnnealingLR(o, T_max=12, eta_min=0.01), 13)
    assert got == pytest.approx(want, rel=1e-12)

    got = _lrs(LinearWarmup(SGD(lr=0.3), warmup_steps=5, start_factor=0.2), 9)
    want = _torch_lrs(
        torch, lambda o: sched_mod.LinearLR(o, start_factor=0.2, end_factor=1.0, total_iters=5), 9
    )
    assert got == pytest.approx(want, rel=1e-12)


def test_schedule_state_dict_round_trip() -> None:
    def make() -> tuple[SGD, LinearWarmup]:
        opt = SGD(lr=0.5)
        return opt, LinearWarmup(opt, 3, start_factor=0.1, after=StepLR(opt, 2, gamma=0.5))

    opt, sched = make()
    for _ in range(5):
        sched.step()
    state = sched.state_dict()
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    assert opt2.lr == opt.lr
    assert sched2.count == 5
    assert sched2.after is not None
    assert sched2.after.count == 2
    assert _lrs(sched2, 6) == _lrs(sched, 6)
    with pytest.raises(ConfigError, match="StepLR"):
        StepLR(SGD(lr=0.5), 2).load_state_dict(state)
    with pytest.raises(ConfigError, match="after"):
        LinearWarmup(SGD(lr=0.5), 3, start_factor=0.1).load_state_dict(state)


def test_schedule_repr() -> None:
    opt = SGD(lr=0.5)
    sched = LinearWarmup(opt, 3, after=CosineAnnealingLR(opt, 10))
    text = repr(sched)
    assert "warmup_steps=3" in text
    assert "CosineAnnealingLR(T_max=10" in text


# --- validation ----------------------------------------------------------------------------
def _other_optimizer_schedule() -> LRSchedule:
    return StepLR(SGD(lr=0.1), 2)


def _stepped_schedule(opt: Optimizer) -> LRSchedule:
    sched = StepLR(opt, 2)
    sched.step()
    return sched


BAD_ARGUMENTS: list[tuple[Callable[[], object], str]] = [
    (lambda: SGD(lr=-0.1), "SGD: lr must be >= 0, got -0.1"),
    (lambda: SGD(lr=float("nan")), "lr must be finite"),
    (lambda: SGD(lr="0.1"), "lr must be a real number"),
    (lambda: SGD(lr=True), "lr must be a real number"),
    (lambda: SGD(lr=0.1, momentum=-0.9), "momentum must be >= 0"),
    (lambda: SGD(lr=0.1, dampening=1.5), r"dampening must be in \[0, 1\]"),
    (lambda: SGD(lr=0.1, dampening=-0.1), r"dampening must be in \[0, 1\]"),
    (lambda: SGD(lr=0.1, nesterov=True), "nesterov requires momentum > 0"),
    (lambda: SGD(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening == 0"),
    (lambda: SGD(lr=0.1, momentum=0.9, nesterov="yes"), "nesterov must be a bool"),
    (lambda: SGD(lr=0.1, weight_decay=-1e-4), "weight_decay must be >= 0"),
    (lambda: setattr(SGD(lr=0.1), "lr", -1.0), "lr must be >= 0"),
    (lambda: Adam(lr=-1e-3), "Adam: lr must be >= 0"),
    (lambda: Adam(betas=(1.0, 0.999)), r"betas\[0\] must be in \[0, 1\)"),
    (lambda: Adam(betas=(0.9, -0.1)), r"betas\[1\] must be in \[0, 1\)"),
    (lambda: Adam(betas=(0.9,)), "betas must be a pair"),
    (lambda: Adam(betas=0.9), "betas must be a pair"),
    (lambda: Adam(eps=-1e-8), "eps must be >= 0"),
    (lambda: Adam(weight_decay=-0.1), "weight_decay must be >= 0"),
    (lambda: AdamW(weight_decay=-0.1), "AdamW: weight_decay must be >= 0"),
    (lambda: AdamW(lr=float("inf")), "AdamW: lr must be finite"),
    (lambda: StepLR("sgd", 2), "optimizer must be a gpubackprop Optimizer"),
    (lambda: StepLR(SGD(lr=0.1), 0), "step_size must be >= 1"),
    (lambda: StepLR(SGD(lr=0.1), 2.5), "step_size must be an integer"),
    (lambda: StepLR(SGD(lr=0.1), 2, gamma=0.0), "gamma must be > 0"),
    (lambda: StepLR(SGD(lr=0.1), 2).get_lr(-1), "t must be >= 0"),
    (lambda: StepLR(SGD(lr=0.1), 2).get_lr(1.5), "t must be an integer"),
    (lambda: CosineAnnealingLR(SGD(lr=0.1), 0), "T_max must be >= 1"),
    (lambda: CosineAnnealingLR(SGD(lr=0.1), 10, eta_min=-0.1), "eta_min must be >= 0"),
    (lambda: LinearWarmup(SGD(lr=0.1), 0), "warmup_steps must be >= 1"),
    (lambda: LinearWarmup(SGD(lr=0.1), 5, start_factor=1.5), r"start_factor must be in \[0, 1\]"),
    (lambda: LinearWarmup(SGD(lr=0.1), 5, after="cosine"), "after must be an LRSchedule"),
    (
        lambda: LinearWarmup(SGD(lr=0.1), 5, after=_other_optimizer_schedule()),
        "after must wrap the same optimizer",
    ),
    (
        lambda: (lambda o: LinearWarmup(o, 5, after=_stepped_schedule(o)))(SGD(lr=0.1)),
        "after must not have stepped",
    ),
]


@pytest.mark.parametrize(("make", "match"), BAD_ARGUMENTS)
def test_bad_arguments_raise_config_error(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_other_hyperparameters_are_read_only() -> None:
    opt = SGD(lr=0.1, momentum=0.9)
    with pytest.raises(AttributeError):
        opt.momentum = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("make", [lambda: SGD(lr=0.1, momentum=0.9), Adam])
def test_bad_buffers_raise_package_errors(make: Callable[[], Optimizer]) -> None:
    opt = make()
    p = np.ones(37)
    with pytest.raises(ShapeError, match=r"shape \(37,\).*shape \(38,\)"):
        opt.step(p, np.ones(38))
    with pytest.raises(ShapeError, match="1-D"):
        opt.step(np.ones((37, 2)), np.ones((37, 2)))
    with pytest.raises(DTypeError, match="params float64 and grads float32"):
        opt.step(p, np.ones(37, dtype=np.float32))
    with pytest.raises(DTypeError, match="params int64"):
        opt.step(np.ones(37, dtype=np.int64), np.ones(37, dtype=np.int64))
    with pytest.raises(DTypeError, match="params float16"):
        opt.step(np.ones(37, dtype=np.float16), np.ones(37, dtype=np.float16))
    with pytest.raises(DTypeError, match="grads must be a numpy or cupy ndarray"):
        opt.step(p, [1.0] * 37)
    assert opt.step_count == 0
    assert np.array_equal(p, np.ones(37))  # nothing was touched


@pytest.mark.parametrize("make", [lambda: SGD(lr=0.1, momentum=0.9), Adam, lambda: SGD(0.1)])
def test_size_change_raises_until_reset(make: Callable[[], Optimizer]) -> None:
    opt = make()
    opt.step(np.ones(37), np.ones(37))
    with pytest.raises(ShapeError, match="optimizer state is for 37 parameters, got 38"):
        opt.step(np.ones(38), np.ones(38))
    opt.reset()
    assert opt.step_count == 0
    opt.step(np.ones(38), np.ones(38))
    assert opt.step_count == 1


def test_dtype_change_against_state_raises() -> None:
    opt = Adam()
    opt.step(np.ones(37), np.ones(37))
    f32 = np.ones(37, dtype=np.float32)
    with pytest.raises(
        DTypeError, match="optimizer state 'exp_avg' is float64, got params float32"
    ):
        opt.step(f32, f32)


# --- in place, no allocation per step -------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_updates_in_place_and_keeps_state_arrays(case: str) -> None:
    make, ref = CASES[case]
    params, grads = _data(1001)
    storage = np.zeros(2 * 1001)
    p = storage[::2]  # a strided view: the update must land in ``storage``
    p[...] = params
    opt = make()
    opt.step(p, grads[0])
    ids = [id(a) for a in opt.buffers().values()]
    for g in grads[1:]:
        opt.step(p, g)
        assert [id(a) for a in opt.buffers().values()] == ids
    assert np.shares_memory(p, storage)
    np.testing.assert_allclose(storage[::2], ref(params, grads), rtol=1e-12, atol=1e-13)
    assert not storage[1::2].any()


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_array_allocated_after_first_step(case: str) -> None:
    make = CASES[case][0]
    n = 100_000
    params, grads = _data(n)
    opt = make()
    opt.step(params, grads[0])
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for g in grads[1:]:
            opt.step(params, g)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < params.nbytes // 10, f"{peak} bytes allocated during steps"


# --- state_dict ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_round_trip_is_bitwise(case: str) -> None:
    make = CASES[case][0]
    params, grads = _data(1001)
    opt = make()
    p = params.copy()
    for g in grads[:3]:
        opt.step(p, g)
    state = opt.state_dict()
    assert state["type"] == type(opt).__name__
    assert state["step_count"] == 3
    assert state["num_params"] == 1001
    restored = type(opt)(lr=0.5)  # other hyper-parameters: all come from the state
    restored.load_state_dict(state)
    assert repr(restored) == repr(opt)
    p2 = p.copy()
    for g in grads[3:]:
        opt.step(p, g)
        restored.step(p2, g)
    assert np.array_equal(p, p2)
    assert restored.step_count == opt.step_count == STEPS


def test_state_dict_holds_copies() -> None:
    opt = Adam(lr=0.01)
    p = np.ones(37)
    opt.step(p, np.ones(37))
    state = opt.state_dict()
    arrays = state["state"]
    assert isinstance(arrays, dict)
    assert set(arrays) == {"exp_avg", "exp_avg_sq"}
    assert isinstance(arrays["exp_avg"], np.ndarray)
    before = arrays["exp_avg"].copy()
    opt.step(p, np.ones(37))
    assert np.array_equal(arrays["exp_avg"], before)
    assert state["lr"] == 0.01
    assert state["betas"] == (0.9, 0.999)


def test_load_state_dict_rejects_bad_states() -> None:
    opt = SGD(lr=0.1, momentum=0.9)
    opt.step(np.ones(37), np.ones(37))
    state = opt.state_dict()
    with pytest.raises(ConfigError, match="expected a Adam state, got type 'SGD'"):
        Adam().load_state_dict(state)
    with pytest.raises(ConfigError, match="momentum must be >= 0"):
        SGD(lr=0.1).load_state_dict({**state, "momentum": -1.0})
    with pytest.raises(ShapeError, match=r"momentum_buffer.*shape \(37,\), got \(36,\)"):
        SGD(lr=0.1).load_state_dict({**state, "state": {"momentum_buffer": np.ones(36)}})
    with pytest.raises(ConfigError, match="missing"):
        SGD(lr=0.1).load_state_dict({"type": "SGD", "lr": 0.1})


def test_repr_shows_hyperparameters() -> None:
    assert repr(SGD(lr=0.1, momentum=0.9, nesterov=True)) == (
        "SGD(lr=0.1, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.0)"
    )
    assert repr(AdamW()) == "AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01)"


# --- GPU -----------------------------------------------------------------------------------------
def _cupy_or_skip() -> object:
    cp = pytest.importorskip("cupy")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception:
        count = 0
    if count == 0:
        pytest.skip("no CUDA device")
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cupy_matches_numpy(case: str, dtype: type) -> None:
    cp = _cupy_or_skip()
    make = CASES[case][0]
    params, grads = _data(1001, dtype)
    want = _run(make(), params, grads)
    opt = make()
    p = cp.asarray(params)
    for g in grads:
        opt.step(p, cp.asarray(g))
    state = opt.state_dict()["state"]
    assert all(a is None or isinstance(a, cp.ndarray) for a in state.values())
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(cp.asnumpy(p), want, rtol=rtol, atol=rtol / 10)
    with pytest.raises(DeviceError, match="same device"):
        opt.step(p, cp.asnumpy(p))


# --- the update ops themselves (NumpyOps: the reference every backend matches) ---------------
def _ops_and_work(kind: str, params: np.ndarray) -> tuple[NumpyOps, dict[str, np.ndarray]]:
    ops = NumpyOps()
    return ops, ops.optimizer_workspace(kind, params, scratch=2, steps=0)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("first", [False, True])
def test_sgd_step_op_matches_the_formula(first: bool, nesterov: bool) -> None:
    rng = np.random.default_rng(5)
    p, g, b = (rng.standard_normal(97) for _ in range(3))
    lr, mu, tau, lam = 0.1, 0.9, 0.0 if nesterov else 0.25, 0.03
    d = g + lam * p
    b_new = d if first else mu * b + (1 - tau) * d
    want = p - lr * (d + mu * b_new if nesterov else b_new)
    ops, work = _ops_and_work("sgd", p)
    out = ops.sgd_step(p, g, b, work, lr=lr, first=first, momentum=mu, dampening=tau,
                       weight_decay=lam, nesterov=nesterov)
    assert out is p
    np.testing.assert_allclose(p, want, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(b, b_new, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_step_op_matches_the_formula(decoupled: bool) -> None:
    rng = np.random.default_rng(6)
    p, g = rng.standard_normal(101), rng.standard_normal(101)
    m, v = rng.standard_normal(101), rng.random(101)
    lr, (b1, b2), eps, lam, t = 0.01, (0.8, 0.95), 1e-6, 0.1, 4
    p_dec = p * (1 - lr * lam) if decoupled else p
    d = g if decoupled else g + lam * p
    m_new = b1 * m + (1 - b1) * d
    v_new = b2 * v + (1 - b2) * d * d
    want = p_dec - lr / (1 - b1**t) * m_new / (np.sqrt(v_new / (1 - b2**t)) + eps)
    ops, work = _ops_and_work("adam", p)
    ops.adam_step(p, g, m, v, work, lr=lr, step=t, betas=(b1, b2), eps=eps, weight_decay=lam,
                  decoupled=decoupled)
    np.testing.assert_allclose(p, want, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose((m, v), (m_new, v_new), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("kind", ["sgd", "sgd_decay", "adam", "adamw"])
def test_update_ops_by_blocks_give_the_same_bits(kind: str, monkeypatch) -> None:
    """A buffer larger than one block is updated block by block with one-block scratch
    arrays; the bits are those of the update in one piece."""
    from gpubackprop.backend import numpy_ops

    rng = np.random.default_rng(8)
    p, g, m = (rng.standard_normal(1000).astype(np.float32) for _ in range(3))
    v = rng.random(1000).astype(np.float32)
    results = []
    for block in (numpy_ops.UPDATE_BLOCK, 96):  # 1000 = 10 blocks of 96 and a short one
        monkeypatch.setattr(numpy_ops, "UPDATE_BLOCK", block)
        pp, gg, mm, vv = p.copy(), g.copy(), m.copy(), v.copy()
        ops, work = _ops_and_work("adam" if kind.startswith("adam") else "sgd", pp)
        assert all(w.shape == (min(1000, block),) for w in work.values())
        for step in (1, 2):
            if kind.startswith("sgd"):
                ops.sgd_step(pp, gg, mm, work, lr=0.1, first=step == 1, momentum=0.9,
                             dampening=0.1, weight_decay=0.01 if kind == "sgd_decay" else 0.0,
                             nesterov=False)
            else:
                ops.adam_step(pp, gg, mm, vv, work, lr=0.01, step=step, betas=(0.9, 0.99),
                              eps=1e-8, weight_decay=0.1, decoupled=kind == "adamw")
        results.append((pp, mm, vv))
    for whole, blocked in zip(*results, strict=True):
        np.testing.assert_array_equal(blocked, whole)


def test_global_norm_op_over_several_arrays_and_past_overflow() -> None:
    ops = NumpyOps()
    a, b = np.full((2, 2), 1.0), np.full(5, 2.0)
    assert ops.global_norm([a, b]) == math.sqrt(24.0)
    assert ops.global_norm([np.zeros(0), a]) == 2.0
    huge = np.full(4, 1e300)  # Σ g² overflows; the norm does not
    assert ops.global_norm([huge, np.zeros(0)]) == pytest.approx(2e300, rel=1e-15)
    assert ops.global_norm([a, np.array([np.inf])]) == math.inf
    assert math.isnan(ops.global_norm([np.array([np.nan]), huge]))


def test_optimizer_workspace_and_buffers() -> None:
    ops = NumpyOps()
    work = ops.optimizer_workspace("sgd", np.zeros(7, dtype=np.float32), scratch=2, steps=3)
    assert sorted(work) == ["tmp0", "tmp1"]
    assert all(w.shape == (7,) and w.dtype == np.float32 for w in work.values())
    opt = Adam()
    assert opt.buffers() == {}
    opt.prepare(np.zeros(5), np.zeros(5))
    assert sorted(opt.buffers()) == ["exp_avg", "exp_avg_sq", "tmp0", "tmp1"]
    key, old = opt.capture_key(), opt.buffers()  # old stays alive: no id is reused
    assert opt.capture_key() == key
    opt.reset()
    opt.prepare(np.zeros(5), np.zeros(5))
    assert opt.capture_key() != key and old  # new buffers: a recorded graph would be stale
    with pytest.raises(ConfigError, match="prepare"):
        SGD(0.1).apply_update(np.zeros(3), np.zeros(3))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_cupy_update_ops_match_the_reference_past_one_grid(kind: str, dtype: type) -> None:
    cp = _cupy_or_skip()
    from gpubackprop.backend import get_backend

    gpu, cpu = get_backend("cuda").ops, NumpyOps()
    n = 2**21 + 7  # odd, and more than one grid of the grid-stride kernels
    rng = np.random.default_rng(7)
    p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = rng.random(n).astype(dtype)
    host = [p.copy(), g, m.copy(), v.copy()]
    dev = [cp.asarray(a) for a in (p, g, m, v)]
    lr, taken = 0.05, 3  # the update is step 4: not the first for the momentum buffer
    work_cpu = cpu.optimizer_workspace(kind, p, scratch=2, steps=taken)
    work_gpu = gpu.optimizer_workspace(kind, dev[0], scratch=2, steps=taken)
    gpu.set_learning_rate(work_gpu, lr)
    for ops, (pp, gg, mm, vv), work in ((cpu, host, work_cpu), (gpu, dev, work_gpu)):
        if kind == "sgd":
            ops.sgd_step(pp, gg, mm, work, lr=lr, first=False, momentum=0.9, dampening=0.1,
                         weight_decay=0.01, nesterov=False)
        else:
            ops.adam_step(pp, gg, mm, vv, work, lr=lr, step=taken + 1, betas=(0.9, 0.99),
                          eps=1e-8, weight_decay=0.01, decoupled=False)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for name, want, got in zip(("params", "grads", "m", "v"), host, dev, strict=True):
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=rtol, atol=rtol / 10, err_msg=name)
