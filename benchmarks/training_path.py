"""The training path a reader must follow: every fs2mini module `python -m fs2mini.train` imports, with its lines.

Why a script: "read the whole trainer in one sitting" is a promise that erodes one import at a time;
this prints the count so a change that grows it shows it.

    python benchmarks/training_path.py
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def training_path() -> dict[str, int]:
    """Module name → line count, for every fs2mini module importing the `train` entry point loads."""
    importlib.import_module("fs2mini.train")
    modules = sorted(name for name in sys.modules if name == "fs2mini" or name.startswith("fs2mini."))
    return {name: len(Path(sys.modules[name].__file__).read_text(encoding="utf-8").splitlines()) for name in modules}


def main() -> None:
    counts = training_path()
    for name, lines in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"{lines:6,d}  {name}")
    print(f"{sum(counts.values()):6,d}  in {len(counts)} modules (python -m fs2mini.train)")


if __name__ == "__main__":
    main()
