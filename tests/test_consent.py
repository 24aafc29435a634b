"""Consent before code: a run directory whose config.json names code outside fs2mini (`_file`, `_module`) is not
imported, i.e. not run, without `--trust-recipe-code` / `trust_recipe_code=True`; the recipe that trained a run
resumes it without the flag; a recipe without an `if __name__ == "__main__":` guard never starts a training when
its classes are rebuilt.

The recipes here append their module's `__name__` to a trace file each time their code runs: `__main__` when run as
a script, `fs2mini_recipe_...` (or the module name) when a command imported them.
"""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config
from fs2mini.check import check
from fs2mini.config import load_config
from fs2mini.errors import UserError
from fs2mini.trainer import train
from fs2mini.translator import Translator

RECIPE = '''"""A recipe that leaves a trace each time its code runs."""
from dataclasses import dataclass
from pathlib import Path

from fs2mini.config import TrainConfig, TrainerConfig
from fs2mini.corpus import TsvCorpus
from fs2mini.data import DataConfig
from fs2mini.model import ModelConfig
from fs2mini.tokenizer import TokenizerConfig
from fs2mini.train import main

with open({trace!r}, "a") as trace:
    trace.write(__name__ + "\\n")


@dataclass(frozen=True)
class PayloadModel(ModelConfig):
    """fs2mini's model under a name only this file defines."""


CONFIG = TrainConfig(
    output_dir=Path({output_dir!r}),
    tokenizer=TokenizerConfig(vocab_size=28, cache_dir=Path({cache!r})),
    data=DataConfig(corpus=TsvCorpus(path=Path({tsv!r}), valid_percent=3.0, test_percent=3.0), max_tokens=256,
                    cache_dir=Path({cache!r}) / "prepared"),
    model=PayloadModel(model_dim=32, num_encoder_layers=1, num_decoder_layers=1, num_encoder_attn_heads=2,
                       num_decoder_attn_heads=2, ffn_inner_dim=64),
    trainer=TrainerConfig(max_steps=2, validate_every=2, checkpoint_every=2, log_every=1, valid_translate_sentences=0,
                          autocast="off", progress="lines", tensorboard=False, max_time=None),
)
'''
GUARDED = 'if __name__ == "__main__":\n    main(CONFIG)\n'
UNGUARDED = "main(CONFIG)  # no guard: importing this file calls main\n"


def write_recipe(path: Path, trace: Path, tsv: Path, cache: Path, *, guarded: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = RECIPE.format(trace=str(trace), output_dir=str(path.parent / "runs" / path.stem), cache=str(cache), tsv=str(tsv))
    path.write_text(text + "\n\n" + (GUARDED if guarded else UNGUARDED))
    return path


def traces(trace: Path) -> list[str]:
    """Who ran the recipe's code, in order (empty: it never ran)."""
    return trace.read_text().split() if trace.exists() else []


@pytest.fixture(scope="module")
def base_run(reversal_tsv, tokenizer_cache, tmp_path_factory) -> Path:
    """A 2-step run of fs2mini's own model (its weights fit `PayloadModel`, fs2mini's model under another name)."""
    cfg = tiny_config(reversal_tsv, tmp_path_factory.mktemp("consent") / "run", tokenizer_cache, max_steps=2,
                      validate_every=2, checkpoint_every=2, valid_translate_sentences=0, tensorboard=False)
    return train(cfg)


def shared_run(base_run: Path, tmp_path: Path, **location: str) -> Path:
    """A copy of `base_run` whose config.json says its model class lives at `location` (`_file=` or `_module=`),
    as a run directory someone shares can say."""
    run = tmp_path / "shared"
    shutil.copytree(base_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"] = {**config["model"], "_type": "PayloadModel", **location}
    (run / "config.json").write_text(json.dumps(config, indent=2))
    return run


def test_translate_runs_no_code_from_a_run_directory_without_the_flag(base_run, reversal_tsv, tokenizer_cache, tmp_path):
    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "payload.py", trace, reversal_tsv, tokenizer_cache)
    run = shared_run(base_run, tmp_path, _file=str(recipe))
    command = [sys.executable, "-m", "fs2mini.translate", str(run)]
    refused = subprocess.run(command, capture_output=True, text=True, input="a b c\n", timeout=300, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == "" and traces(trace) == []
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith(f"error: {run / 'config.json'} names code from outside fs2mini")
    assert f"{recipe} (for model)" in refused.stderr and "--trust-recipe-code" in refused.stderr
    trusted = subprocess.run([*command, "--trust-recipe-code"], capture_output=True, text=True, input="a b c\n",
                             timeout=300, cwd=tmp_path)
    assert trusted.returncode == 0 and len(trusted.stdout.splitlines()) == 1, trusted.stderr
    assert len(traces(trace)) == 1 and traces(trace)[0].startswith("fs2mini_recipe_payload_")


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_evaluate_and_export_run_no_code_from_a_run_directory_without_the_flag(command, base_run, reversal_tsv,
                                                                                tokenizer_cache, tmp_path, capsys):
    from fs2mini import evaluate, hf

    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "payload.py", trace, reversal_tsv, tokenizer_cache)
    run = shared_run(base_run, tmp_path, _file=str(recipe))
    main, argv = {"evaluate": (evaluate.main, [str(run), "--output", str(tmp_path / "out.hyp")]),
                  "export": (hf.main, ["export", str(run), str(tmp_path / "exported")])}[command]
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2 and traces(trace) == []
    assert f"{recipe} (for model)" in capsys.readouterr().err
    main([*argv, "--trust-recipe-code"])
    assert len(traces(trace)) == 1


def test_translator_from_run_needs_trust_recipe_code_and_then_imports_the_recipe_once(
        base_run, reversal_tsv, tokenizer_cache, tmp_path):
    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "payload.py", trace, reversal_tsv, tokenizer_cache)
    run = shared_run(base_run, tmp_path, _file=str(recipe))
    with pytest.raises(UserError, match=r"names code from outside fs2mini.*payload\.py \(for model\); pass "
                                        r"--trust-recipe-code \(Python: trust_recipe_code=True\)"):
        Translator.from_run(run, device="cpu")
    assert traces(trace) == []
    translator = Translator.from_run(run, device="cpu", trust_recipe_code=True)
    assert isinstance(translator("a b c"), str)
    assert len(traces(trace)) == 1
    # The recipe is part of this process now: loading the run again runs nothing, so it needs no consent.
    assert type(load_config(run / "config.json").model).__name__ == "PayloadModel"
    assert len(traces(trace)) == 1


def test_a_relative_recipe_path_is_named_as_the_file_that_would_run(base_run, reversal_tsv, tokenizer_cache, tmp_path,
                                                                    monkeypatch):
    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "payload.py", trace, reversal_tsv, tokenizer_cache)
    run = shared_run(base_run, tmp_path, _file="payload.py")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"would run: {recipe} \\(for model\\)"):
        load_config(run / "config.json")
    assert traces(trace) == []


def test_an_outside_module_needs_consent_each_time_and_fs2mini_modules_do_not(
        base_run, reversal_tsv, tokenizer_cache, tmp_path, monkeypatch):
    trace = tmp_path / "trace"
    name = f"payload_module_{tmp_path.name}"
    write_recipe(tmp_path / "modules" / f"{name}.py", trace, reversal_tsv, tokenizer_cache)
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    run = shared_run(base_run, tmp_path, _module=name)
    try:
        with pytest.raises(UserError, match=f"would run: module {name} \\(for model\\); pass --trust-recipe-code"):
            load_config(run / "config.json")
        assert traces(trace) == [] and name not in sys.modules
        assert type(load_config(run / "config.json", trust_recipe_code=True).model).__name__ == "PayloadModel"
        assert traces(trace) == [name]
        # Imported now, yet building its classes runs its code: the next load asks again.
        with pytest.raises(UserError, match=f"would run: module {name} \\(for model\\); pass --trust-recipe-code"):
            load_config(run / "config.json")
        assert traces(trace) == [name]
    finally:
        sys.modules.pop(name, None)
    config = json.loads((base_run / "config.json").read_text())
    config["model"] = {**config["model"], "_type": "ModelConfig", "_module": "fs2mini.model"}
    (tmp_path / "fs2mini_module.json").write_text(json.dumps(config))
    assert type(load_config(tmp_path / "fs2mini_module.json").model).__name__ == "ModelConfig"


SIDE_EFFECT = '''"""A module some program imported: building its dataclass writes a file."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Touches:
    path: str = ""

    def __post_init__(self):
        open(self.path, "w").close()
'''


def named_class_run(base_run: Path, folder: Path, module: str, name: str, **fields) -> Path:
    """`base_run`'s config.json written to `folder`, its model rebuilt from `module`'s class `name` with `fields`."""
    config = json.loads((base_run / "config.json").read_text())
    config["model"] = {"_type": name, "_module": module, **fields}
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "config.json"


@pytest.mark.parametrize("module, name", [("argparse", "Namespace"), ("dataclasses", "Field"), ("torch", "Size")])
def test_a_class_of_an_imported_module_outside_fs2mini_needs_consent(base_run, tmp_path, module, name):
    """Imported already, so importing runs nothing new; still a config.json must not choose which of its classes run."""
    assert module in sys.modules
    path = named_class_run(base_run, tmp_path, module, name)
    with pytest.raises(UserError, match=rf"^{path} names code from outside fs2mini, which loading the run would run: "
                                        rf"module {module} \(for model\); pass --trust-recipe-code"):
        load_config(path)
    with pytest.raises(UserError, match=f"{module} has no dataclass {name} of its own"):  # consented: no config class
        load_config(path, trust_recipe_code=True)


def test_a_dataclass_whose_post_init_has_a_side_effect_is_not_built_without_consent(base_run, tmp_path, monkeypatch):
    name = f"side_effect_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(SIDE_EFFECT)
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "marker"
    try:
        __import__(name)  # as a program embedding fs2mini may have imported it
        path = named_class_run(base_run, tmp_path, name, "Touches", path=str(marker))
        with pytest.raises(UserError, match=rf"would run: module {name} \(for model\); pass --trust-recipe-code"):
            load_config(path)
        assert not marker.exists()
        assert type(load_config(path, trust_recipe_code=True).model).__name__ == "Touches" and marker.exists()
    finally:
        sys.modules.pop(name, None)


def test_the_cli_refuses_an_imported_modules_class_in_one_line(base_run, tmp_path):
    """`python -m fs2mini.translate` has imported argparse (and torch, tyro, ...): naming one of them is refused too."""
    run = tmp_path / "shared"
    shutil.copytree(base_run, run)
    named_class_run(base_run, run, "argparse", "Namespace")
    refused = subprocess.run([sys.executable, "-m", "fs2mini.translate", str(run)], capture_output=True, text=True,
                             input="a b c\n", timeout=300, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith(f"error: {run / 'config.json'} names code from outside fs2mini")
    assert "module argparse (for model)" in refused.stderr and "--trust-recipe-code" in refused.stderr


def test_a_recipe_file_names_only_its_own_classes(base_run, reversal_tsv, tokenizer_cache, tmp_path):
    """A recipe this process has run needs no consent again, but only for the classes it defines, not one it imports."""
    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "payload.py", trace, reversal_tsv, tokenizer_cache)
    run = shared_run(base_run, tmp_path, _file=str(recipe))
    load_config(run / "config.json", trust_recipe_code=True)  # the recipe is part of this process now
    config = json.loads((run / "config.json").read_text())
    config["model"] = {"_type": "TrainerConfig", "_file": str(recipe)}  # fs2mini's class, imported by the recipe
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="payload.py has no dataclass TrainerConfig of its own"):
        load_config(run / "config.json")


def test_consent_is_the_callers_never_the_files(base_run, reversal_tsv, tokenizer_cache, tmp_path):
    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "payload.py", trace, reversal_tsv, tokenizer_cache)
    run = shared_run(base_run, tmp_path, _file=str(recipe))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "trust_recipe_code": True}))
    with pytest.raises(UserError, match="--trust-recipe-code"):
        load_config(run / "config.json")
    assert load_config(run / "config.json", trust_recipe_code=True).trust_recipe_code is False
    config["model"]["_file"] = 3
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"not a valid fs2mini config: model\._file is 3; expected a string"):
        load_config(run / "config.json", trust_recipe_code=True)


def test_check_trainer_imports_a_resumed_runs_recipe_only_with_the_flag(base_run, reversal_tsv, tokenizer_cache,
                                                                       tmp_path, capsys):
    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "payload.py", trace, reversal_tsv, tokenizer_cache)
    run = shared_run(base_run, tmp_path, _file=str(recipe))
    cfg = dataclasses.replace(load_config(base_run / "config.json"), output_dir=run)
    with pytest.raises(UserError, match=f"would run: {recipe} \\(for model\\); pass --trust-recipe-code"):
        check("trainer", cfg)
    assert traces(trace) == []
    # With consent the recipe is imported, and the resume check goes on to compare the configs: fs2mini's model
    # is not the recipe's.
    with pytest.raises(UserError, match=f"cannot resume {run}: the checkpoint was trained with different model._file"):
        check("trainer", dataclasses.replace(cfg, trust_recipe_code=True))
    assert len(traces(trace)) == 1


def test_a_recipe_without_a_main_guard_is_not_run_as_a_training(base_run, reversal_tsv, tokenizer_cache, tmp_path,
                                                              monkeypatch):
    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "unguarded.py", trace, reversal_tsv, tokenizer_cache, guarded=False)
    run = shared_run(base_run, tmp_path, _file=str(recipe))
    monkeypatch.setattr(sys, "argv", ["unguarded.py"])  # what main() would parse: the recipe's own tiny run
    with pytest.raises(UserError, match=f"cannot import {recipe} for PayloadModel: it starts a training when imported; "
                                        'expected its call of main\\(\\) under `if __name__ == "__main__":`'):
        Translator.from_run(run, device="cpu", trust_recipe_code=True)
    assert len(traces(trace)) == 1  # imported, and stopped at its call of main
    assert not (tmp_path / "runs").exists()  # no training started
    assert not [name for name in sys.modules if name.startswith("fs2mini_recipe_unguarded_")]


def test_a_recipe_calling_the_trainer_at_import_is_not_run_as_a_training(base_run, reversal_tsv, tokenizer_cache,
                                                                        tmp_path):
    """The same guard for a recipe that calls `fs2mini.trainer.train(CONFIG)` (as finetune_nllb.py's main does)."""
    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "direct.py", trace, reversal_tsv, tokenizer_cache)
    recipe.write_text(recipe.read_text().replace(GUARDED, "from fs2mini.trainer import train\ntrain(CONFIG)\n"))
    run = shared_run(base_run, tmp_path, _file=str(recipe))
    with pytest.raises(UserError, match=f"cannot import {recipe} for PayloadModel: it starts a training when imported"):
        Translator.from_run(run, device="cpu", trust_recipe_code=True)
    assert len(traces(trace)) == 1 and not (tmp_path / "runs").exists()


def test_a_recipe_resumes_its_own_run_without_the_flag_but_not_another_recipes(reversal_tsv, tokenizer_cache, tmp_path):
    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "experiment" / "mine.py", trace, reversal_tsv, tokenizer_cache)

    def run(script: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                              cwd=script.parent)

    started = run(recipe)
    assert started.returncode == 0, started.stderr
    resumed = run(recipe, "--trainer.max-steps", "3", "--trainer.checkpoint-every", "1")
    assert resumed.returncode == 0 and "resumed at step 2" in resumed.stderr, resumed.stderr
    assert traces(trace) == ["__main__", "__main__"]  # run twice as a script, never imported
    other = shutil.copy(recipe, recipe.with_name("theirs.py"))
    refused = run(Path(other), "--output-dir", str(tmp_path / "experiment" / "runs" / "mine"))
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert f"would run: {recipe} (for model)" in refused.stderr and "--trust-recipe-code" in refused.stderr
    assert traces(trace) == ["__main__", "__main__", "__main__"]  # theirs.py itself ran; mine.py was not imported


def test_finetune_recipe_reads_an_init_run_of_recipe_code_only_with_the_flag(base_run, reversal_tsv, tokenizer_cache,
                                                                              tmp_path, monkeypatch):
    import importlib.util

    trace = tmp_path / "trace"
    recipe = write_recipe(tmp_path / "payload.py", trace, reversal_tsv, tokenizer_cache)
    run = shared_run(base_run, tmp_path, _file=str(recipe))
    path = Path(__file__).resolve().parent.parent / "recipes" / "finetune_nllb.py"
    spec = importlib.util.spec_from_file_location("finetune_nllb_under_test", path)
    finetune = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, finetune)  # (its dataclasses look their module up)
    spec.loader.exec_module(finetune)
    with pytest.raises(UserError, match="--trust-recipe-code"):
        finetune.default_config(run)
    assert traces(trace) == []
    assert finetune.default_config(run, trust_recipe_code=True).init == run and len(traces(trace)) == 1
