"""bench/lstm_lm.py and the CPU benchmark's LSTM language model."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

import gpubackprop as gb
from bench import common, lstm_lm
from bench.lstm_lm import LSTM_LM, LSTMNetwork

torch = pytest.importorskip("torch")

#: the benchmark's network at test size (odd sizes: a transposed layout shows)
SMALL = LSTMNetwork("lstm-small", batch=3, steps=5, vocab=11, embed=6, hidden=7)


def test_the_network_and_its_counts() -> None:
    from bench import cpu_step

    assert (LSTM_LM.batch, LSTM_LM.steps, LSTM_LM.vocab, LSTM_LM.embed, LSTM_LM.hidden) == (
        64,
        64,
        128,
        128,
        512,
    )
    assert cpu_step.get_networks("lstm-lm", cpu_step.CPU_NETWORKS) == [LSTM_LM]
    model = lstm_lm.build_lstm_model(SMALL)
    assert sum(v.size for v in model.parameters().values()) == SMALL.num_parameters
    x, y = lstm_lm.make_lstm_batch(SMALL, seed=3)
    assert x.shape == y.shape == (3, 5) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is the next token
    tokens, four_h = 15, 28
    forward = tokens * (four_h * 6 + four_h * 7 + 11 * 7)
    assert SMALL.flops_per_step == 2 * (3 * forward - tokens * four_h * 6)
    assert SMALL.summary()["description"] == "LSTM LM V11-E6-H7, softmax CE, B3 T5"


def test_torch_float64_reference_agrees_with_gpubackprop_float64() -> None:
    """The reference (torch float64 autograd) and gpubackprop's own float64 step are two
    independent float64 steps: they agree to ~1e-12, far below the float32 bounds."""
    x, y = lstm_lm.make_lstm_batch(SMALL)
    model = lstm_lm.build_lstm_model(SMALL, dtype="float64")
    init = lstm_lm.gb_named_params(model)
    ref = lstm_lm.reference_lstm_step(SMALL, x, y, init)
    loss = model.train_step(x, y, "cross_entropy", gb.optim.SGD(common.LR))
    assert abs(loss - ref.loss) <= 1e-12 * ref.loss
    assert lstm_lm.lstm_update_error(ref, lstm_lm.gb_named_params(model)) < 1e-9
    assert ref.update_rtol == common.CHECK_SIGMAS * common.U32 * SMALL.rounding_factor()
    assert LSTM_LM.rounding_factor() * common.CHECK_SIGMAS * common.U32 < 1e-3


def test_float32_contenders_pass_the_check_and_wrong_steps_fail() -> None:
    from bench import cpu_step

    x, y = lstm_lm.make_lstm_batch(SMALL)
    gb_c = cpu_step.gb_lstm_contender(SMALL, x, y, 0)
    init = gb_c.params()
    torch_c = cpu_step.torch_lstm_contender(SMALL, x, y, init)
    ref = lstm_lm.reference_lstm_step(SMALL, x, y, init)
    steps = {c.name: (c.step(), c.params()) for c in (gb_c, torch_c)}
    for name, (loss, params) in steps.items():
        check = lstm_lm.compare_lstm_step(ref, loss, params)
        assert check["ok"], (name, check)
    loss, params = steps[cpu_step.GB]
    assert not lstm_lm.compare_lstm_step(ref, loss * 1.01, params)["ok"]
    for name in params:
        update = params[name].astype(np.float64) - init[name]
        wrong = dict(params, **{name: (init[name] + 1.01 * update).astype(np.float32)})
        failed = lstm_lm.compare_lstm_step(ref, loss, wrong)
        assert not failed["ok"] and failed["update_rel"] > 10 * ref.update_rtol, (name, failed)
    nan = dict(params, **{"2.bias": np.full_like(params["2.bias"], np.nan)})
    assert math.isnan(lstm_lm.lstm_update_error(ref, nan))


def test_gb_and_torch_start_from_the_same_weights() -> None:
    x, _ = lstm_lm.make_lstm_batch(SMALL)
    model = lstm_lm.build_lstm_model(SMALL, seed=5)
    init = lstm_lm.gb_named_params(model)
    twin = lstm_lm.build_torch_lstm(SMALL, init, "cpu")
    np.testing.assert_equal(lstm_lm.torch_named_params(twin), init)
    other = lstm_lm.build_lstm_model(SMALL, seed=6)
    lstm_lm.load_named_params(other, init)
    np.testing.assert_equal(lstm_lm.gb_named_params(other), init)
    logits = twin(torch.from_numpy(x)).detach().numpy()
    ours = np.asarray(model.predict(x)).reshape(-1, SMALL.vocab)
    np.testing.assert_allclose(ours, logits, rtol=1e-4, atol=1e-5)


def test_run_network_on_the_lstm_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import cpu_step

    seen = {}
    real = cpu_step.measure

    def spy(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cpu_step, "measure", spy)
    args = argparse.Namespace(seed=0, quick=True, repeat_seconds=0.01, rounds=2, settle_ms=0.0)
    result = cpu_step.run_network(SMALL, args)
    assert seen == cpu_step.LSTM_QUICK
    assert list(result["timings"]) == [cpu_step.GB, cpu_step.TORCH]
    assert result["check"]["ok"] and list(result["check"]["contenders"]) == ["gpubackprop", "torch"]
    assert result["network"] == "lstm-small" and set(result["paired_ratios"]) == {"torch"}
    assert result["timings"][cpu_step.GB]["steps"] >= cpu_step.LSTM_QUICK["min_steps"]
    cpu_step.print_table([result])  # textbook and gb internal read n/a


def test_torch_lstm_twin_restores_its_initial_weights() -> None:
    init = lstm_lm.gb_named_params(lstm_lm.build_lstm_model(SMALL))
    twin = lstm_lm.build_torch_lstm(SMALL, {k: v * 0 for k, v in init.items()}, "cpu")
    lstm_lm.load_torch_named_params(twin, init)
    np.testing.assert_equal(lstm_lm.torch_named_params(twin), init)
