"""bench/gpu_step.py (with gpu_results.py, gemm_floor.py, jax_twin.py) and bench/plot.py:
everything that runs without a GPU.

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
from bench import common
from bench import gemm_floor as gf
from bench import gpu_results as gr
from bench import gpu_step as gs
from bench import jax_twin as jt
from bench.lstm_lm import LSTM_LM, LSTMNetwork
from bench.networks import GPU_NETWORKS, NETWORKS, Network, build_model, get_networks, make_batch
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
    assert gs.parse_args([]).contenders == gr.ALL_CONTENDERS == gr.CONTENDERS + gr.TF32_CONTENDERS


# --- ratios, targets, table -----------------------------------------------------------------------
def _entry(key: str, ms: float | None, *, status: str = "ok", **kw: Any) -> dict[str, Any]:
    if ms is None:
        return gr.contender_entry(key, "missing", error=kw.pop("error", "torch missing"), **kw)
    timing = common.summarize([ms * 0.98, ms, ms * 1.03])
    check = kw.pop("check", common.compare_step(_same_step(), 1.0, _same_step().after))
    return gr.contender_entry(key, status, timing=timing, check=check, clock="cuda-event", **kw)


def _same_step() -> common.ReferenceStep:
    before = [(np.ones((2, 2), np.float32), np.zeros(2, np.float32))]
    after = [(w - 0.1, b - 0.1) for w, b in before]
    return common.ReferenceStep(before, 1.0, after, loss_rtol=1e-4, update_rtol=1e-2)


def _fake_result(name: str, times: dict[str, float | None], **entry_kw: Any) -> dict[str, Any]:
    contenders = {k: _entry(k, ms, **entry_kw.get(k, {})) for k, ms in times.items()}
    return gr.network_result(BY_NAME[name], contenders)


FULL = {
    gr.GBP_EAGER: 0.40,
    gr.GBP_CAPTURED: 0.040,
    gr.TORCH_EAGER: 0.70,
    gr.TORCH_GRAPH: 0.075,
    gr.JAX_JIT: 0.090,
    gr.GEMM_FLOOR: 0.020,
}


def test_ratios_use_the_faster_peer() -> None:
    ratios = gr.compute_ratios(FULL)
    assert ratios[gr.CAPTURED_BEST_PEER] == pytest.approx(0.040 / 0.075)
    assert ratios[gr.CAPTURED_TORCH_GRAPH] == pytest.approx(0.040 / 0.075)
    assert ratios[gr.CAPTURED_FLOOR] == pytest.approx(2.0)
    assert ratios[gr.EAGER_TORCH_EAGER] == pytest.approx(0.40 / 0.70)
    assert gr.best_peer(FULL) == gr.TORCH_GRAPH
    jax_faster = {**FULL, gr.JAX_JIT: 0.05}
    assert gr.compute_ratios(jax_faster)[gr.CAPTURED_BEST_PEER] == pytest.approx(0.8)
    assert gr.best_peer(jax_faster) == gr.JAX_JIT


def test_ratios_with_missing_contenders_are_none() -> None:
    only_jax = {gr.GBP_EAGER: 0.4, gr.GBP_CAPTURED: 0.05, gr.JAX_JIT: 0.1}
    ratios = gr.compute_ratios(only_jax)
    assert ratios[gr.CAPTURED_BEST_PEER] == pytest.approx(0.5)
    assert ratios[gr.CAPTURED_TORCH_GRAPH] is None
    assert ratios[gr.CAPTURED_FLOOR] is None
    assert ratios[gr.EAGER_TORCH_EAGER] is None
    none = gr.compute_ratios({})
    assert all(v is None for v in none.values())
    assert gr.best_peer({}) is None


def test_targets_pass_miss_and_na() -> None:
    small = gr.evaluate_targets("seed-2layer", gr.compute_ratios(FULL))
    verdicts = {t["ratio"]: t["verdict"] for t in small}
    # 0.040/0.075 = 0.53 <= 0.6; 0.40/0.70 = 0.57 <= 0.7
    assert verdicts == {gr.CAPTURED_BEST_PEER: "PASS", gr.EAGER_TORCH_EAGER: "PASS"}
    slow = gr.compute_ratios({**FULL, gr.GBP_CAPTURED: 0.06, gr.GBP_EAGER: 0.6})
    verdicts = {t["ratio"]: t["verdict"] for t in gr.evaluate_targets("mnist-mlp", slow)}
    assert verdicts == {gr.CAPTURED_BEST_PEER: "MISS", gr.EAGER_TORCH_EAGER: "MISS"}

    wide = {**FULL, gr.GBP_CAPTURED: 22.3, gr.TORCH_GRAPH: 22.2, gr.JAX_JIT: 22.5}
    wide[gr.GEMM_FLOOR] = 22.0
    rows = gr.evaluate_targets("wide", gr.compute_ratios(wide))
    assert {t["ratio"]: t["verdict"] for t in rows} == {
        gr.CAPTURED_BEST_PEER: "MISS",  # 22.3 > 22.2
        gr.CAPTURED_FLOOR: "PASS",  # 22.3 / 22.0 = 1.014
        gr.TF32_TORCH_TF32: "n/a",  # no TF32 rows measured
    }
    # the TF32 row against the faster of torch's TF32 eager and graph steps
    tf32 = {**wide, gr.GBP_TF32: 4.6, gr.TORCH_TF32_EAGER: 4.9, gr.TORCH_TF32_GRAPH: 4.5}
    tf32_ratios = gr.compute_ratios(tf32)
    assert tf32_ratios[gr.TF32_TORCH_TF32] == pytest.approx(4.6 / 4.5)
    verdicts = {t["ratio"]: t["verdict"] for t in gr.evaluate_targets("wide", tf32_ratios)}
    assert verdicts[gr.TF32_TORCH_TF32] == "MISS"
    faster = gr.compute_ratios({**tf32, gr.GBP_TF32: 4.4, gr.TORCH_TF32_GRAPH: None})
    assert faster[gr.TF32_TORCH_TF32] == pytest.approx(4.4 / 4.9)
    verdicts = {t["ratio"]: t["verdict"] for t in gr.evaluate_targets("wide-b512", faster)}
    assert verdicts[gr.TF32_TORCH_TF32] == "PASS"
    assert gr.TF32_TORCH_TF32 not in {t["ratio"] for t in small}  # no TF32 target there
    eager_floor = gr.evaluate_targets("wide", gr.compute_ratios(wide), floor_mode="eager")
    assert eager_floor[1]["verdict"] == "n/a" and "not captured" in eager_floor[1]["why"]
    missing = gr.evaluate_targets("wide-b512", gr.compute_ratios({}))
    assert [t["verdict"] for t in missing] == ["n/a", "n/a", "n/a"]
    assert gr.evaluate_targets("some-other-net", gr.compute_ratios(FULL)) == []


def test_table_cells_for_ok_error_missing_and_eager_floor() -> None:
    result = _fake_result(
        "wide-b512",
        {
            gr.GBP_EAGER: 1.5,
            gr.GBP_CAPTURED: 0.9,
            gr.TORCH_EAGER: None,  # missing: torch not importable
            gr.TORCH_GRAPH: None,
            gr.JAX_JIT: 0.86,
            gr.GEMM_FLOOR: 0.85,
        },
        **{gr.GEMM_FLOOR: {"mode": "eager", "note": "capture failed"}},
    )
    result["contenders"][gr.TORCH_GRAPH] = gr.contender_entry(
        gr.TORCH_GRAPH, "error", error="setup: RuntimeError: boom"
    )
    result = gr.network_result(BY_NAME["wide-b512"], result["contenders"])
    (row,) = gr.table_rows([result])
    assert len(row) == len(gr.MAIN_HEAD)
    cells = dict(zip(gr.MAIN_HEAD, row, strict=True))
    assert cells["gbp eager ms"] == "1.500"
    assert cells["torch eager ms"] == "n/a"
    assert cells["torch graph ms"] == "ERR"
    assert cells["GEMM floor ms"] == "0.850 (eager)"
    assert cells[gr.CAPTURED_BEST_PEER] == f"{0.9 / 0.86:.2f}"
    assert cells[gr.CAPTURED_TORCH_GRAPH] == "n/a"
    assert cells[gr.EAGER_TORCH_EAGER] == "n/a"
    assert cells["check"].startswith("ok")
    text = gr.report([result])
    assert "targets:" in text and "GEMM floor not captured" in text
    assert "wide-b512 / torch graph: error: setup: RuntimeError: boom" in text
    assert "wide-b512 / torch eager: missing: torch missing" in text
    lines = common.format_table(gr.MAIN_HEAD, gr.table_rows([result])).splitlines()
    assert lines[0].startswith("network") and set(lines[1]) <= {"-", "|", " "}
    assert not gr.run_failed([result])  # a peer's error does not fail the run


def test_failed_check_and_own_errors_fail_the_run() -> None:
    bad_check = {"ok": False, "loss_rel": 0.1, "update_rel": 0.5, "summary": "FAIL"}
    result = _fake_result(
        "seed-2layer", {gr.GBP_EAGER: 0.4, gr.TORCH_EAGER: 0.7}, torch_eager={"check": bad_check}
    )
    assert gr.check_summary(result["contenders"]) == "FAIL: torch eager"
    assert gr.run_failed([result])
    crashed = _fake_result("seed-2layer", {gr.GBP_EAGER: 0.4})
    crashed["contenders"][gr.GBP_CAPTURED] = gr.contender_entry(
        gr.GBP_CAPTURED, "error", error="first step: CaptureError: x"
    )
    assert gr.run_failed([crashed])
    assert gr.check_summary({}) == "n/a"


def test_detail_rows_have_tflops() -> None:
    result = _fake_result("wide", {gr.GBP_CAPTURED: 20.0})
    (row,) = gr.detail_rows([result])
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
    stats = common.summarize([1.0, 2.0, 3.0, 4.0])
    assert stats["median_ms"] == 2.5 and stats["samples_ms"] == [1.0, 2.0, 3.0, 4.0]
    assert stats["p10_ms"] < stats["median_ms"] < stats["p90_ms"]


# --- JSON and plot --------------------------------------------------------------------------------
def _fake_payload() -> dict[str, Any]:
    results = [
        _fake_result("seed-2layer", FULL),
        _fake_result(
            "wide",
            {**{k: v * 500 for k, v in FULL.items()}, gr.TORCH_EAGER: None},
            gemm_floor={"mode": "eager"},
        ),
    ]
    return {
        "schema": gr.SCHEMA,
        "date": "2026-11-22T10:00:00+00:00",
        "device": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
        "versions": {"cupy": "14.2.0", "torch": None},
        "tf32": {"CUPY_TF32_before": None},
        "settings": {"lr": common.LR, "warmup": 20, "iters": 50, "reps": 10},
        "results": results,
    }


def test_json_round_trip(tmp_path: Path) -> None:
    payload = _fake_payload()
    path = tmp_path / "sub" / "r.json"
    gr.write_json(path, payload)
    back = gr.read_json(path)
    assert back == json.loads(json.dumps(payload))
    wide = back["results"][1]
    assert wide["contenders"][gr.TORCH_EAGER]["status"] == "missing"
    assert wide["contenders"][gr.GEMM_FLOOR]["mode"] == "eager"
    assert list(wide["contenders"]) == list(gr.CONTENDERS)
    assert set(wide["ratios"]) == set(gr.RATIOS)
    assert len(back["results"][0]["contenders"][gr.GBP_EAGER]["samples_ms"]) == 3
    with pytest.raises(ValueError, match="schema"):
        gr.validate_payload({**payload, "schema": "other"})
    broken = json.loads(json.dumps(payload))
    del broken["results"][0]["contenders"][gr.JAX_JIT]["p90_ms"]
    with pytest.raises(ValueError, match="p90_ms"):
        gr.validate_payload(broken)


def test_names_and_versions() -> None:
    assert gr.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gr.device_slug("  ") == "gpu"
    path = gr.default_json_path("NVIDIA H200", datetime.date(2026, 11, 22))
    assert path.name == "gpu_step_nvidia-h200_2026-11-22.json"
    assert path.parent == Path(gs.__file__).resolve().parent / "results"
    assert common.cuda_version_str(13000) == "13.0" and common.cuda_version_str(12080) == "12.8"
    assert common.cuda_version_str(None) is None


def test_plot_results_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.plot import plot_results

    path = tmp_path / "r.json"
    gr.write_json(path, _fake_payload())
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
    plan = gf.floor_plan(net)
    layers = len(net.layers)
    assert len(plan) == 3 * layers - 1
    assert gf.plan_flops(plan, _shapes(net)) == net.flops_per_step
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
    init = common.gb_params(build_model(net, device="cpu", seed=0))
    bufs = gf.floor_buffers(np, net, init, x)
    plan = gf.floor_plan(net)
    gf.poison_outputs(plan, bufs)
    assert math.isnan(gf.plan_error(np, plan, bufs))  # unwritten outputs fail the check
    gf.run_plan(_numpy_gemm, plan, bufs)
    err = gf.plan_error(np, plan, bufs)
    assert err < 1e-5
    assert gf.gemm_check(err)["ok"] and not gf.gemm_check(float("nan"))["ok"]
    assert not gf.gemm_check(3e-4)["ok"]  # TF32-sized errors fail
    assert np.all(np.isfinite(bufs["dW0"])) and np.any(bufs["dW0"] != 0)


# --- the one-step check, and the PyTorch / JAX twins on the CPU -----------------------------------
def test_compare_step_flags_a_wrong_update() -> None:
    ref = _same_step()
    assert common.compare_step(ref, ref.loss, ref.after)["ok"]
    off = [(w + 0.01, b) for w, b in ref.after]  # 10% of the update
    check = common.compare_step(ref, ref.loss, off)
    assert not check["ok"] and check["summary"].startswith("FAIL")
    assert not common.compare_step(ref, ref.loss * 1.01, ref.after)["ok"]
    nan = [(w * np.nan, b) for w, b in ref.after]
    assert not common.compare_step(ref, ref.loss, nan)["ok"]


def _reference(
    name: str,
) -> tuple[Any, np.ndarray, np.ndarray, common.Params, common.ReferenceStep]:
    """A network's batch, initial weights and float64 reference step (gpubackprop's
    ``train_step`` on the CPU passes the check against it)."""
    net = BY_NAME[name]
    x, y = make_batch(net)
    model = build_model(net, device="cpu", seed=0)
    init = common.gb_params(model)
    ref = common.reference_step(net, x, y, init)
    loss = model.train_step(x, y, net.loss, gb.optim.SGD(common.LR))
    check = common.compare_step(ref, loss, common.gb_params(model))
    assert check["ok"], check
    return net, x, y, init, ref


@pytest.mark.parametrize("name", CPU_SIZED)
def test_torch_twin_matches_gpubackprop_on_cpu(name: str) -> None:
    torch = pytest.importorskip("torch")
    net, x, y, init, ref = _reference(name)
    device = torch.device("cpu")
    model = common.build_torch_model(net, init, device)
    assert [p.dtype for p in model.parameters()] == [torch.float32] * (2 * len(net.layers))
    np.testing.assert_array_equal(common.torch_params(model)[0][0], init[0][0])
    opt = common.torch_sgd(model)
    tx, ty = common.torch_batch(x, y, device)
    loss = common.torch_train_step(model, opt, common.torch_loss_fn(net), tx, ty)
    check = common.compare_step(ref, float(loss.item()), common.torch_params(model))
    assert check["ok"], check


def test_gb_params_round_trip_through_load_params() -> None:
    net = BY_NAME["seed-2layer"]
    init = common.gb_params(build_model(net, device="cpu", seed=0))
    other = build_model(net, device="cpu", seed=123)
    assert not np.array_equal(common.gb_params(other)[0][0], init[0][0])
    common.load_params(other, init)
    for (w, b), (w2, b2) in zip(common.gb_params(other), init, strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)


@pytest.mark.parametrize("name", ["seed-2layer", "mnist-mlp", "deep-narrow"])
def test_jax_twin_matches_gpubackprop_on_cpu(name: str) -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_default_matmul_precision", "highest")
    net, x, y, init, ref = _reference(name)
    device = jax.devices("cpu")[0]
    step = jax.jit(jt.make_jax_step(net), donate_argnums=(0,))
    params = jt.jax_params(init, device)
    jx, jy = jt.jax_batch(x, y, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "donated buffers were not usable" on the CPU
        new, loss = step(params, jx, jy)
    check = common.compare_step(ref, float(loss), jt.jax_to_host(new))
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

    def first_step(self) -> tuple[float, common.Params]:
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
    assert list(c) == list(gr.CONTENDERS)
    assert c[gr.GBP_EAGER]["status"] == "ok" and len(c[gr.GBP_EAGER]["samples_ms"]) == 3
    assert c[gr.GBP_EAGER]["check"]["ok"]
    assert c[gr.TORCH_EAGER]["status"] == "ok"
    assert c[gr.TORCH_EAGER]["check"]["ok"], c[gr.TORCH_EAGER]["check"]
    assert c[gr.GBP_CAPTURED]["status"] == "error"
    assert c[gr.GBP_CAPTURED]["error"].startswith("setup: ConfigError")
    assert c[gr.TORCH_GRAPH]["status"] == "error"
    assert "timing: RuntimeError: lost the device" in c[gr.TORCH_GRAPH]["error"]
    assert c[gr.TORCH_GRAPH]["check"]["ok"]  # its first step was right
    assert c[gr.JAX_JIT]["status"] == "missing"
    assert c[gr.JAX_JIT]["error"] == "jax is not importable (test)"
    # no CuPy here: the floor's cuBLAS handle (or its class) fails at setup, contained
    assert c[gr.GEMM_FLOOR]["status"] == "error"
    assert c[gr.GEMM_FLOOR]["error"].startswith("setup: ")
    assert "Traceback" in c[gr.GEMM_FLOOR]["traceback"]
    assert result["ratios"][gr.EAGER_TORCH_EAGER] is not None
    assert result["ratios"][gr.CAPTURED_BEST_PEER] is None
    assert gr.run_failed([result])  # gbp captured raised
    out = capsys.readouterr().out
    assert "gbp captured: setup failed: ConfigError" in out
    text = gr.report([result])
    assert "mnist-mlp / torch graph: error: timing: RuntimeError" in text
    assert "mnist-mlp / jax jit: missing: jax is not importable (test)" in text


# --- the LSTM LM's rows (bench/lstm_lm.py), with the contender classes run on the CPU ---------
def test_gpu_bench_runs_the_lstm_rows(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch = pytest.importorskip("torch")
    small = LSTMNetwork("lstm-small", batch=3, steps=5, vocab=11, embed=6, hidden=7)

    class CpuEager(_WallClock, gs.LstmGbpEager):
        device = "cpu"

    class CpuCaptured(_WallClock, gs.LstmGbpCaptured):
        device = "cpu"  # compile_step refuses a CPU model: a setup failure

    class CpuTorchEager(_WallClock, gs.LstmTorchEager):
        device = "cpu"

    class CpuTorchGraph(_WallClock, gs.LstmTorchGraph):
        device = "cpu"  # torch.cuda.Stream needs CUDA: a setup failure

    for name, cls in [
        ("LstmGbpEager", CpuEager),
        ("LstmGbpCaptured", CpuCaptured),
        ("LstmTorchEager", CpuTorchEager),
        ("LstmTorchGraph", CpuTorchGraph),
    ]:
        monkeypatch.setattr(gs, name, cls)
    assert gs.get_networks("lstm-lm", gs.BENCH_NETWORKS) == [LSTM_LM]
    assert gs.parse_args(["--networks", "lstm-lm"]).network_list == [LSTM_LM]
    libs = gs.Libraries(cp=np, torch=torch, jax_why="jax is not importable (test)")
    args = gs.parse_args(["--warmup", "1", "--iters", "2", "--reps", "2"])
    result = gs.run_network(small, libs, args)
    c = result["contenders"]
    assert list(c) == list(gs.LSTM_CONTENDERS)  # no JAX, floor or TF32 rows
    for key in (gr.GBP_EAGER, gr.TORCH_EAGER):
        assert c[key]["status"] == "ok" and len(c[key]["samples_ms"]) == 2
        assert c[key]["check"]["ok"], c[key]["check"]
    assert c[gr.GBP_CAPTURED]["error"].startswith("setup: ConfigError")
    assert c[gr.TORCH_GRAPH]["status"] == "error"
    assert result["ratios"][gr.EAGER_TORCH_EAGER] is not None
    assert gr.TARGETS["lstm-lm"] == [(gr.CAPTURED_TORCH_GRAPH, 1.0)]
    assert "gbp captured: setup failed: ConfigError" in capsys.readouterr().out


def test_jax_contender_class_runs_on_cpu() -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_default_matmul_precision", "highest")
    net, x, y, init, ref = _reference("mnist-mlp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # donation is not implemented on the CPU
        c = gs.JaxJit(jax, jax.devices("cpu")[0], net, init, x, y)
        loss, params = c.first_step()
        assert common.compare_step(ref, loss, params)["ok"]
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
    monkeypatch.setattr(gs, "no_gpu_reason", lambda: None)
    monkeypatch.setattr(gs, "cupy_module", lambda: np)
    monkeypatch.setattr(gs, "import_torch", lambda: (torch, None))
    monkeypatch.setattr(gs, "GbpEager", _CpuGbpEager)
    monkeypatch.setattr(gs, "TorchEager", _CpuTorchEager)
    path = tmp_path / "r.json"
    argv = ["--networks", "seed-2layer", "--contenders", "gbp_eager,torch_eager,gemm_floor"]
    code = gs.main([*argv, "--warmup", "1", "--iters", "2", "--reps", "2", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out  # only a peer (the GEMM floor: no CuPy) failed
    assert "warning: gpubackprop's cuBLAS handle" in out
    payload = gr.read_json(path)
    (result,) = payload["results"]
    statuses = {k: e["status"] for k, e in result["contenders"].items()}
    assert statuses == {
        gr.GBP_EAGER: "ok",
        gr.GBP_CAPTURED: "missing",
        gr.TORCH_EAGER: "ok",
        gr.TORCH_GRAPH: "missing",
        gr.JAX_JIT: "missing",
        gr.GEMM_FLOOR: "error",
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
    payload = gr.read_json(path)
    for r in payload["results"]:
        for key in gr.OWN:
            entry = r["contenders"][key]
            assert entry["status"] == "ok", (r["network"], key, entry["error"], out)
        for key, entry in r["contenders"].items():
            if entry["check"] is not None:
                assert entry["check"]["ok"], (r["network"], key, entry["check"])
    assert code == 0, out


# --- --quick, the TF32 rows --------------------------------------------------------------------
def test_quick_keeps_every_contender_and_network_with_fewer_steps() -> None:
    args = gs.parse_args(["--quick"])
    assert (args.warmup, args.iters, args.reps) == (5, 20, 3)
    assert args.contenders == gr.ALL_CONTENDERS
    assert args.network_list == [*GPU_NETWORKS, LSTM_LM]  # the LSTM LM runs with --quick too
    assert gs.parse_args(["--quick", "--reps", "4"]).reps == 4  # explicit values win
    full = gs.parse_args([])
    assert (full.warmup, full.iters, full.reps, full.quick) == (20, 50, 10, False)
    with pytest.raises(SystemExit):
        gs.parse_args(["--quick", "--iters", "0"])


def test_tf32_rows_run_on_the_wide_networks_only() -> None:
    assert gs.network_contenders(BY_NAME["wide"], gr.ALL_CONTENDERS) == gr.ALL_CONTENDERS
    assert gs.network_contenders(BY_NAME["wide-b512"], gr.ALL_CONTENDERS) == gr.ALL_CONTENDERS
    assert gs.network_contenders(BY_NAME["mnist-mlp"], gr.ALL_CONTENDERS) == gr.CONTENDERS
    picked = (gr.GBP_EAGER, gr.TORCH_TF32_GRAPH)
    assert gs.network_contenders(BY_NAME["seed-2layer"], picked) == (gr.GBP_EAGER,)


def test_torch_tf32_sets_the_flag_inside_and_restores_it() -> None:
    torch = pytest.importorskip("torch")
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        with gs.torch_tf32(torch):
            assert matmul.allow_tf32
        assert not matmul.allow_tf32
        with pytest.raises(RuntimeError), gs.torch_tf32(torch):
            raise RuntimeError("step failed")
        assert not matmul.allow_tf32
    finally:
        matmul.allow_tf32 = before


class _CpuTorchTf32Eager(_WallClock, gs.TorchTf32Eager):
    device = "cpu"


def test_tf32_rows_skip_without_precision_and_check_against_float32(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a gpubackprop without ``precision=``, the gbp TF32 row is skipped, not an error;
    torch's TF32 row (on the CPU: plain float32) passes the TF32 check."""
    torch = pytest.importorskip("torch")

    def old_build_model(*args: Any, precision: str | None = None, **kwargs: Any) -> Any:
        if precision is not None:
            raise TypeError("Sequential.__init__() got an unexpected keyword argument 'precision'")
        return build_model(*args, **kwargs)

    monkeypatch.setattr(gs, "build_model", old_build_model)
    monkeypatch.setattr(gs, "GbpEager", _CpuGbpEager)
    monkeypatch.setattr(gs, "TorchTf32Eager", _CpuTorchTf32Eager)
    libs = gs.Libraries(cp=np, torch=torch)
    contenders = "gbp_eager,gbp_tf32_captured,torch_tf32_eager"
    args = gs.parse_args(
        ["--contenders", contenders, "--warmup", "0", "--iters", "1", "--reps", "1"]
    )
    small = Network("tiny-wide", 16, (32, 32, 10), "relu", "cross_entropy")
    monkeypatch.setattr(gs, "TF32_NETWORKS", ("tiny-wide",))
    result = gs.run_network(small, libs, args)
    c = result["contenders"]
    assert c[gr.GBP_TF32]["status"] == "missing"
    assert c[gr.GBP_TF32]["error"].startswith("skipped: this gpubackprop does not take precision=")
    assert c[gr.TORCH_TF32_EAGER]["status"] == "ok" and c[gr.TORCH_TF32_EAGER]["check"]["ok"]
    assert c[gr.TORCH_GRAPH]["status"] == "missing"  # not selected
    assert not gr.run_failed([result])  # a skipped TF32 row does not fail the run
    assert "gpubackprop tf32 (captured): skipped" in capsys.readouterr().out
    text = gr.report([result])
    assert "tiny-wide / gpubackprop tf32 (captured): missing: skipped" in text
    assert "TF32 (target: tf32 <= 1.0x the faster torch TF32 step)" in text
    assert not torch.backends.cuda.matmul.allow_tf32  # restored after the TF32 row


def test_tf32_table_and_check_use_the_tf32_rows() -> None:
    tf32 = {gr.GBP_TF32: 4.6, gr.TORCH_TF32_EAGER: 4.9, gr.TORCH_TF32_GRAPH: 4.5}
    loose = {"ok": True, "loss_rel": 2e-4, "update_rel": 8e-3, "summary": "ok"}
    result = _fake_result("wide", {**FULL, **tf32}, gbp_tf32_captured={"check": loose})
    (row,) = gr.tf32_rows([result])
    cells = dict(zip(gr.TF32_HEAD, row, strict=True))
    assert cells["gpubackprop tf32 (captured) ms"] == "4.600"
    assert cells[gr.TF32_TORCH_TF32] == f"{4.6 / 4.5:.2f}"
    assert cells["tf32 check"] == "ok (max loss 2e-04, dW 8e-03)"
    (main_row,) = gr.table_rows([result])
    assert "8e-03" not in main_row[-1]  # the float32 check column leaves the TF32 rows out
    assert gr.tf32_rows([_fake_result("seed-2layer", FULL)]) == []
    detail = [r[1] for r in gr.detail_rows([result])]
    assert "torch tf32 graph" in detail and "gpubackprop tf32 (captured)" in detail
