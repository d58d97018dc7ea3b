// dropout.cu: inverted dropout with masks from Philox4x32-10 (Random123), templated
// over the element type T (float, double); the math of NumpyOps.dropout_forward /
// dropout_backward and gpubackprop/philox.py, bit for bit in the mask.
//
//   philox4x32_10          the generator (GBP_HD: the host harness runs it too)
//   dropout_group<T>       one group of four elements of dropout_forward (GBP_HD too)
//   dropout_forward<T>     keep_i = u_{offset+i} >= threshold; out_i = keep_i ? x_i * scale : 0;
//                          mask_i = keep_i; then state[1] += 1 (on the device)
//   dropout_backward<T>    dx_i = mask_i ? delta_i * scale : 0
//
// The counter scheme (docs/normalization_and_dropout.md): element i of step s under
// key K is word i % 4 of philox4x32_10(c = (j lo, j hi, s lo, s hi), k = (K lo, K hi))
// with j = i / 4, i = offset + the index in x (offset: a 64-bit counter base).
// state is uint64[3] on the device: [K, s, blocks-done counter].
#include "gbp_math.cuh"

namespace gbp {

constexpr unsigned int kPhiloxM0 = 0xD2511F53u;
constexpr unsigned int kPhiloxM1 = 0xCD9E8D57u;
constexpr unsigned int kPhiloxW0 = 0x9E3779B9u;
constexpr unsigned int kPhiloxW1 = 0xBB67AE85u;

// out = Philox4x32-10(counter c, key (k0, k1)): ten rounds, the key bumped between rounds.
GBP_HD void philox4x32_10(const unsigned int c_in[4], unsigned int k0, unsigned int k1,
                          unsigned int out[4]) {
    unsigned int c0 = c_in[0], c1 = c_in[1], c2 = c_in[2], c3 = c_in[3];
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += kPhiloxW0;
            k1 += kPhiloxW1;
        }
        const unsigned long long p0 = static_cast<unsigned long long>(kPhiloxM0) * c0;
        const unsigned long long p1 = static_cast<unsigned long long>(kPhiloxM1) * c2;
        const unsigned int hi0 = static_cast<unsigned int>(p0 >> 32);
        const unsigned int hi1 = static_cast<unsigned int>(p1 >> 32);
        c0 = hi1 ^ c1 ^ k0;
        c1 = static_cast<unsigned int>(p1);
        c2 = hi0 ^ c3 ^ k1;
        c3 = static_cast<unsigned int>(p0);
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

// The four words of group j (elements 4j .. 4j+3) at step `step` under key `seed`.
GBP_HD void dropout_words(unsigned long long seed, unsigned long long step,
                          unsigned long long j, unsigned int out[4]) {
    const unsigned int c[4] = {static_cast<unsigned int>(j), static_cast<unsigned int>(j >> 32),
                               static_cast<unsigned int>(step),
                               static_cast<unsigned int>(step >> 32)};
    philox4x32_10(c, static_cast<unsigned int>(seed), static_cast<unsigned int>(seed >> 32), out);
}

// Group k of the span of x from the 64-bit counter base `offset` (the index of x[0] in
// the global batch, so a data-parallel shard draws its rows' one-process masks): the
// elements i = 4k + w − offset % 4 in [0, n) of counter group offset / 4 + k.
template <typename T>
GBP_HD void dropout_group(const T* __restrict__ x, T* __restrict__ out,
                          unsigned char* __restrict__ mask, unsigned long long seed,
                          unsigned long long step, unsigned long long threshold, T scale,
                          long long n, unsigned long long offset, long long k) {
    using A = acc_t<T>;
    unsigned int u[4];
    dropout_words(seed, step, offset / 4 + static_cast<unsigned long long>(k), u);
    const long long head = static_cast<long long>(offset % 4);
    for (int w = 0; w < 4; ++w) {
        const long long i = 4 * k + w - head;
        if (i < 0) continue;
        if (i >= n) break;
        const bool keep = static_cast<unsigned long long>(u[w]) >= threshold;
        mask[i] = keep ? 1 : 0;
        out[i] = keep ? store<T>(load<A>(x[i]) * load<A>(scale)) : T(0);
    }
}

// Grid-stride over the (offset % 4 + n + 3) / 4 groups of the span; every block reads
// the step before it counts itself done, and the last block to finish advances state[1]
// and resets the count (integer atomics on the blocks-done counter only, as optim.cu's
// sgd_step).
template <typename T>
__global__ void dropout_forward(const T* __restrict__ x, T* __restrict__ out,
                                unsigned char* __restrict__ mask, unsigned long long* state,
                                unsigned long long threshold, T scale, long long n,
                                unsigned long long offset) {
    const unsigned long long seed = state[0];
    const unsigned long long step = state[1];
    const long long groups = (static_cast<long long>(offset % 4) + n + 3) / 4;
    GBP_GRID_STRIDE(k, groups) {
        dropout_group(x, out, mask, seed, step, threshold, scale, n, offset, k);
    }
    if (last_block_done(reinterpret_cast<unsigned int*>(state + 2))) {
        state[1] = step + 1;
        __threadfence();
    }
}

template <typename T>
__global__ void dropout_backward(const T* __restrict__ delta,
                                 const unsigned char* __restrict__ mask, T* __restrict__ dx,
                                 T scale, long long n) {
    using A = acc_t<T>;
    GBP_GRID_STRIDE(i, n) {
        dx[i] = mask[i] != 0 ? store<T>(load<A>(delta[i]) * load<A>(scale)) : T(0);
    }
}

}  // namespace gbp
