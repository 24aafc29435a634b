"""The training path a reader must follow: every fs2mini module `python -m fs2mini.train` imports, with its lines.

Why a script: "read the whole trainer in one sitting" is a promise that erodes one import at a time;
this prints the count so a change that grows it shows it. Two counts per module: all lines, and code
lines (without docstrings, comments and blank lines), since the docstrings that say why are part of
what a reader reads but not of what runs. The target is 4,200 code lines (tests/test_layering.py holds it).

Translating while validating (beam search, sacrebleu) is a layer of its own that the default run imports at
its first validation, not to train; it is printed apart so its size is not hidden.

    python benchmarks/training_path.py
"""

from __future__ import annotations

import ast
import importlib
import io
import sys
import tokenize
from pathlib import Path


def training_path() -> dict[str, str]:
    """Module name → source text, for every fs2mini module importing the `train` entry point loads."""
    importlib.import_module("fs2mini.train")
    modules = sorted(name for name in sys.modules if name == "fs2mini" or name.startswith("fs2mini."))
    return {name: Path(sys.modules[name].__file__).read_text(encoding="utf-8") for name in modules}


def validation_translation_layer(path: dict[str, str]) -> dict[str, str]:
    """Module name → source text, for the fs2mini modules that translating while validating imports beyond the path."""
    before = set(sys.modules)
    from fs2mini.scoring import translate_and_score  # noqa: F401  (what Validator imports when it translates)
    from fs2mini.translator import Translator  # noqa: F401
    added = sorted(name for name in set(sys.modules) - before if name.startswith("fs2mini.") and name not in path)
    return {name: Path(sys.modules[name].__file__).read_text(encoding="utf-8") for name in added}


def code_lines(source: str) -> int:
    """Lines holding a token of code: docstrings (of modules, classes, functions and fields), comments and
    blank lines do not count."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docstrings.update(range(node.lineno, node.end_lineno + 1))
    skipped = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skipped:
            lines.update(line for line in range(token.start[0], token.end[0] + 1) if line not in docstrings)
    return len(lines)


def print_counts(sources: dict[str, str], what: str) -> None:
    counts = {name: (len(source.splitlines()), code_lines(source)) for name, source in sources.items()}
    print(f"{'lines':>6}  {'code':>6}  module")
    for name, (lines, code) in sorted(counts.items(), key=lambda item: -item[1][0]):
        print(f"{lines:6,d}  {code:6,d}  {name}")
    print(f"{sum(c[0] for c in counts.values()):6,d}  {sum(c[1] for c in counts.values()):6,d}  "
          f"in {len(counts)} modules ({what})")


def main() -> None:
    path = training_path()
    print_counts(path, "python -m fs2mini.train")
    print()
    print_counts(validation_translation_layer(path), "imported at the first validation that translates")


if __name__ == "__main__":
    main()
