// recurrent_math.cuh: the per-element math of one LSTM / GRU step, shared by the
// CUDA kernels (recurrent.cu, one thread per element) and the CPU's fused cell
// (cpu_recurrent.cpp, a SIMD loop per row), and run element by element by the host
// harness (tests/test_kernel_functors_recurrent.py). The math of
// NumpyOps.lstm_cell_forward / lstm_cell_backward / gru_cell_forward / gru_cell_backward
// (gpubackprop/backend/numpy_ops.py). Only Sigmoid and Tanh are used.
#pragma once

#include "activations.cuh"

namespace gbp {

// one LSTM element: pre-activations in, activated gates and the new state out
template <typename A>
GBP_HD void lstm_forward_element(A& i, A& f, A& g, A& o, A c_prev, A& c, A& tanh_c, A& h) {
    i = act::Sigmoid::forward(i);
    f = act::Sigmoid::forward(f);
    g = act::Tanh::forward(g);
    o = act::Sigmoid::forward(o);
    c = f * c_prev + i * g;
    tanh_c = act::Tanh::forward(c);
    h = o * tanh_c;
}

// one LSTM element backward: dc in (from step t+1) and out (to step t-1)
template <typename A>
GBP_HD void lstm_backward_element(A i, A f, A g, A o, A c_prev, A tanh_c, A dh, A& dc,
                                  A& di, A& df, A& dg, A& d_o) {
    d_o = (dh * tanh_c) * act::Sigmoid::grad(o);
    dc = dc + (dh * o) * act::Tanh::grad(tanh_c);
    di = (dc * g) * act::Sigmoid::grad(i);
    df = (dc * c_prev) * act::Sigmoid::grad(f);
    dg = (dc * i) * act::Tanh::grad(g);
    dc = dc * f;
}

// one GRU element: r, z, n pre-activations (input side) in, gates and state out
template <typename A>
GBP_HD void gru_forward_element(A& r, A& z, A& n, A hh_r, A hh_z, A hh_n, A b_r, A b_z,
                                A b_n, A h_prev, A& hn, A& h) {
    r = act::Sigmoid::forward(r + hh_r + b_r);
    z = act::Sigmoid::forward(z + hh_z + b_z);
    hn = hh_n + b_n;
    n = act::Tanh::forward(n + r * hn);
    h = n + z * (h_prev - n);
}

// one GRU element backward: dh is the sum of the three incoming gradients
template <typename A>
GBP_HD void gru_backward_element(A r, A z, A n, A hn, A h_prev, A dh, A& dr, A& dz, A& dn,
                                 A& dhn, A& carry) {
    dn = (dh * (A(1) - z)) * act::Tanh::grad(n);
    dz = (dh * (h_prev - n)) * act::Sigmoid::grad(z);
    dr = (dn * hn) * act::Sigmoid::grad(r);
    dhn = dn * r;
    carry = dh * z;
}

}  // namespace gbp
