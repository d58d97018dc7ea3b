// gbp_math.cuh: the small math layer every kernel family shares: the compute type
// acc_t<T>, float/double math overloads (expf for float, exp for double, so templated
// code never silently promotes to double), IEEE *_rn arithmetic that keeps subnormals
// under CuPy's -ftz=true (kernels/README.md, "Subnormals"), and the warp and
// shared-memory reductions. GBP_HD functions run on the device and on the host (the
// host side lets tests/test_kernel_functors.py check the math without a GPU, and
// kernels/cpu_recurrent.cpp is the CPU's fused LSTM / GRU cell built from it).
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

#define GBP_UNARY(name, f32, f64)                 \
    GBP_HD float name(float x) { return ::f32(x); } \
    GBP_HD double name(double x) { return ::f64(x); }
GBP_UNARY(exp, expf, exp)
GBP_UNARY(expm1, expm1f, expm1)
GBP_UNARY(log, logf, log)
GBP_UNARY(log1p, log1pf, log1p)
GBP_UNARY(tanh, tanhf, tanh)
GBP_UNARY(erf, erff, erf)
GBP_UNARY(erfc, erfcf, erfc)
GBP_UNARY(abs, fabsf, fabs)
#undef GBP_UNARY

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
// For the kernels that reproduce the NumPy reference bit for bit. The float overloads
// are inline PTX without `.ftz` (CuPy's -ftz=true flushes the intrinsics and the
// plain operators); double is never flushed: the _rn intrinsics. The host side is
// plain operators (tests compile it with -ffp-contract=off).
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
// (left out of a host-only build: kernels/cpu_recurrent.cpp defines GBP_HOST_ONLY and
// compiles the GBP_HD math above with the host C++ compiler)
#ifndef GBP_HOST_ONLY
// for i in [0, n), a grid-stride loop: any grid covers any n
#define GBP_GRID_STRIDE(i, n)                                                           \
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; \
         i < (n); i += static_cast<long long>(gridDim.x) * blockDim.x)

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

// Called by every thread of every block after the block's last read of a device-side
// counter it advances: true in one thread of the whole grid, thread 0 of the last block
// to finish, which then advances the counter (every block has read it). `done` counts
// finished blocks and is reset to 0 for the next launch (integer atomics on it only).
__device__ __forceinline__ bool last_block_done(unsigned int* done) {
    __syncthreads();
    if (threadIdx.x != 0 || threadIdx.y != 0) return false;
    __threadfence();
    if (atomicAdd(done, 1u) != gridDim.x - 1) return false;
    *done = 0u;
    return true;
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

#endif  // GBP_HOST_ONLY

}  // namespace gbp
