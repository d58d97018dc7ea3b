"""PyTorch and onnx stay optional: ``import gpubackprop`` loads neither, and the
interop functions say which package to install when one is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gpubackprop as gb

ROOT = Path(__file__).resolve().parent.parent


def test_import_gpubackprop_loads_neither_torch_nor_onnx() -> None:
    code = (
        "import gpubackprop, sys; "
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _model() -> gb.Sequential:
    return gb.Sequential([gb.Dense(2, 2, "relu")], device="cpu", seed=0)


@pytest.mark.parametrize("convert", [gb.to_torch, lambda m: gb.from_torch(object())])
def test_without_torch_the_error_says_pip_install_torch(convert, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"needs PyTorch: pip install torch"):
        convert(_model())


def test_without_onnx_the_error_says_the_extra(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install gpubackprop\[onnx\]"):
        gb.export_onnx(_model(), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
