"""Checkpoint averaging: the mean of the chosen checkpoints, loadable by name, and one-line errors."""

import pytest
import torch

from fs2mini.average import main
from fs2mini.checkpoint import checkpoint_path, list_best_checkpoints, load_checkpoint
from fs2mini.evaluate import EvaluateArgs, evaluate
from fs2mini.trainer import train
from fs2mini.translator import Translator
from helpers import read_metrics

from conftest import tiny_config


@pytest.fixture(scope="module")
def run_with_checkpoints(reversal_tsv, tokenizer_cache, tmp_path_factory):
    """8 steps, a checkpoint and a validation every 2, the last 3 step checkpoints and the 2 best kept."""
    return train(tiny_config(reversal_tsv, tmp_path_factory.mktemp("average") / "run", tokenizer_cache, max_steps=8,
                             validate_every=2, checkpoint_every=2, keep_last_checkpoints=3, keep_best_checkpoints=2,
                             valid_translate_sentences=0))


def assert_mean_of(averaged, paths):
    states = [load_checkpoint(path)["model"] for path in paths]
    assert set(averaged) == set(states[0])
    for name, tensor in averaged.items():
        assert torch.allclose(tensor, torch.stack([s[name] for s in states]).mean(0), atol=1e-7), name
    assert any(not torch.equal(averaged[name], states[-1][name]) for name in averaged)  # not just a copy


def test_last_n_is_the_mean_of_the_newest_step_checkpoints_and_loads_by_name(run_with_checkpoints, capsys):
    run_dir = run_with_checkpoints
    main([str(run_dir), "--last", "3"])
    assert "averaged 3 checkpoints" in capsys.readouterr().out
    averaged = load_checkpoint(run_dir / "checkpoints" / "averaged_last3.pt")
    assert averaged["averaged_from"] == ["step_00000004.pt", "step_00000006.pt", "step_00000008.pt"]
    assert averaged["step"] == 8 and "optimizer" not in averaged
    assert_mean_of(averaged["model"], [checkpoint_path(run_dir / "checkpoints", s) for s in (4, 6, 8)])

    translator = Translator.from_run(run_dir, "averaged_last3", device="cpu")
    assert translator.checkpoint_path.name == "averaged_last3.pt" and isinstance(translator("a b c"), str)


def test_best_n_is_the_mean_of_the_best_validation_checkpoints(run_with_checkpoints, tmp_path):
    run_dir = run_with_checkpoints
    losses = {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "valid" and r["step"]}
    two_best = sorted(sorted(losses, key=losses.get)[:2])
    kept = list_best_checkpoints(run_dir / "checkpoints")
    assert [load_checkpoint(p)["step"] for p in kept] == two_best  # the trainer keeps exactly the 2 best
    main([str(run_dir), "--best", "2"])
    averaged = load_checkpoint(run_dir / "checkpoints" / "averaged_best2.pt")
    assert_mean_of(averaged["model"], kept)
    record = evaluate(EvaluateArgs(run_dir, split="valid", checkpoint="averaged_best2", device="cpu",
                                   output=tmp_path / "valid.hyp"))
    assert record["checkpoint"].endswith("averaged_best2.pt")


@pytest.mark.parametrize("argv, message", [
    (["--last", "0"], "--last 0: expected a positive number of checkpoints"),
    (["--last", "5"], "--last 5: {run}/checkpoints keeps 3 step checkpoints"),
    (["--best", "3"], "--best 3: {run}/checkpoints keeps 2 best_step_*.pt checkpoints"),
    ([], "give exactly one of --last N and --best N"),
    (["--last", "2", "--output", "best"], "--output best: that name is the trainer's own"),
])
def test_bad_requests_are_one_error_line(run_with_checkpoints, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(run_with_checkpoints), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + message.format(run=run_with_checkpoints)), err


def test_missing_run_directory_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope"), "--last", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: run directory {tmp_path / 'nope'} does not exist")
