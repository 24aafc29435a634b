"""Every component of a run, built from its config in one place: training, `check` and the benchmarks call it.

The builders it calls (`build_model`, `build_task`, `build_optimizer`, `build_lr_schedule`,
`Seq2SeqBatches`) accept fs2mini's own configs and a recipe's alike, because each config builds
its own object; this module only fixes the order that makes runs reproducible: seed → model (the
same initial weights on every rank) → checkpoint weights → compile → DDP/FSDP wrap → task →
optimizer (over the wrapped parameters) → optimizer state.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fs2mini.checkpoint import list_checkpoints, load_checkpoint
from fs2mini.config import TrainConfig, incompatible_fields, load_config
from fs2mini.corpus import corpus_languages, describe_corpus, training_sentences
from fs2mini.data import Seq2SeqBatches
from fs2mini.distributed import DistEnv, barrier, load_optimizer_state, wrap_model
from fs2mini.errors import UserError
from fs2mini.model import build_model
from fs2mini.optim import build_lr_schedule, build_optimizer
from fs2mini.pipeline import Skipped
from fs2mini.task import Task, build_task
from fs2mini.tokenizer import Tokenizer, load_or_train_tokenizer


@dataclass
class Components:
    """What a training run is made of (the fairseq2 tutorial's ingredients), ready to use."""

    tokenizer: Tokenizer
    train_batches: Seq2SeqBatches
    valid_batches: Seq2SeqBatches
    model: nn.Module  # on its device; wrapped by DDP/FSDP under torchrun
    task: Task
    optimizer: torch.optim.Optimizer
    lr_at: Callable[[int], float]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_tokenizer(cfg: TrainConfig) -> Tokenizer:
    """The tokenizer for `cfg`'s corpus: from the cache, or trained on the training split."""
    langs = corpus_languages(cfg.data.corpus)
    skipped = Skipped(cfg.data.strict)
    sentences = training_sentences(cfg.data.corpus, skipped)
    if not sentences:
        raise UserError(
            f"{describe_corpus(cfg.data.corpus)} has no training sentence pairs "
            f"({'skipped: ' + skipped.summary() if skipped else 'it is empty'})"
        )
    return load_or_train_tokenizer(cfg.tokenizer, sentences, langs)


def run_tokenizer(cfg: TrainConfig, resuming: bool, env: DistEnv) -> Tokenizer:
    """The tokenizer of the run: the run directory's own copy when resuming, else the (cached) trained one.

    Nothing is written to the run directory here (the trainer copies the model there once every
    component has been built), so a corpus that cannot be read leaves the directory untouched.
    """
    kept = cfg.run_dir / "tokenizer.model"
    if resuming and kept.exists():
        return Tokenizer(kept, corpus_languages(cfg.data.corpus))
    if env.is_main:
        tokenizer = build_tokenizer(cfg)  # trains it once, into the cache
    barrier(env)
    return tokenizer if env.is_main else build_tokenizer(cfg)  # the other ranks find it in the cache


def newest_checkpoint(cfg: TrainConfig, env: DistEnv) -> dict[str, Any] | None:
    """The newest readable checkpoint of the run directory, if it is resumed (checked against `cfg`)."""
    run_dir = cfg.run_dir
    checkpoint = None
    existing = list_checkpoints(run_dir / "checkpoints")
    for path in reversed(existing):
        try:
            checkpoint = load_checkpoint(path)
            break
        except UserError as err:
            if env.is_main:
                print(f"warning: {err}; trying the previous checkpoint", file=sys.stderr)
    if existing and checkpoint is None:
        raise UserError(
            f"no readable checkpoint in {run_dir / 'checkpoints'} ({len(existing)} corrupt); "
            "move them away to start this run over, or use another --output-dir"
        )
    if checkpoint is not None:
        differing = incompatible_fields(load_config(run_dir / "config.json"), cfg)
        if differing:
            raise UserError(
                f"cannot resume {run_dir}: the checkpoint was trained with different {', '.join(differing)}; "
                "use another --output-dir or the original settings"
            )
    return checkpoint


def build_components(cfg: TrainConfig, tokenizer: Tokenizer, device: torch.device, env: DistEnv = DistEnv(),
                     checkpoint: dict[str, Any] | None = None) -> Components:
    """Data, model, task, optimizer and schedule of `cfg`, restored from `checkpoint` when given."""
    tc = cfg.trainer
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    random.seed(tc.seed)
    shard = {"rank": env.rank, "world_size": env.world_size}
    train_batches = Seq2SeqBatches(cfg.data, "train", tokenizer, seed=tc.seed, shuffle=True, **shard)
    valid_batches = Seq2SeqBatches(cfg.data, "valid", tokenizer, seed=tc.seed, shuffle=False, **shard)
    model = build_model(cfg.model, tokenizer.vocab_info).to(device)
    if checkpoint is not None:
        load_model_state(model, checkpoint["model"], cfg.run_dir / "checkpoints")
    if tc.compile:
        model.compile(dynamic=True)  # in place: parameter names and checkpoints stay the same
    model = wrap_model(model, tc.data_parallel, env, device)
    task = build_task(cfg.task, tokenizer.vocab_info)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    if checkpoint is not None:
        load_optimizer_state(model, optimizer, checkpoint["optimizer"])
    lr_at = build_lr_schedule(cfg.lr_scheduler, cfg.optimizer.lr, tc.max_steps)
    return Components(tokenizer, train_batches, valid_batches, model, task, optimizer, lr_at)


def load_model_state(model: nn.Module, state: dict[str, Any], source: Path) -> None:
    """`model.load_state_dict(state)`, or one sentence naming `source` and the first mismatch."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = str(err).splitlines()
        raise UserError(f"the checkpoint in {source} does not fit the configured model: "
                        f"{(lines[1] if len(lines) > 1 else lines[0]).strip()}") from None
