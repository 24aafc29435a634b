"""Checkpoint files: their format (one writer, one loader), atomic writes, pruning, and lookup in a run directory.

The format is owned here: a checkpoint is a dict whose keys are the constants below, assembled only by
`write_checkpoint` (the trainer, `average`, `hf import`) and read back only through `load_checkpoint`,
which says in one sentence what is wrong with a file that is not one. A training checkpoint also holds
`TrainState` (where the run stands, its random states) so that a resume continues bit for bit;
`load_weights` puts a checkpoint's weights into a model, or says what does not fit. Older
checkpoints lack some keys (counters, the tokenizer record): readers take them with `.get`.

A checkpoint is written to a temporary file in the same directory, fsynced, then renamed over the
final name, and the directory is fsynced: at any moment each `step_*.pt` is either complete or
absent, so a killed process or a full disk never destroys the previous good checkpoint. The run
directory's other files (config.json, tokenizer.model) are written the same way (`write_atomically`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor, nn

from fs2mini.errors import UserError
from fs2mini.rundir import BEST_CHECKPOINT, CHECKPOINT_DIR

# The keys of a checkpoint dict: every checkpoint has the first four, the others where they apply.
MODEL = "model"
"""The model's weights, a state dict (a LoRA run: the frozen weights under their plain names)."""
CONFIG = "config"
"""The run's `TrainConfig` as config.json holds it."""
TOKENIZER = "tokenizer"
"""`fs2mini.tokenizer.tokenizer_record` of the tokenizer the weights were trained with (absent in the oldest files)."""
STEP = "step"
"""The training step of the weights (0 for an imported model)."""
OPTIMIZER = "optimizer"
"""The optimizer state of a training checkpoint, which a resume restores."""
RNG = "rng"
"""The Python, torch and CUDA random states of a training checkpoint (`TrainState.state_dict`)."""
LORA = "lora"
"""A LoRA run's adapters and their settings (`fs2mini.lora.adapter_state`)."""
GRAD_SCALER = "grad_scaler"
"""fp16's loss scaler, so that a resumed run continues at the scale it had found."""
AVERAGED_FROM = "averaged_from"
"""The names of the checkpoints `python -m fs2mini.average` averaged into this one."""
IMPORTED_FROM = "imported_from"
"""Where `python -m fs2mini.hf import` read the weights from."""


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint restores besides the weights and the optimizer state.

    Its fields are top-level keys of a training checkpoint, next to `RNG`."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    """Batches of `epoch` already consumed (a resumed run skips them)."""
    best_value: float | None = None
    """Best validation `--trainer.best-metric` so far (what best.pt holds)."""
    bad_steps: int = 0
    """Consecutive updates skipped for a non-finite loss or gradient (fp16 loss-scale overflows excepted)."""
    skipped_steps: int = 0
    """All updates skipped so far (logged)."""
    patience_count: int = 0
    """Validations in a row without a better best-metric (early stopping at `--trainer.patience`)."""
    elapsed_s: float = 0.0
    """Seconds spent in the training loop so far, all runs of it together (`--trainer.max-time`)."""
    best_checkpoints: list[list[float]] = field(default_factory=list)
    """[value, step] of each kept checkpoints/best_step_*.pt, best first (`--trainer.keep-best-checkpoints`)."""
    wandb_run_id: str | None = None
    """The W&B run this run logs to, so a resume continues it."""

    @classmethod
    def saved_in(cls, checkpoint: dict[str, Any]) -> TrainState:
        """The state a training checkpoint holds (checkpoints of older versions lack the later counters)."""
        return cls(**{f.name: checkpoint[f.name] for f in dataclasses.fields(cls) if f.name in checkpoint})

    def state_dict(self, device: torch.device) -> dict[str, Any]:
        rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        return {**dataclasses.asdict(self), RNG: rng}

    @classmethod
    def resumed(cls, checkpoint: dict[str, Any], device: torch.device) -> TrainState:
        """The state `checkpoint` holds, with the random number generators put back where they were."""
        rng = checkpoint[RNG]
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        return cls.saved_in(checkpoint)

    def improves(self, value: float, metric: str) -> bool:
        return self.best_value is None or (value < self.best_value if metric == "loss" else value > self.best_value)


_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
_BEST_FILE = re.compile(r"^best_step_(\d+)\.pt$")


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"step_{step:08d}.pt"


def written_by_the_trainer(name: str) -> bool:
    """A checkpoint file name the trainer writes and reads back (step, best and kept best checkpoints): no other
    command may write a file of that name, or training and `average --best` would take it for their own."""
    return name == BEST_CHECKPOINT or name.startswith(("step_", "best_step_"))


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


def write_checkpoint(path: Path, weights: dict[str, Tensor], *, config: dict[str, Any], tokenizer: dict[str, Any] | None,
                     step: int, train_state: dict[str, Any] | None = None, optimizer: dict[str, Any] | None = None,
                     lora: dict[str, Any] | None = None, grad_scaler: dict[str, Any] | None = None,
                     averaged_from: list[str] | None = None, imported_from: str | None = None) -> dict[str, Any]:
    """Write a checkpoint to `path` (either the old file or the complete new one) and return it: the one place a
    checkpoint dict is assembled.

    A checkpoint training resumes from has `train_state` (`TrainState.state_dict`) and `optimizer`; the
    optional entries are left out when None."""
    checkpoint = {MODEL: weights, CONFIG: config, TOKENIZER: tokenizer, **(train_state or {}), STEP: step}
    optional = {OPTIMIZER: optimizer, LORA: lora, GRAD_SCALER: grad_scaler, AVERAGED_FROM: averaged_from,
                IMPORTED_FROM: imported_from}
    checkpoint.update({key: value for key, value in optional.items() if value is not None})
    write_atomically(path, lambda handle: torch.save(checkpoint, handle), f"checkpoint {path}", "earlier checkpoints are intact")
    return checkpoint


def write_atomically(path: Path, write: Callable[[BinaryIO], None], what: str | None = None,
                     kept: str = "the run's other files are intact") -> None:
    """Call `write(handle)` on a temporary file next to `path`, fsync it, rename it to `path`.

    `path` is either the old file or the complete new one; a failed write (disk full) removes the
    temporary file and raises `UserError`: `cannot write <what>: <reason>; <kept>`. torch.save reports a
    failed write as a RuntimeError raised while handling the OSError, which is the reason given."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            # mkstemp creates the file readable by its owner alone; the finished file gets the mode any file
            # the user writes gets (0666 less the umask), so a shared run directory stays readable by the team.
            os.fchmod(handle.fileno(), 0o666 & ~_current_umask())
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        cause = os_error_behind(err) if isinstance(err, Exception) else None  # (never a Ctrl-C)
        if cause is not None:
            raise UserError(f"cannot write {what or path}: {cause.strerror or cause}; {kept}") from None
        raise


def _current_umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_error_behind(err: BaseException) -> OSError | None:
    """The OSError behind `err`: itself, or one it was raised from or while handling (torch's writer wraps it)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def keep_resume_point(checkpoint_dir: Path, step: int) -> None:
    """Give a run resumed from best.pt alone (killed after its first best.pt, before its first step checkpoint)
    the step checkpoint it lacks: a copy of best.pt, which holds the same state (both are saved at that step).

    From then on it is like any other resumed run: it comes back to that step if killed again, and prunes it later."""
    path = checkpoint_path(checkpoint_dir, step)
    if path.is_file():
        return
    with (checkpoint_dir / BEST_CHECKPOINT).open("rb") as best:
        write_atomically(path, lambda handle: shutil.copyfileobj(best, handle), f"checkpoint {path}",
                         "earlier checkpoints are intact")


def remove_partial_writes(*directories: Path, of: str | None = None) -> int:
    """Delete the temporary files (`.NAME.*.tmp`), or temporary directories, left by writes that were killed (only
    those of writes to `of`, when given); returns how many there were. Call it where no other writer of them runs
    (under the run's lock, or the cache entry's)."""
    pattern = f".{of}.*.tmp" if of is not None else ".*.tmp"
    partial = [p for directory in directories if directory.is_dir() for p in directory.glob(pattern)]
    for path in partial:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(partial)


def prune_checkpoints(checkpoint_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints."""
    for path in list_checkpoints(checkpoint_dir)[:-keep_last]:
        path.unlink(missing_ok=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by `write_checkpoint`, or raise `UserError` saying what is wrong.

    `mmap`: tensors stay in the file's pages until used (a 600M model's weights are not copied into
    memory a second time when a model takes them over with `load_state_dict(assign=True)`)."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for truncated/garbage files
        raise UserError(f"checkpoint {path} is corrupt or not an fs2mini checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get(MODEL), dict):
        raise UserError(f"checkpoint {path} is not an fs2mini checkpoint (no model weights)")
    return state


def checkpoint_step(checkpoint: dict[str, Any]) -> int | None:
    """The step a checkpoint's weights were trained to, when it records one (for reports)."""
    step = checkpoint.get(STEP)
    return step if isinstance(step, int) else None


ARCHITECTURE_FIELDS = ("model_dim", "num_encoder_layers", "num_decoder_layers", "num_encoder_attn_heads",
                       "num_decoder_attn_heads", "ffn_inner_dim", "position_offset", "scale_embeddings")
"""Model settings the weights only mean something under; several (heads, positions, scaling) change no tensor's shape."""


def differing_architecture(checkpoint: dict, configured_model: dict) -> dict[str, object]:
    """The `ARCHITECTURE_FIELDS` whose value in the config `checkpoint` records differs from `configured_model`'s
    (both as config.json writes them), with the checkpoint's value. Fields either side lacks (the oldest
    checkpoints, a recipe's own architecture) are not compared. `--init`, `hf export` and `Translator.from_run` ask it."""
    config = checkpoint.get(CONFIG)
    trained = config.get("model") if isinstance(config, dict) else None
    if not isinstance(trained, dict):  # (a file another program wrote: its shapes are still checked when loaded)
        return {}
    return {k: trained[k] for k in ARCHITECTURE_FIELDS
            if k in trained and k in configured_model and trained[k] != configured_model[k]}


def refuse_other_architecture(checkpoint: dict, path: Path, configured_model: dict, config_file: Path) -> None:
    """Stop, naming the differing fields, when `checkpoint` (read from `path`) was trained with another architecture
    than the model `config_file` configures (`configured_model`, as config.json writes it): weights with the same
    shapes but other heads, positions or scaling load without complaint and compute something else."""
    differing = differing_architecture(checkpoint, configured_model)
    if differing:
        raise UserError(f"checkpoint {path} was trained with {', '.join(f'{k} {v}' for k, v in differing.items())}; "
                        f"{config_file} has {', '.join(f'{k} {configured_model[k]}' for k in differing)}; expected a "
                        "checkpoint of this run")


def load_weights(model: nn.Module, weights: dict[str, Tensor], what: str, fits: str = "the configured model",
                 expected: str | None = None, assign: bool = False) -> None:
    """`model.load_state_dict(weights)`, or one sentence: `<what> does not fit <fits>: <first mismatch>[; expected ...]`.

    `assign`: the model takes the tensors over instead of copying them (same device and dtype)."""
    try:
        model.load_state_dict(weights, assign=assign)
    except RuntimeError as err:
        lines = str(err).splitlines()
        mismatch = (lines[1] if len(lines) > 1 else lines[0]).strip()
        raise UserError(f"{what} does not fit {fits}: {mismatch}" + (f"; expected {expected}" if expected else "")) from None


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
