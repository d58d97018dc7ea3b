"""The command line (``python -m gpubackprop demo | info | bench``) and lazy imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import gpubackprop as gb
from gpubackprop import __main__ as cli
from gpubackprop import info
from gpubackprop.demo import run_demo

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


# --- info -------------------------------------------------------------------------------
def test_info_prints_versions_and_the_auto_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("gpubackprop:", "Python:", "NumPy:", "SciPy:", "CuPy:", "devices:"):
        assert label in out
    assert gb.__version__ in out
    auto = gb.get_backend("auto")
    assert f"auto device: {auto.device} ({auto.reason})" in out


def test_info_cuda_rows_format_versions_and_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> int:
        raise RuntimeError("no CUDA driver")

    runtime = SimpleNamespace(
        runtimeGetVersion=lambda: 12040,
        driverGetVersion=no_driver,
        getDeviceProperties=lambda i: {"name": b"Fake GPU", "totalGlobalMem": 80 * 2**30},
    )
    monkeypatch.setattr(info.arrays, "gpu_count", lambda: 1)
    rows = dict(info._cuda_rows(SimpleNamespace(cuda=SimpleNamespace(runtime=runtime))))
    assert rows["CUDA runtime"] == "12.4"
    assert rows["CUDA driver"] == "unavailable (RuntimeError: no CUDA driver)"
    assert rows["GPU cuda:0"] == "Fake GPU (80.0 GiB)"


# --- demo -------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_reaches_97_percent_on_cpu_and_saves_the_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_demo(device="cpu", seed=0, out=tmp_path / "curves.png")
    assert result["device"] == "cpu"
    assert result["test_accuracy"] >= 0.97
    history = result["history"]
    assert len(history["loss"]) == len(history["val_accuracy"]) == 30
    assert history["val_accuracy"][-1] == pytest.approx(result["test_accuracy"])
    assert result["png"] == (tmp_path / "curves.png").resolve()
    assert result["png"].read_bytes().startswith(PNG_MAGIC)
    out = capsys.readouterr().out
    assert "epoch 30/30" in out and "val_accuracy" in out
    assert f"test accuracy: {result['test_accuracy']:.4f}" in out
    assert str(result["png"]) in out


def test_demo_command_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "sub" / "out.png"
    argv = ["demo", "--device", "cpu", "--epochs", "2", "--batch-size", "64", "--quiet"]
    assert cli.main([*argv, "--lr", "0.01", "--seed", "3", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert out.splitlines()[0] == f"device: cpu ({gb.get_backend('cpu').reason})"
    assert "epoch 1/2" not in out  # quiet: no progress bars
    assert "test accuracy: " in out and f"learning curves saved to {png.resolve()}" in out


@pytest.mark.parametrize("device", ["cuda:99", "tpu"])
def test_demo_unavailable_device_is_a_clean_error(
    device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["demo", "--device", device, "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpubackprop demo: error: ") and repr(device) in err
    assert not (tmp_path / "x.png").exists()


def test_demo_without_the_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # find_spec then says "missing"
    assert cli.main(["demo", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install 'gpubackprop[demo]'" in err


# --- argument errors and help -------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["demo", "--epochs", "0"],
        ["demo", "--epochs", "ten"],
        ["demo", "--batch-size", "-1"],
        ["demo", "--lr", "0"],
        ["demo", "--lr", "nan"],
        ["demo", "--seed", "-1"],
        ["demo", "--bogus"],
        ["info", "extra"],
    ],
)
def test_bad_arguments_exit_2_with_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage: gpubackprop" in capsys.readouterr().err


def test_help_via_python_dash_m() -> None:
    proc = _run("-m", "gpubackprop", "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "info", "bench"):
        assert command in proc.stdout


def test_demo_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--device", "--epochs", "--batch-size", "--lr", "--seed", "--out", "--quiet"):
        assert option in out


# --- bench ----------------------------------------------------------------------------------
def test_bench_without_the_folder_explains_where_benchmarks_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "BENCH_DIR", tmp_path / "bench")
    assert cli.main(["bench"]) == 1
    assert "source checkout's bench/ folder" in capsys.readouterr().err


def test_bench_runs_the_script_main_with_the_remaining_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "helper_for_test_cli.py").write_text("ANSWER = 7\n")
    (bench / "cpu_step.py").write_text(
        textwrap.dedent(
            """
            import sys

            from helper_for_test_cli import ANSWER  # a sibling, as `python bench/x.py` allows

            def main(argv):
                print("argv", argv, "prog", sys.argv[0], "answer", ANSWER)
                return 3
            """
        )
    )
    monkeypatch.setattr(cli, "BENCH_DIR", bench)
    monkeypatch.delitem(sys.modules, "helper_for_test_cli", raising=False)
    argv_before, path_before = sys.argv[:], sys.path[:]
    assert cli.main(["bench", "--cpu", "--networks", "small", "--quick", "x"]) == 3
    out = capsys.readouterr().out
    expected = f"argv ['--networks', 'small', '--quick', 'x'] prog {bench / 'cpu_step.py'} answer 7"
    assert expected in out
    assert sys.argv == argv_before and sys.path == path_before


@pytest.mark.parametrize(
    "argv", [["bench", "--help"], ["bench", "-h"], ["bench", "--cpu", "--help"]]
)
def test_bench_help_is_one_help_for_both_benchmarks(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv_before, path_before = sys.argv[:], sys.path[:]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "usage: gpubackprop bench [-h]" in out
    assert "usage: gpubackprop bench --cpu [-h]" in out
    assert "gpu_step.py [" not in out and "usage: gpu_step.py" not in out
    for option in ("--quick", "--contenders", "--iters", "--png"):  # the GPU benchmark's
        assert option in out
    for option in ("--repeat-seconds", "--settle-ms", "--threads"):  # the CPU benchmark's
        assert option in out
    assert "gbp_tf32_capture" in "".join(out.split())  # the TF32 rows (help wraps lines)
    assert sys.argv == argv_before and sys.path == path_before


def test_bench_help_via_python_dash_m() -> None:
    proc = _run("-m", "gpubackprop", "bench", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("GPU benchmark") and "--cpu" in proc.stdout
    assert "usage: gpu_step.py" not in proc.stdout


# --- lazy imports ---------------------------------------------------------------------------
def test_import_pulls_in_neither_cupy_nor_the_demo_extra() -> None:
    code = (
        "import sys, gpubackprop, gpubackprop.__main__, gpubackprop.demo, gpubackprop.info\n"
        "heavy = [m for m in ('cupy', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = _run("-c", code)
    assert proc.returncode == 0, proc.stderr


def test_bench_defaults_to_the_gpu_benchmark_which_says_when_there_is_no_gpu(capsys) -> None:
    pytest.importorskip("matplotlib")
    from gpubackprop.backend import has_gpu

    if has_gpu():
        pytest.skip("a GPU is present: the real benchmark would run")
    assert cli.main(["bench"]) == 0
    assert "GPU" in capsys.readouterr().out


def test_charrnn_subcommand_trains_and_samples(tmp_path, capsys) -> None:
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 20)
    code = cli.main(
        [
            "charrnn",
            "--text",
            str(text),
            "--steps",
            "30",
            "--hidden",
            "16",
            "--device",
            "cpu",
            "--batch",
            "4",
            "--seq-len",
            "8",
            "--quiet",
        ]
    )
    assert code == 0
    assert "loss" in capsys.readouterr().out
