"""The kernels' per-element math on the host, no GPU needed (needs nvcc).

A small host program built from the very same headers (kernels/*.cu, GBP_HD
functions) runs every activation functor, the BCE element and the SGD and Adam
element updates on the CPU, compared with the NumPy reference: the activations
to rounding at random and edge values, the optimizer updates bit for bit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpubackprop.backend.numpy_ops import NumpyOps
from gpubackprop.optim import SGD, AdamW

from .kernel_helpers import (
    ACT_NAMES,
    ADAM_CONFIGS,
    DTYPE_IDS,
    DTYPES,
    FINITE_EDGES,
    INF,
    OPT_STEPS,
    SGD_CONFIGS,
    assert_close,
    check_activation_values,
    compile_host_harness,
    needs_nvcc,
    opt_data,
    tolerances,
)

HARNESS = r"""
// Host harness: the kernels' per-element math (GBP_HD functions) on the CPU.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "dense.cu"
#include "losses.cu"
#include "optim.cu"

using Vec = std::vector<double>;

static Vec read_all(const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) { std::perror(path); std::exit(2); }
    std::fseek(f, 0, SEEK_END);
    const long bytes = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    Vec v(static_cast<size_t>(bytes) / sizeof(double));
    if (std::fread(v.data(), sizeof(double), v.size(), f) != v.size()) std::exit(3);
    std::fclose(f);
    return v;
}

static void write_all(const char* path, const Vec& v) {
    FILE* f = std::fopen(path, "wb");
    if (!f) { std::perror(path); std::exit(2); }
    std::fwrite(v.data(), sizeof(double), v.size(), f);
    std::fclose(f);
}

template <typename T, typename Act>
static Vec run_act(const Vec& z) {
    const size_t n = z.size();
    Vec out(2 * n);
    for (size_t i = 0; i < n; ++i) {
        const T zi = static_cast<T>(z[i]);
        const T a = Act::forward(zi);
        out[i] = a;
        out[n + i] = Act::grad(Act::needs_input ? zi : a);
    }
    return out;
}

template <typename T>
static bool run_act_named(const char* name, const Vec& in, Vec& out) {
#define GBP_HOST_ACT(py, Type) \
    if (std::strcmp(name, #py) == 0) { out = run_act<T, gbp::act::Type>(in); return true; }
    GBP_FOR_EACH_ACTIVATION(GBP_HOST_ACT)
#undef GBP_HOST_ACT
    return false;
}

// in: z[n], y[n]; out: loss[n], grad[n]
template <typename T>
static Vec run_bce(const Vec& in) {
    const size_t n = in.size() / 2;
    const T inv_n = static_cast<T>(1.0 / static_cast<double>(n));
    Vec out(2 * n);
    for (size_t i = 0; i < n; ++i) {
        T g;
        out[i] = gbp::bce_element<T>(static_cast<T>(in[i]), static_cast<T>(in[n + i]), inv_n, &g);
        out[n + i] = g;
    }
    return out;
}

// in: n, steps, lr, momentum, dampening, weight_decay, nesterov, p[n], g[steps][n]
// out: p[n], buf[n]   (as sgd_step with step_state starting at 0)
template <typename T>
static Vec run_sgd(const Vec& in) {
    const size_t n = static_cast<size_t>(in[0]), steps = static_cast<size_t>(in[1]);
    const T lr = static_cast<T>(in[2]), mom = static_cast<T>(in[3]);
    const T omd = static_cast<T>(1.0 - in[4]), wd = static_cast<T>(in[5]);
    const bool nesterov = in[6] != 0;
    std::vector<T> p(n), buf(n, T(0));
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<T>(in[7 + i]);
    for (size_t s = 0; s < steps; ++s)
        for (size_t i = 0; i < n; ++i)
            gbp::sgd_element<T>(p[i], static_cast<T>(in[7 + n + s * n + i]), buf[i], lr, mom,
                                omd, wd, nesterov, s == 0);
    Vec out(2 * n);
    for (size_t i = 0; i < n; ++i) { out[i] = p[i]; out[n + i] = buf[i]; }
    return out;
}

// in: n, steps, lr, beta1, beta2, eps, weight_decay, decoupled, p[n], g[steps][n]
// out: p[n], m[n], v[n]   (as adam_prepare + adam_step, step_state starting at 0)
template <typename T>
static Vec run_adam(const Vec& in) {
    const size_t n = static_cast<size_t>(in[0]), steps = static_cast<size_t>(in[1]);
    const T lr = static_cast<T>(in[2]);
    const double b1 = in[3], b2 = in[4], wd = in[6];
    const T eps = static_cast<T>(in[5]);
    const bool decoupled = in[7] != 0;
    std::vector<T> p(n), m(n, T(0)), v(n, T(0));
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<T>(in[8 + i]);
    for (size_t s = 0; s < steps; ++s) {
        T sc[3];
        gbp::adam_scalars<T>(static_cast<int>(s) + 1, static_cast<double>(lr), b1, b2, wd, sc);
        for (size_t i = 0; i < n; ++i)
            gbp::adam_element<T>(p[i], static_cast<T>(in[8 + n + s * n + i]), m[i], v[i], sc[0],
                                 sc[1], sc[2], static_cast<T>(b1), static_cast<T>(b2),
                                 static_cast<T>(1.0 - b1), static_cast<T>(1.0 - b2), eps,
                                 static_cast<T>(wd), decoupled);
    }
    Vec out(3 * n);
    for (size_t i = 0; i < n; ++i) { out[i] = p[i]; out[n + i] = m[i]; out[2 * n + i] = v[i]; }
    return out;
}

template <typename T>
static int run(const char* mode, const char* arg, const Vec& in, Vec& out) {
    if (std::strcmp(mode, "act") == 0) return run_act_named<T>(arg, in, out) ? 0 : 4;
    if (std::strcmp(mode, "bce") == 0) { out = run_bce<T>(in); return 0; }
    if (std::strcmp(mode, "sgd") == 0) { out = run_sgd<T>(in); return 0; }
    if (std::strcmp(mode, "adam") == 0) { out = run_adam<T>(in); return 0; }
    return 5;
}

int main(int argc, char** argv) {  // harness MODE DTYPE ARG IN OUT
    if (argc != 6) return 1;
    const Vec in = read_all(argv[4]);
    Vec out;
    const int rc = std::strcmp(argv[2], "float32") == 0 ? run<float>(argv[1], argv[3], in, out)
                                                        : run<double>(argv[1], argv[3], in, out);
    if (rc == 0) write_all(argv[5], out);
    return rc;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host harness, compiled once (a few seconds)."""
    return compile_host_harness(tmp_path_factory, "kernel_harness", HARNESS)


def _run_harness(exe: Path, mode: str, dtype: Any, arg: str, data: np.ndarray) -> np.ndarray:
    folder = exe.parent
    inp, out = folder / f"{mode}.in", folder / f"{mode}.out"
    np.asarray(data, dtype=np.float64).tofile(inp)
    done = subprocess.run(
        [str(exe), mode, np.dtype(dtype).name, arg, str(inp), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"harness {mode} {arg}: rc {done.returncode} {done.stderr}"
    return np.fromfile(out, dtype=np.float64).astype(dtype)


def _activation_inputs(dtype: Any, rng: np.random.Generator) -> np.ndarray:
    random = np.concatenate([rng.standard_normal(2000) * 3, rng.uniform(-30, 30, 500)])
    z = np.concatenate([FINITE_EDGES, [-INF, INF], random])
    return z.astype(dtype)


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ACT_NAMES)
def test_host_activation_functors_match_reference(
    harness: Path, name: str, dtype: Any, rng: np.random.Generator
) -> None:
    z = _activation_inputs(dtype, rng)
    out = _run_harness(harness, "act", dtype, name, z)
    a, g = out[: z.size], out[z.size :]
    check_activation_values(name, dtype, z, a, g)


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_host_bce_element_matches_reference(
    harness: Path, dtype: Any, rng: np.random.Generator
) -> None:
    z = np.concatenate([FINITE_EDGES, rng.standard_normal(500) * 5]).astype(dtype)
    y = rng.uniform(0, 1, z.size).astype(dtype)
    y[:4] = [0.0, 1.0, 0.0, 1.0]
    out = _run_harness(harness, "bce", dtype, "-", np.concatenate([z, y]))
    loss, grad = out[: z.size], out[z.size :]
    grad_ref = np.empty_like(z)
    value_ref = NumpyOps().bce_with_logits(z, y, grad_ref)
    assert np.isfinite(loss).all()
    assert_close(grad, grad_ref, dtype, "bce grad")
    rtol, _ = tolerances(dtype)
    assert abs(loss.astype(np.float64).sum() / z.size - value_ref) <= rtol * (
        np.abs(loss).sum() / z.size
    )
    # the limits at ±inf where the loss has one: 0 for a confident right answer
    zi = np.array([INF, -INF, INF, -INF], dtype)
    yi = np.array([1.0, 0.0, 0.0, 1.0], dtype)
    out = _run_harness(harness, "bce", dtype, "-", np.concatenate([zi, yi]))
    np.testing.assert_array_equal(out[:4], [0.0, 0.0, INF, INF])
    np.testing.assert_array_equal(out[4:], np.array([0.0, 0.0, 0.25, -0.25], dtype))


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_host_sgd_element_is_bit_exact(
    harness: Path, config: dict[str, Any], dtype: Any, rng: np.random.Generator
) -> None:
    n, lr = 999, 0.05
    params, grads = opt_data(n, dtype, rng)
    opt, p = SGD(lr=lr, **config), params.copy()
    for g in grads:
        opt.step(p, g)
    header = [
        n, OPT_STEPS, lr, config.get("momentum", 0.0), config.get("dampening", 0.0),
        config.get("weight_decay", 0.0), float(config.get("nesterov", False)),
    ]  # fmt: skip
    out = _run_harness(harness, "sgd", dtype, "-", np.concatenate([header, params, grads.ravel()]))
    np.testing.assert_array_equal(out[:n], p)
    if config.get("momentum", 0.0):
        np.testing.assert_array_equal(out[n:], opt.state_dict()["state"]["momentum_buffer"])


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cls,config", ADAM_CONFIGS, ids=lambda x: str(x))
def test_host_adam_element_is_bit_exact(
    harness: Path, cls: type, config: dict[str, Any], dtype: Any, rng: np.random.Generator
) -> None:
    """With a learning rate exact in float32 (so the device's lr equals Python's)."""
    n, lr = 999, 2.0**-7
    params, grads = opt_data(n, dtype, rng)
    opt, p = cls(lr=lr, **config), params.copy()
    for g in grads:
        opt.step(p, g)
    beta1, beta2 = config.get("betas", (0.9, 0.999))
    header = [
        n, OPT_STEPS, lr, beta1, beta2, config.get("eps", 1e-8),
        config.get("weight_decay", 0.0), float(cls is AdamW),
    ]  # fmt: skip
    out = _run_harness(harness, "adam", dtype, "-", np.concatenate([header, params, grads.ravel()]))
    state = opt.state_dict()["state"]
    np.testing.assert_array_equal(out[:n], p)
    np.testing.assert_array_equal(out[n : 2 * n], state["exp_avg"])
    np.testing.assert_array_equal(out[2 * n :], state["exp_avg_sq"])


# =========================================================================================


# --- Philox4x32-10 of kernels/dropout.cu on the host -------------------------------------------
PHILOX_HARNESS = r"""
// Host harness: gbp::dropout_words (and so gbp::philox4x32_10) and gbp::dropout_group
// (the body of the dropout_forward kernel) of dropout.cu on the CPU.
// argv: seed step n offset threshold out_path; writes the n uint32 words u_o .. u_{o+n-1}
// of the elements from the 64-bit counter base o = offset (element i: word i % 4 of
// group i / 4), then the n mask bytes of every group of dropout_forward's span.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "dropout.cu"

int main(int argc, char** argv) {
    if (argc != 7) return 2;
    const unsigned long long seed = std::strtoull(argv[1], nullptr, 10);
    const unsigned long long step = std::strtoull(argv[2], nullptr, 10);
    const long long n = std::strtoll(argv[3], nullptr, 10);
    const unsigned long long offset = std::strtoull(argv[4], nullptr, 10);
    const unsigned long long threshold = std::strtoull(argv[5], nullptr, 10);
    std::vector<unsigned int> words(static_cast<size_t>(n));
    for (long long k = 0; k < n; ++k) {
        const unsigned long long i = offset + static_cast<unsigned long long>(k);
        unsigned int u[4];
        gbp::dropout_words(seed, step, i / 4, u);
        words[static_cast<size_t>(k)] = u[i % 4];
    }
    std::vector<float> x(static_cast<size_t>(n), 1.0f), out(static_cast<size_t>(n));
    std::vector<unsigned char> mask(static_cast<size_t>(n), 2);
    const long long groups = (static_cast<long long>(offset % 4) + n + 3) / 4;
    for (long long k = 0; k < groups; ++k) {
        gbp::dropout_group(x.data(), out.data(), mask.data(), seed, step, threshold, 2.0f, n,
                           offset, k);
    }
    FILE* f = std::fopen(argv[6], "wb");
    if (!f) return 3;
    std::fwrite(words.data(), sizeof(unsigned int), words.size(), f);
    std::fwrite(mask.data(), 1, mask.size(), f);
    std::fclose(f);
    return 0;
}
"""


@pytest.fixture(scope="module")
def philox_harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_host_harness(tmp_path_factory, "philox_harness", PHILOX_HARNESS)


@needs_nvcc
@pytest.mark.parametrize(
    "seed,step,n,offset",
    [
        (0, 0, 1, 0), (2**64 - 1, 2**64 - 1, 7, 0), (0x0123456789ABCDEF, 2**32 + 5, 1031, 0),
        (42, 3, 4096, 0), (42, 3, 37, 6), (0x0123456789ABCDEF, 7, 1031, 4 * 2**32 - 5),
        (9, 2**40, 13, 2**63 + 1),
    ],
)
def test_host_philox_matches_numpy_bit_for_bit(
    philox_harness: Path, seed: int, step: int, n: int, offset: int
) -> None:
    """The device function's words = gpubackprop.philox.dropout_words (the same counter
    scheme on both devices, so the CPU and GPU masks agree bit for bit), also from a
    64-bit counter base (a data-parallel shard's; past 2³² groups of four); and the
    kernel's groups (dropout_group) write every mask element, the reference's."""
    from gpubackprop.philox import dropout_words, keep_threshold

    out = philox_harness.parent / f"words-{n}-{offset}.bin"
    threshold = keep_threshold(0.3)
    done = subprocess.run(
        [str(philox_harness), str(seed), str(step), str(n), str(offset), str(threshold),
         str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    raw = out.read_bytes()
    words = dropout_words(np, n, seed, step, offset)
    np.testing.assert_array_equal(np.frombuffer(raw[: 4 * n], dtype=np.uint32), words)
    mask = np.empty(n, np.uint8)
    NumpyOps().dropout_forward(
        np.ones(n, np.float32), np.empty(n, np.float32), mask,
        np.array([seed, step, 0], dtype=np.uint64), threshold=threshold, scale=2.0,
        offset=offset,
    )
    np.testing.assert_array_equal(np.frombuffer(raw[4 * n :], dtype=np.uint8), mask)
