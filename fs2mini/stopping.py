"""Stopping a run by signal: SIGINT (Ctrl-C), SIGTERM (a scheduler, `kill`) and SIGHUP (a closed terminal).

A run killed mid-update would lose everything since its last checkpoint, so the first signal only
asks the loop to stop: it finishes the current step, saves a checkpoint and exits with 128 + the
signal's number, the code a shell reports for a process the signal killed (rerunning the same
command resumes). A second signal interrupts at once. The handlers are installed for the loop only
and the previous ones restored after it.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fs2mini.distributed import DistEnv
from fs2mini.errors import RunStopped
from fs2mini.metrics import best_effort
from fs2mini.rundir import CHECKPOINT_DIR

if TYPE_CHECKING:  # the annotation only: the trainer imports this module
    from fs2mini.trainer import Checkpointer


def catch_stop_signals(requests: list[int], env: DistEnv) -> dict[int, Any]:
    """SIGINT/SIGTERM/SIGHUP finish the current step, save and stop; a second signal interrupts at once.

    SIGHUP is what a closed terminal or ssh session sends: a run started without nohup saves too."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def request_stop(signum: int, frame: Any) -> None:
        if requests:
            raise KeyboardInterrupt
        requests.append(signum)
        if env.is_main:
            print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint",
                  file=best_effort(sys.stderr), flush=True)

    return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def save_and_stop(saver: Checkpointer, stop_requests: list[int], run_dir: Path) -> None:
    """A stop signal: save unless this step is saved already, then stop with the shell's exit code."""
    if saver.saved_step != saver.state.step:
        saver.save()
    signum = stop_requests[0] if stop_requests else signal.SIGTERM
    raise RunStopped(
        f"stopped by {signal.Signals(signum).name} after step {saver.state.step}; checkpoint saved in "
        f"{run_dir / CHECKPOINT_DIR}. Run the same command again to resume.",
        128 + signum,
    )
