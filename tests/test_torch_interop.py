"""gb.to_torch / gb.from_torch: equivalent models both ways, for every activation, in
float32 (to 1e-6) and float64 (to 1e-12); the first unsupported module is named."""

from __future__ import annotations

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.activations import ACTIVATIONS
from gpubackprop.torch_interop import TORCH_ACTIVATIONS, recurrent_output

torch = pytest.importorskip("torch")
nn = torch.nn

TOL = {"float32": 1e-6, "float64": 1e-12}
DTYPES = list(TOL)


def _torch_out(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _x(dtype: str, rows: int = 37, width: int = 6) -> np.ndarray:
    return (2 * np.random.default_rng(5).standard_normal((rows, width))).astype(dtype)


def test_every_activation_has_a_torch_module() -> None:
    assert set(TORCH_ACTIVATIONS) == set(ACTIVATIONS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_to_torch_computes_what_the_model_does(activation: str, dtype: str) -> None:
    model = gb.Sequential(
        [gb.Dense(6, 8, activation), gb.Dense(8, 5, activation, bias=False),
         gb.Activation(activation), gb.Dense(5, 3)],
        device="cpu", dtype=dtype, seed=2,
    )
    module = gb.to_torch(model)
    x = _x(dtype)
    out = _torch_out(module, x)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out, model.predict(x), rtol=TOL[dtype], atol=TOL[dtype])
    linears = [m for m in module if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == [
        (6, 8, True), (8, 5, False), (5, 3, True)
    ]
    weight = linears[0].weight.detach().numpy()
    np.testing.assert_array_equal(weight, model.parameters()["0.weight"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_from_torch_computes_what_the_module_does(activation: str, dtype: str) -> None:
    torch.manual_seed(0)
    cls, kwargs = TORCH_ACTIVATIONS[activation]
    act = getattr(nn, cls)
    module = nn.Sequential(
        nn.Linear(6, 8), act(**kwargs), nn.Linear(8, 4, bias=False), act(**kwargs), act(**kwargs)
    ).to(getattr(torch, dtype))
    model = gb.from_torch(module, device="cpu")
    assert model.dtype == np.dtype(dtype)
    x = _x(dtype)
    np.testing.assert_allclose(
        model.predict(x), _torch_out(module, x), rtol=TOL[dtype], atol=TOL[dtype]
    )
    if activation != "identity":  # Linear + activation is one Dense; a second is a layer
        assert [type(layer) for layer in model.layers] == [gb.Dense, gb.Dense, gb.Activation]
        assert model.layers[1].activation.name == activation
        assert not model.layers[1].use_bias


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_round_trip_gives_the_same_model(dtype: str) -> None:
    model = gb.Sequential(
        [gb.Activation("tanh"), gb.Dense(6, 8, "gelu_tanh"), gb.Dense(8, 2, bias=False)],
        device="cpu", dtype=dtype, seed=3,
    )
    back = gb.from_torch(gb.to_torch(model), device="cpu", seed=7)
    assert [layer.describe() for layer in back.layers] == [
        layer.describe() for layer in model.layers
    ]
    assert back.seed == 7 and back.dtype == model.dtype
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], value)


def test_nested_sequentials_are_flattened_and_identity_dropped() -> None:
    module = nn.Sequential(
        nn.Sequential(nn.Linear(4, 5), nn.Identity()), nn.Sequential(nn.ReLU()), nn.Linear(5, 2)
    )
    model = gb.from_torch(module, device="cpu")
    assert [layer.describe() for layer in model.layers] == ["Dense 4->5, relu", "Dense 5->2"]
    x = _x("float32", width=4)
    np.testing.assert_allclose(model.predict(x), _torch_out(module, x), atol=1e-6)


def test_a_single_linear_or_activation_module_converts() -> None:
    assert gb.from_torch(nn.Linear(3, 2), device="cpu").layers[0].describe() == "Dense 3->2"
    assert gb.from_torch(nn.SiLU(), device="cpu").layers[0].describe() == "Activation silu"


def test_the_first_unsupported_module_is_named() -> None:
    module = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Conv2d(1, 1, 3), nn.Dropout())
    with pytest.raises(gb.ConfigError, match=r"from_torch: module 2 \(Conv2d\) has no "
                       r"gpubackprop layer; supported: Linear, Identity, Sigmoid"):
        gb.from_torch(module, device="cpu")
    nested = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Tanh(), nn.Softmax(dim=1)))
    with pytest.raises(gb.ConfigError, match=r"module 1\.1 \(Softmax\)"):
        gb.from_torch(nested, device="cpu")


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.LeakyReLU(0.2), r"module 0 \(LeakyReLU\) has negative_slope=0.2; "
                            r"gpubackprop's LeakyReLU has negative_slope=0.01"),
        (nn.ELU(alpha=0.5), r"alpha=0.5"),
        (nn.Softplus(beta=2.0), r"beta=2.0"),
        (nn.Softplus(threshold=5.0), r"threshold=5.0"),
    ],
)
def test_other_activation_parameters_are_refused(module, message: str) -> None:
    with pytest.raises(gb.ConfigError, match=message):
        gb.from_torch(nn.Sequential(module), device="cpu")


def test_torch_defaults_of_softplus_and_gelu_are_taken() -> None:
    model = gb.from_torch(
        nn.Sequential(nn.Softplus(), nn.GELU(), nn.GELU("tanh"), nn.LeakyReLU()), device="cpu"
    )
    assert [layer.activation.name for layer in model.layers] == [
        "softplus", "gelu", "gelu_tanh", "leaky_relu"
    ]


def test_dtype_follows_the_module_unless_given() -> None:
    half = nn.Sequential(nn.Linear(3, 2)).half()
    with pytest.raises(gb.DTypeError, match=r"from_torch: parameters of dtype float16.*dtype="):
        gb.from_torch(half, device="cpu")
    model = gb.from_torch(half, device="cpu", dtype="float32")
    np.testing.assert_array_equal(
        model.parameters()["0.weight"], half[0].weight.detach().float().numpy()
    )
    assert gb.from_torch(nn.ReLU(), device="cpu").dtype == np.float32


def test_widths_that_do_not_chain_are_a_shape_error() -> None:
    with pytest.raises(gb.ShapeError):
        gb.from_torch(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)), device="cpu")


@pytest.mark.gpu
def test_a_gpu_model_converts_both_ways() -> None:
    module = nn.Sequential(nn.Linear(6, 4), nn.GELU(), nn.Linear(4, 2)).double()
    model = gb.from_torch(module, device="cuda")
    x = _x("float64")
    np.testing.assert_allclose(model.predict(x), _torch_out(module, x), atol=1e-12)
    np.testing.assert_allclose(_torch_out(gb.to_torch(model), x), model.predict(x), atol=1e-12)


def test_layer_norm_and_dropout_convert_both_ways() -> None:
    """gb.LayerNorm <-> nn.LayerNorm (same weight and bias), gb.Dropout <-> nn.Dropout;
    in eval mode the two models agree to float64 rounding."""
    model = gb.Sequential(
        [gb.Dense(5, 8, "tanh"), gb.Dropout(0.25), gb.LayerNorm(8, eps=1e-3), gb.Dense(8, 2)],
        device="cpu", dtype="float64", seed=0,
    )
    model.parameters()["2.weight"][...] = np.linspace(0.5, 2.0, 8)
    model.parameters()["2.bias"][...] = np.linspace(-1.0, 1.0, 8)
    net = gb.to_torch(model).eval()
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "Tanh", "Dropout", "LayerNorm", "Linear"]
    assert net[2].p == 0.25 and net[3].eps == 1e-3
    x = np.random.default_rng(0).standard_normal((6, 5))
    with torch.no_grad():
        ours = model.eval().predict(x)
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), ours, rtol=0, atol=1e-12)
    back = gb.from_torch(net, device="cpu")
    assert [layer.describe() for layer in back.layers] == [
        layer.describe() for layer in model.layers
    ]
    np.testing.assert_array_equal(back.flat_params, model.flat_params)
    with pytest.raises(gb.ConfigError, match=r"module 0 \(LayerNorm\(3, 4\).*last axis"):
        gb.from_torch(nn.LayerNorm((3, 4)), device="cpu")
    with pytest.raises(gb.ConfigError, match=r"elementwise_affine=False"):
        gb.from_torch(nn.LayerNorm(4, elementwise_affine=False), device="cpu")


def _sequence_model(dtype: str, first: str) -> gb.Sequential:
    """Every sequence layer in one model: tokens (first="tokens") or floats (B, T, 5)."""
    head = [gb.Embedding(11, 5), gb.Dropout(0.2)] if first == "tokens" else []
    return gb.Sequential(
        [*head, gb.LSTM(5, 7), gb.LayerNorm(7), gb.GRU(7, 6), gb.RNN(6, 4, "relu"),
         gb.Dense(4, 11)],
        device="cpu", dtype=dtype, seed=0,
    )


def _sequence_input(first: str, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    if first == "tokens":
        return rng.integers(0, 11, (3, 9))
    return rng.standard_normal((3, 9, 5)).astype(dtype)


@pytest.mark.parametrize("first", ["tokens", "floats"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_layers_convert_both_ways(dtype: str, first: str) -> None:
    """Embedding, LSTM, GRU, RNN <-> nn.Embedding, nn.LSTM/GRU/RNN(batch_first=True),
    each recurrent module wrapped to return its output only: the torch Sequential runs
    and agrees to 1e-6 (float32) / 1e-12 (float64); from_torch gives the model back."""
    model = _sequence_model(dtype, first)
    model.parameters()[f"{len(model.layers) - 2}.bh"][...] = 0.3  # a bias to split
    net = gb.to_torch(model).eval()
    rnn = net[-2].rnn
    assert isinstance(rnn, nn.RNN) and rnn.nonlinearity == "relu" and rnn.batch_first
    np.testing.assert_array_equal(rnn.bias_hh_l0.detach().numpy(), 0.0)
    assert all(isinstance(m, recurrent_output(nn)) for m in (net[-5], net[-3], net[-2]))
    x = _sequence_input(first, dtype)
    ours = model.eval().predict(x)
    np.testing.assert_allclose(_torch_out(net, x), ours, rtol=0, atol=TOL[dtype])
    back = gb.from_torch(net, device="cpu")
    assert [la.describe() for la in back.layers] == [la.describe() for la in model.layers]
    np.testing.assert_array_equal(back.flat_params, model.flat_params)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bare_torch_recurrent_modules_convert_and_rnn_biases_add(dtype: str) -> None:
    """from_torch takes unwrapped nn.LSTM/GRU/RNN; nn.RNN's two biases become one,
    bh = bias_ih + bias_hh, and the outputs agree."""
    torch.manual_seed(0)
    tdtype = getattr(torch, dtype)
    lstm = nn.LSTM(5, 6, batch_first=True, dtype=tdtype)
    gru = nn.GRU(6, 4, batch_first=True, dtype=tdtype)
    rnn = nn.RNN(4, 3, nonlinearity="tanh", batch_first=True, dtype=tdtype)
    model = gb.from_torch(nn.Sequential(lstm, gru, rnn), device="cpu")
    bh = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().numpy()
    np.testing.assert_allclose(model.parameters()["2.bh"], bh, rtol=0, atol=TOL[dtype])
    x = _sequence_input("floats", dtype)
    with torch.no_grad():
        h = torch.from_numpy(x)
        for module in (lstm, gru, rnn):
            h = module(h)[0]
    np.testing.assert_allclose(model.predict(x), h.numpy(), rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.LSTM(3, 4), r"module 0 \(LSTM with batch_first=False\).*batch_first=True"),
        (nn.GRU(3, 4, batch_first=True, num_layers=2), r"\(GRU with num_layers=2\)"),
        (nn.RNN(3, 4, batch_first=True, bias=False), r"\(RNN with bias=False\).*bias=True"),
        (
            nn.LSTM(3, 4, batch_first=True, bidirectional=True, proj_size=2),
            r"bidirectional=True, proj_size=2\).*bidirectional=False, proj_size=0",
        ),
        (nn.Embedding(5, 3, padding_idx=0), r"\(Embedding with padding_idx=0\)"),
        (nn.Embedding(5, 3, max_norm=1.0), r"\(Embedding with max_norm=1.0\)"),
    ],
)
def test_other_recurrent_or_embedding_settings_are_refused(module, message: str) -> None:
    with pytest.raises(gb.ConfigError, match=message):
        gb.from_torch(module, device="cpu")
