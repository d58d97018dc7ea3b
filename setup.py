"""Build hook: ship the kernel sources of the top-level ``kernels/`` inside the wheel
(the CUDA sources and the CPU cell's C++ source, compiled at run time).

The kernels live next to the package in the repository (``kernels/``); a wheel
carries a copy in ``gpubackprop/_kernels/``, where the loader
(:func:`gpubackprop.kernels.kernel_dir`) looks first. Everything else about the
build is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithKernels(build_py):
    """build_py that also copies kernels/*.cu, *.cuh and *.cpp into gpubackprop/_kernels/."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "gpubackprop" / "_kernels"
        target.mkdir(parents=True, exist_ok=True)
        sources = [*(ROOT / "kernels").glob("*.cu*"), *(ROOT / "kernels").glob("*.cpp")]
        for source in sorted(sources):
            shutil.copy2(source, target / source.name)


setup(cmdclass={"build_py": BuildPyWithKernels})
