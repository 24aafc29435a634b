"""Train your own architecture: a model config whose `build` returns a module following `Seq2SeqModel`.

The variant here is the built-in NLLB-style model with *learned* position embeddings (as BART and
BERT) instead of fixed sinusoids. Subclassing `EncoderDecoderModel` keeps its encode/decode/
project methods, its KV-cached decoding and its fused loss; a model written from scratch only
needs the methods listed in `fs2mini.model.Seq2SeqModel`. The presets below appear on the command
line as `model:learned-positions` and `model:learned-positions-deep`, next to the built-in ones,
and the run's config.json records this file, so `python -m fs2mini.translate runs/custom_model`
and `Translator.from_run("runs/custom_model")` rebuild the same model.

Run:  python recipes/custom_model.py model:learned-positions-deep --trainer.max-steps 300
"""

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from fs2mini.config import TrainConfig
from fs2mini.model import EncoderDecoderModel, ModelConfig, check_model_config
from fs2mini.train import main
from fs2mini.vocab import VocabInfo


class LearnedPositionsModel(EncoderDecoderModel):
    """`EncoderDecoderModel` whose position embeddings are a trained (max_seq_len, model_dim) table."""

    def __init__(self, **arguments) -> None:
        super().__init__(**arguments)
        self.learned_positions = nn.Embedding(self.max_seq_len, self.model_dim)
        nn.init.normal_(self.learned_positions.weight, std=self.model_dim**-0.5)

    def position_embeddings(self, offset: int, seq_len: int) -> Tensor:
        return self.learned_positions.weight[offset : offset + seq_len]


@dataclass(frozen=True)
class LearnedPositionsConfig(ModelConfig):
    """The built-in shape settings, built as `LearnedPositionsModel`."""

    max_seq_len: int = 256
    """Longest sequence; also the number of learned positions (a bigger table trains more slowly)."""

    def build(self, vocab: VocabInfo) -> LearnedPositionsModel:
        check_model_config(self)
        return LearnedPositionsModel(**self.module_arguments(vocab))


MODELS = {
    "learned-positions": LearnedPositionsConfig(),
    "learned-positions-deep": LearnedPositionsConfig(num_decoder_layers=6),
}

CONFIG = TrainConfig(run_name=Path(__file__).stem, model=MODELS["learned-positions"])

if __name__ == "__main__":
    main(CONFIG, description=__doc__, models=MODELS)
