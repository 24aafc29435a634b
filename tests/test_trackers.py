"""TensorBoard gets every metrics.jsonl scalar, a resume hides the redone steps there too, and W&B is opt-in."""

import shutil
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fs2mini.checkpoint import checkpoint_path
from fs2mini.config import check_trainer_config
from fs2mini.errors import UserError
from fs2mini.trainer import train
from helpers import read_metrics

from conftest import tiny_config


def scalars(run_dir):
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_the_train_and_valid_scalars_of_metrics_jsonl(reversal_tsv, tokenizer_cache, tmp_path):
    run_dir = train(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=10, validate_every=5,
                                valid_translate_sentences=4))
    logged = scalars(run_dir)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/elapsed_s",
                "valid/loss", "valid/ppl", "valid/bleu", "valid/chrf"):
        assert tag in logged, sorted(logged)
    records = read_metrics(run_dir / "metrics.jsonl")
    for split, name in (("train", "loss"), ("train", "lr"), ("valid", "loss"), ("valid", "bleu")):
        expected = [(r["step"], r[name]) for r in records if r["split"] == split and name in r]  # no BLEU at step 0
        assert [s for s, _ in logged[f"{split}/{name}"]] == [s for s, _ in expected]
        assert [v for _, v in logged[f"{split}/{name}"]] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert [s for s, _ in logged["valid/loss"]] == [0, 5, 10]


def test_resume_hides_the_steps_after_the_checkpoint_in_tensorboard(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=15, validate_every=5, log_every=5,
                      checkpoint_every=10, keep_last_checkpoints=5, valid_translate_sentences=0)
    run_dir = train(cfg)
    checkpoint_path(run_dir / "checkpoints", 15).unlink()  # as if killed after step 15 was logged, before its checkpoint
    train(cfg)  # resumes at step 10 and redoes 11..15
    logged = scalars(run_dir)
    assert [s for s, _ in logged["train/loss"]] == [5, 10, 15]
    assert [s for s, _ in logged["valid/loss"]] == [0, 5, 10, 15]
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "valid"] == [0, 5, 10, 15]


def test_a_run_started_over_shows_step_0_once_in_tensorboard(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=2, validate_every=2, log_every=1,
                      checkpoint_every=2, valid_translate_sentences=0)
    run_dir = train(cfg)
    shutil.rmtree(run_dir / "checkpoints")  # as if killed inside its first checkpoint write: it starts over
    train(cfg)
    logged = scalars(run_dir)
    assert [s for s, _ in logged["valid/loss"]] == [0, 2]
    assert [s for s, _ in logged["train/loss"]] == [1, 2]


def test_no_tensorboard_directory_when_turned_off(reversal_tsv, tokenizer_cache, tmp_path):
    run_dir = train(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=2, tensorboard=False,
                                valid_translate_sentences=0))
    assert not (run_dir / "tb").exists() and (run_dir / "metrics.jsonl").is_file()


def test_wandb_project_without_wandb_installed_is_one_sentence(monkeypatch, reversal_tsv, tokenizer_cache, tmp_path):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, wandb_project="mt")
    with pytest.raises(UserError, match=r"--trainer.wandb-project mt: the wandb package is not installed"):
        check_trainer_config(cfg.trainer)
    assert "wandb" not in sys.modules or sys.modules["wandb"] is None  # never imported for the check
