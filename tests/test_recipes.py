"""Recipes run as a user runs them: copied into an empty directory, --help, check, train, then
translate / evaluate / `Translator.from_run` from another working directory and a fresh process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import read_metrics
from synthetic import reversal_pairs

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

TINY = ["--tokenizer.vocab-size", "28", "--data.max-tokens", "256", "--model.model-dim", "32",
        "--model.num-encoder-layers", "1", "--model.num-decoder-layers", "1", "--model.ffn-inner-dim", "64",
        "--trainer.max-steps", "4", "--trainer.validate-every", "2", "--trainer.log-every", "1",
        "--trainer.valid-translate-sentences", "5", "--trainer.autocast", "off"]


def run(*args, cwd: Path, stdin: str | None = None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, input=stdin,
                          timeout=300)


def copy_recipe(name: str, tmp_path: Path, new_name: str) -> Path:
    workdir = tmp_path / "experiment"
    workdir.mkdir()
    shutil.copy(RECIPES / name, workdir / new_name)
    return workdir / new_name


def translate_elsewhere(run_dir: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The translate CLI and `Translator.from_run` in fresh processes, from a directory that is not the recipe's
    (a run of a recipe's own classes: with consent to import the recipe)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    cli = run("-m", "fs2mini.translate", run_dir, "--beam-size", "2", "--trust-recipe-code", cwd=elsewhere,
              stdin="a b c\nd e f\n")
    api = run("-c", f"from fs2mini.translate import Translator\n"
                    f"t = Translator.from_run({str(run_dir)!r}, trust_recipe_code=True)\n"
                    "print(type(t.model).__name__, type(t.model).__module__)\nprint(repr(t('a b c')))", cwd=elsewhere)
    return cli, api


def test_copied_tatoeba_recipe_trains_and_names_its_own_runs(reversal_tsv, tmp_path):
    recipe = copy_recipe("tatoeba.py", tmp_path, "my_experiment.py")
    (recipe.parent / "examples").mkdir()
    shutil.copy(reversal_tsv, recipe.parent / "examples" / "fra.txt")
    help_text = run(recipe, "--help", cwd=recipe.parent)
    assert help_text.returncode == 0 and "Train an English→French translation model on Tatoeba" in help_text.stdout
    assert "examples/fra.txt" in help_text.stdout
    check = run(recipe, "check", "tokenizer", *TINY, cwd=recipe.parent)
    assert check.returncode == 0, check.stderr
    assert "check tokenizer: OK" in check.stdout
    result = run(recipe, *TINY, cwd=recipe.parent)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(recipe.parent / "runs" / "my_experiment" / "metrics.jsonl")
    assert [m["step"] for m in metrics if m["split"] == "valid"] == [0, 2, 4]


def test_tatoeba_recipe_without_data_says_how_to_get_it(tmp_path):
    result = run(RECIPES / "tatoeba.py", "check", "tokenizer", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "examples/fra.txt does not exist" in result.stderr and "python -m fs2mini.tatoeba" in result.stderr


def write_aligned_corpus(directory: Path) -> None:
    directory.mkdir()
    pairs = reversal_pairs(1500, seed=5)
    for split, part in (("train", pairs[:1400]), ("valid", pairs[1400:1450]), ("test", pairs[1450:])):
        (directory / f"{split}.eng").write_text("".join(source + "\n" for source, _ in part), encoding="utf-8")
        (directory / f"{split}.fra").write_text("".join(target + "\n" for _, target in part), encoding="utf-8")


def test_custom_data_recipe_reads_its_own_corpus_and_evaluates_it_from_anywhere(tmp_path):
    recipe = copy_recipe("custom_data.py", tmp_path, "my_data.py")
    write_aligned_corpus(recipe.parent / "data")
    help_text = run(recipe, "--help", cwd=recipe.parent)
    assert "data.corpus:aligned" in help_text.stdout and "data.corpus:bible" in help_text.stdout
    check = run(recipe, "check", "tokenizer", *TINY, cwd=recipe.parent)
    assert check.returncode == 0, check.stderr
    assert "source layout: __eng__" in check.stdout and "target layout: </s> __fra__" in check.stdout
    result = run(recipe, *TINY, cwd=recipe.parent)
    assert result.returncode == 0, result.stderr
    run_dir = recipe.parent / "runs" / "my_data"
    corpus = json.loads((run_dir / "config.json").read_text())["data"]["corpus"]
    assert corpus["_type"] == "AlignedTextCorpus" and corpus["_file"] == str(recipe)
    assert corpus["directory"] == str(recipe.parent / "data")  # resolved when the run started
    cli, api = translate_elsewhere(run_dir, tmp_path)
    assert cli.returncode == 0 and len(cli.stdout.splitlines()) == 2, cli.stderr
    assert api.returncode == 0, api.stderr
    evaluate = run("-m", "fs2mini.evaluate", run_dir, "--split", "test", "--trust-recipe-code", cwd=tmp_path / "elsewhere")
    assert evaluate.returncode == 0, evaluate.stderr
    assert "split test: 50 pairs" in evaluate.stdout


def test_custom_data_recipe_with_misaligned_files_says_which(tmp_path):
    recipe = copy_recipe("custom_data.py", tmp_path, "my_data.py")
    write_aligned_corpus(recipe.parent / "data")
    with (recipe.parent / "data" / "train.fra").open("a") as extra:
        extra.write("one line too many\n")
    result = run(recipe, *TINY, cwd=recipe.parent)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.eng and" in result.stderr and "differ in length at line 1401" in result.stderr
    assert not (recipe.parent / "runs").exists()  # nothing was written


def test_custom_model_recipe_trains_its_architecture_and_translates_it_in_a_fresh_process(reversal_tsv, tmp_path):
    recipe = copy_recipe("custom_model.py", tmp_path, "my_model.py")
    help_text = run(recipe, "--help", cwd=recipe.parent)
    assert "model:learned-positions-deep" in help_text.stdout and "model:small" in help_text.stdout
    check = run(recipe, "check", "model", "data.corpus:tsv", "--data.corpus.path", reversal_tsv, *TINY, cwd=recipe.parent)
    assert check.returncode == 0, check.stderr
    assert "LearnedPositionsModel" in check.stdout and "forward+backward" in check.stdout
    result = run(recipe, "model:learned-positions-deep", "data.corpus:tsv", "--data.corpus.path", reversal_tsv,
                 *TINY[:8], *TINY[10:], cwd=recipe.parent)
    assert result.returncode == 0, result.stderr
    run_dir = recipe.parent / "runs" / "my_model"
    cli, api = translate_elsewhere(run_dir, tmp_path)
    assert cli.returncode == 0 and len(cli.stdout.splitlines()) == 2, cli.stderr
    assert api.returncode == 0, api.stderr
    assert api.stdout.startswith("LearnedPositionsModel fs2mini_recipe_my_model")
    # The deep preset's 6 decoder layers came back from config.json, learned positions included.
    inspect = run("-c", f"from fs2mini.translate import Translator\n"
                        f"m = Translator.from_run({str(run_dir)!r}, trust_recipe_code=True).model\n"
                        "print(len(m.decoder_layers), tuple(m.learned_positions.weight.shape))", cwd=tmp_path)
    assert inspect.stdout.split() == ["6", "(256,", "32)"], inspect.stderr


def test_custom_loss_recipe_is_recorded_and_evaluate_scores_with_it(reversal_tsv, tmp_path):
    recipe = copy_recipe("custom_loss.py", tmp_path, "my_loss.py")
    help_text = run(recipe, "--help", cwd=recipe.parent)
    assert "task:focal" in help_text.stdout and "task:label-smoothed" in help_text.stdout
    result = run(recipe, "--task.gamma", "2", "data.corpus:tsv", "--data.corpus.path", reversal_tsv, *TINY,
                 cwd=recipe.parent)
    assert result.returncode == 0, result.stderr
    run_dir = recipe.parent / "runs" / "my_loss"
    assert json.loads((run_dir / "config.json").read_text())["task"] == {"_type": "FocalLoss", "_file": str(recipe),
                                                                         "gamma": 2.0}
    logged = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["split"] == "valid" and m["step"] == 4][0]
    evaluate = run("-m", "fs2mini.evaluate", run_dir, "--split", "valid", "--checkpoint", "step_00000004",
                   "--max-sentences", "3", "--trust-recipe-code", cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr
    scored = json.loads((run_dir / "eval" / "valid.json").read_text())
    assert scored["loss"] == pytest.approx(logged["loss"], rel=1e-5)  # the focal loss, not label smoothing
    assert scored["loss"] != pytest.approx(scored["nll"], rel=1e-3)
    # Resuming the run rebuilds the focal task from config.json: the same command continues it.
    resumed = run(recipe, "--task.gamma", "2", "data.corpus:tsv", "--data.corpus.path", reversal_tsv, *TINY[:-6],
                  "--trainer.max-steps", "6", cwd=recipe.parent)
    assert resumed.returncode == 0 and "resumed at step 4" in resumed.stderr, resumed.stderr
    # The recipe file is gone: commands that need its class say so in one line and change nothing.
    recipe.rename(recipe.with_suffix(".bak"))
    before = sorted(p.name for p in run_dir.rglob("*"))
    gone = run("-m", "fs2mini.evaluate", run_dir, "--trust-recipe-code", cwd=tmp_path)
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    assert gone.stderr.strip().startswith(f"error: {run_dir / 'config.json'}: recipe file {recipe} does not exist;")
    assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_recipes_are_short():
    for name in ("custom_data.py", "custom_model.py", "custom_loss.py", "bible_multilingual.py"):
        assert len((RECIPES / name).read_text().splitlines()) < 80, name


def write_tiny_bibles(path: Path, books: tuple[tuple[int, int], ...] = ((1, 300), (8, 6), (32, 6))) -> None:
    """Bibles k (English), l (French), e (German), v (Spanish) of letter 'verses': (book, verses) for each book;
    by default books 1 (train), 8 (valid), 32 (test)."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT)")
    rows = []
    for book, count in books:
        for verse, (source, target) in enumerate(reversal_pairs(count, seed=book), start=1):
            for code, text in (("k", source), ("l", target), ("e", source.upper()), ("v", target.upper())):
                rows.append((0, code, book, 1, verse, text))
    db.executemany("INSERT INTO bible VALUES (?,?,?,?,?,?)", rows)
    db.commit()
    db.close()


def test_copied_multilingual_recipe_trains_every_direction_and_evaluates_the_zero_shot_one(tmp_path):
    recipe = copy_recipe("bible_multilingual.py", tmp_path, "my_languages.py")
    db = recipe.parent / "bible.db"
    write_tiny_bibles(db)
    help_text = run(recipe, "--help", cwd=recipe.parent)
    assert help_text.returncode == 0 and "--data.more-corpora.1.target-bible" in help_text.stdout
    databases = [f"--data.{name}.db-path" for name in ("corpus", *(f"more-corpora.{i}" for i in range(2)),
                                                        "zero-shot-corpora.0")]
    tiny = [*TINY[:1], "40", *TINY[2:], *(arg for flag in databases for arg in (flag, db))]
    result = run(recipe, *tiny, cwd=recipe.parent)
    assert result.returncode == 0, result.stderr
    assert "fra-deu (zero-shot): loss" in result.stderr
    run_dir = recipe.parent / "runs" / "my_languages"
    last = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["split"] == "valid"][-1]
    for name in ("eng-fra", "eng-deu", "eng-spa", "fra-deu"):
        assert f"{name}/loss" in last and f"{name}/bleu" in last
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluate = run("-m", "fs2mini.evaluate", run_dir, "--split", "test", cwd=elsewhere)
    assert evaluate.returncode == 0, evaluate.stderr
    summary = json.loads((run_dir / "eval" / "test.json").read_text())
    assert len(summary["directions"]) == 4 and summary["zero_shot"] == ["fra-deu"] and "bleu" in summary["average"]
    zero_shot = run("-m", "fs2mini.translate", run_dir, "--source-lang", "fra", "--target-lang", "deu", cwd=elsewhere,
                    stdin="a b c\n")
    assert zero_shot.returncode == 0 and len(zero_shot.stdout.splitlines()) == 1, zero_shot.stderr


def test_backtranslation_monolingual_stage_stops_quietly_when_its_reader_does(tmp_path):
    """`monolingual | head`: the pipe closes early; the stage ends without a BrokenPipe traceback."""
    recipe = copy_recipe("backtranslate.py", tmp_path, "backtranslate.py")
    db = recipe.parent / "bible.db"
    write_tiny_bibles(db, books=((1, 20000), (8, 6), (32, 6), (40, 20)))  # more than a pipe's buffer holds
    stage = subprocess.Popen([sys.executable, str(recipe), "monolingual", str(db)], cwd=recipe.parent,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = [stage.stdout.readline(), stage.stdout.readline()]
    stage.stdout.close()  # what `head -n 2` does once it has its lines
    stderr = stage.stderr.read()
    assert stage.wait(timeout=120) == 0 and all(first), stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


@pytest.mark.slow
def test_backtranslation_workflow_runs_as_its_docstring_says(tmp_path):
    """Reverse model, monolingual text, sampled translations, pasted, trained on next to the genuine pairs."""
    recipe = copy_recipe("backtranslate.py", tmp_path, "backtranslate.py")
    workdir, db = recipe.parent, recipe.parent / "bible.db"
    write_tiny_bibles(db, books=((1, 60), (8, 6), (32, 6), (40, 200)))  # Old Testament, valid, test, New Testament
    bible = ["--data.corpus.db-path", db]
    reverse = run(recipe, "reverse", *TINY, *bible, cwd=workdir)
    assert reverse.returncode == 0, reverse.stderr
    french = run(recipe, "monolingual", db, cwd=workdir)
    assert french.returncode == 0 and len(french.stdout.splitlines()) == 60  # book 1 only: 8 and 32 are held out
    (workdir / "ot.fra").write_text(french.stdout)
    english = run("-m", "fs2mini.translate", workdir / "runs" / "backtranslate_reverse", "--input", workdir / "ot.fra",
                  "--sampling", "--beam-size", "1", "--top-k", "10", "--seed", "1", cwd=workdir)
    assert english.returncode == 0 and len(english.stdout.splitlines()) == 60, english.stderr
    (workdir / "backtranslated.tsv").write_text("".join(f"{e}\t{f}\n" for e, f in
                                                        zip(english.stdout.splitlines(), french.stdout.splitlines())))
    forward = run(recipe, *TINY, *bible, cwd=workdir)
    assert forward.returncode == 0, forward.stderr
    config = json.loads((workdir / "runs" / "backtranslate" / "config.json").read_text())
    assert config["data"]["more_corpora"][0]["tag"] == "<BT>"
    baseline = run(recipe, "baseline", *TINY, *bible, cwd=workdir)
    assert baseline.returncode == 0, baseline.stderr
    assert json.loads((workdir / "runs" / "backtranslate_baseline" / "config.json").read_text())["data"]["more_corpora"] == []
