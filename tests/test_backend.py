"""Backend dispatch, the ops against plain NumPy, and CuPy staying out of CPU-only runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import arrays
from gpubackprop.backend import backend_of, get_backend, has_gpu

from .helpers import to_numpy

REPO = Path(__file__).resolve().parents[1]


# --- get_backend -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu ", "Cpu"])
def test_cpu_backend(name: str) -> None:
    backend = get_backend(name)
    assert backend.device == "cpu"
    assert backend.xp is np
    assert not backend.is_gpu and backend.device_id is None
    assert backend.reason


def test_backend_instance_passes_through() -> None:
    backend = get_backend("cpu")
    assert get_backend(backend) is backend
    model = gb.Sequential([gb.Dense(2, 2)], device=backend)
    assert model.backend is backend and model.device == "cpu"


@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU")
def test_auto_picks_cpu_here_and_says_why() -> None:
    backend = get_backend("auto")
    assert backend.device == "cpu" and backend.xp is np
    assert "cpu" in backend.reason
    assert "CuPy" in backend.reason
    assert gb.Sequential([gb.Dense(2, 2)]).device == "cpu"  # "auto" is the default


@pytest.mark.gpu
def test_auto_picks_the_gpu() -> None:
    backend = get_backend("auto")
    assert backend.device == "cuda:0" and backend.is_gpu and backend.device_id == 0
    assert "cuda:0" in backend.reason


@pytest.mark.gpu
def test_cuda_backends() -> None:
    cp = pytest.importorskip("cupy")
    assert get_backend("cuda") == get_backend("cuda:0")
    backend = get_backend("cuda:0")
    assert backend.xp is cp and backend.device == "cuda:0"
    count = cp.cuda.runtime.getDeviceCount()
    with pytest.raises(gb.DeviceError, match=f"only {count} GPU"):
        get_backend(f"cuda:{count}")


@pytest.mark.parametrize("name", ["cuda:7", "cuda:99"])
def test_missing_gpu_index(name: str) -> None:
    if arrays.gpu_count() > int(name.split(":")[1]):
        pytest.skip("this machine has that many GPUs")
    with pytest.raises(gb.DeviceError) as info:
        get_backend(name)
    assert repr(name) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["tpu", "cuda:", "cuda:1:2", "cuda0", "mps", ""])
def test_unknown_device_names(name: str) -> None:
    with pytest.raises(gb.DeviceError, match="unknown device"):
        get_backend(name)


@pytest.mark.parametrize("value", [None, 0, 1.0, ["cpu"]])
def test_non_string_device(value: object) -> None:
    with pytest.raises(gb.DeviceError, match="device must be"):
        get_backend(value)  # type: ignore[arg-type]


def test_available_devices() -> None:
    devices = gb.available_devices()
    assert devices[0] == "cpu"
    assert devices[1:] == [f"cuda:{i}" for i in range(arrays.gpu_count())]
    if not has_gpu():
        assert devices == ["cpu"]


NO_CUPY = "ModuleNotFoundError: No module named 'cupy'"


@pytest.mark.parametrize(
    ("visible", "cupy_error", "why"),
    [
        (False, NO_CUPY, f"no NVIDIA GPU is visible on this machine; CuPy is not importable "
                         f"either: {NO_CUPY}"),
        (False, None, "no NVIDIA GPU is visible on this machine (CuPy is installed)"),
        (True, NO_CUPY, f"CuPy is not importable ({NO_CUPY}); install gpubackprop[cuda12] "
                        "or [cuda13]"),
        (True, None, "CuPy is installed but sees no CUDA device"),
    ],
    ids=["no-gpu-no-cupy", "no-gpu-cupy", "gpu-no-cupy", "gpu-cupy"],
)
def test_no_gpu_says_first_whether_one_is_visible(
    monkeypatch: pytest.MonkeyPatch, visible: bool, cupy_error: str | None, why: str
) -> None:
    """get_backend("cuda"), "auto" and ``python -m gpubackprop info`` give one reason."""
    from gpubackprop import backend as backend_module
    from gpubackprop import info

    monkeypatch.setattr(backend_module, "has_gpu", lambda: False)
    monkeypatch.setattr(backend_module, "nvidia_gpu_visible", lambda: visible)
    monkeypatch.setattr(info, "nvidia_gpu_visible", lambda: visible)
    monkeypatch.setattr(arrays, "cupy_import_error", lambda: cupy_error)
    with pytest.raises(gb.DeviceError) as raised:
        get_backend("cuda")
    assert str(raised.value) == f"device 'cuda' was asked for but {why}"
    assert get_backend("auto").reason == f"auto picked cpu: {why}"
    rows = dict(info.collect_info())
    assert rows["auto device"] == f"cpu (auto picked cpu: {why})"
    assert rows["NVIDIA GPU"] == ("yes" if visible else "none visible on this machine")


@pytest.mark.parametrize(
    ("platform", "nodes", "dxg", "smi", "visible"),
    [
        ("linux", [], False, True, False),  # nvidia-smi alone is no GPU on Linux
        ("linux", ["/dev/nvidia0"], False, False, True),
        ("linux", [], True, False, True),  # WSL 2
        ("win32", [], False, True, True),
        ("win32", [], False, False, False),
        ("darwin", [], False, True, False),
    ],
)
def test_nvidia_gpu_visible_probe(
    monkeypatch: pytest.MonkeyPatch,
    platform: str, nodes: list[str], dxg: bool, smi: bool, visible: bool,
) -> None:
    from gpubackprop import backend as backend_module

    monkeypatch.setattr(backend_module.sys, "platform", platform)
    monkeypatch.setattr(backend_module.glob, "glob", lambda pattern: nodes)
    monkeypatch.setattr(backend_module.os.path, "exists", lambda path: dxg)
    smi_path = "/usr/bin/nvidia-smi" if smi else None
    monkeypatch.setattr(backend_module.shutil, "which", lambda name: smi_path)
    assert backend_module.nvidia_gpu_visible() is visible


def test_fit_says_why_it_picked_the_device_once_per_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpubackprop import train

    monkeypatch.setattr(train, "_REASONS_SAID", set())  # as in a new process
    model = gb.Sequential([gb.Dense(3, 2)], seed=0)  # device="auto"
    x, y = np.ones((8, 3)), np.zeros((8, 2))
    for _ in range(2):
        model.fit(x, y, loss="mse", optimizer=gb.optim.SGD(0.1), epochs=1)
    out = capsys.readouterr().out
    first, second = (line for line in out.splitlines() if line.startswith("Training"))
    assert first.endswith(f" on {model.device} ({model.backend.reason})")
    assert second.endswith(f" on {model.device}")
    assert out.count(model.backend.reason) == 1


def test_backend_of_numpy_array() -> None:
    assert backend_of(np.zeros(3)).device == "cpu"


def test_check_array_and_asarray_on_cpu() -> None:
    backend = get_backend("cpu")
    backend.check_array(np.zeros(2), "x")
    with pytest.raises(gb.DeviceError, match="x must be an array on cpu, got list"):
        backend.check_array([1.0], "x")
    arr = backend.asarray([1, 2, 3], dtype=np.float32)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, [1.0, 2.0, 3.0])
    assert backend.to_numpy(arr) is arr
    backend.synchronize()  # a no-op that must not fail


# --- ops against plain NumPy ------------------------------------------------------------------
def _ops(device: str):
    return get_backend(device)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_with_transposes(
    device: str, trans_a: bool, trans_b: bool, dtype: type, rng: np.random.Generator
) -> None:
    backend = _ops(device)
    m, k, n = 5, 4, 3
    a = rng.standard_normal((k, m) if trans_a else (m, k))
    b = rng.standard_normal((n, k) if trans_b else (k, n))
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    want = np.array([[sum(op_a[i, p] * op_b[p, j] for p in range(k)) for j in range(n)]
                     for i in range(m)])
    np.testing.assert_allclose(np.dot(op_a, op_b), want, rtol=1e-12)  # the reference itself
    ad, bd = backend.asarray(a, dtype=dtype), backend.asarray(b, dtype=dtype)
    with backend.activate():
        out = backend.xp.full((m, n), np.nan, dtype=dtype)
        result = backend.ops.matmul(ad, bd, out, trans_a=trans_a, trans_b=trans_b)
    assert result is out
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(to_numpy(out), want, rtol=rtol, atol=rtol)


def test_matmul_overwrites_out(device: str) -> None:
    backend = _ops(device)
    a = backend.asarray(np.eye(2))
    with backend.activate():
        out = backend.xp.full((2, 2), 7.0)
        backend.ops.matmul(a, a, out)
    np.testing.assert_array_equal(to_numpy(out), np.eye(2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_sum(device: str, dtype: type, rng: np.random.Generator) -> None:
    backend = _ops(device)
    x = rng.standard_normal((9, 4))
    want = np.array([sum(x[i, j] for i in range(9)) for j in range(4)])
    with backend.activate():
        out = backend.xp.full(4, np.nan, dtype=dtype)
        backend.ops.column_sum(backend.asarray(x, dtype=dtype), out)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(to_numpy(out), want, rtol=rtol, atol=rtol)


def test_column_sum_is_deterministic(device: str, rng: np.random.Generator) -> None:
    backend = _ops(device)
    x = backend.asarray(rng.standard_normal((4096, 33)), dtype=np.float32)
    with backend.activate():
        first = backend.xp.empty(33, dtype=np.float32)
        second = backend.xp.empty(33, dtype=np.float32)
        backend.ops.column_sum(x, first)
        backend.ops.column_sum(x, second)
    np.testing.assert_array_equal(to_numpy(first), to_numpy(second))


def test_add_bias(device: str, rng: np.random.Generator) -> None:
    backend = _ops(device)
    z, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    zd = backend.asarray(z.copy())
    result = backend.ops.add_bias(zd, backend.asarray(b))
    assert result is zd
    np.testing.assert_allclose(to_numpy(zd), z + b[None, :], rtol=1e-15)


# --- CuPy stays out ---------------------------------------------------------------------------
def test_cpu_only_run_never_imports_cupy(tmp_path: Path) -> None:
    """A fake ``cupy`` first on the path records any import of it; none may happen."""
    fake = tmp_path / "cupy"
    fake.mkdir()
    (fake / "__init__.py").write_text("IMPORTED_BY_TEST = True\n")
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import gpubackprop
        import gpubackprop.backend
        import gpubackprop as gb
        assert "cupy" not in sys.modules, "import gpubackprop pulled cupy in"
        rng = np.random.default_rng(0)
        x = rng.standard_normal((40, 3))
        y = (x.sum(axis=1) > 0).astype(np.int64)
        model = gb.Sequential([gb.Dense(3, 8, "relu"), gb.Dense(8, 2)], device="cpu", seed=0)
        model.fit(x, y, loss="cross_entropy", optimizer=gb.optim.Adam(1e-2), epochs=2,
                  batch_size=16, validation_data=(x, y), verbose=True)
        model.evaluate(x, y, "cross_entropy")
        model.predict(x)
        model.train_step(x, y, "cross_entropy", gb.optim.SGD(0.1, momentum=0.9))
        gb.losses.MSE()(np.zeros((2, 2)), np.zeros((2, 2)))
        gb.gradcheck(gb.Sequential([gb.Dense(2, 2)], device="cpu", dtype="float64"),
                     np.ones((1, 2)))
        assert "cupy" not in sys.modules, sorted(m for m in sys.modules if "cupy" in m)
        print("CUPY-FREE")
        """
    )
    env = {"PYTHONPATH": f"{tmp_path}{__import__('os').pathsep}{REPO}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "CUPY-FREE" in result.stdout
