// norm.cu: LayerNorm over the last axis of a row-major (rows, cols) matrix,
// templated over the element type T (float, double); the math of
// NumpyOps.layer_norm_forward / layer_norm_backward (PyTorch's, biased variance).
//
//   layer_norm_forward<T>   mean[r] = mu, rstd[r] = 1/sqrt(var + eps),
//                           out[r,j] = (x[r,j] - mu) * rstd * weight[j] + bias[j]
//   layer_norm_backward<T>  dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = delta * weight
//                           dweight[j] = sum_r delta[r,j] * xhat[r,j], dbias[j] = sum_r delta[r,j]
//
// Deterministic, no atomics. Rows: one warp per row; lane l adds elements l, l+32, ...
// in order, then the butterfly warp_sum (the same bits in every lane and every run).
// Columns (the parameter gradients): as dense.cu's column_sum, block (32, K) owns a
// strip of 32 columns, thread (x, y) adds rows y, y+K, ... in order, then a fixed-order
// tree adds the K partials; the bits depend on (rows, cols, K) only.
#include "gbp_math.cuh"

namespace gbp {

constexpr int kNormStripCols = 32;  // columns per block of the parameter-gradient strips
constexpr int kNormMaxLanes = 32;   // largest blockDim.y

// One launch forward. blockDim = (32, W): warp y of block b takes rows b*W + y,
// stepping by gridDim.x * W (the loop condition is the same for the whole warp).
template <typename T>
__global__ void __launch_bounds__(kNormStripCols * kNormMaxLanes)
    layer_norm_forward(const T* __restrict__ x, const T* __restrict__ weight,
                       const T* __restrict__ bias, T* __restrict__ out, T* __restrict__ mean,
                       T* __restrict__ rstd, int rows, int cols, T eps) {
    using A = acc_t<T>;
    const int lane = static_cast<int>(threadIdx.x);
    const int step = static_cast<int>(gridDim.x * blockDim.y);
    for (int r = static_cast<int>(blockIdx.x * blockDim.y + threadIdx.y); r < rows; r += step) {
        const T* xr = x + static_cast<long long>(r) * cols;
        T* yr = out + static_cast<long long>(r) * cols;
        A s = A(0);
        for (int j = lane; j < cols; j += 32) s += load<A>(xr[j]);
        const A mu = warp_sum(s) / A(cols);
        A q = A(0);
        for (int j = lane; j < cols; j += 32) {
            const A d = load<A>(xr[j]) - mu;
            q += d * d;
        }
        const A inv = A(1) / sqrt_rn(warp_sum(q) / A(cols) + load<A>(eps));
        for (int j = lane; j < cols; j += 32)
            yr[j] = store<T>((load<A>(xr[j]) - mu) * inv * load<A>(weight[j]) + load<A>(bias[j]));
        if (lane == 0) {
            mean[r] = store<T>(mu);
            rstd[r] = store<T>(inv);
        }
    }
}

// The rows of the backward: dx for the rows of this block (warp y: one row at a time).
template <typename T>
__device__ __forceinline__ void layer_norm_dx(const T* __restrict__ delta, const T* __restrict__ x,
                                              const T* __restrict__ weight,
                                              const T* __restrict__ mean,
                                              const T* __restrict__ rstd, T* __restrict__ dx,
                                              int rows, int cols, int first, int step) {
    using A = acc_t<T>;
    const int lane = static_cast<int>(threadIdx.x);
    for (int r = first; r < rows; r += step) {
        const long long base = static_cast<long long>(r) * cols;
        const A mu = load<A>(mean[r]);
        const A inv = load<A>(rstd[r]);
        A sg = A(0);
        A sgx = A(0);
        for (int j = lane; j < cols; j += 32) {
            const A g = load<A>(delta[base + j]) * load<A>(weight[j]);
            sg += g;
            sgx += g * ((load<A>(x[base + j]) - mu) * inv);
        }
        const A g_mean = warp_sum(sg) / A(cols);
        const A gx_mean = warp_sum(sgx) / A(cols);
        for (int j = lane; j < cols; j += 32) {
            const A g = load<A>(delta[base + j]) * load<A>(weight[j]);
            const A xhat = (load<A>(x[base + j]) - mu) * inv;
            dx[base + j] = store<T>((g - g_mean - xhat * gx_mean) * inv);
        }
    }
}

// The columns of the backward: dweight and dbias for the strips of this block.
template <typename T>
__device__ __forceinline__ void layer_norm_param_grads(
    const T* __restrict__ delta, const T* __restrict__ x, const T* __restrict__ mean,
    const T* __restrict__ rstd, T* __restrict__ dweight, T* __restrict__ dbias, int rows,
    int cols, int first, int step) {
    using A = acc_t<T>;
    __shared__ A partial_w[kNormMaxLanes][kNormStripCols];
    __shared__ A partial_b[kNormMaxLanes][kNormStripCols];
    const int tx = static_cast<int>(threadIdx.x);
    const int ty = static_cast<int>(threadIdx.y);
    const int lanes = static_cast<int>(blockDim.y);
    const int strips = (cols + kNormStripCols - 1) / kNormStripCols;
    for (int strip = first; strip < strips; strip += step) {
        const int j = strip * kNormStripCols + tx;
        A sw = A(0);
        A sb = A(0);
        if (j < cols) {
            for (int i = ty; i < rows; i += lanes) {
                const long long idx = static_cast<long long>(i) * cols + j;
                const A d = load<A>(delta[idx]);
                sw += d * ((load<A>(x[idx]) - load<A>(mean[i])) * load<A>(rstd[i]));
                sb += d;
            }
        }
        partial_w[ty][tx] = sw;
        partial_b[ty][tx] = sb;
        __syncthreads();
        tree_reduce(&partial_w[0][tx], lanes, kNormStripCols, ty);
        tree_reduce(&partial_b[0][tx], lanes, kNormStripCols, ty);
        if (ty == 0 && j < cols) {
            dweight[j] = store<T>(partial_w[0][tx]);
            dbias[j] = store<T>(partial_b[0][tx]);
        }
        __syncthreads();  // the partials are reused by the next strip
    }
}

// One launch backward, blockDim = (32, K): blocks [0, row_blocks) compute dx (skipped
// when dx is nullptr, row_blocks = 0), the others dweight and dbias. The two halves
// read only the inputs, so they run side by side.
template <typename T>
__global__ void __launch_bounds__(kNormStripCols * kNormMaxLanes)
    layer_norm_backward(const T* __restrict__ delta, const T* __restrict__ x,
                        const T* __restrict__ weight, const T* __restrict__ mean,
                        const T* __restrict__ rstd, T* __restrict__ dx, T* __restrict__ dweight,
                        T* __restrict__ dbias, int rows, int cols, int row_blocks) {
    const int b = static_cast<int>(blockIdx.x);
    if (b < row_blocks) {
        const int lanes = static_cast<int>(blockDim.y);
        layer_norm_dx(delta, x, weight, mean, rstd, dx, rows, cols,
                      b * lanes + static_cast<int>(threadIdx.y), row_blocks * lanes);
    } else {
        layer_norm_param_grads(delta, x, mean, rstd, dweight, dbias, rows, cols, b - row_blocks,
                               static_cast<int>(gridDim.x) - row_blocks);
    }
}

}  // namespace gbp
