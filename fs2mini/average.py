"""Average the weights of several checkpoints of a run: `python -m fs2mini.average RUN_DIR --last 5` (or `--best 5`).

Averaging the last (or best) few checkpoints of a run usually gives a better model than any one
of them, for free (Vaswani et al. 2017 averaged the last 5 or 20; fairseq's
`scripts/average_checkpoints.py`, Marian's `--average`). The result is an ordinary checkpoint in
RUN_DIR/checkpoints (`averaged_last5.pt` by default) holding the mean of the chosen checkpoints'
weights, the run's config and tokenizer record, and the names it averages; `translate`, `evaluate`
and `Translator.from_run` load it by name (`--checkpoint averaged_last5`). It has no optimizer
state and its name is not `step_*.pt`, so training never resumes from it. `checkpoints/` may hold
files copied from elsewhere: a checkpoint of another model or tokenizer is refused, not averaged.

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
                                remove_partial_writes, write_checkpoint, written_by_the_trainer)
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.lora import model_weights
from fs2mini.rundir import CHECKPOINT_DIR, TOKENIZER_FILE
from fs2mini.tokenizer import checked_tokenizer, describe_tokenizer, tokenizer_identity


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors (in fp32, cast back); other tensors from the last state."""
    if not states:
        raise ValueError("no state dicts to average")
    keys = list(states[-1])
    for state in states:
        if set(state) != set(keys):  # (in any order: each tensor is taken by name)
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


def average_checkpoints(paths: Sequence[Path], output: Path, run_dir: Path | None = None) -> dict[str, Any]:
    """Write the average of `paths` (oldest first) to `output`; returns the checkpoint written.

    `checkpoints/` may hold files copied from elsewhere: every checkpoint must have the newest one's parameters
    and shapes and its tokenizer, and that tokenizer must be `run_dir`'s tokenizer.model (as translate checks)."""
    states = [load_checkpoint(path) for path in paths]
    newest = states[-1]
    weights = [model_weights(state) for state in states]  # LoRA runs: adapters merged
    _check_same_model(paths, weights)
    _check_same_tokenizer(paths, states, run_dir)
    model = average_state_dicts(weights)
    remove_partial_writes(output.parent, of=output.name)  # left by an average that was killed while writing
    return write_checkpoint(output, model, config=newest[CONFIG], tokenizer=newest.get(TOKENIZER), step=newest[STEP],
                            averaged_from=[path.name for path in paths])


def _check_same_model(paths: Sequence[Path], weights: Sequence[dict[str, torch.Tensor]]) -> None:
    """Refuse, naming both files and the first difference, checkpoints of another model than the newest one's."""
    newest, expected = paths[-1].name, weights[-1]
    for path, state in zip(paths, weights):
        names = set(state) ^ set(expected)
        if names:
            name = sorted(names)[0]
            raise UserError(f"cannot average {path.name} with {newest}: {name} is in {newest if name in expected else path.name} "
                            f"only; expected checkpoints of one model (the same run)")
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise UserError(f"cannot average {path.name} with {newest}: {name} is {tuple(tensor.shape)} in "
                                f"{path.name} and {tuple(expected[name].shape)} in {newest}; expected checkpoints of one "
                                "model (the same run)")


def _check_same_tokenizer(paths: Sequence[Path], states: Sequence[dict[str, Any]], run_dir: Path | None) -> None:
    """Refuse checkpoints trained with another tokenizer than the newest one, or than the run's tokenizer.model."""
    records = [state.get(TOKENIZER) for state in states]
    identities = [tokenizer_identity(record) if record is not None else None for record in records]
    for path, identity in zip(paths, identities):
        if identity != identities[-1]:
            describe = lambda i: describe_tokenizer(i) if i is not None else "not recorded"  # noqa: E731
            raise UserError(f"cannot average {path.name} with {paths[-1].name}: they were trained with different "
                            f"tokenizers ({describe(identity)}; {describe(identities[-1])}); expected checkpoints of one run")
    if run_dir is not None and records[-1] is not None and (run_dir / TOKENIZER_FILE).is_file():
        checked_tokenizer(run_dir / TOKENIZER_FILE, tuple(records[-1]["lang_ids"]), records[-1], paths[-1])


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
        name = args.output or (f"averaged_last{args.last}" if args.last is not None else f"averaged_best{args.best}")
        output = Path(name) if name.endswith(".pt") else args.run_dir / CHECKPOINT_DIR / f"{name}.pt"
        if written_by_the_trainer(output.name):
            raise UserError(f"--output {name}: that name is the trainer's own (step_*, best.pt, best_step_*); "
                            "expected another, e.g. averaged_last5")
        paths = choose_checkpoints(args.run_dir, args.last, args.best)
        average_checkpoints(paths, output, args.run_dir)
        print(f"averaged {len(paths)} checkpoints ({', '.join(path.name for path in paths)}) into {output}")


if __name__ == "__main__":
    main()
