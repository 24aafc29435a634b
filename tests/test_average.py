"""Checkpoint averaging: the mean of the chosen checkpoints, loadable by name, and one-line errors."""

import shutil

import pytest
import torch

from fs2mini.average import main
from fs2mini.checkpoint import checkpoint_path, list_best_checkpoints, load_checkpoint, write_checkpoint
from fs2mini.corpus import TsvCorpus, corpus_languages, training_sentences
from fs2mini.pipeline import Skipped
from fs2mini.tokenizer import TokenizerConfig, load_or_train_tokenizer, tokenizer_record
from fs2mini.evaluate import EvaluateArgs, evaluate
from fs2mini.trainer import train
from fs2mini.translator import Translator
from helpers import read_metrics
from synthetic import write_reversal_tsv

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
    (["--best", "2", "--output", "best_step_00000004"], "--output best_step_00000004: that name is the trainer's own"),
    (["--last", "2", "--output", "step_00000009"], "--output step_00000009: that name is the trainer's own"),
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


def _copy_of(run_dir, tmp_path):
    """A copy of the run without the averages earlier tests wrote."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("averaged_*"))
    return copy


def _one_error_line(argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    return err[0]


def test_a_checkpoint_of_another_shape_is_refused_naming_it(run_with_checkpoints, tmp_path, capsys):
    run_dir = _copy_of(run_with_checkpoints, tmp_path)
    state = load_checkpoint(checkpoint_path(run_dir / "checkpoints", 8))
    weights = {**state["model"], "embed.weight": state["model"]["embed.weight"][:, :32]}  # a narrower model's table
    write_checkpoint(checkpoint_path(run_dir / "checkpoints", 10), weights, config=state["config"],
                     tokenizer=state["tokenizer"], step=10)
    err = _one_error_line([str(run_dir), "--last", "3"], capsys)
    assert err.startswith("error: cannot average step_00000006.pt with step_00000010.pt: embed.weight is (28, 64) in "
                          "step_00000006.pt and (28, 32) in step_00000010.pt"), err
    assert not (run_dir / "checkpoints" / "averaged_last3.pt").exists()


def test_a_checkpoint_of_another_tokenizer_is_refused_naming_it(run_with_checkpoints, tmp_path, capsys):
    run_dir = _copy_of(run_with_checkpoints, tmp_path)
    other_tsv = write_reversal_tsv(tmp_path / "other.tsv", 300, seed=5)
    corpus = TsvCorpus(path=other_tsv)
    config = load_checkpoint(checkpoint_path(run_dir / "checkpoints", 8))["config"]
    other = load_or_train_tokenizer(TokenizerConfig(vocab_size=28, cache_dir=tmp_path / "spm"),
                                    training_sentences(corpus, Skipped()), corpus_languages(corpus))
    state = load_checkpoint(checkpoint_path(run_dir / "checkpoints", 4))
    write_checkpoint(checkpoint_path(run_dir / "checkpoints", 4), state["model"], config=config,
                     tokenizer=tokenizer_record(other), step=4)  # same shapes, other pieces: averaging would be nonsense
    err = _one_error_line([str(run_dir), "--last", "3"], capsys)
    assert err.startswith("error: cannot average step_00000004.pt with step_00000008.pt: they were trained with "
                          f"different tokenizers (sha256 {other.fingerprint[:12]}"), err
    # Every checkpoint of another tokenizer than the run's tokenizer.model: refused as translate refuses it.
    shutil.copy(tmp_path / "spm" / next(p.name for p in (tmp_path / "spm").glob("spm-*.model")), run_dir / "tokenizer.model")
    err = _one_error_line([str(run_dir), "--last", "2"], capsys)
    assert "tokenizer.model (sha256" in err and "is not the tokenizer" in err and "step_00000008.pt was trained with" in err
    assert not list((run_dir / "checkpoints").glob("averaged_*"))


def test_output_over_a_kept_best_checkpoint_is_refused_and_it_stays(run_with_checkpoints, tmp_path, capsys):
    run_dir = _copy_of(run_with_checkpoints, tmp_path)
    kept = list_best_checkpoints(run_dir / "checkpoints")[-1]
    before = kept.read_bytes()
    err = _one_error_line([str(run_dir), "--last", "2", "--output", kept.stem], capsys)
    assert err.startswith(f"error: --output {kept.stem}: that name is the trainer's own")
    assert kept.read_bytes() == before


def test_a_killed_averages_temporary_file_is_removed_by_the_next(run_with_checkpoints, tmp_path):
    run_dir = _copy_of(run_with_checkpoints, tmp_path)
    leftover = run_dir / "checkpoints" / ".averaged_last2.pt.k1ll3d.tmp"  # what SIGKILL inside the write leaves
    leftover.write_bytes(b"PK\x03\x04half")
    other = run_dir / "checkpoints" / ".step_00000010.pt.x1y2z3.tmp"  # a training's write in progress: not ours
    other.write_bytes(b"PK")
    main([str(run_dir), "--last", "2"])
    assert not leftover.exists() and other.exists()
    assert load_checkpoint(run_dir / "checkpoints" / "averaged_last2.pt")["averaged_from"] == ["step_00000006.pt",
                                                                                               "step_00000008.pt"]
