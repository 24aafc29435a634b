"""Average the weights of several checkpoints of a run: `python -m fs2mini.average RUN_DIR --last 5` (or `--best 5`).

Averaging the last (or best) few checkpoints of a run usually gives a better model than any one
of them, for free (Vaswani et al. 2017 averaged the last 5 or 20; fairseq's
`scripts/average_checkpoints.py`, Marian's `--average`). The result is an ordinary checkpoint in
RUN_DIR/checkpoints (`averaged_last5.pt` by default) holding the mean of the chosen checkpoints'
weights, the run's config and tokenizer record, and the names it averages; `translate`, `evaluate`
and `Translator.from_run` load it by name (`--checkpoint averaged_last5`). It has no optimizer
state and its name is not `step_*.pt`, so training never resumes from it.

The mean is taken over the state dicts in fp32 with `torch.stack(...).mean(0)`, one tensor at a time;
`torch.optim.swa_utils.AveragedModel` computes the same mean but needs the model built first, which
a run of a recipe's own architecture would have to import its recipe for.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro

from fs2mini.checkpoint import (CONFIG, STEP, TOKENIZER, TrainState, list_best_checkpoints, list_checkpoints, load_checkpoint,
                                write_checkpoint)
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.lora import model_weights
from fs2mini.rundir import BEST_CHECKPOINT, CHECKPOINT_DIR


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors (in fp32, cast back); other tensors from the last state."""
    if not states:
        raise ValueError("no state dicts to average")
    keys = list(states[-1])
    for state in states:
        if list(state) != keys:
            raise ValueError("the checkpoints hold different parameters")
    averaged: dict[str, torch.Tensor] = {}
    for key in keys:
        last = states[-1][key]
        if last.is_floating_point():
            averaged[key] = torch.stack([state[key].float() for state in states]).mean(0).to(last.dtype)
        else:  # integer buffers (counters, masks) are not averaged
            averaged[key] = last.clone()
    return averaged


def choose_checkpoints(run_dir: Path, last: int | None, best: int | None) -> list[Path]:
    """The `last` newest step checkpoints, or the `best` kept best_step_*.pt checkpoints, oldest first."""
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; expected a directory written by python -m fs2mini.train")
    if (last is None) == (best is None):
        raise UserError("give exactly one of --last N and --best N")
    count = last if last is not None else best
    flag = "--last" if last is not None else "--best"
    if count <= 0:
        raise UserError(f"{flag} {count}: expected a positive number of checkpoints")
    directory = run_dir / CHECKPOINT_DIR
    if last is not None:
        found = list_checkpoints(directory)
        if len(found) < last:
            raise UserError(f"--last {last}: {directory} keeps {len(found)} step checkpoints; train with "
                            f"--trainer.keep-last-checkpoints {last} (or more) to average {last}")
        return found[-last:]
    found = list_best_checkpoints(directory)
    if len(found) < best:
        raise UserError(f"--best {best}: {directory} keeps {len(found)} best_step_*.pt checkpoints; train with "
                        f"--trainer.keep-best-checkpoints {best} (or more) to average {best}")
    return _best_of(found, best)


def _best_of(paths: list[Path], count: int) -> list[Path]:
    """The `count` best of the kept best checkpoints, ranked by the validation values the newest one records."""
    states = {path: load_checkpoint(path) for path in paths}
    newest = states[paths[-1]]
    metric = newest[CONFIG]["trainer"]["best_metric"]
    ranking = [int(step) for _, step in TrainState.saved_in(newest).best_checkpoints]  # best first
    by_step = {int(state[STEP]): path for path, state in states.items()}
    ranked = [by_step[step] for step in ranking if step in by_step]
    ranked += [path for path in paths if path not in ranked]  # files the ranking does not list (older runs)
    chosen = ranked[:count]
    print(f"best {count} by validation {metric}: {', '.join(p.name for p in chosen)}", file=sys.stderr)
    return sorted(chosen, key=paths.index)


def average_checkpoints(paths: Sequence[Path], output: Path) -> dict[str, Any]:
    """Write the average of `paths` (oldest first) to `output`; returns the checkpoint written."""
    states = [load_checkpoint(path) for path in paths]
    newest = states[-1]
    try:
        model = average_state_dicts([model_weights(state) for state in states])  # LoRA runs: adapters merged
    except ValueError as err:
        raise UserError(f"cannot average {', '.join(p.name for p in paths)}: {err} (were they trained by the same run?)") from None
    return write_checkpoint(output, model, config=newest[CONFIG], tokenizer=newest.get(TOKENIZER), step=newest[STEP],
                            averaged_from=[path.name for path in paths])


@dataclass(frozen=True)
class AverageArgs:
    """Average the weights of the last N step checkpoints (--last) or of the N best (--best) of a run.

    Writes RUN_DIR/checkpoints/averaged_lastN.pt (or averaged_bestN.pt); use it with
    `--checkpoint averaged_lastN` in fs2mini.translate / fs2mini.evaluate.
    """

    run_dir: tyro.conf.Positional[Path]
    """Run directory written by python -m fs2mini.train."""
    last: int | None = None
    """Average the N newest step checkpoints (the run must keep them: --trainer.keep-last-checkpoints)."""
    best: int | None = None
    """Average the N best validation checkpoints (kept with --trainer.keep-best-checkpoints)."""
    output: str | None = None
    """Checkpoint name in RUN_DIR/checkpoints, or a path ending in .pt; default averaged_lastN / averaged_bestN."""


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.cli(AverageArgs, args=None if argv is None else list(argv))
    with exit_on_user_error():
        paths = choose_checkpoints(args.run_dir, args.last, args.best)
        name = args.output or (f"averaged_last{args.last}" if args.last is not None else f"averaged_best{args.best}")
        output = Path(name) if name.endswith(".pt") else args.run_dir / CHECKPOINT_DIR / f"{name}.pt"
        if output.name.startswith("step_") or output.name == BEST_CHECKPOINT:
            raise UserError(f"--output {name}: that name is the trainer's own; expected another, e.g. averaged_last5")
        average_checkpoints(paths, output)
        print(f"averaged {len(paths)} checkpoints ({', '.join(path.name for path in paths)}) into {output}")


if __name__ == "__main__":
    main()
