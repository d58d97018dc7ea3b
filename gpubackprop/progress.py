"""A dependency-free progress bar for training loops.

On a terminal the bar redraws in place (at most ten times a second); where the
output is not a terminal (a log file, CI) it prints one line per finished bar,
so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``[=====>    ] 120/235  loss 0.3124  4.1 ms/step`` for one epoch of ``total`` steps."""

    width = 28

    def __init__(self, total: int, prefix: str = "", file: TextIO | None = None) -> None:
        self.total = max(int(total), 1)
        self.prefix = prefix
        self.file = file if file is not None else sys.stdout
        self.interactive = bool(getattr(self.file, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self.count = 0

    def _line(self, status: str) -> str:
        done = int(self.width * self.count / self.total)
        bar = "=" * done + (">" if done < self.width else "") + " " * (self.width - done - 1)
        elapsed = time.perf_counter() - self.start
        per_step = 1e3 * elapsed / max(self.count, 1)
        digits = len(str(self.total))
        return (
            f"{self.prefix}[{bar[: self.width]}] {self.count:>{digits}}/{self.total}  "
            f"{status}  {per_step:.1f} ms/step  {elapsed:.1f}s"
        )

    def update(self, count: int, status: str | None = None) -> None:
        """Advance to ``count`` steps; ``status`` is a callable's result, e.g. the loss.

        Pass ``status`` only when it is cheap: on the GPU reading a loss syncs.
        """
        self.count = count
        if not self.interactive:
            return
        now = time.perf_counter()
        if now - self._last_draw >= 0.1 or count >= self.total:
            self._last_draw = now
            self.file.write("\r" + self._line(status or ""))
            self.file.flush()

    def due(self) -> bool:
        """True when a redraw would show (so callers fetch a status only then)."""
        return self.interactive and time.perf_counter() - self._last_draw >= 0.1

    def close(self, status: str) -> None:
        """Finish the bar with a final status line."""
        self.count = self.total
        line = self._line(status)
        self.file.write(("\r" + line if self.interactive else line) + "\n")
        self.file.flush()


__all__ = ["ProgressBar"]
