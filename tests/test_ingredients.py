"""Replacing an ingredient from a recipe: alternatives on the CLI, config.json that rebuilds them,
`check` that does what the run will do, and one-line errors for classes that break the protocols."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fs2mini.config import config_from_json, config_to_json, load_config
from fs2mini.errors import UserError
from fs2mini.model import ModelConfig
from fs2mini.optim import ConstantConfig
from fs2mini.task import TaskConfig
from fs2mini.train import main, parse_config
from fs2mini.trainer import train
from synthetic import reversal_pairs


@dataclass(frozen=True)
class ListCorpus:
    """A corpus that is a Python list: what a recipe reading JSONL or a `datasets` dataset looks like."""

    size: int = 300
    """Number of pairs."""

    def languages(self) -> tuple[str, str]:
        return "eng", "fra"

    def read_pairs(self, split, skipped):
        return iter(reversal_pairs(self.size if split == "train" else 20, seed=0 if split == "train" else 1))


@dataclass(frozen=True)
class BadPairsCorpus(ListCorpus):
    def read_pairs(self, split, skipped):
        return iter([("a b", "b a"), ["not", "a tuple"]])


@dataclass(frozen=True)
class NoBuildModel:
    model_dim: int = 8


@dataclass(frozen=True)
class NotAModule(ModelConfig):
    def build(self, vocab):
        return object()


@dataclass(frozen=True)
class LossOnly:
    def build(self, vocab):
        return "a string is not a task"


@dataclass(frozen=True)
class Warmup10:
    """Constant after 10 warmup steps (a recipe's schedule)."""

    lr_scale: float = 1.0

    def build(self, peak_lr, max_steps):
        return lambda step: peak_lr * self.lr_scale * min(1.0, step / 10)


def test_recipe_alternatives_are_cli_subcommands_next_to_the_builtins(tmp_path):
    default = dataclasses.replace(tiny_config(Path("x.tsv"), tmp_path, tmp_path), lr_scheduler=Warmup10())
    cfg = parse_config(default, ["data.corpus:list", "--data.corpus.size", "40", "lr-scheduler:warmup10",
                                 "--lr-scheduler.lr-scale", "0.5"], "doc",
                       corpora={"list": ListCorpus()}, lr_schedulers={"warmup10": Warmup10()})
    assert cfg.data.corpus == ListCorpus(size=40) and cfg.lr_scheduler == Warmup10(lr_scale=0.5)
    assert type(cfg.data).__name__ == "DataConfig" and type(cfg).__module__ == "fs2mini.config"
    builtin = parse_config(default, ["lr-scheduler:constant"], "doc", lr_schedulers={"warmup10": Warmup10()})
    assert builtin.lr_scheduler == ConstantConfig()
    # A default of a recipe class that no choice names is offered under its class name.
    assert parse_config(default, [], "doc").lr_scheduler == Warmup10()


def test_config_json_records_where_recipe_classes_live_and_rebuilds_them(tmp_path):
    cfg = dataclasses.replace(tiny_config(Path("x.tsv"), tmp_path, tmp_path), lr_scheduler=Warmup10(0.25))
    tagged = config_to_json(cfg)["lr_scheduler"]
    assert tagged == {"_type": "Warmup10", "_module": "test_ingredients", "lr_scale": 0.25}
    rebuilt = config_from_json(type(cfg), json.loads(json.dumps(config_to_json(cfg))))
    assert rebuilt == cfg
    tagged["_module"] = "no_such_recipe_module"
    with pytest.raises(UserError, match=r"cannot import no_such_recipe_module for Warmup10 \(ModuleNotFoundError"):
        config_from_json(type(cfg), {**config_to_json(cfg), "lr_scheduler": tagged})


def test_a_recipe_corpus_trains_and_its_run_rebuilds_it(tokenizer_cache, tmp_path):
    cfg = dataclasses.replace(tiny_config(Path("unused.tsv"), tmp_path / "run", tokenizer_cache, max_steps=4))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpus=ListCorpus()))
    run_dir = train(cfg)
    # (ListCorpus lives in this test module, outside fs2mini: building it from a config.json needs consent.)
    assert load_config(run_dir / "config.json", trust_recipe_code=True).data.corpus == ListCorpus()


def test_paths_are_resolved_when_the_run_starts(reversal_tsv, tokenizer_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(reversal_tsv.parent)
    cfg = tiny_config(Path(reversal_tsv.name), Path("relative-run"), tokenizer_cache, max_steps=2)
    run_dir = train(cfg)
    assert run_dir == reversal_tsv.parent / "relative-run"
    saved = load_config(run_dir / "config.json")
    assert saved.data.corpus.path == reversal_tsv and saved.output_dir == run_dir


@pytest.mark.parametrize("replace, message", [
    (lambda c: dataclasses.replace(c, data=dataclasses.replace(c.data, corpus=BadPairsCorpus())),
     "BadPairsCorpus.read_pairs('train') yielded \"['not', 'a tuple']\" as item 1; expected (source, target) string pairs"),
    (lambda c: dataclasses.replace(c, model=NoBuildModel()), "model config NoBuildModel has no build(vocab) method"),
    (lambda c: dataclasses.replace(c, model=NotAModule()), "NotAModule.build returned object, which is not an nn.Module"),
    (lambda c: dataclasses.replace(c, task=LossOnly()), "LossOnly.build returned str, which lacks compute_loss/compute_nll"),
])
def test_recipe_classes_that_break_the_protocol_fail_in_one_line_and_write_nothing(
        replace, message, reversal_tsv, tokenizer_cache, tmp_path, capsys):
    cfg = replace(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=2))
    with pytest.raises(SystemExit) as exit:
        main(cfg, argv=[])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "run").exists()


def test_check_model_runs_forward_and_backward_on_a_real_batch(reversal_tsv, tokenizer_cache, tmp_path, capsys):
    main(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache), argv=["check", "model"])
    out = capsys.readouterr().out
    assert "encoder output (" in out and "per target token" in out and "forward+backward" in out
    assert "got gradients" in out


def test_check_trainer_refuses_what_the_run_refuses_and_says_where_it_would_resume(
        reversal_tsv, tokenizer_cache, tmp_path, capsys):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=2)
    main(cfg, argv=["check", "trainer"])
    assert "does not exist yet: training would create it and start at step 0" in capsys.readouterr().out
    train(cfg)
    main(cfg, argv=["check", "trainer"])
    assert "training would resume at step 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(cfg, argv=["check", "trainer", "--model.model-dim", "32"])
    err = capsys.readouterr().err
    assert "cannot resume" in err and "model.model_dim" in err


def test_check_tokenizer_shows_both_layouts_of_a_corpus_sentence(reversal_tsv, tokenizer_cache, tmp_path, capsys):
    main(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache), argv=["check", "tokenizer"])
    out = capsys.readouterr().out
    first_source = reversal_tsv.read_text().splitlines()[0].split("\t")[0]
    assert "source layout: __eng__" in out and out.split("source layout: ")[1].splitlines()[0].endswith("</s>")
    assert "target layout: </s> __fra__" in out and f"decode(source): {first_source}" in out


def test_model_forward_says_what_it_returns():
    from fs2mini.model import DecoderOutput
    from fs2mini.vocab import VocabInfo

    model = ModelConfig(model_dim=16, num_encoder_layers=1, num_decoder_layers=1, num_encoder_attn_heads=2,
                        num_decoder_attn_heads=2, ffn_inner_dim=32, dropout_p=0.0).build(VocabInfo(20, 0, 2, 3, 1))
    output = model(torch.tensor([[5, 6, 3]]), torch.tensor([3]), torch.tensor([[3, 7, 8]]))
    assert isinstance(output, DecoderOutput) and output.logits().shape == (1, 3, 20)
    target = torch.tensor([[7, 8, 3]])
    expected = torch.nn.functional.cross_entropy(output.logits()[0], target[0], reduction="sum", label_smoothing=0.1)
    torch.testing.assert_close(output.loss(target, 0, 0.1), expected)
    assert isinstance(TaskConfig().build(VocabInfo(20, 0, 2, 3, 1)).pad_idx, int)


def test_a_config_json_from_before_the_dropout_split_keeps_its_meaning(tmp_path):
    old = config_to_json(tiny_config(Path("x.tsv"), tmp_path, tmp_path))
    old["model"] = {k: v for k, v in old["model"].items() if k not in ("attention_dropout_p", "ffn_dropout_p")}
    old["model"]["dropout_p"] = 0.3
    (tmp_path / "config.json").write_text(json.dumps(old))
    model = load_config(tmp_path / "config.json").model
    assert (model.dropout_p, model.attention_dropout_p, model.ffn_dropout_p) == (0.3, 0.3, 0.3)


def test_a_config_json_from_before_the_init_option_reads_as_fairseqs_init(tmp_path):
    """Old runs were initialised the fairseq way; the new default (N(0, 0.02)) must not rewrite their record."""
    old = config_to_json(tiny_config(Path("x.tsv"), tmp_path, tmp_path))
    del old["model"]["init"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert load_config(tmp_path / "config.json").model.init == "fairseq"


def test_a_class_loaded_from_a_recipe_file_is_saved_with_that_file_again(tmp_path):
    recipe = tmp_path / "my_recipe.py"
    recipe.write_text("from dataclasses import dataclass\n\n@dataclass(frozen=True)\nclass Sched:\n    lr_scale: float = 1.0\n\n"
                      "    def build(self, peak_lr, max_steps):\n        return lambda step: peak_lr\n")
    cfg = config_to_json(tiny_config(Path("x.tsv"), tmp_path, tmp_path))
    cfg["lr_scheduler"] = {"_type": "Sched", "_file": str(recipe), "lr_scale": 2.0}
    rebuilt = config_from_json(type(tiny_config(Path("x.tsv"), tmp_path, tmp_path)), cfg)
    assert rebuilt.lr_scheduler.lr_scale == 2.0
    assert config_to_json(rebuilt)["lr_scheduler"] == {"_type": "Sched", "_file": str(recipe), "lr_scale": 2.0}
