"""Multi-process training with torchrun on CPU (Gloo): DDP and FSDP2 match one process, checkpoints
move between world sizes, and a failing rank ends the job quickly with its own message."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fs2mini.checkpoint import list_checkpoints, load_checkpoint
from helpers import read_metrics

pytestmark = pytest.mark.slow

SENTENCES_PER_BATCH = 8


@pytest.fixture(scope="module")
def identical_corpus(tmp_path_factory) -> Path:
    """192 identical training verses, so every batch holds the same sentences on any rank.

    That makes "2 ranks × 1 batch" and "1 process × 2 accumulated batches" the same update, which
    is what the equivalence tests compare. Validation/test books hold varied verses.
    """
    path = tmp_path_factory.mktemp("bible") / "bible.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT)")
    rows = []
    for verse in range(1, 193):
        rows += [(0, "k", 1, 1, verse, "a b c d e f"), (0, "l", 1, 1, verse, "f e d c b a")]
    for book, text in [(2, "a b c"), (2, "d e f a"), (3, "b c d"), (3, "e f a b")]:
        rows += [(0, "k", book, 1, len(rows), text), (0, "l", book, 1, len(rows), " ".join(reversed(text.split())))]
    db.executemany("INSERT INTO bible VALUES (?,?,?,?,?,?)", rows)
    db.commit()
    db.close()
    return path


def flags(db: Path, out: Path, cache: Path, steps: int, *extra: str) -> list[str]:
    # 8 tokens per sentence (__eng__ + 6 letters + </s>), so 64 tokens = 8 sentences per batch.
    return ["--output-dir", str(out), "data.corpus:bible", "--data.corpus.db-path", str(db), "--data.corpus.valid-books", "2",
            "--data.corpus.test-books", "3", "--tokenizer.vocab-size", "15", "--tokenizer.cache-dir", str(cache),
            "--data.max-tokens", str(8 * SENTENCES_PER_BATCH), "--model.model-dim", "32", "--model.num-encoder-layers", "2",
            "--model.num-decoder-layers", "2", "--model.ffn-inner-dim", "64", "--model.dropout-p", "0",
            "--model.attention-dropout-p", "0", "--model.ffn-dropout-p", "0", "--trainer.autocast", "off",
            "--trainer.max-steps", str(steps), "--trainer.validate-every", "2", "--trainer.log-every", "1",
            "--trainer.progress", "lines", *extra]


def torchrun(nproc: int, *args: str, module: str = "fs2mini.train", timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    command += ["-m", module, *args] if module else list(args)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])["model"]


@pytest.fixture(scope="module")
def one_process_run(identical_corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("single")
    result = subprocess.run([sys.executable, "-m", "fs2mini.train",
                             *flags(identical_corpus, root / "run", root / "cache", 3, "--trainer.grad-accum-steps", "2")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root / "run"


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_with_twice_the_batch(mode, identical_corpus, one_process_run, tmp_path):
    result = torchrun(2, *flags(identical_corpus, tmp_path / "run", tmp_path / "cache", 3, "--trainer.data-parallel", mode))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"2 processes ({mode})" in result.stderr
    expected = weights(one_process_run)
    got = weights(tmp_path / "run")
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-4, msg=name)
    # Only rank 0 logs: one record per step and split.
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
    single = {r["step"]: r["loss"] for r in read_metrics(one_process_run / "metrics.jsonl") if r["split"] == "valid"}
    for record in (r for r in records if r["split"] == "valid"):
        assert record["loss"] == pytest.approx(single[record["step"]], rel=1e-4)  # reduced over ranks


LEAK_PROBE = """
import gc, sys
from torch.nn.parallel import DistributedDataParallel
from fs2mini.train import main
main()
alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
print(f"DDP modules alive after training: {alive}", file=sys.stderr)
"""


def test_a_finished_rank_holds_no_ddp_module(identical_corpus, tmp_path):
    """A DDP module that outlives training (kept by a reference cycle until a garbage collection) holds the Gloo
    process group, whose threads were then torn down during interpreter exit: one CI run in many aborted
    with "terminate called without an active exception". Training must leave nothing for the exit to free."""
    probe = tmp_path / "probe.py"
    probe.write_text(LEAK_PROBE)
    result = torchrun(2, str(probe), *flags(identical_corpus, tmp_path / "run", tmp_path / "cache", 1), module="")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("DDP modules alive after training: 0") == 2, result.stderr[-3000:]


def test_ddp_checkpoint_resumes_in_one_process_and_fsdp_checkpoint_loads(identical_corpus, tmp_path):
    ddp = tmp_path / "ddp"
    assert torchrun(2, *flags(identical_corpus, ddp, tmp_path / "cache", 2)).returncode == 0
    resumed = subprocess.run([sys.executable, "-m", "fs2mini.train",
                              *flags(identical_corpus, ddp, tmp_path / "cache", 4, "--trainer.grad-accum-steps", "2")],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 2" in resumed.stderr
    assert load_checkpoint(list_checkpoints(ddp / "checkpoints")[-1])["step"] == 4

    fsdp = tmp_path / "fsdp"
    assert torchrun(2, *flags(identical_corpus, fsdp, tmp_path / "cache", 2, "--trainer.data-parallel", "fsdp")).returncode == 0
    state = load_checkpoint(list_checkpoints(fsdp / "checkpoints")[-1])
    assert state["model"]["embed.weight"].shape == (15, 32)  # full, unsharded tensors
    resumed = torchrun(2, *flags(identical_corpus, fsdp, tmp_path / "cache", 3, "--trainer.data-parallel", "fsdp"))
    assert resumed.returncode == 0 and "resumed at step 2" in resumed.stderr, resumed.stderr[-3000:]


def test_a_failing_rank_ends_the_job_with_its_message(identical_corpus, tmp_path):
    recipe = tmp_path / "failing.py"
    recipe.write_text(
        "import os\n"
        "from dataclasses import dataclass\n"
        "from fs2mini.config import TrainConfig\n"
        "from fs2mini.errors import UserError\n"
        "from fs2mini.task import TaskConfig\n"
        "from fs2mini.train import main\n\n"
        "@dataclass(frozen=True)\n"
        "class FailingOnRank1(TaskConfig):\n"
        "    def build(self, vocab):\n"
        "        if os.environ['RANK'] == '1':\n"
        "            raise UserError('rank 1 found a bad shard (simulated)')\n"
        "        return super().build(vocab)\n\n"
        "main(TrainConfig(task=FailingOnRank1()))\n"
    )
    started = time.monotonic()
    result = torchrun(2, str(recipe), *flags(identical_corpus, tmp_path / "run", tmp_path / "cache", 50), module="", timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "error: rank 1 found a bad shard (simulated)" in result.stderr
    assert elapsed < 60, f"the job took {elapsed:.0f}s to stop"


def test_best_by_bleu_under_fsdp_is_refused_before_any_work(identical_corpus, tmp_path):
    """FSDP ranks hold only shards of the weights, so validation cannot translate: say so at once."""
    run = tmp_path / "run"
    result = torchrun(2, *flags(identical_corpus, run, tmp_path / "cache", 2, "--trainer.data-parallel", "fsdp",
                                "--trainer.best-metric", "bleu"), timeout=120)
    assert result.returncode != 0
    assert "error: --trainer.best-metric bleu is not available with --trainer.data-parallel fsdp; use loss" in result.stderr
    assert "fs2mini/trainer.py" not in result.stderr  # no traceback from our code (torchrun prints its own summary)
    assert not (run / "checkpoints").exists() and not (run / "tokenizer.model").exists()
