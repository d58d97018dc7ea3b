// losses.cu: fused loss forward + gradient kernels, templated over T (float, double),
// and the deterministic sum that turns per-row / per-element losses into the value.
//
//   softmax_xent_labels<T>  row_loss[r] = logsumexp(z_r) - z_r[y_r]
//                           grad = (softmax(z) - onehot(y)) / rows
//   softmax_xent_probs<T>   row_loss[r] = sum_c t_rc (logsumexp(z_r) - z_rc)
//                           grad = (softmax(z) * sum_c t_rc - t) / rows
//   mse_grad<T>             grad = 2 scale (p - y),  sq = (p - y)^2
//   bce_logits<T>           elem_loss = max(z,0) - z y + log1p(e^{-|z|}),
//                           grad = (sigma(z) - y) / n
//   sum_reduce<T>           out[b] = scale * sum of block b's grid-stride slice of x
//
// The loss value is then sum_reduce of the per-row / per-element losses, in a fixed
// order (no atomics): the same inputs give the same bits on every run.
#include "gbp_math.cuh"

namespace gbp {

constexpr int kMaxReduceThreads = 1024;

// for each row r of this warp: one warp per row, a grid-stride loop over the warps
#define GBP_WARP_ROWS(r, rows)                                                                 \
    for (long long r = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; \
         r < (rows); r += (static_cast<long long>(gridDim.x) * blockDim.x) >> 5)

// One warp's softmax denominator of row z: row_max = max_c z_c (NaN wins), then
// g_c = e^{z_c - row_max} (parked in grad) and the returned sum_c g_c.
template <typename T, typename A>
__device__ __forceinline__ A exp_sum(const T* z, T* g, int cols, int lane, A& row_max) {
    row_max = neg_inf<A>();
    for (int c = lane; c < cols; c += 32) row_max = math::max_nan(row_max, load<A>(z[c]));
    row_max = warp_max(row_max);
    A sum = A(0);
    for (int c = lane; c < cols; c += 32) {
        const T e = store<T>(math::exp(load<A>(z[c]) - row_max));
        g[c] = e;
        sum += load<A>(e);
    }
    return warp_sum(sum);
}

// Softmax from exp_sum, then the gradient (blockDim.x a multiple of 32).
// A label outside [0, cols) gives a NaN row_loss (the engine's flag: reading a NaN
// loss makes it check the labels) and a zero gradient row, so a step that ran on
// such a batch leaves the parameters finite (labels are not read back here: that
// would sync the host).
template <typename T>
__global__ void softmax_xent_labels(const T* __restrict__ logits,
                                    const long long* __restrict__ labels, T* __restrict__ grad,
                                    T* __restrict__ row_loss, int rows, int cols) {
    using A = acc_t<T>;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const A inv_rows = static_cast<A>(1.0 / static_cast<double>(rows));
    GBP_WARP_ROWS(r, rows) {
        const T* z = logits + r * cols;
        T* g = grad + r * cols;
        A row_max;
        const A sum = exp_sum(z, g, cols, lane, row_max);
        const long long y = labels[r];
        const bool valid = y >= 0 && y < cols;
        for (int c = lane; c < cols; c += 32) {
            A v = load<A>(g[c]) / sum;
            if (c == y) v -= A(1);
            g[c] = store<T>(valid ? v * inv_rows : A(0));
        }
        if (lane == 0) {
            // log(sum) - (z_y - max): the reference's grouping
            row_loss[r] = store<T>(valid ? math::log(sum) - (load<A>(z[y]) - row_max)
                                         : quiet_nan<A>());
        }
    }
}

// Target distributions t (rows of one-hot or probabilities; they need not sum to 1).
// row_loss = mass log(sum) - sum_c t_c (z_c - max),  mass = sum_c t_c;
// a zero target contributes nothing, even against a -inf logit (0 log 0 = 0).
template <typename T>
__global__ void softmax_xent_probs(const T* __restrict__ logits, const T* __restrict__ probs,
                                   T* __restrict__ grad, T* __restrict__ row_loss, int rows,
                                   int cols) {
    using A = acc_t<T>;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const A inv_rows = static_cast<A>(1.0 / static_cast<double>(rows));
    GBP_WARP_ROWS(r, rows) {
        const T* z = logits + r * cols;
        const T* t = probs + r * cols;
        T* g = grad + r * cols;
        A row_max;
        const A sum = exp_sum(z, g, cols, lane, row_max);
        A mass = A(0), weighted = A(0);
        for (int c = lane; c < cols; c += 32) {
            const A tc = load<A>(t[c]);
            mass += tc;
            if (tc != A(0)) weighted += tc * (load<A>(z[c]) - row_max);
        }
        mass = warp_sum(mass);
        weighted = warp_sum(weighted);
        for (int c = lane; c < cols; c += 32) {
            const A v = (load<A>(g[c]) / sum) * mass - load<A>(t[c]);
            g[c] = store<T>(v * inv_rows);
        }
        if (lane == 0) row_loss[r] = store<T>(mass * math::log(sum) - weighted);
    }
}

// grad = 2 scale (p - y);  sq = (p - y)^2 (sq may be nullptr: no value wanted).
// MSE: L = scale * sum(sq), scale = 1/N for the mean, 1 for the sum. grad has the
// reference's bits (two IEEE roundings, subnormals kept: the _rn helpers).
template <typename T>
__global__ void mse_grad(const T* __restrict__ pred, const T* __restrict__ target,
                         T* __restrict__ grad, T* __restrict__ sq, long long n, T scale) {
    using A = acc_t<T>;
    const A two_scale = mul_rn(A(2), load<A>(scale));
    GBP_GRID_STRIDE(i, n) {
        const A d = sub_rn(load<A>(pred[i]), load<A>(target[i]));
        grad[i] = store<T>(mul_rn(d, two_scale));
        if (sq != nullptr) sq[i] = store<T>(mul_rn(d, d));
    }
}

// One element of binary cross-entropy on logits: returns the loss, writes the
// gradient (sigma(z) - y) * inv_n. Finite for every finite z; at z = +-inf the
// linear part takes its limit where the loss has one (y = 1 at +inf, y = 0 at -inf).
template <typename A>
GBP_HD A bce_element(A z, A y, A inv_n, A* grad) {
    // sigma(z) - y from s = sigma(-|z|) = e / (1 + e), e = e^{-|z|} (the small side
    // of sigma): (1 - y) - s for z >= 0, s - y for z < 0; exact where sigma(z)
    // rounds to 1, as the NumPy reference (numpy_ops.bce_with_logits).
    const A e = math::exp(-math::abs(z));
    const A s = e / (A(1) + e);
    *grad = (z >= A(0) ? (A(1) - y) - s : s - y) * inv_n;
    A linear;  // max(z, 0) - z y
    if (math::is_finite(z) || z != z) {
        linear = math::max0(z) - z * y;
    } else if (z > A(0)) {
        linear = y == A(1) ? A(0) : z * (A(1) - y);
    } else {
        linear = y == A(0) ? A(0) : -z * y;
    }
    return linear + math::log1p(e);
}

// elem_loss = max(z,0) - z y + log1p(e^{-|z|}),  grad = (sigma(z) - y) / n
// (elem_loss may be nullptr). BCE: L = sum(elem_loss) / n.
template <typename T>
__global__ void bce_logits(const T* __restrict__ z, const T* __restrict__ y,
                           T* __restrict__ grad, T* __restrict__ elem_loss, long long n) {
    using A = acc_t<T>;
    const A inv_n = static_cast<A>(1.0 / static_cast<double>(n));
    GBP_GRID_STRIDE(i, n) {
        A g;
        const A loss = bce_element(load<A>(z[i]), load<A>(y[i]), inv_n, &g);
        grad[i] = store<T>(g);
        if (elem_loss != nullptr) elem_loss[i] = store<T>(loss);
    }
}

// out[blockIdx.x] = scale * sum_{k} x[blockIdx.x * blockDim.x + threadIdx.x + k * stride],
// stride = gridDim.x * blockDim.x: each thread adds its slice in order, then a
// fixed-order shared-memory tree adds the blockDim.x partials. With gridDim.x = 1
// it is the whole sum; with G blocks it writes G partials that a second launch
// (one block) adds. The bits depend on (n, gridDim.x, blockDim.x) only.
// blockDim.x <= 1024.
template <typename T>
__global__ void __launch_bounds__(kMaxReduceThreads)
    sum_reduce(const T* __restrict__ x, T* __restrict__ out, long long n, T scale) {
    using A = acc_t<T>;
    __shared__ A partial[kMaxReduceThreads];
    const int tid = static_cast<int>(threadIdx.x);
    A sum = A(0);
    GBP_GRID_STRIDE(i, n) sum += load<A>(x[i]);
    partial[tid] = sum;
    __syncthreads();
    tree_reduce(partial, static_cast<int>(blockDim.x), 1, tid);
    if (tid == 0) out[blockIdx.x] = store<T>(partial[0] * load<A>(scale));
}

}  // namespace gbp
