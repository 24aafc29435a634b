"""Train an English→French translation model on Tatoeba (the fairseq2 tutorial's recipe).

Get the data:  python -m fs2mini.tatoeba --lang fra    (writes examples/fra.txt)
See the CLI:   python recipes/tatoeba.py --help
Test a part:   python recipes/tatoeba.py check tokenizer    (or data, model, task, optimizer)
Train:         python recipes/tatoeba.py --trainer.max-steps 4000

Copy this file to start an experiment: runs are named after the file (runs/<file name>/).
"""

from pathlib import Path

from fs2mini.config import TrainConfig, TrainerConfig
from fs2mini.corpus import TsvCorpus
from fs2mini.data import DataConfig
from fs2mini.model import ARCHS
from fs2mini.tokenizer import TokenizerConfig
from fs2mini.train import main

CONFIG = TrainConfig(
    run_name=Path(__file__).stem,
    tokenizer=TokenizerConfig(vocab_size=5000),
    data=DataConfig(corpus=TsvCorpus(path=Path("examples/fra.txt"), source_lang="eng", target_lang="fra")),
    model=ARCHS["small"],
    trainer=TrainerConfig(max_steps=4000, validate_every=500, checkpoint_every=1000),
)

if __name__ == "__main__":
    main(CONFIG, description=__doc__)
