// recurrent.cu: the pointwise part of one LSTM / GRU step, one kernel each way,
// templated over the element type T (float, double). The math of
// NumpyOps.lstm_cell_forward / lstm_cell_backward / gru_cell_forward / gru_cell_backward
// (gpubackprop/backend/numpy_ops.py), element by element.
//
//   lstm_cell_forward<T>   gates (rows, 4H) [a_i a_f a_g a_o] += hh, activated in place
//                          to [i f g o]; c = f c_prev + i g; tanh_c = tanh c; h = o tanh_c
//   lstm_cell_backward<T>  dh = dh_out + dh_next; dc += dh o (1 - tanh_c^2);
//                          dgates = pre-activation gradients; dc <- dc f
//   gru_cell_forward<T>    gates (rows, 3H) [a_r a_z a_n]: r, z = sigma(a + hh + b_hh),
//                          hn = hh_n + b_hn, n = tanh(a_n + r hn), h = n + z (h_prev - n)
//   gru_cell_backward<T>   dh = dh_out + dh_rec + dh_carry; dgx, dgh (rows, 3H);
//                          dh_carry <- dh z
//
// One thread per element (b, j) of the (rows, H) state, grid-stride; it reads the
// gate columns j, H + j, 2H + j (, 3H + j) of row b. Matrices are row-major and
// C-contiguous (the loader checks). No reductions: the bits depend on the inputs only.
// The per-element math is in recurrent_math.cuh's GBP_HD functions, so the host
// harness (tests/test_kernel_functors_recurrent.py) runs it on the CPU too, and the CPU's
// fused cell (cpu_recurrent.cpp) is built from it.
// Only Sigmoid and Tanh are used here: the header's other constants are unreferenced.
#pragma nv_diag_suppress 177
#include "recurrent_math.cuh"
#pragma nv_diag_default 177

namespace gbp {

// f(e, base, j) for each element e = (b, j) of the (rows, hidden) state, grid-stride;
// base = b * gates * hidden + j, the element's column in the first gate block of its row
template <typename F>
__device__ __forceinline__ void for_each_state(int rows, int hidden, int gates, F f) {
    const long long n = static_cast<long long>(rows) * hidden;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long e = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
         e += stride) {
        const int j = static_cast<int>(e % hidden);
        f(e, (e / hidden) * gates * hidden + j, j);
    }
}

template <typename T>
__global__ void lstm_cell_forward(T* gates, const T* __restrict__ hh,
                                  const T* __restrict__ c_prev, T* __restrict__ c,
                                  T* __restrict__ h, T* __restrict__ tanh_c, int rows,
                                  int hidden) {
    using A = acc_t<T>;
    for_each_state(rows, hidden, 4, [=](long long e, long long base, int) {
        A i = load<A>(gates[base]) + load<A>(hh[base]);
        A f = load<A>(gates[base + hidden]) + load<A>(hh[base + hidden]);
        A g = load<A>(gates[base + 2 * hidden]) + load<A>(hh[base + 2 * hidden]);
        A o = load<A>(gates[base + 3 * hidden]) + load<A>(hh[base + 3 * hidden]);
        A cv, tc, hv;
        lstm_forward_element<A>(i, f, g, o, load<A>(c_prev[e]), cv, tc, hv);
        gates[base] = store<T>(i);
        gates[base + hidden] = store<T>(f);
        gates[base + 2 * hidden] = store<T>(g);
        gates[base + 3 * hidden] = store<T>(o);
        c[e] = store<T>(cv);
        tanh_c[e] = store<T>(tc);
        h[e] = store<T>(hv);
    });
}

template <typename T>
__global__ void lstm_cell_backward(const T* __restrict__ gates, const T* __restrict__ c_prev,
                                   const T* __restrict__ tanh_c, const T* __restrict__ dh_out,
                                   const T* __restrict__ dh_next, T* __restrict__ dc,
                                   T* __restrict__ dgates, int rows, int hidden) {
    using A = acc_t<T>;
    for_each_state(rows, hidden, 4, [=](long long e, long long base, int) {
        A dcv = load<A>(dc[e]);
        A di, df, dg, d_o;
        lstm_backward_element<A>(load<A>(gates[base]), load<A>(gates[base + hidden]),
                                 load<A>(gates[base + 2 * hidden]),
                                 load<A>(gates[base + 3 * hidden]), load<A>(c_prev[e]),
                                 load<A>(tanh_c[e]), load<A>(dh_out[e]) + load<A>(dh_next[e]),
                                 dcv, di, df, dg, d_o);
        dgates[base] = store<T>(di);
        dgates[base + hidden] = store<T>(df);
        dgates[base + 2 * hidden] = store<T>(dg);
        dgates[base + 3 * hidden] = store<T>(d_o);
        dc[e] = store<T>(dcv);
    });
}

template <typename T>
__global__ void gru_cell_forward(T* gates, const T* __restrict__ hh,
                                 const T* __restrict__ bias_hh, const T* __restrict__ h_prev,
                                 T* __restrict__ h, T* __restrict__ hn, int rows, int hidden) {
    using A = acc_t<T>;
    for_each_state(rows, hidden, 3, [=](long long e, long long base, int j) {
        A r = load<A>(gates[base]);
        A z = load<A>(gates[base + hidden]);
        A nv = load<A>(gates[base + 2 * hidden]);
        A hnv, hv;
        gru_forward_element<A>(r, z, nv, load<A>(hh[base]), load<A>(hh[base + hidden]),
                               load<A>(hh[base + 2 * hidden]), load<A>(bias_hh[j]),
                               load<A>(bias_hh[hidden + j]), load<A>(bias_hh[2 * hidden + j]),
                               load<A>(h_prev[e]), hnv, hv);
        gates[base] = store<T>(r);
        gates[base + hidden] = store<T>(z);
        gates[base + 2 * hidden] = store<T>(nv);
        hn[e] = store<T>(hnv);
        h[e] = store<T>(hv);
    });
}

template <typename T>
__global__ void gru_cell_backward(const T* __restrict__ gates, const T* __restrict__ hn,
                                  const T* __restrict__ h_prev, const T* __restrict__ dh_out,
                                  const T* __restrict__ dh_rec, T* __restrict__ dh_carry,
                                  T* __restrict__ dgx, T* __restrict__ dgh, int rows,
                                  int hidden) {
    using A = acc_t<T>;
    for_each_state(rows, hidden, 3, [=](long long e, long long base, int) {
        const A dh = load<A>(dh_out[e]) + load<A>(dh_rec[e]) + load<A>(dh_carry[e]);
        A dr, dz, dn, dhn, carry;
        gru_backward_element<A>(load<A>(gates[base]), load<A>(gates[base + hidden]),
                                load<A>(gates[base + 2 * hidden]), load<A>(hn[e]),
                                load<A>(h_prev[e]), dh, dr, dz, dn, dhn, carry);
        dgx[base] = store<T>(dr);
        dgx[base + hidden] = store<T>(dz);
        dgx[base + 2 * hidden] = store<T>(dn);
        dgh[base] = store<T>(dr);
        dgh[base + hidden] = store<T>(dz);
        dgh[base + 2 * hidden] = store<T>(dhn);
        dh_carry[e] = store<T>(carry);
    });
}

}  // namespace gbp
