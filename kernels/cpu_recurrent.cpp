// cpu_recurrent.cpp: the CPU's fused LSTM / GRU cell: the pointwise part of one step,
// forward and backward, in ONE pass over the (rows, H) state instead of NumPy's 10-17
// passes. The per-element math is recurrent_math.cuh's, the very functions each thread
// of recurrent.cu's CUDA kernels runs; here a SIMD loop runs them along each row.
//
// Built at run time by gpubackprop/backend/cpu_kernels.py with the host C++ compiler
// (like NVRTC builds recurrent.cu on a GPU), e.g.
//   c++ -std=c++17 -O3 -march=native -fopenmp-simd -fno-math-errno -fPIC -shared
//       -I kernels kernels/cpu_recurrent.cpp -o cells.so -lmvec -lm
// and loaded with ctypes. The "omp declare simd" lines below tell the compiler that
// glibc's libmvec has vector versions of expf, tanhf, exp and tanh (_ZGVeN16v_expf and
// co.; tanh since glibc 2.35), which glibc's math.h declares only under -ffast-math:
// with them each row is one AVX-512 (or AVX2) loop. No -ffast-math: NaN and inf keep their IEEE
// meaning, and a -ffast-math library would set flush-to-zero for the whole process.
//
// Arrays are row-major and C-contiguous with the shapes of the NumPy reference
// (NumpyOps.lstm_cell_forward & co., gpubackprop/backend/numpy_ops.py); the Python
// side checks dtype, shape, contiguity and overlap before every call.
#include <cmath>
#include <cstdint>

extern "C" {
#pragma omp declare simd notinbranch
float expf(float) noexcept;
#pragma omp declare simd notinbranch
float tanhf(float) noexcept;
#pragma omp declare simd notinbranch
double exp(double) noexcept;
#pragma omp declare simd notinbranch
double tanh(double) noexcept;
}

#define GBP_HOST_ONLY 1
#define GBP_HD inline __attribute__((always_inline))
#include "recurrent_math.cuh"

namespace {

using gbp::acc_t;
using gbp::load;
using gbp::store;
using Index = std::int64_t;

template <typename T>
void lstm_forward(T* gates, const T* hh, const T* c_prev, T* c, T* h, T* tanh_c, Index rows,
                  Index hidden) {
    for (Index b = 0; b < rows; ++b) {
        T* __restrict__ g = gates + b * 4 * hidden;
        const T* __restrict__ x = hh + b * 4 * hidden;
        const T* __restrict__ cp = c_prev + b * hidden;
        T* __restrict__ cr = c + b * hidden;
        T* __restrict__ hr = h + b * hidden;
        T* __restrict__ tr = tanh_c + b * hidden;
#pragma omp simd
        for (Index j = 0; j < hidden; ++j) {
            using A = acc_t<T>;
            A i = load<A>(g[j]) + load<A>(x[j]);
            A f = load<A>(g[hidden + j]) + load<A>(x[hidden + j]);
            A gg = load<A>(g[2 * hidden + j]) + load<A>(x[2 * hidden + j]);
            A o = load<A>(g[3 * hidden + j]) + load<A>(x[3 * hidden + j]);
            A cv, tc, hv;
            gbp::lstm_forward_element<A>(i, f, gg, o, load<A>(cp[j]), cv, tc, hv);
            g[j] = store<T>(i);
            g[hidden + j] = store<T>(f);
            g[2 * hidden + j] = store<T>(gg);
            g[3 * hidden + j] = store<T>(o);
            cr[j] = store<T>(cv);
            tr[j] = store<T>(tc);
            hr[j] = store<T>(hv);
        }
    }
}

template <typename T>
void lstm_backward(const T* gates, const T* c_prev, const T* tanh_c, const T* dh_out,
                   const T* dh_next, T* dc, T* dgates, Index rows, Index hidden) {
    for (Index b = 0; b < rows; ++b) {
        const T* __restrict__ g = gates + b * 4 * hidden;
        const T* __restrict__ cp = c_prev + b * hidden;
        const T* __restrict__ tr = tanh_c + b * hidden;
        const T* __restrict__ d_out = dh_out + b * hidden;
        const T* __restrict__ d_next = dh_next + b * hidden;
        T* __restrict__ dcr = dc + b * hidden;
        T* __restrict__ dg = dgates + b * 4 * hidden;
#pragma omp simd
        for (Index j = 0; j < hidden; ++j) {
            using A = acc_t<T>;
            A dcv = load<A>(dcr[j]);
            A di, df, dgv, d_o;
            gbp::lstm_backward_element<A>(
                load<A>(g[j]), load<A>(g[hidden + j]), load<A>(g[2 * hidden + j]),
                load<A>(g[3 * hidden + j]), load<A>(cp[j]), load<A>(tr[j]),
                load<A>(d_out[j]) + load<A>(d_next[j]), dcv, di, df, dgv, d_o);
            dg[j] = store<T>(di);
            dg[hidden + j] = store<T>(df);
            dg[2 * hidden + j] = store<T>(dgv);
            dg[3 * hidden + j] = store<T>(d_o);
            dcr[j] = store<T>(dcv);
        }
    }
}

template <typename T>
void gru_forward(T* gates, const T* hh, const T* bias_hh, const T* h_prev, T* h, T* hn,
                 Index rows, Index hidden) {
    const T* __restrict__ bias = bias_hh;
    for (Index b = 0; b < rows; ++b) {
        T* __restrict__ g = gates + b * 3 * hidden;
        const T* __restrict__ x = hh + b * 3 * hidden;
        const T* __restrict__ hp = h_prev + b * hidden;
        T* __restrict__ hr = h + b * hidden;
        T* __restrict__ hnr = hn + b * hidden;
#pragma omp simd
        for (Index j = 0; j < hidden; ++j) {
            using A = acc_t<T>;
            A r = load<A>(g[j]);
            A z = load<A>(g[hidden + j]);
            A n = load<A>(g[2 * hidden + j]);
            A hnv, hv;
            gbp::gru_forward_element<A>(r, z, n, load<A>(x[j]), load<A>(x[hidden + j]),
                                        load<A>(x[2 * hidden + j]), load<A>(bias[j]),
                                        load<A>(bias[hidden + j]),
                                        load<A>(bias[2 * hidden + j]), load<A>(hp[j]), hnv, hv);
            g[j] = store<T>(r);
            g[hidden + j] = store<T>(z);
            g[2 * hidden + j] = store<T>(n);
            hnr[j] = store<T>(hnv);
            hr[j] = store<T>(hv);
        }
    }
}

template <typename T>
void gru_backward(const T* gates, const T* hn, const T* h_prev, const T* dh_out,
                  const T* dh_rec, T* dh_carry, T* dgx, T* dgh, Index rows, Index hidden) {
    for (Index b = 0; b < rows; ++b) {
        const T* __restrict__ g = gates + b * 3 * hidden;
        const T* __restrict__ hnr = hn + b * hidden;
        const T* __restrict__ hp = h_prev + b * hidden;
        const T* __restrict__ d_out = dh_out + b * hidden;
        const T* __restrict__ d_rec = dh_rec + b * hidden;
        T* __restrict__ carry = dh_carry + b * hidden;
        T* __restrict__ dx = dgx + b * 3 * hidden;
        T* __restrict__ dhh = dgh + b * 3 * hidden;
#pragma omp simd
        for (Index j = 0; j < hidden; ++j) {
            using A = acc_t<T>;
            const A dh = load<A>(d_out[j]) + load<A>(d_rec[j]) + load<A>(carry[j]);
            A dr, dz, dn, dhn, cv;
            gbp::gru_backward_element<A>(load<A>(g[j]), load<A>(g[hidden + j]),
                                         load<A>(g[2 * hidden + j]), load<A>(hnr[j]),
                                         load<A>(hp[j]), dh, dr, dz, dn, dhn, cv);
            dx[j] = store<T>(dr);
            dx[hidden + j] = store<T>(dz);
            dx[2 * hidden + j] = store<T>(dn);
            dhh[j] = store<T>(dr);
            dhh[hidden + j] = store<T>(dz);
            dhh[2 * hidden + j] = store<T>(dhn);
            carry[j] = store<T>(cv);
        }
    }
}

}  // namespace

// The C entry points, one per op and dtype (ctypes finds them by these names).
#define GBP_CPU_CELLS(T, SUFFIX)                                                             \
    extern "C" void gbp_lstm_cell_forward_##SUFFIX(T* gates, const T* hh, const T* c_prev,  \
                                                   T* c, T* h, T* tanh_c, Index rows,       \
                                                   Index hidden) {                          \
        lstm_forward<T>(gates, hh, c_prev, c, h, tanh_c, rows, hidden);                     \
    }                                                                                       \
    extern "C" void gbp_lstm_cell_backward_##SUFFIX(const T* gates, const T* c_prev,        \
                                                    const T* tanh_c, const T* dh_out,       \
                                                    const T* dh_next, T* dc, T* dgates,     \
                                                    Index rows, Index hidden) {             \
        lstm_backward<T>(gates, c_prev, tanh_c, dh_out, dh_next, dc, dgates, rows, hidden); \
    }                                                                                       \
    extern "C" void gbp_gru_cell_forward_##SUFFIX(T* gates, const T* hh, const T* bias_hh,  \
                                                  const T* h_prev, T* h, T* hn, Index rows, \
                                                  Index hidden) {                           \
        gru_forward<T>(gates, hh, bias_hh, h_prev, h, hn, rows, hidden);                    \
    }                                                                                       \
    extern "C" void gbp_gru_cell_backward_##SUFFIX(                                         \
        const T* gates, const T* hn, const T* h_prev, const T* dh_out, const T* dh_rec,     \
        T* dh_carry, T* dgx, T* dgh, Index rows, Index hidden) {                            \
        gru_backward<T>(gates, hn, h_prev, dh_out, dh_rec, dh_carry, dgx, dgh, rows,        \
                        hidden);                                                            \
    }
GBP_CPU_CELLS(float, f32)
GBP_CPU_CELLS(double, f64)
#undef GBP_CPU_CELLS
