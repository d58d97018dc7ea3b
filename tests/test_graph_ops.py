"""The graph operations of issue 10 (item 8): indexing with a deterministic scatter-add
backward, max/min with ties, softmax/log_softmax, concatenate/stack, float(t), NumPy
functions on a Tensor. Gradients against PyTorch autograd where torch is installed and on
the CuPy-like module; finite differences are in test_graph.py's GATE_CASES."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.graph import scatter_add

from .cupy_like import CUPY_LIKE
from .helpers import to_numpy


def _leaf(device: str, a: np.ndarray) -> gb.Tensor:
    return gb.Tensor(gb.get_backend(device).asarray(a), requires_grad=True)


def _grads(fn: Callable[..., gb.Tensor], arrays: list[np.ndarray], upstream_seed: int = 7,
           device: str = "cpu") -> tuple[np.ndarray, list[np.ndarray]]:
    """fn's value and the gradients of L = Σ fn(...) ⊙ R (R fixed random) on ``device``."""
    leaves = [_leaf(device, a) for a in arrays]
    out = fn(*leaves)
    r = np.random.default_rng(upstream_seed).standard_normal(out.shape)
    out.backward(gb.get_backend(device).asarray(r))
    return to_numpy(out.data), [to_numpy(t.grad) for t in leaves]


# --- parity with PyTorch autograd ---------------------------------------------------------------
def _torch() -> object:
    """torch, imported where a case runs (the parity test skips without it)."""
    import torch

    return torch


TORCH_CASES: dict[str, tuple[Callable, Callable, list[tuple[int, ...]]]] = {
    # name: (graph function, torch function, input shapes); float64 throughout
    "index with repeats": (lambda a: a[[2, 0, 2, 2], 1:], lambda a: a[[2, 0, 2, 2], 1:], [(3, 5)]),
    "two int arrays": (
        lambda a: a[[0, 0, 1], [4, 4, 4]], lambda a: a[[0, 0, 1], [4, 4, 4]], [(3, 5)]
    ),
    "max axis 1, ties": (lambda a: a.max(axis=1), lambda a: a.amax(dim=1), [(3, 5)]),
    "min all, ties": (lambda a: a.min(), lambda a: a.amin(), [(3, 5)]),
    "softmax": (lambda a: a.softmax(), lambda a: a.softmax(dim=-1), [(3, 5)]),
    "log_softmax axis 0": (
        lambda a: a.log_softmax(axis=0), lambda a: a.log_softmax(dim=0), [(3, 5)]
    ),
    "concatenate": (
        lambda a, b: gb.concatenate([a, b], axis=1),
        lambda a, b: _torch().cat([a, b], dim=1), [(3, 2), (3, 5)],
    ),
    "stack": (
        lambda a, b: gb.stack([a, b], axis=1),
        lambda a, b: _torch().stack([a, b], dim=1), [(3, 5), (3, 5)],
    ),
}


def _small_integers(shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Floats in {-2, …, 2}: the max/min cases have ties (row 1 two maxima, five minima)."""
    rng = np.random.default_rng(3)
    return [rng.integers(-2, 3, s).astype(np.float64) for s in shapes]


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_new_gates_match_pytorch_autograd(case: str, device: str) -> None:
    torch = pytest.importorskip("torch")
    graph_fn, torch_fn, shapes = TORCH_CASES[case]
    arrays = _small_integers(shapes)
    value, grads = _grads(graph_fn, arrays, device=device)
    leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = torch_fn(*leaves)
    out.backward(torch.tensor(np.random.default_rng(7).standard_normal(tuple(out.shape))))
    np.testing.assert_allclose(value, out.detach().numpy(), rtol=1e-13, atol=1e-15)
    for mine, leaf in zip(grads, leaves, strict=True):
        np.testing.assert_allclose(mine, leaf.grad.numpy(), rtol=1e-12, atol=1e-15, err_msg=case)


# --- indexing -----------------------------------------------------------------------------------
def test_a_repeated_index_accumulates_its_gradients(device: str) -> None:
    x = _leaf(device, np.zeros((3, 2)))
    y = x[[0, 2, 0, 0]]
    assert y.shape == (4, 2) and y.gate.describe() == "[int[4]]"
    y.sum().backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [[3, 3], [0, 0], [1, 1]])
    z = _leaf(device, np.arange(6.0))
    idx = gb.Tensor(gb.get_backend(device).asarray(np.array([5, 5, 1])))  # an index tensor
    (z[idx] * gb.get_backend(device).asarray(np.array([1.0, 2.0, 4.0]))).sum().backward()
    np.testing.assert_array_equal(to_numpy(z.grad), [0, 4, 0, 0, 0, 3])


def test_basic_indices_and_masks_write_the_gradient_in_place(device: str) -> None:
    x = _leaf(device, np.arange(12.0).reshape(3, 4))
    x[1].sum().backward()
    x[..., None, 0].sum().backward()
    x[gb.get_backend(device).asarray(np.eye(3, 4, dtype=bool))].sum().backward()
    expected = np.eye(3, 4) + np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    expected[:, 0] += 1
    np.testing.assert_array_equal(to_numpy(x.grad), expected)


def test_scatter_add_matches_np_add_at_and_repeats_its_bits(rng: np.random.Generator) -> None:
    positions = rng.integers(0, 37, size=5000)
    positions[:700] = 11  # one position picked 700+ times: ten doubling steps
    values = rng.standard_normal(5000)
    reference = np.zeros(40)
    np.add.at(reference, positions, values)
    np.testing.assert_array_equal(scatter_add(np, positions, values, 40), reference)
    # the sorted segmented scan, run on the CuPy-like module (NumPy with CuPy's refusals,
    # np.add.at among them): the same sums up to rounding, the same bits every run
    first = scatter_add(CUPY_LIKE, positions, values, 40)
    np.testing.assert_allclose(first, reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(scatter_add(CUPY_LIKE, positions, values, 40), first)
    np.testing.assert_array_equal(scatter_add(CUPY_LIKE, positions[::-1], values[::-1], 40),
                                  scatter_add(CUPY_LIKE, positions[::-1], values[::-1], 40))
    assert not scatter_add(CUPY_LIKE, positions[:0], values[:0], 3).any()
    inf = scatter_add(CUPY_LIKE, np.array([1, 0, 1]), np.array([np.inf, 1.0, 2.0]), 2)
    np.testing.assert_array_equal(inf, [1.0, np.inf])  # no inf·0 = NaN in the scan
    exact = rng.integers(-8, 9, size=300).astype(np.float64)  # integers: sums are exact
    np.testing.assert_array_equal(scatter_add(CUPY_LIKE, positions[:300], exact, 40),
                                  scatter_add(np, positions[:300], exact, 40))


def _cupy_like(a: np.ndarray) -> gb.Tensor:
    """A leaf whose gates compute with the CuPy-like module (what a GPU backend would run)."""
    t = gb.Tensor(a.copy(), requires_grad=True)
    t.backend = gb.Backend("cpu", CUPY_LIKE, NumpyOps())
    return t


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_new_gates_run_on_the_cupy_like_module(case: str) -> None:
    graph_fn, _, shapes = TORCH_CASES[case]
    arrays = _small_integers(shapes)
    value, grads = _grads(graph_fn, arrays)
    portable = [_cupy_like(a) for a in arrays]
    out = graph_fn(*portable)
    out.backward(np.random.default_rng(7).standard_normal(out.shape))
    np.testing.assert_array_equal(out.data, value)
    for mine, t in zip(grads, portable, strict=True):  # repeated indices: another sum order
        np.testing.assert_allclose(t.grad, mine, rtol=1e-14, atol=1e-15)


def test_index_errors_name_the_index_and_the_shape() -> None:
    x = gb.Tensor(np.ones((3, 4)), requires_grad=True)
    with pytest.raises(gb.TensorIndexError, match=r"Tensor\[5\].*shape \(3, 4\)") as info:
        x[5]
    assert isinstance(info.value, IndexError)
    with pytest.raises(gb.TensorIndexError, match=r"\(3, 4\)"):
        x[[0, 1], [0, 1], [0, 1]]
    other = gb.Tensor(np.ones(3))
    other.backend = gb.Backend("cuda:0", np, NumpyOps())  # stands in for a GPU tensor
    with pytest.raises(gb.DeviceError, match=r"index array lives on cpu.*cuda:0"):
        other[np.array([0, 1])]


def test_iteration_len_and_float() -> None:
    x = gb.Tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    rows = list(x)
    assert len(x) == 3 and [r.shape for r in rows] == [(2,)] * 3
    sum(row.sum() for row in rows).backward()
    np.testing.assert_array_equal(x.grad, np.ones((3, 2)))
    assert float(x[2, 1]) == 5.0 and x[1, 0].item() == 2.0
    assert float(gb.Tensor(np.array([[7]]))) == 7.0
    with pytest.raises(gb.ShapeError, match=r"float\(t\): .*6 elements \(shape \(3, 2\)"):
        float(x)
    with pytest.raises(gb.ShapeError, match=r"item\(\).*\(3, 2\)"):
        x.item()
    with pytest.raises(TypeError, match="0-d"):
        len(gb.Tensor(np.array(1.0)))


# --- max / min ----------------------------------------------------------------------------------
def test_max_and_min_split_the_gradient_evenly_among_ties(device: str) -> None:
    x = _leaf(device, np.array([[1.0, 3.0, 3.0, 3.0], [2.0, -1.0, 0.0, 2.0]]))
    y = x.max(axis=1)
    assert y.gate.describe() == "max(axis=1)"
    y.backward(gb.get_backend(device).asarray(np.array([3.0, 1.0])))
    np.testing.assert_array_equal(to_numpy(x.grad), [[0, 1, 1, 1], [0.5, 0, 0, 0.5]])
    x.zero_grad()
    x.min().backward()  # one minimum: it gets everything
    np.testing.assert_array_equal(to_numpy(x.grad), [[0, 0, 0, 0], [0, 1, 0, 0]])
    f32 = gb.Tensor(gb.get_backend(device).asarray(np.ones((2, 3), np.float32)), requires_grad=True)
    f32.max(axis=0, keepdims=True).sum().backward()
    assert f32.grad.dtype == np.float32
    np.testing.assert_allclose(to_numpy(f32.grad), np.full((2, 3), 0.5))


def test_max_of_an_empty_axis_is_a_shape_error() -> None:
    with pytest.raises(gb.ShapeError, match=r"max\(axis=0\).*\(0, 3\)"):
        gb.Tensor(np.ones((0, 3))).max(axis=0)
    assert gb.Tensor(np.ones((0, 3))).max(axis=1).shape == (0,)


# --- softmax ------------------------------------------------------------------------------------
def test_softmax_and_log_softmax_are_stable_for_large_inputs(device: str) -> None:
    z = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    x = _leaf(device, z)
    p = x.softmax()
    logp = x.log_softmax()
    shifted = z - z.max(axis=1, keepdims=True)
    expected = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(to_numpy(logp.data), expected, rtol=1e-14)
    np.testing.assert_allclose(to_numpy(p.data), np.exp(expected), rtol=1e-14)
    (logp[:, 0].sum() + p[:, 1].sum()).backward()
    assert np.isfinite(to_numpy(x.grad)).all()
    np.testing.assert_allclose(to_numpy(x.grad).sum(axis=1), 0, atol=1e-14)  # Σ_i ∂/∂x_i = 0
    with pytest.raises(gb.ShapeError, match=r"axis 2 .*\(2, 3\)"):
        x.softmax(axis=2)
    with pytest.raises(gb.ShapeError, match=r"softmax\(axis=-1\).*\(2, 0\)"):
        gb.Tensor(np.ones((2, 0))).softmax()
    assert gb.Tensor(np.ones((0, 3))).log_softmax().shape == (0, 3)  # an empty batch is fine


# --- concatenate / stack ------------------------------------------------------------------------
def test_concatenate_and_stack_errors_name_the_tensor_and_shapes() -> None:
    a, b = gb.Tensor(np.ones((2, 3))), gb.Tensor(np.ones((2, 4)))
    assert gb.concatenate([a, b], axis=1).shape == (2, 7)
    with pytest.raises(gb.ShapeError, match=r"tensor 1 has shape \(2, 4\) but tensor 0 .*\(2, 3\)"):
        gb.concatenate([a, b])
    with pytest.raises(gb.ShapeError, match=r"stack: tensor 2 has shape \(2, 4\).*\(2, 3\)"):
        gb.stack([a, a, b])
    with pytest.raises(gb.ShapeError, match="0-d"):
        gb.concatenate([gb.Tensor(np.array(1.0)), gb.Tensor(np.array(2.0))])
    assert gb.stack([gb.Tensor(np.array(1.0)), 2.0]).shape == (2,)  # scalars stack
    with pytest.raises(gb.ConfigError, match="empty"):
        gb.stack([])
    with pytest.raises(gb.ConfigError, match="Tensor"):
        gb.concatenate(a)
    with pytest.raises(gb.ShapeError, match=r"axis 3 .*\(2, 3\)"):
        gb.concatenate([a, a], axis=3)


# --- NumPy functions on a Tensor ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "hint"),
    [
        (lambda t: np.exp(t), r"np\.exp.*t\.exp\(\)"),
        (lambda t: np.log(t), r"t\.log\(\)"),
        (lambda t: np.tanh(t), r"t\.tanh\(\)"),
        (lambda t: np.sqrt(t), r"np\.sqrt.*Tensor method"),
        (lambda t: np.maximum(t, 0.0), r"gb\.maximum"),
        (lambda t: np.sum(t), r"t\.sum\(axis\)"),
        (lambda t: np.max(t, axis=0), r"t\.max\(axis\)"),
        (lambda t: np.concatenate([t, t]), r"gb\.concatenate"),
        (lambda t: np.asarray(t), r"t\.numpy\(\)"),
        (lambda t: np.add(np.ones(3), t, out=np.ones(3)), r"np\.add"),
    ],
)
def test_numpy_functions_on_a_tensor_name_what_to_use(call: Callable, hint: str) -> None:
    t = gb.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(gb.NumpyOnTensorError, match=hint) as info:
        call(t)
    assert isinstance(info.value, TypeError)


def test_numpy_operators_on_the_left_still_record_gates() -> None:
    t = gb.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    a = np.array([3.0, 5.0])
    outs = [a + t, a - t, a * t, a / t, np.float64(2.0) * t, np.eye(2) @ t]
    assert all(isinstance(o, gb.Tensor) for o in outs)
    assert [o.gate.name for o in outs] == ["add", "sub", "mul", "div", "mul", "matmul"]
    sum(o.sum() for o in outs).backward()
    np.testing.assert_allclose(t.grad, 1 - 1 + a - a / t.data**2 + 2 + 1, rtol=1e-14)
    # CuPy reads __array_ufunc__ on the instance: None there, so cupy_array + t defers too
    assert t.__array_ufunc__ is None and callable(type(t).__array_ufunc__)
