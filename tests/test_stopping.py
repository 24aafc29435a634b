"""Finishing a run: early stopping (--trainer.patience) and the wall-clock budget (--trainer.max-time), both across resumes."""

import dataclasses

import pytest

from fs2mini.checkpoint import list_checkpoints, load_checkpoint
from fs2mini.config import parse_duration
from fs2mini.optim import AdamWConfig, ConstantConfig, CosineConfig, build_lr_schedule
from fs2mini.train import main
from fs2mini.trainer import train
from helpers import read_metrics

from conftest import tiny_config


def valid_steps(run_dir):
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "valid"]


def newest(run_dir):
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])


def test_patience_stops_after_n_validations_without_improvement_and_survives_resume(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=20, validate_every=2, checkpoint_every=10,
                      patience=2, valid_translate_sentences=0)
    # A learning rate too small to move fp32 weights: the validation loss never improves after step 2.
    cfg = dataclasses.replace(cfg, optimizer=AdamWConfig(lr=1e-12), lr_scheduler=ConstantConfig())
    run_dir = train(cfg)
    assert valid_steps(run_dir) == [0, 2, 4, 6]  # best at 2, then 2 validations without a better loss
    state = newest(run_dir)
    assert state["step"] == 6 and state["patience_count"] == 2  # a checkpoint at the stop, counter saved
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["step"] == 2

    train(cfg)  # the same command again: already stopped, nothing to do
    assert valid_steps(run_dir) == [0, 2, 4, 6] and newest(run_dir)["step"] == 6

    more_patient = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, patience=3))
    train(more_patient)  # the counter (2) carries over: one more validation without improvement stops it
    assert valid_steps(run_dir) == [0, 2, 4, 6, 8] and newest(run_dir)["patience_count"] == 3


def test_max_time_ends_with_validation_and_checkpoint_and_counts_across_resumes(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=100_000, validate_every=10_000,
                      checkpoint_every=10_000, log_every=1, max_time="1s", valid_translate_sentences=0)
    run_dir = train(cfg)
    first = newest(run_dir)
    assert 0 < first["step"] < 100_000 and first["elapsed_s"] >= 1.0
    assert valid_steps(run_dir) == [0, first["step"]]  # validated at the budget, as at max-steps

    train(cfg)  # budget already spent: nothing to do
    assert newest(run_dir)["step"] == first["step"]

    budget = first["elapsed_s"] + 1.0  # one more second (a loaded machine may have overshot the first)
    train(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, max_time=f"{budget:.3f}s")))
    second = newest(run_dir)
    assert second["step"] > first["step"] and second["elapsed_s"] >= budget
    train_records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"]
    resumed = [r["elapsed_s"] for r in train_records if r["step"] > first["step"]]
    assert resumed and min(resumed) >= first["elapsed_s"]  # the clock continues from the checkpoint's time


def test_cosine_decays_over_the_time_budget(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=100_000, validate_every=10_000,
                      checkpoint_every=10_000, log_every=1, max_time="2s", valid_translate_sentences=0)
    cfg = dataclasses.replace(cfg, optimizer=AdamWConfig(lr=1e-3), lr_scheduler=CosineConfig(warmup_steps=1, final_lr_scale=0.0))
    records = [r for r in read_metrics(train(cfg) / "metrics.jsonl") if r["split"] == "train"]
    schedule = build_lr_schedule(cfg.lr_scheduler, 1e-3, 100_000)
    assert len(records) >= 2
    for before, record in zip(records, records[1:]):  # each update's lr from the time spent before it (ms, as agreed)
        assert record["lr"] == pytest.approx(schedule(record["step"], min(1.0, round(before["elapsed_s"] * 1000) / 1000 / 2)))
    # 100,000 steps were never in reach: on steps alone the lr would still be at its peak when time runs out.
    assert records[-1]["lr"] < schedule(records[-1]["step"], 0.0)


@pytest.mark.parametrize("text, seconds", [("18m", 1080), ("2h", 7200), ("90s", 90), ("3600", 3600), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", ["soon", "0", "0s", "10x", "inf"])
def test_malformed_max_time_is_one_error_line(value, reversal_tsv, tokenizer_cache, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache), argv=["--trainer.max-time", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --trainer.max-time {value}: expected a positive duration"), err
    assert not (tmp_path / "run").exists()


def test_bad_patience_and_keep_best_are_refused(reversal_tsv, tokenizer_cache, tmp_path, capsys):
    for flag, value in (("--trainer.patience", "0"), ("--trainer.keep-best-checkpoints", "-1")):
        with pytest.raises(SystemExit) as exit_info:
            main(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache), argv=[flag, value])
        assert exit_info.value.code == 2 and capsys.readouterr().err.startswith(f"error: {flag} {value}: expected")
