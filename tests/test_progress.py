"""The progress display: a run with a time budget shows time left by the budget, not by max_steps."""

import re

from fs2mini.metrics import ProgressDisplay


def eta_of(line: str) -> float:
    return float(re.search(r"ETA (\S+)s", line).group(1))


def test_lines_without_budget_count_steps(capsys):
    display = ProgressDisplay(total_steps=10, start_step=0, mode="lines", line_every=1)
    display.update(1, loss=2.0, lr=1e-3, tokens_per_s=100.0, elapsed_s=1.0)
    line = capsys.readouterr().err
    assert "step 1/10 " in line


def test_time_budget_bounds_eta_and_drops_the_step_total(capsys):
    # The default run sets a huge max_steps and a budget: the budget decides, and a resumed run's
    # earlier training (elapsed_s) counts against it.
    display = ProgressDisplay(total_steps=1_000_000, start_step=0, mode="lines", line_every=1, budget_s=60.0,
                              elapsed_s=50.0)
    display.update(1, loss=2.0, lr=1e-3, tokens_per_s=100.0, elapsed_s=50.0)
    line = capsys.readouterr().err
    assert "/1000000" not in line
    assert 0 <= eta_of(line) <= 10.0


def test_steps_bound_eta_when_they_end_first(capsys):
    display = ProgressDisplay(total_steps=2, start_step=0, mode="lines", line_every=1, budget_s=3600.0)
    display.update(1, loss=2.0, lr=1e-3, tokens_per_s=100.0, elapsed_s=1.0)
    assert eta_of(capsys.readouterr().err) < 60.0


def test_bar_with_budget_runs(capsys):
    display = ProgressDisplay(total_steps=1_000_000, start_step=5, mode="bar", line_every=1, budget_s=60.0, elapsed_s=6.0)
    display.update(6, loss=2.0, lr=1e-3, tokens_per_s=100.0, elapsed_s=7.0)
    display.close()
