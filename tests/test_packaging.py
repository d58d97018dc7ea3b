"""The wheel ships the kernel sources (CUDA, and the CPU cell's C++), where the kernel
loader and the CPU cell's build look first."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_the_kernel_sources(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("gpubackprop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted(p.name for p in (ROOT / "kernels").glob("*.cu*"))
    sources += ["cpu_recurrent.cpp", "recurrent_math.cuh"]
    assert sources, "no kernel sources in kernels/"
    for name in sources:
        assert f"gpubackprop/_kernels/{name}" in names
    assert "gpubackprop/kernels.py" in names
