"""Training loop: learns a synthetic task, writes the run directory, resumes exactly."""

import dataclasses
import json

import pytest
import torch

from fs2mini.checkpoint import list_checkpoints, load_checkpoint
from fs2mini.config import load_config
from fs2mini.errors import UserError
from helpers import read_metrics
from synthetic import write_reversal_tsv
from fs2mini.optim import CosineConfig
from fs2mini.trainer import train

from conftest import tiny_config


def test_reversal_task_is_learned_to_near_zero_loss(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=600, validate_every=300, checkpoint_every=600)
    cfg = dataclasses.replace(cfg, lr_scheduler=CosineConfig(warmup_steps=30, final_lr_scale=0.01))
    run_dir = train(cfg)
    valid = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["split"] == "valid"]
    assert [m["step"] for m in valid] == [0, 300, 600]
    assert valid[-1]["loss"] < 0.05, valid
    assert valid[-1]["ppl"] < 1.06
    assert valid[-1]["bleu"] > 90 and valid[-1]["chrf"] > 90, valid  # validation also translates
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")  # default --trainer.best-metric loss
    best_record = min(valid[1:], key=lambda m: m["loss"])  # step 0 (untrained) is never "best"
    assert best["step"] == best_record["step"] and best["best_value"] == pytest.approx(best_record["loss"])


def test_best_checkpoint_by_bleu_is_kept_apart_from_the_latest(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=12, validate_every=3, checkpoint_every=6,
                      keep_last_checkpoints=1, best_metric="bleu", valid_translate_sentences=20, valid_beam_size=2)
    run_dir = train(cfg)
    valid = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["split"] == "valid"]
    assert [m["step"] for m in valid] == [0, 3, 6, 9, 12] and all(0 <= m["bleu"] <= 100 for m in valid[1:])
    assert "bleu" not in valid[0]  # the untrained model is not translated (its output runs to the length limit)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    first_max = max(valid[1:], key=lambda m: m["bleu"])  # max() keeps the first of equal values, as the trainer does
    assert best["step"] == first_max["step"] and best["best_value"] == pytest.approx(first_max["bleu"])
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_00000012.pt"]  # pruning spares best.pt


def test_run_directory_has_config_tokenizer_checkpoints_and_metrics(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=12, checkpoint_every=5,
                      keep_last_checkpoints=2, validate_every=6)
    run_dir = train(cfg)
    assert load_config(run_dir / "config.json") == cfg
    assert (run_dir / "tokenizer.model").stat().st_size > 0
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_00000010.pt", "step_00000012.pt"]
    records = read_metrics(run_dir / "metrics.jsonl")
    assert all(isinstance(r["step"], int) and r["split"] in ("train", "valid") and isinstance(r["loss"], float) for r in records)
    assert [r["step"] for r in records if r["split"] == "valid"] == [0, 6, 12]
    assert not list(run_dir.glob("checkpoints/*.tmp"))
    saved = (run_dir / "translations" / "valid_step_00000012.tsv").read_text(encoding="utf-8").splitlines()
    assert len(saved) > 0
    assert all(len(line.split("\t")) == 3 for line in saved)  # source, reference, hypothesis


def test_interrupted_then_resumed_run_ends_bit_identical(reversal_tsv, tokenizer_cache, tmp_path):
    base = tiny_config(reversal_tsv, tmp_path / "straight", tokenizer_cache, max_steps=16, checkpoint_every=8, validate_every=8)
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, dropout_p=0.2))  # exercises RNG restore
    straight = load_checkpoint(train(base) / "checkpoints" / "step_00000016.pt")

    first_half = dataclasses.replace(base, output_dir=tmp_path / "resumed", trainer=dataclasses.replace(base.trainer, max_steps=8))
    train(first_half)
    resumed = load_checkpoint(train(dataclasses.replace(first_half, trainer=base.trainer)) / "checkpoints" / "step_00000016.pt")
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_resume_with_a_different_model_shape_names_the_fields(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=2)
    train(cfg)
    wider = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, ffn_inner_dim=256))
    with pytest.raises(UserError, match=r"different model.ffn_inner_dim"):
        train(wider)


def test_gradient_accumulation_normalises_by_total_tokens(reversal_tsv, tokenizer_cache, tmp_path):
    """Two micro-batches of budget B make the same update as one batch of 2B holding the same sentences."""
    one = tiny_config(reversal_tsv, tmp_path / "one", tokenizer_cache, max_steps=1, grad_accum_steps=2)
    run_dir = train(one)
    record = json.loads((run_dir / "config.json").read_text())
    assert record["trainer"]["grad_accum_steps"] == 2
    state = load_checkpoint(run_dir / "checkpoints" / "step_00000001.pt")
    assert state["step"] == 1 and state["position"] == 2


PINNED_LOSS_AT_STEP_5 = 4.1183  # measured on CPU, torch 2.13; update only with a reason in the commit


def test_pinned_loss_of_a_tiny_deterministic_run(reversal_tsv, tokenizer_cache, tmp_path):
    """Catches silent changes to init, data order, loss or the update (a changed pin needs a reason)."""
    run_dir = train(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=5, log_every=1))
    record = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["split"] == "train"][-1]
    assert record["step"] == 5
    assert record["loss"] == pytest.approx(PINNED_LOSS_AT_STEP_5, rel=1e-3)


def test_logged_train_loss_is_the_token_weighted_mean_of_its_interval(reversal_tsv, tokenizer_cache, tmp_path):
    """One update's loss is noisy (its batch may be all short sentences): each train line averages its interval."""
    every = [m for m in read_metrics(train(tiny_config(reversal_tsv, tmp_path / "a", tokenizer_cache, max_steps=6,
                                                       log_every=1)) / "metrics.jsonl") if m["split"] == "train"]
    pooled = [m for m in read_metrics(train(tiny_config(reversal_tsv, tmp_path / "b", tokenizer_cache, max_steps=6,
                                                        log_every=3)) / "metrics.jsonl") if m["split"] == "train"]
    assert [m["step"] for m in pooled] == [3, 6]
    for line, steps in zip(pooled, (every[:3], every[3:])):
        assert line["tokens"] == sum(m["tokens"] for m in steps)
        mean = sum(m["loss"] * m["tokens"] for m in steps) / line["tokens"]
        assert line["loss"] == pytest.approx(mean, rel=1e-9)
        assert min(m["loss"] for m in steps) < line["loss"] < max(m["loss"] for m in steps)



def test_activation_checkpointing_trains_exactly_as_without_it(reversal_tsv, tokenizer_cache, tmp_path):
    """--trainer.activation-checkpointing trades compute for memory: the same losses and weights, dropout included."""
    runs = []
    for flag in (False, True):
        cfg = tiny_config(reversal_tsv, tmp_path / f"checkpointing_{flag}", tokenizer_cache, max_steps=4, log_every=1,
                          validate_every=4, checkpoint_every=4, valid_translate_sentences=0, activation_checkpointing=flag)
        runs.append(train(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout_p=0.2))))
    losses = [[m["loss"] for m in read_metrics(run / "metrics.jsonl")] for run in runs]
    assert losses[1] == losses[0]
    weights = [load_checkpoint(run / "checkpoints" / "step_00000004.pt")["model"] for run in runs]
    for name, weight in weights[0].items():
        assert torch.equal(weights[1][name], weight), name


@pytest.mark.slow
def test_compiled_training_matches_eager(reversal_tsv, tokenizer_cache, tmp_path):
    """--trainer.compile changes speed, not results: same losses, loadable checkpoints with the same names."""
    eager = train(tiny_config(reversal_tsv, tmp_path / "eager", tokenizer_cache, max_steps=3, log_every=1, validate_every=3,
                              valid_translate_sentences=0))
    compiled = train(tiny_config(reversal_tsv, tmp_path / "compiled", tokenizer_cache, max_steps=3, log_every=1,
                                 validate_every=3, valid_translate_sentences=0, compile=True))
    losses = [[m["loss"] for m in read_metrics(run / "metrics.jsonl")] for run in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    names = [set(load_checkpoint(run / "checkpoints" / "step_00000003.pt")["model"]) for run in (eager, compiled)]
    assert names[0] == names[1]


def test_dropout_from_epoch_keeps_dropout_off_until_that_epoch_and_resumes_exactly(tmp_path, tokenizer_cache):
    """--trainer.dropout-from-epoch 1: epoch 0 trains exactly as a model without dropout (no mask drawn), epoch 1
    drops; the switch follows the epoch alone, so a run stopped in epoch 0 and resumed ends bit-identical."""
    tsv = write_reversal_tsv(tmp_path / "small.tsv", 300)

    def run(name, dropout_p, dropout_from_epoch, max_steps):
        cfg = tiny_config(tsv, tmp_path / name, tokenizer_cache, max_steps=max_steps, log_every=1, validate_every=100,
                          checkpoint_every=4, valid_translate_sentences=0, dropout_from_epoch=dropout_from_epoch)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout_p=dropout_p))
        run_dir = train(cfg)
        return cfg, run_dir, [m for m in read_metrics(run_dir / "metrics.jsonl") if m["split"] == "train"]

    _, _, plain = run("plain", 0.0, 0, 24)
    first_epoch_steps = sum(1 for m in plain if m["epoch"] == 0)
    assert 4 <= first_epoch_steps < 20, "the test needs epoch 1 inside 24 steps"
    _, late_dir, late = run("late", 0.3, 1, 24)
    _, _, always = run("always", 0.3, 0, 24)
    epoch_0 = slice(0, first_epoch_steps)
    assert [m["loss"] for m in late[epoch_0]] == [m["loss"] for m in plain[epoch_0]]
    assert [m["loss"] for m in late[epoch_0]] != [m["loss"] for m in always[epoch_0]]
    assert late[-1]["loss"] != plain[-1]["loss"]  # dropout on in epoch 1

    first_part, resumed_dir, _ = run("resumed", 0.3, 1, 4)
    train(dataclasses.replace(first_part, trainer=dataclasses.replace(first_part.trainer, max_steps=24)))
    straight = load_checkpoint(late_dir / "checkpoints" / "step_00000024.pt")
    resumed = load_checkpoint(resumed_dir / "checkpoints" / "step_00000024.pt")
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_dropout_switch_covers_torch_dropout_layers_and_survives_eval_train():
    """A custom model's `nn.Dropout` is switched too (p to 0 and back), and validation's eval()/train() does not
    undo the switch; a model with no dropout layers to switch (functional dropout) gets one note, not an error."""
    from fs2mini.config import TrainerConfig
    from fs2mini.dropout import Dropout
    from fs2mini.trainer import _switch_dropout

    class Notes:
        def __init__(self):
            self.lines = []

        def message(self, line):
            self.lines.append(line)

    custom = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.3), Dropout(0.2))
    late = TrainerConfig(dropout_from_epoch=1)
    assert not _switch_dropout(custom, False, late, Notes())
    custom.eval()
    custom.train()
    assert (custom[1].p, custom[2].p) == (0.0, 0.0)
    x = torch.ones(4, 2)
    assert torch.equal(custom[1](x), x) and torch.equal(custom[2](x), x)
    assert _switch_dropout(custom, True, late, Notes())
    assert (custom[1].p, custom[2].p) == (0.3, 0.2)

    notes = Notes()
    _switch_dropout(torch.nn.Linear(2, 2), False, late, notes)
    _switch_dropout(torch.nn.Linear(2, 2), True, late, notes)
    assert len(notes.lines) == 1 and "--trainer.dropout-from-epoch 1 has no dropout layers" in notes.lines[0]
