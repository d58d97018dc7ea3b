"""The JAX twin of a benchmark network: the whole training step as one function.

Device-agnostic (the tests run it on JAX's CPU backend); ``gpu_step.py`` jits it
on the GPU with the params donated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import LR, Params
from bench.networks import Network


def make_jax_step(net: Network) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """``step(params, x, y) -> (new_params, loss)``: forward, loss, grad, SGD (not jitted).

    params is a list of (W (out, in), b (out,)); y int labels for cross-entropy,
    float targets for MSE. The caller jits it (with ``donate_argnums=(0,)``).
    """
    import jax
    import jax.numpy as jnp

    acts = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu}
    layer_acts = [act for _, _, act in net.layers]
    for act in layer_acts:
        if act is not None and act not in acts:
            raise ValueError(f"{net.name}: no JAX twin for activation {act!r}")

    def loss_fn(params: Any, x: Any, y: Any) -> Any:
        a = x
        for (w, b), act in zip(params, layer_acts, strict=True):
            a = a @ w.T + b
            if act is not None:
                a = acts[act](a)
        if net.loss == "mse":
            return jnp.mean((a - y) ** 2)
        logp = jax.nn.log_softmax(a, axis=1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def step(params: Any, x: Any, y: Any) -> tuple[Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        new = jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads)
        return new, loss

    return step


def jax_params(init: Params, device: Any) -> list[tuple[Any, Any]]:
    """The weights as a JAX pytree on ``device`` (fresh buffers: safe to donate)."""
    import jax

    return [(jax.device_put(w.copy(), device), jax.device_put(b.copy(), device)) for w, b in init]


def jax_batch(x: np.ndarray, y: np.ndarray, device: Any) -> tuple[Any, Any]:
    """(x, y) on ``device``; labels as int32 (JAX's default integer width)."""
    import jax

    y_host = y.astype(np.int32) if y.dtype.kind in "iu" else y.astype(np.float32)
    return jax.device_put(x, device), jax.device_put(y_host, device)


def jax_to_host(params: Any) -> Params:
    """Host copies of a JAX params pytree."""
    return [(np.array(w), np.array(b)) for w, b in params]
