// gbp_math.cuh: the small math layer every kernel family shares.
//
// * GBP_HD marks functions that run on the device and on the host (the host
//   side lets tests/test_kernel_functors.py check the per-element math without a GPU).
// * acc_t<T>: the type a kernel computes in. float and double compute in
//   themselves; __half / __nv_bfloat16 would map to float here (add the two
//   specialisations together with cuda_fp16.h / cuda_bf16.h).
// * gbp::math::exp, log1p, erf, ... : overloads that pick expf for float and
//   exp for double, so templated code never silently promotes to double.
// * add_rn / sub_rn / mul_rn / div_rn / sqrt_rn: IEEE round-to-nearest arithmetic
//   that the compiler may not contract into FMAs and that keeps subnormals even
//   under CuPy's -ftz=true, for the kernels that reproduce the NumPy reference bit
//   for bit (the optimizers, the bias add, mse_grad). Everything else in float
//   (the activations, softmax, BCE, the sums) is compiled with -ftz=true: it flushes
//   subnormal inputs and results to zero, where NumPy keeps them (kernels/README.md).
//
// No standard header is included: NVRTC (CuPy's RawModule) compiles this
// without a C++ standard library; the CUDA math built-ins are always there.
#pragma once

#ifndef GBP_HD
#define GBP_HD __host__ __device__ __forceinline__
#endif

namespace gbp {

// --- compute type ------------------------------------------------------------
template <typename T>
struct acc {
    using type = T;
};
template <typename T>
using acc_t = typename acc<T>::type;

// load a stored element into the compute type, and back
template <typename A, typename T>
GBP_HD A load(T x) {
    return static_cast<A>(x);
}
template <typename T, typename A>
GBP_HD T store(A x) {
    return static_cast<T>(x);
}

// --- transcendental overloads -------------------------------------------------
namespace math {

GBP_HD float exp(float x) { return ::expf(x); }
GBP_HD double exp(double x) { return ::exp(x); }
GBP_HD float expm1(float x) { return ::expm1f(x); }
GBP_HD double expm1(double x) { return ::expm1(x); }
GBP_HD float log(float x) { return ::logf(x); }
GBP_HD double log(double x) { return ::log(x); }
GBP_HD float log1p(float x) { return ::log1pf(x); }
GBP_HD double log1p(double x) { return ::log1p(x); }
GBP_HD float tanh(float x) { return ::tanhf(x); }
GBP_HD double tanh(double x) { return ::tanh(x); }
GBP_HD float erf(float x) { return ::erff(x); }
GBP_HD double erf(double x) { return ::erf(x); }
GBP_HD float erfc(float x) { return ::erfcf(x); }
GBP_HD double erfc(double x) { return ::erfc(x); }
GBP_HD float abs(float x) { return ::fabsf(x); }
GBP_HD double abs(double x) { return ::fabs(x); }

// max(x, 0) that keeps NaN (as numpy.maximum does); -0 stays -0
template <typename T>
GBP_HD T max0(T x) {
    return x < T(0) ? T(0) : x;
}

// max that propagates NaN from either side (numpy.maximum semantics)
template <typename T>
GBP_HD T max_nan(T a, T b) {
    return (a > b || a != a) ? a : b;
}

// true for finite x (false for +-inf and NaN); no header needed
template <typename T>
GBP_HD bool is_finite(T x) {
    const T d = x - x;
    return d == d;
}

}  // namespace math

// --- IEEE round-to-nearest arithmetic: no FMA contraction, no flush to zero ----
// For the kernels that reproduce the NumPy reference bit for bit (optim.cu, the
// bias add of dense.cu, mse_grad). The float overloads are inline PTX without
// `.ftz`: CuPy appends -ftz=true after the caller's NVRTC options, and under it
// the intrinsics (__fadd_rn, ...) and the plain operators flush subnormal inputs
// and results to zero, while NumPy keeps them. tests/test_kernel_loader.py
// compiles with -ftz=true and checks that these kernels' PTX has no `.ftz`.
// Double is never flushed (-ftz applies to f32 only): the _rn intrinsics there.
// The host side is plain operators (tests compile it with -ffp-contract=off).
#ifdef __CUDA_ARCH__
#define GBP_F32_BINARY(name, ptx, op)                                          \
    GBP_HD float name(float a, float b) {                                      \
        float r;                                                               \
        asm(ptx " %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));                    \
        return r;                                                              \
    }
#define GBP_F64_BINARY(name, intrinsic, op) \
    GBP_HD double name(double a, double b) { return intrinsic(a, b); }
#else
#define GBP_F32_BINARY(name, ptx, op) \
    GBP_HD float name(float a, float b) { return a op b; }
#define GBP_F64_BINARY(name, intrinsic, op) \
    GBP_HD double name(double a, double b) { return a op b; }
#endif
GBP_F32_BINARY(add_rn, "add.rn.f32", +)
GBP_F32_BINARY(sub_rn, "sub.rn.f32", -)
GBP_F32_BINARY(mul_rn, "mul.rn.f32", *)
GBP_F32_BINARY(div_rn, "div.rn.f32", /)
GBP_F64_BINARY(add_rn, __dadd_rn, +)
GBP_F64_BINARY(sub_rn, __dsub_rn, -)
GBP_F64_BINARY(mul_rn, __dmul_rn, *)
GBP_F64_BINARY(div_rn, __ddiv_rn, /)
#undef GBP_F32_BINARY
#undef GBP_F64_BINARY

GBP_HD float sqrt_rn(float x) {
#ifdef __CUDA_ARCH__
    float r;
    asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#else
    return ::sqrtf(x);
#endif
}
GBP_HD double sqrt_rn(double x) {
#ifdef __CUDA_ARCH__
    return __dsqrt_rn(x);
#else
    return ::sqrt(x);
#endif
}

// x != 0 without a float compare (a setp.f32 flushes a subnormal x to 0 under -ftz)
GBP_HD bool nonzero(float x) {
#ifdef __CUDA_ARCH__
    return (__float_as_uint(x) << 1) != 0u;
#else
    return x != 0.0f;
#endif
}
GBP_HD bool nonzero(double x) { return x != 0.0; }

// dst = x rounded to nearest; double -> float keeps subnormal results (cvt.rn.f32.f64)
GBP_HD void assign_rn(float& dst, double x) {
#ifdef __CUDA_ARCH__
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(dst) : "d"(x));
#else
    dst = static_cast<float>(x);
#endif
}
GBP_HD void assign_rn(double& dst, double x) { dst = x; }

// float -> double (exact), a subnormal x kept (cvt.f64.f32)
GBP_HD double to_double(float x) {
#ifdef __CUDA_ARCH__
    double r;
    asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(x));
    return r;
#else
    return static_cast<double>(x);
#endif
}
GBP_HD double to_double(double x) { return x; }

// --- device-only constants and warp reductions ----------------------------------
template <typename T>
__device__ __forceinline__ T neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <>
__device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double(static_cast<long long>(0xfff0000000000000ULL));
}

template <typename T>
__device__ __forceinline__ T quiet_nan();
template <>
__device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <>
__device__ __forceinline__ double quiet_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000LL);
}

// Butterfly sum over the 32 lanes of a warp. The pattern is fixed, and addition
// is commutative, so every lane ends with the same bits and every run too.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Butterfly max over the lanes of a warp (NaN wins, as in numpy.max).
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v = math::max_nan(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Fixed-order tree over `count` shared-memory partials laid out with a stride:
// data[k * stride] for k in [0, count), the result in data[0]. Every thread of
// the block calls it; `lane` is the thread's index along the reduced axis
// (threads with equal `lane` and different other coordinates reduce other
// columns). Works for any count (not only powers of two); the association is a
// function of count only, so the bits are the same on every run.
template <typename A>
__device__ __forceinline__ void tree_reduce(A* data, int count, int stride, int lane) {
    int span = 1;
    while (span < count) span <<= 1;
    for (int s = span >> 1; s > 0; s >>= 1) {
        if (lane < s && lane + s < count) data[lane * stride] += data[(lane + s) * stride];
        __syncthreads();
    }
}

}  // namespace gbp
