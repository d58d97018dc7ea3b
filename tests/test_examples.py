"""The examples in examples/ run and do what the README says they do."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_two_layer_matches_the_notes_loop(capsys) -> None:
    # main() raises SystemExit if the engine's loss leaves the notes' loss
    final = _load("seed_two_layer").main(["--steps", "30"])
    out = capsys.readouterr().out
    assert "notes loss" in out
    first = float(out.splitlines()[0].split()[-1])
    assert final < 0.8 * first


def test_quickstart_trains(capsys) -> None:
    # the README's tour, a script without main(): its globals after the run
    tour = runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    assert tour["metrics"]["accuracy"] > 0.8
    assert "0.weight" in capsys.readouterr().out


def test_interop_runs_or_skips_what_is_missing(capsys) -> None:
    diffs = _load("interop").main()
    assert all(d < 1e-6 for d in diffs.values()), diffs
    out = capsys.readouterr().out
    assert ("zero-copy input: True" in out) == ("to_torch" in diffs)


def test_dropout_layernorm_trains_and_resumes_bit_for_bit(capsys) -> None:
    metrics = _load("dropout_layernorm").main(["--device", "cpu"])
    assert metrics["accuracy"] > 0.9
    assert metrics["resumed_same"] == 1.0
    assert "eval mode is deterministic: True" in capsys.readouterr().out


def test_lstm_sequence_beats_the_baseline(capsys) -> None:
    mse = _load("lstm_sequence").main(["--device", "cpu"])
    assert mse["last"] < 0.6 * mse["baseline"] and mse["last"] < 0.1 * mse["first"], mse
    assert "state carried across windows" in capsys.readouterr().out


def test_sequence_tagging_learns_the_tags(capsys) -> None:
    metrics = _load("sequence_tagging").main(["--device", "cpu"])
    assert metrics["accuracy"] > 0.99
    assert "-> logits (2, 12, 4)" in capsys.readouterr().out


def test_distributed_mnist_on_one_and_two_ranks(capsys) -> None:
    """One rank in this process; two under mpiexec (skipped without it) print the
    same held-out metrics, as the example's docstring says."""
    import os
    import subprocess
    import sys

    import pytest

    pytest.importorskip("mpi4py", reason="pip install 'gpubackprop[mpi]'")
    one = _load("distributed_mnist").main(["--device", "cpu", "--epochs", "3"])
    assert one["accuracy"] > 0.85 and one["restored_same"] == 1.0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("1 rank(s)"))
    from gpubackprop.distributed.transport import find_mpiexec

    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec: pip install 'gpubackprop[mpi]'")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    two = subprocess.run(
        [mpiexec, "-n", "2", sys.executable, str(EXAMPLES / "distributed_mnist.py"),
         "--device", "cpu", "--epochs", "3"],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    ).stdout
    held_out = next(s for s in two.splitlines() if s.startswith("2 rank(s)"))
    # the same metrics to float rounding: compare the accuracy exactly, the loss to 1e-5
    acc = [float(s.split("'accuracy': ")[1].rstrip("}")) for s in (line, held_out)]
    loss = [float(s.split("'loss': ")[1].split(",")[0]) for s in (line, held_out)]
    assert acc[0] == acc[1] and abs(loss[0] - loss[1]) < 1e-5, (line, held_out)
    assert "predictions equal: True" in two
