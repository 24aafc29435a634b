"""Soak check: SIGKILL a training run at random moments, resume it each time, verify nothing is lost.

Trains a tiny model on the synthetic reversal corpus with frequent checkpoints, kills it with
SIGKILL `--kills` times (some at random moments during training, some exactly while a checkpoint
is being written), restarts the same command after each kill, and reports:
- runs completed and kills delivered,
- corrupt checkpoints found after any kill (every `step_*.pt` present must load; must be 0),
- whether the final weights are bit-identical to an uninterrupted run with the same config.

    python benchmarks/kill_resume.py --kills 20
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from fs2mini.checkpoint import list_checkpoints
from fs2mini.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic import write_reversal_tsv  # noqa: E402  (the tests' learnable corpus)


@dataclass(frozen=True)
class SoakConfig:
    kills: int = 20
    """Number of SIGKILLs to deliver."""
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


def train_command(workdir: Path, run_dir: Path, cfg: SoakConfig) -> list[str]:
    return [sys.executable, "-m", "fs2mini.train", "--output-dir", str(run_dir), "data.corpus:tsv",
            "--data.corpus.path", str(workdir / "reverse.tsv"), "--tokenizer.vocab-size", "28",
            "--tokenizer.cache-dir", str(workdir / "spm"), "--data.max-tokens", "512", "--model.model-dim", "128",
            "--model.num-encoder-layers", "2", "--model.num-decoder-layers", "2", "--model.ffn-inner-dim", "512",
            "--model.dropout-p", "0.1", "--trainer.max-steps", str(cfg.steps), "--trainer.checkpoint-every",
            str(cfg.checkpoint_every), "--trainer.keep-last-checkpoints", "3", "--trainer.validate-every", "100",
            "--trainer.log-every", "1", "--trainer.progress", "lines"]


def count_corrupt(run_dir: Path) -> int:
    corrupt = 0
    for path in list_checkpoints(run_dir / "checkpoints"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert "model" in state
        except Exception:
            corrupt += 1
    return corrupt


def logged_lines(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def kill_once(command: list[str], run_dir: Path, during_write: bool, rng: random.Random) -> str:
    """Start the run, SIGKILL it once it trains (at a random moment, or inside a checkpoint write)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start_lines = logged_lines(run_dir)
    deadline = time.monotonic() + 120
    while process.poll() is None and logged_lines(run_dir) <= start_lines + 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    moment = "finished before the kill"
    if during_write:
        while process.poll() is None and time.monotonic() < deadline:
            if list((run_dir / "checkpoints").glob(".*.tmp")):
                moment = "during a checkpoint write"
                break
            time.sleep(0.0005)
    else:
        time.sleep(rng.uniform(0.0, 1.5))
        moment = "during training"
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    else:
        moment = "finished before the kill"
    process.wait()
    return moment


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(list_checkpoints(run_dir / "checkpoints")[-1], weights_only=True)["model"]


def main(cfg: SoakConfig) -> dict:
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="fs2mini-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    write_reversal_tsv(workdir / "reverse.tsv", 3000)
    rng = random.Random(cfg.seed)
    started = time.perf_counter()

    reference = workdir / "uninterrupted"
    subprocess.run(train_command(workdir, reference, cfg), check=True, capture_output=True)

    soaked = workdir / "killed"
    command = train_command(workdir, soaked, cfg)
    moments: dict[str, int] = {}
    corrupt = 0
    for kill in range(cfg.kills):
        moment = kill_once(command, soaked, during_write=kill % 3 == 2, rng=rng)
        moments[moment] = moments.get(moment, 0) + 1
        corrupt += count_corrupt(soaked)
        print(f"kill {kill + 1}/{cfg.kills}: {moment}; checkpoints {[p.name for p in list_checkpoints(soaked / 'checkpoints')]}",
              flush=True)
    finish = subprocess.run(command, capture_output=True, text=True)
    if finish.returncode != 0:
        raise UserError(f"the final resumed run failed: {finish.stderr.strip().splitlines()[-1]}")
    expected, got = final_weights(reference), final_weights(soaked)
    identical = expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    report = {
        "kills": cfg.kills,
        "kill_moments": moments,
        "runs_killed": cfg.kills - moments.get("finished before the kill", 0),
        "final_resumed_run_completed": finish.returncode == 0,
        "corrupt_checkpoints_found": corrupt,
        "final_weights_bit_identical": identical,
        "steps": cfg.steps,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    if cfg.output is not None:
        cfg.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    from fs2mini.errors import exit_on_user_error

    with exit_on_user_error():
        result = main(tyro.cli(SoakConfig))
    sys.exit(0 if result["corrupt_checkpoints_found"] == 0 and result["final_weights_bit_identical"] else 1)
