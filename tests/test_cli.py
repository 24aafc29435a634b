"""Command line: tyro parsing, `check COMPONENT`, and clean errors for bad input."""

import os
import re
import subprocess
import sys

import pytest

from fs2mini.config import TrainConfig
from fs2mini.corpus import TsvCorpus
from fs2mini.model import ARCHS
from fs2mini.optim import CosineConfig, SGDConfig
from fs2mini.check import COMPONENTS
from fs2mini.train import main, parse_config

from conftest import tiny_config


def test_flags_for_each_component_parse_into_the_nested_config():
    cfg = parse_config(TrainConfig(), ["--model.model-dim", "128", "--model.num-encoder-layers", "4",
                                       "--tokenizer.vocab-size", "4000", "--data.max-tokens", "1024",
                                       "--task.label-smoothing", "0.2", "--trainer.max-steps", "7",
                                       "--output-dir", "/tmp/x", "optimizer:sgd", "--optimizer.lr", "0.5",
                                       "lr-scheduler:cosine", "--lr-scheduler.final-lr-scale", "0.5"], "")
    assert cfg.model.model_dim == 128 and cfg.model.num_encoder_layers == 4
    assert cfg.tokenizer.vocab_size == 4000 and cfg.data.max_tokens == 1024 and cfg.task.label_smoothing == 0.2
    assert cfg.trainer.max_steps == 7 and str(cfg.output_dir) == "/tmp/x"
    assert cfg.optimizer == SGDConfig(lr=0.5) and cfg.lr_scheduler == CosineConfig(final_lr_scale=0.5)


def test_model_presets_are_subcommands_whose_fields_can_be_overridden():
    cfg = parse_config(TrainConfig(), ["model:dense-600m", "--model.num-decoder-layers", "6"], "")
    assert cfg.model.model_dim == 1024 and cfg.model.num_decoder_layers == 6
    assert parse_config(TrainConfig(), [], "").model == ARCHS["medium"]


def test_corpus_is_a_subcommand_and_a_recipe_default_is_kept():
    default = TrainConfig(data=TrainConfig().data.__class__(corpus=TsvCorpus()))
    cfg = parse_config(default, ["--data.corpus.path", "x.tsv"], "")
    assert isinstance(cfg.data.corpus, TsvCorpus) and str(cfg.data.corpus.path) == "x.tsv"


def test_cli_flag_spells_a_field_as_tyro_parses_it():
    """Messages name a setting by `cli_flag(*field)`: the very flag that sets it, tuple entries by their index."""
    from fs2mini.corpus import BibleCorpus
    from fs2mini.data import DataConfig
    from fs2mini.errors import cli_flag

    assert cli_flag("data", "more_corpora", 2, "target_bible") == "--data.more-corpora.2.target-bible"
    default = TrainConfig(data=DataConfig(more_corpora=(BibleCorpus("k", "e"),)))
    cfg = parse_config(default, [cli_flag("data", "more_corpora", 0, "target_bible"), "s",
                                 cli_flag("data", "max_tokens"), "512"], "")
    assert cfg.data.more_corpora[0].target_bible == "s" and cfg.data.max_tokens == 512


def run_cli(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "100"}  # one column of help boxes
    return subprocess.run([sys.executable, "-m", "fs2mini.train", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_help_lists_every_component_and_the_check_command():
    result = run_cli("--help")
    assert result.returncode == 0
    text = re.sub(r"[│\s]+", " ", result.stdout)  # undo the boxes' line wrapping
    for flag in ["--tokenizer.vocab-size", "--data.max-tokens", "--model.model-dim", "--task.label-smoothing",
                 "--optimizer.lr", "--lr-scheduler.warmup-steps", "--trainer.max-steps", "optimizer:sgd",
                 "lr-scheduler:cosine", "model:dense-600m", f"check {{{','.join(COMPONENTS)}}} [FLAGS]"]:
        assert flag in text, flag
    assert "Width of embeddings and of every layer's input and output. (default: 256)" in text


@pytest.mark.parametrize("component", COMPONENTS)
def test_check_each_component(component, reversal_tsv, tokenizer_cache, tmp_path, capsys):
    main(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache), argv=["check", component])
    out = capsys.readouterr().out
    assert f"check {component}: OK in" in out
    expected = {"tokenizer": "vocab size 28", "data": "padding", "model": "parameters", "task": "per token",
                "optimizer": "AdamW", "lr-scheduler": "step 1:", "trainer": "device cpu"}[component]
    assert expected in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["check", "nonsense"], "check: unknown component 'nonsense'"),
        (["check"], "check: name a component"),
        (["check", "model", "--model.model-dim", "100", "--model.num-encoder-attn-heads", "3"],
         "--model.num-encoder-attn-heads 3 must divide --model.model-dim 100"),
        (["check", "tokenizer", "data.corpus:tsv", "--data.corpus.path", "missing.tsv"], "missing.tsv does not exist"),
        (["check", "tokenizer", "--data.corpus.source-bible", "zz"], "unknown Bible code 'zz'"),
        (["check", "trainer", "--trainer.max-steps", "0"], "--trainer.max-steps must be a positive integer, got 0"),
        (["check", "optimizer", "--optimizer.lr", "-0.1", "--model.num-encoder-layers", "1"], "--optimizer.lr must be positive"),
        (["check", "data", "--data.max-tokens", "-5"], "--data.max-tokens must be a positive integer, got -5"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_no_traceback(args, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
