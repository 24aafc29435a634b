"""The run directory: the names of its files, whose it is (a marker file), who is using it (a lock), and leaving it
as it was on failure.

Every file and folder name of a run directory is a constant here (`CONFIG_FILE`, `CHECKPOINT_DIR`, ...);
other modules import them instead of spelling the names (tests/test_layering.py checks this).

fs2mini writes `config.json`, `tokenizer.model`, `metrics.jsonl`, `checkpoints/` and `eval/` into a
run directory. Those are common names, so it only writes into a directory that it created or that
carries its marker (`.fs2mini-run`); a user's own non-empty directory is refused with the names of
the files it would have touched. A run directory written by an older fs2mini (no marker, but a
`config.json` of a `TrainConfig` beside checkpoints or metrics) is adopted.

One process at a time: the trainer holds an exclusive `flock` on `.fs2mini-lock` for the whole run,
so a second training on the same `--output-dir` stops at once with the holder's PID instead of
interleaving checkpoints and metrics. The kernel drops the lock when its holder dies, however it
dies; the PID left in the file then only serves to say that a stale lock was taken over.

A run that fails before writing anything (a refused resume, a component that does not build)
leaves the directory as it found it: what `RunDirectory` created is removed again.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from fs2mini.errors import UserError

if TYPE_CHECKING:
    from fs2mini.config import TrainConfig
    from fs2mini.tokenizer import Tokenizer

# Every name fs2mini gives a file or folder of a run directory; other modules import these.
CONFIG_FILE = "config.json"
"""The run's `TrainConfig`, written once every component is built."""
TOKENIZER_FILE = "tokenizer.model"
"""The run's sentencepiece model (trained for the run or copied from an imported model)."""
LAYOUT_FILE = "tokenizer_layout.json"
"""Beside tokenizer.model when the model's ids are not fs2mini's own (an imported NLLB/M2M100)."""
CHECKPOINT_DIR = "checkpoints"
"""The folder of the run's checkpoints (`step_N.pt`, `best.pt`)."""
BEST_CHECKPOINT = "best.pt"
"""In CHECKPOINT_DIR: the checkpoint with the best validation score so far."""
METRICS_FILE = "metrics.jsonl"
"""One JSON line per logged train/validation step."""
TENSORBOARD_DIR = "tb"
"""TensorBoard event files (with `--tensorboard`)."""
TRANSLATIONS_DIR = "translations"
"""Validation translations, one file per step and direction."""
EVAL_DIR = "eval"
"""Hypotheses written by `python -m fs2mini.evaluate` when no `--output` is given."""
MARKER = ".fs2mini-run"
"""Present in every directory fs2mini writes runs into."""
LOCK = ".fs2mini-lock"
"""Locked (flock) by the process training in the directory; holds its PID and host."""
WRITTEN = (CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE, CHECKPOINT_DIR, EVAL_DIR)
"""What fs2mini writes in a run directory (besides its marker and lock)."""


def check_ownership(run_dir: Path) -> None:
    """Refuse a directory fs2mini may not write into: one that exists, is not empty and is not a run directory."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UserError(f"--output-dir {run_dir} is a file; expected a directory (new, empty, or an fs2mini run)")
    if (run_dir / MARKER).is_file() or _written_by_older_fs2mini(run_dir):
        return
    entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
    if not entries:
        return
    clashes = [name for name in WRITTEN if name in entries]
    held = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise UserError(
        f"--output-dir {run_dir} is not empty and was not created by fs2mini (no {MARKER} file): it holds {held}; "
        + (f"training would overwrite {', '.join(clashes)}" if clashes else
           f"training would write {', '.join(WRITTEN[:4])} there")
        + "; use a new or empty directory"
    )


def _written_by_older_fs2mini(run_dir: Path) -> bool:
    """A run directory from before the marker existed: its config.json is a serialised `TrainConfig` and it
    holds what training wrote after it (checkpoints or metrics).

    A config.json alone is not enough: a user's own folder may hold a copy of a run's config.json and
    tokenizer.model (to read or edit them), which a training must not overwrite."""
    if not ((run_dir / CHECKPOINT_DIR).is_dir() or (run_dir / METRICS_FILE).is_file()):
        return False
    try:
        return json.loads((run_dir / CONFIG_FILE).read_bytes()).get("_type") == "TrainConfig"
    except (OSError, ValueError, AttributeError):
        return False


def check_writable(run_dir: Path) -> None:
    """Fail before any slow work when the run directory cannot be created or written (nothing is created here)."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--output-dir {run_dir} is not writable: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--output-dir {run_dir} is not writable: Permission denied")


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory (main process only) and clear leftovers of a killed checkpoint write."""
    from fs2mini.checkpoint import remove_partial_writes  # not at the top: checkpoint imports this module's names

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--output-dir {run_dir} is not writable: {err.strerror}") from None
    remove_partial_writes(run_dir, run_dir / CHECKPOINT_DIR)


def write_run_files(cfg: TrainConfig, tokenizer: Tokenizer) -> None:
    """Create the run directory and write what a run keeps beside its checkpoints: its tokenizer (with an
    imported model's token layout) and `config.json` (main process only, once every component is built)."""
    # Not at the top: checkpoint, config and tokenizer import this module's names.
    from fs2mini.checkpoint import write_atomically
    from fs2mini.config import save_config
    from fs2mini.tokenizer import TokenizerLayout

    run_dir = cfg.run_dir
    prepare_run_dir(run_dir)
    kept = run_dir / TOKENIZER_FILE
    # A new run (a copy left by a try killed before its first checkpoint may be of another training),
    # or a resumed one whose copy was lost (restored from the checkpoint).
    if not kept.is_file() or kept.read_bytes() != tokenizer.model_bytes:
        write_atomically(kept, lambda handle: handle.write(tokenizer.model_bytes))
    if tokenizer.layout != TokenizerLayout():  # an imported model's ids (fs2mini.tokenizer.TokenizerLayout)
        write_atomically(run_dir / LAYOUT_FILE, lambda handle: handle.write(tokenizer.layout.to_json().encode()))
    save_config(cfg, run_dir / CONFIG_FILE)


class RunDirectory:
    """`with RunDirectory(path):` checks ownership, creates and marks the directory, and holds its lock.

    On an exception inside the block, a directory (or marker) this object created is removed again
    when nothing else was written into it, so a failed start leaves no trace.
    """

    def __init__(self, path: Path, *, lock: bool = True) -> None:
        self.path = path
        self.lock = lock
        self._fd: int | None = None
        self._created: list[Path] = []  # directories made here, outermost first
        self._marked = False

    def __enter__(self) -> RunDirectory:
        check_ownership(self.path)
        try:
            missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
            for directory in reversed(missing):
                try:
                    directory.mkdir()
                except FileExistsError:
                    continue  # another trainer started on it at the same moment: not ours to remove
                self._created.append(directory)
            if not (self.path / MARKER).is_file():
                (self.path / MARKER).write_text("This directory holds an fs2mini training run.\n")
                self._marked = True
        except OSError as err:
            self._undo()
            raise UserError(f"--output-dir {self.path} is not writable: {err.strerror}") from None
        if self.lock:
            try:
                self._acquire()
            except BaseException:
                self._undo()
                raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._release()
        if kind is not None:
            self._undo()

    def _acquire(self) -> None:
        path = self.path / LOCK
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"--output-dir {self.path} is not writable: {err.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise UserError(f"--output-dir {self.path} is in use by another fs2mini training ({holder}); "
                                "wait for it to finish or stop it, or use another --output-dir") from None
            # The holder we waited for may have removed the file before we locked it: lock the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.read(fd, 200).decode("utf-8", "replace").strip()
        if previous:
            print(f"warning: took over the lock of {self.path} left by {previous}, which is no longer running",
                  file=sys.stderr)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError as err:  # a full disk: the run could not save anything either
            self._release()
            raise UserError(f"cannot write {path}: {err.strerror or err}; the run directory is unchanged") from None

    def _release(self) -> None:
        if self._fd is None:
            return
        (self.path / LOCK).unlink(missing_ok=True)  # while still locked, so no one locks a file about to vanish
        os.close(self._fd)
        self._fd = None

    def _undo(self) -> None:
        """Remove the marker and directories made here, if nothing else was written into them.

        A lock file left means another trainer holds the directory (ours is removed by `_release`
        before this runs): its lock and the marker are then its own, and stay."""
        if self._marked and {p.name for p in self.path.iterdir()} == {MARKER}:
            (self.path / MARKER).unlink(missing_ok=True)
        for directory in reversed(self._created):
            try:
                directory.rmdir()
            except OSError:
                break  # not empty: something else was written, keep it
