"""One model, four languages: English↔French, English↔German, English↔Spanish on the offline Bibles,
and French→German, never trained on (zero-shot), validated and evaluated next to them.

Every direction is a `BibleCorpus` with the same book-level split (no validation or test verse is
seen in training, in any language). The tokenizer is trained on the four languages, each equally
represented, with a language token each; a batch holds one direction, drawn with probability
∝ (pairs)^(1/T) (here all directions have the same size, so T changes nothing until you add a
smaller one). Each entry of the list is also on the command line: `--data.more-corpora.2.target-bible s`.

Run:  python recipes/bible_multilingual.py                               # 2000 steps (--trainer.max-steps N)
      python -m fs2mini.evaluate runs/bible_multilingual --split test         # every direction, the average, fra-deu
      echo "Au commencement, Dieu créa les cieux et la terre." | \
          python -m fs2mini.translate runs/bible_multilingual --source-lang fra --target-lang deu
"""

from pathlib import Path

from fs2mini.config import TrainConfig, TrainerConfig
from fs2mini.corpus import BibleCorpus
from fs2mini.data import DataConfig
from fs2mini.tokenizer import TokenizerConfig
from fs2mini.train import main

ENGLISH, FRENCH, GERMAN, SPANISH = "k", "l", "e", "v"  # Bible codes: KJV, Louis Segond, German 'e', Spanish 'v'
TRAINED = [BibleCorpus(source, target) for source, target in [(ENGLISH, FRENCH), (FRENCH, ENGLISH), (ENGLISH, GERMAN),
                                                              (GERMAN, ENGLISH), (ENGLISH, SPANISH), (SPANISH, ENGLISH)]]

CONFIG = TrainConfig(
    run_name=Path(__file__).stem,
    tokenizer=TokenizerConfig(vocab_size=8000),
    data=DataConfig(corpus=TRAINED[0], more_corpora=tuple(TRAINED[1:]), zero_shot_corpora=(BibleCorpus(FRENCH, GERMAN),),
                    sampling_temperature=1.0),
    trainer=TrainerConfig(max_steps=2000, validate_every=500, checkpoint_every=500, valid_translate_sentences=100),
)

if __name__ == "__main__":
    main(CONFIG, description=__doc__)
