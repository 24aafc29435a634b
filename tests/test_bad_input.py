"""Bad input, table-driven: each case expects an exit code, a message naming the culprit, no
traceback, and every file the user already had left untouched.

Cases run `fs2mini.train.main` in-process (a traceback would surface as an exception other than
SystemExit), on a workspace with a small valid corpus that a case may corrupt first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fs2mini.config import TrainConfig
from synthetic import write_reversal_tsv
from fs2mini.train import main

from conftest import tiny_config


@dataclasses.dataclass
class Case:
    name: str
    args: list[str]
    exit_code: int
    message: str  # must appear in the single error line (or in the warning, for exit 0)
    prepare: Callable[[Path], None] = lambda ws: None
    one_line: bool = True  # tyro's own parse errors are a boxed, multi-line message


def write_bytes(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda ws: (ws / name).write_bytes(data)


def good_lines(count: int = 300) -> bytes:
    return "".join(f"{'a b c d'[: 1 + i % 7]} {i % 10}\t{i % 10} x\n" for i in range(count)).encode()


def train_then(corrupt: Callable[[Path], None]) -> Callable[[Path], None]:
    """Train 2 steps (one checkpoint), then damage the run directory."""

    def prepare(ws: Path) -> None:
        main(workspace_config(ws), argv=["--trainer.max-steps", "2"])
        corrupt(ws / "run" / "checkpoints" / "step_00000002.pt")

    return prepare


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def other_shape(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["model"] = {name: torch.zeros(3) for name in state["model"]}
    torch.save(state, path)


CASES = [
    # Corpus files.
    Case("missing tab, strict", ["check", "data", "--data.strict"], 2, "corpus.tsv:301: no tab",
         write_bytes("corpus.tsv", good_lines() + b"no tab on this line\n")),
    Case("missing tab, default skips with line number", ["check", "data"], 0, "no tab: 1 (",
         write_bytes("corpus.tsv", good_lines() + b"no tab on this line\n")),
    Case("empty source, strict", ["check", "data", "--data.strict"], 2, "corpus.tsv:1: empty source or target",
         write_bytes("corpus.tsv", b"\tonly target\n" + good_lines())),
    Case("empty target, default", ["check", "data"], 0, "empty source or target: 1",
         write_bytes("corpus.tsv", good_lines() + b"only source\t\n")),
    Case("invalid UTF-8, strict", ["check", "data", "--data.strict"], 2, "corpus.tsv:3: invalid utf-8",
         write_bytes("corpus.tsv", b"a\tb\nc\td\n\xff\xfe\tx\n" + good_lines())),
    Case("invalid UTF-8, default", ["check", "data"], 0, "invalid utf-8: 1",
         write_bytes("corpus.tsv", b"\xff\xfe\tx\n" + good_lines())),
    Case("CRLF line endings are fine", ["check", "data"], 0, "check data: OK",
         write_bytes("corpus.tsv", good_lines().replace(b"\n", b"\r\n"))),
    Case("1 MB line is skipped as too long", ["check", "data"], 0, "longer than --data.max-source-len",
         write_bytes("corpus.tsv", good_lines() + b"a " * 500_000 + b"\tb\n")),
    Case("empty file", ["check", "tokenizer"], 2, "corpus.tsv has no training sentence pairs (it is empty)",
         write_bytes("corpus.tsv", b"")),
    Case("only malformed lines", ["check", "tokenizer"], 2, "has no training sentence pairs (skipped: no tab: 2",
         write_bytes("corpus.tsv", b"x\ny\n")),
    Case("missing file", ["check", "data", "--data.corpus.path", "nope.tsv"], 2, "nope.tsv does not exist"),
    Case("directory instead of file", ["check", "data", "--data.corpus.path", "."], 2, "is a directory; expected a text file"),
    # Command-line values.
    Case("model_dim not divisible by heads", ["check", "model", "--model.model-dim", "30"], 2,
         "--model.num-encoder-attn-heads 4 must divide --model.model-dim 30"),
    Case("zero lr", ["--optimizer.lr", "0"], 2, "--optimizer.lr must be positive, got 0.0"),
    Case("negative lr", ["--optimizer.lr", "-1e-3"], 2, "--optimizer.lr must be positive, got -0.001"),
    Case("zero batch tokens", ["--data.max-tokens", "0"], 2, "--data.max-tokens must be a positive integer, got 0"),
    Case("negative batch tokens", ["--data.max-tokens", "-4"], 2, "--data.max-tokens must be a positive integer, got -4"),
    Case("zero steps", ["--trainer.max-steps", "0"], 2, "--trainer.max-steps must be a positive integer, got 0"),
    Case("negative steps", ["--trainer.max-steps", "-3"], 2, "--trainer.max-steps must be a positive integer, got -3"),
    Case("vocab too small", ["check", "tokenizer", "--tokenizer.vocab-size", "5"], 2, "--tokenizer.vocab-size 5 is too small"),
    Case("vocab too large for sentencepiece", ["check", "tokenizer", "--tokenizer.vocab-size", "100000"], 2,
         "--tokenizer.vocab-size 100000: sentencepiece training failed: Vocabulary size too high"),
    Case("unknown arch name", ["model:bogus"], 2, "model:bogus", one_line=False),
    Case("unknown Bible language code", ["data.corpus:bible", "--data.corpus.source-bible", "qq"], 2,
         "--data.corpus.source-bible: unknown Bible code 'qq'"),
    Case("malformed language code", ["--data.corpus.target-lang", "French!"], 2,
         "--data.corpus.target-lang 'French!' is not a language code"),
    Case("label smoothing out of range", ["--task.label-smoothing", "1.5"], 2, "--task.label-smoothing must be in [0, 1), got 1.5"),
    Case("dropout out of range", ["--model.dropout-p", "1.0"], 2, "--model.dropout-p must be in [0, 1), got 1.0"),
    Case("negative warmup", ["--lr-scheduler.warmup-steps", "-1"], 2, "--lr-scheduler.warmup-steps must be >= 0, got -1"),
    Case("zero grad accumulation", ["--trainer.grad-accum-steps", "0"], 2, "--trainer.grad-accum-steps must be a positive integer"),
    Case("unknown device", ["--trainer.device", "tpu9"], 2, "--trainer.device 'tpu9' is not a device"),
    Case("negative validation sentences", ["--trainer.valid-translate-sentences", "-1"], 2,
         "--trainer.valid-translate-sentences must be >= 0, got -1"),
    Case("zero validation beam", ["--trainer.valid-beam-size", "0"], 2, "--trainer.valid-beam-size must be a positive integer, got 0"),
    Case("best by BLEU without translation", ["--trainer.best-metric", "bleu", "--trainer.valid-translate-sentences", "0"], 2,
         "--trainer.best-metric bleu needs --trainer.valid-translate-sentences > 0"),
    Case("not a number", ["--model.model-dim", "wide"], 2, "--model.model-dim", one_line=False),
    # Checkpoints.
    Case("truncated checkpoint", ["--trainer.max-steps", "4"], 2, "no readable checkpoint in", train_then(truncate)),
    Case("random-bytes checkpoint", ["--trainer.max-steps", "4"], 2, "no readable checkpoint in", train_then(random_bytes)),
    Case("checkpoint from another model shape", ["--trainer.max-steps", "4"], 2, "does not fit the configured model",
         train_then(other_shape)),
    Case("resume with a different model shape", ["--trainer.max-steps", "4", "--model.ffn-inner-dim", "96"], 2,
         "trained with different model.ffn_inner_dim", train_then(lambda path: None)),
    # Run directory.
    Case("run dir not writable", ["--output-dir", "corpus.tsv/run"], 2, "corpus.tsv/run is not writable"),
]


def workspace_config(ws: Path) -> TrainConfig:
    return tiny_config(Path("corpus.tsv"), ws / "run", ws / "cache", max_steps=2, validate_every=1)


def snapshot(ws: Path) -> dict[str, str]:
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest() for p in ws.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_reversal_tsv(tmp_path / "corpus.tsv", 300)
    case.prepare(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()

    try:
        main(workspace_config(tmp_path), argv=case.args)
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()

    assert code == case.exit_code, (out, err)
    assert "Traceback" not in err
    if case.exit_code == 0:
        assert case.message in out + err
    elif case.one_line:
        lines = err.strip().splitlines()
        assert len(lines) >= 1 and lines[-1].startswith("error: "), err
        assert case.message in lines[-1], err
        assert all(line.startswith("warning: ") for line in lines[:-1]), err
    else:
        assert case.message in out + err
    after = snapshot(tmp_path)
    changed = [path for path, digest in before.items() if after.get(path) != digest and not path.endswith("metrics.jsonl")]
    assert not changed, f"modified or deleted: {changed}"


def test_table_has_at_least_25_cases():
    assert len(CASES) >= 25
