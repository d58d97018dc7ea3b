"""bench/gpu_session.sh, dry-run on a machine without a GPU.

The script is the whole GPU check of a session with a lent GPU; here every phase
must still run to its end and report: the GPU tests all skip (exit 0), the
benchmark says there is no GPU (exit 0), and the sanitizer phases are reported as
skipped, which makes the session fail (nothing was checked).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpubackprop.backend import has_gpu

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(has_gpu(), reason="a GPU is here: the script would run for real")
@pytest.mark.skipif(
    shutil.which("compute-sanitizer") is not None, reason="compute-sanitizer is installed"
)
def test_gpu_session_dry_run(tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable,
               GBP_T_TESTS="400", GBP_T_BENCH="200")
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_session.sh")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    summary = (tmp_path / "summary.txt").read_text()
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    lines = {line.split()[0]: line for line in summary.splitlines() if line.strip()}
    assert "passed" in lines["tests"] and "skipped" in lines["tests"], summary
    assert "passed" in lines["bench"], summary
    assert "SKIPPED" in lines["memcheck"] and "SKIPPED" in lines["racecheck"], summary
    assert "total" in lines and "benchmark table" in summary
    assert {"summary.txt", "tests.log", "bench.log"} <= {p.name for p in tmp_path.iterdir()}
    assert len(list(tmp_path.iterdir())) <= 8  # what the device tool brings back


def _collect(*args: str) -> list[str]:
    """The test ids pytest selects with ``args`` (collection only: no GPU needed)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_the_tests_phase_selects_the_gpu_tests_of_the_new_layers() -> None:
    """`pytest -m gpu tests` (phase 1) runs the GPU tests of LayerNorm/Dropout, the
    recurrent kernels and layers, sequences and DLPack."""
    files = {test.split("::")[0] for test in _collect("-m", "gpu", "tests")}
    assert {
        "tests/test_norm_gpu.py", "tests/test_kernels_gpu_recurrent.py",
        "tests/test_sequences.py", "tests/test_recurrent.py", "tests/test_rnn.py",
        "tests/test_dlpack.py", "tests/test_kernels_gpu.py",
    } <= files


def test_the_sanitizer_phases_run_small_cases_of_every_kernel_family() -> None:
    """bench/sanitize_cases.txt (phases 3 and 4): small float32 cases of dense/losses/optim,
    norm.cu, dropout.cu and recurrent.cu's four cells, and nothing large."""
    tests = _collect("@bench/sanitize_cases.txt")
    for family in ("test_layer_norm_kernels", "test_dropout_kernels", "lstm_cell_forward",
                   "lstm_cell_backward", "gru_cell_forward", "gru_cell_backward",
                   "tests/test_kernels_gpu.py"):
        assert any(family in test for test in tests), family
    for large in ("float64", "4097", "shape2", "shape3", "37x129", "1031x301"):
        assert not any(large in test for test in tests), large
    assert len(tests) <= 150  # about 25-40 s under each sanitizer
