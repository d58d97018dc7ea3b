"""Interop: PyTorch tensors in by DLPack, a model to and from torch.nn, ONNX export.

Run: python examples/interop.py
Needs PyTorch (pip install torch) for the first two parts and gpubackprop[onnx] for
the third; a part whose package is missing says so and is skipped.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np

import gpubackprop as gb


def _missing(*packages: str) -> list[str]:
    return [name for name in packages if importlib.util.find_spec(name) is None]


def _relative(out: np.ndarray, reference: np.ndarray) -> float:
    """max |out − reference| / max |reference|."""
    return float(np.abs(out - reference).max() / np.abs(reference).max())


def main() -> dict[str, float]:
    """Run every part whose packages are installed; the relative output differences."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 4)).astype(np.float32)
    labels = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    model = gb.Sequential(
        [gb.Dense(4, 16, "gelu"), gb.Dense(16, 16, "silu"), gb.Dense(16, 2)],
        device="cpu", seed=0,
    )
    diffs: dict[str, float] = {}
    if _missing("torch"):
        print("PyTorch is not installed (pip install torch): skipping DLPack and to/from_torch")
    else:
        import torch

        # 1. DLPack: torch tensors go straight into fit / predict, no copy.
        xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
        print("zero-copy input:", model.prepare_input(xt).ctypes.data == xt.data_ptr())
        model.fit(xt, yt, loss="softmax_cross_entropy", optimizer=gb.optim.Adam(0.01),
                  epochs=20, batch_size=32, verbose=False)
        print("accuracy:", model.evaluate(xt, yt, loss="softmax_cross_entropy")["accuracy"])

        # 2. The same network as a torch.nn.Sequential, and back.
        module = gb.to_torch(model)
        print(module)
        with torch.no_grad():
            out = module(xt).numpy()
        diffs["to_torch"] = _relative(out, model.predict(x))
        diffs["from_torch"] = _relative(gb.from_torch(module, device="cpu").predict(x), out)

    if _missing("onnx", "onnxruntime"):
        print("onnx / onnxruntime are not installed (pip install gpubackprop[onnx]): "
              "skipping the ONNX export")
    else:
        import onnxruntime

        # 3. ONNX: export the inference graph and run it in onnxruntime.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            gb.export_onnx(model, path)
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            y = session.run(["y"], {"x": x})[0]
        diffs["onnx"] = _relative(y, model.predict(x))
    for name, diff in diffs.items():
        print(f"{name:10s} relative difference from the reference: {diff:.2e}")
    return diffs


if __name__ == "__main__":
    main()
