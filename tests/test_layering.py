"""Library modules never import command-line modules: `Translator`, scoring and checkpoint lookup live in
library modules (`translator`, `scoring`, `checkpoint`), so the trainer, `hf`, `initialize` and `ctranslate`
depend on the library, never on `python -m fs2mini.translate / evaluate / train`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fs2mini"
CLI_MODULES = {"translate", "evaluate", "train", "score"}
"""Command-line modules (a `main` and `if __name__ == "__main__"`) that library code must not import."""
CLI_ENTRY_POINTS = {"translate", "evaluate", "train", "prepare", "score"}
"""The thin command lines allowed to import them (`prepare` is `train prepare`; `hf`, also a library, is not)."""


def imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) for every import in `tree`, at any depth (lazy imports inside functions too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "fs2mini" + (f".{node.module}" if node.module else "") if node.level else node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # from fs2mini import translate
    return found


def test_library_modules_import_no_cli_module():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem in CLI_ENTRY_POINTS:
            continue
        for line, module in imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if module in {f"fs2mini.{name}" for name in CLI_MODULES}:
                offenders.append(f"fs2mini/{path.name}:{line} imports {module}")
    assert not offenders, ("library modules import command-line modules (import from fs2mini.translator, "
                           "fs2mini.scoring or fs2mini.checkpoint instead):\n" + "\n".join(offenders))


RUN_DIR_NAMES = {"tokenizer.model", "tokenizer_layout.json", "checkpoints", "best.pt", "metrics.jsonl", "translations",
                 ".fs2mini-lock", ".fs2mini-run"}
"""Names of run-directory files that mean nothing else in the package (`fs2mini.rundir` owns them)."""
HF_MODULES = {"hf", "hf_weights", "ctranslate"}
"""Modules that also read and write Hugging Face directories, whose own `config.json` is not the run's
(`hf_weights` reads their pytorch_model.bin with torch.load)."""


def test_only_rundir_spells_run_directory_file_names():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "rundir":
            continue
        names = RUN_DIR_NAMES | (set() if path.stem in HF_MODULES else {"config.json"})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Constant) and node.value in names:
                offenders.append(f"fs2mini/{path.name}:{node.lineno} spells {node.value!r}")
    assert not offenders, ("run-directory file names are spelled outside fs2mini/rundir.py "
                           "(import its constant, e.g. CHECKPOINT_DIR):\n" + "\n".join(offenders))


CHECKPOINT_KEYS = {"model", "optimizer", "rng", "lora", "grad_scaler", "averaged_from", "imported_from"}
"""Keys that make a dict literal a checkpoint (`fs2mini.checkpoint` owns them: MODEL, OPTIMIZER, ...)."""
OWN_LOAD_STATE_DICT = {"adapters": "LoRA adapters only (strict=False)", "precision": "the fp16 loss scaler"}
"""Modules that call `load_state_dict` on something other than a model's weights."""


def test_only_checkpoint_py_assembles_reads_and_loads_checkpoints():
    """One writer (`write_checkpoint`), one loader (`load_checkpoint`), one `load_weights` with its message."""
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "checkpoint":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Dict):
                keys = {key.value for key in node.keys if isinstance(key, ast.Constant)} & CHECKPOINT_KEYS
                if keys:
                    offenders.append(f"fs2mini/{path.name}:{node.lineno} builds a dict with {sorted(keys)}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name, owner = node.func.attr, node.func.value
                if name == "load_state_dict" and path.stem not in OWN_LOAD_STATE_DICT:
                    offenders.append(f"fs2mini/{path.name}:{node.lineno} calls load_state_dict (use load_weights)")
                if (name in ("save", "load") and isinstance(owner, ast.Name) and owner.id == "torch"
                        and path.stem not in HF_MODULES):
                    offenders.append(f"fs2mini/{path.name}:{node.lineno} calls torch.{name}")
    assert not offenders, ("checkpoint dicts are assembled, read or loaded outside fs2mini/checkpoint.py "
                           "(call write_checkpoint, load_checkpoint, load_weights):\n" + "\n".join(offenders))


def test_training_imports_no_optional_layer():
    """`python -m fs2mini.train` reads what a default run uses: sampling, LoRA injection, language identification,
    the check/prepare subcommands, --init, Hugging Face interop, plots, averaging and CTranslate2 are imported only
    by the runs and commands that use them (benchmarks/training_path.py prints what is left)."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, fs2mini.train; print(' '.join(sorted(sys.modules)))"],
                            capture_output=True, text=True, check=True, timeout=120).stdout.split()
    optional = {"fs2mini.sampling", "fs2mini.adapters", "fs2mini.langid", "fs2mini.check", "fs2mini.initialize",
                "fs2mini.hf", "fs2mini.hf_weights", "fs2mini.hf_convert", "fs2mini.hf_tokenizer", "fs2mini.staged",
                "fs2mini.plot", "fs2mini.average", "fs2mini.ctranslate", "peft", "py3langid", "transformers", "matplotlib"}
    assert sorted(optional & set(loaded)) == []


def test_training_path_stays_within_its_code_line_budget():
    """Issue 24's promise, read the whole trainer in one sitting: the modules `python -m fs2mini.train` imports hold
    at most 4,200 lines of code (docstrings, comments and blank lines apart; benchmarks/training_path.py prints them).
    A change that grows the path past it moves an optional layer out or shrinks something else."""
    import subprocess
    import sys

    script = ("import sys; sys.path.insert(0, 'benchmarks'); import training_path as t; "
              "print(sum(t.code_lines(source) for source in t.training_path().values()))")
    code = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120,
                              cwd=Path(__file__).resolve().parent.parent).stdout)
    assert code <= 4200, f"the training path holds {code:,} code lines (budget 4,200)"
