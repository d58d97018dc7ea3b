"""bench/common.py: what the CPU and GPU benchmarks share, and the engine step they time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import gpubackprop as gb
from bench import common
from bench.networks import NETWORKS, build_model, make_batch

BENCH = Path(common.__file__).resolve().parent


# --- ratios and timing statistics -----------------------------------------------------------
def test_ratio_is_none_when_a_side_is_missing() -> None:
    assert common.ratio(1.0, 4.0) == 0.25
    assert common.ratio(None, 4.0) is None and common.ratio(1.0, None) is None
    assert common.ratio(1.0, 0.0) is None and common.ratio(1.0, -2.0) is None


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    num = [[2.0, 2.0, 2.0], [3.0, 30.0, 3.0], [4.0, 4.0, 4.0]]
    den = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 4.0]]
    # per round: 2/1, 3/1, 4/1 -> median 3 (a slow step inside a block does not count)
    assert common.paired_ratio(num, den) == 3.0
    with pytest.raises(ValueError):
        common.paired_ratio(num, den[:2])


def test_summarize_percentiles_and_samples() -> None:
    stats = common.summarize([4.0, 1.0, 3.0, 2.0])
    assert stats["median_ms"] == 2.5
    assert stats["p10_ms"] == pytest.approx(1.3) and stats["p90_ms"] == pytest.approx(3.7)
    assert stats["samples_ms"] == [4.0, 1.0, 3.0, 2.0]
    assert "samples_ms" not in common.summarize([1.0], keep_samples=False)


# --- the error metric and the one-step check --------------------------------------------------
def _step(scale: float = 0.1) -> tuple[common.Params, common.Params]:
    rng = np.random.default_rng(0)
    before = [(rng.standard_normal((8, 5)).astype(np.float32), np.zeros(8, np.float32))]
    after = [(w - scale * np.sign(w), b - scale) for w, b in before]
    return before, after


def test_update_error_is_relative_to_the_update_norm() -> None:
    before, after = _step()
    assert common.update_error(before, after, after) == 0.0
    off = [(w + 0.001, b) for w, b in after]  # 1% of every weight's update
    err = common.update_error(before, after, off)
    assert err == pytest.approx(0.01, rel=1e-3)
    nan = [(w * np.nan, b) for w, b in after]
    assert math.isnan(common.update_error(before, after, nan))


def test_update_error_forgives_rounding_when_the_update_is_below_an_ulp() -> None:
    before = [(np.full((4, 4), 1000.0, np.float32), np.zeros(4, np.float32))]
    same = [(w.copy(), b.copy()) for w, b in before]  # the update rounded away
    one_ulp = [(np.nextafter(w, np.float32(np.inf)), b) for w, b in before]
    assert common.update_error(before, same, one_ulp) <= 1.0


def test_compare_step_tolerances() -> None:
    before, after = _step()
    ok = common.compare_step(before, 2.0, after, 2.0, after)
    assert ok["ok"] and ok["summary"].startswith("ok") and ok["loss_rel"] == 0.0
    off = [(w + 0.0005, b) for w, b in after]  # 0.5% of the update: TF32-sized
    strict = common.compare_step(before, 2.0, after, 2.0 * (1 + 5e-4), off)
    assert not strict["ok"] and strict["summary"].startswith("FAIL")
    loose = common.compare_step(
        before, 2.0, after, 2.0 * (1 + 5e-4), off, loss_rtol=1e-3, update_rtol=3e-2
    )
    assert loose["ok"], loose
    assert not common.compare_step(before, 2.0, after, 2.01, after, loss_rtol=1e-3)["ok"]


def test_summarize_checks() -> None:
    ok = {"ok": True, "loss_rel": 1e-7, "update_rel": 2e-5}
    worse = {"ok": True, "loss_rel": 3e-6, "update_rel": 1e-6}
    assert common.summarize_checks({}) == "n/a"
    assert common.summarize_checks({"a": ok, "b": worse}) == "ok (max loss 3e-06, dW 2e-05)"
    bad = {"ok": False, "loss_rel": 0.1, "update_rel": 0.5}
    assert common.summarize_checks({"a": ok, "torch": bad, "jax": bad}) == "FAIL: torch, jax"


# --- table, JSON, command line ---------------------------------------------------------------
def test_format_table_pads_columns() -> None:
    text = common.format_table(["a", "long head"], [["wide cell", "x"], ["y", ""]])
    assert text.splitlines() == [
        "a         | long head",
        "----------|----------",
        "wide cell | x",
        "y         |",
    ]


def test_write_json_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "r.json"
    common.write_json(path, {"x": [1, 2.5, None]})
    assert json.loads(path.read_text(encoding="utf-8")) == {"x": [1, 2.5, None]}
    assert path.read_text(encoding="utf-8").endswith("}\n")


def test_bench_parser_and_quick_defaults() -> None:
    parser = common.bench_parser("prog x", "desc", NETWORKS, "json help", "quick help")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    full, quick = {"iters": 50, "reps": 10}, {"iters": 20, "reps": 3}
    args = parser.parse_args([])
    common.resolve_quick(args, full, quick)
    assert (args.iters, args.reps, args.quick, args.seed, args.json) == (50, 10, False, 0, None)
    args = parser.parse_args(["--quick", "--iters", "7", "--json", "r.json"])
    common.resolve_quick(args, full, quick)
    assert (args.iters, args.reps, args.json) == (7, 3, Path("r.json"))  # explicit wins
    assert "seed-2layer,mnist-mlp" in parser.format_help()
    assert parser.format_usage().startswith("usage: prog x")


def test_one_line_and_versions() -> None:
    assert common.one_line(ValueError("a\nb")) == "ValueError: a b"
    assert len(common.one_line(RuntimeError("x" * 500), limit=40)) == 40
    assert common.cuda_version_str(12040) == "12.4" and common.cuda_version_str(None) is None
    versions = common.core_versions()
    assert versions["gpubackprop"] == gb.__version__ and versions["numpy"] == np.__version__


def test_host_environment_reuses_gpubackprop_info() -> None:
    env = common.host_environment()
    assert env["date"][:2] == "20" and env["machine"]["logical_cpus"] >= 1
    info = env["gpubackprop_info"]
    assert info["gpubackprop"] == gb.__version__
    assert "devices" in info and "auto device" in info
    json.dumps(env)  # JSON-ready


# --- the public engine step the benchmarks time -----------------------------------------------
def test_public_step_is_train_step() -> None:
    net = NETWORKS[1]  # mnist-mlp: cross-entropy, integer labels
    x, y = make_batch(net)
    ref, model = build_model(net, seed=3), build_model(net, seed=3)
    ref_opt, opt = gb.optim.SGD(common.LR), gb.optim.SGD(common.LR)
    batch = model.prepare_batch(x, y, net.loss)
    assert batch.loss.name == gb.losses.get_loss(net.loss).name
    for _ in range(2):
        expected = ref.train_step(x, y, net.loss, ref_opt)
        value = model.step(batch, opt)
        assert np.ndim(value) == 0 and float(value) == expected
    for (w, b), (w2, b2) in zip(common.gb_params(ref), common.gb_params(model), strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)
    before = common.gb_params(model)
    assert float(model.loss_and_grad_batch(batch)) == ref.loss_and_grad(x, y, net.loss)
    np.testing.assert_array_equal(common.gb_params(model)[0][0], before[0][0])  # no update


def test_cpu_step_quick_check_and_timing_summary() -> None:
    pytest.importorskip("torch")
    from bench import cpu_step

    args = cpu_step.parse_args(["--quick"])
    assert (args.repeat_seconds, args.rounds, args.settle_ms) == (0.2, 3, 50.0)
    assert cpu_step.parse_args(["--quick", "--rounds", "2"]).rounds == 2
    assert cpu_step.parse_args([]).repeat_seconds == 1.0
    net = NETWORKS[0]
    x, y = make_batch(net)
    contenders = [
        cpu_step.gb_contender(net, x, y, 0),
        cpu_step.gb_internal_contender(net, x, y, 0),
    ]
    init = contenders[0].params()
    contenders += [
        cpu_step.torch_contender(net, x, y, init),
        cpu_step.textbook_contender(net, x, y, init),
    ]
    checks = cpu_step.check_contenders(contenders, init)
    assert list(checks) == ["gb internal", "torch", "textbook numpy"]
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["gb internal"]["update_rel"] == 0.0  # the same engine, the same bits
    timing = cpu_step.Timing([[1.0, 3.0], [2.0, 4.0]]).as_dict()
    assert timing == {
        "median_ms": 2.5,
        "p10_ms": pytest.approx(1.3),
        "p90_ms": pytest.approx(3.7),
        "steps": 4,
        "block_medians_ms": [2.0, 3.0],
    }
