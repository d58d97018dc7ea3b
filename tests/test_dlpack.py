"""Arrays of other libraries in, by DLPack (``Backend.adopt``): zero-copy where the
device, dtype and layout fit, a copy only for a dtype or layout change, clear errors
for another device or a tensor DLPack refuses."""

from __future__ import annotations

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import arrays
from gpubackprop.backend import get_backend
from gpubackprop.train import _inputs


class Foreign:
    """An array of some other library: only the DLPack protocol, over a NumPy or
    CuPy array (as a JAX array or a PyTorch tensor would offer it)."""

    def __init__(self, data, device=None) -> None:
        self.data = data
        self.device = device

    def __dlpack__(self, **kwargs):
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device or self.data.__dlpack_device__()


def _model(device: str = "cpu", dtype: str = "float32") -> gb.Sequential:
    return gb.Sequential(
        [gb.Dense(3, 5, "tanh"), gb.Dense(5, 4)], device=device, dtype=dtype, seed=0
    )


def _data(rng: np.random.Generator, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((n, 3)).astype(np.float32), rng.integers(0, 4, n)


# --- without PyTorch: the protocol alone -----------------------------------------------
def test_numpy_cupy_and_lists_pass_through_unchanged() -> None:
    backend = get_backend("cpu")
    x = np.ones((2, 3), np.float32)
    assert backend.adopt(x, "x") is x
    data = [[1.0, 2.0]]
    assert backend.adopt(data, "x") is data


def test_a_host_dlpack_array_is_adopted_without_a_copy(rng: np.random.Generator) -> None:
    x, _ = _data(rng)
    adopted = get_backend("cpu").adopt(Foreign(x), "x")
    assert isinstance(adopted, np.ndarray)
    assert np.shares_memory(adopted, x)
    model = _model()
    prepared = model.prepare_input(Foreign(x))
    assert prepared.ctypes.data == x.ctypes.data
    np.testing.assert_array_equal(model.forward(Foreign(x)), model.forward(x))


def test_cuda_memory_without_cupy_names_both_devices(monkeypatch) -> None:
    monkeypatch.setattr(arrays, "cupy_module", lambda: None)
    fake = Foreign(np.zeros((2, 3), np.float32), device=(2, 1))
    with pytest.raises(gb.DeviceError, match=r"Sequential.forward: x is a Foreign on cuda:1 "
                       r"but the model lives on cpu.*CuPy is not installed.*\.cpu\(\)"):
        _model().forward(fake)


def test_memory_of_another_accelerator_is_refused() -> None:
    fake = Foreign(np.zeros((2, 3), np.float32), device=(4, 0))  # kDLOpenCL
    with pytest.raises(gb.DeviceError, match=r"DLPack device type 4.*model lives on cpu"):
        _model().predict(fake)


# --- PyTorch tensors ---------------------------------------------------------------------
@pytest.fixture
def torch():
    """PyTorch (these tests skip without it)."""
    return pytest.importorskip("torch")


def test_a_float32_tensor_is_used_in_place(torch, rng: np.random.Generator) -> None:
    x, _ = _data(rng)
    t = torch.from_numpy(x.copy())
    model = _model()
    adopted = model.backend.adopt(t, "x")
    assert adopted.ctypes.data == t.data_ptr()
    assert model.prepare_input(t).ctypes.data == t.data_ptr()
    assert _inputs(model, t).ctypes.data == t.data_ptr()  # fit / evaluate / predict


def test_forward_predict_and_backward_take_tensors(torch, rng: np.random.Generator) -> None:
    x, _ = _data(rng)
    model = _model()
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(model.forward(t), model.forward(x))
    np.testing.assert_array_equal(model.predict(t, batch_size=7), model.predict(x, batch_size=7))
    model.forward(t)
    g = model.backward(torch.ones(len(x), 4), return_input_grad=True)
    model.forward(x)
    np.testing.assert_array_equal(g, model.backward(np.ones((len(x), 4)), return_input_grad=True))
    np.testing.assert_array_equal(model.to_device(t), x)


def test_fit_and_evaluate_take_tensors_and_int64_labels(torch, rng: np.random.Generator) -> None:
    x, y = _data(rng, 40)
    runs = []
    for xs, ys in ((x, y), (torch.from_numpy(x), torch.from_numpy(y))):
        model = _model()
        history = model.fit(
            xs, ys, loss=gb.losses.SoftmaxCrossEntropy(), optimizer=gb.optim.SGD(0.1),
            epochs=2, batch_size=8, validation_data=(xs, ys), verbose=False,
        )
        scores = model.evaluate(xs, ys, loss="softmax_cross_entropy")
        loss = model.train_step(xs, ys, "softmax_cross_entropy", gb.optim.SGD(0.1))
        runs.append((history["loss"], history["val_loss"], scores, loss))
    assert runs[0] == runs[1]


def test_a_tensor_that_requires_grad_says_detach(torch, rng: np.random.Generator) -> None:
    x, y = _data(rng)
    t = torch.from_numpy(x).requires_grad_()
    model = _model()
    with pytest.raises(gb.DTypeError, match=r"Sequential.forward: x: .*x\.detach\(\)"):
        model.forward(t)
    with pytest.raises(gb.DTypeError, match=r"fit/evaluate/predict: x: .*detach"):
        model.fit(t, y, loss="softmax_cross_entropy", optimizer=gb.optim.SGD(0.1), verbose=False)
    np.testing.assert_array_equal(model.forward(t.detach()), model.forward(x))


def test_a_dtype_dlpack_cannot_carry_is_a_dtype_error(torch) -> None:
    with pytest.raises(gb.DTypeError, match="Tensor could not be read through DLPack"):
        _model().forward(torch.zeros(2, 3, dtype=torch.bfloat16))


def test_strided_and_other_dtype_tensors_are_copied_once(torch, rng: np.random.Generator) -> None:
    x, _ = _data(rng)
    model = _model()
    strided = torch.from_numpy(np.ascontiguousarray(x.T)).T  # a transposed view
    assert not strided.is_contiguous()
    prepared = model.prepare_input(strided)
    assert prepared.flags.c_contiguous and prepared.ctypes.data != strided.data_ptr()
    np.testing.assert_array_equal(model.forward(strided), model.forward(x))
    double = torch.from_numpy(x.astype(np.float64))
    assert model.prepare_input(double).dtype == np.float32
    np.testing.assert_array_equal(model.predict(double), model.predict(x))


def test_a_float64_model_adopts_float64_tensors_in_place(torch, rng: np.random.Generator) -> None:
    t = torch.from_numpy(rng.standard_normal((6, 3)))
    model = _model(dtype="float64")
    assert model.prepare_input(t).ctypes.data == t.data_ptr()


@pytest.mark.gpu
def test_a_host_tensor_for_a_gpu_model_is_copied_by_fit_only(torch, rng) -> None:
    x, y = _data(rng)
    model = _model("cuda")
    with pytest.raises(gb.DeviceError, match="on cpu but the model lives on cuda:0"):
        model.forward(torch.from_numpy(x))
    np.testing.assert_allclose(model.predict(torch.from_numpy(x)), model.predict(x))
    model.fit(torch.from_numpy(x), torch.from_numpy(y), loss="softmax_cross_entropy",
              optimizer=gb.optim.SGD(0.1), verbose=False)


@pytest.mark.gpu
def test_cuda_memory_is_adopted_without_a_copy(rng: np.random.Generator) -> None:
    cp = arrays.cupy_module()
    x = cp.asarray(_data(rng)[0])
    model = _model("cuda")
    adopted = model.backend.adopt(Foreign(x), "x")
    assert adopted.data.ptr == x.data.ptr
    assert model.prepare_input(Foreign(x)).data.ptr == x.data.ptr
    cp.testing.assert_array_equal(model.predict(Foreign(x)), model.predict(x))
    with pytest.raises(gb.DeviceError, match="on cuda:0 but the model lives on cpu"):
        _model().forward(Foreign(x))
