"""What a run reports: metrics.jsonl lines, the progress display, tokens/s (`TokenRate`) and training time (`RunClock`).

`metrics.jsonl` gets one JSON object per line (`step`, `split`, `loss`, ...), flushed immediately so
a crashed run keeps everything up to its last step and tools can tail the file; a failed write (disk
full) removes its partial line and stops the run with one sentence.

Progress output is best effort (`BestEffortStream`): when the terminal closes or the reader of a
pipe goes away (`... 2>&1 | head`), training goes on without it, metrics and checkpoints included. The display is a
rich progress bar on a terminal and plain periodic lines elsewhere (CI logs, `nohup`), showing the
same fields: step, loss, lr, tokens/s and the estimated time left.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fs2mini.checkpoint import TrainState, write_atomically
from fs2mini.errors import UserError


class BestEffortStream:
    """A text stream whose writes never raise: once the reader is gone (EPIPE, or EIO after a hangup)
    the file descriptor is pointed at /dev/null, so later writes (and the interpreter's own flush at
    exit) are dropped quietly."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self.stream.write(text)
            except (OSError, ValueError):
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self._drop()

    def _drop(self) -> None:
        self.broken = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError, AttributeError):  # no descriptor (a test double): nothing to redirect
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def best_effort(stream: Any) -> BestEffortStream:
    return stream if isinstance(stream, BestEffortStream) else BestEffortStream(stream)


class MetricsLog:
    """Append-only JSON-lines file.

    A resumed run first drops the lines logged after its checkpoint's step (the steps it is about
    to redo; a run at step 0 validates step 0 again, so it drops them all), so the file never holds
    two records for one step and split.
    """

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = path
        if path.exists():
            lines = path.read_bytes().decode("utf-8", "replace").splitlines() if resume_step > 0 else []
            kept = [line for line in lines if _step_of(line) <= resume_step]
            text = "".join(line + "\n" for line in kept).encode("utf-8")
            write_atomically(path, lambda handle: handle.write(text))
        try:
            self._handle = open(path, "a", encoding="utf-8")
        except OSError as err:
            raise UserError(f"cannot write {path}: {err.strerror}") from None

    def write(self, record: dict[str, Any]) -> None:
        """Append one line; on a failed write, cut the file back to its last complete line and stop."""
        end = self._handle.tell()
        try:
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
        except OSError as err:
            try:
                self._handle.close()  # flushes what the buffer still holds of the line, if it can
            except OSError:
                pass
            os.truncate(self.path, end)
            self._handle = open(self.path, "a", encoding="utf-8")
            raise UserError(f"cannot write {self.path}: {err.strerror or err}; it keeps every line up to step "
                            f"{_step_of(self.path.read_text(encoding='utf-8').splitlines()[-1]) if end else 0}, "
                            "and the checkpoints are intact") from None

    def close(self) -> None:
        self._handle.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")  # a line cut short by a crash: drop it


class ProgressDisplay:
    """Live bar or periodic lines; `update` every step, `message` for validation results.

    With a time budget (`--trainer.max-time`) the run ends when the budget does, not at `total_steps`
    (the default run sets both), so the bar fills with time and the ETA is the sooner of the two."""

    def __init__(self, total_steps: int, start_step: int, mode: Literal["auto", "bar", "lines", "off"], line_every: int,
                 budget_s: float | None = None, elapsed_s: float = 0.0) -> None:
        self.console = Console(file=best_effort(sys.stderr), quiet=mode == "off")
        self.use_bar = mode == "bar" or (mode == "auto" and self.console.is_terminal)
        self.total_steps = total_steps
        self.start_step = start_step
        self.line_every = max(1, line_every)
        self.budget_s = budget_s
        self.started = time.perf_counter()
        self._bar: Progress | None = None
        if self.use_bar:
            progress = [MofNCompleteColumn()] if budget_s is None else [TextColumn("{task.fields[step]}")]
            self._bar = Progress(
                TextColumn("step"),
                *progress,
                BarColumn(),
                TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:,.0f} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            total, completed = (total_steps, start_step) if budget_s is None else (budget_s, elapsed_s)
            self._task = self._bar.add_task("train", total=total, completed=completed, loss=float("nan"), lr=0.0,
                                            tps=0.0, step=start_step)
            self._bar.start()

    def seconds_left(self, step: int, elapsed_s: float) -> float:
        """Estimated seconds to the end of the run: by steps, or by the time budget if that ends sooner.

        `elapsed_s` is the run's training time as `RunClock` counts it (resumes included)."""
        done = step - self.start_step
        by_steps = (time.perf_counter() - self.started) / done * (self.total_steps - step) if done else float("nan")
        if self.budget_s is None:
            return by_steps
        by_time = max(0.0, self.budget_s - elapsed_s)
        return min(by_steps, by_time) if done else by_time

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, elapsed_s: float) -> None:
        if self._bar is not None:
            completed = step if self.budget_s is None else elapsed_s
            self._bar.update(self._task, completed=completed, loss=loss, lr=lr, tps=tokens_per_s, step=step)
        elif not self.console.quiet and (step % self.line_every == 0 or step == self.total_steps):
            elapsed = time.perf_counter() - self.started
            of_total = f"/{self.total_steps}" if self.budget_s is None else ""
            self.console.print(
                f"step {step}{of_total}  loss {loss:.3f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  "
                f"elapsed {elapsed:.0f}s  ETA {self.seconds_left(step, elapsed_s):.0f}s",
                highlight=False,
            )

    def message(self, text: str) -> None:
        # soft_wrap: a long line stays one line in a log file (rich would break it at 80 columns).
        self.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class TokenRate:
    """Target tokens per second since it was created, and the loss per target token over the same updates.

    The logged train loss is that interval's mean, weighted by tokens (one update's loss alone is noisy:
    its batch may be all short or all long sentences); updates whose loss was not finite are left out."""

    def __init__(self) -> None:
        self.tokens = 0
        self.loss_tokens = 0
        self.loss_sum = 0.0
        self.started = time.perf_counter()

    def add(self, tokens: int, loss: float = math.nan) -> float:
        self.tokens += tokens
        if math.isfinite(loss):
            self.loss_tokens += tokens
            self.loss_sum += loss * tokens
        elapsed = time.perf_counter() - self.started
        return self.tokens / elapsed if elapsed > 0 else 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.loss_tokens if self.loss_tokens else math.nan


class RunClock:
    """Training time of the run, earlier runs of it (before a resume) included, kept in `state.elapsed_s`."""

    def __init__(self, state: TrainState) -> None:
        self.state = state
        self.started = time.perf_counter() - state.elapsed_s

    def tick(self) -> None:
        self.state.elapsed_s = time.perf_counter() - self.started
