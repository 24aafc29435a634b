"""Train on your own data: a corpus config with `languages()` and `read_pairs(split, skipped)`.

The corpus here is the layout of fairseq, Moses and most MT toolkits: for each split two aligned
plain-text files with one sentence per line, `DIR/train.eng` + `DIR/train.fra`, `DIR/valid.*`,
`DIR/test.*`. Any reader that yields (source, target) strings per split works the same way: a JSONL
file, a Hugging Face `datasets` dataset, a database. It appears on the command line as
`data.corpus:aligned` (flags `--data.corpus.directory ...`), and the run's config.json records
this file, so `fs2mini.translate` and `fs2mini.evaluate --split test` read the same corpus.

Run:  python recipes/custom_data.py --data.corpus.directory my_corpus --trainer.max-steps 300
"""

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fs2mini.config import TrainConfig
from fs2mini.data import DataConfig
from fs2mini.errors import UserError
from fs2mini.pipeline import Skipped
from fs2mini.train import main


@dataclass(frozen=True)
class AlignedTextCorpus:
    """Aligned plain-text files per split: DIR/SPLIT.SOURCE_LANG and DIR/SPLIT.TARGET_LANG."""

    directory: Path = Path("data")
    """Directory holding train/valid/test files named SPLIT.LANG."""
    source_lang: str = "eng"
    """Source language code: the suffix of the source files."""
    target_lang: str = "fra"
    """Target language code: the suffix of the target files."""

    def languages(self) -> tuple[str, str]:
        return self.source_lang, self.target_lang

    def read_pairs(self, split: str, skipped: Skipped) -> Iterator[tuple[str, str]]:
        paths = [self.directory / f"{split}.{lang}" for lang in self.languages()]
        for path in paths:
            if not path.is_file():
                raise UserError(f"--data.corpus.directory: {path} does not exist; expected one sentence per line")
        with paths[0].open(encoding="utf-8") as sources, paths[1].open(encoding="utf-8") as targets:
            for number, (source, target) in enumerate(itertools.zip_longest(sources, targets), start=1):
                if source is None or target is None:
                    raise UserError(f"{paths[0]} and {paths[1]} differ in length at line {number}; expected aligned files")
                if not source.strip() or not target.strip():
                    skipped.add("empty source or target", f"{paths[0]}:{number}")
                    continue
                yield source.strip(), target.strip()


CONFIG = TrainConfig(run_name=Path(__file__).stem, data=DataConfig(corpus=AlignedTextCorpus()))

if __name__ == "__main__":
    main(CONFIG, description=__doc__, corpora={"aligned": AlignedTextCorpus()})
