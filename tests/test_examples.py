"""The examples in examples/ run and do what the README says they do."""

from __future__ import annotations

import importlib.util
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
    metrics = _load("quickstart").main(["--device", "cpu"])
    assert metrics["accuracy"] > 0.8
    assert "0.weight" in capsys.readouterr().out


def test_interop_runs_or_skips_what_is_missing(capsys) -> None:
    diffs = _load("interop").main()
    assert all(d < 1e-6 for d in diffs.values()), diffs
    out = capsys.readouterr().out
    assert ("zero-copy input: True" in out) == ("to_torch" in diffs)


def test_sequence_tagging_learns_the_tags(capsys) -> None:
    metrics = _load("sequence_tagging").main(["--device", "cpu"])
    assert metrics["accuracy"] > 0.99
    assert "-> logits (2, 12, 4)" in capsys.readouterr().out
