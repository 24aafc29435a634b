"""Bad input, table-driven: each case expects an exit code, a message naming the culprit, no
traceback, and every file the user already had left untouched.

Cases run `fs2mini.train.main` in-process (a traceback would surface as an exception other than
SystemExit), on a workspace with a small valid corpus that a case may corrupt first.
"""

from __future__ import annotations

import dataclasses
import gzip
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


def aligned_files(source_lines: int, target_lines: int) -> Callable[[Path], None]:
    def prepare(ws: Path) -> None:
        (ws / "text").mkdir()
        (ws / "text" / "train.eng").write_text("".join(f"a b {i}\n" for i in range(source_lines)))
        (ws / "text" / "train.fra").write_text("".join(f"{i} b a\n" for i in range(target_lines)))

    return prepare


def damaged_cache(ws: Path) -> None:
    """A prepared training split, then one of its files cut short."""
    main(workspace_config(ws), argv=["prepare"])
    ids = next((ws / "cache" / "prepared").glob("*-train")) / "source.ids"
    os.truncate(ids, ids.stat().st_size - 1)


def train_then(corrupt: Callable[[Path], None]) -> Callable[[Path], None]:
    """Train 2 steps (one checkpoint), then damage the run directory."""

    def prepare(ws: Path) -> None:
        main(workspace_config(ws), argv=["--trainer.max-steps", "2"])
        corrupt(ws / "run" / "checkpoints" / "step_00000002.pt")

    return prepare


def user_files(files: dict[str, bytes]) -> Callable[[Path], None]:
    """An --output-dir that already holds the user's own files (not written by fs2mini)."""

    def prepare(ws: Path) -> None:
        (ws / "run").mkdir()
        for name, data in files.items():
            (ws / "run" / name).write_bytes(data)

    return prepare


def replace_config_by_directory(path: Path) -> None:
    config = path.parents[1] / "config.json"
    config.unlink()
    config.mkdir()
    (config / "keep").write_text("")


def wrong_type_in_config(path: Path) -> None:
    config = path.parents[1] / "config.json"
    config.write_text(config.read_text().replace('"model_dim": 64', '"model_dim": "wide"'))


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
    Case("UTF-16 corpus with a byte-order mark", ["check", "data"], 2, "corpus.tsv is UTF-16 text (byte-order mark FF FE)",
         write_bytes("corpus.tsv", good_lines().decode().encode("utf-16"))),
    Case("UTF-16 corpus without a byte-order mark", ["check", "data"], 2, "corpus.tsv contains NUL bytes, as UTF-16 text does",
         write_bytes("corpus.tsv", good_lines().decode().encode("utf-16-le"))),
    Case("CR-only line endings", ["check", "data"], 2, "corpus.tsv ends its lines with CR (\\r) only",
         write_bytes("corpus.tsv", good_lines().replace(b"\n", b"\r"))),
    Case("UTF-8 byte-order mark is dropped", ["check", "data"], 0, "check data: OK",
         write_bytes("corpus.tsv", b"\xef\xbb\xbf" + good_lines())),
    Case("stray CR inside a line is skipped and named", ["check", "data"], 0, "inside the line: 1 (",
         write_bytes("corpus.tsv", good_lines() + b"a\rb\tc\n")),
    Case("1 MB line is skipped as too long", ["check", "data"], 0, "longer than --data.max-source-len",
         write_bytes("corpus.tsv", good_lines() + b"a " * 500_000 + b"\tb\n")),
    Case("empty file", ["check", "tokenizer"], 2, "corpus.tsv has no training sentence pairs (it is empty)",
         write_bytes("corpus.tsv", b"")),
    Case("only malformed lines", ["check", "tokenizer"], 2, "has no training sentence pairs (skipped: no tab: 2",
         write_bytes("corpus.tsv", b"x\ny\n")),
    Case("missing file", ["check", "data", "--data.corpus.path", "nope.tsv"], 2, "nope.tsv does not exist"),
    Case("directory instead of file", ["check", "data", "--data.corpus.path", "."], 2, "is a directory; expected a text file"),
    # Large inputs and the data cache.
    Case("truncated .gz corpus", ["check", "data", "--data.corpus.path", "corpus.tsv.gz"], 2,
         "corpus.tsv.gz is truncated or not a valid gzip file", write_bytes("corpus.tsv.gz", gzip.compress(good_lines())[:-30])),
    Case("aligned files of different lengths", ["check", "data", "data.corpus:text", "--data.corpus.dir", "text"], 2,
         "has 300 lines but", aligned_files(300, 299)),
    Case("corpus weight 0", ["--data.corpus.weight", "0"], 2, "--data.corpus.weight 0.0: expected a number > 0"),
    Case("tag on the validated corpus", ["--data.corpus.tag", "<BT>"], 2,
         "--data.corpus.tag '<BT>': the first corpus of direction eng-fra is the one validated and translated"),
    Case("negative prepare workers", ["--data.prepare-workers", "-1"], 2, "--data.prepare-workers -1: expected an integer >= 0"),
    Case("data cache is a file", ["check", "data", "--data.cache-dir", "corpus.tsv"], 2,
         "corpus.tsv is not a directory; expected a directory for prepared corpora"),
    Case("damaged data cache is prepared again", ["check", "data"], 0, "is damaged (source.ids has", damaged_cache),
    # Command-line values.
    Case("model_dim not divisible by heads", ["check", "model", "--model.model-dim", "30"], 2,
         "--model.num-encoder-attn-heads 4 must divide --model.model-dim 30"),
    Case("zero lr", ["--optimizer.lr", "0"], 2, "--optimizer.lr must be positive, got 0.0"),
    Case("negative lr", ["--optimizer.lr", "-1e-3"], 2, "--optimizer.lr must be positive, got -0.001"),
    Case("zero batch tokens", ["--data.max-tokens", "0"], 2, "--data.max-tokens must be a positive integer, got 0"),
    Case("negative batch tokens", ["--data.max-tokens", "-4"], 2, "--data.max-tokens must be a positive integer, got -4"),
    Case("zero length multiple", ["--data.length-multiple", "0"], 2, "--data.length-multiple must be a positive integer, got 0"),
    Case("zero batch size multiple", ["--data.batch-size-multiple", "0"], 2,
         "--data.batch-size-multiple must be a positive integer, got 0"),
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
    Case("negative dropout epoch", ["--trainer.dropout-from-epoch", "-1"], 2,
         "--trainer.dropout-from-epoch -1: expected an integer >= 0"),
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
    Case("user's own config.json in --output-dir", [], 2, "was not created by fs2mini (no .fs2mini-run file): it holds "
         "config.json, notes.txt; training would overwrite config.json", user_files({"config.json": b"{}", "notes.txt": b"x"})),
    Case("user's own metrics.jsonl and tokenizer.model", [], 2, "training would overwrite tokenizer.model, metrics.jsonl",
         user_files({"metrics.jsonl": b"{}", "tokenizer.model": b"x"})),
    Case("config.json not UTF-8", ["--trainer.max-steps", "4"], 2, "config.json is not UTF-8 text",
         train_then(lambda path: (path.parents[1] / "config.json").write_bytes(b"\xff\xfe{}"))),
    Case("config.json is a directory", ["--trainer.max-steps", "4"], 2, "config.json is a directory",
         train_then(replace_config_by_directory)),
    Case("config.json value of the wrong type", ["--trainer.max-steps", "4"], 2,
         "config.json: model.model_dim is 'wide'; expected a value of type int", train_then(wrong_type_in_config)),
    Case("only best.pt left", ["--trainer.max-steps", "4", "--trainer.checkpoint-every", "1"], 2, "has checkpoints/best.pt but no step checkpoint",
         train_then(lambda path: path.unlink())),
    # Numeric flags: non-finite, negative, out of range (`--flag VALUE: expected ...`).
    *[Case(f"{flag} {value}", [flag, *value.split()], 2, f"{flag} {shown}: expected {expected}") for flag, value, shown, expected in [
        ("--optimizer.lr", "inf", "inf", "a finite positive learning rate"),
        ("--optimizer.lr", "nan", "nan", "a finite positive learning rate"),
        ("--optimizer.betas", "0.9 1.0", "0.9 1.0", "two numbers in [0, 1)"),
        ("--optimizer.betas", "-0.1 0.9", "-0.1 0.9", "two numbers in [0, 1)"),
        ("--optimizer.eps", "-1e-8", "-1e-08", "a finite number >= 0"),
        ("--optimizer.eps", "nan", "nan", "a finite number >= 0"),
        ("--optimizer.weight-decay", "-0.1", "-0.1", "a finite number >= 0"),
        ("--optimizer.weight-decay", "inf", "inf", "a finite number >= 0"),
        ("--lr-scheduler.init-lr", "-1", "-1.0", "a finite number >= 0"),
        ("--trainer.max-grad-norm", "nan", "nan", "a finite number >= 0"),
        ("--trainer.max-grad-norm", "inf", "inf", "a finite number >= 0"),
        ("--trainer.seed", "-1", "-1", "an integer in [0, 2**63)"),
        ("--tokenizer.character-coverage", "0", "0.0", "a number in (0, 1]"),
        ("--tokenizer.character-coverage", "nan", "nan", "a number in (0, 1]"),
        ("--tokenizer.max-training-sentences", "0", "0", "a positive integer"),
        ("--data.corpus.valid-percent", "-1", "-1.0", "a percentage in [0, 100]"),
        ("--data.corpus.test-percent", "nan", "nan", "a percentage in [0, 100]"),
        ("--data.corpus.valid-percent", "101", "101.0", "a percentage in [0, 100]"),
        ("--data.corpus.skip-header", "-2", "-2", "an integer >= 0"),
        ("--model.max-seq-len", "16", "16", "at least 256"),
    ]],
    Case("negative lr through the schedule", ["lr-scheduler:cosine", "--lr-scheduler.final-lr-scale", "-2"], 2,
         "--lr-scheduler.final-lr-scale -2.0: expected a finite number >= 0"),
    Case("nothing left to train on", ["--data.corpus.valid-percent", "100"], 2,
         "--data.corpus.test-percent 3.0: expected at most 0 with --data.corpus.valid-percent 100"),
    Case("SGD negative momentum", ["optimizer:sgd", "--optimizer.momentum", "-0.5"], 2,
         "--optimizer.momentum -0.5: expected a finite number >= 0"),
    Case("dropout nan", ["--model.dropout-p", "nan"], 2, "--model.dropout-p must be in [0, 1), got nan"),
    Case("label smoothing nan", ["--task.label-smoothing", "nan"], 2, "--task.label-smoothing must be in [0, 1), got nan"),
    # Fine-tuning (fs2mini.initialize, fs2mini.lora): nothing of the new run is written.
    Case("--init nowhere", ["--init", "nowhere"], 2, "nowhere does not exist; expected a run directory"),
    Case("--init of another architecture", ["--init", "run", "--output-dir", "tuned", "--model.ffn-inner-dim", "96"], 2,
         "run was trained with ffn_inner_dim 128, the configured model has ffn_inner_dim 96", train_then(lambda path: None)),
    Case("--init of a run with positions from row 0", ["--init", "run", "--output-dir", "tuned", "--model.position-offset", "0"],
         2, "expected the same architecture (--model.position-offset 2)", train_then(lambda path: None)),
    Case("--add-languages to fs2mini's tokenizer", ["--init", "run", "--output-dir", "tuned", "--add-languages", "deu=fra"],
         2, "run uses fs2mini's own tokenizer", train_then(lambda path: None)),
    Case("--lang-map without --init", ["--lang-map", "eng=eng_Latn"], 2, "--lang-map applies to the model --init starts from"),
    Case("--lora.rank -1", ["--lora.rank", "-1"], 2, "--lora.rank must be >= 0"),
    Case("LoRA on no layer", ["--lora.rank", "4", "--lora.targets", "fc1"], 2, "--lora.targets fc1: no linear layer"),
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
    # (the data cache is fs2mini's own, not the user's: a damaged one is replaced)
    changed = [path for path, digest in before.items() if after.get(path) != digest and not path.endswith("metrics.jsonl")
               and not path.startswith("cache/prepared/")]
    assert not changed, f"modified or deleted: {changed}"


def test_table_has_at_least_25_cases():
    assert len(CASES) >= 25


GENERATION_CASES = [
    ("--beam-size", "0", "--beam-size must be a positive integer, got 0"),
    ("--nbest", "-1", "--nbest must be a positive integer, got -1"),
    ("--batch-size", "0", "--batch-size must be a positive integer, got 0"),
    ("--max-len-a", "nan", "--max-len-a nan: expected a finite number >= 0"),
    ("--max-len-a", "inf", "--max-len-a inf: expected a finite number >= 0"),
    ("--max-len-a", "-1", "--max-len-a and --max-len-b must be >= 0"),
    ("--max-len-b", "-3", "--max-len-a and --max-len-b must be >= 0"),
    ("--len-penalty", "nan", "--len-penalty nan: expected a finite number"),
    ("--len-penalty", "inf", "--len-penalty inf: expected a finite number"),
]


@pytest.mark.parametrize("command", ["translate", "evaluate"])
@pytest.mark.parametrize("flag,value,message", GENERATION_CASES + [("--max-len-a", "0.1", "--max-len-a 0.1: expected a value")],
                         ids=[f"{f} {v}" for f, v, _ in GENERATION_CASES] + ["--max-len-a 0.1 with b 0"])
def test_numeric_flags_of_translate_and_evaluate(command, flag, value, message, tmp_path, monkeypatch, capsys):
    """Checked before the run directory is even opened (it does not exist here)."""
    from fs2mini import evaluate, translate

    extra = ["--max-len-b", "0"] if value == "0.1" else []
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    with pytest.raises(SystemExit) as exit_info:
        (translate if command == "translate" else evaluate).main([str(tmp_path / "no-run"), flag, value, *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


SAMPLING_CASES = [
    (["--sampling", "--beam-size", "1", "--temperature", "0"], "--temperature 0.0: expected a finite number > 0"),
    (["--sampling", "--beam-size", "1", "--temperature", "-1"], "--temperature -1.0: expected a finite number > 0"),
    (["--sampling", "--beam-size", "1", "--temperature", "nan"], "--temperature nan: expected a finite number > 0"),
    (["--sampling", "--beam-size", "1", "--top-p", "0"], "--top-p 0.0: expected a number in (0, 1]"),
    (["--sampling", "--beam-size", "1", "--top-p", "1.01"], "--top-p 1.01: expected a number in (0, 1]"),
    (["--sampling", "--beam-size", "1", "--top-k", "-2"], "--top-k -2: expected an integer >= 0"),
    (["--sampling", "--beam-size", "1", "--seed", "-1"], "--seed -1: expected an integer in [0, 2**63)"),
    (["--sampling"], "--sampling with --beam-size 4: sampling draws one token per step instead of searching beams; "
                     "expected --beam-size 1"),
    (["--sampling", "--beam-size", "5", "--nbest", "5"], "--sampling with --beam-size 5"),
    (["--temperature", "0.7"], "--temperature 0.7 applies to sampling only; expected --sampling --beam-size 1 with it"),
    (["--beam-size", "1", "--top-p", "0.9"], "--top-p 0.9 applies to sampling only"),
]


@pytest.mark.parametrize("command", ["translate", "evaluate"])
@pytest.mark.parametrize("args,message", SAMPLING_CASES, ids=[" ".join(args) for args, _ in SAMPLING_CASES])
def test_sampling_flags_of_translate_and_evaluate(command, args, message, tmp_path, monkeypatch, capsys):
    """Checked before the run directory is opened: one line naming the flag and what was expected."""
    from fs2mini import evaluate, translate

    monkeypatch.setattr("sys.stdin", open(os.devnull))
    with pytest.raises(SystemExit) as exit_info:
        (translate if command == "translate" else evaluate).main([str(tmp_path / "no-run"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_numeric_flag_of_evaluate_checked_before_loading(tmp_path, capsys):
    from fs2mini import evaluate

    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(tmp_path / "no-run"), "--max-sentences", "0"])
    assert exit_info.value.code == 2 and "--max-sentences must be a positive integer, got 0" in capsys.readouterr().err
