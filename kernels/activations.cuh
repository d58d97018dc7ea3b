// activations.cuh: one device functor per activation of gpubackprop/activations.py.
//
// Each functor has
//   static constexpr bool needs_input   false: grad() takes the output a = f(z)
//                                        true:  grad() takes the input z
//   forward(z)     a = f(z)
//   grad(saved)    f'(z), from `saved` = a or z as needs_input says
// templated over the compute type T (float or double; half/bf16 compute in float,
// see gbp_math.cuh). The fused kernels (dense.cu) pick any of them up through the
// template parameter, and GBP_FOR_EACH_ACTIVATION below lists them all: the loader
// (gpubackprop/kernels.py) reads that list to map Python names to C++ types.
//
// Numerics (kernels/README.md, "Edge values" and "Subnormals"): finite wherever the
// true value is finite, limits at +-inf, NaN in gives NaN out; float32 flushes
// subnormals (CuPy's -ftz=true).
#pragma once

#include "gbp_math.cuh"

namespace gbp {
namespace act {

// sqrt(2/pi), 1/sqrt(2), 1/sqrt(2 pi), and the cubic coefficient of gelu_tanh
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kGeluTanhC = 0.044715;
constexpr double kLeakySlope = 0.01;  // LEAKY_RELU_SLOPE
// ELU_ALPHA is 1: elu(z) = e^z - 1 for z <= 0, and f' = a + 1 there.

// identity: a = z,  f' = 1
struct Identity {
    static constexpr bool needs_input = false;
    template <typename T>
    GBP_HD static T forward(T z) { return z; }
    template <typename T>
    GBP_HD static T grad(T) { return T(1); }
};

// sigmoid: a = 1 / (1 + e^{-z}),  f' = a (1 - a)
// e^{-z} = inf for z < -88 (float32) and 1 / inf = 0 is the right limit.
struct Sigmoid {
    static constexpr bool needs_input = false;
    template <typename T>
    GBP_HD static T forward(T z) { return T(1) / (T(1) + math::exp(-z)); }
    template <typename T>
    GBP_HD static T grad(T a) { return (T(1) - a) * a; }
};

// tanh: a = tanh z,  f' = 1 - a^2
struct Tanh {
    static constexpr bool needs_input = false;
    template <typename T>
    GBP_HD static T forward(T z) { return math::tanh(z); }
    template <typename T>
    GBP_HD static T grad(T a) { return T(1) - a * a; }
};

// relu: a = max(z, 0),  f' = [a > 0]   (NaN stays NaN, as numpy.maximum / sign)
struct Relu {
    static constexpr bool needs_input = false;
    template <typename T>
    GBP_HD static T forward(T z) { return math::max0(z); }
    template <typename T>
    GBP_HD static T grad(T a) { return a > T(0) ? T(1) : (a == a ? T(0) : a); }
};

// leaky_relu: a = max(z, 0.01 z),  f' = 1 if a > 0 else 0.01
struct LeakyRelu {
    static constexpr bool needs_input = false;
    template <typename T>
    GBP_HD static T forward(T z) { return z > T(0) ? z : z * T(kLeakySlope); }
    template <typename T>
    GBP_HD static T grad(T a) { return a > T(0) ? T(1) : (a == a ? T(kLeakySlope) : a); }
};

// elu (alpha = 1): a = z if z > 0 else e^z - 1,  f' = 1 if a > 0 else a + 1
struct Elu {
    static constexpr bool needs_input = false;
    template <typename T>
    GBP_HD static T forward(T z) { return z > T(0) ? z : math::expm1(z); }
    template <typename T>
    GBP_HD static T grad(T a) { return a > T(0) ? T(1) : a + T(1); }
};

// softplus: a = log(1 + e^z) = max(z, 0) + log1p(e^{-|z|}),
// f' = sigma(z) = 1 - e^{-a} = -expm1(-a)   (accurate for tiny a)
struct Softplus {
    static constexpr bool needs_input = false;
    template <typename T>
    GBP_HD static T forward(T z) {
        return math::max0(z) + math::log1p(math::exp(-math::abs(z)));
    }
    template <typename T>
    GBP_HD static T grad(T a) { return -math::expm1(-a); }
};

// gelu (exact): a = z Phi(z),  Phi(z) = (1 + erf(z/sqrt2)) / 2 = erfc(-z/sqrt2) / 2,
// f' = Phi(z) + z phi(z),  phi(z) = e^{-z^2/2} / sqrt(2 pi).
// erfc keeps Phi accurate in the left tail; z Phi(z) -> 0 as z -> -inf.
struct Gelu {
    static constexpr bool needs_input = true;
    template <typename T>
    GBP_HD static T cdf(T z) { return T(0.5) * math::erfc(-z * T(kInvSqrt2)); }
    template <typename T>
    GBP_HD static T forward(T z) {
        const T phi = cdf(z);
        return phi == T(0) ? T(0) : z * phi;
    }
    template <typename T>
    GBP_HD static T grad(T z) {
        const T pdf = math::exp(T(-0.5) * z * z) * T(kInvSqrt2Pi);
        const T zpdf = pdf == T(0) ? T(0) : z * pdf;  // z phi(z) -> 0 as |z| -> inf
        return cdf(z) + zpdf;
    }
};

// gelu_tanh: a = z (1 + t) / 2,  t = tanh(u),  u = sqrt(2/pi) (z + 0.044715 z^3),
// f' = (1 + t)/2 + z (1 - t^2) u'/2,  u' = sqrt(2/pi) (1 + 3 * 0.044715 z^2).
struct GeluTanh {
    static constexpr bool needs_input = true;
    template <typename T>
    GBP_HD static T t_of(T z) {
        const T u = ((z * z * T(kGeluTanhC) + T(1)) * z) * T(kSqrt2OverPi);
        return math::tanh(u);
    }
    template <typename T>
    GBP_HD static T forward(T z) {
        const T half = (t_of(z) + T(1)) * T(0.5);
        return half == T(0) ? T(0) : z * half;  // -> 0 as z -> -inf
    }
    template <typename T>
    GBP_HD static T grad(T z) {
        const T t = t_of(z);
        const T du = (z * z * T(3.0 * kGeluTanhC) + T(1)) * T(kSqrt2OverPi);
        const T sech2 = T(1) - t * t;
        const T tail = sech2 == T(0) ? T(0) : sech2 * du * z;  // -> 0 as |z| -> inf
        return (tail + (t + T(1))) * T(0.5);
    }
};

// silu: a = z sigma(z),  f' = sigma(z) (1 + z (1 - sigma(z)))
struct Silu {
    static constexpr bool needs_input = true;
    template <typename T>
    GBP_HD static T forward(T z) {
        const T s = Sigmoid::forward(z);
        return s == T(0) ? T(0) : z * s;  // -> 0 as z -> -inf
    }
    template <typename T>
    GBP_HD static T grad(T z) {
        const T s = Sigmoid::forward(z);
        const T one_minus_s = T(1) - s;
        const T inner = one_minus_s == T(0) ? T(1) : one_minus_s * z + T(1);  // -> 1 as z -> inf
        return s == T(0) ? T(0) : inner * s;                                   // -> 0 as z -> -inf
    }
};

}  // namespace act

// is_identity<Act>::value: the kernels skip loading `saved` for the identity.
template <typename Act>
struct is_identity {
    static constexpr bool value = false;
};
template <>
struct is_identity<act::Identity> {
    static constexpr bool value = true;
};

}  // namespace gbp

// X(python_name, CppType) for every activation, in the order of the Python table.
// gpubackprop/kernels.py parses these lines; keep one X(...) per line.
#define GBP_FOR_EACH_ACTIVATION(X) \
    X(identity, Identity)          \
    X(sigmoid, Sigmoid)            \
    X(tanh, Tanh)                  \
    X(relu, Relu)                  \
    X(leaky_relu, LeakyRelu)       \
    X(elu, Elu)                    \
    X(softplus, Softplus)          \
    X(gelu, Gelu)                  \
    X(gelu_tanh, GeluTanh)         \
    X(silu, Silu)
