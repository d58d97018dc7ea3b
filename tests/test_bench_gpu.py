"""bench/gpu_step.py and bench/plot.py: everything that runs without a GPU.

The GPU contenders themselves run only on a GPU machine (the ``gpu`` test at the
end); here: the no-GPU exit, the pure table / ratio / target logic, the JSON
layout, the plot, the GEMM floor's plan (on NumPy), and the PyTorch and JAX
twins on the CPU against gpubackprop's own CPU step.
"""

from __future__ import annotations

import datetime
import json
import math
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import gpubackprop as gb
from bench import gpu_step as gs
from bench.networks import GPU_NETWORKS, NETWORKS, build_model, get_networks, make_batch
from gpubackprop.backend import has_gpu

BY_NAME = {net.name: net for net in GPU_NETWORKS}
CPU_SIZED = [n.name for n in NETWORKS]  # small enough for a CPU step in a test


# --- the networks table -------------------------------------------------------------------------
def test_wide_is_a_gpu_network_and_the_cpu_default_set_is_unchanged() -> None:
    assert [n.name for n in get_networks()] == [
        "seed-2layer",
        "mnist-mlp",
        "deep-narrow",
        "wide-b512",
    ]
    wide = get_networks("wide", GPU_NETWORKS)[0]
    assert (wide.batch, wide.widths, wide.activation, wide.loss) == (
        4096,
        (4096, 4096, 4096, 4096),
        "relu",
        "mse",
    )
    assert [n.name for n in GPU_NETWORKS] == [*CPU_SIZED, "wide"]
    with pytest.raises(ValueError, match="unknown network"):
        get_networks("wide")  # not in the CPU benchmark's table


# --- no GPU --------------------------------------------------------------------------------------
@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU: main() would benchmark it")
def test_main_without_gpu_says_why_and_returns_0(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUPY_TF32", "1")
    assert gs.main([]) == 0
    out = capsys.readouterr().out
    assert "no GPU benchmark on this machine" in out
    assert "CuPy" in out
    import os

    assert "CUPY_TF32" not in os.environ  # unset before CuPy could read it


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--networks", "nope"], ["--contenders", "nope"], ["--iters", "0"]):
        with pytest.raises(SystemExit) as info:
            gs.parse_args(argv)
        assert info.value.code == 2
    args = gs.parse_args(["--networks", "wide,seed-2layer", "--contenders", "gbp_eager"])
    assert [n.name for n in args.network_list] == ["wide", "seed-2layer"]
    assert args.contenders == ("gbp_eager",)
    assert gs.parse_args([]).contenders == gs.CONTENDERS


# --- ratios, targets, table -----------------------------------------------------------------------
def _entry(key: str, ms: float | None, *, status: str = "ok", **kw: Any) -> dict[str, Any]:
    if ms is None:
        return gs.contender_entry(key, "missing", error=kw.pop("error", "torch missing"), **kw)
    timing = gs.summarize([ms * 0.98, ms, ms * 1.03])
    check = kw.pop("check", gs.compare_step(*_same_step(), 1.0, _same_step()[2]))
    return gs.contender_entry(key, status, timing=timing, check=check, clock="cuda-event", **kw)


def _same_step() -> tuple[gs.Params, float, gs.Params]:
    before = [(np.ones((2, 2), np.float32), np.zeros(2, np.float32))]
    after = [(w - 0.1, b - 0.1) for w, b in before]
    return before, 1.0, after


def _fake_result(name: str, times: dict[str, float | None], **entry_kw: Any) -> dict[str, Any]:
    contenders = {k: _entry(k, ms, **entry_kw.get(k, {})) for k, ms in times.items()}
    return gs.network_result(BY_NAME[name], contenders)


FULL = {
    gs.GBP_EAGER: 0.40,
    gs.GBP_CAPTURED: 0.040,
    gs.TORCH_EAGER: 0.70,
    gs.TORCH_GRAPH: 0.075,
    gs.JAX_JIT: 0.090,
    gs.GEMM_FLOOR: 0.020,
}


def test_ratios_use_the_faster_peer() -> None:
    ratios = gs.compute_ratios(FULL)
    assert ratios[gs.CAPTURED_BEST_PEER] == pytest.approx(0.040 / 0.075)
    assert ratios[gs.CAPTURED_TORCH_GRAPH] == pytest.approx(0.040 / 0.075)
    assert ratios[gs.CAPTURED_FLOOR] == pytest.approx(2.0)
    assert ratios[gs.EAGER_TORCH_EAGER] == pytest.approx(0.40 / 0.70)
    assert gs.best_peer(FULL) == gs.TORCH_GRAPH
    jax_faster = {**FULL, gs.JAX_JIT: 0.05}
    assert gs.compute_ratios(jax_faster)[gs.CAPTURED_BEST_PEER] == pytest.approx(0.8)
    assert gs.best_peer(jax_faster) == gs.JAX_JIT


def test_ratios_with_missing_contenders_are_none() -> None:
    only_jax = {gs.GBP_EAGER: 0.4, gs.GBP_CAPTURED: 0.05, gs.JAX_JIT: 0.1}
    ratios = gs.compute_ratios(only_jax)
    assert ratios[gs.CAPTURED_BEST_PEER] == pytest.approx(0.5)
    assert ratios[gs.CAPTURED_TORCH_GRAPH] is None
    assert ratios[gs.CAPTURED_FLOOR] is None
    assert ratios[gs.EAGER_TORCH_EAGER] is None
    none = gs.compute_ratios({})
    assert all(v is None for v in none.values())
    assert gs.best_peer({}) is None


def test_targets_pass_miss_and_na() -> None:
    small = gs.evaluate_targets("seed-2layer", gs.compute_ratios(FULL))
    verdicts = {t["ratio"]: t["verdict"] for t in small}
    # 0.040/0.075 = 0.53 <= 0.6; 0.40/0.70 = 0.57 <= 0.7
    assert verdicts == {gs.CAPTURED_BEST_PEER: "PASS", gs.EAGER_TORCH_EAGER: "PASS"}
    slow = gs.compute_ratios({**FULL, gs.GBP_CAPTURED: 0.06, gs.GBP_EAGER: 0.6})
    verdicts = {t["ratio"]: t["verdict"] for t in gs.evaluate_targets("mnist-mlp", slow)}
    assert verdicts == {gs.CAPTURED_BEST_PEER: "MISS", gs.EAGER_TORCH_EAGER: "MISS"}

    wide = {**FULL, gs.GBP_CAPTURED: 22.3, gs.TORCH_GRAPH: 22.2, gs.JAX_JIT: 22.5}
    wide[gs.GEMM_FLOOR] = 22.0
    rows = gs.evaluate_targets("wide", gs.compute_ratios(wide))
    assert {t["ratio"]: t["verdict"] for t in rows} == {
        gs.CAPTURED_BEST_PEER: "MISS",  # 22.3 > 22.2
        gs.CAPTURED_FLOOR: "PASS",  # 22.3 / 22.0 = 1.014
    }
    eager_floor = gs.evaluate_targets("wide", gs.compute_ratios(wide), floor_mode="eager")
    assert eager_floor[1]["verdict"] == "n/a" and "not captured" in eager_floor[1]["why"]
    missing = gs.evaluate_targets("wide-b512", gs.compute_ratios({}))
    assert [t["verdict"] for t in missing] == ["n/a", "n/a"]
    assert gs.evaluate_targets("some-other-net", gs.compute_ratios(FULL)) == []


def test_table_cells_for_ok_error_missing_and_eager_floor() -> None:
    result = _fake_result(
        "wide-b512",
        {
            gs.GBP_EAGER: 1.5,
            gs.GBP_CAPTURED: 0.9,
            gs.TORCH_EAGER: None,  # missing: torch not importable
            gs.TORCH_GRAPH: None,
            gs.JAX_JIT: 0.86,
            gs.GEMM_FLOOR: 0.85,
        },
        **{gs.GEMM_FLOOR: {"mode": "eager", "note": "capture failed"}},
    )
    result["contenders"][gs.TORCH_GRAPH] = gs.contender_entry(
        gs.TORCH_GRAPH, "error", error="setup: RuntimeError: boom"
    )
    result = gs.network_result(BY_NAME["wide-b512"], result["contenders"])
    (row,) = gs.table_rows([result])
    assert len(row) == len(gs.MAIN_HEAD)
    cells = dict(zip(gs.MAIN_HEAD, row, strict=True))
    assert cells["gbp eager ms"] == "1.500"
    assert cells["torch eager ms"] == "n/a"
    assert cells["torch graph ms"] == "ERR"
    assert cells["GEMM floor ms"] == "0.850 (eager)"
    assert cells[gs.CAPTURED_BEST_PEER] == f"{0.9 / 0.86:.2f}"
    assert cells[gs.CAPTURED_TORCH_GRAPH] == "n/a"
    assert cells[gs.EAGER_TORCH_EAGER] == "n/a"
    assert cells["check"].startswith("ok")
    text = gs.report([result])
    assert "targets:" in text and "GEMM floor not captured" in text
    assert "wide-b512 / torch graph: error: setup: RuntimeError: boom" in text
    assert "wide-b512 / torch eager: missing: torch missing" in text
    lines = gs.format_table(gs.MAIN_HEAD, gs.table_rows([result])).splitlines()
    assert lines[0].startswith("network") and set(lines[1]) <= {"-", "|", " "}
    assert not gs.run_failed([result])  # a peer's error does not fail the run


def test_failed_check_and_own_errors_fail_the_run() -> None:
    bad_check = {"ok": False, "loss_rel": 0.1, "update_rel": 0.5, "summary": "FAIL"}
    result = _fake_result(
        "seed-2layer", {gs.GBP_EAGER: 0.4, gs.TORCH_EAGER: 0.7}, torch_eager={"check": bad_check}
    )
    assert gs.check_summary(result["contenders"]) == "FAIL: torch eager"
    assert gs.run_failed([result])
    crashed = _fake_result("seed-2layer", {gs.GBP_EAGER: 0.4})
    crashed["contenders"][gs.GBP_CAPTURED] = gs.contender_entry(
        gs.GBP_CAPTURED, "error", error="first step: CaptureError: x"
    )
    assert gs.run_failed([crashed])
    assert gs.check_summary({}) == "n/a"


def test_detail_rows_have_tflops() -> None:
    result = _fake_result("wide", {gs.GBP_CAPTURED: 20.0})
    (row,) = gs.detail_rows([result])
    assert row[:2] == ["wide", "gbp captured"]
    assert float(row[6]) == pytest.approx(BY_NAME["wide"].flops_per_step / 20e9, rel=1e-2)


# --- timing loop (fakes) --------------------------------------------------------------------------
class FakeTimed:
    def __init__(self, name: str, ms: float, log: list[str], fail_at: int | None = None) -> None:
        self.name, self.ms, self.log, self.fail_at = name, ms, log, fail_at
        self.blocks = 0
        self.warm = 0

    def warmup(self, steps: int) -> None:
        self.warm += steps

    def time_block(self, steps: int) -> float:
        self.log.append(self.name)
        self.blocks += 1
        if self.fail_at is not None and self.blocks >= self.fail_at:
            raise RuntimeError(f"{self.name} died")
        return self.ms * steps


def test_measure_rotates_and_contains_failures() -> None:
    log: list[str] = []
    contenders = {
        "a": FakeTimed("a", 1.0, log),
        "b": FakeTimed("b", 2.0, log),
        "c": FakeTimed("c", 3.0, log, fail_at=2),
    }
    samples, errors = gs.measure(contenders, warmup=5, iters=10, reps=3)
    assert contenders["a"].warm == 5
    assert log[:3] == ["a", "b", "c"] and log[3:6] == ["b", "c", "a"]
    assert samples["a"] == [1.0, 1.0, 1.0] and samples["b"] == [2.0] * 3
    assert "c" not in samples and isinstance(errors["c"], RuntimeError)
    assert contenders["c"].blocks == 2  # dropped after it raised
    stats = gs.summarize([1.0, 2.0, 3.0, 4.0])
    assert stats["median_ms"] == 2.5 and stats["samples_ms"] == [1.0, 2.0, 3.0, 4.0]
    assert stats["p10_ms"] < stats["median_ms"] < stats["p90_ms"]


# --- JSON and plot --------------------------------------------------------------------------------
def _fake_payload() -> dict[str, Any]:
    results = [
        _fake_result("seed-2layer", FULL),
        _fake_result(
            "wide",
            {**{k: v * 500 for k, v in FULL.items()}, gs.TORCH_EAGER: None},
            gemm_floor={"mode": "eager"},
        ),
    ]
    return {
        "schema": gs.SCHEMA,
        "date": "2026-11-22T10:00:00+00:00",
        "device": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
        "versions": {"cupy": "14.2.0", "torch": None},
        "tf32": {"CUPY_TF32_before": None},
        "settings": {"lr": gs.LR, "warmup": 20, "iters": 50, "reps": 10},
        "results": results,
    }


def test_json_round_trip(tmp_path: Path) -> None:
    payload = _fake_payload()
    path = tmp_path / "sub" / "r.json"
    gs.write_json(path, payload)
    back = gs.read_json(path)
    assert back == json.loads(json.dumps(payload))
    wide = back["results"][1]
    assert wide["contenders"][gs.TORCH_EAGER]["status"] == "missing"
    assert wide["contenders"][gs.GEMM_FLOOR]["mode"] == "eager"
    assert list(wide["contenders"]) == list(gs.CONTENDERS)
    assert set(wide["ratios"]) == set(gs.RATIOS)
    assert len(back["results"][0]["contenders"][gs.GBP_EAGER]["samples_ms"]) == 3
    with pytest.raises(ValueError, match="schema"):
        gs.validate_payload({**payload, "schema": "other"})
    broken = json.loads(json.dumps(payload))
    del broken["results"][0]["contenders"][gs.JAX_JIT]["p90_ms"]
    with pytest.raises(ValueError, match="p90_ms"):
        gs.validate_payload(broken)


def test_names_and_versions() -> None:
    assert gs.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gs.device_slug("  ") == "gpu"
    path = gs.default_json_path("NVIDIA H200", datetime.date(2026, 11, 22))
    assert path.name == "gpu_step_nvidia-h200_2026-11-22.json"
    assert path.parent == Path(gs.__file__).resolve().parent / "results"
    assert gs.cuda_version_str(13000) == "13.0" and gs.cuda_version_str(12080) == "12.8"
    assert gs.cuda_version_str(None) is None


def test_plot_results_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.plot import plot_results

    path = tmp_path / "r.json"
    gs.write_json(path, _fake_payload())
    png = plot_results(path, tmp_path / "out" / "r.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


# --- the GEMM floor's plan, on NumPy --------------------------------------------------------------
def _shapes(net: Any) -> dict[str, Any]:
    """Shape-only stand-ins for the floor's buffers (no memory for the wide net)."""
    bufs: dict[str, Any] = {"X": SimpleNamespace(shape=(net.batch, net.widths[0]))}
    for k, (fan_in, fan_out, _) in enumerate(net.layers):
        bufs[f"W{k}"] = SimpleNamespace(shape=(fan_out, fan_in))
        bufs[f"dW{k}"] = SimpleNamespace(shape=(fan_out, fan_in))
        bufs[f"Z{k}"] = SimpleNamespace(shape=(net.batch, fan_out))
        bufs[f"D{k}"] = SimpleNamespace(shape=(net.batch, fan_out))
    return bufs


@pytest.mark.parametrize("name", list(BY_NAME))
def test_floor_plan_is_the_steps_gemms(name: str) -> None:
    net = BY_NAME[name]
    plan = gs.floor_plan(net)
    layers = len(net.layers)
    assert len(plan) == 3 * layers - 1
    assert gs.plan_flops(plan, _shapes(net)) == net.flops_per_step
    # every operand is written before it is read, or is an input (X, W, the last Δ)
    written = {"X", f"D{layers - 1}"} | {f"W{k}" for k in range(layers)}
    for g in plan:
        assert g.a in written and g.b in written, g
        written.add(g.out)


def _numpy_gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray, *, trans_a: bool, trans_b: bool):
    np.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)
    return out


@pytest.mark.parametrize("name", ["seed-2layer", "deep-narrow"])
def test_floor_plan_runs_and_checks_on_numpy(name: str) -> None:
    net = BY_NAME[name]
    x, _ = make_batch(net)
    init = gs.gb_params(build_model(net, device="cpu", seed=0))
    bufs = gs.floor_buffers(np, net, init, x)
    plan = gs.floor_plan(net)
    gs.poison_outputs(plan, bufs)
    assert math.isnan(gs.plan_error(np, plan, bufs))  # unwritten outputs fail the check
    gs.run_plan(_numpy_gemm, plan, bufs)
    err = gs.plan_error(np, plan, bufs)
    assert err < 1e-5
    assert gs.gemm_check(err)["ok"] and not gs.gemm_check(float("nan"))["ok"]
    assert not gs.gemm_check(3e-4)["ok"]  # TF32-sized errors fail
    assert np.all(np.isfinite(bufs["dW0"])) and np.any(bufs["dW0"] != 0)


# --- the one-step check, and the PyTorch / JAX twins on the CPU -----------------------------------
def test_compare_step_flags_a_wrong_update() -> None:
    before, loss, after = _same_step()
    assert gs.compare_step(before, loss, after, loss, after)["ok"]
    off = [(w + 0.01, b) for w, b in after]  # 10% of the update
    check = gs.compare_step(before, loss, after, loss, off)
    assert not check["ok"] and check["summary"].startswith("FAIL")
    assert not gs.compare_step(before, loss, after, loss * 1.01, after)["ok"]
    nan = [(w * np.nan, b) for w, b in after]
    assert not gs.compare_step(before, loss, after, loss, nan)["ok"]


def _gb_reference(name: str) -> tuple[Any, np.ndarray, np.ndarray, gs.Params, float, gs.Params]:
    net = BY_NAME[name]
    x, y = make_batch(net)
    model = build_model(net, device="cpu", seed=0)
    init = gs.gb_params(model)
    loss = model.train_step(x, y, net.loss, gb.optim.SGD(gs.LR))
    return net, x, y, init, loss, gs.gb_params(model)


@pytest.mark.parametrize("name", CPU_SIZED)
def test_torch_twin_matches_gpubackprop_on_cpu(name: str) -> None:
    torch = pytest.importorskip("torch")
    net, x, y, init, ref_loss, ref_params = _gb_reference(name)
    device = torch.device("cpu")
    model = gs.build_torch_model(net, init, device)
    assert [p.dtype for p in model.parameters()] == [torch.float32] * (2 * len(net.layers))
    np.testing.assert_array_equal(gs.torch_params(model)[0][0], init[0][0])
    opt = gs.torch_sgd(model)
    tx, ty = gs.torch_batch(x, y, device)
    loss = gs.torch_train_step(model, opt, gs.torch_loss_fn(net), tx, ty)
    check = gs.compare_step(init, ref_loss, ref_params, float(loss.item()), gs.torch_params(model))
    assert check["ok"], check


def test_gb_params_round_trip_through_load_params() -> None:
    net = BY_NAME["seed-2layer"]
    init = gs.gb_params(build_model(net, device="cpu", seed=0))
    other = build_model(net, device="cpu", seed=123)
    assert not np.array_equal(gs.gb_params(other)[0][0], init[0][0])
    gs.load_params(other, init)
    for (w, b), (w2, b2) in zip(gs.gb_params(other), init, strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)


@pytest.mark.parametrize("name", ["seed-2layer", "mnist-mlp", "deep-narrow"])
def test_jax_twin_matches_gpubackprop_on_cpu(name: str) -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_default_matmul_precision", "highest")
    net, x, y, init, ref_loss, ref_params = _gb_reference(name)
    device = jax.devices("cpu")[0]
    step = jax.jit(gs.make_jax_step(net), donate_argnums=(0,))
    params = gs.jax_params(init, device)
    jx, jy = gs.jax_batch(x, y, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "donated buffers were not usable" on the CPU
        new, loss = step(params, jx, jy)
    check = gs.compare_step(init, ref_loss, ref_params, float(loss), gs.jax_to_host(new))
    assert check["ok"], check


# --- run_network's orchestration, with the contender classes run on the CPU ---------------------
class _WallClock:
    """Host-clock timing for the CPU stand-ins of the GPU contenders."""

    def sync(self) -> None:
        pass

    def time_block(self, steps: int) -> float:
        start = time.perf_counter()
        self.issue(steps)  # type: ignore[attr-defined]
        return (time.perf_counter() - start) * 1e3


class _CpuGbpEager(_WallClock, gs.GbpEager):
    device = "cpu"


class _CpuGbpCaptured(_WallClock, gs.GbpCaptured):
    device = "cpu"  # compile_step refuses a CPU model: a setup failure


class _CpuTorchEager(_WallClock, gs.TorchEager):
    device = "cpu"


class _DiesWhenTimed(_WallClock, gs.Contender):
    def __init__(self, *args: Any) -> None:
        self.inner = _CpuTorchEager(*args)

    def first_step(self) -> tuple[float, gs.Params]:
        return self.inner.first_step()

    def issue(self, steps: int) -> None:
        raise RuntimeError("lost the device")


class _FloorCannotStart:
    def __init__(self, *args: Any) -> None:
        raise OSError("no libcublas")


def test_run_network_contains_each_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(gs, "GbpEager", _CpuGbpEager)
    monkeypatch.setattr(gs, "GbpCaptured", _CpuGbpCaptured)
    monkeypatch.setattr(gs, "TorchEager", _CpuTorchEager)
    monkeypatch.setattr(gs, "TorchGraph", _DiesWhenTimed)
    monkeypatch.setattr(gs, "GemmFloor", _FloorCannotStart)
    libs = gs.Libraries(cp=np, torch=torch, jax_why="jax is not importable (test)")
    args = gs.parse_args(["--warmup", "1", "--iters", "2", "--reps", "3"])
    result = gs.run_network(BY_NAME["mnist-mlp"], libs, args)
    c = result["contenders"]
    assert list(c) == list(gs.CONTENDERS)
    assert c[gs.GBP_EAGER]["status"] == "ok" and len(c[gs.GBP_EAGER]["samples_ms"]) == 3
    assert c[gs.GBP_EAGER]["check"]["ok"]
    assert c[gs.TORCH_EAGER]["status"] == "ok"
    assert c[gs.TORCH_EAGER]["check"]["ok"], c[gs.TORCH_EAGER]["check"]
    assert c[gs.GBP_CAPTURED]["status"] == "error"
    assert c[gs.GBP_CAPTURED]["error"].startswith("setup: ConfigError")
    assert c[gs.TORCH_GRAPH]["status"] == "error"
    assert "timing: RuntimeError: lost the device" in c[gs.TORCH_GRAPH]["error"]
    assert c[gs.TORCH_GRAPH]["check"]["ok"]  # its first step was right
    assert c[gs.JAX_JIT]["status"] == "missing"
    assert c[gs.JAX_JIT]["error"] == "jax is not importable (test)"
    # no CuPy here: the floor's cuBLAS handle (or its class) fails at setup, contained
    assert c[gs.GEMM_FLOOR]["status"] == "error"
    assert c[gs.GEMM_FLOOR]["error"].startswith("setup: ")
    assert "Traceback" in c[gs.GEMM_FLOOR]["traceback"]
    assert result["ratios"][gs.EAGER_TORCH_EAGER] is not None
    assert result["ratios"][gs.CAPTURED_BEST_PEER] is None
    assert gs.run_failed([result])  # gbp captured raised
    out = capsys.readouterr().out
    assert "gbp captured: setup failed: ConfigError" in out
    text = gs.report([result])
    assert "mnist-mlp / torch graph: error: timing: RuntimeError" in text
    assert "mnist-mlp / jax jit: missing: jax is not importable (test)" in text


def test_jax_contender_class_runs_on_cpu() -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_default_matmul_precision", "highest")
    net, x, y, init, ref_loss, ref_params = _gb_reference("mnist-mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # donation is not implemented on the CPU
        c = gs.JaxJit(jax, jax.devices("cpu")[0], net, init, x, y)
        loss, params = c.first_step()
        assert gs.compare_step(init, ref_loss, ref_params, loss, params)["ok"]
        c.warmup(2)
        assert c.time_block(3) > 0
    assert c.clock == "wall"


def test_peer_imports_explain_a_missing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    torch, why = gs.import_torch()
    if torch is None:
        assert why is not None and "CUDA" in why
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    jax, device, why = gs.import_jax()
    import os

    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    if jax is None:
        assert device is None and why is not None


def test_main_end_to_end_with_cpu_stand_ins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main()'s GPU path with NumPy as "CuPy" and the CPU stand-ins of the contenders."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from gpubackprop import arrays

    monkeypatch.setattr(gs, "no_gpu_reason", lambda: None)
    monkeypatch.setattr(arrays, "cupy_module", lambda: np)
    monkeypatch.setattr(gs, "import_torch", lambda: (torch, None))
    monkeypatch.setattr(gs, "GbpEager", _CpuGbpEager)
    monkeypatch.setattr(gs, "TorchEager", _CpuTorchEager)
    path = tmp_path / "r.json"
    argv = ["--networks", "seed-2layer", "--contenders", "gbp_eager,torch_eager,gemm_floor"]
    code = gs.main([*argv, "--warmup", "1", "--iters", "2", "--reps", "2", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out  # only a peer (the GEMM floor: no CuPy) failed
    assert "warning: gpubackprop's cuBLAS handle" in out
    payload = gs.read_json(path)
    (result,) = payload["results"]
    statuses = {k: e["status"] for k, e in result["contenders"].items()}
    assert statuses == {
        gs.GBP_EAGER: "ok",
        gs.GBP_CAPTURED: "missing",
        gs.TORCH_EAGER: "ok",
        gs.TORCH_GRAPH: "missing",
        gs.JAX_JIT: "missing",
        gs.GEMM_FLOOR: "error",
    }
    assert payload["settings"]["iters"] == 2 and payload["device"]["name"] == "unknown GPU"
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # the summary table and the targets come last
    tail = out[out.index("not run / failed:") :]
    assert "network " in tail and "targets:" in tail and "eager/torch-eager <= 0.7" in tail


def test_environment_probes_are_defensive(capsys: pytest.CaptureFixture[str]) -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("no driver")

    runtime = SimpleNamespace(getDeviceProperties=boom, runtimeGetVersion=boom)
    fake_cp = SimpleNamespace(
        __version__="14.2.0", cuda=SimpleNamespace(Device=boom, runtime=runtime)
    )
    env = {"date": "2026-11-22T10:00:00+00:00"}
    env.update(gs.gpu_environment(fake_cp, None, None, "1"))
    assert env["device"]["name"] == "unknown GPU" and "no driver" in env["device"]["error"]
    assert env["versions"]["cupy"] == "14.2.0" and env["versions"]["cuda_runtime"] is None
    assert env["tf32"]["CUPY_TF32_before"] == "1"
    gs.print_environment(env)
    out = capsys.readouterr().out
    assert "unknown GPU" in out and "CUPY_TF32 was '1'" in out and "torch n/a" in out
    torch = pytest.importorskip("torch")
    env.update(gs.gpu_environment(fake_cp, torch, None, None))
    assert env["tf32"]["torch_float32_matmul_precision"] in ("highest", "high", "medium")
    gs.print_environment(env)
    assert "torch allow_tf32 matmul=" in capsys.readouterr().out


# --- on a GPU machine: a short real run -----------------------------------------------------------
@pytest.mark.gpu
def test_gpu_step_short_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    argv = ["--networks", "seed-2layer,mnist-mlp", "--warmup", "2", "--iters", "3"]
    code = gs.main([*argv, "--reps", "2", "--json", str(path), "--no-plot"])
    out = capsys.readouterr().out
    payload = gs.read_json(path)
    for r in payload["results"]:
        for key in gs.OWN:
            entry = r["contenders"][key]
            assert entry["status"] == "ok", (r["network"], key, entry["error"], out)
        for key, entry in r["contenders"].items():
            if entry["check"] is not None:
                assert entry["check"]["ok"], (r["network"], key, entry["check"])
    assert code == 0, out
