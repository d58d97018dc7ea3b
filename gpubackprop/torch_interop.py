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

PyTorch is optional: it is imported inside the functions, never by
``import gpubackprop``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .activations import ELU_ALPHA, LEAKY_RELU_SLOPE
from .errors import ConfigError, DTypeError
from .layers import Activation, Dense, Layer
from .layers_norm import Dropout, LayerNorm
from .model import Sequential

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
    becomes f's module (see :data:`TORCH_ACTIVATIONS`). The torch dtype is the
    model's (float32 or float64), so ``to_torch(model)(torch.from_numpy(x))``
    equals ``model.predict(x)`` to rounding. Move it with ``.to("cuda")``.
    Raises ConfigError for a layer PyTorch conversion does not know.
    """
    torch = _torch()
    nn = torch.nn
    dtype = getattr(torch, np.dtype(model.dtype).name)
    modules: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, Dense):
            linear = nn.Linear(
                layer.in_features, layer.out_features, bias=layer.use_bias, dtype=dtype
            )
            modules.append(_copy_params(torch, model, layer, linear))
            if not layer.activation.is_identity:
                modules.append(_activation_module(nn, layer.activation.name))
        elif isinstance(layer, Activation):
            modules.append(_activation_module(nn, layer.activation.name))
        elif isinstance(layer, LayerNorm):
            norm = nn.LayerNorm(layer.features, eps=layer.eps, dtype=dtype)
            modules.append(_copy_params(torch, model, layer, norm))
        elif isinstance(layer, Dropout):
            modules.append(nn.Dropout(layer.p))
        else:
            raise ConfigError(
                f"to_torch: {layer.label} has no PyTorch conversion; "
                "supported: Dense, Activation, LayerNorm, Dropout"
            )
    return nn.Sequential(*modules)


def _copy_params(torch: ModuleType, model: Sequential, layer: Layer, module: Any) -> Any:
    """``module`` with each of ``layer``'s parameters copied into its namesake; returns it."""
    with torch.no_grad():
        for name, view in layer.params.items():
            getattr(module, name).copy_(torch.from_numpy(model.backend.to_numpy(view)))
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
    weight and bias) or an ``nn.Dropout``. An ``nn.Linear`` followed by an
    activation module becomes one Dense(in, out, f) (bias=False stays without a
    bias); an activation module after anything else becomes an Activation layer;
    ``nn.Identity`` is dropped. Weights are copied: z = x Wᵀ + b with the same W.

    ``dtype`` defaults to the module's (float32 or float64); ``device`` and ``seed``
    (for the shuffling of ``fit``) as for :class:`~gpubackprop.Sequential`. Raises
    ConfigError naming the first module without a gpubackprop layer (its index and
    type) or with other parameters (e.g. a LeakyReLU slope other than 0.01),
    DTypeError for parameters of another dtype when ``dtype`` is not given.
    """
    torch = _torch()
    layers: list[Layer] = []
    sources: dict[int, Any] = {}  # index in layers -> the module its parameters come from
    for path, item in _flatten(torch.nn, module, ""):
        if isinstance(item, torch.nn.Linear):
            sources[len(layers)] = item
            layers.append(Dense(item.in_features, item.out_features, bias=item.bias is not None))
            continue
        if isinstance(item, torch.nn.LayerNorm):
            sources[len(layers)] = item
            layers.append(_layer_norm(path, item))
            continue
        if isinstance(item, torch.nn.Dropout):
            layers.append(Dropout(item.p))
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
        for index, source in sources.items():
            for name, tensor in source.named_parameters():
                host = tensor.detach().to("cpu", torch.float64).numpy()
                params[f"{index}.{name}"][...] = model.backend.asarray(host, dtype=model.dtype)
    return model


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
    kinds = ["Linear", *(c for c, _ in TORCH_ACTIVATIONS.values()), "LayerNorm", "Dropout"]
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
