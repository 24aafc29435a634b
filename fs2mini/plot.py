"""Training curves as a picture, no server needed: `python -m fs2mini.plot RUN_DIR [RUN_DIR ...] -o curves.png`.

Reads each run's `metrics.jsonl` and draws, with matplotlib, train and validation loss, validation
BLEU and the learning rate against the update step (top row) and against the training loop's wall
time (bottom row; `elapsed_s`, counted across resumes), several runs on one figure, one colour per
run: a picture for a paper, a README or a quick look over ssh. TensorBoard (RUN_DIR/tb) is the live
view; this is the static one, drawn from the same records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.rundir import METRICS_FILE


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete record of RUN_DIR/metrics.jsonl, in order (a line cut short by a crash is skipped)."""
    path = run_dir / METRICS_FILE
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; expected a directory written by python -m fs2mini.train")
    try:
        lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}; expected the metrics of a run written by fs2mini.train") from None
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (isinstance(record, dict) and isinstance(record.get("step"), int) and plottable(record["step"])
                and record.get("split") in ("train", "valid")):
            records.append(record)
    if not records:
        raise UserError(f"{path} has no train or valid records yet")
    if not any(plottable(record.get(name)) for record in records for split, name, _ in SERIES if split == record["split"]):
        *fields, last = dict.fromkeys(f"{split} {name}" for split, name, _ in SERIES)
        raise UserError(f"{path} has nothing to draw: none of its {len(records)} train or valid records holds a number to "
                        f"plot (finite, under 1e300) for {', '.join(fields)} or {last}; expected the metrics of a run "
                        "that has logged a step")
    return records


def plottable(value: object) -> bool:
    """A number matplotlib can place: not a bool, finite (NaN and ±inf are gaps, never points), and far enough from
    the largest float that an axis's range (a difference of values) stays finite: 1e308 or a 400-digit step gave
    a traceback from matplotlib."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and abs(value) < 1e300
    except OverflowError:  # an int beyond the float range
        return False


PANELS = (  # (title, y label, [(split, field, line style)]), one column each
    ("loss (line: train, dots: valid)", "loss per target token", [("train", "loss", "-"), ("valid", "loss", "o-")]),
    ("validation BLEU", "BLEU", [("valid", "bleu", "o-")]),
    ("learning rate", "lr", [("train", "lr", "-")]),
)
SERIES = [entry for _, _, series in PANELS for entry in series]
"""Every (split, field, line style) drawn."""


def plot_runs(run_dirs: Sequence[Path], output: Path, labels: Sequence[str] | None = None) -> None:
    """Draw the runs' curves into `output` (PNG, PDF or SVG, by its suffix)."""
    if not output.suffix or output.is_dir():  # matplotlib would write OUTPUT.png, not the file the user named
        raise UserError(f"-o {output}: expected a file name ending in .png, .pdf or .svg, e.g. {output / 'curves.png' if output.is_dir() else output.with_suffix('.png')}")
    import matplotlib.pyplot as plt

    fig = draw([read_records(run_dir) for run_dir in run_dirs], list(labels) if labels else _labels(run_dirs))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=150)
    except (OSError, ValueError) as err:
        raise UserError(f"-o {output}: cannot write the figure ({err}); expected a writable .png, .pdf or .svg path") from None
    finally:
        plt.close(fig)


def draw(runs: Sequence[list[dict[str, Any]]], labels: Sequence[str]) -> Any:
    """A matplotlib Figure: one column per `PANELS` entry, x = step (top row) and minutes (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(PANELS), figsize=(4.2 * len(PANELS), 6.4), squeeze=False)
    handles = []  # one line per run, for the figure's legend
    for index, (records, label) in enumerate(zip(runs, labels)):
        colour = f"C{index % 10}"
        for column, (_, _, series) in enumerate(PANELS):
            for split, name, style in series:
                points = [r for r in records if r["split"] == split and plottable(r.get(name))]
                if not points:
                    continue
                ys = [r[name] for r in points]
                kwargs = {"color": colour, "markersize": 3, "linewidth": 1.2 if split == "valid" else 0.8,
                          "alpha": 1.0 if split == "valid" else 0.6,
                          "label": f"{label} ({split})" if len(series) > 1 else label}
                line, = axes[0][column].plot([r["step"] for r in points], ys, style, **kwargs)
                if len(handles) == index:
                    handles.append(line)
                timed = [r for r in points if plottable(r.get("elapsed_s"))]
                if timed:  # runs from before elapsed_s was logged have no time axis
                    axes[1][column].plot([r["elapsed_s"] / 60 for r in timed], [r[name] for r in timed], style, **kwargs)
    for column, (title, ylabel, series) in enumerate(PANELS):
        for row, xlabel in enumerate(("update step", "training time (min)")):
            ax = axes[row][column]
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    rows = (len(handles) + 1) // 2
    fig.legend(handles, [labels[i] for i in range(len(handles))], loc="upper center", ncol=min(len(handles), 2), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.05 * rows))
    return fig


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's directory name, or its whole path where two names are the same."""
    names = [path.resolve().name for path in run_dirs]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, run_dirs)]


@dataclass(frozen=True)
class PlotArgs:
    """Draw train/valid loss, validation BLEU and lr against step and wall time for one or more runs."""

    run_dirs: tyro.conf.Positional[tuple[Path, ...]]
    """Run directories written by python -m fs2mini.train (each has a metrics.jsonl)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("curves.png")
    """Figure file; .png, .pdf or .svg."""
    labels: tuple[str, ...] = ()
    """A legend label per run (default: the directory names)."""


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.cli(PlotArgs, args=None if argv is None else list(argv))
    with exit_on_user_error():
        if not args.run_dirs:
            raise UserError("give at least one run directory")
        if args.labels and len(args.labels) != len(args.run_dirs):
            raise UserError(f"--labels: {len(args.labels)} labels for {len(args.run_dirs)} runs; expected one per run")
        plot_runs(args.run_dirs, args.output, args.labels)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
