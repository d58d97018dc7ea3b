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
