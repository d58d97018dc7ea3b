"""PyTorch conversion: :func:`to_torch` and :func:`from_torch`.

A :class:`~gpubackprop.Dense` layer ``a_out = f(a_in Wᵀ + b)`` is a
``torch.nn.Linear`` (the same (out, in) weight, no transpose) followed by the
module of its activation; a standalone :class:`~gpubackprop.Activation` is that
module alone. The activation table (:data:`TORCH_ACTIVATIONS`):

=============  ====================================================
gpubackprop    torch.nn
=============  ====================================================
identity       (nothing after a Linear; ``Identity`` standalone)
sigmoid        ``Sigmoid()``
tanh           ``Tanh()``
relu           ``ReLU()``
leaky_relu     ``LeakyReLU(negative_slope=0.01)``
elu            ``ELU(alpha=1.0)``
softplus       ``Softplus(beta=1.0, threshold=40.0)``
gelu           ``GELU()`` (exact, with erf)
gelu_tanh      ``GELU(approximate="tanh")``
silu           ``SiLU()``
=============  ====================================================

A :class:`~gpubackprop.LayerNorm` is ``torch.nn.LayerNorm(F, eps)`` (the same weight
and bias) and a :class:`~gpubackprop.Dropout` is ``torch.nn.Dropout(p)``, both ways.

Sequence layers (batch-first, one layer, one direction, with biases):

====================================  =================================================
gpubackprop                           torch.nn
====================================  =================================================
``Embedding(V, D)``                   ``Embedding(V, D)`` (weight copied)
``LSTM(F, H)`` / ``GRU(F, H)``        ``LSTM(F, H, batch_first=True)`` / ``GRU(...)``:
                                      weight_ih, weight_hh, bias_ih, bias_hh are
                                      weight_ih_l0, ... (the same gate order)
``RNN(F, H, f)``                      ``RNN(F, H, nonlinearity=f, batch_first=True)``:
                                      Wxh = weight_ih_l0, Whh = weight_hh_l0; torch's
                                      two biases are one: ``to_torch`` writes
                                      bias_ih_l0 = bh, bias_hh_l0 = 0, ``from_torch``
                                      takes bh = bias_ih_l0 + bias_hh_l0
====================================  =================================================

A torch recurrent module returns ``(output, state)``: ``to_torch`` wraps each in a
:func:`recurrent_output` module (``RecurrentOutput``) whose forward returns the output
sequence only, so the ``nn.Sequential`` runs; ``from_torch`` takes the recurrent
module wrapped or bare.

PyTorch is optional: it is imported inside the functions, never by
``import gpubackprop``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .activations import ELU_ALPHA, LEAKY_RELU_SLOPE
from .errors import ConfigError, DTypeError
from .layers import Activation, Dense, Layer
from .layers_embedding import Embedding
from .layers_norm import Dropout, LayerNorm
from .layers_recurrent import GRU, LSTM
from .model import Sequential
from .rnn import RNN

if TYPE_CHECKING:
    from types import ModuleType

    from .backend import Backend

#: gpubackprop activation -> (torch.nn class name, keyword arguments)
TORCH_ACTIVATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "identity": ("Identity", {}),
    "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}),
    "relu": ("ReLU", {}),
    "leaky_relu": ("LeakyReLU", {"negative_slope": LEAKY_RELU_SLOPE}),
    "elu": ("ELU", {"alpha": ELU_ALPHA}),
    # log(1 + e^z) is z within float64 rounding from z = 37 on: a threshold of 40
    # makes torch's linear branch exact (its default 20 would differ by e^-20 ≈ 2e-9)
    "softplus": ("Softplus", {"beta": 1.0, "threshold": 40.0}),
    "gelu": ("GELU", {"approximate": "none"}),
    "gelu_tanh": ("GELU", {"approximate": "tanh"}),
    "silu": ("SiLU", {}),
}
#: the smallest Softplus threshold :func:`from_torch` takes (above it torch returns z,
#: which differs from log(1 + e^z) by less than e^-20 ≈ 2.1e-9)
MIN_SOFTPLUS_THRESHOLD = 20.0
_DTYPES = ("float32", "float64")
#: gpubackprop parameter name -> torch parameter name, of LSTM and GRU
_GATED_NAMES = {n: f"{n}_l0" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
#: gpubackprop RNN parameter name -> torch nn.RNN parameter name (bh: bias_ih_l0)
_RNN_NAMES = {"Wxh": "weight_ih_l0", "Whh": "weight_hh_l0", "bh": "bias_ih_l0"}
_SUPPORTED = "Dense, Activation, LayerNorm, Dropout, Embedding, LSTM, GRU, RNN"


def _torch() -> ModuleType:
    """``torch``, or an ImportError that says how to get it."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "gpubackprop's PyTorch conversion needs PyTorch: pip install torch"
        ) from exc
    return torch


def to_torch(model: Sequential) -> Any:
    """An equivalent ``torch.nn.Sequential`` on the CPU, with the weights copied.

    Each Dense(in, out, f) becomes ``nn.Linear(in, out, bias=...)`` with W (out, in)
    and b copied, then f's module (none for the identity); each Activation(f)
    becomes f's module (see :data:`TORCH_ACTIVATIONS`); the sequence layers map as in
    the module docstring (a recurrent one wrapped by :func:`recurrent_output`). The
    torch dtype is the model's (float32 or float64), so ``to_torch(model)(torch.from_numpy(x))``
    equals ``model.predict(x)`` to rounding. Move it with ``.to("cuda")``.
    Raises ConfigError for a layer PyTorch conversion does not know.
    """
    torch = _torch()
    nn = torch.nn
    dtype = getattr(torch, np.dtype(model.dtype).name)
    modules: list[Any] = []
    for layer in model.layers:
        modules.extend(_torch_modules(torch, model, layer, dtype))
    return nn.Sequential(*modules)


def _torch_modules(torch: ModuleType, model: Sequential, layer: Layer, dtype: Any) -> list[Any]:
    """The torch modules equal to ``layer`` of ``model``, parameters copied (module
    docstring); ConfigError for a layer without one."""
    nn = torch.nn
    if isinstance(layer, Dense):
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.use_bias, dtype=dtype)
        modules = [_copy_params(torch, model, layer, linear)]
        if not layer.activation.is_identity:
            modules.append(_activation_module(nn, layer.activation.name))
        return modules
    if isinstance(layer, Activation):
        return [_activation_module(nn, layer.activation.name)]
    if isinstance(layer, LayerNorm):
        norm = nn.LayerNorm(layer.features, eps=layer.eps, dtype=dtype)
        return [_copy_params(torch, model, layer, norm)]
    if isinstance(layer, Dropout):
        return [nn.Dropout(layer.p)]
    if isinstance(layer, Embedding):
        table = nn.Embedding(layer.num_embeddings, layer.embedding_dim, dtype=dtype)
        return [_copy_params(torch, model, layer, table)]
    wrap = recurrent_output(nn)
    if isinstance(layer, LSTM | GRU):
        cls = nn.LSTM if isinstance(layer, LSTM) else nn.GRU
        cell = cls(layer.input_size, layer.hidden_size, batch_first=True, dtype=dtype)
        return [wrap(_copy_params(torch, model, layer, cell, _GATED_NAMES))]
    if isinstance(layer, RNN):
        cell = nn.RNN(
            layer.input_size, layer.hidden_size, nonlinearity=layer.activation.name,
            batch_first=True, dtype=dtype,
        )
        with torch.no_grad():
            cell.bias_hh_l0.zero_()
        return [wrap(_copy_params(torch, model, layer, cell, _RNN_NAMES))]
    raise ConfigError(
        f"to_torch: {layer.label} has no PyTorch conversion; supported: {_SUPPORTED}"
    )


@functools.cache
def recurrent_output(nn: ModuleType) -> type:
    """The ``RecurrentOutput`` module class: ``RecurrentOutput(rnn)(x) = rnn(x)[0]``.

    A torch ``nn.LSTM``/``nn.GRU``/``nn.RNN`` returns ``(output, state)``; wrapped, it
    returns the output sequence (B, T, H) only, so it runs inside an ``nn.Sequential``.
    The wrapped module is its attribute ``rnn``. One class per torch (cached).
    """

    class RecurrentOutput(nn.Module):  # type: ignore[name-defined]
        """A torch recurrent module that returns its output sequence, not the state."""

        def __init__(self, rnn: Any) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, x: Any) -> Any:
            return self.rnn(x)[0]

    return RecurrentOutput


def _copy_params(
    torch: ModuleType,
    model: Sequential,
    layer: Layer,
    module: Any,
    names: dict[str, str] | None = None,
) -> Any:
    """``module`` with each of ``layer``'s parameters copied into its torch parameter
    ``names[name]`` (default: its namesake); returns it."""
    with torch.no_grad():
        for name, view in layer.params.items():
            target = getattr(module, (names or {}).get(name, name))
            target.copy_(torch.from_numpy(model.backend.to_numpy(view)))
    return module


def _activation_module(nn: ModuleType, name: str) -> Any:
    cls, kwargs = TORCH_ACTIVATIONS[name]
    return getattr(nn, cls)(**kwargs)


def from_torch(
    module: Any, device: str | Backend = "auto", dtype: Any = None, seed: int | None = None
) -> Sequential:
    """A gpubackprop :class:`~gpubackprop.Sequential` equal to a PyTorch module.

    ``module`` is an ``nn.Sequential`` (nested ones are flattened), an
    ``nn.Linear``, an activation module, an ``nn.LayerNorm`` over the last axis (with
    weight and bias), an ``nn.Dropout``, an ``nn.Embedding`` (no padding_idx, no
    max_norm) or a batch-first, one-layer, unidirectional ``nn.LSTM``/``nn.GRU``/``nn.RNN``
    with biases, bare or wrapped by :func:`recurrent_output` (module docstring). An
    ``nn.Linear`` followed by an activation module becomes one Dense(in, out, f)
    (bias=False stays without a bias); an activation module after anything else
    becomes an Activation layer;
    ``nn.Identity`` is dropped. Weights are copied: z = x Wᵀ + b with the same W.

    ``dtype`` defaults to the module's (float32 or float64); ``device`` and ``seed``
    (for the shuffling of ``fit``) as for :class:`~gpubackprop.Sequential`. Raises
    ConfigError naming the first module without a gpubackprop layer (its index and
    type) or with other parameters (e.g. a LeakyReLU slope other than 0.01),
    DTypeError for parameters of another dtype when ``dtype`` is not given.
    """
    torch = _torch()
    layers: list[Layer] = []
    sources: dict[int, dict[str, Any]] = {}  # index in layers -> its parameters' tensors
    for path, item in _flatten(torch.nn, module, ""):
        layer, tensors = _layer_of(torch.nn, path, item)
        if layer is not None:
            sources[len(layers)] = tensors
            layers.append(layer)
            continue
        name = _activation_name(torch.nn, path, item)
        if name == "identity":
            continue
        previous = layers[-1] if layers else None
        if isinstance(previous, Dense) and previous.activation.is_identity:
            layers[-1] = Dense(
                previous.in_features, previous.out_features, name, bias=previous.use_bias
            )
        else:
            layers.append(Activation(name))
    model = Sequential(layers, device=device, dtype=_dtype(module, dtype), seed=seed)
    params = model.parameters()
    with model.backend.activate():
        for index, tensors in sources.items():
            for name, tensor in tensors.items():
                host = tensor.detach().to("cpu", torch.float64).numpy()
                params[f"{index}.{name}"][...] = model.backend.asarray(host, dtype=model.dtype)
    return model


def _layer_of(nn: ModuleType, path: str, item: Any) -> tuple[Layer | None, dict[str, Any]]:
    """The gpubackprop layer of a torch module with parameters or a Dropout, and its
    parameter name -> torch tensor; (None, {}) for anything else (an activation)."""
    if isinstance(item, recurrent_output(nn)):
        item = getattr(item, "rnn")  # noqa: B009 (a class made at run time)
    if isinstance(item, nn.Linear):
        layer: Layer = Dense(item.in_features, item.out_features, bias=item.bias is not None)
        return layer, dict(item.named_parameters())
    if isinstance(item, nn.LayerNorm):
        return _layer_norm(path, item), dict(item.named_parameters())
    if isinstance(item, nn.Dropout):
        return Dropout(item.p), {}
    if isinstance(item, nn.Embedding):
        return _embedding(path, item), {"weight": item.weight}
    if isinstance(item, nn.LSTM | nn.GRU | nn.RNN):
        _check_recurrent(path, item)
        if isinstance(item, nn.RNN):
            rnn = RNN(item.input_size, item.hidden_size, item.nonlinearity, device="cpu")
            tensors = {n: getattr(item, t) for n, t in _RNN_NAMES.items()}
            tensors["bh"] = item.bias_ih_l0 + item.bias_hh_l0
            return rnn, tensors
        cls = LSTM if isinstance(item, nn.LSTM) else GRU
        tensors = {n: getattr(item, t) for n, t in _GATED_NAMES.items()}
        return cls(item.input_size, item.hidden_size), tensors
    return None, {}


def _embedding(path: str, item: Any) -> Embedding:
    """The Embedding of a plain ``nn.Embedding``, or ConfigError naming module ``path``."""
    extras = {"padding_idx": item.padding_idx, "max_norm": item.max_norm}
    set_ = {k: v for k, v in extras.items() if v is not None}
    if set_:
        got = ", ".join(f"{k}={v!r}" for k, v in set_.items())
        raise ConfigError(
            f"from_torch: module {path} (Embedding with {got}) has no gpubackprop layer: "
            "gb.Embedding has no padding_idx and no max_norm (expected both None)"
        )
    return Embedding(item.num_embeddings, item.embedding_dim)


def _check_recurrent(path: str, item: Any) -> None:
    """ConfigError naming module ``path`` unless the torch LSTM/GRU/RNN is one
    batch-first, unidirectional layer with biases (and, for an LSTM, no projection)."""
    wanted = {
        "num_layers": 1, "bidirectional": False, "bias": True, "batch_first": True,
        "proj_size": 0,
    }
    wrong = {k: getattr(item, k, v) for k, v in wanted.items() if getattr(item, k, v) != v}
    if wrong:
        got = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
        want = ", ".join(f"{k}={wanted[k]!r}" for k in wrong)
        raise ConfigError(
            f"from_torch: module {path} ({type(item).__name__} with {got}) has no "
            f"gpubackprop layer: gb.{type(item).__name__} needs {want}"
        )


def _layer_norm(path: str, item: Any) -> LayerNorm:
    """The LayerNorm of an ``nn.LayerNorm`` over the last axis with weight and bias, or
    ConfigError naming module ``path``."""
    if len(item.normalized_shape) != 1 or item.weight is None or item.bias is None:
        raise ConfigError(
            f"from_torch: module {path} (LayerNorm{tuple(item.normalized_shape)}, "
            f"elementwise_affine={item.weight is not None}, bias={item.bias is not None}) "
            "has no gpubackprop layer: gb.LayerNorm normalises the last axis, with weight "
            "and bias"
        )
    return LayerNorm(item.normalized_shape[0], item.eps)


def _flatten(nn: ModuleType, module: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(index path, module) of every leaf module, nested Sequentials opened in order."""
    if not isinstance(module, nn.Sequential):
        yield prefix or "0", module
        return
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            yield from _flatten(nn, child, path)
        else:
            yield path, child


def _activation_name(nn: ModuleType, path: str, item: Any) -> str:
    """The gpubackprop activation ``item`` is, or ConfigError naming module ``path``."""
    kind = type(item).__name__
    kinds = [
        "Linear", *(c for c, _ in TORCH_ACTIVATIONS.values()), "LayerNorm", "Dropout",
        "Embedding", "LSTM", "GRU", "RNN",
    ]
    supported = ", ".join(dict.fromkeys(kinds))
    matches = [n for n, (c, _) in TORCH_ACTIVATIONS.items() if type(item) is getattr(nn, c)]
    if not matches:
        raise ConfigError(
            f"from_torch: module {path} ({kind}) has no gpubackprop layer; supported: {supported}"
        )
    for name in matches:
        _, kwargs = TORCH_ACTIVATIONS[name]
        if all(_same(key, getattr(item, key), want) for key, want in kwargs.items()):
            return name
    wanted = " or ".join(
        ", ".join(_wanted(k, v) for k, v in TORCH_ACTIVATIONS[n][1].items()) for n in matches
    )
    got = ", ".join(f"{k}={getattr(item, k)!r}" for k in TORCH_ACTIVATIONS[matches[0]][1])
    raise ConfigError(
        f"from_torch: module {path} ({kind}) has {got}; gpubackprop's {kind} has {wanted}"
    )


def _wanted(key: str, want: Any) -> str:
    """What :func:`_same` takes for ``key``, as text."""
    if key == "threshold":
        return f"threshold>={MIN_SOFTPLUS_THRESHOLD}"
    return f"{key}={want!r}"


def _same(key: str, value: Any, want: Any) -> bool:
    """Whether a torch activation parameter gives gpubackprop's function."""
    if key == "threshold":
        return float(value) >= MIN_SOFTPLUS_THRESHOLD
    return bool(value == want)


def _dtype(module: Any, dtype: Any) -> Any:
    """``dtype`` if given, else the module's parameters' (float32 or float64)."""
    if dtype is not None:
        return dtype
    names = {str(p.dtype).removeprefix("torch.") for p in module.parameters()}
    if not names:
        return "float32"
    if len(names) > 1 or not names <= set(_DTYPES):
        raise DTypeError(
            f"from_torch: parameters of dtype {', '.join(sorted(names))}; gpubackprop "
            "models are float32 or float64: pass dtype= or convert the module (.float())"
        )
    return names.pop()
