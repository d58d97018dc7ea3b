// dense.cu: the fused kernels of a Dense layer, templated over the element type T
// (float, double) and the activation functor Act (activations.cuh).
//
//   bias_act_forward<T, Act>     z[i,j] += b[j];  out[i,j] = f(z[i,j])
//   act_backward<T, Act>         dz = delta * f'(saved)
//   act_backward_colsum<T, Act>  dz = delta * f'(saved)  and  db[j] = sum_i dz[i,j]
//   column_sum<T>                out[j] = sum_i x[i,j]
//
// Matrices are row-major (rows, cols) and C-contiguous (the loader checks).
//
// The column reductions are deterministic, with no atomics: block (32, K) owns a
// strip of 32 adjacent columns (so each warp reads 32 adjacent elements of a row);
// thread (x, y) adds rows y, y+K, ... in order, then a fixed-order tree adds the K
// partials. The bits depend on (rows, cols, K) only. K = blockDim.y, 1 <= K <= 32.
#include "activations.cuh"

namespace gbp {

constexpr int kStripCols = 32;    // columns per block in the column reductions
constexpr int kMaxRowLanes = 32;  // largest blockDim.y of the column reductions

// z[i,j] += bias[j] (bias may be nullptr: no bias), out[i,j] = f(z[i,j]).
// z and out may be the same buffer (then the biased z is not kept, only f(z);
// right where Act's derivative comes from its output). When they differ, z keeps
// the biased pre-activation (what grad() needs when Act::needs_input).
template <typename T, typename Act>
__global__ void bias_act_forward(T* z, const T* __restrict__ bias, T* out, int rows, int cols) {
    using A = acc_t<T>;
    const long long n = static_cast<long long>(rows) * cols;
    const long long start = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    if (start >= n) return;
    const bool keep_z = bias != nullptr && z != out;
    // the column of i, advanced incrementally: no 64-bit modulo inside the loop
    int col = static_cast<int>(start % cols);
    const int col_step = static_cast<int>(stride % cols);
    for (long long i = start; i < n; i += stride) {
        A v = load<A>(z[i]);
        if (bias != nullptr) {
            v = add_rn(v, load<A>(bias[col]));  // NumPy's z + b, subnormals too
            if (keep_z) z[i] = store<T>(v);
        }
        out[i] = store<T>(Act::forward(v));
        col += col_step;
        if (col >= cols) col -= cols;
    }
}

// dz[i] = delta[i] * f'(saved[i]) over n elements; saved is a = f(z) or z as
// Act::needs_input says (unused, may be nullptr, for the identity).
template <typename T, typename Act>
__global__ void act_backward(const T* __restrict__ delta, const T* __restrict__ saved,
                             T* __restrict__ dz, long long n) {
    using A = acc_t<T>;
    GBP_GRID_STRIDE(i, n) {
        A d = load<A>(delta[i]);
        if constexpr (!is_identity<Act>::value) d = d * Act::grad(load<A>(saved[i]));
        dz[i] = store<T>(d);
    }
}

// The shared body of the column reductions: for each 32-column strip this block
// owns, d[i,j] = x[i,j] * f'(saved[i,j]) (x itself for the identity), written to
// dz when dz is not nullptr, and out[j] = sum_i d[i,j] in the fixed order above.
template <typename T, typename Act>
__device__ __forceinline__ void column_reduce(const T* __restrict__ x,
                                              const T* __restrict__ saved,
                                              T* __restrict__ dz, T* __restrict__ out,
                                              int rows, int cols) {
    using A = acc_t<T>;
    __shared__ A partial[kMaxRowLanes][kStripCols];
    const int tx = static_cast<int>(threadIdx.x);
    const int ty = static_cast<int>(threadIdx.y);
    const int lanes = static_cast<int>(blockDim.y);
    const int strips = (cols + kStripCols - 1) / kStripCols;
    for (int strip = blockIdx.x; strip < strips; strip += gridDim.x) {
        const int j = strip * kStripCols + tx;
        A sum = A(0);
        if (j < cols) {
            for (int i = ty; i < rows; i += lanes) {
                const long long idx = static_cast<long long>(i) * cols + j;
                A d = load<A>(x[idx]);
                if constexpr (!is_identity<Act>::value) d = d * Act::grad(load<A>(saved[idx]));
                if (dz != nullptr) dz[idx] = store<T>(d);
                sum += d;
            }
        }
        partial[ty][tx] = sum;
        __syncthreads();
        tree_reduce(&partial[0][tx], lanes, kStripCols, ty);
        if (ty == 0 && j < cols) out[j] = store<T>(partial[0][tx]);
        __syncthreads();  // partial is reused by the next strip
    }
}

// dz = delta * f'(saved) and db[j] = sum_i dz[i,j], in one pass, deterministic.
// dz may be nullptr (only db is wanted; the identity's db = column sum of delta).
// Launch with blockDim = (32, K), K <= 32.
template <typename T, typename Act>
__global__ void __launch_bounds__(kStripCols * kMaxRowLanes)
    act_backward_colsum(const T* __restrict__ delta, const T* __restrict__ saved,
                        T* __restrict__ dz, T* __restrict__ db, int rows, int cols) {
    column_reduce<T, Act>(delta, saved, dz, db, rows, cols);
}

// out[j] = sum_i x[i,j] (db = delta^T 1), deterministic. blockDim = (32, K), K <= 32.
template <typename T>
__global__ void __launch_bounds__(kStripCols * kMaxRowLanes)
    column_sum(const T* __restrict__ x, T* __restrict__ out, int rows, int cols) {
    column_reduce<T, act::Identity>(x, nullptr, nullptr, out, rows, cols);
}

}  // namespace gbp
