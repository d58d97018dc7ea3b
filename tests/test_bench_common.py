"""bench/common.py: what the CPU and GPU benchmarks share, and the engine step they time."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

import gpubackprop as gb
from bench import common
from bench.networks import NETWORKS, Network, build_model, make_batch

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
def _step(scale: float = 0.1) -> common.ReferenceStep:
    rng = np.random.default_rng(0)
    before = [(rng.standard_normal((8, 5)).astype(np.float32), np.zeros(8, np.float32))]
    after = [(w - scale * np.sign(w), b - scale) for w, b in before]
    return common.ReferenceStep(before, 2.0, after, loss_rtol=1e-4, update_rtol=1e-2)


def test_update_error_is_relative_to_the_update_norm() -> None:
    ref = _step()
    assert common.update_error(ref, ref.after) == 0.0
    off = [(w + 0.001, b - 0.001) for w, b in ref.after]  # 1% of every parameter's update
    err = common.update_error(ref, off)
    # less the float32 storage rounding that is forgiven: ½ ulp of each weight (~6e-8)
    assert err == pytest.approx(0.01, rel=1e-3)
    weights_only = [(w + 0.001, b) for w, b in ref.after]  # [W | b] is one tensor: 40 of 48
    assert common.update_error(ref, weights_only) == pytest.approx(
        0.01 * math.sqrt(40 / 48), rel=1e-3
    )
    nan = [(w * np.nan, b) for w, b in ref.after]
    assert math.isnan(common.update_error(ref, nan))


def test_update_error_forgives_storage_rounding_and_nothing_more() -> None:
    w0 = np.full((4, 4), 1000.0, np.float32)
    ulp = float(np.spacing(w0[0, 0]))
    before = [(w0, np.zeros(4, np.float32))]
    after = [(w0.astype(np.float64) + 0.3 * ulp, np.zeros(4))]  # the exact update: 0.3 ulp
    ref = common.ReferenceStep(before, 1.0, after, loss_rtol=1e-4, update_rtol=1e-2)
    rounded = [(w0.copy(), np.zeros(4, np.float32))]  # float32 rounds it away: forgiven
    assert common.update_error(ref, rounded) == 0.0
    one_ulp = [(np.nextafter(w0, np.float32(np.inf)), np.zeros(4, np.float32))]
    assert common.update_error(ref, one_ulp) == pytest.approx(0.2 / 0.3)  # 0.7 ulp off


def test_compare_step_tolerances() -> None:
    ref = _step()
    ok = common.compare_step(ref, 2.0, ref.after)
    assert ok["ok"] and ok["summary"].startswith("ok") and ok["loss_rel"] == 0.0
    assert (ok["loss_rtol"], ok["update_rtol"]) == (1e-4, 1e-2)
    off = [(w + 0.0015, b + 0.0015) for w, b in ref.after]  # 1.5% of the update
    strict = common.compare_step(ref, 2.0 * (1 + 5e-4), off)
    assert not strict["ok"] and strict["summary"].startswith("FAIL")
    loose = common.compare_step(ref, 2.0 * (1 + 5e-4), off, loss_rtol=1e-3, update_rtol=3e-2)
    assert loose["ok"], loose
    assert not common.compare_step(ref, 2.01, ref.after, loss_rtol=1e-3)["ok"]


def test_row_basis_is_orthonormal_and_spans_the_rows() -> None:
    rows = np.random.default_rng(1).standard_normal((3, 7))
    rows = np.vstack([rows, rows[0] + rows[1]])  # a dependent row adds nothing
    basis = common.row_basis(rows)
    assert basis.shape == (7, 3)
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rows @ basis @ basis.T, rows, atol=1e-12)


def _wrong_steps(ref: common.ReferenceStep, params: common.Params) -> dict[str, common.Params]:
    """Bugs in a correct float32 step's update: 1% too large, db without 1/B, rows off by one."""
    batch = 1.0 / common.LR  # stands in for B: any factor ≫ 1
    out: dict[str, common.Params] = {"dW x 1.01": [], "db x B": [], "dW rows off by one": []}
    for (w0, b0), (w, b) in zip(ref.before, params, strict=True):
        dw, db = w.astype(np.float64) - w0, b.astype(np.float64) - b0
        out["dW x 1.01"].append(((w0 + 1.01 * dw).astype(np.float32), b))
        out["db x B"].append((w, (b0 + batch * db).astype(np.float32)))
        out["dW rows off by one"].append(((w0 + np.roll(dw, 1, axis=0)).astype(np.float32), b))
    return out


@pytest.mark.parametrize("net", NETWORKS, ids=lambda n: n.name)
def test_reference_check_passes_float32_steps_and_fails_wrong_ones(net: Network) -> None:
    from bench import cpu_step

    x, y = make_batch(net)
    contenders = [cpu_step.gb_contender(net, x, y, 0)]
    init = contenders[0].params()
    if importlib.util.find_spec("torch") is not None:
        contenders.append(cpu_step.torch_contender(net, x, y, init))
    contenders.append(cpu_step.textbook_contender(net, x, y, init))
    ref = common.reference_step(net, x, y, init)
    assert ref.update_rtol == common.CHECK_SIGMAS * common.U32 * common.rounding_factor(net)
    assert ref.update_rtol < 1e-3  # a 1% error fails with room to spare
    steps = {c.name: (c.step(), c.params()) for c in contenders}
    for name, (loss, params) in steps.items():  # float32 rounding passes, ReLU flips too
        check = common.compare_step(ref, loss, params)
        assert check["ok"], (name, check)
    loss, params = steps[cpu_step.GB]
    assert not common.compare_step(ref, loss * 1.01, params)["ok"]
    for bug, wrong in _wrong_steps(ref, params).items():
        failed = common.compare_step(ref, loss, wrong)
        assert not failed["ok"], (bug, failed)
        assert failed["update_rel"] > 10 * ref.update_rtol, (bug, failed)


def test_reference_check_forgives_a_relu_that_rounding_may_flip() -> None:
    net = NETWORKS[1]  # mnist-mlp: ReLU
    x, y = make_batch(net)
    init = common.gb_params(build_model(net, seed=0))
    ref = common.reference_step(net, x, y, init)
    weights = [w.astype(np.float64) for w, _ in init]
    biases = [b.astype(np.float64) for _, b in init]
    z = common.textbook_pass(net, weights, biases, x, y).pre_activations[0]
    sample, unit = np.unravel_index(np.argmin(np.abs(z)), z.shape)
    basis = ref.flip_bases[0]
    assert basis is not None  # the unit closest to 0 is within rounding of it
    row = np.append(x[sample], 1.0)
    assert np.linalg.norm(row - basis @ (basis.T @ row)) < 1e-9 * np.linalg.norm(row)
    # the same step with that ReLU on the other side of 0: its bias moved by 2|z|
    # (~1e-6, a rounding's worth), as float32 rounding may have moved z
    nudged = [b.copy() for b in biases]
    nudged[0][unit] -= 2 * z[sample, unit]
    grads = common.textbook_pass(net, weights, nudged, x, y).grads
    flipped = [
        ((w - common.LR * dw).astype(np.float32), (b - common.LR * db).astype(np.float32))
        for w, b, (dw, db) in zip(weights, biases, grads, strict=True)
    ]
    assert common.compare_step(ref, ref.loss, flipped)["ok"]
    unmasked = common.ReferenceStep(ref.before, ref.loss, ref.after, ref.loss_rtol, ref.update_rtol)
    assert not common.compare_step(unmasked, ref.loss, flipped)["ok"]  # the flip is visible


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
    checks = cpu_step.check_contenders(contenders, common.reference_step(net, x, y, init))
    assert list(checks) == ["gpubackprop", "gb internal", "torch", "textbook numpy"]
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["gb internal"] == checks["gpubackprop"]  # the same engine, the same bits
    timing = cpu_step.Timing([[1.0, 3.0], [2.0, 4.0]]).as_dict()
    assert timing == {
        "median_ms": 2.5,
        "p10_ms": pytest.approx(1.3),
        "p90_ms": pytest.approx(3.7),
        "steps": 4,
        "block_medians_ms": [2.0, 3.0],
    }
