"""Fine-tune an imported NLLB/M2M100 checkpoint on your own pairs (TSV or Bible).

    python -m fs2mini.hf import facebook/nllb-200-distilled-600M runs/nllb600m
    python recipes/finetune_nllb.py --init runs/nllb600m data.corpus:tsv --data.corpus.path pairs.tsv
    python -m fs2mini.translate runs/finetune_nllb --input test.eng
    python -m fs2mini.hf export runs/finetune_nllb exported/

`--init RUN_DIR` is a directory written by `fs2mini.hf import`: its shape, tokenizer (with NLLB's
ids) and weights start the run, which is seeded as a step-0 checkpoint in the new run directory, so
every later command (resume, translate, evaluate, export) treats it as any fs2mini run. The
corpus's language codes are mapped onto the model's: `eng` → the one code starting with `eng_`
(eng_Latn), or as `--lang-map eng=eng_Latn` says. Every other flag is `fs2mini.train`'s.

Defaults are the usual fine-tuning ones: AdamW at 5e-5 (pre-training peaked near 1e-3), 200
warmup steps, dropout 0.1, label smoothing 0.1, 1000 steps; `--model.freeze embeddings` keeps the
shared embedding table (hence also the output projection) fixed, `--model.freeze encoder` the
whole encoder as well: less memory for gradients and optimizer state, and less forgetting.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from fs2mini.checkpoint import checkpoint_path, list_checkpoints, save_atomically
from fs2mini.config import TrainConfig, TrainerConfig, config_to_json, load_config, save_config
from fs2mini.corpus import corpus_languages
from fs2mini.data import DataConfig
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.model import EncoderDecoderModel, ModelConfig, check_model_config
from fs2mini.optim import AdamWConfig, InverseSqrtConfig
from fs2mini.tokenizer import LAYOUT_FILE, Tokenizer, tokenizer_record
from fs2mini.train import parse_config
from fs2mini.trainer import TrainState, train
from fs2mini.translate import find_checkpoints, load_first_readable
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


def default_config(init: Path) -> TrainConfig:
    """Fine-tuning defaults on top of the imported run's shape and tokenizer settings."""
    imported = load_config(init / "config.json")
    shape = {f.name: getattr(imported.model, f.name) for f in dataclasses.fields(ModelConfig)}
    shape.update(dropout_p=0.1, attention_dropout_p=0.1, ffn_dropout_p=0.0)
    longest = min(DataConfig.max_source_len, imported.model.max_seq_len)
    return TrainConfig(run_name=Path(__file__).stem, tokenizer=imported.tokenizer, model=FinetuneModelConfig(**shape),
                       data=DataConfig(max_source_len=longest, max_target_len=longest),
                       optimizer=AdamWConfig(lr=5e-5), lr_scheduler=InverseSqrtConfig(warmup_steps=200),
                       trainer=TrainerConfig(max_steps=1000, validate_every=200, checkpoint_every=200))


def map_languages(langs: tuple[str, str], codes: dict[str, int], explicit: dict[str, str]) -> dict[str, int]:
    """The corpus's codes as extra names of the model's language ids."""
    mapped = {}
    for lang in langs:
        if lang in codes:
            continue
        code = explicit.get(lang)
        if code is None:
            candidates = [c for c in codes if c.split("_")[0] == lang]
            if len(candidates) != 1:
                raise UserError(f"corpus language {lang!r} matches {', '.join(candidates) or 'no code'} of the model; "
                                f"expected one: pass --lang-map {lang}=CODE (e.g. {lang}=eng_Latn)")
            code = candidates[0]
        if code not in codes:
            raise UserError(f"--lang-map {lang}={code}: unknown language code {code!r}; expected one of the model's "
                            f"codes such as {', '.join(sorted(codes)[:5])}")
        mapped[lang] = codes[code]
    return mapped


def seed_run(cfg: TrainConfig, init: Path, lang_map: dict[str, str]) -> None:
    """Write the imported weights and tokenizer into `cfg.run_dir` as its step-0 checkpoint (once)."""
    run_dir = cfg.run_dir
    if list_checkpoints(run_dir / "checkpoints"):
        return  # resuming
    _, state = load_first_readable(find_checkpoints(init, None))
    source = Tokenizer(init / "tokenizer.model", ())
    langs = corpus_languages(cfg.data.corpus)
    layout = dataclasses.replace(source.layout, lang_ids={**source.layout.lang_ids,
                                                          **map_languages(langs, source.layout.lang_ids, lang_map)})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "tokenizer.model").write_bytes(source.model_bytes)
    (run_dir / LAYOUT_FILE).write_text(layout.to_json(), encoding="utf-8")
    tokenizer = Tokenizer(run_dir / "tokenizer.model", langs)
    model = cfg.model.build(tokenizer.vocab_info)
    model.load_state_dict(state["model"])
    optimizer = cfg.optimizer.build(model.parameters())
    save_config(cfg, run_dir / "config.json")
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    torch.manual_seed(cfg.trainer.seed)  # the random state a new run would start from (dropout, shuffling)
    random.seed(cfg.trainer.seed)
    save_atomically({"model": model.state_dict(), "optimizer": optimizer_state, "config": config_to_json(cfg),
                     "tokenizer": tokenizer_record(tokenizer), **TrainState().state_dict(torch.device("cpu"))},
                    checkpoint_path(run_dir / "checkpoints", 0))


def main(argv: list[str] | None = None) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--init", type=Path, required=True, help="run directory written by python -m fs2mini.hf import")
    pre.add_argument("--lang-map", nargs="*", default=[], help="corpus code=model code, e.g. eng=eng_Latn")
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    with exit_on_user_error():
        lang_map = dict(item.split("=", 1) for item in known.lang_map if "=" in item)
        default = default_config(known.init)
        cfg = parse_config(default, rest, __doc__, models={"finetune": default.model})
        seed_run(cfg, known.init, lang_map)
        train(cfg)


if __name__ == "__main__":
    main()
