"""The command line: ``python -m gpubackprop {demo,info,charrnn,bench}`` (also ``gpubackprop ...``).

``demo``, ``info`` and ``charrnn`` run :mod:`gpubackprop.demo`, :mod:`gpubackprop.info`
and :mod:`gpubackprop.charrnn`; ``bench`` runs the source checkout's ``bench/gpu_step.py``
(``--cpu``: ``bench/cpu_step.py``) with the remaining arguments, and ``bench --help``
prints one help for both.
"""

from __future__ import annotations

import argparse
import contextlib
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .cli_types import add_training_options, int_at_least, run_command
from .version import __version__

#: The source checkout's benchmark folder (absent in an installed wheel).
BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
#: kind -> the benchmark's script, its usage name and its title in ``gpubackprop bench --help``
BENCHMARKS = {
    "gpu": ("gpu_step.py", "gpubackprop bench", "GPU benchmark (the default; bench/gpu_step.py):"),
    "cpu": (
        "cpu_step.py", "gpubackprop bench --cpu", "CPU benchmark (--cpu first; bench/cpu_step.py):"
    ),
}
HELP_FLAGS = ("-h", "--help")


def build_parser() -> argparse.ArgumentParser:
    """The ``gpubackprop`` argument parser with its ``demo``, ``info`` and ``bench`` commands."""
    from . import demo

    parser = argparse.ArgumentParser(
        prog="gpubackprop",
        description="gpubackprop: explicit backpropagation on NumPy (CPU) and CuPy (GPU).",
    )
    parser.add_argument("--version", action="version", version=f"gpubackprop {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo_parser = commands.add_parser(
        "demo",
        help="train an MLP on scikit-learn's handwritten digits and plot the curves",
        description=(
            "Train a 64-128-64-10 ReLU MLP (Adam, cosine decay) on scikit-learn's bundled "
            "8x8 handwritten digits (no download), report per-epoch loss and accuracy and "
            "the held-out test accuracy, and save the learning curves as a PNG. "
            "Needs the demo extra: pip install 'gpubackprop[demo]'."
        ),
    )
    add_training_options(
        demo_parser,
        lr=demo.DEFAULT_LR,
        lr_help="Adam's initial learning rate",
        seed_help="seeds the test split, the weights and the shuffling",
        quiet_help="no progress bars: only the device and the results",
    )
    demo_parser.add_argument("--epochs", type=int_at_least(1), default=demo.DEFAULT_EPOCHS,
                             help="training epochs (default: %(default)s)")
    demo_parser.add_argument("--batch-size", type=int_at_least(1),
                             default=demo.DEFAULT_BATCH_SIZE,
                             help="rows per step (default: %(default)s)")
    demo_parser.add_argument("--out", type=Path, default=Path(demo.DEFAULT_OUT),
                             help="where to save the PNG (default: %(default)s)")

    commands.add_parser(
        "info",
        help="print versions, CUDA, the devices seen and what 'auto' picks",
        description=(
            "Print gpubackprop, Python, NumPy, SciPy and CuPy versions (or why CuPy does "
            "not import), the CUDA runtime, driver and GPUs, the devices gpubackprop can "
            "use, and which one device='auto' picks and why."
        ),
    )

    # no description: their --help goes to the charrnn parser and the benchmark scripts
    commands.add_parser(
        "charrnn",
        help="train a character-level RNN by backprop through time and sample from it",
        add_help=False,
    )
    commands.add_parser(
        "bench",
        help="benchmark one training step on the GPU (--cpu: on the CPU) against PyTorch",
        add_help=False,
    )
    return parser


@contextlib.contextmanager
def _as_script(script: Path, argv: list[str]) -> Iterator[dict[str, Any]]:
    """The namespace of ``script`` run as ``python <script> <argv>`` would import it,
    with ``sys.argv`` and ``sys.path[0]`` set so until the block ends."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.parent))
    try:
        yield runpy.run_path(str(script), run_name="gpubackprop_bench")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def bench_help() -> str:
    """One help for both benchmarks: the GPU one's options, then the CPU one's (``--cpu``)."""
    parts = []
    for script, prog, title in BENCHMARKS.values():
        with _as_script(BENCH_DIR / script, []) as namespace:
            parser = namespace["build_parser"](prog)
        parts.append(f"{title}\n{parser.format_help()}")
    return "\n".join(parts)


def run_bench(argv: list[str]) -> int:
    """Run ``BENCH_DIR/gpu_step.py`` (``--cpu`` first: ``cpu_step.py``) ``main(argv)``.

    ``-h`` / ``--help`` anywhere prints :func:`bench_help` instead. Returns the
    script's exit code (None counts as 0).
    """
    kind = "gpu"
    if argv[:1] == ["--cpu"]:
        kind, argv = "cpu", argv[1:]
    script = BENCH_DIR / BENCHMARKS[kind][0]
    if not BENCH_DIR.is_dir():
        print(
            f"gpubackprop bench: no {BENCH_DIR}: the benchmarks live in the source "
            "checkout's bench/ folder and are not installed with the package; run this "
            "from a git clone of gpubackprop.",
            file=sys.stderr,
        )
        return 1
    if not script.is_file():
        print(f"gpubackprop bench: {script} is not in this checkout", file=sys.stderr)
        return 1
    if any(flag in argv for flag in HELP_FLAGS):
        print(bench_help())
        return 0
    with _as_script(script, argv) as namespace:
        result = namespace["main"](argv)
    return 0 if result is None else int(result)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` by default), run the command, return the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        return run_bench(extra)
    if args.command == "charrnn":
        from .charrnn import main as charrnn_main

        return charrnn_main(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "info":
        from .info import print_info

        return run_command("info", print_info)
    from .demo import run_demo

    options = {k: v for k, v in vars(args).items() if k != "command"}
    return run_command("demo", run_demo, **options)


if __name__ == "__main__":
    sys.exit(main())
