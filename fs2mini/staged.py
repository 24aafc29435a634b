"""A directory written whole or not at all: `staged(target)` for `python -m fs2mini.hf import`, `export` and `ctranslate2`.

Why a module of its own: a few gigabytes of weights take a while to write, and a half-written model directory
looks like a model until something loads it. So its content goes into a hidden scratch directory beside the
target and is renamed into place in one step; an error, Ctrl-C, SIGTERM or SIGHUP removes the scratch directory,
and what a SIGKILL or a power cut leaves is removed by the next `staged` write into the same folder (its name
records the machine and process that wrote it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fs2mini.checkpoint import os_error_behind
from fs2mini.errors import RunStopped, UserError

STAGING_SUFFIX = ".fs2mini-partial"
"""Ends the name of the hidden directory beside its target that an import or export is written into (`staged`)."""


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A new empty directory to write `target`'s content into, renamed to `target` when the block completes.

    It lies in a hidden scratch directory beside `target` (`.NAME.HOST.PID.XXXX.fs2mini-partial`; the block may
    use the rest of it), removed however the block ends: an error, Ctrl-C, or SIGTERM/SIGHUP, which stop the
    block with exit status 128 + the signal. A SIGKILL (or a power cut) stops Python too, so the next `staged`
    in the same folder removes the scratch directories whose process is gone. A write that fails (a read-only
    folder, a full disk) is one sentence about `target`."""
    for path in remove_stale_scratch(target.parent):
        print(f"removed {path}, left by an import or export that was killed", file=sys.stderr)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_host()}.{os.getpid()}.", suffix=STAGING_SUFFIX,
                                        dir=target.parent))
    except OSError as err:
        file = next((p for p in reversed(target.parents) if p.exists() and not p.is_dir()), None)
        why = f"{file} is a file" if file is not None else err.strerror or err
        raise UserError(f"cannot write {target}: {why}; expected a folder this user can write to") from None
    try:
        content = scratch / target.name
        content.mkdir()
        with _stopped_by_signals():
            yield content
        if target.exists():
            target.rmdir()  # (empty: checked by the callers)
        os.replace(content, target)
    except OSError as err:
        raise UserError(f"cannot write {target}: {err.strerror or err}; nothing was written there") from None
    except UserError as err:
        # A file written into the scratch directory by `write_atomically` (config.json, a checkpoint) that failed
        # (a full disk) is named by its place there, which is gone now: say it of `target`, as other writes do.
        cause = os_error_behind(err)
        if cause is None or str(scratch) not in str(err):
            raise
        raise UserError(f"cannot write {target}: {cause.strerror or cause}; nothing was written there") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `RunStopped` in the block (so that `finally` clauses run), as Ctrl-C raises
    KeyboardInterrupt; their previous handlers come back after it."""
    def stop(signum: int, frame: Any) -> None:
        raise RunStopped(f"stopped by {signal.Signals(signum).name}; what was written so far is removed", 128 + signum)

    main_thread = threading.current_thread() is threading.main_thread()  # (only it may set handlers)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)} if main_thread else {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _host() -> str:
    """This machine's name as it appears in scratch directory names: letters, digits and hyphens."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def remove_stale_scratch(folder: Path) -> list[Path]:
    """Remove the scratch directories of `staged` in `folder` whose process, on this machine, is gone; returns them.
    A live process's, and another machine's (a shared file system), are left alone."""
    pattern = re.compile(rf"^\..*\.{re.escape(_host())}\.(\d+)\.\w+{re.escape(STAGING_SUFFIX)}$")
    stale = [path for path in (folder.iterdir() if folder.is_dir() else ())
             if (m := pattern.match(path.name)) and path.is_dir() and not _alive(int(m[1]))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # (PermissionError: another user's process)
        return True
    return True

