// optim.cu: one-launch optimizer updates over the flat 1-D parameter buffer,
// templated over T (float, double).
//
//   sgd_step<T>      PyTorch's SGD: weight decay, momentum (dampening), Nesterov
//   adam_prepare<T>  one thread: t += 1 and the step's bias-corrected scalars
//   adam_step<T>     Adam (L2 decay in the gradient) or AdamW (decoupled decay)
//
// What changes from step to step (lr, the step counter, Adam's scalars) lives in
// device memory, so a captured CUDA graph replays the right update forever. The
// per-element updates use the *_rn helpers in the reference's operation order, and
// no float compare or negation (nonzero(), sub_rn: those would flush under
// -ftz=true), so they reproduce it bit for bit, subnormals included (README.md).
//
// step_state is an int array of 2: [0] = steps taken so far (PyTorch's state
// "step"), [1] = scratch for sgd_step's blocks-done count; both start at 0.
#include "gbp_math.cuh"

namespace gbp {

// One element of SGD (PyTorch's rule; first = no step taken yet):
//   g' = g + wd p                                  (only when wd != 0)
//   if momentum:  b = g' on the first step, else b = m b + (1 - dampening) g'
//                 g' = g' + m b  if nesterov, else g' = b
//   p = p - lr g'       (the same bits as the reference's p + g' (-lr))
// `buf` is read and written only when momentum != 0.
template <typename A>
GBP_HD void sgd_element(A& p, A g, A& buf, A lr, A momentum, A one_minus_dampening,
                        A weight_decay, bool nesterov, bool first) {
    if (nonzero(weight_decay)) g = add_rn(g, mul_rn(p, weight_decay));
    if (nonzero(momentum)) {
        if (first) {
            buf = g;
        } else {
            buf = add_rn(mul_rn(buf, momentum), mul_rn(g, one_minus_dampening));
        }
        g = nesterov ? add_rn(g, mul_rn(buf, momentum)) : buf;
    }
    p = sub_rn(p, mul_rn(g, lr));
}

// p, g, buf: n elements (buf may be nullptr when momentum == 0); lr: 1 element;
// one_minus_dampening = 1 - dampening, computed by the caller in double as the
// reference does. Reads step_state[0] (0: first step) and, once every block has
// finished, the last block sets step_state[0] += 1 (integer atomics on the
// blocks-done counter only: no float atomics, the update is deterministic).
template <typename T>
__global__ void sgd_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf,
                         const T* __restrict__ lr, int* step_state, T momentum,
                         T one_minus_dampening, T weight_decay, int nesterov, long long n) {
    using A = acc_t<T>;
    const int steps_taken = step_state[0];
    const bool first = steps_taken == 0;
    const A step_lr = load<A>(lr[0]);
    const A mom = load<A>(momentum);
    const A omd = load<A>(one_minus_dampening);
    const A wd = load<A>(weight_decay);
    const bool use_buf = nonzero(mom);
    GBP_GRID_STRIDE(i, n) {
        A pi = load<A>(p[i]);
        A bi = use_buf && !first ? load<A>(buf[i]) : A(0);
        sgd_element(pi, load<A>(g[i]), bi, step_lr, mom, omd, wd, nesterov != 0, first);
        p[i] = store<T>(pi);
        if (use_buf) buf[i] = store<T>(bi);
    }
    // the last block to finish advances the step counter (every block has read it)
    if (last_block_done(reinterpret_cast<unsigned int*>(step_state + 1))) {
        step_state[0] = steps_taken + 1;
        __threadfence();
    }
}

// The step's Adam scalars, in double as the reference computes them (t >= 1):
//   scalars[0] = -lr / (1 - beta1^t)          (minus the step size)
//   scalars[1] = sqrt(1 - beta2^t)            (the second-moment correction)
//   scalars[2] = 1 - lr * weight_decay        (AdamW's decay factor)
template <typename T>
GBP_HD void adam_scalars(int t, double lr, double beta1, double beta2, double weight_decay,
                         T* scalars) {
    const double bias_correction1 = 1.0 - ::pow(beta1, static_cast<double>(t));
    const double bias_correction2 = 1.0 - ::pow(beta2, static_cast<double>(t));
    assign_rn(scalars[0], -(lr / bias_correction1));
    assign_rn(scalars[1], ::sqrt(bias_correction2));
    assign_rn(scalars[2], 1.0 - lr * weight_decay);
}

// One thread: step_state[0] += 1 (t), then the scalars of step t from lr[0].
// Launch <<<1, 1>>> right before adam_step, in the same stream (or graph).
template <typename T>
__global__ void adam_prepare(int* __restrict__ step_state, T* __restrict__ scalars,
                             const T* __restrict__ lr, double beta1, double beta2,
                             double weight_decay) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const int t = step_state[0] + 1;
    step_state[0] = t;
    adam_scalars<T>(t, to_double(lr[0]), beta1, beta2, weight_decay, scalars);
}

// One element of Adam / AdamW, the reference's operation order:
//   AdamW:  p = p (1 - lr wd)          Adam: g' = g + wd p  (when wd != 0)
//   m = beta1 m + (1 - beta1) g'
//   v = beta2 v + ((1 - beta2) g') g'
//   denom = sqrt(v) / sqrt(1 - beta2^t) + eps
//   p = p + ((-step_size) m) / denom
template <typename A>
GBP_HD void adam_element(A& p, A g, A& m, A& v, A neg_step_size, A sqrt_bc2, A decay_factor,
                         A beta1, A beta2, A one_minus_beta1, A one_minus_beta2, A eps,
                         A weight_decay, bool decoupled) {
    if (decoupled) {
        p = mul_rn(p, decay_factor);
    } else if (nonzero(weight_decay)) {
        g = add_rn(g, mul_rn(p, weight_decay));
    }
    m = add_rn(mul_rn(m, beta1), mul_rn(g, one_minus_beta1));
    v = add_rn(mul_rn(v, beta2), mul_rn(mul_rn(g, one_minus_beta2), g));
    const A denom = add_rn(div_rn(sqrt_rn(v), sqrt_bc2), eps);
    p = add_rn(p, div_rn(mul_rn(m, neg_step_size), denom));
}

// p, g, m (exp_avg), v (exp_avg_sq): n elements; scalars: the 3 written by
// adam_prepare; one_minus_beta* = 1 - beta*, computed by the caller in double.
template <typename T>
__global__ void adam_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                          T* __restrict__ v, const T* __restrict__ scalars, T beta1, T beta2,
                          T one_minus_beta1, T one_minus_beta2, T eps, T weight_decay,
                          int decoupled, long long n) {
    using A = acc_t<T>;
    const A neg_step_size = load<A>(scalars[0]);
    const A sqrt_bc2 = load<A>(scalars[1]);
    const A decay_factor = load<A>(scalars[2]);
    const A b1 = load<A>(beta1), b2 = load<A>(beta2);
    const A omb1 = load<A>(one_minus_beta1), omb2 = load<A>(one_minus_beta2);
    const A e = load<A>(eps), wd = load<A>(weight_decay);
    GBP_GRID_STRIDE(i, n) {
        A pi = load<A>(p[i]), mi = load<A>(m[i]), vi = load<A>(v[i]);
        adam_element(pi, load<A>(g[i]), mi, vi, neg_step_size, sqrt_bc2, decay_factor, b1, b2,
                     omb1, omb2, e, wd, decoupled != 0);
        p[i] = store<T>(pi);
        m[i] = store<T>(mi);
        v[i] = store<T>(vi);
    }
}

}  // namespace gbp
