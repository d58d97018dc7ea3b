"""The computational-graph engine: gates against finite differences and NumPy, layers as
coarse gates, the seed notes' gate properties, deep graphs, Jacobians and errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backend.numpy_ops import NumpyOps

from .helpers import numeric_gradient, to_numpy

EPS = 1e-6


def _dev(device: str, a: np.ndarray) -> object:
    """``a`` on ``device`` (a CuPy array for cuda)."""
    return gb.get_backend(device).asarray(a)


def _fd_grad(f: Callable[..., float], arrays: list[np.ndarray], i: int) -> np.ndarray:
    """Central differences of the scalar f(*arrays) with respect to arrays[i]."""
    return numeric_gradient(lambda: f(*arrays), arrays[i], EPS)


def _away_from_zero(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Entries of size in [0.3, 1.5] with random signs (no kinks of relu/max nearby)."""
    return rng.uniform(0.3, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def _positive(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(0.5, 2.0, shape)


def _np_xent(z: np.ndarray, labels: np.ndarray) -> float:
    """Mean over rows of log Σ_c e^{z_c} − z_label, written directly."""
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def _np_xent_probs(z: np.ndarray, t: np.ndarray) -> float:
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-(t * logp).sum() / z.shape[0])


def _np_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    """e^z / Σ_axis e^z, written directly."""
    return np.exp(z) / np.exp(z).sum(axis=axis, keepdims=True)


LABELS = np.array([2, 0, 1, 2])
MASK = np.array([[True, False, True, True, False], [False] * 5, [True, True, False, False, True]])
PROBS = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.1, 0.8, 0.1], [0.0, 0.5, 0.5]])

# (graph function of tensors, the same function in NumPy, makers of the inputs)
Maker = Callable[[np.random.Generator], np.ndarray]


def _normal(*shape: int) -> Maker:
    return lambda rng: rng.standard_normal(shape)


def _signed(*shape: int) -> Maker:
    return lambda rng: _away_from_zero(rng, shape)


def _pos(*shape: int) -> Maker:
    return lambda rng: _positive(rng, shape)


GATE_CASES: dict[str, tuple[Callable, Callable, list[Maker]]] = {
    "add (3,1)+(1,4)": (lambda a, b: a + b, lambda a, b: a + b, [_normal(3, 1), _normal(1, 4)]),
    "sub (5,4)-(4,)": (lambda a, b: a - b, lambda a, b: a - b, [_normal(5, 4), _normal(4)]),
    "rsub 1-x": (lambda a: 1.0 - a, lambda a: 1.0 - a, [_normal(3, 2)]),
    "mul (5,4)*(4,)": (lambda a, b: a * b, lambda a, b: a * b, [_normal(5, 4), _normal(4)]),
    "scalar*tensor": (lambda a: 2.5 * a, lambda a: 2.5 * a, [_normal(5, 4)]),
    "0-d tensor*tensor": (lambda s, a: s * a, lambda s, a: s * a, [_normal(), _normal(3, 4)]),
    "div (3,4)/(4,)": (lambda a, b: a / b, lambda a, b: a / b, [_normal(3, 4), _pos(4)]),
    "div (3,1)/(1,4)": (lambda a, b: a / b, lambda a, b: a / b, [_normal(3, 1), _pos(1, 4)]),
    "rdiv 1/x": (lambda a: 1 / a, lambda a: 1 / a, [_pos(2, 3)]),
    "neg": (lambda a: -a, lambda a: -a, [_normal(2, 3)]),
    "pow 3": (lambda a: a**3, lambda a: a**3, [_normal(2, 3)]),
    "pow 0.5": (lambda a: a**0.5, lambda a: a**0.5, [_pos(2, 3)]),
    "matmul (3,4)@(4,2)": (lambda a, b: a @ b, lambda a, b: a @ b, [_normal(3, 4), _normal(4, 2)]),
    "matmul W@x": (lambda a, b: a @ b, lambda a, b: a @ b, [_normal(3, 4), _normal(4)]),
    "matmul x@W": (lambda a, b: a @ b, lambda a, b: a @ b, [_normal(4), _normal(4, 2)]),
    "matmul x@y": (lambda a, b: a @ b, lambda a, b: a @ b, [_normal(4), _normal(4)]),
    "matmul batched (2,3,4)@(4,5)": (
        lambda a, b: a @ b, lambda a, b: a @ b, [_normal(2, 3, 4), _normal(4, 5)]
    ),
    "matmul batched (3,4)@(2,4,5)": (
        lambda a, b: a @ b, lambda a, b: a @ b, [_normal(3, 4), _normal(2, 4, 5)]
    ),
    "matmul array@tensor": (
        lambda b: np.arange(8.0).reshape(2, 4) @ b, lambda b: np.arange(8.0).reshape(2, 4) @ b,
        [_normal(4, 3)],
    ),
    "transpose": (lambda a: a.T, lambda a: a.T, [_normal(3, 4)]),
    "reshape": (lambda a: a.reshape(2, 6), lambda a: a.reshape(2, 6), [_normal(3, 4)]),
    "reshape tuple -1": (lambda a: a.reshape((4, -1)), lambda a: a.reshape(4, 3), [_normal(3, 4)]),
    "sum": (lambda a: a.sum(), lambda a: a.sum(), [_normal(3, 4)]),
    "sum axis 0": (lambda a: a.sum(axis=0), lambda a: a.sum(axis=0), [_normal(3, 4)]),
    "sum axis -1 keepdims": (
        lambda a: a.sum(axis=-1, keepdims=True), lambda a: a.sum(axis=-1, keepdims=True),
        [_normal(3, 4)],
    ),
    "sum axes (0,2)": (
        lambda a: a.sum(axis=(0, 2)), lambda a: a.sum(axis=(0, 2)), [_normal(2, 3, 4)]
    ),
    "mean": (lambda a: a.mean(), lambda a: a.mean(), [_normal(3, 4)]),
    "mean axis 1": (lambda a: a.mean(axis=1), lambda a: a.mean(axis=1), [_normal(3, 4)]),
    "exp": (lambda a: a.exp(), np.exp, [_normal(3, 4)]),
    "log": (lambda a: a.log(), np.log, [_pos(3, 4)]),
    "tanh": (lambda a: a.tanh(), np.tanh, [_normal(3, 4)]),
    "sigmoid": (lambda a: a.sigmoid(), lambda a: 1 / (1 + np.exp(-a)), [_normal(3, 4)]),
    "relu": (lambda a: a.relu(), lambda a: np.where(a > 0, a, 0.0), [_signed(3, 4)]),
    "maximum (3,4),(4,)": (
        gb.maximum, np.maximum,
        [_signed(3, 4), lambda rng: _away_from_zero(rng, (4,)) + 0.05],
    ),
    "maximum(x, 0)": (
        lambda a: gb.maximum(a, 0.0), lambda a: np.maximum(a, 0.0), [_signed(3, 4)]
    ),
    "index int, negative int": (lambda a: a[1, -1], lambda a: a[1, -1], [_normal(3, 5)]),
    "index slices with steps": (
        lambda a: a[1:, ::2], lambda a: a[1:, ::2], [_normal(4, 5)]
    ),
    "index ..., None": (
        lambda a: a[..., None, 1], lambda a: a[..., None, 1], [_normal(2, 3, 4)]
    ),
    "index int array with repeats": (
        lambda a: a[[0, 2, 0, 0]], lambda a: a[[0, 2, 0, 0]], [_normal(3, 4)]
    ),
    "index two int arrays": (
        lambda a: a[[0, 1, 1, 2], [3, 3, 0, 3]], lambda a: a[[0, 1, 1, 2], [3, 3, 0, 3]],
        [_normal(3, 5)],
    ),
    "index slice and int array": (
        lambda a: a[1:, [0, 0, 4]], lambda a: a[1:, [0, 0, 4]], [_normal(3, 5)]
    ),
    "index boolean mask": (
        lambda a: a[MASK], lambda a: a[MASK], [_normal(3, 5)]
    ),
    "max": (lambda a: a.max(), lambda a: a.max(), [_normal(3, 5)]),
    "max axis 1": (lambda a: a.max(axis=1), lambda a: a.max(axis=1), [_normal(3, 5)]),
    "max axes (0,2) keepdims": (
        lambda a: a.max(axis=(0, 2), keepdims=True), lambda a: a.max(axis=(0, 2), keepdims=True),
        [_normal(2, 3, 5)],
    ),
    "min axis 0": (lambda a: a.min(axis=0), lambda a: a.min(axis=0), [_normal(3, 5)]),
    "softmax": (lambda a: a.softmax(), lambda a: _np_softmax(a, -1), [_normal(3, 5)]),
    "softmax axis 0": (
        lambda a: a.softmax(axis=0), lambda a: _np_softmax(a, 0), [_normal(3, 5)]
    ),
    "log_softmax": (
        lambda a: a.log_softmax(), lambda a: np.log(_np_softmax(a, -1)), [_normal(3, 5)]
    ),
    "log_softmax axis 1 of 3-D": (
        lambda a: a.log_softmax(axis=1), lambda a: np.log(_np_softmax(a, 1)), [_normal(2, 3, 5)]
    ),
    "concatenate axis 0": (
        lambda a, b: gb.concatenate([a, b]), lambda a, b: np.concatenate([a, b]),
        [_normal(2, 3), _normal(3, 3)],
    ),
    "concatenate axis -1, three": (
        lambda a, b, c: gb.concatenate((a, b, c), axis=-1),
        lambda a, b, c: np.concatenate((a, b, c), axis=-1),
        [_normal(3, 1), _normal(3, 4), _normal(3, 2)],
    ),
    "stack axis 0": (
        lambda a, b: gb.stack([a, b]), lambda a, b: np.stack([a, b]), [_normal(3, 5), _normal(3, 5)]
    ),
    "stack axis -1": (
        lambda a, b, c: gb.stack([a, b, c], axis=-1),
        lambda a, b, c: np.stack([a, b, c], axis=-1), [_normal(3, 5), _normal(3, 5), _normal(3, 5)],
    ),
    "softmax_cross_entropy labels": (
        lambda z: gb.softmax_cross_entropy(z, LABELS), lambda z: _np_xent(z, LABELS),
        [_normal(4, 3)],
    ),
    "softmax_cross_entropy probs": (
        lambda z: gb.softmax_cross_entropy(z, PROBS), lambda z: _np_xent_probs(z, PROBS),
        [_normal(4, 3)],
    ),
}


@pytest.mark.parametrize("case", list(GATE_CASES))
def test_gate_forward_and_backward_match_numpy_and_finite_differences(
    case: str, device: str, rng: np.random.Generator
) -> None:
    graph_fn, numpy_fn, makers = GATE_CASES[case]
    arrays = [make(rng) for make in makers]
    tensors = [gb.Tensor(_dev(device, a), requires_grad=True) for a in arrays]
    out = graph_fn(*tensors)
    expected = np.asarray(numpy_fn(*arrays))
    np.testing.assert_allclose(to_numpy(out.data), expected, rtol=1e-12, atol=1e-14)
    assert out.shape == expected.shape

    upstream = rng.standard_normal(expected.shape)  # L = Σ out ⊙ R
    out.backward(_dev(device, upstream))

    def loss(*xs: np.ndarray) -> float:
        return float(np.sum(np.asarray(numpy_fn(*xs)) * upstream))

    for i, t in enumerate(tensors):
        assert t.grad is not None and t.grad.shape == arrays[i].shape
        numeric = _fd_grad(loss, arrays, i)
        np.testing.assert_allclose(to_numpy(t.grad), numeric, rtol=1e-6, atol=1e-7,
                                   err_msg=f"{case}: input {i}")


# --- the seed notes' gates ------------------------------------------------------------------
def test_add_gate_distributes_the_same_gradient_to_both_inputs(
    device: str, rng: np.random.Generator
) -> None:
    x = gb.Tensor(_dev(device, rng.standard_normal(5)), requires_grad=True)
    y = gb.Tensor(_dev(device, rng.standard_normal(5)), requires_grad=True)
    dz = rng.standard_normal(5)
    (x + y).backward(_dev(device, dz))
    np.testing.assert_array_equal(to_numpy(x.grad), dz)
    np.testing.assert_array_equal(to_numpy(y.grad), dz)


def test_max_gate_routes_the_gradient_to_the_larger_input_only(
    device: str, rng: np.random.Generator
) -> None:
    xs = np.array([1.0, 5.0, -2.0, 3.0])
    ys = np.array([2.0, 4.0, -2.0, 7.0])  # a tie at index 2 routes to the first argument
    x = gb.Tensor(_dev(device, xs), requires_grad=True)
    y = gb.Tensor(_dev(device, ys), requires_grad=True)
    dz = rng.standard_normal(4)
    z = gb.maximum(x, y)
    np.testing.assert_array_equal(to_numpy(z.data), [2.0, 5.0, -2.0, 7.0])
    z.backward(_dev(device, dz))
    np.testing.assert_array_equal(to_numpy(x.grad), dz * np.array([0, 1, 1, 0]))
    np.testing.assert_array_equal(to_numpy(y.grad), dz * np.array([1, 0, 0, 1]))


def test_mul_gate_switches_its_inputs(device: str, rng: np.random.Generator) -> None:
    xs, ys, dz = rng.standard_normal((3, 6))
    x = gb.Tensor(_dev(device, xs), requires_grad=True)
    y = gb.Tensor(_dev(device, ys), requires_grad=True)
    (x * y).backward(_dev(device, dz))
    np.testing.assert_array_equal(to_numpy(x.grad), ys * dz)  # dx = y · dz
    np.testing.assert_array_equal(to_numpy(y.grad), xs * dz)  # dy = x · dz


def test_a_tensor_read_by_several_gates_accumulates_their_gradients(
    device: str, rng: np.random.Generator
) -> None:
    xs = rng.standard_normal((2, 3))
    x = gb.Tensor(_dev(device, xs), requires_grad=True)
    (x * x + x.exp() + 3 * x).sum().backward()  # x feeds four gate inputs
    np.testing.assert_allclose(to_numpy(x.grad), 2 * xs + np.exp(xs) + 3, rtol=1e-14)

    w = gb.Tensor(_dev(device, xs), requires_grad=True)
    a = w * 2.0
    (a + a).sum().backward()  # a diamond: a reaches the sum along two paths
    np.testing.assert_array_equal(to_numpy(w.grad), np.full((2, 3), 4.0))
    np.testing.assert_array_equal(to_numpy(a.grad), np.full((2, 3), 2.0))


def test_a_100000_node_chain_needs_no_recursion() -> None:
    n = 100_000
    assert sys.getrecursionlimit() < n  # a recursive sort would overflow
    a = gb.Tensor(np.array(0.5), requires_grad=True)
    c = gb.Tensor(np.array(1.00001))
    t = a
    for _ in range(n):
        t = t * c
    order = gb.topological_order(t, grad_only=True)
    assert len(order) == n + 1 and order[0] is a and order[-1] is t
    assert len(gb.topological_order(t)) == n + 2  # plus the constant
    t.backward()
    np.testing.assert_allclose(a.grad, 1.00001**n, rtol=1e-9)  # ∂(a cⁿ)/∂a = cⁿ
    np.testing.assert_allclose(t.item(), 0.5 * 1.00001**n, rtol=1e-9)


def test_topological_order_puts_every_input_before_its_gate() -> None:
    x = gb.Tensor(np.ones(3), requires_grad=True, name="x")
    y = gb.Tensor(np.ones(3), requires_grad=True, name="y")
    a = x * y
    b = a + x
    loss = (b * a).sum()
    order = gb.topological_order(loss)
    position = {id(t): i for i, t in enumerate(order)}
    assert len(order) == 6 and order[-1] is loss
    for t in order:
        for p in t.parents:
            assert position[id(p)] < position[id(t)]


# --- the graph and the layer engine -------------------------------------------------------
def _mlp_graph(x: object, labels: object, tensors: dict[str, gb.Tensor]) -> gb.Tensor:
    h = (x @ tensors["0.weight"].T + tensors["0.bias"]).relu()
    logits = h @ tensors["1.weight"].T + tensors["1.bias"]
    return gb.softmax_cross_entropy(logits, labels)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_graph_and_layer_engine_give_identical_gradients_for_an_mlp(
    device: str, dtype: str, rng: np.random.Generator
) -> None:
    model = gb.Sequential(
        [gb.Dense(5, 7, "relu"), gb.Dense(7, 3)], device=device, dtype=dtype, seed=0
    )
    x = model.to_device(rng.standard_normal((6, 5)))
    labels = model.to_device(np.array([0, 2, 1, 1, 0, 2]))
    value = model.loss_and_grad(x, labels, "cross_entropy")
    tensors = {k: gb.Tensor(v.copy(), requires_grad=True, name=k)
               for k, v in model.parameters().items()}
    loss = _mlp_graph(x, labels, tensors)
    loss.backward()
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert loss.dtype == np.dtype(dtype)
    np.testing.assert_allclose(loss.item(), value, rtol=tol)
    for name, grad in model.gradients().items():
        assert tensors[name].grad.dtype == np.dtype(dtype)
        np.testing.assert_allclose(to_numpy(tensors[name].grad), to_numpy(grad),
                                   rtol=tol, atol=tol, err_msg=name)


def test_every_gradient_has_the_shape_and_dtype_of_its_tensor(
    device: str, rng: np.random.Generator
) -> None:
    model = gb.Sequential([gb.Dense(5, 7, "relu"), gb.Dense(7, 3)], device=device,
                          dtype="float64", seed=0)
    tensors = {k: gb.Tensor(v.copy(), requires_grad=True) for k, v in model.parameters().items()}
    x = gb.Tensor(model.to_device(rng.standard_normal((6, 5))), requires_grad=True)
    loss = _mlp_graph(x, model.to_device(np.array([0, 2, 1, 1, 0, 2])), tensors)
    loss.backward()
    visited = [t for t in gb.topological_order(loss) if t.requires_grad]
    assert len(visited) == 13  # x, 4 parameters, 2 transposes, 2 matmuls, 2 adds, relu, loss
    for t in visited:
        assert t.grad.shape == t.shape and t.grad.dtype == t.dtype
    assert tensors["0.bias"].shape == (7,)  # broadcast over the batch, summed back


def test_a_gate_returning_a_gradient_of_the_wrong_shape_is_caught() -> None:
    class RowSum(gb.Gate):
        name = "rowsum"

        def forward(self, x: np.ndarray) -> np.ndarray:
            return x.sum(axis=1)

        def backward(self, grad: np.ndarray, needs: tuple[bool, ...]) -> list:
            return [grad]  # wrong: (3,) instead of broadcasting back to (3, 4)

    x = gb.Tensor(np.ones((3, 4)), requires_grad=True)
    with pytest.raises(gb.ShapeError, match=r"rowsum gate.*\(3,\).*\(3, 4\)"):
        RowSum()(x).sum().backward()


def test_a_dense_gate_matches_the_same_computation_in_primitive_gates(
    device: str, rng: np.random.Generator
) -> None:
    layer = gb.Dense(4, 3, "tanh").build(device=device, dtype="float64", seed=1)
    xs, r = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    x = gb.Tensor(_dev(device, xs), requires_grad=True)
    out = layer(x)
    (out * _dev(device, r)).sum().backward()

    w = gb.Tensor(layer.params["weight"].copy(), requires_grad=True)
    b = gb.Tensor(layer.params["bias"].copy(), requires_grad=True)
    x2 = gb.Tensor(_dev(device, xs), requires_grad=True)
    ref = (x2 @ w.T + b).tanh()
    (ref * _dev(device, r)).sum().backward()
    np.testing.assert_allclose(to_numpy(out.data), to_numpy(ref.data), rtol=1e-13)
    np.testing.assert_allclose(to_numpy(layer.weight_tensor.grad), to_numpy(w.grad), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(layer.bias_tensor.grad), to_numpy(b.grad), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(x.grad), to_numpy(x2.grad), rtol=1e-12)
    # and against the formulas dW = Δ_Zᵀ x, db = Δ_Zᵀ 1 written in NumPy
    w0 = to_numpy(layer.params["weight"])
    dz = r * (1 - np.tanh(xs @ w0.T) ** 2)
    np.testing.assert_allclose(to_numpy(layer.weight_tensor.grad), dz.T @ xs, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(layer.bias_tensor.grad), dz.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("activation", ["sigmoid", "gelu"])  # keeps a, resp. z, for backward
def test_a_layer_used_twice_in_one_graph_accumulates_both_contributions(
    device: str, activation: str, rng: np.random.Generator
) -> None:
    layer = gb.Dense(4, 4, activation).build(device=device, dtype="float64", seed=2)
    xs, r = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    x = gb.Tensor(_dev(device, xs), requires_grad=True)
    (layer(layer(x)) * _dev(device, r)).sum().backward()

    w = gb.Tensor(layer.params["weight"].copy(), requires_grad=True)
    b = gb.Tensor(layer.params["bias"].copy(), requires_grad=True)
    x2 = gb.Tensor(_dev(device, xs), requires_grad=True)
    h = gb.graph.ActivationGate(activation)(x2 @ w.T + b)
    (gb.graph.ActivationGate(activation)(h @ w.T + b) * _dev(device, r)).sum().backward()
    np.testing.assert_allclose(to_numpy(layer.weight_tensor.grad), to_numpy(w.grad), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(layer.bias_tensor.grad), to_numpy(b.grad), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(x.grad), to_numpy(x2.grad), rtol=1e-12)


def test_layers_and_primitive_gates_mix_in_one_graph(device: str, rng: np.random.Generator
                                                     ) -> None:
    hidden = gb.Dense(5, 6).build(device=device, dtype="float64", seed=3)
    act = gb.Activation("gelu")
    w2 = gb.Tensor(_dev(device, rng.standard_normal((3, 6))), requires_grad=True)
    labels = _dev(device, np.array([1, 0, 2, 2]))
    x = _dev(device, rng.standard_normal((4, 5)))
    loss = gb.softmax_cross_entropy(act(hidden(x) * 0.5) @ w2.T, labels)
    loss.backward()

    def numpy_loss(w1: np.ndarray, b1: np.ndarray, w2n: np.ndarray) -> float:
        z = (to_numpy(x) @ w1.T + b1) * 0.5
        return _np_xent(gb.ACTIVATIONS["gelu"].reference(z) @ w2n.T, to_numpy(labels))

    arrays = [to_numpy(hidden.params["weight"]).copy(), to_numpy(hidden.params["bias"]).copy(),
              to_numpy(w2.data).copy()]
    np.testing.assert_allclose(loss.item(), numpy_loss(*arrays), rtol=1e-12)
    for i, t in enumerate([hidden.weight_tensor, hidden.bias_tensor, w2]):
        np.testing.assert_allclose(to_numpy(t.grad), _fd_grad(numpy_loss, arrays, i),
                                   rtol=1e-6, atol=1e-8)
    assert act.dtype == np.float64  # built lazily on the tensor's dtype


def test_a_standalone_layer_is_built_lazily_on_the_tensors_device_and_dtype(
    device: str, rng: np.random.Generator
) -> None:
    layer = gb.Dense(3, 2, "relu")
    with pytest.raises(gb.ConfigError, match="no parameters yet"):
        layer.parameter_tensors()
    x = gb.Tensor(_dev(device, rng.standard_normal((4, 3)).astype(np.float32)))
    out = layer(x)
    assert out.dtype == np.float32 and out.device == x.device
    assert layer.dtype == np.float32 and layer.backend.device == x.device
    tensors = layer.parameter_tensors()
    assert list(tensors) == ["weight", "bias"] and tensors["weight"] is layer.weight_tensor
    assert tensors["weight"].data is layer.params["weight"]  # a live view, not a copy
    out.sum().backward()
    assert layer.weight_tensor.grad.shape == (2, 3) and layer.bias_tensor.grad.shape == (2,)
    with pytest.raises(gb.ConfigError, match="already has parameters"):
        layer.build()


def test_build_is_seeded_like_a_one_layer_model() -> None:
    layer = gb.Dense(6, 4, "relu").build(dtype="float64", seed=7)
    model = gb.Sequential([gb.Dense(6, 4, "relu")], device="cpu", dtype="float64", seed=7)
    np.testing.assert_array_equal(layer.params["weight"], model.parameters()["0.weight"])
    assert layer.bias_tensor.data.shape == (4,) and not layer.bias_tensor.data.any()


def test_a_layer_in_a_model_is_a_gate_over_the_models_parameters(rng: np.random.Generator
                                                                  ) -> None:
    model = gb.Sequential([gb.Dense(3, 2)], device="cpu", dtype="float64", seed=0)
    layer = model.layers[0]
    assert np.shares_memory(layer.weight_tensor.data, model.flat_params)
    x = rng.standard_normal((4, 3))
    np.testing.assert_allclose(layer(x).numpy(), model.forward(x), rtol=1e-14)
    assert gb.Dense(3, 2, bias=False).build().bias_tensor is None


def test_layer_gate_checks_shapes_and_dtypes() -> None:
    layer = gb.Dense(3, 2).build(dtype="float32", seed=0)
    with pytest.raises(gb.ShapeError, match=r"\(batch, 3\).*\(4, 5\)"):
        layer(gb.Tensor(np.ones((4, 5), np.float32)))
    with pytest.raises(gb.DTypeError, match=r"float32.*float64"):
        layer(gb.Tensor(np.ones((4, 3))))
    with pytest.raises(gb.DTypeError, match="int64"):
        gb.Dense(3, 2)(gb.Tensor(np.ones((4, 3), np.int64)))


# --- granularity: a sigmoid from primitives vs the fused gate -------------------------------
def test_sigmoid_from_primitive_gates_equals_the_fused_gate(
    device: str, rng: np.random.Generator
) -> None:
    xs, r = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    x1 = gb.Tensor(_dev(device, xs), requires_grad=True)
    x2 = gb.Tensor(_dev(device, xs), requires_grad=True)
    primitive = 1 / (1 + (-x1).exp())
    fused = x2.sigmoid()
    primitive.backward(_dev(device, r))
    fused.backward(_dev(device, r))
    s = 1 / (1 + np.exp(-xs))
    np.testing.assert_allclose(to_numpy(primitive.data), to_numpy(fused.data), rtol=1e-14)
    np.testing.assert_allclose(to_numpy(x1.grad), to_numpy(x2.grad), rtol=1e-13)
    np.testing.assert_allclose(to_numpy(x2.grad), r * s * (1 - s), rtol=1e-13)
    # neg, exp, const 1, add, const 1, div vs one sigmoid node
    assert len(gb.topological_order(primitive)) == 7
    assert len(gb.topological_order(fused)) == 2


def test_gradients_are_backward_without_touching_grad(rng: np.random.Generator) -> None:
    x = gb.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = gb.Tensor(rng.standard_normal((2, 4)), requires_grad=True)
    unused = gb.Tensor(rng.standard_normal(2), requires_grad=True)
    y = (x @ w.T).tanh()
    r = rng.standard_normal(y.shape)
    dx, dw, du = gb.graph.gradients(y, [x, w, unused], r)
    assert du is None and x.grad is None and w.grad is None
    y.backward(r)
    np.testing.assert_array_equal(dx, x.grad)
    np.testing.assert_array_equal(dw, w.grad)
    assert gb.graph.gradients(gb.Tensor(np.ones(3)).sum(), [x]) == [None]


# --- Jacobians ----------------------------------------------------------------------------
def test_jacobian_of_a_vector_function_matches_formula_and_finite_differences(
    device: str, rng: np.random.Generator
) -> None:
    w = rng.standard_normal((3, 4))
    xs = rng.standard_normal(4)
    wd = _dev(device, w)
    jac = to_numpy(gb.jacobian(lambda t: (wd @ t).tanh(), _dev(device, xs)))
    assert jac.shape == (3, 4)
    y = np.tanh(w @ xs)
    np.testing.assert_allclose(jac, (1 - y**2)[:, None] * w, rtol=1e-12)  # diag(1 − y²) W
    numeric = np.stack([
        _fd_grad(lambda v, i=i: float(np.tanh(w @ v)[i]), [xs.copy()], 0) for i in range(3)
    ])
    np.testing.assert_allclose(jac, numeric, rtol=1e-6, atol=1e-8)


def test_jacobian_flattens_inputs_and_outputs_in_c_order(
    device: str, rng: np.random.Generator
) -> None:
    xs = rng.standard_normal((2, 3))
    jac = to_numpy(gb.jacobian(lambda t: (t * t).sum(axis=0) * 2.0, _dev(device, xs)))
    assert jac.shape == (3, 6)
    numeric = np.stack([
        _fd_grad(lambda v, i=i: float((2 * v * v).sum(axis=0)[i]), [xs.copy()], 0).reshape(-1)
        for i in range(3)
    ])
    np.testing.assert_allclose(jac, numeric, rtol=1e-6, atol=1e-8)
    assert not jac[0, 1] and jac[0, 0] == pytest.approx(4 * xs[0, 0])
    # an output that does not depend on x has a zero Jacobian
    zeros = gb.jacobian(lambda t: gb.Tensor(np.ones(2)), xs)
    assert zeros.shape == (2, 6) and not zeros.any()


# --- backward twice, zero_grad ----------------------------------------------------------------
def test_backward_twice_accumulates_and_zero_grad_resets(
    device: str, rng: np.random.Generator
) -> None:
    xs = rng.standard_normal(4)
    x = gb.Tensor(_dev(device, xs), requires_grad=True)
    y = x * x
    loss = y.sum()
    assert x.grad is None
    loss.backward()
    np.testing.assert_allclose(to_numpy(x.grad), 2 * xs, rtol=1e-15)
    loss.backward()  # the graph keeps its buffers: the same gradients are added again
    np.testing.assert_allclose(to_numpy(x.grad), 4 * xs, rtol=1e-15)
    np.testing.assert_allclose(to_numpy(y.grad), 2 * np.ones(4), rtol=1e-15)
    kept = x.grad
    x.zero_grad()
    assert x.grad is kept and not to_numpy(x.grad).any()  # zeroed in place
    gb.zero_grad(y, loss)
    loss.backward()
    np.testing.assert_allclose(to_numpy(x.grad), 2 * xs, rtol=1e-15)
    np.testing.assert_allclose(to_numpy(y.grad), np.ones(4), rtol=1e-15)


def test_backward_twice_through_layer_and_loss_gates(
    device: str, rng: np.random.Generator
) -> None:
    layer = gb.Dense(3, 4, "relu").build(device=device, dtype="float64", seed=0)
    x = _dev(device, rng.standard_normal((5, 3)))
    loss = gb.softmax_cross_entropy(layer(x), _dev(device, np.array([0, 1, 2, 3, 0])))
    loss.backward()
    first = to_numpy(layer.weight_tensor.grad).copy()
    layer(x * 2.0)  # another call in between must not disturb the first graph
    loss.backward()
    np.testing.assert_allclose(to_numpy(layer.weight_tensor.grad), 2 * first, rtol=1e-14)
    gb.zero_grad(layer)
    assert not to_numpy(layer.weight_tensor.grad).any()
    loss.backward()
    np.testing.assert_allclose(to_numpy(layer.weight_tensor.grad), first, rtol=1e-14)


# --- dtypes ---------------------------------------------------------------------------------
def test_dtype_promotion_follows_numpy_and_python_scalars_stay_weak(device: str) -> None:
    f32 = gb.Tensor(_dev(device, np.ones((2, 3), np.float32)), requires_grad=True)
    f64 = gb.Tensor(_dev(device, np.ones(3)), requires_grad=True)
    assert (f32 * 0.5).dtype == np.float32  # no upcast because of a Python float
    assert (2 + f32 - 1.5).dtype == np.float32
    assert (f32 ** 2).dtype == np.float32 and f32.sigmoid().dtype == np.float32
    assert (f32 @ f32.T).dtype == np.float32
    assert gb.maximum(f32, 0.0).dtype == np.float32
    mixed = f32 + f64  # NumPy promotion: float64
    assert mixed.dtype == np.float64
    mixed.sum().backward()
    assert f32.grad.dtype == np.float32 and f64.grad.dtype == np.float64
    np.testing.assert_array_equal(to_numpy(f64.grad), [2.0, 2.0, 2.0])
    ints = gb.Tensor(_dev(device, np.arange(3)))
    assert (ints + 1).dtype == np.int64 and (ints + 1.5).dtype == np.float64
    logits = gb.Tensor(_dev(device, np.zeros((2, 3), np.float32)), requires_grad=True)
    assert gb.softmax_cross_entropy(logits, _dev(device, np.array([0, 1]))).dtype == np.float32


def test_gradients_flow_in_the_dtype_of_each_tensor() -> None:
    seen = []

    class Spy(gb.Gate):
        name = "spy"

        def forward(self, x: np.ndarray) -> np.ndarray:
            return x.copy()

        def backward(self, grad: np.ndarray, needs: tuple[bool, ...]) -> list:
            seen.append(grad.dtype)
            return [grad]

    f32 = gb.Tensor(np.ones(3, np.float32), requires_grad=True)
    (Spy()(f32) + gb.Tensor(np.ones(3), requires_grad=True)).sum().backward()
    assert seen == [np.float32]  # the float64 gradient of the sum is cast on its way


def test_arrays_and_scalars_on_either_side_are_constants(rng: np.random.Generator) -> None:
    a = rng.standard_normal((2, 3))
    x = gb.Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    y = a * x - a / 2.0 + x / a  # NumPy arrays on the left defer to the Tensor
    assert isinstance(y, gb.Tensor) and len(gb.topological_order(y, grad_only=True)) == 5
    y.sum().backward()
    np.testing.assert_allclose(x.grad, a + 1 / a, rtol=1e-14)


# --- graph_gradcheck ----------------------------------------------------------------------------
def test_graph_gradcheck_passes_on_correct_gates(rng: np.random.Generator) -> None:
    labels = np.array([0, 2, 1])
    report = gb.graph_gradcheck(
        lambda x, w: gb.softmax_cross_entropy((x @ w.T).tanh(), labels),
        rng.standard_normal((3, 4)), rng.standard_normal((3, 4)),
    )
    assert isinstance(report, gb.GradcheckReport) and report.ok
    assert [e.name for e in report.entries] == ["input 0", "input 1"]
    assert all(e.checked == 12 for e in report.entries)
    # a non-scalar output is projected on a random R; a layer's parameters can be inputs
    layer = gb.Dense(4, 2, "sigmoid").build(dtype="float64", seed=0)
    report = gb.graph_gradcheck(lambda x, w, b: layer(x), rng.standard_normal((3, 4)),
                                layer.weight_tensor, layer.bias_tensor)
    assert report.ok and [e.name for e in report.entries] == ["input 0", "weight", "bias"]


def test_graph_gradcheck_catches_a_wrong_backward() -> None:
    class BadSquare(gb.Gate):
        name = "bad_square"

        def forward(self, x: np.ndarray) -> np.ndarray:
            self.x = x
            return x * x

        def backward(self, grad: np.ndarray, needs: tuple[bool, ...]) -> list:
            return [grad * self.x]  # should be 2 x

    x = np.array([0.5, -1.0, 2.0])
    with pytest.raises(gb.GradcheckError, match="input 0"):
        gb.graph_gradcheck(lambda t: BadSquare()(t).sum(), x)
    report = gb.graph_gradcheck(lambda t: BadSquare()(t).sum(), x, raise_exception=False)
    assert not report.ok
    np.testing.assert_array_equal(x, [0.5, -1.0, 2.0])  # the caller's array is untouched
    with pytest.raises(gb.DTypeError, match="float64"):
        gb.graph_gradcheck(lambda t: t.sum(), x.astype(np.float32))


# --- errors ---------------------------------------------------------------------------------
def test_backward_on_a_non_scalar_needs_a_gradient_of_its_shape(device: str) -> None:
    x = gb.Tensor(_dev(device, np.ones((3, 4))), requires_grad=True)
    y = x * 2.0
    with pytest.raises(gb.ShapeError, match=r"scalar.*\(3, 4\)"):
        y.backward()
    with pytest.raises(gb.ShapeError, match=r"\(4, 3\).*\(3, 4\)"):
        y.backward(_dev(device, np.ones((4, 3))))
    with pytest.raises(gb.ConfigError, match="does not require grad"):
        gb.Tensor(_dev(device, np.ones(2))).sum().backward()


def test_matmul_and_broadcasting_errors_name_both_shapes(device: str) -> None:
    a = gb.Tensor(_dev(device, np.ones((3, 4))))
    b = gb.Tensor(_dev(device, np.ones((5, 2))))
    with pytest.raises(gb.ShapeError, match=r"matmul: shapes \(3, 4\) and \(5, 2\)"):
        a @ b
    with pytest.raises(gb.ShapeError, match=r"\(3, 4\) and \(5, 2\) do not broadcast"):
        a + b
    with pytest.raises(gb.ShapeError, match=r"matmul.*\(3, 4\) and \(\)"):
        a @ gb.Tensor(_dev(device, np.array(2.0)))
    with pytest.raises(gb.ShapeError, match=r"batch axes.*\(2, 3, 4\) and \(3, 4, 1\)"):
        gb.Tensor(np.ones((2, 3, 4))) @ gb.Tensor(np.ones((3, 4, 1)))
    with pytest.raises(gb.ShapeError, match=r"\(3, 4\).*\(5,\)"):
        a.reshape(5)
    with pytest.raises(gb.ShapeError, match=r"axis 2 .*\(3, 4\)"):
        a.sum(axis=2)


def test_mixing_devices_raises_device_error_naming_both() -> None:
    x = gb.Tensor(np.ones(3), requires_grad=True)
    other = gb.Tensor(np.ones(3))
    # stands in for a GPU tensor: the check compares the tensors' devices
    other.backend = gb.Backend("cuda:0", np, NumpyOps())
    with pytest.raises(gb.DeviceError, match=r"cpu and cuda:0"):
        x + other
    with pytest.raises(gb.DeviceError, match=r"cuda:0 and cpu"):
        gb.maximum(other, x)


@pytest.mark.gpu
def test_a_gpu_tensor_and_a_host_array_do_not_mix() -> None:
    x = gb.Tensor(gb.get_backend("cuda").asarray(np.ones(3)), requires_grad=True)
    assert x.device == "cuda:0" and (x * 2.0).device == "cuda:0"
    with pytest.raises(gb.DeviceError, match=r"cuda:0 and cpu"):
        x + np.ones(3)


def test_bad_values_and_misuse_raise_clear_errors() -> None:
    with pytest.raises(gb.DTypeError, match="float dtype"):
        gb.Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(gb.DTypeError, match="numeric"):
        gb.Tensor(np.array(["a"]))
    x = gb.Tensor(np.ones((2, 3)), requires_grad=True)
    gate = gb.graph.AddGate()
    gate(x, 1.0)
    with pytest.raises(gb.ConfigError, match="already applied"):
        gate(x, 2.0)
    with pytest.raises(gb.ConfigError, match="Python number"):
        x ** x
    with pytest.raises(gb.LabelError, match="label 3"):
        gb.softmax_cross_entropy(x, np.array([0, 3]))
    with pytest.raises(gb.ConfigError, match="targets"):
        gb.softmax_cross_entropy(x, gb.Tensor(np.ones((2, 3)), requires_grad=True))
    with pytest.raises(gb.ShapeError, match="6 elements"):
        x.item()
