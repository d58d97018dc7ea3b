"""Progress bars for training loops, drawn by ``tqdm.auto``.

In a Jupyter notebook the bar is a widget; on a terminal a line redrawn in place
(at most ten times a second); where the output is neither (a log file, CI) one
line is printed per finished bar, so logs stay readable.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import tqdm.auto
import tqdm.autonotebook
import tqdm.std

#: whether tqdm.auto chose its notebook widget (in Jupyter, with ipywidgets)
_IN_NOTEBOOK = tqdm.autonotebook.tqdm is not tqdm.std.tqdm


class _Tqdm(tqdm.auto.tqdm):
    """tqdm.auto's bar with two more fields for ``bar_format``: ``status`` (set before
    a redraw) and ``ms_per_step``."""

    status = ""

    @property
    def format_dict(self) -> dict[str, Any]:
        fields = super().format_dict
        ms_per_step = 1e3 * fields["elapsed"] / max(fields["n"], 1)
        return {**fields, "status": self.status, "ms_per_step": ms_per_step}


class ProgressBar:
    """``epoch 1/5 [========          ] 120/235  loss 0.3124  4.1 ms/step  0.5s`` for one
    epoch of ``total`` steps."""

    width = 28
    #: least seconds between two redraws
    interval = 0.1

    def __init__(self, total: int, prefix: str = "", file: TextIO | None = None) -> None:
        self.total = max(int(total), 1)
        self.file = file if file is not None else sys.stdout
        widget = _IN_NOTEBOOK and file is None
        self.interactive = widget or bool(getattr(self.file, "isatty", lambda: False)())
        bar = "{bar}" if widget else f"[{{bar:{self.width}}}]"
        self._bar = _Tqdm(
            total=self.total, desc=prefix, file=self.file, ascii=" =",
            bar_format=f"{{desc}}{bar} {{n_fmt:>{len(str(self.total))}}}/{{total_fmt}}  "
            "{status}  {ms_per_step:.1f} ms/step  {elapsed_s:.1f}s",
            mininterval=self.interval, miniters=1, leave=True,
            delay=0 if self.interactive else math.inf,  # a log: only close() writes
        )

    def update(self, count: int, status: str | None = None) -> None:
        """Advance to ``count`` steps; ``status`` is shown after the count, e.g. the loss.

        Compute ``status`` only when :meth:`due`: on the GPU reading a loss syncs.
        """
        self._bar.status = status or ""
        self._bar.update(count - self._bar.n)  # tqdm redraws when `interval` has passed

    def due(self) -> bool:
        """True when :meth:`update` would redraw (so callers fetch a status only then)."""
        # tqdm's clock is time.time
        return self.interactive and time.time() - self._bar.last_print_t >= self.interval

    def close(self, status: str) -> None:
        """Finish the bar with a final status line."""
        self._bar.status = status
        self._bar.n = self.total
        if not self.interactive:
            self.file.write(f"{self._bar}\n")
            self.file.flush()
        self._bar.close()  # on a terminal or in a notebook: draws the final line


__all__ = ["ProgressBar"]
