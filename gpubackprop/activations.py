"""Activation functions: one table, each entry a forward and its derivative.

Every activation is written once here, over the array module ``xp`` (NumPy on
the CPU, CuPy on the GPU), into preallocated outputs. The backward computes the
upstream gradient times the local derivative, ``out = delta ⊙ σ′``, from the
layer's *output* ``a`` where the derivative follows from it (sigmoid, tanh,
relu, leaky_relu, elu, softplus), else from the pre-activation ``z`` (gelu,
gelu_tanh, silu); :attr:`ActivationSpec.needs_input` says which, so a layer keeps
only the one array its backward needs.

Each entry also carries its formulas as text for :mod:`gpubackprop.explain`, in z
(input) and a (output), σ = sigmoid, Φ = standard normal CDF, φ = its density.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from .arrays import Array
from .errors import ConfigError

LEAKY_RELU_SLOPE = 0.01
ELU_ALPHA = 1.0
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
#: the cubic coefficient of the tanh approximation of GELU
GELU_TANH_C = 0.044715
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_NAME = re.compile(r"(?<![A-Za-z_])[az](?![A-Za-z_])")  # a or z as a name in a formula


def _erf(xp: ModuleType, x: Array, out: Array) -> Array:
    """erf elementwise into ``out`` (SciPy for NumPy arrays, cupyx for CuPy arrays)."""
    if isinstance(x, np.ndarray):
        from scipy.special import erf
    else:
        from cupyx.scipy.special import erf
    return erf(x, out=out)


# --- forward: write f(z) into out (out may be z itself: in place) -------------


def _identity_fwd(xp: ModuleType, z: Array, out: Array) -> Array:
    if out is not z:
        out[...] = z
    return out


def _sigmoid_fwd(xp: ModuleType, z: Array, out: Array) -> Array:
    # 1/(1+e^{-z}): e^{-z} overflows to inf for z < -88 (float32), and 1/inf = 0
    # is the right limit, so the classic form is exact at the edges; silence the
    # harmless overflow warning NumPy would print.
    with np.errstate(over="ignore"):
        xp.negative(z, out=out)
        xp.exp(out, out=out)
    out += 1.0
    return xp.reciprocal(out, out=out)


def _tanh_fwd(xp: ModuleType, z: Array, out: Array) -> Array:
    return xp.tanh(z, out=out)


def _relu_fwd(xp: ModuleType, z: Array, out: Array) -> Array:
    return xp.maximum(z, 0.0, out=out)


def _leaky_relu_fwd(xp: ModuleType, z: Array, out: Array) -> Array:
    if out is z:
        scaled = z * LEAKY_RELU_SLOPE
        return xp.maximum(z, scaled, out=out)
    xp.multiply(z, LEAKY_RELU_SLOPE, out=out)
    return xp.maximum(z, out, out=out)


def _elu_fwd(xp: ModuleType, z: Array, out: Array) -> Array:
    positive = xp.maximum(z, 0.0)
    xp.minimum(z, 0.0, out=out)
    xp.expm1(out, out=out)
    if ELU_ALPHA != 1.0:
        out *= ELU_ALPHA
    out += positive
    return out


def _softplus_fwd(xp: ModuleType, z: Array, out: Array) -> Array:
    # log(1 + e^z) = max(z, 0) + log1p(e^{-|z|}): no overflow for any z, exact
    # as z -> -inf (e^z) and z -> +inf (z).
    positive = xp.maximum(z, 0.0)
    xp.abs(z, out=out)
    xp.negative(out, out=out)
    xp.exp(out, out=out)
    xp.log1p(out, out=out)
    out += positive
    return out


def times_nonzero(xp: ModuleType, factor: Array, other: Array) -> Array:
    """factor ← factor · other in place, keeping factor = 0 where it was exactly 0.

    Where the factor is exactly 0 (Φ(−inf), σ(−inf), 1 − tanh²(±inf), a target
    weight of 0, ...) the product's limit is 0, while IEEE would give NaN for
    ``other`` = ±inf; NaN in the factor still propagates (NaN ≠ 0). Written with
    what NumPy and CuPy both accept (CuPy's ufuncs take no ``where=``): the
    product everywhere, then ``copyto(..., where=mask)``.
    """
    zero = factor == 0
    with np.errstate(invalid="ignore"):  # 0·inf = NaN, replaced just below
        xp.multiply(factor, other, out=factor)
    xp.copyto(factor, 0.0, where=zero)
    return factor


def _gelu_fwd(xp: ModuleType, z: Array, out: Array) -> Array:
    cdf = xp.multiply(z, _INV_SQRT_2)
    _erf(xp, cdf, cdf)
    cdf += 1.0
    cdf *= 0.5
    out[...] = times_nonzero(xp, cdf, z)
    return out


def _gelu_tanh_fwd(xp: ModuleType, z: Array, out: Array) -> Array:
    t = _gelu_tanh_t(xp, z)
    t += 1.0
    t *= 0.5
    out[...] = times_nonzero(xp, t, z)
    return out


def _silu_fwd(xp: ModuleType, z: Array, out: Array) -> Array:
    s = _sigmoid_fwd(xp, z, xp.empty_like(z))
    out[...] = times_nonzero(xp, s, z)
    return out


def _gelu_tanh_t(xp: ModuleType, z: Array) -> Array:
    """tanh(√(2/π)(z + 0.044715 z³)), a new array."""
    u = xp.multiply(z, z)
    u *= GELU_TANH_C
    u += 1.0
    u *= z
    u *= _SQRT_2_OVER_PI
    return xp.tanh(u, out=u)


# --- backward: out = delta ⊙ f′, from the output a or from the input z --------
# ``out`` never aliases ``delta``, ``a`` or ``z``.


def _identity_bwd(xp: ModuleType, delta: Array, a: Array, out: Array) -> Array:
    out[...] = delta
    return out


def _sigmoid_bwd(xp: ModuleType, delta: Array, a: Array, out: Array) -> Array:
    xp.subtract(1.0, a, out=out)
    out *= a
    out *= delta
    return out


def _tanh_bwd(xp: ModuleType, delta: Array, a: Array, out: Array) -> Array:
    xp.multiply(a, a, out=out)
    xp.subtract(1.0, out, out=out)
    out *= delta
    return out


def _relu_bwd(xp: ModuleType, delta: Array, a: Array, out: Array) -> Array:
    # a >= 0, so sign(a) is exactly the indicator [a > 0] (and keeps NaN).
    xp.sign(a, out=out)
    out *= delta
    return out


def _leaky_relu_bwd(xp: ModuleType, delta: Array, a: Array, out: Array) -> Array:
    # [a > 0] · (1 − slope) + slope, via sign(a) ∈ {−1, 0, 1} clipped at 0.
    xp.sign(a, out=out)
    xp.maximum(out, 0.0, out=out)
    out *= 1.0 - LEAKY_RELU_SLOPE
    out += LEAKY_RELU_SLOPE
    out *= delta
    return out


def _elu_bwd(xp: ModuleType, delta: Array, a: Array, out: Array) -> Array:
    # a > 0: 1; else α e^z = a + α.  min(a, 0) + α is both (α = 1 makes a>0 give 1).
    xp.minimum(a, 0.0, out=out)
    out += ELU_ALPHA
    if ELU_ALPHA != 1.0:
        positive = a > 0
        out[positive] = 1.0
    out *= delta
    return out


def _softplus_bwd(xp: ModuleType, delta: Array, a: Array, out: Array) -> Array:
    # σ(z) = 1 − e^{−a} = −expm1(−a), accurate for small a (z very negative).
    xp.negative(a, out=out)
    xp.expm1(out, out=out)
    xp.negative(out, out=out)
    out *= delta
    return out


def _gelu_bwd(xp: ModuleType, delta: Array, z: Array, out: Array) -> Array:
    # Φ(z) + z φ(z)
    pdf = xp.multiply(z, z)
    pdf *= -0.5
    xp.exp(pdf, out=pdf)
    pdf *= _INV_SQRT_2PI
    times_nonzero(xp, pdf, z)
    xp.multiply(z, _INV_SQRT_2, out=out)
    _erf(xp, out, out)
    out += 1.0
    out *= 0.5
    out += pdf
    out *= delta
    return out


def _gelu_tanh_bwd(xp: ModuleType, delta: Array, z: Array, out: Array) -> Array:
    # d/dz [z (1+t)/2] = (1+t)/2 + z (1−t²) u′ / 2,  u′ = √(2/π)(1 + 3·0.044715 z²)
    t = _gelu_tanh_t(xp, z)
    du = xp.multiply(z, z)
    du *= 3.0 * GELU_TANH_C
    du += 1.0
    du *= _SQRT_2_OVER_PI
    xp.multiply(t, t, out=out)
    xp.subtract(1.0, out, out=out)
    # (1 − t²) is exactly 0 where u′ or z is infinite: keep the product 0 there
    times_nonzero(xp, out, du)
    times_nonzero(xp, out, z)
    t += 1.0
    out += t
    out *= 0.5
    out *= delta
    return out


def _silu_bwd(xp: ModuleType, delta: Array, z: Array, out: Array) -> Array:
    # σ (1 + z (1 − σ)) = σ + z σ (1 − σ); σ(1 − σ) = 0 at z = ±inf, so the
    # product is taken only where it is non-zero (the limit is σ: 1 or 0)
    s = _sigmoid_fwd(xp, z, xp.empty_like(z))
    xp.subtract(1.0, s, out=out)
    out *= s
    times_nonzero(xp, out, z)
    out += s
    out *= delta
    return out


@dataclass(frozen=True)
class ActivationSpec:
    """One activation: its forward and its derivative, written once (the spec;
    :class:`gpubackprop.Activation` is the layer that applies one).

    ``forward(xp, z, out)`` writes f(z) into ``out`` (``out`` may be ``z``).
    ``backward(xp, delta, saved, out)`` writes ``delta ⊙ f′`` into ``out``, where
    ``saved`` is the output ``a`` if :attr:`needs_input` is false, else ``z``.
    ``reference`` is the plain textbook formula (NumPy, float64-friendly) that
    the tests compare against; ``forward_text`` and ``derivative_text`` are the
    formulas as :mod:`~gpubackprop.explain` prints them.
    """

    name: str
    forward: Callable[[ModuleType, Array, Array], Array]
    backward: Callable[[ModuleType, Array, Array, Array], Array]
    needs_input: bool
    init: str  # "he" or "xavier": the weight init a Dense layer uses before it
    reference: Callable[[np.ndarray], np.ndarray]
    #: f(z) as text, in z (e.g. ``"1 / (1 + e^(−z))"``)
    forward_text: str
    #: f′ as text, in a and/or z, ready to multiply (e.g. ``"a ⊙ (1 − a)"``)
    derivative_text: str

    #: f(z) = z (a field, not a property: the engine reads it at every step)
    is_identity: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_identity", self.name == "identity")

    def formula_texts(self, a: str, z: str) -> tuple[str, str]:
        """(forward_text, derivative_text) with the output named ``a`` and the input ``z``.

        ``ACTIVATIONS["sigmoid"].formula_texts("a_1", "z_1")`` is
        ``("1 / (1 + e^(−z_1))", "a_1 ⊙ (1 − a_1)")``.
        """
        names = {"a": a, "z": z}

        def rename(text: str) -> str:
            return _NAME.sub(lambda m: names[m.group()], text)

        return rename(self.forward_text), rename(self.derivative_text)


def _ref_gelu(z: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))


ACTIVATIONS: dict[str, ActivationSpec] = {
    a.name: a
    for a in (
        ActivationSpec(
            "identity", _identity_fwd, _identity_bwd, False, "xavier", lambda z: z,
            forward_text="z", derivative_text="1",
        ),
        ActivationSpec(
            "sigmoid", _sigmoid_fwd, _sigmoid_bwd, False, "xavier",
            lambda z: 1.0 / (1.0 + np.exp(-z)),
            forward_text="1 / (1 + e^(−z))", derivative_text="a ⊙ (1 − a)",
        ),
        ActivationSpec(
            "tanh", _tanh_fwd, _tanh_bwd, False, "xavier", np.tanh,
            forward_text="tanh(z)", derivative_text="(1 − a²)",
        ),
        ActivationSpec(
            "relu", _relu_fwd, _relu_bwd, False, "he", lambda z: np.where(z > 0, z, 0.0),
            forward_text="max(z, 0)", derivative_text="[a > 0]",
        ),
        ActivationSpec(
            "leaky_relu", _leaky_relu_fwd, _leaky_relu_bwd, False, "he",
            lambda z: np.where(z > 0, z, LEAKY_RELU_SLOPE * z),
            forward_text=f"max(z, {LEAKY_RELU_SLOPE} z)",
            derivative_text=f"(1 if a > 0 else {LEAKY_RELU_SLOPE})",
        ),
        ActivationSpec(
            "elu", _elu_fwd, _elu_bwd, False, "he",
            lambda z: np.where(z > 0, z, ELU_ALPHA * (np.exp(np.minimum(z, 0.0)) - 1.0)),
            forward_text="(z if z > 0 else e^(z) − 1)", derivative_text="(1 if a > 0 else a + 1)",
        ),
        ActivationSpec(
            "softplus", _softplus_fwd, _softplus_bwd, False, "xavier",
            lambda z: np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0.0),
            forward_text="log(1 + e^(z))", derivative_text="(1 − e^(−a))",
        ),
        ActivationSpec(
            "gelu", _gelu_fwd, _gelu_bwd, True, "he", _ref_gelu,
            forward_text="z Φ(z)", derivative_text="(Φ(z) + z φ(z))",
        ),
        ActivationSpec(
            "gelu_tanh", _gelu_tanh_fwd, _gelu_tanh_bwd, True, "he",
            lambda z: 0.5 * z * (1.0 + np.tanh(_SQRT_2_OVER_PI * (z + GELU_TANH_C * z**3))),
            forward_text=f"z (1 + t) / 2,  t = tanh(√(2/π)(z + {GELU_TANH_C} z³))",
            derivative_text=f"((1 + t) / 2 + z (1 − t²) √(2/π)(1 + {3 * GELU_TANH_C:.6g} z²) / 2)",
        ),
        ActivationSpec(
            "silu", _silu_fwd, _silu_bwd, True, "he", lambda z: z / (1.0 + np.exp(-z)),
            forward_text="z σ(z)", derivative_text="σ(z)(1 + z(1 − σ(z)))",
        ),
    )
}


def get_activation(name: str | None) -> ActivationSpec:
    """Look an activation up by name (``None`` means ``"identity"``)."""
    key = "identity" if name is None else name
    if not isinstance(key, str) or key not in ACTIVATIONS:
        known = ", ".join(repr(k) for k in ACTIVATIONS)
        raise ConfigError(f"unknown activation {name!r}; expected None or one of {known}")
    return ACTIVATIONS[key]


__all__ = ["ACTIVATIONS", "ActivationSpec", "get_activation", "times_nonzero"]
