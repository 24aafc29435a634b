"""Checkpoint files: atomic writes, pruning, lookup in a run directory, and loads that fail with a sentence.

A checkpoint is written to a temporary file in the same directory, fsynced, then renamed over the
final name, and the directory is fsynced: at any moment each `step_*.pt` is either complete or
absent, so a killed process or a full disk never destroys the previous good checkpoint. The run
directory's other files (config.json, tokenizer.model) are written the same way (`write_atomically`).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from fs2mini.errors import UserError
from fs2mini.rundir import BEST_CHECKPOINT, CHECKPOINT_DIR

_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
_BEST_FILE = re.compile(r"^best_step_(\d+)\.pt$")


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"step_{step:08d}.pt"


def best_checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    """One of the N best validation checkpoints (`--trainer.keep-best-checkpoints`); never resumed from."""
    return checkpoint_dir / f"best_step_{step:08d}.pt"


def list_checkpoints(checkpoint_dir: Path, pattern: re.Pattern[str] = _STEP_FILE) -> list[Path]:
    """Step checkpoints (or those `pattern` matches, step number in group 1), oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := pattern.match(p.name))]
    return [path for _, path in sorted(found)]


def list_best_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The kept `best_step_*.pt` checkpoints, oldest first."""
    return list_checkpoints(checkpoint_dir, _BEST_FILE)


def save_atomically(state: dict[str, Any], path: Path) -> None:
    """torch.save `state` to `path` so that `path` is either the old file or the complete new one."""
    write_atomically(path, lambda handle: torch.save(state, handle), f"checkpoint {path}", "earlier checkpoints are intact")


def write_atomically(path: Path, write: Callable[[BinaryIO], None], what: str | None = None,
                     kept: str = "the run's other files are intact") -> None:
    """Call `write(handle)` on a temporary file next to `path`, fsync it, rename it to `path`.

    `path` is either the old file or the complete new one; a failed write (disk full) removes the
    temporary file and raises `UserError`: `cannot write <what>: <reason>; <kept>`."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise UserError(f"cannot write {what or path}: {err.strerror or err}; {kept}") from None
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partial_writes(*directories: Path) -> int:
    """Delete temporary files left by writes that were killed; returns how many there were."""
    partial = [p for directory in directories if directory.is_dir() for p in directory.glob(".*.tmp")]
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def prune_checkpoints(checkpoint_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints."""
    for path in list_checkpoints(checkpoint_dir)[:-keep_last]:
        path.unlink(missing_ok=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by `save_atomically`, or raise `UserError` saying what is wrong.

    `mmap`: tensors stay in the file's pages until used (a 600M model's weights are not copied into
    memory a second time when a model takes them over with `load_state_dict(assign=True)`)."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for truncated/garbage files
        raise UserError(f"checkpoint {path} is corrupt or not an fs2mini checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} is not an fs2mini checkpoint (no model weights)")
    return state


def find_checkpoints(run_dir: Path, checkpoint: str | None) -> list[Path]:
    """`--checkpoint` as a path or a name in RUN_DIR/checkpoints; by default best.pt, then the step
    checkpoints newest first (the fallbacks when one is unreadable, as training does)."""
    directory = run_dir / CHECKPOINT_DIR
    if checkpoint is not None:
        for candidate in (Path(checkpoint), directory / checkpoint, directory / f"{checkpoint}.pt"):
            if candidate.is_file():
                return [candidate]
        names = sorted(p.name for p in directory.glob("*.pt")) if directory.is_dir() else []
        raise UserError(f"--checkpoint {checkpoint}: no such file, nor in {directory}; "
                        f"expected a path or one of: {', '.join(names) or 'no checkpoints there'}")
    best = directory / BEST_CHECKPOINT
    found = ([best] if best.is_file() else []) + list(reversed(list_checkpoints(directory)))
    if not found:
        raise UserError(f"no checkpoint in {directory}; train the run first (python -m fs2mini.train --output-dir {run_dir}) "
                        "or pass --checkpoint PATH")
    return found


def load_first_readable(paths: Sequence[Path], mmap: bool = False) -> tuple[Path, dict]:
    """The first of `paths` that loads; a warning for each unreadable one before it, the error if none loads."""
    for index, path in enumerate(paths):
        try:
            return path, load_checkpoint(path, map_location="cpu", mmap=mmap)
        except UserError as err:
            if index == len(paths) - 1:
                raise
            print(f"warning: {err}; trying {paths[index + 1].name}", file=sys.stderr)
    raise AssertionError("no checkpoint paths")
