"""The run directory is the run's own: one process at a time, only fs2mini's directories, the checkpoint's
tokenizer and nothing else, and no silent restart over an earlier run (fs2mini/rundir.py, components.py)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fs2mini.checkpoint import list_checkpoints, load_checkpoint
from fs2mini.errors import UserError
from fs2mini.rundir import LOCK, MARKER, WRITTEN, RunDirectory, check_ownership
from fs2mini.trainer import train
from fs2mini.translate import main as translate_main
from fs2mini.translator import Translator
from synthetic import write_reversal_tsv

from conftest import tiny_config


def short_run(tsv: Path, cache: Path, run: Path, steps: int = 2, **trainer):
    return tiny_config(tsv, run, cache, **{"max_steps": steps, "checkpoint_every": 2, "validate_every": 2,
                                           "valid_translate_sentences": 0, **trainer})


def more_steps(cfg, steps: int):
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, max_steps=steps))


def test_missing_tokenizer_is_restored_from_the_checkpoint_never_retrained(tokenizer_cache, tmp_path, capsys):
    tsv = write_reversal_tsv(tmp_path / "corpus.tsv", 300)
    cfg = short_run(tsv, tokenizer_cache, tmp_path / "run")
    run = train(cfg)
    original = (run / "tokenizer.model").read_bytes()
    (run / "tokenizer.model").unlink()
    write_reversal_tsv(tsv, 300, seed=7)  # another corpus: a retrained tokenizer would differ
    capsys.readouterr()
    train(more_steps(cfg, 4))
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "resumed at step 2" in err and "using the copy kept in" in err
    assert (run / "tokenizer.model").read_bytes() == original
    assert load_checkpoint(run / "checkpoints" / "step_00000004.pt")["tokenizer"]["sha256"] == \
        load_checkpoint(run / "checkpoints" / "step_00000002.pt")["tokenizer"]["sha256"]


def test_a_swapped_tokenizer_is_refused_by_resume_translate_and_from_run(tokenizer_cache, tmp_path, monkeypatch, capsys):
    tsv = write_reversal_tsv(tmp_path / "corpus.tsv", 300)
    cfg = short_run(tsv, tokenizer_cache, tmp_path / "run")
    run = train(cfg)
    other = train(short_run(write_reversal_tsv(tmp_path / "other.tsv", 300, seed=5), tokenizer_cache, tmp_path / "other"))
    assert (other / "tokenizer.model").read_bytes() != (run / "tokenizer.model").read_bytes()
    shutil.copy(other / "tokenizer.model", run / "tokenizer.model")  # same vocabulary size, other pieces
    with pytest.raises(UserError, match=r"tokenizer.model \(sha256 \w+, vocab 28.*is not the tokenizer .*step_00000002.pt was trained with"):
        train(more_steps(cfg, 4))
    with pytest.raises(UserError, match=r"is not the tokenizer .*best.pt was trained with"):
        Translator.from_run(run, device="cpu")
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    with pytest.raises(SystemExit) as exit_info:
        translate_main([str(run)])
    assert exit_info.value.code == 2 and "is not the tokenizer" in capsys.readouterr().err


def test_a_second_training_on_a_locked_directory_stops_naming_the_holder(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = short_run(reversal_tsv, tokenizer_cache, tmp_path / "run")
    with RunDirectory(tmp_path / "run"):  # another process holding the lock (flock: per open file)
        with pytest.raises(UserError, match=rf"is in use by another fs2mini training \(PID {os.getpid()} on "):
            train(cfg)
        assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / LOCK).exists()  # released and removed


def test_a_trainer_refused_at_the_same_moment_leaves_the_holders_lock_and_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    holder = os.open(run.parent / "holder-lock", os.O_RDWR | os.O_CREAT)
    real_mkdir = Path.mkdir

    def other_trainer_first(self, *args, **kwargs):  # both saw no directory, no marker; the other one locked first
        if self == run and not run.exists():
            real_mkdir(run)
            os.link(run.parent / "holder-lock", run / LOCK)
            fcntl.flock(holder, fcntl.LOCK_EX)
            os.write(holder, b"PID 4242 on elsewhere\n")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", other_trainer_first)
    with pytest.raises(UserError, match=r"is in use by another fs2mini training \(PID 4242 on elsewhere\)"):
        with RunDirectory(run):
            pass
    assert (run / LOCK).exists() and os.path.samefile(run / LOCK, run.parent / "holder-lock")  # still the holder's
    assert (run / MARKER).is_file()
    os.close(holder)


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(reversal_tsv, tokenizer_cache, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text("")
    (run / LOCK).write_text("PID 999999 on elsewhere\n")  # left by a SIGKILLed run: the kernel released its flock
    train(short_run(reversal_tsv, tokenizer_cache, run))
    err = " ".join(capsys.readouterr().err.split())
    assert "took over the lock of" in err and "left by PID 999999 on elsewhere" in err
    assert list_checkpoints(run / "checkpoints")


def test_best_pt_alone_is_never_overwritten_by_a_restart(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = short_run(reversal_tsv, tokenizer_cache, tmp_path / "run", steps=4)
    run = train(cfg)
    for path in list_checkpoints(run / "checkpoints"):  # deleted after the run had trained past them
        path.unlink()
    best = (run / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(UserError, match=r"has checkpoints/best.pt but no step checkpoint .* copy it to step_00000004.pt"):
        train(more_steps(cfg, 6))
    assert (run / "checkpoints" / "best.pt").read_bytes() == best


def test_a_run_killed_after_its_first_best_pt_resumes_from_it(reversal_tsv, tokenizer_cache, tmp_path, monkeypatch, capsys):
    """Validation (and best.pt) at step 2, the first step checkpoint at step 4: killed at step 3."""
    import fs2mini.trainer

    cfg = short_run(reversal_tsv, tokenizer_cache, tmp_path / "run", steps=4, checkpoint_every=4, log_every=1)
    reference = train(dataclasses.replace(cfg, output_dir=tmp_path / "uninterrupted"))
    real_step, steps = fs2mini.trainer.train_step, []

    def killed_at_step_3(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt  # (no handler saves on it here: what SIGKILL leaves)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(fs2mini.trainer, "train_step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt"]
    capsys.readouterr()
    train(cfg)
    err = " ".join(capsys.readouterr().err.split())
    assert "before its first step checkpoint; resuming from checkpoints/best.pt (step 2)" in err and "resumed at step 2" in err
    for name in ("step_00000004.pt", "best.pt"):
        ours, theirs = load_checkpoint(run / "checkpoints" / name), load_checkpoint(reference / "checkpoints" / name)
        assert ours["step"] == theirs["step"] and all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])
    assert [(r["split"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == \
        [(r["split"], r["step"]) for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())]


def test_metrics_of_a_run_whose_checkpoints_were_deleted_are_not_overwritten(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = short_run(reversal_tsv, tokenizer_cache, tmp_path / "run", steps=4)
    run = train(cfg)
    shutil.rmtree(run / "checkpoints")
    metrics = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match=r"metrics.jsonl records training up to step 4 but .* has no checkpoint"):
        train(cfg)
    assert (run / "metrics.jsonl").read_bytes() == metrics


def test_a_run_killed_inside_its_first_checkpoint_write_starts_over(reversal_tsv, tokenizer_cache, tmp_path, capsys):
    cfg = short_run(reversal_tsv, tokenizer_cache, tmp_path / "run", steps=2)  # first checkpoint at step 2
    run = train(cfg)
    shutil.rmtree(run / "checkpoints")  # as SIGKILL inside that write leaves it: step 2 logged, no checkpoint
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".step_00000002.pt.x1y2z3.tmp").write_bytes(b"PK\x03\x04half")
    capsys.readouterr()
    train(cfg)
    assert "before its first checkpoint; starting over at step 0" in " ".join(capsys.readouterr().err.split())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "step_00000002.pt"]  # leftover gone
    records = [(r["split"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert sorted(records) == [("valid", 0), ("valid", 2)]  # each once (train lines: every 5 steps)


def test_a_restart_before_the_first_checkpoint_keeps_tokenizer_model_the_one_it_trains_with(reversal_tsv, tmp_path):
    cfg = short_run(reversal_tsv, tmp_path / "cache", tmp_path / "run", steps=1)
    run = train(cfg)
    shutil.rmtree(run / "checkpoints")  # killed before its first checkpoint
    # Rerun from another working directory (another tokenizer cache): sentencepiece trains the same
    # pieces again, but the file differs (it records its temporary path), and so does its fingerprint.
    train(dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, cache_dir=tmp_path / "other-cache")))
    record = load_checkpoint(run / "checkpoints" / "step_00000001.pt")["tokenizer"]
    assert (run / "tokenizer.model").read_bytes() == record["model_bytes"].numpy().tobytes()
    Translator.from_run(run, device="cpu")  # verifies tokenizer.model against best.pt


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl", "tokenizer.model", "notes.txt"])
def test_a_users_own_directory_is_refused_naming_the_files(name, reversal_tsv, tokenizer_cache, tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / name).write_text("the user's own file\n")
    with pytest.raises(UserError, match=rf"is not empty and was not created by fs2mini .*holds {name}"):
        train(short_run(reversal_tsv, tokenizer_cache, run))
    assert sorted(p.name for p in run.iterdir()) == [name]
    assert (run / name).read_text() == "the user's own file\n"


def test_a_copy_of_a_runs_config_and_tokenizer_is_the_users_own_not_an_older_run(reversal_tsv, tokenizer_cache, tmp_path):
    """`finetune_nllb.py --init RUN --output-dir mywork`, where mywork holds copies of RUN's config.json and
    tokenizer.model: the config of a TrainConfig alone does not make a run directory of an older fs2mini."""
    source = train(short_run(reversal_tsv, tokenizer_cache, tmp_path / "source"))
    mine = tmp_path / "mywork"
    mine.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(source / name, mine / name)
    (mine / "config.json").write_text((mine / "config.json").read_text().replace('"max_steps": 2', '"max_steps": 99'))
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    cfg = dataclasses.replace(short_run(reversal_tsv, tokenizer_cache, mine, steps=1), init=source)
    with pytest.raises(UserError, match=r"mywork is not empty and was not created by fs2mini .*training would "
                                        r"overwrite config.json, tokenizer.model"):
        train(cfg)
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    # A run directory of an older fs2mini (no marker, but metrics or checkpoints beside its config) is still adopted.
    (source / MARKER).unlink()
    check_ownership(source)


def test_an_empty_or_new_directory_is_taken_and_marked(reversal_tsv, tokenizer_cache, tmp_path):
    (tmp_path / "empty").mkdir()
    for run in (tmp_path / "empty", tmp_path / "new" / "nested"):
        train(short_run(reversal_tsv, tokenizer_cache, run))
        assert (run / MARKER).is_file() and not (run / LOCK).exists()


names = st.sampled_from([*WRITTEN, MARKER, "notes.txt", "data.tsv", ".hidden"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(names, unique=True, max_size=5))
def test_ownership_refuses_or_accepts_and_never_changes_the_directory(files, tmp_path_factory):
    run = tmp_path_factory.mktemp("own")
    for name in files:
        (run / name).write_text("x")
    before = sorted(p.name for p in run.iterdir())
    try:
        check_ownership(run)
        accepted = True
    except UserError as err:
        accepted = False
        assert str(err).count("\n") == 0 and str(run) in str(err)
    assert accepted == (not files or MARKER in files)
    assert sorted(p.name for p in run.iterdir()) == before
