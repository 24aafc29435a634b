"""One model, three target languages: English→French, English→German, English→Spanish on the offline Bibles,
with French→German, never trained on (zero-shot), validated and evaluated next to them.

Every direction is a `BibleCorpus` with the same book-level split (no validation or test verse is
seen in training, in any language). The tokenizer is trained on the four languages, each equally
represented, with a language token each; the target language's token starts the decoder, as in
NLLB. A batch holds one direction, drawn with probability ∝ (pairs)^(1/T) (here all directions have
the same size, so T changes nothing until you add a smaller one), and an update accumulates as many
batches as there are directions (`grad_accum_steps`), so each update mixes them and each direction
follows the single pair's schedule: its updates, learning rate and batch. One direction per update
learned each direction far more slowly (eng→fra validation BLEU 1.7 after 1,000 updates of it, against
the single pair's 8.6); mixed updates match the single pairs (8.7; test BLEU 0.87-1.10× theirs). The budget is three times the single pair's 12 minutes, which
gives about the single pair's 1,000 updates; the figures are in docs/results.md ("Several directions
on the Bibles"). Each entry of the list is also
on the command line: `--data.more-corpora.1.target-bible s`; →English directions are one more
`BibleCorpus(GERMAN, ENGLISH)` each, with a proportionally larger budget.

Run:  python recipes/bible_multilingual.py                               # 36 minutes (--trainer.max-time 1h)
      python -m fs2mini.evaluate runs/bible_multilingual --split test         # every direction, the average, fra-deu
      echo "In the beginning God created the heaven and the earth." | \
          python -m fs2mini.translate runs/bible_multilingual --target-lang deu
"""

from pathlib import Path

from fs2mini.config import TrainConfig, TrainerConfig
from fs2mini.corpus import BibleCorpus
from fs2mini.data import DataConfig
from fs2mini.tokenizer import TokenizerConfig
from fs2mini.train import main

ENGLISH, FRENCH, GERMAN, SPANISH = "k", "l", "e", "v"  # Bible codes: KJV, Louis Segond, German 'e', Spanish 'v'
TRAINED = [BibleCorpus(ENGLISH, target) for target in (FRENCH, GERMAN, SPANISH)]

CONFIG = TrainConfig(
    run_name=Path(__file__).stem,
    tokenizer=TokenizerConfig(vocab_size=8000),
    data=DataConfig(corpus=TRAINED[0], more_corpora=tuple(TRAINED[1:]), zero_shot_corpora=(BibleCorpus(FRENCH, GERMAN),),
                    sampling_temperature=1.0),
    trainer=TrainerConfig(max_steps=1_000_000, max_time="36m", grad_accum_steps=len(TRAINED), validate_every=250,
                          checkpoint_every=250, valid_translate_sentences=100),
)

if __name__ == "__main__":
    main(CONFIG, description=__doc__)
