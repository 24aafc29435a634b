"""Shared tiny data: a synthetic 'reverse the words' TSV corpus and a tokenizer trained on it.

Every test builds its own data here; nothing needs the network or the Bible database except the
tests that are explicitly about it (they build a tiny SQLite file of their own).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fs2mini.config import TrainConfig, TrainerConfig
from fs2mini.corpus import TsvCorpus, corpus_languages, training_sentences
from fs2mini.data import DataConfig
from fs2mini.model import ModelConfig
from fs2mini.optim import AdamWConfig, InverseSqrtConfig
from fs2mini.pipeline import Skipped
from synthetic import write_reversal_tsv
from fs2mini.task import TaskConfig
from fs2mini.tokenizer import Tokenizer, TokenizerConfig, load_or_train_tokenizer


@pytest.fixture(scope="session")
def reversal_tsv(tmp_path_factory) -> Path:
    return write_reversal_tsv(tmp_path_factory.mktemp("corpus") / "reverse.tsv", 3000)


def tiny_config(tsv: Path, out: Path, cache: Path, **trainer) -> TrainConfig:
    """A config that trains in seconds on 2 CPU cores."""
    return TrainConfig(
        run_name="test",
        output_dir=out,
        tokenizer=TokenizerConfig(vocab_size=28, cache_dir=cache),
        data=DataConfig(corpus=TsvCorpus(path=tsv, valid_percent=3.0, test_percent=3.0), max_tokens=512,
                        cache_dir=cache / "prepared"),
        # fairseq's init: 64 wide, N(0, 0.02) (the default, measured best at 256 wide) is too small a start
        # for the toy tasks to be learned in the few hundred steps the tests can afford.
        model=ModelConfig(model_dim=64, num_encoder_layers=2, num_decoder_layers=2, num_encoder_attn_heads=4,
                          num_decoder_attn_heads=4, ffn_inner_dim=128, dropout_p=0.0, attention_dropout_p=0.0,
                          ffn_dropout_p=0.0, init="fairseq"),
        task=TaskConfig(label_smoothing=0.0),
        optimizer=AdamWConfig(lr=3e-3),
        lr_scheduler=InverseSqrtConfig(warmup_steps=30),
        # fp32 unless a test asks: `auto` picks bf16 on CPUs that have it, and pinned values must not
        # depend on the machine.
        trainer=TrainerConfig(**{"max_steps": 20, "validate_every": 10, "checkpoint_every": 10, "log_every": 5,
                                 "progress": "lines", "autocast": "off", **trainer}),
    )


@pytest.fixture(scope="session")
def tokenizer_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spm-cache")


@pytest.fixture(scope="session")
def reversal_tokenizer(reversal_tsv, tokenizer_cache) -> Tokenizer:
    cfg = tiny_config(reversal_tsv, Path("unused"), tokenizer_cache)
    return load_or_train_tokenizer(cfg.tokenizer, training_sentences(cfg.data.corpus, Skipped()), corpus_languages(cfg.data.corpus))


@pytest.fixture(scope="session")
def trained_reversal_run(reversal_tsv, tokenizer_cache, tmp_path_factory) -> Path:
    """A run directory whose model has learned the reversal task (valid loss ~0.02); trained once per session (~10 s)."""
    import dataclasses

    from fs2mini.optim import CosineConfig
    from fs2mini.trainer import train

    cfg = tiny_config(reversal_tsv, tmp_path_factory.mktemp("reversal") / "run", tokenizer_cache,
                      max_steps=600, validate_every=300, checkpoint_every=600)
    return train(dataclasses.replace(cfg, lr_scheduler=CosineConfig(warmup_steps=30, final_lr_scale=0.01)))
