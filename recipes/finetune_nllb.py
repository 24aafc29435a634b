"""Fine-tune an imported NLLB/M2M100 checkpoint on your own pairs (TSV or Bible).

    python -m fs2mini.hf import facebook/nllb-200-distilled-600M runs/nllb600m
    python recipes/finetune_nllb.py --init runs/nllb600m data.corpus:tsv --data.corpus.path pairs.tsv
    python -m fs2mini.translate runs/finetune_nllb --input test.eng
    python -m fs2mini.hf export runs/finetune_nllb exported/

`--init` is a directory written by `fs2mini.hf import` (or any fs2mini run, or one of its
checkpoint files): its shape, tokenizer (with NLLB's ids) and weights start the run; the
optimizer, the schedule and the step start afresh (`fs2mini.initialize`), and every later command
(resume, translate, evaluate, export) treats the run as any other. The corpus's language codes are
mapped onto the model's: `eng` → the one code starting with `eng_` (eng_Latn), or as
`--lang-map eng=eng_Latn` says. Every other flag is `fs2mini.train`'s (`--lora.rank 16`,
`--trainer.activation-checkpointing`, `--add-languages NEW=RELATED`, ...).

Defaults are the usual fine-tuning ones: AdamW at 5e-5 (pre-training peaked near 1e-3), 200
warmup steps, dropout 0.1, label smoothing 0.1, 1000 steps; `--model.freeze embeddings` keeps the
shared embedding table (hence also the output projection) fixed, `--model.freeze encoder` the
whole encoder as well: less memory for gradients and optimizer state, and less forgetting.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fs2mini.config import TrainConfig, TrainerConfig, load_config
from fs2mini.data import DataConfig
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.model import EncoderDecoderModel, ModelConfig, check_model_config
from fs2mini.optim import AdamWConfig, InverseSqrtConfig
from fs2mini.train import parse_config
from fs2mini.trainer import train
from fs2mini.vocab import VocabInfo


@dataclass(frozen=True)
class FinetuneModelConfig(ModelConfig):
    """An imported model's shape, with parts optionally frozen."""

    freeze: Literal["none", "embeddings", "encoder"] = "none"
    """Parameters left untrained: none, the shared embeddings (= output projection), or embeddings and encoder."""

    def build(self, vocab: VocabInfo) -> EncoderDecoderModel:
        check_model_config(self)
        model = EncoderDecoderModel(**self.module_arguments(vocab))
        if self.freeze in ("embeddings", "encoder"):
            model.embed.weight.requires_grad_(False)
        if self.freeze == "encoder":
            for part in (model.encoder_layers, model.encoder_norm):
                part.requires_grad_(False)
        return model


def default_config(init: Path | None, trust_recipe_code: bool = False) -> TrainConfig:
    """Fine-tuning defaults on top of the imported run's shape and tokenizer settings (without `init`, `--help`
    shows them on fs2mini's default shape); a run of a recipe's own classes is read with `--trust-recipe-code`."""
    if init is None:
        imported = TrainConfig()
    else:
        run_dir = init if init.is_dir() else init.parent.parent  # a checkpoint file: RUN/checkpoints/NAME.pt
        imported = load_config(run_dir / "config.json", trust_recipe_code=trust_recipe_code)
    shape = {f.name: getattr(imported.model, f.name) for f in dataclasses.fields(ModelConfig)}
    shape.update(dropout_p=0.1, attention_dropout_p=0.1, ffn_dropout_p=0.0)
    longest = min(DataConfig.max_source_len, imported.model.max_seq_len)
    return TrainConfig(run_name=Path(__file__).stem, init=init, tokenizer=imported.tokenizer, model=FinetuneModelConfig(**shape),
                       data=DataConfig(max_source_len=longest, max_target_len=longest),
                       optimizer=AdamWConfig(lr=5e-5), lr_scheduler=InverseSqrtConfig(warmup_steps=200),
                       trainer=TrainerConfig(max_steps=1000, validate_every=200, checkpoint_every=200))


def main(argv: list[str] | None = None) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--init", type=Path, default=None)
    pre.add_argument("--trust-recipe-code", action="store_true")
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    with exit_on_user_error():
        if known.init is None and not {"-h", "--help"} & set(rest):
            raise UserError("--init is required: a run directory written by python -m fs2mini.hf import (or any "
                            "fs2mini run, or one of its checkpoint files)")
        default = default_config(known.init, known.trust_recipe_code)
        cfg = parse_config(default, rest + ["--trust-recipe-code"] * known.trust_recipe_code, __doc__,
                           models={"finetune": default.model})
        train(cfg)


if __name__ == "__main__":
    main()
