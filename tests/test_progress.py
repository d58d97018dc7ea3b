"""ProgressBar (on tqdm): one line per bar in a log, in-place redraws on a terminal, and
a status (on the GPU: a device read) fetched only for a redraw."""

from __future__ import annotations

import io
import time

from gpubackprop.progress import ProgressBar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_bar_and_no_status_reads() -> None:
    log = io.StringIO()
    bar = ProgressBar(235, "epoch 1/5 ", log)
    assert not any(bar.due() for _ in range(235))
    bar.update(235, "never shown")
    bar.close("loss 0.3124")
    line = log.getvalue()
    assert "\r" not in line and line.count("\n") == 1 and "never shown" not in line
    assert line.startswith("epoch 1/5 [" + "=" * 28 + "] 235/235  loss 0.3124  ")
    assert line.rstrip().endswith("s") and " ms/step  " in line


def test_a_terminal_reads_the_status_only_to_redraw_it() -> None:
    terminal = _Terminal()
    bar = ProgressBar(40, "steps ", terminal)
    reads = []
    for step in range(40):
        time.sleep(0.01)
        if bar.due():
            reads.append(f"loss {step}")  # what a caller reads from the device
            bar.update(step + 1, reads[-1])
    bar.close("loss final")
    frames = terminal.getvalue().split("\r")[1:]
    # a first empty frame, one frame per read, the final frame
    assert len(frames) == len(reads) + 2 and len(reads) >= 2
    assert all(read in frame for read, frame in zip(reads, frames[1:-1], strict=True))
    assert frames[-1].startswith("steps [" + "=" * 28 + "] 40/40  loss final")
    assert frames[-1].endswith("\n")
