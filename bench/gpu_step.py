"""Benchmark ONE training step on a GPU: gpubackprop (eager, captured) vs PyTorch, JAX, GEMMs.

A step is forward, loss, backward and a plain SGD update (lr 0.01), float32 with
TF32 off (but in the TF32 rows), on the networks of :data:`bench.networks.GPU_NETWORKS`
(seed-2layer, mnist-mlp, deep-narrow, wide-b512, wide), and the LSTM language model
``lstm-lm`` of :mod:`bench.lstm_lm` (gbp eager, gbp captured, torch eager = cuDNN's
LSTM, torch graph only; its reference is torch float64 autograd). Contenders, all in this
process, on the same batch (already on the device) and from the same weights:

* ``gbp eager``: gpubackprop's eager step *without* the loss sync and input
  validation of ``train_step``: ``model.step(batch, optimizer)`` (forward, loss,
  backward, ``optimizer.step`` on the flat buffers) on a batch from
  ``model.prepare_batch``, prepared once;
* ``gbp captured``: ``step = model.compile_step(loss, optimizer)``, timed as
  ``step(x, y)`` (copies the batch into the graph's static buffers and replays
  one captured CUDA graph of the whole step; ``return_loss=False``, no sync);
* ``torch eager`` / ``torch graph``: ``bench.common``'s PyTorch twin, eager with
  ``SGD(foreach=True)``, and captured with ``torch.cuda.graph`` after a
  side-stream warm-up (PyTorch's whole-network recipe) and replayed;
* ``jax jit``: ``jax.jit`` of the whole step (``value_and_grad`` + SGD on a
  params pytree, params donated), timed on the host clock with
  ``block_until_ready`` only after the block;
* ``GEMM floor``: only the GEMMs a step needs (forward Z = A Wᵀ per layer,
  dW = Δᵀ A per layer, Δ_in = Δ W per layer but the first) on gpubackprop's own
  cuBLAS handle, captured in one CUDA graph (``eager`` if that capture fails);
* TF32 rows, on wide-b512 and wide only: ``gpubackprop tf32 (captured)``
  (``gb.Sequential(..., precision="tf32")``, compiled step; skipped with the
  reason where ``precision=`` is not accepted), and ``torch tf32 eager`` /
  ``torch tf32 graph`` (``torch.backends.cuda.matmul.allow_tf32 = True`` only
  while they run or capture); target: tf32 ≤ 1.0× the faster PyTorch TF32 step.

Before timing, one step of every contender from identical weights is compared
with a float64 step of the textbook formulas on the host (``common.reference_step``:
loss and updated weights within float32 rounding, TF32 rows within TF32 tolerance:
the ``check`` column); the GEMM floor's products are compared with a float64
product of the same operands.
Timing: warm-up steps, then ``--reps`` rounds in which every contender runs a
block of ``--iters`` steps (order rotated each round), timed with CUDA events
(the host clock for JAX); a sample is block time / iters; median, p10 and p90
over the blocks are reported. ``--quick``: 5 warm-up steps, 3 blocks of 20.

Run from the repository root: ``python bench/gpu_step.py [--quick] [--networks a,b]
[--warmup 20] [--iters 50] [--reps 10] [--json PATH] [--png PATH]``. Without
CuPy or a GPU it says so and exits 0. Exit status 1 when a correctness check
failed or a gpubackprop contender raised, else 0 (targets missed do not count).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

# Import the checkout's gpubackprop (and bench.*) even when run as a script.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import gpubackprop as gb  # noqa: E402
from bench import common  # noqa: E402
from bench.common import (  # noqa: E402
    CHECK_SIGMAS,
    FLIP_SIGMAS,
    LR,
    Params,
    build_torch_model,
    compare_step,
    cuda_version_str,
    gb_params,
    load_params,
    one_line,
    reference_step,
    summarize,
    torch_batch,
    torch_loss_fn,
    torch_params,
    torch_sgd,
    torch_train_step,
)
from bench.gemm_floor import (  # noqa: E402
    GEMM_RTOL,
    floor_buffers,
    floor_plan,
    gemm_check,
    plan_error,
    poison_outputs,
    run_plan,
)
from bench.gpu_results import (  # noqa: E402
    ALL_CONTENDERS,
    GBP_CAPTURED,
    GBP_EAGER,
    GBP_TF32,
    GEMM_FLOOR,
    JAX_JIT,
    LABELS,
    SCHEMA,
    TF32_CONTENDERS,
    TF32_NETWORKS,
    TF32_PEERS,
    TORCH_EAGER,
    TORCH_GRAPH,
    TORCH_TF32_EAGER,
    TORCH_TF32_GRAPH,
    contender_entry,
    default_json_path,
    format_ms,
    network_result,
    report,
    run_failed,
    write_json,
)
from bench.jax_twin import jax_batch, jax_params, jax_to_host, make_jax_step  # noqa: E402
from bench.lstm_lm import (  # noqa: E402
    LSTM_LM,
    LSTMNetwork,
    build_lstm_model,
    build_torch_lstm,
    compare_lstm_step,
    gb_named_params,
    load_named_params,
    load_torch_named_params,
    make_lstm_batch,
    reference_lstm_step,
    torch_lstm_loss,
    torch_named_params,
)
from bench.networks import GPU_NETWORKS, Network, build_model, get_networks, make_batch  # noqa: E402

#: "gpubackprop bench" when ``python -m gpubackprop bench`` runs this file (its usage line)
PROG = "gpubackprop bench" if __name__ == "gpubackprop_bench" else None

# TF32 rows are checked against the same float64 reference step with these bounds
# (float32 rows: the reference's own, ``common.reference_step``). TF32 rounds GEMM
# operands to 10 mantissa bits (relative 2^-11 ≈ 5e-4 each). A NumPy emulation
# (operands rounded to nearest TF32, float32 sums) of one step gave loss 1.3e-5 /
# update 2.6e-2 on wide-b512 and 7e-6 / 1.3e-2 on wide against a float32 step, both on
# the first layer (the error grows through the backward pass and its ReLU masks, which
# TF32 flips far more often than float32; 2.6e-4 on the last layer). Bugs (lr, loss
# scale, bias, transpose) give O(1).
TF32_LOSS_RTOL = 1e-3
TF32_UPDATE_RTOL = 1e-1
TF32_TOL = {"loss_rtol": TF32_LOSS_RTOL, "update_rtol": TF32_UPDATE_RTOL}
#: (warmup, iters, reps): the defaults, and --quick's (every contender and network kept)
FULL_REPS = {"warmup": 20, "iters": 50, "reps": 10}
QUICK_REPS = {"warmup": 5, "iters": 20, "reps": 3}


class Skipped(Exception):
    """A contender that cannot run here (not an error): reported with the reason."""


# --- contenders (GPU only) ---------------------------------------------------------------------
class Timed(Protocol):
    """What :func:`measure` needs of a contender."""

    def warmup(self, steps: int) -> None: ...

    def time_block(self, steps: int) -> float: ...


class Contender:
    """A training step on a fixed batch, issued without host syncs.

    Subclasses set ``clock`` and define :meth:`issue` (``steps`` steps, no sync),
    :meth:`sync`, and for model contenders :meth:`first_step`.
    """

    clock = "cuda-event"
    mode: str | None = None
    note = ""

    def first_step(self) -> tuple[float, Params]:
        """One step from the initial weights: (loss, updated weights on the host)."""
        raise NotImplementedError

    def issue(self, steps: int) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        raise NotImplementedError

    def warmup(self, steps: int) -> None:
        self.issue(steps)
        self.sync()

    def time_block(self, steps: int) -> float:
        """Milliseconds for ``steps`` steps issued back to back."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop device references (memory is freed between networks)."""
        self.__dict__.clear()


class CupyContender(Contender):
    """A contender on CuPy, timed with CuPy events on ``self.stream`` (None: current)."""

    def __init__(self, cp: ModuleType) -> None:
        self.cp = cp
        self.stream: Any = None

    def _stream(self) -> Any:
        return self.stream if self.stream is not None else self.cp.cuda.get_current_stream()

    def sync(self) -> None:
        self.cp.cuda.Device().synchronize()

    def time_block(self, steps: int) -> float:
        cp = self.cp
        stream = self._stream()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        self.sync()
        start.record(stream)
        self.issue(steps)
        end.record(stream)
        end.synchronize()
        return float(cp.cuda.get_elapsed_time(start, end))


class GbpContender(CupyContender):
    """A gpubackprop model on ``self.device`` from the shared initial weights, SGD(lr)."""

    device = "cuda"  # the tests run the same classes on "cpu" with NumPy as ``cp``
    precision: str | None = None  # None: the model's default (float32 GEMMs)

    x_dtype: Any = np.float32  # the batch's inputs on the device (None: as given)

    def __init__(self, cp: ModuleType, net: Any, init: Any, x: np.ndarray, y: np.ndarray):
        super().__init__(cp)
        self.model = self.build(net, init)
        self.opt = gb.optim.SGD(LR)
        with self.model.backend.activate():
            self.x, self.y = cp.asarray(x, dtype=self.x_dtype), cp.asarray(y)

    def build(self, net: Network, init: Params) -> gb.Sequential:
        """The MLP on ``self.device`` with the weights ``init``."""
        model = build_model(
            net, device=self.device, dtype="float32", seed=0, precision=self.precision
        )
        load_params(model, init)
        return model

    def params(self) -> Any:
        """Host copies of the model's parameters, as the one-step check reads them."""
        return gb_params(self.model)


class GbpEager(GbpContender):
    """gpubackprop eager: ``model.step`` (forward, loss, backward, update) on a prepared batch."""

    def __init__(self, cp: ModuleType, net: Network, init: Params, x: np.ndarray, y: np.ndarray):
        super().__init__(cp, net, init, x, y)
        self.batch = self.model.prepare_batch(self.x, self.y, net.loss)

    def first_step(self) -> tuple[float, Params]:
        # the public API for the first step (validation included)
        value = self.model.train_step(self.x, self.y, self.batch.loss, self.opt)
        return float(value), self.params()

    def issue(self, steps: int) -> None:
        model, batch, opt = self.model, self.batch, self.opt
        for _ in range(steps):
            model.step(batch, opt)


class GbpCaptured(GbpContender):
    """gpubackprop captured: ``model.compile_step(loss, opt)`` replayed as ``step(x, y)``."""

    def __init__(self, cp: ModuleType, net: Network, init: Params, x: np.ndarray, y: np.ndarray):
        super().__init__(cp, net, init, x, y)
        self.step = self.model.compile_step(gb.losses.get_loss(net.loss), self.opt)

    def first_step(self) -> tuple[float, Params]:
        value = self.step(self.x, self.y, return_loss=True)
        return float(value), self.params()

    def issue(self, steps: int) -> None:
        step, x, y = self.step, self.x, self.y
        for _ in range(steps):
            step(x, y)

    def captures_note(self) -> str:
        captures = getattr(self.step, "captures", None)
        return "" if captures in (None, 1) else f"{captures} captures (expected 1)"


class LstmGbp(GbpContender):
    """The LSTM LM (:mod:`bench.lstm_lm`) instead of an MLP: int64 token ids, named params."""

    x_dtype = None

    def build(self, net: LSTMNetwork, init: dict[str, np.ndarray]) -> gb.Sequential:  # type: ignore[override]
        model = build_lstm_model(net, device=self.device, dtype="float32", seed=0)
        load_named_params(model, init)
        return model

    def params(self) -> Any:
        return gb_named_params(self.model)


class LstmGbpEager(LstmGbp, GbpEager):
    """gpubackprop eager on the LSTM LM."""


class LstmGbpCaptured(LstmGbp, GbpCaptured):
    """gpubackprop captured on the LSTM LM: the whole step (64 time steps) in one graph."""


class GbpTf32Captured(GbpCaptured):
    """The captured step of ``gb.Sequential(..., precision="tf32")`` (TF32 tensor-op GEMMs).

    Raises :class:`Skipped` where the installed gpubackprop does not take ``precision=``.
    """

    precision = "tf32"

    def __init__(self, cp: ModuleType, net: Network, init: Params, x: np.ndarray, y: np.ndarray):
        try:
            super().__init__(cp, net, init, x, y)
        except TypeError as exc:
            if "precision" not in str(exc):
                raise
            raise Skipped(f"this gpubackprop does not take precision= ({one_line(exc)})") from exc


class TorchContender(Contender):
    """A PyTorch contender, timed with torch CUDA events on the current stream."""

    device = "cuda"  # the tests run TorchEager on "cpu"

    def __init__(self, torch: ModuleType, net: Any, init: Any, x: np.ndarray, y: np.ndarray):
        self.torch = torch
        device = torch.device(self.device)
        self.model = self.build(net, init, device)
        self.opt = torch_sgd(self.model)
        self.loss_fn = self.loss_for(net)
        self.x, self.y = torch_batch(x, y, device)
        self.init = init

    def build(self, net: Network, init: Params, device: Any) -> Any:
        """``bench.common``'s MLP twin on ``device``."""
        return build_torch_model(net, init, device)

    def loss_for(self, net: Network) -> Callable[[Any, Any], Any]:
        return torch_loss_fn(net)

    def params(self) -> Any:
        """Host copies of the model's parameters, as the one-step check reads them."""
        return torch_params(self.model)

    def restore(self) -> None:
        """Put the initial weights back, in place (the captured graph keeps its tensors)."""
        torch = self.torch
        linears = [m for m in self.model if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for m, (w, b) in zip(linears, self.init, strict=True):
                m.weight.copy_(torch.from_numpy(w))
                m.bias.copy_(torch.from_numpy(b))

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def time_block(self, steps: int) -> float:
        torch = self.torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        self.sync()
        start.record()
        self.issue(steps)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))


class TorchEager(TorchContender):
    """PyTorch eager: zero_grad, forward, loss, backward, SGD(foreach) step."""

    def first_step(self) -> tuple[float, Params]:
        loss = torch_train_step(self.model, self.opt, self.loss_fn, self.x, self.y)
        return float(loss.item()), self.params()

    def issue(self, steps: int) -> None:
        model, opt, loss_fn, x, y = self.model, self.opt, self.loss_fn, self.x, self.y
        for _ in range(steps):
            torch_train_step(model, opt, loss_fn, x, y)


class TorchGraph(TorchContender):
    """PyTorch's whole-network CUDA-graph recipe: warm up on a side stream, capture, replay.

    ``zero_grad(set_to_none=True)`` runs before the capture, as in PyTorch's recipe:
    it launches no kernel, and backward inside the graph then writes (not adds)
    the gradients on every replay.
    """

    def __init__(self, torch: ModuleType, net: Network, init: Params, x: np.ndarray, y: np.ndarray):
        super().__init__(torch, net, init, x, y)
        model, opt, loss_fn, sx, sy = self.model, self.opt, self.loss_fn, self.x, self.y
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                torch_train_step(model, opt, loss_fn, sx, sy)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = loss_fn(model(sx), sy)
            self.static_loss.backward()
            opt.step()
        self.restore()  # the warm-up stepped the weights
        torch.cuda.synchronize()

    def first_step(self) -> tuple[float, Params]:
        self.graph.replay()
        return float(self.static_loss.item()), self.params()

    def issue(self, steps: int) -> None:
        graph = self.graph
        for _ in range(steps):
            graph.replay()


class LstmTorch(TorchContender):
    """The LSTM LM's PyTorch twin (cuDNN's LSTM on a GPU) instead of an MLP."""

    def build(self, net: LSTMNetwork, init: dict[str, np.ndarray], device: Any) -> Any:  # type: ignore[override]
        return build_torch_lstm(net, init, device)

    def loss_for(self, net: LSTMNetwork) -> Callable[[Any, Any], Any]:  # type: ignore[override]
        return torch_lstm_loss

    def params(self) -> Any:
        return torch_named_params(self.model)

    def restore(self) -> None:
        load_torch_named_params(self.model, self.init)


class LstmTorchEager(LstmTorch, TorchEager):
    """PyTorch eager on the LSTM LM."""


class LstmTorchGraph(LstmTorch, TorchGraph):
    """PyTorch's CUDA-graph recipe on the LSTM LM (static ids and labels)."""


@contextlib.contextmanager
def torch_tf32(torch: ModuleType) -> Iterator[None]:
    """``torch.backends.cuda.matmul.allow_tf32 = True`` inside, the previous value after."""
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32 = before


class TorchTf32Eager(TorchEager):
    """PyTorch eager with TF32 matmuls (the flag is set only while it runs)."""

    def first_step(self) -> tuple[float, Params]:
        with torch_tf32(self.torch):
            return super().first_step()

    def issue(self, steps: int) -> None:
        with torch_tf32(self.torch):
            super().issue(steps)


class TorchTf32Graph(TorchGraph):
    """PyTorch's CUDA-graph recipe captured with TF32 matmuls (replays keep them)."""

    def __init__(self, torch: ModuleType, net: Network, init: Params, x: np.ndarray, y: np.ndarray):
        with torch_tf32(torch):
            super().__init__(torch, net, init, x, y)


class JaxJit(Contender):
    """``jax.jit`` of the whole step, params donated, steps issued back to back."""

    clock = "wall"

    def __init__(
        self,
        jax: ModuleType,
        device: Any,
        net: Network,
        init: Params,
        x: np.ndarray,
        y: np.ndarray,
    ) -> None:
        self.jax = jax
        self.step = jax.jit(make_jax_step(net), donate_argnums=(0,))
        self.params = jax_params(init, device)
        self.x, self.y = jax_batch(x, y, device)
        self.loss: Any = None

    def first_step(self) -> tuple[float, Params]:
        self.params, self.loss = self.step(self.params, self.x, self.y)
        return float(self.loss), jax_to_host(self.params)

    def issue(self, steps: int) -> None:
        step, x, y = self.step, self.x, self.y
        params, loss = self.params, self.loss
        for _ in range(steps):
            params, loss = step(params, x, y)
        self.params, self.loss = params, loss

    def sync(self) -> None:
        self.jax.block_until_ready((self.params, self.loss))

    def time_block(self, steps: int) -> float:
        self.sync()
        start = time.perf_counter()
        self.issue(steps)
        self.sync()
        return (time.perf_counter() - start) * 1e3


class GemmFloor(CupyContender):
    """The step's GEMMs only, on a gpubackprop cuBLAS handle, as one CUDA graph.

    ``handle`` is a ``gpubackprop.backend.cublas.CublasHandle`` (one for the run:
    this class binds it to its own stream before capturing).
    """

    def __init__(
        self, cp: ModuleType, handle: Any, net: Network, init: Params, x: np.ndarray, seed: int
    ):
        super().__init__(cp)
        self.handle = handle
        self.plan = floor_plan(net)
        self.bufs = floor_buffers(cp, net, init, x, seed)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.graph: Any = None
        cp.cuda.Device().synchronize()
        with self.stream:
            self.handle.bind()
            run_plan(self.handle.gemm, self.plan, self.bufs)  # loads the kernels, eagerly
            self.stream.synchronize()
            try:
                self.stream.begin_capture()
                try:
                    run_plan(self.handle.gemm, self.plan, self.bufs)
                except BaseException:
                    try:
                        self.stream.end_capture()
                    except Exception:  # the capture is already invalid; keep the cause
                        pass
                    raise
                self.graph = self.stream.end_capture()
                self.mode = "graph"
            except Exception as exc:
                self.graph = None
                self.mode = "eager"
                self.note = f"capture failed, timed eagerly: {one_line(exc)}"
        cp.cuda.Device().synchronize()

    def issue(self, steps: int) -> None:
        if self.graph is not None:
            graph, stream = self.graph, self.stream
            for _ in range(steps):
                graph.launch(stream)
            return
        with self.stream:
            gemm, plan, bufs = self.handle.gemm, self.plan, self.bufs
            for _ in range(steps):
                run_plan(gemm, plan, bufs)

    def check(self) -> dict[str, Any]:
        """Poison the outputs, run one step (replay), compare with float64 products."""
        cp = self.cp
        with self.stream:
            poison_outputs(self.plan, self.bufs)
        self.issue(1)
        self.sync()
        return gemm_check(plan_error(cp, self.plan, self.bufs))


# --- timing ----------------------------------------------------------------------------------
def measure(
    contenders: Mapping[str, Timed], warmup: int, iters: int, reps: int
) -> tuple[dict[str, list[float]], dict[str, BaseException]]:
    """Warm every contender up, then ``reps`` rounds of one timed block each.

    The order rotates every round. Returns per-step milliseconds (block / iters)
    per contender, and the exception of each contender that raised (it is
    dropped from the later rounds; the others go on).
    """
    errors: dict[str, BaseException] = {}
    for key, c in contenders.items():
        try:
            c.warmup(warmup)
        except Exception as exc:
            errors[key] = exc
    keys = [k for k in contenders if k not in errors]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(reps):
        shift = r % len(keys) if keys else 0
        for key in keys[shift:] + keys[:shift]:
            if key in errors:
                continue
            try:
                samples[key].append(contenders[key].time_block(iters) / iters)
            except Exception as exc:
                errors[key] = exc
    return {k: v for k, v in samples.items() if k not in errors}, errors


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


# --- environment -------------------------------------------------------------------------------
def unset_cupy_tf32() -> str | None:
    """Remove ``CUPY_TF32`` from the environment (CuPy reads it at import); its old value."""
    return os.environ.pop("CUPY_TF32", None)


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the benchmark (None when CuPy sees a GPU).

    The reason is the one ``device="auto"`` gives for picking the CPU.
    """
    if gb.backend.has_gpu():
        return None
    return gb.get_backend("auto").reason.removeprefix("auto picked cpu: ")


def cupy_module() -> ModuleType:
    """CuPy (imported after :func:`unset_cupy_tf32`; only where :func:`no_gpu_reason` is None)."""
    import cupy

    return cupy


def import_torch() -> tuple[ModuleType | None, str | None]:
    """torch with CUDA and TF32 switched off, or (None, why not)."""
    try:
        import torch
    except Exception as exc:
        return None, f"torch is not importable ({one_line(exc)})"
    try:
        if not torch.cuda.is_available():
            return None, f"torch {torch.__version__} sees no CUDA device"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    except Exception as exc:
        return None, f"torch CUDA setup failed ({one_line(exc)})"
    return torch, None


def import_jax() -> tuple[ModuleType | None, Any, str | None]:
    """(jax, its first GPU device, None) with full-precision matmuls, or (None, None, why)."""
    # before JAX starts: do not let it take 75% of the GPU memory up front
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    try:
        import jax
    except Exception as exc:
        return None, None, f"jax is not importable ({one_line(exc)})"
    try:
        jax.config.update("jax_default_matmul_precision", "highest")
    except Exception as exc:
        return None, None, f"jax {jax.__version__}: cannot set matmul precision ({one_line(exc)})"
    problems = []
    for platform_name in ("cuda", "gpu"):
        try:
            gpus = jax.devices(platform_name)
        except Exception as exc:
            problems.append(one_line(exc, 150))
            continue
        if gpus:
            return jax, gpus[0], None
    return None, None, f"jax {jax.__version__} has no GPU backend ({'; '.join(problems)})"


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip().splitlines()[0] or None
    except Exception:
        return None


def gpu_environment(
    cp: ModuleType,
    torch: ModuleType | None,
    jax: ModuleType | None,
    cupy_tf32_before: str | None,
) -> dict[str, Any]:
    """Device, versions and TF32 state (every probe defensive)."""
    props: dict[str, Any] = {}
    device: dict[str, Any] = {"name": "unknown GPU"}
    try:
        dev_id = cp.cuda.Device().id
        props = cp.cuda.runtime.getDeviceProperties(dev_id)
        name = props.get("name", b"unknown GPU")
        device = {
            "id": dev_id,
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": f"{props.get('major')}.{props.get('minor')}",
            "multiprocessors": props.get("multiProcessorCount"),
            "memory_gib": round(props.get("totalGlobalMem", 0) / 2**30, 1),
        }
    except Exception as exc:
        device["error"] = one_line(exc)
    versions: dict[str, Any] = {
        **common.core_versions(),
        "cupy": cp.__version__,
        "torch": None,
        "torch_cuda": None,
        "jax": None,
        "jaxlib": None,
        "cuda_runtime": None,
        "cuda_driver_api": None,
        "driver": _driver_version(),
        "cublas": None,
    }
    try:
        versions["cuda_runtime"] = cuda_version_str(cp.cuda.runtime.runtimeGetVersion())
        versions["cuda_driver_api"] = cuda_version_str(cp.cuda.runtime.driverGetVersion())
    except Exception:
        pass
    try:
        from cupy_backends.cuda.libs import cublas

        versions["cublas"] = cublas.getVersion(cp.cuda.device.get_cublas_handle())
    except Exception:
        pass
    if torch is not None:
        versions["torch"] = torch.__version__
        versions["torch_cuda"] = torch.version.cuda
    if jax is not None:
        versions["jax"] = jax.__version__
        try:
            import jaxlib

            versions["jaxlib"] = jaxlib.__version__
        except Exception:
            pass
    tf32: dict[str, Any] = {
        "CUPY_TF32_before": cupy_tf32_before,
        "CUPY_TF32_now": os.environ.get("CUPY_TF32"),
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "gpubackprop_cublas_math_mode": "CUBLAS_DEFAULT_MATH (no TF32)",
        "tf32_rows": "gpubackprop precision='tf32'; torch allow_tf32=True only while its "
        "TF32 rows run or capture",
    }
    if torch is not None:
        tf32["torch_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        tf32["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        tf32["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    if jax is not None:
        try:
            tf32["jax_default_matmul_precision"] = jax.config.jax_default_matmul_precision
        except Exception:
            tf32["jax_default_matmul_precision"] = "highest (set; not read back)"
    return {"device": device, "versions": versions, "tf32": tf32}


def print_environment(env: Mapping[str, Any]) -> None:
    d, v, t = env["device"], env["versions"], env["tf32"]
    print(
        f"{env['date']}  {d['name']} (cc {d.get('compute_capability')}, "
        f"{d.get('multiprocessors')} SMs, {d.get('memory_gib')} GiB)"
    )
    print(
        "versions: " + ", ".join(f"{k} {val if val is not None else 'n/a'}" for k, val in v.items())
    )
    before = t["CUPY_TF32_before"]
    was = "was not set" if before is None else f"was {before!r}, unset before importing CuPy"
    torch_part = (
        f"torch allow_tf32 matmul={t['torch_matmul_allow_tf32']} "
        f"cudnn={t['torch_cudnn_allow_tf32']} precision={t['torch_float32_matmul_precision']}"
        if "torch_matmul_allow_tf32" in t
        else "torch n/a"
    )
    jax_part = (
        f"jax matmul precision={t['jax_default_matmul_precision']}"
        if "jax_default_matmul_precision" in t
        else "jax n/a"
    )
    print(
        f"TF32: off (but in the TF32 rows). CUPY_TF32 {was}; gpubackprop cuBLAS default "
        f"math; {torch_part}; {jax_part}"
        + (
            f"; NVIDIA_TF32_OVERRIDE={t['NVIDIA_TF32_OVERRIDE']}"
            if t["NVIDIA_TF32_OVERRIDE"] is not None
            else ""
        )
    )


# --- one network ---------------------------------------------------------------------------------
@dataclass
class Libraries:
    """What this process has: CuPy always; torch and JAX when usable (else why not)."""

    cp: ModuleType
    torch: ModuleType | None = None
    torch_why: str | None = None
    jax: ModuleType | None = None
    jax_device: Any = None
    jax_why: str | None = None
    floor_handle: Any = None

    def cublas_handle(self) -> Any:
        """The GEMM floor's own CublasHandle, created on first use."""
        if self.floor_handle is None:
            from gpubackprop.backend.cublas import CublasHandle

            self.floor_handle = CublasHandle(self.cp)
        return self.floor_handle


def _free_memory(libs: Libraries) -> None:
    gc.collect()
    try:
        libs.cp.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
    if libs.torch is not None:
        try:
            libs.torch.cuda.empty_cache()
        except Exception:
            pass


#: The GPU benchmark's networks: the MLPs of :data:`GPU_NETWORKS`, then the LSTM LM.
BENCH_NETWORKS: list[Network | LSTMNetwork] = [*GPU_NETWORKS, LSTM_LM]
#: the contenders that run on the LSTM LM (no JAX twin, GEMM floor or TF32 rows for it)
LSTM_CONTENDERS = (GBP_EAGER, GBP_CAPTURED, TORCH_EAGER, TORCH_GRAPH)


def network_contenders(net: Network | LSTMNetwork, selected: Sequence[str]) -> tuple[str, ...]:
    """The keys of ``selected`` that run on ``net`` (TF32 rows on :data:`TF32_NETWORKS` only,
    :data:`LSTM_CONTENDERS` on the LSTM LM)."""
    if isinstance(net, LSTMNetwork):
        return tuple(k for k in selected if k in LSTM_CONTENDERS)
    return tuple(k for k in selected if k not in TF32_CONTENDERS or net.name in TF32_NETWORKS)


Builders = dict[str, tuple[Callable[[], Contender] | None, str | None]]
#: check_first(loss, params, tolerances): a contender's first step against the reference
Checker = Callable[[float, Any, dict[str, float]], "dict[str, Any] | None"]


def lstm_setup(net: LSTMNetwork, libs: Libraries, seed: int) -> tuple[Builders, Checker]:
    """The LSTM LM's contender builders and its one-step check (torch float64 on the CPU)."""
    x, y = make_lstm_batch(net, seed=seed)
    init = gb_named_params(build_lstm_model(net, device="cpu", dtype="float32", seed=seed))
    cp, torch = libs.cp, libs.torch
    builders: Builders = {
        GBP_EAGER: (lambda: LstmGbpEager(cp, net, init, x, y), None),
        GBP_CAPTURED: (lambda: LstmGbpCaptured(cp, net, init, x, y), None),
        TORCH_EAGER: (
            (lambda: LstmTorchEager(torch, net, init, x, y)) if torch else None,
            libs.torch_why,
        ),
        TORCH_GRAPH: (
            (lambda: LstmTorchGraph(torch, net, init, x, y)) if torch else None,
            libs.torch_why,
        ),
    }
    if torch is None:  # no reference without torch: the gpubackprop rows show check n/a
        return builders, lambda loss, params, tol: None
    reference = reference_lstm_step(net, x, y, init)
    return builders, lambda loss, params, tol: compare_lstm_step(reference, loss, params)


def run_network(
    net: Network | LSTMNetwork, libs: Libraries, args: argparse.Namespace
) -> dict[str, Any]:
    """Build, check and time every contender on one network (each failure contained)."""
    if isinstance(net, LSTMNetwork):
        builders, check_first = lstm_setup(net, libs, args.seed)
    else:
        builders, check_first = mlp_setup(net, libs, args.seed)
    return run_contenders(net, libs, args, builders, check_first)


def mlp_setup(net: Network, libs: Libraries, seed: int) -> tuple[Builders, Checker]:
    """An MLP's contender builders and its one-step check (the textbook float64 step)."""
    x, y = make_batch(net, seed=seed)
    init = gb_params(build_model(net, device="cpu", dtype="float32", seed=seed))
    cp, torch, jax = libs.cp, libs.torch, libs.jax
    builders: Builders = {
        GBP_EAGER: (lambda: GbpEager(cp, net, init, x, y), None),
        GBP_CAPTURED: (lambda: GbpCaptured(cp, net, init, x, y), None),
        TORCH_EAGER: (
            (lambda: TorchEager(torch, net, init, x, y)) if torch else None,
            libs.torch_why,
        ),
        TORCH_GRAPH: (
            (lambda: TorchGraph(torch, net, init, x, y)) if torch else None,
            libs.torch_why,
        ),
        JAX_JIT: (
            (lambda: JaxJit(jax, libs.jax_device, net, init, x, y)) if jax else None,
            libs.jax_why,
        ),
        GEMM_FLOOR: (lambda: GemmFloor(cp, libs.cublas_handle(), net, init, x, seed), None),
        GBP_TF32: (lambda: GbpTf32Captured(cp, net, init, x, y), None),
        TORCH_TF32_EAGER: (
            (lambda: TorchTf32Eager(torch, net, init, x, y)) if torch else None,
            libs.torch_why,
        ),
        TORCH_TF32_GRAPH: (
            (lambda: TorchTf32Graph(torch, net, init, x, y)) if torch else None,
            libs.torch_why,
        ),
    }
    reference = reference_step(net, x, y, init)
    return builders, lambda loss, params, tol: compare_step(reference, loss, params, **tol)


def run_contenders(
    net: Network | LSTMNetwork,
    libs: Libraries,
    args: argparse.Namespace,
    builders: Builders,
    check_first: Checker,
) -> dict[str, Any]:
    """:func:`run_network` once the contenders can be built: ``check_first(loss, params)``
    checks a contender's first step (TF32 rows with :data:`TF32_TOL`)."""
    entries: dict[str, dict[str, Any]] = {}
    live: dict[str, Contender] = {}
    checks: dict[str, dict[str, Any] | None] = {}

    def fail(key: str, exc: BaseException, stage: str) -> None:
        print(f"  {LABELS[key]}: {stage} failed: {one_line(exc)}", flush=True)
        entries[key] = contender_entry(
            key, "error", error=f"{stage}: {one_line(exc)}", detail=_traceback(exc)
        )
        c = live.pop(key, None)
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    for key in network_contenders(net, ALL_CONTENDERS):
        if key not in args.contenders:
            entries[key] = contender_entry(key, "missing", error="not selected (--contenders)")
            continue
        build, why = builders[key]
        if build is None:
            entries[key] = contender_entry(key, "missing", error=why)
            continue
        try:
            live[key] = build()
        except Skipped as exc:
            entries[key] = contender_entry(key, "missing", error=f"skipped: {exc}")
            print(f"  {LABELS[key]}: skipped: {exc}", flush=True)
            continue
        except Exception as exc:
            fail(key, exc, "setup")
            continue
        try:
            if key == GEMM_FLOOR:
                checks[key] = live[key].check()  # type: ignore[attr-defined]
            else:
                loss, params = live[key].first_step()
                checks[key] = check_first(loss, params, TF32_TOL if key in TF32_CONTENDERS else {})
        except Exception as exc:
            fail(key, exc, "first step")
    samples, errors = measure(live, args.warmup, args.iters, args.reps)
    for key, c in live.items():
        if key in errors:
            exc = errors[key]
            entries[key] = contender_entry(
                key,
                "error",
                error=f"timing: {one_line(exc)}",
                detail=_traceback(exc),
                check=checks.get(key),
                mode=c.mode,
            )
            print(f"  {LABELS[key]}: timing failed: {one_line(exc)}", flush=True)
            continue
        note = c.note
        if isinstance(c, GbpCaptured):
            note = "; ".join(n for n in (note, c.captures_note()) if n)
        entries[key] = contender_entry(
            key,
            "ok",
            timing=summarize(samples[key]),
            check=checks.get(key),
            clock=c.clock,
            mode=c.mode,
            note=note,
        )
        e = entries[key]
        check = (e["check"] or {}).get("summary", "")
        print(f"  {LABELS[key]:<27} {format_ms(e):>16} ms  {check}", flush=True)
    for c in live.values():
        try:
            c.close()
        except Exception:
            pass
    live.clear()
    _free_memory(libs)
    return network_result(net, entries)


# --- main -------------------------------------------------------------------------------------
def build_parser(prog: str | None = PROG) -> argparse.ArgumentParser:
    """The options: ``bench.common``'s shared ones, then the GPU benchmark's."""
    parser = common.bench_parser(
        prog,
        (__doc__ or "").splitlines()[0],
        BENCH_NETWORKS,
        json_help="results file (default bench/results/gpu_step_<device>_<date>.json)",
        quick_help=(
            "short repetitions for a session script: --warmup {warmup} --iters {iters} "
            "--reps {reps} unless given; every contender and network kept".format(**QUICK_REPS)
        ),
    )
    parser.add_argument(
        "--contenders",
        default="",
        help=f"comma-separated subset of {','.join(ALL_CONTENDERS)} (default: all)",
    )
    for name, what in (
        ("warmup", "warm-up steps per contender"),
        ("iters", "steps per timed block"),
        ("reps", "timed blocks per contender"),
    ):
        parser.add_argument(
            f"--{name}",
            type=int,
            default=None,
            help=f"{what} (default {FULL_REPS[name]}, --quick {QUICK_REPS[name]})",
        )
    parser.add_argument(
        "--png", type=Path, default=None, help="bar chart (default: the JSON path with .png)"
    )
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.resolve_quick(args, FULL_REPS, QUICK_REPS)
    if args.warmup < 0 or args.iters < 1 or args.reps < 1:
        parser.error("--warmup >= 0, --iters >= 1 and --reps >= 1 are required")
    try:
        args.network_list = get_networks(args.networks, BENCH_NETWORKS)
    except ValueError as exc:
        parser.error(str(exc))
    wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in ALL_CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {unknown}; known: {', '.join(ALL_CONTENDERS)}")
    args.contenders = tuple(wanted or ALL_CONTENDERS)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark. 0 on success or without a GPU; 1 if a check or gbp contender failed."""
    args = parse_args(argv)
    cupy_tf32_before = unset_cupy_tf32()
    reason = no_gpu_reason()
    if reason is not None:
        print(f"gpu_step: no GPU benchmark on this machine: {reason}. Nothing was timed.")
        return 0
    cp = cupy_module()
    if cupy_tf32_before is not None and cupy_tf32_before != "0":
        print(f"warning: CUPY_TF32={cupy_tf32_before!r} was set; unset now (cupy.matmul only)")
    # gpubackprop's cuBLAS handle first (it opens the libcublas CuPy loaded), then the peers
    try:
        gb.get_backend("cuda").ops.blas  # noqa: B018
    except Exception as exc:  # the gbp contenders will report it
        print(f"warning: gpubackprop's cuBLAS handle: {one_line(exc)}")
    libs = Libraries(cp)
    if any(k in args.contenders for k in (TORCH_EAGER, TORCH_GRAPH, *TF32_PEERS)):
        libs.torch, libs.torch_why = import_torch()
    else:
        libs.torch_why = "not selected"
    if JAX_JIT in args.contenders:
        libs.jax, libs.jax_device, libs.jax_why = import_jax()
    else:
        libs.jax_why = "not selected"
    env = common.host_environment()
    env.update(gpu_environment(cp, libs.torch, libs.jax, cupy_tf32_before))
    print_environment(env)
    for why in (libs.torch_why, libs.jax_why):
        if why and why != "not selected":
            print(f"note: {why}")
    print()
    results = []
    for net in args.network_list:
        gflop = net.flops_per_step / 1e9
        print(f"{net.name}: {net.describe()}, {gflop:.3g} GFLOP/step", flush=True)
        start = time.perf_counter()
        try:
            results.append(run_network(net, libs, args))
        except Exception as exc:  # outside any one contender: the network is reported
            print(f"  {net.name} failed: {one_line(exc)}", flush=True)
            failed = {
                k: contender_entry(
                    k, "error", error=f"network: {one_line(exc)}", detail=_traceback(exc)
                )
                for k in network_contenders(net, args.contenders)
            }
            results.append(network_result(net, failed))
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    print()
    print(report(results))
    payload = {
        "schema": SCHEMA,
        **env,
        "settings": {
            "lr": LR,
            "dtype": "float32",
            "quick": args.quick,
            "warmup": args.warmup,
            "iters": args.iters,
            "reps": args.reps,
            "seed": args.seed,
            "contenders": list(args.contenders),
            "check_sigmas": CHECK_SIGMAS,
            "flip_sigmas": FLIP_SIGMAS,
            "gemm_rtol": GEMM_RTOL,
            "tf32_loss_rtol": TF32_LOSS_RTOL,
            "tf32_update_rtol": TF32_UPDATE_RTOL,
        },
        "results": results,
    }
    day = datetime.date.fromisoformat(env["date"][:10])
    json_path = args.json or default_json_path(env["device"]["name"], day)
    try:
        write_json(json_path, payload)
        print(f"\nwrote {json_path}")
    except Exception as exc:
        print(f"\ncould not write {json_path}: {one_line(exc)}")
        return 1
    if not args.no_plot:
        png_path = args.png or json_path.with_suffix(".png")
        try:
            from bench.plot import plot_results

            plot_results(json_path, png_path)
            print(f"wrote {png_path}")
        except Exception as exc:
            print(f"no PNG: {one_line(exc)} (later: python bench/plot.py {json_path})")
    return 1 if run_failed(results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
