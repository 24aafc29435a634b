"""Soak check: SIGKILL training runs at the worst moments, rerun them, verify nothing is lost or mixed up.

Trains a tiny model on the synthetic reversal corpus (400 steps, a checkpoint every 5, a validation
every 100) once without interruption, then runs each scenario with the same command and compares:

- `random`: `--kills` SIGKILLs of one run, rerun after each; two in three at a random moment of
  training, one in three inside a checkpoint write (step checkpoint or best.pt, whichever comes).
- `tokenizer`: a fresh run killed while sentencepiece trains its tokenizer (before tokenizer.model
  exists), alternating with kills in its first steps after which the tokenizer cache is emptied (a
  rerun from another working directory or a cleaned cache must train it again, and tokenizer.model
  must still be the tokenizer the checkpoints were trained with).
- `first-checkpoint`: a fresh run killed inside its first checkpoint write, again and again.
- `best`: a run killed inside `checkpoints/best.pt` writes, spread over the validations that improve it.
- `concurrent`: two trainers on one --output-dir (the second started while the first trains, both at
  the same moment, the second while the first starts up): one must be refused with a single
  `error:` line naming the other's PID and a non-zero exit; the other must finish unaffected.
- `average`: `python -m fs2mini.average RUN --last 3` on a copy of the uninterrupted run, killed inside
  its write of `averaged_last3.pt` again and again: the final name must hold the complete average or
  nothing, and a rerun must remove the killed writes' temporary files and write the same weights as an
  average never killed.
- `prepared`: a fresh run killed while it encodes its corpus into the data cache (fs2mini/prepared.py), at a random
  fraction of each split's bytes: every split directory in the cache must then be intact and hold exactly what an
  uninterrupted preparation wrote (a later run opens it without preparing again), no temporary directory may outlive
  the next preparation, and the run must finish as the uninterrupted one did.
- `hf-import`, `hf-export`: `python -m fs2mini.hf import SRC OUT` of a tiny random M2M100 saved as the Hub serves it
  (tests/test_hf.py's `write_nllb_dir`, 21 MB), and `export` of that import, killed again and again: two in three
  inside the staged write of OUT (at a random fraction of its bytes), one in three at a random moment of the command.
  After each kill OUT is absent or byte-identical to an uninterrupted command's output, and the hidden scratch
  directories (`.OUT.HOST.PID.XXXX.fs2mini-partial`, fs2mini/staged.py) of earlier kills are gone once the next
  command has started its write; the final rerun exits 0, leaves no scratch directory, and its OUT loads
  (`Translator.from_run`, transformers' `from_pretrained`). These two need no training: alone, they take seconds.

How a kill lands inside a write, deterministically rather than by luck: fs2mini writes a checkpoint
to a temporary file `.NAME.XXXXXXXX.tmp` next to its final name and renames it once complete and
fsynced (fs2mini/checkpoint.py). The benchmark polls the checkpoint directory every 0.2 ms; once the
temporary file appears it polls the file's size until it holds a random fraction (0 to 100%) of a
full checkpoint (the uninterrupted run's size), then sends SIGKILL. A kill counts as inside the
write only if the temporary file is still there after the process died (not yet renamed); any other
outcome is reported as a miss, never counted as a hit. Sentencepiece training is found the same way:
fs2mini trains it in a temporary directory of the tokenizer cache (`.spm-*.model.PID.tmp`), which the
next training of that model removes; none may be left at the end. A preparation of the data cache likewise writes
`.KEY-SPLIT.PID.tmp/` and renames it to `KEY-SPLIT/` once complete. fs2mini itself has no test hooks.

After every kill, each checkpoint file present (`step_*.pt`, `best.pt`) must load and record the
tokenizer that tokenizer.model holds. At the end of each scenario the run must finish, its last step
checkpoint and best.pt must be bit-identical to the uninterrupted run's, and metrics.jsonl must hold
each (step, split) record once, the same records as the uninterrupted run.

    python benchmarks/kill_resume.py --kills 30
    python benchmarks/kill_resume.py --scenarios best concurrent   # some scenarios only
    python benchmarks/kill_resume.py --scenarios average --average-kills 10
    python benchmarks/kill_resume.py --scenarios prepared --prepared-kills 10
    python benchmarks/kill_resume.py --scenarios hf-import hf-export --hf-kills 12
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sentencepiece as spm
import torch
import tyro

from fs2mini.checkpoint import list_checkpoints
from fs2mini.prepared import verify
from fs2mini.staged import STAGING_SUFFIX

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic import write_reversal_tsv  # noqa: E402  (the tests' learnable corpus)

Scenario = Literal["random", "tokenizer", "first-checkpoint", "best", "concurrent", "average", "prepared", "hf-import",
                   "hf-export"]
SCENARIOS: tuple[Scenario, ...] = ("random", "tokenizer", "first-checkpoint", "best", "concurrent", "average", "prepared",
                                   "hf-import", "hf-export")
UNTRAINED: tuple[Scenario, ...] = ("hf-import", "hf-export")
"""Scenarios that need no uninterrupted training run (the others compare with it)."""
POLL_S = 0.0002
"""How often the file system is polled while waiting for a write to kill."""
TIMEOUT_S = 3600
"""Longest wait for any one run (a hang; niced runs on a busy 2-core machine took over 5 minutes)."""


@dataclass(frozen=True)
class SoakConfig:
    kills: int = 20
    """SIGKILLs of the `random` scenario."""
    tokenizer_kills: int = 20
    """SIGKILLs of the `tokenizer` scenario."""
    first_checkpoint_kills: int = 20
    """SIGKILLs of the `first-checkpoint` scenario."""
    best_kills: int = 21
    """SIGKILLs of the `best` scenario (spread over the validations that write best.pt)."""
    concurrent_trials: int = 6
    """Pairs of trainers started on one directory (`concurrent` scenario)."""
    average_kills: int = 10
    """SIGKILLs of `python -m fs2mini.average` inside its write (`average` scenario)."""
    prepared_kills: int = 10
    """SIGKILLs of a run inside its preparation of the data cache (`prepared` scenario)."""
    hf_kills: int = 6
    """SIGKILLs of `python -m fs2mini.hf import` (`hf-import` scenario) and of `export` (`hf-export`), each."""
    scenarios: tuple[Scenario, ...] = SCENARIOS
    """Which scenarios to run."""
    steps: int = 400
    """Training steps of the run."""
    checkpoint_every: int = 5
    """Checkpoint interval (small, so that kills often land during a write)."""
    seed: int = 0
    """Seed for the kill moments."""
    workdir: Path | None = None
    """Where runs are written (default: a temporary directory)."""
    output: Path | None = None
    """Also write the report as JSON here."""


def train_command(workdir: Path, run_dir: Path, cfg: SoakConfig, cache: str = "spm", data_cache: str = "data-cache") -> list[str]:
    """The run's command; `cache` and `data_cache` name its tokenizer cache and data cache in `workdir`."""
    return [sys.executable, "-m", "fs2mini.train", "--output-dir", str(run_dir), "data.corpus:tsv",
            "--data.corpus.path", str(workdir / "reverse.tsv"), "--tokenizer.vocab-size", "28",
            "--tokenizer.cache-dir", str(workdir / cache), "--data.cache-dir", str(workdir / data_cache),
            "--data.max-tokens", "512", "--model.model-dim", "128",
            "--model.num-encoder-layers", "2", "--model.num-decoder-layers", "2", "--model.ffn-inner-dim", "512",
            "--model.dropout-p", "0.1", "--trainer.max-steps", str(cfg.steps), "--trainer.checkpoint-every",
            str(cfg.checkpoint_every), "--trainer.keep-last-checkpoints", "3", "--trainer.validate-every", "100",
            "--trainer.log-every", "1", "--trainer.progress", "lines"]


AVERAGED = "averaged_last3.pt"
"""What `average_command` writes in the run's checkpoints/ (the run keeps its last 3 step checkpoints)."""


def average_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "fs2mini.average", str(run_dir), "--last", "3"]


# --- starting, watching and killing runs -------------------------------------------------------------

def start(command: list[str], log: Path) -> subprocess.Popen:
    """Start a run; its stderr goes to `log` (a pipe nobody reads would fill up and stall it)."""
    with open(log, "ab") as handle:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle)


def poll(process: subprocess.Popen, ready: Callable[[], Any], interval: float = POLL_S) -> Any:
    """Call `ready()` every `interval` s until it returns something truthy (returned); None when the
    process exits first."""
    deadline = time.monotonic() + TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        if found := ready():
            return found
        time.sleep(interval)
    return None


def kill(process: subprocess.Popen) -> bool:
    """SIGKILL `process` and reap it; False when it had already exited."""
    alive = process.poll() is None
    if alive:
        process.kill()
    process.wait()
    return alive


def temp_files(directory: Path, name: str) -> set[str]:
    """Temporary files of writes to `directory/name*` (`.NAME.XXXXXXXX.tmp`, see
    `fs2mini.checkpoint.write_atomically`), in progress or left by a killed write."""
    try:
        return {e.name for e in os.scandir(directory) if e.name.startswith(f".{name}") and e.name.endswith(".tmp")}
    except FileNotFoundError:
        return set()


def temp_file_filled(directory: Path, name: str, min_bytes: float, leftovers: set[str]) -> Path | None:
    """A temporary file of a write in progress to `directory/name*`, not one of `leftovers`, holding at
    least `min_bytes` bytes."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return None
    for entry in entries:
        if entry.name.startswith(f".{name}") and entry.name.endswith(".tmp") and entry.name not in leftovers:
            try:
                if entry.stat().st_size >= min_bytes:
                    return Path(entry.path)
            except FileNotFoundError:  # renamed (write complete) since the listing
                pass
    return None


def kill_inside_write(process: subprocess.Popen, directory: Path, name: str, min_bytes: float,
                      wanted: Callable[[], bool | str] = lambda: True) -> str:
    """SIGKILL `process` while it writes `directory/name*`, once the temporary file holds `min_bytes`.

    `wanted()` is asked when such a file is seen: False skips that write, the string "missed" gives
    up (the moment is gone). Returns "inside" when the temporary file outlived the process (the kill
    landed before the rename), else "missed" or "finished" (the run ended first). Files left by an
    earlier killed write (the run removes them once it has started) are not this write's."""
    leftovers = temp_files(directory, name)

    def target() -> Path | str | None:
        tmp = temp_file_filled(directory, name, min_bytes, leftovers)
        if tmp is None:
            return None
        verdict = wanted()
        return "missed" if verdict == "missed" else tmp if verdict else None

    found = poll(process, target)
    alive = kill(process)
    if not alive or found is None:
        return "finished"
    return "inside" if isinstance(found, Path) and found.exists() else "missed"


def logged(run_dir: Path, split: str = "train") -> list[int]:
    """Steps of metrics.jsonl's complete `split` lines, in file order."""
    try:
        lines = (run_dir / "metrics.jsonl").read_bytes().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        if record.get("split") == split:
            steps.append(record["step"])
    return steps


def metrics_file_id(run_dir: Path) -> int | None:
    """The inode of metrics.jsonl: a (re)started run replaces the file (dropping the steps it redoes)."""
    try:
        return (run_dir / "metrics.jsonl").stat().st_ino
    except FileNotFoundError:
        return None


def failure(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


def final_rerun(command: list[str], log: Path, problems: list[str]) -> bool:
    """After the kills, the command once more, uninterrupted (only if nothing failed yet): True if it completed;
    a failure is added to `problems` with the last line of its log."""
    if problems:
        return False
    with open(log, "ab") as handle:
        completed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=handle).returncode == 0
    if not completed:
        problems.append(f"the final rerun failed: {failure(log)}")
    return completed


# --- what a kill may not break -----------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damage(run_dir: Path) -> tuple[int, int]:
    """(checkpoint files that do not load, checkpoints whose tokenizer is not tokenizer.model)."""
    corrupt = mismatched = 0
    checkpoints = sorted((run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
    tokenizer = run_dir / "tokenizer.model"
    kept = sha256(tokenizer) if tokenizer.is_file() else None
    for path in checkpoints:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert "model" in state
        except Exception:
            corrupt += 1
            continue
        if kept is not None and state["tokenizer"]["sha256"] != kept:
            mismatched += 1
    return corrupt, mismatched


def pieces(path: Path) -> list[tuple[str, float]]:
    processor = spm.SentencePieceProcessor(model_file=str(path))
    return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]


def records(run_dir: Path) -> list[tuple[str, int]] | None:
    """(split, step) of every metrics.jsonl line, sorted; None if a line does not parse."""
    try:
        found = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_bytes().splitlines()]
    except (FileNotFoundError, ValueError):
        return None
    return sorted((r["split"], r["step"]) for r in found)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def same(a: Path, b: Path) -> bool:
    """Two checkpoint files hold the same weights, bit for bit."""
    x, y = weights(a), weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def identical(reference: Path, run_dir: Path) -> bool:
    """The last step checkpoint and best.pt hold the same weights, bit for bit."""
    ours, theirs = list_checkpoints(reference / "checkpoints"), list_checkpoints(run_dir / "checkpoints")
    best = (reference / "checkpoints" / "best.pt", run_dir / "checkpoints" / "best.pt")
    return (bool(theirs) and ours[-1].name == theirs[-1].name and same(ours[-1], theirs[-1])
            and best[1].is_file() and same(*best))


class Scene:
    """One scenario's run directory, its kills and its verdict."""

    def __init__(self, name: str, workdir: Path, cfg: SoakConfig, reference: Path, cache: str = "spm",
                 data_cache: str = "data-cache") -> None:
        self.name, self.workdir, self.reference = name, workdir, reference
        self.run_dir = workdir / name
        self.command = train_command(workdir, self.run_dir, cfg, cache, data_cache)
        self.log = workdir / f"{name}.log"
        self.moments: dict[str, int] = {}
        self.corrupt = self.mismatched = 0
        self.problems: list[str] = []

    def attempt(self) -> subprocess.Popen:
        return start(self.command, self.log)

    def after_kill(self, kill_number: int, total: int, moment: str) -> None:
        self.moments[moment] = self.moments.get(moment, 0) + 1
        corrupt, mismatched = damage(self.run_dir)
        self.corrupt += corrupt
        self.mismatched += mismatched
        names = [p.name for p in sorted((self.run_dir / "checkpoints").glob("*.pt"))] if (self.run_dir / "checkpoints").is_dir() else []
        print(f"{self.name} kill {kill_number}/{total}: {moment}; checkpoints {names}", flush=True)

    def refused(self, process: subprocess.Popen) -> bool:
        """A run that exited with an error instead of being killed: note it, the scenario has failed."""
        if process.returncode not in (None, 0, -9):
            self.problems.append(f"a rerun exited with {process.returncode}: {failure(self.log)}")
            return True
        return False

    def finish(self) -> dict[str, Any]:
        """Run to the end and compare with the uninterrupted run."""
        completed = final_rerun(self.command, self.log, self.problems)
        corrupt, mismatched = damage(self.run_dir)
        return self.report(completed, corrupt, mismatched)

    def report(self, completed: bool, corrupt: int, mismatched: int, **extra: Any) -> dict[str, Any]:
        self.corrupt += corrupt
        self.mismatched += mismatched
        same = completed and identical(self.reference, self.run_dir)
        metrics_ok = completed and records(self.run_dir) == records(self.reference)
        if completed and not same:
            self.problems.append("final weights differ from the uninterrupted run")
        if completed and not metrics_ok:
            self.problems.append("metrics.jsonl records differ from the uninterrupted run's (lost or repeated lines)")
        if self.corrupt or self.mismatched:
            self.problems.append(f"{self.corrupt} corrupt checkpoint loads, {self.mismatched} checkpoints "
                                 "whose tokenizer is not tokenizer.model")
        return {"kills": sum(n for m, n in self.moments.items() if m not in ("finished before the kill",)),
                "kill_moments": self.moments, "corrupt_checkpoints_found": self.corrupt,
                "tokenizer_mismatches": self.mismatched, "final_run_completed": completed,
                "final_weights_bit_identical": same, "metrics_complete": metrics_ok, **extra,
                "problems": self.problems, "passed": not self.problems}


# --- the scenarios -----------------------------------------------------------------------------------

def random_kills(scene: Scene, cfg: SoakConfig, rng: random.Random, full_size: int) -> dict[str, Any]:
    """Kills at random moments of training; every third one inside whatever checkpoint is being written."""
    for number in range(1, cfg.kills + 1):
        process = scene.attempt()
        start_lines = len(logged(scene.run_dir))
        # Training has started when two new lines are logged (a rerun first drops the redone steps' lines).
        poll(process, lambda: len(logged(scene.run_dir)) > start_lines + 1, interval=0.005)
        if number % 3 == 0:
            outcome = kill_inside_write(process, scene.run_dir / "checkpoints", "", rng.random() * full_size)
            moment = {"inside": "inside a checkpoint write", "missed": "missed a write (it completed first)"}.get(
                outcome, "finished before the kill")
        else:
            time.sleep(rng.uniform(0.0, 1.5))
            moment = "during training" if kill(process) else "finished before the kill"
        if scene.refused(process):
            break
        scene.after_kill(number, cfg.kills, moment)
    return scene.finish()


def tokenizer_kills(scene: Scene, cfg: SoakConfig, rng: random.Random, cache: Path) -> dict[str, Any]:
    """Odd kills while sentencepiece trains; even ones in the first steps, then the cache is emptied.

    An even attempt trains the tokenizer that the odd kill before it stopped: once it trains its steps, the
    killed training's temporary directory must be gone from the cache."""
    left: list[str] = []
    for number in range(1, cfg.tokenizer_kills + 1):
        old_temps = set(cache.glob(".spm-*.tmp")) if cache.is_dir() else set()
        had_tokenizer = (scene.run_dir / "tokenizer.model").is_file()
        old_metrics = metrics_file_id(scene.run_dir)
        process = scene.attempt()
        if number % 2 == 1:
            poll(process, lambda: cache.is_dir() and set(cache.glob(".spm-*.tmp")) - old_temps)
            time.sleep(rng.uniform(0.0, 0.02))
            alive = kill(process)
            cached = list(cache.glob("spm-*.model"))
            moment = ("finished before the kill" if not alive else
                      "after sentencepiece finished" if cached else
                      "while sentencepiece trained" + (" (tokenizer.model of an earlier try present)" if had_tokenizer else ""))
        else:
            first_steps = rng.randint(1, cfg.checkpoint_every - 2)
            poll(process, lambda: metrics_file_id(scene.run_dir) != old_metrics and len(logged(scene.run_dir)) >= first_steps,
                 interval=0.002)
            alive = kill(process)
            if alive:
                left += sorted(p.name for p in cache.glob(".spm-*.tmp")) if cache.is_dir() else []
            shutil.rmtree(cache, ignore_errors=True)  # the rerun trains the tokenizer again
            moment = "in the first steps, then tokenizer cache emptied" if alive else "finished before the kill"
        if scene.refused(process):
            break
        scene.after_kill(number, cfg.tokenizer_kills, moment)
    result = scene.finish()
    tokenizer = scene.run_dir / "tokenizer.model"
    same_pieces = tokenizer.is_file() and pieces(tokenizer) == pieces(scene.reference / "tokenizer.model")
    if not same_pieces:
        scene.problems.append("tokenizer.model does not hold the uninterrupted run's pieces")
        result["passed"] = False
    left += sorted(p.name for p in cache.glob(".spm-*.tmp")) if cache.is_dir() else []
    if left:
        scene.problems.append(f"temporary directories left in the tokenizer cache: {left}")
        result["passed"] = False
    return {**result, "tokenizer_pieces_as_uninterrupted": same_pieces, "tokenizer_cache_leftovers": left}


def first_checkpoint_kills(scene: Scene, cfg: SoakConfig, rng: random.Random, full_size: int) -> dict[str, Any]:
    """Kills inside the first checkpoint write; a miss (that write completed) starts a fresh directory."""
    checkpoints = scene.run_dir / "checkpoints"
    for number in range(1, cfg.first_checkpoint_kills + 1):
        process = scene.attempt()
        outcome = kill_inside_write(process, checkpoints, "step_", rng.random() * full_size,
                                    wanted=lambda: "missed" if list_checkpoints(checkpoints) else True)
        if scene.refused(process):
            break
        moment = {"inside": "inside the first checkpoint write",
                  "missed": "missed (the first write completed; started over in a new directory)"}.get(
            outcome, "finished before the kill")
        scene.after_kill(number, cfg.first_checkpoint_kills, moment)
        if outcome == "missed":
            shutil.rmtree(scene.run_dir)
    return scene.finish()


def best_kills(scene: Scene, cfg: SoakConfig, rng: random.Random, full_size: int) -> dict[str, Any]:
    """Kills inside best.pt writes: the same number at each validation that improves the loss."""
    valid = [json.loads(line) for line in (scene.reference / "metrics.jsonl").read_bytes().splitlines()]
    improving, best = [], float("inf")
    for record in (r for r in valid if r["split"] == "valid" and r["step"] > 0):
        if record["loss"] < best:
            improving.append(record["step"])
            best = record["loss"]
    targets = sorted(improving[i % len(improving)] for i in range(cfg.best_kills))
    for number, step in enumerate(targets, start=1):
        process = scene.attempt()
        outcome = kill_inside_write(process, scene.run_dir / "checkpoints", "best.pt", rng.random() * full_size,
                                    wanted=lambda: max(logged(scene.run_dir, "valid"), default=0) >= step)
        if scene.refused(process):
            break
        moment = {"inside": f"inside the best.pt write of step {step}",
                  "missed": f"missed the best.pt write of step {step} (it completed first)"}.get(
            outcome, "finished before the kill")
        scene.after_kill(number, cfg.best_kills, moment)
    return scene.finish()


def concurrent_trials(workdir: Path, cfg: SoakConfig, reference: Path) -> dict[str, Any]:
    """Two trainers on one directory: exactly one is refused, in one line naming the other's PID."""
    kinds = ["second started while the first trains", "both started at the same moment",
             "second started while the first starts up"]
    trials, corrupt, mismatched, problems, all_identical = [], 0, 0, [], True
    for number in range(cfg.concurrent_trials):
        kind = kinds[number % len(kinds)]
        scene = Scene(f"concurrent-{number + 1}", workdir, cfg, reference)
        logs = [workdir / f"{scene.name}-a.log", workdir / f"{scene.name}-b.log"]
        first = start(scene.command, logs[0])
        if kind == kinds[0]:
            poll(first, lambda: logged(scene.run_dir), interval=0.005)
        elif kind == kinds[2]:
            time.sleep(1.0)
        second = start(scene.command, logs[1])
        codes = [first.wait(TIMEOUT_S), second.wait(TIMEOUT_S)]
        processes = [first, second]
        losers = [i for i in (0, 1) if codes[i] != 0]
        trial: dict[str, Any] = {"kind": kind, "exit_codes": codes}
        if len(losers) != 1:
            scene.problems.append(f"{kind}: exit codes {codes}; expected exactly one refused")
        else:
            loser = losers[0]
            lines = logs[loser].read_text(errors="replace").strip().splitlines()
            trial["refusal"] = lines
            if not (len(lines) == 1 and lines[0].startswith("error:") and f"PID {processes[1 - loser].pid} " in lines[0]):
                scene.problems.append(f"{kind}: the refused trainer said {lines}; expected one error: line naming "
                                      f"PID {processes[1 - loser].pid}")
        result = scene.report(0 in codes, *damage(scene.run_dir))
        trials.append(trial)
        corrupt += result["corrupt_checkpoints_found"]
        mismatched += result["tokenizer_mismatches"]
        all_identical &= result["final_weights_bit_identical"] and result["metrics_complete"]
        problems += scene.problems
        print(f"concurrent trial {number + 1}/{cfg.concurrent_trials}: {kind}: exit codes {codes}; "
              f"{trial.get('refusal')}", flush=True)
    return {"trials": trials, "refused_with_the_holders_pid": sum(
                1 for t in trials if len(t.get("refusal", [])) == 1 and "PID" in t["refusal"][0]),
            "corrupt_checkpoints_found": corrupt, "tokenizer_mismatches": mismatched,
            "final_weights_bit_identical": all_identical, "problems": problems, "passed": not problems}


def average_kills(workdir: Path, cfg: SoakConfig, rng: random.Random, reference: Path) -> dict[str, Any]:
    """Kills inside `average`'s write: the output is the complete average or absent; a rerun cleans up and writes it."""
    expected_run = workdir / "average-uninterrupted"
    shutil.copytree(reference, expected_run)
    subprocess.run(average_command(expected_run), check=True, capture_output=True)
    expected = expected_run / "checkpoints" / AVERAGED
    run_dir = workdir / "average"
    shutil.copytree(reference, run_dir)
    output, log = run_dir / "checkpoints" / AVERAGED, workdir / "average.log"
    moments: dict[str, int] = {}
    problems: list[str] = []
    incomplete = 0
    for number in range(1, cfg.average_kills + 1):
        process = start(average_command(run_dir), log)
        outcome = kill_inside_write(process, run_dir / "checkpoints", AVERAGED, rng.random() * expected.stat().st_size)
        moment = {"inside": "inside the averaged checkpoint's write",
                  "missed": "missed the write (it completed first)"}.get(outcome, "finished before the kill")
        moments[moment] = moments.get(moment, 0) + 1
        if process.returncode not in (0, -9):
            problems.append(f"average exited with {process.returncode}: {failure(log)}")
            break
        try:
            complete = not output.exists() or same(output, expected)
        except Exception:  # noqa: BLE001 (a file torch cannot read is what this looks for)
            complete = False
        incomplete += not complete
        print(f"average kill {number}/{cfg.average_kills}: {moment}; {AVERAGED} "
              f"{'absent' if not output.exists() else 'complete' if complete else 'INCOMPLETE'}; temporary files "
              f"{sorted(temp_files(run_dir / 'checkpoints', AVERAGED))}", flush=True)
    completed = final_rerun(average_command(run_dir), log, problems)
    left = sorted(temp_files(run_dir / "checkpoints", AVERAGED))
    identical_average = completed and same(output, expected)
    if incomplete:
        problems.append(f"{incomplete} times {AVERAGED} was there but not the complete average")
    if left:
        problems.append(f"temporary files left after the rerun: {left}")
    if completed and not identical_average:
        problems.append("the rerun's average differs from the uninterrupted one")
    return {"kills": sum(n for m, n in moments.items() if m != "finished before the kill"), "kill_moments": moments,
            "incomplete_outputs_found": incomplete, "final_run_completed": completed, "temporary_files_left": left,
            "average_bit_identical": identical_average, "problems": problems, "passed": not problems}


def split_directories(cache: Path) -> dict[str, Path]:
    """The prepared splits a later run opens from `cache` (`KEY-SPLIT/`; not the hidden temporary directories)."""
    if not cache.is_dir():
        return {}
    return {p.name: p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")}


def preparations(cache: Path) -> set[str]:
    """Temporary directories of preparations in progress or killed (`.KEY-SPLIT.PID.tmp/`, fs2mini/prepared.py)."""
    if not cache.is_dir():
        return set()
    return {p.name for p in cache.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")}


def preparation_filled(cache: Path, split: str, leftovers: set[str], min_bytes: float) -> Path | None:
    """A preparation of `split` (`KEY-SPLIT`) in progress in `cache`, not one of `leftovers`, holding `min_bytes`."""
    for name in preparations(cache) - leftovers:
        if name[1:].rsplit(".", 2)[0] != split:  # .KEY-SPLIT.PID.tmp
            continue
        try:
            held = sum(entry.stat().st_size for entry in os.scandir(cache / name))
        except FileNotFoundError:  # renamed (complete) since the listing
            continue
        if held >= min_bytes:
            return cache / name
    return None


def same_split(ours: Path, theirs: Path) -> bool:
    """Two prepared splits hold the same arrays, text and records (meta.json's file times aside)."""
    names = sorted(p.name for p in ours.iterdir())
    if names != sorted(p.name for p in theirs.iterdir()):
        return False
    for name in names:
        if name == "meta.json":
            a, b = (json.loads((d / name).read_text()) for d in (ours, theirs))
            for meta in (a, b):
                for record in meta["files"].values():
                    record.pop("mtime_ns")
            if a != b:
                return False
        elif (ours / name).read_bytes() != (theirs / name).read_bytes():
            return False
    return True


def prepared_kills(scene: Scene, cfg: SoakConfig, rng: random.Random, cache: Path, expected: Path) -> dict[str, Any]:
    """Kills inside preparations of the data cache `cache`; `expected` holds the uninterrupted run's cache.

    The kills take the splits in turn (train, then valid, as a run prepares them); the split a kill is meant for is
    removed from the cache first if an earlier attempt completed it. After each kill, a split directory that does not
    verify would be prepared again with a warning, and one that verifies but differs would be trusted: both are
    counted as failures."""
    wanted = split_directories(expected)
    sizes = {name: sum(p.stat().st_size for p in path.iterdir()) for name, path in wanted.items()}
    order = sorted(wanted, key=lambda name: name.endswith("-valid"))
    damaged = trusted_wrong = 0
    for number in range(1, cfg.prepared_kills + 1):
        split = order[(number - 1) % len(order)]
        shutil.rmtree(cache / split, ignore_errors=True)
        leftovers = preparations(cache)
        process = scene.attempt()
        min_bytes = rng.random() * sizes[split]

        def target() -> Path | str | None:
            found = preparation_filled(cache, split, leftovers, min_bytes)
            return found if found is not None else "missed" if (cache / split).is_dir() else None

        found = poll(process, target)
        alive = kill(process)
        moment = ("finished before the kill" if not alive or found is None else
                  f"inside the preparation of {split.rsplit('-', 1)[1]}" if isinstance(found, Path) and found.exists()
                  else f"missed (the preparation of {split.rsplit('-', 1)[1]} completed first)")
        if scene.refused(process):
            break
        for name, path in split_directories(cache).items():
            if verify(path) is not None:
                damaged += 1
            elif name not in wanted or not same_split(path, wanted[name]):
                trusted_wrong += 1
        scene.after_kill(number, cfg.prepared_kills, moment)
        print(f"  data cache: {sorted(split_directories(cache))}; temporary {sorted(preparations(cache))}", flush=True)
    result = scene.finish()
    left = sorted(preparations(cache))
    final = split_directories(cache)
    complete = wanted.keys() <= final.keys() and all(same_split(final[name], wanted[name]) for name in wanted)
    if damaged or trusted_wrong:
        scene.problems.append(f"after the kills the data cache held {damaged} damaged and {trusted_wrong} intact-looking "
                              "but different split directories")
    if left:
        scene.problems.append(f"temporary directories left in the data cache: {left}")
    if result["final_run_completed"] and not complete:
        scene.problems.append("the data cache after the final run differs from the uninterrupted run's")
    return {**result, "damaged_splits_found": damaged, "trusted_but_different_splits_found": trusted_wrong,
            "data_cache_leftovers": left, "data_cache_as_uninterrupted": complete, "problems": scene.problems,
            "passed": not scene.problems}


def staged_scratch(out: Path) -> set[str]:
    """The hidden scratch directories of `staged` writes of `out` in its folder, in progress or left by a kill."""
    try:
        return {e.name for e in os.scandir(out.parent) if e.name.startswith(f".{out.name}.") and e.name.endswith(STAGING_SUFFIX)}
    except FileNotFoundError:
        return set()


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` so far (0 once it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # renamed or removed since the listing
                pass
    return total


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` by its relative name, with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def hf_kills(name: Literal["hf-import", "hf-export"], workdir: Path, cfg: SoakConfig, rng: random.Random) -> dict[str, Any]:
    """Kills of `python -m fs2mini.hf import` or `export`: OUT is whole or absent after each, leftovers go, reruns work."""
    from test_hf import write_nllb_dir  # (needs transformers, as these scenarios do)

    source, imported = workdir / "hf-source", workdir / "hf-reference" / "imported"
    if not source.is_dir():  # (shared by both scenarios) 4+4 layers 256 wide: a 21 MB best.pt or model.safetensors
        write_nllb_dir(source, layers=4, dim=256)
        imported.parent.mkdir()
        subprocess.run([sys.executable, "-m", "fs2mini.hf", "import", str(source), str(imported)], check=True,
                       capture_output=True)
    out = workdir / name  # the uninterrupted output is written under OUT's own name, then moved aside: config.json
    expected = workdir / "hf-reference" / name  # records the run directory, so an import's bytes depend on its path
    command = ([sys.executable, "-m", "fs2mini.hf", "import", str(source), str(out)] if name == "hf-import" else
               [sys.executable, "-m", "fs2mini.hf", "export", str(imported), str(out)])
    began = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    duration = time.perf_counter() - began
    out.rename(expected)
    reference, size = tree(expected), tree_bytes(expected)
    log = workdir / f"{name}.log"
    moments: dict[str, int] = {}
    problems: list[str] = []
    incomplete = survived = 0
    for number in range(1, cfg.hf_kills + 1):
        shutil.rmtree(out, ignore_errors=True)  # (complete: a rerun into it would be refused, rightly)
        earlier = staged_scratch(out)
        process = start(command, log)
        if number % 3 == 0:
            time.sleep(rng.uniform(0.0, duration))
            found = None
        else:
            min_bytes = rng.random() * size

            def target() -> Path | str | None:
                for scratch in staged_scratch(out) - earlier:
                    if tree_bytes(out.parent / scratch) >= min_bytes:
                        return out.parent / scratch
                return "missed" if out.is_dir() else None

            found = poll(process, target)
        alive = kill(process)
        where = ("after the write" if out.exists() else "inside the write" if staged_scratch(out) - earlier
                 else "before the write")
        moment = ("finished before the kill" if not alive else f"at a random moment ({where})" if number % 3 == 0 else
                  "inside the staged write" if isinstance(found, Path) and not out.exists() else
                  "missed the write (it completed first)")
        moments[moment] = moments.get(moment, 0) + 1
        if process.returncode not in (0, -9):
            problems.append(f"{name} exited with {process.returncode}: {failure(log)}")
            break
        complete = not out.exists() or tree(out) == reference
        incomplete += not complete
        left = staged_scratch(out)
        # Once this command has made its own scratch directory (or finished), the earlier ones must be gone.
        started = not alive or out.exists() or bool(left - earlier)
        survived += bool(started and left & earlier)
        print(f"{name} kill {number}/{cfg.hf_kills}: {moment}; OUT "
              f"{'absent' if not out.exists() else 'complete' if complete else 'INCOMPLETE'}; scratch {sorted(left)}",
              flush=True)
    loadable = False
    if not problems:
        shutil.rmtree(out, ignore_errors=True)
    completed = final_rerun(command, log, problems)
    left = sorted(staged_scratch(out))
    same_output = completed and tree(out) == reference
    if same_output:
        loadable = loads(name, out)
    if incomplete:
        problems.append(f"{incomplete} times OUT was there but not the uninterrupted command's output")
    if survived:
        problems.append(f"{survived} times a killed command's scratch directory outlived the next command's start")
    if left:
        problems.append(f"scratch directories left after the final rerun: {left}")
    if completed and not same_output:
        problems.append("the final rerun's OUT differs from the uninterrupted command's")
    if same_output and not loadable:
        problems.append("the final OUT does not load")
    return {"kills": sum(n for m, n in moments.items() if m != "finished before the kill"), "kill_moments": moments,
            "incomplete_outputs_found": incomplete, "scratch_outliving_a_rerun": survived, "final_run_completed": completed,
            "scratch_left": left, "output_as_uninterrupted": same_output, "output_loads": loadable, "problems": problems,
            "passed": not problems}


def loads(name: str, out: Path) -> bool:
    """OUT of an import translates with fs2mini; OUT of an export loads in transformers."""
    try:
        if name == "hf-import":
            from fs2mini.translator import Translator

            return isinstance(Translator.from_run(out, device="cpu")("the cat"), str)
        import transformers

        return transformers.AutoModelForSeq2SeqLM.from_pretrained(out) is not None
    except Exception as err:  # noqa: BLE001 (whatever fails to load is the finding)
        print(f"{out} does not load: {type(err).__name__}: {err}", flush=True)
        return False


def main(cfg: SoakConfig) -> dict:
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="fs2mini-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    write_reversal_tsv(workdir / "reverse.tsv", 3000)
    rng = random.Random(cfg.seed)
    started = time.perf_counter()

    reference = workdir / "uninterrupted"
    if set(cfg.scenarios) - set(UNTRAINED):
        subprocess.run(train_command(workdir, reference, cfg), check=True, capture_output=True)
        full_size = list_checkpoints(reference / "checkpoints")[-1].stat().st_size
    report: dict[str, Any] = {"steps": cfg.steps, "checkpoint_every": cfg.checkpoint_every, "scenarios": {}}
    for name in cfg.scenarios:
        began = time.perf_counter()
        if name == "random":
            result = random_kills(Scene(name, workdir, cfg, reference), cfg, rng, full_size)
        elif name == "tokenizer":
            result = tokenizer_kills(Scene(name, workdir, cfg, reference, cache="spm-tokenizer"), cfg, rng,
                                     workdir / "spm-tokenizer")
        elif name == "first-checkpoint":
            result = first_checkpoint_kills(Scene(name, workdir, cfg, reference), cfg, rng, full_size)
        elif name == "best":
            result = best_kills(Scene(name, workdir, cfg, reference), cfg, rng, full_size)
        elif name == "average":
            result = average_kills(workdir, cfg, rng, reference)
        elif name in UNTRAINED:
            result = hf_kills(name, workdir, cfg, rng)
        elif name == "prepared":
            result = prepared_kills(Scene(name, workdir, cfg, reference, data_cache="data-cache-kills"), cfg, rng,
                                    workdir / "data-cache-kills", workdir / "data-cache")
        else:
            result = concurrent_trials(workdir, cfg, reference)
        result["seconds"] = round(time.perf_counter() - began, 1)
        report["scenarios"][name] = result
        print(f"{name}: {'passed' if result['passed'] else 'FAILED: ' + '; '.join(result['problems'])}\n"
              f"{json.dumps(result)}", flush=True)  # so a soak cut short still reports what it finished
    report["passed"] = all(r["passed"] for r in report["scenarios"].values())
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    if cfg.output is not None:
        cfg.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    from fs2mini.errors import exit_on_user_error

    with exit_on_user_error():
        result = main(tyro.cli(SoakConfig))
    sys.exit(0 if result["passed"] else 1)
