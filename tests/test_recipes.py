"""Recipes smoke-run as a user would: copy, --help, check, train a few steps."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import read_metrics

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

TINY = ["--tokenizer.vocab-size", "28", "--data.max-tokens", "256", "--model.model-dim", "32",
        "--model.num-encoder-layers", "1", "--model.num-decoder-layers", "1", "--model.ffn-inner-dim", "64",
        "--trainer.max-steps", "4", "--trainer.validate-every", "2", "--trainer.log-every", "1"]


def run(recipe: Path, *args, cwd: Path):
    return subprocess.run([sys.executable, str(recipe), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_copied_tatoeba_recipe_trains_and_names_its_own_runs(reversal_tsv, tmp_path):
    (tmp_path / "examples").mkdir()
    shutil.copy(reversal_tsv, tmp_path / "examples" / "fra.txt")
    recipe = tmp_path / "my_experiment.py"
    shutil.copy(RECIPES / "tatoeba.py", recipe)
    help_text = run(recipe, "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "Train an English→French translation model on Tatoeba" in help_text.stdout
    assert "examples/fra.txt" in help_text.stdout
    check = run(recipe, "check", "tokenizer", *TINY, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "check tokenizer: OK" in check.stdout
    result = run(recipe, *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(tmp_path / "runs" / "my_experiment" / "metrics.jsonl")
    assert [m["step"] for m in metrics if m["split"] == "valid"] == [0, 2, 4]


def test_tatoeba_recipe_without_data_says_how_to_get_it(tmp_path):
    result = run(RECIPES / "tatoeba.py", "check", "tokenizer", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "examples/fra.txt does not exist" in result.stderr and "python -m fs2mini.tatoeba" in result.stderr


@pytest.mark.slow
def test_custom_loss_recipe_trains_on_the_default_bible_corpus(tmp_path):
    result = run(RECIPES / "custom_loss.py", *TINY[2:], "--tokenizer.vocab-size", "1000", "--output-dir", str(tmp_path / "run"),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    losses = [m["loss"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if m["split"] == "train"]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)


def test_custom_loss_recipe_is_short():
    assert len((RECIPES / "custom_loss.py").read_text().splitlines()) < 50
