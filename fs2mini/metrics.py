"""What a run reports: metrics.jsonl lines and the progress display.

`metrics.jsonl` gets one JSON object per line (`step`, `split`, `loss`, ...), flushed immediately so
a crashed run keeps everything up to its last step and tools can tail the file. The display is a
rich progress bar on a terminal and plain periodic lines elsewhere (CI logs, `nohup`), showing the
same fields: step, loss, lr, tokens/s and the estimated time left.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class MetricsLog:
    """Append-only JSON-lines file.

    A resumed run first drops the lines logged after its checkpoint's step (the steps it is about
    to redo), so the file never holds two records for one step and split.
    """

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= resume_step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, path)
        self._handle = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")  # a line cut short by a crash: drop it


class ProgressDisplay:
    """Live bar or periodic lines; `update` every step, `message` for validation results."""

    def __init__(self, total_steps: int, start_step: int, mode: Literal["auto", "bar", "lines", "off"], line_every: int) -> None:
        self.console = Console(file=sys.stderr, quiet=mode == "off")
        self.use_bar = mode == "bar" or (mode == "auto" and self.console.is_terminal)
        self.total_steps = total_steps
        self.start_step = start_step
        self.line_every = max(1, line_every)
        self.started = time.perf_counter()
        self._bar: Progress | None = None
        if self.use_bar:
            self._bar = Progress(
                TextColumn("step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:,.0f} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, loss=float("nan"), lr=0.0, tps=0.0)
            self._bar.start()

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, lr=lr, tps=tokens_per_s)
        elif not self.console.quiet and (step % self.line_every == 0 or step == self.total_steps):
            done = step - self.start_step
            elapsed = time.perf_counter() - self.started
            eta = elapsed / done * (self.total_steps - step) if done else float("nan")
            self.console.print(
                f"step {step}/{self.total_steps}  loss {loss:.3f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  "
                f"elapsed {elapsed:.0f}s  ETA {eta:.0f}s",
                highlight=False,
            )

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
