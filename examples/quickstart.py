"""The README's tour: a device, a model, training, explicit gradients, a gradient check.

Run: python examples/quickstart.py   (a few seconds on a CPU; README.md shows this file)
"""

import numpy as np
from sklearn.datasets import load_digits

import gpubackprop as gb

# 1. The device flag: "cpu", "cuda", "cuda:N" or "auto" (the GPU when CuPy and a GPU
#    are there, else the CPU; model.backend.reason says which and why). Asking for
#    "cuda" without a GPU raises DeviceError: no silent fallback.
model = gb.Sequential(
    [gb.Dense(64, 128, "relu"), gb.Dense(128, 10)],  # weights are (out, in)
    device="auto", dtype="float32", seed=0,
)
print(model)
print("device:", model.device, "-", model.backend.reason)

# 2. Train on scikit-learn's 8x8 handwritten digits (bundled, no download). fit takes
#    NumPy arrays and copies each batch to the model's device.
x, y = load_digits(return_X_y=True)
x = x / 16.0
loss = gb.losses.SoftmaxCrossEntropy()  # from logits, integer labels
history = model.fit(
    x[:1500], y[:1500], loss=loss, optimizer=gb.optim.Adam(lr=1e-2),
    epochs=10, batch_size=64, validation_data=(x[1500:], y[1500:]),
)
print("val accuracy per epoch:", [round(a, 3) for a in history["val_accuracy"]])
metrics = model.evaluate(x[1500:], y[1500:], loss)
print("held out:", metrics)

# 3. Gradients are explicit. One backward pass writes dW = δᵀ a and db = δᵀ 1 for
#    every layer into one flat buffer; model.gradients() shows it per layer.
xb, yb = model.to_device(x[:32]), model.to_device(y[:32])
value = model.loss_and_grad(xb, yb, loss)
for name, grad in model.gradients().items():
    print(f"{name:9s} shape {tuple(grad.shape)}")  # 0.weight (128, 64), 0.bias (128,), ...
print(f"loss on 32 samples: {value:.4f}")

# 4. Check a backward pass against central finite differences (float64).
small = gb.Sequential([gb.Dense(5, 4, "gelu"), gb.Dense(4, 3)], dtype="float64", seed=0)
x_small = np.random.default_rng(0).standard_normal((6, 5))
print(gb.gradcheck(small, x_small, np.array([0, 1, 2, 0, 1, 2]), "cross_entropy"))
