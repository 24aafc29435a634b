"""Every component of a run, built from its config in one place: training, `check` and the benchmarks call it.

The builders it calls (`build_model`, `build_task`, `build_optimizer`, `build_lr_schedule`,
`Seq2SeqBatches`) accept fs2mini's own configs and a recipe's alike, because each config builds
its own object; this module only fixes the order that makes runs reproducible: seed → model (the
same initial weights on every rank) → checkpoint weights → compile → DDP/FSDP wrap → task →
optimizer (over the wrapped parameters) → optimizer state.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Iterator
from itertools import chain
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fs2mini.checkpoint import (GRAD_SCALER, LORA, MODEL, OPTIMIZER, STEP, TOKENIZER, checkpoint_path, list_checkpoints,
                                load_checkpoint, load_weights)
from fs2mini.config import TrainConfig, incompatible_fields, load_config
from fs2mini.corpus import corpus_fingerprint, corpus_tag, describe_corpus, read_pairs, training_sentences_by_language
from fs2mini.data import RunDirections, Seq2SeqBatches, collate, shaped_for
from fs2mini.distributed import DistEnv, barrier, load_optimizer_state, wrap_model
from fs2mini.errors import UserError
from fs2mini.model import build_model, enable_activation_checkpointing
from fs2mini.optim import Schedule, build_lr_schedule, build_optimizer
from fs2mini.pipeline import Skipped
from fs2mini.precision import Precision, StepTimer, autocast_for, build_grad_scaler, choose_precision
from fs2mini.rundir import BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, TOKENIZER_FILE
from fs2mini.task import Task, build_task
from fs2mini.tokenizer import Tokenizer, balanced_sentences, checked_tokenizer, load_or_train_tokenizer
from fs2mini.vocab import VocabInfo


@dataclass
class Components:
    """What a training run is made of (the fairseq2 tutorial's ingredients), ready to use."""

    directions: RunDirections  # the run's corpora, directions and languages (fs2mini.data.run_directions)
    tokenizer: Tokenizer
    train_batches: Seq2SeqBatches
    valid_batches: Seq2SeqBatches
    model: nn.Module  # on its device; wrapped by DDP/FSDP under torchrun
    task: Task
    optimizer: torch.optim.Optimizer
    lr_at: Schedule
    precision: Precision  # bf16 or fp16 autocast, or fp32, and why
    grad_scaler: torch.amp.GradScaler | None  # fp16's loss scaler (None in bf16 and fp32)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_tokenizer(cfg: TrainConfig, directions: RunDirections) -> Tokenizer:
    """The tokenizer for `cfg`'s corpora (`directions`): from the cache, or trained on the training split
    (of every direction, each language equally represented: `balanced_sentences`)."""
    langs, trained = directions.languages, directions.trained
    tags = sorted({tag for entry in trained if (tag := corpus_tag(entry.corpus)) is not None})
    skipped = Skipped(cfg.data.strict)
    if len(trained) > 1:
        for entry in trained:  # (a cheap look at the first pair, before anything is trained or written)
            if next(read_pairs(entry.corpus, "train", skipped, entry.field), None) is None:
                raise UserError(f"direction {entry.name} ({describe_corpus(entry.corpus)}) has no training "
                                f"sentence pairs ({'skipped: ' + skipped.summary() if skipped else 'it is empty'})")
        fingerprints = " ".join(corpus_fingerprint(entry.corpus, "train", entry.field) for entry in trained)
        fingerprint = hashlib.sha256(fingerprints.encode())

        def balanced() -> Iterator[str]:  # read only if no model is cached for these corpora
            by_language = training_sentences_by_language([(entry.field, entry.corpus) for entry in trained], skipped,
                                                         cfg.tokenizer.max_training_sentences)
            yield from balanced_sentences(by_language, cfg.tokenizer.max_training_sentences)

        return load_or_train_tokenizer(cfg.tokenizer, balanced(), langs, fingerprint=fingerprint.hexdigest(), tags=tags)
    corpus = trained[0].corpus
    pairs = read_pairs(corpus, "train", skipped)
    first = next(pairs, None)
    if first is None:
        raise UserError(
            f"{describe_corpus(corpus)} has no training sentence pairs "
            f"({'skipped: ' + skipped.summary() if skipped else 'it is empty'})"
        )
    # Streamed (only if no model is cached for this corpus content): a corpus of millions of pairs is never held.
    sentences = (sentence for pair in chain([first], pairs) for sentence in pair)
    return load_or_train_tokenizer(cfg.tokenizer, sentences, langs, fingerprint=corpus_fingerprint(corpus, "train"), tags=tags)


def run_tokenizer(cfg: TrainConfig, directions: RunDirections, checkpoint: dict[str, Any] | None, env: DistEnv) -> Tokenizer:
    """The tokenizer of the run: when resuming, the one `checkpoint` was trained with (the run
    directory's copy, verified, or the checkpoint's own copy if that is missing); else the
    (cached) trained one.

    Nothing is written to the run directory here (the trainer writes the model there once every
    component has been built), so a corpus that cannot be read leaves the directory untouched.
    """
    if checkpoint is not None:
        return checked_tokenizer(cfg.run_dir / TOKENIZER_FILE, directions.languages,
                                 checkpoint.get(TOKENIZER), checkpoint_path(cfg.run_dir / CHECKPOINT_DIR, checkpoint[STEP]))
    if env.is_main:
        tokenizer = build_tokenizer(cfg, directions)  # trains it once, into the cache
    barrier(env)
    return tokenizer if env.is_main else build_tokenizer(cfg, directions)  # the other ranks find it in the cache


def newest_checkpoint(cfg: TrainConfig, env: DistEnv) -> dict[str, Any] | None:
    """The newest readable checkpoint of the run directory, if it is resumed (checked against `cfg`)."""
    run_dir = cfg.run_dir
    checkpoint = None
    existing = list_checkpoints(run_dir / CHECKPOINT_DIR)
    for path in reversed(existing):
        try:
            checkpoint = load_checkpoint(path)
            break
        except UserError as err:
            if env.is_main:
                print(f"warning: {err}; trying the previous checkpoint", file=sys.stderr)
    if existing and checkpoint is None:
        raise UserError(
            f"no readable checkpoint in {run_dir / CHECKPOINT_DIR} ({len(existing)} corrupt); "
            "move them away to start this run over, or use another --output-dir"
        )
    if checkpoint is None:
        checkpoint = resume_without_step_checkpoint(cfg)
    if checkpoint is not None:
        differing = incompatible_fields(load_config(run_dir / CONFIG_FILE, trust_recipe_code=cfg.trust_recipe_code), cfg)
        if differing:
            raise UserError(
                f"cannot resume {run_dir}: the checkpoint was trained with different {', '.join(differing)}; "
                "use another --output-dir or the original settings"
            )
    return checkpoint


def resume_without_step_checkpoint(cfg: TrainConfig) -> dict[str, Any] | None:
    """A run directory without step checkpoints but with signs of training is not started over.

    Starting at step 0 would overwrite `best.pt` with a worse model and the metrics with new ones;
    a run killed before or during its first checkpoint write (metrics up to at most the checkpoint
    interval) is the one case that restarts, with a warning, or, when it had written its first best.pt,
    resumes from that (returned: a training checkpoint of the same state a step checkpoint would hold).
    """
    run_dir = cfg.run_dir
    best = run_dir / CHECKPOINT_DIR / BEST_CHECKPOINT
    trained = _last_logged_step(run_dir / METRICS_FILE)
    if best.exists():
        try:
            checkpoint = load_checkpoint(best)
            step = checkpoint[STEP]
            how = f"copy it to {checkpoint_path(best.parent, step).name} to continue from its step {step}"
        except (UserError, KeyError):
            checkpoint, how = None, "it is not readable either"
        if checkpoint is not None and OPTIMIZER in checkpoint and isinstance(step, int) and trained <= cfg.trainer.checkpoint_every:
            print(f"warning: {run_dir} was stopped at step {trained}, before its first step checkpoint; resuming from "
                  f"checkpoints/{BEST_CHECKPOINT} (step {step})", file=sys.stderr)
            return checkpoint
        raise UserError(f"{run_dir} has checkpoints/best.pt but no step checkpoint to resume from, and starting over "
                        f"would overwrite best.pt; {how}, or use another --output-dir to start over")
    if trained > cfg.trainer.checkpoint_every:  # killed inside the first write: step `checkpoint_every` is logged
        raise UserError(f"{run_dir / METRICS_FILE} records training up to step {trained} but {run_dir / CHECKPOINT_DIR} has "
                        "no checkpoint (were they deleted?); starting over would replace that record. Restore the "
                        "checkpoints, or use another --output-dir to start over")
    if trained > 0:
        print(f"warning: {run_dir} was stopped at step {trained}, before its first checkpoint; starting over at step 0",
              file=sys.stderr)
    return None


def _last_logged_step(metrics: Path) -> int:
    """The last step metrics.jsonl records a train or valid line for (0 when none)."""
    last = 0
    try:
        lines = metrics.read_bytes().splitlines()
    except OSError:
        return 0
    for line in lines:
        try:
            record = json.loads(line)
            if isinstance(record.get("step"), int):
                last = max(last, record["step"])
        except (ValueError, AttributeError):
            continue
    return last


def step_timer(model: nn.Module, task: Task, vocab: VocabInfo, max_tokens: int, device: torch.device) -> StepTimer:
    """Seconds of one forward + backward of `model` on a batch of `max_tokens` tokens (sentences of 30 and 30),
    under autocast to the given dtype: what `--trainer.autocast auto` compares on CPU. The run's random state and
    weights are left as they were (no optimizer step; gradients dropped), so a run is the same with or without it."""
    sentences = max(1, max_tokens // 60)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab.unk_idx + 1, vocab.size, (sentences, 2, 30), generator=generator).tolist()
    batch = collate([(source, target) for source, target in ids], vocab.pad_idx).to(device)

    def time_step(dtype: torch.dtype | None) -> float:
        with torch.random.fork_rng(devices=[]):
            started = time.perf_counter()
            with autocast_for(device, dtype):
                loss, _ = task.compute_loss(model, batch)
            loss.backward()
            elapsed = time.perf_counter() - started
        for parameter in model.parameters():
            parameter.grad = None
        return elapsed

    return time_step


def build_components(cfg: TrainConfig, directions: RunDirections, tokenizer: Tokenizer, device: torch.device,
                     env: DistEnv = DistEnv(), checkpoint: dict[str, Any] | None = None,
                     init_weights: dict[str, torch.Tensor] | None = None) -> Components:
    """Data (of `directions`, what `check_config(cfg)` returned), model, task, optimizer and schedule of `cfg`, restored
    from `checkpoint` when given, else the model's weights from `init_weights` (`--init`) when given."""
    tc = cfg.trainer
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    random.seed(tc.seed)
    model = build_model(cfg.model, tokenizer.vocab_info).to(device)
    if checkpoint is not None:
        load_weights(model, checkpoint[MODEL], f"the checkpoint in {cfg.run_dir / CHECKPOINT_DIR}")
    elif init_weights is not None:
        load_weights(model, init_weights, f"--init {cfg.init}: its model", assign=device.type == "cpu",
                     expected="the same architecture (--model.* as it was trained with)")
    if cfg.lora.rank:
        from fs2mini.adapters import add_adapters, load_adapters  # only LoRA runs need peft

        model = add_adapters(model, cfg.lora)  # freezes every other weight
        if checkpoint is not None:
            if not checkpoint.get(LORA):
                raise UserError(f"cannot resume {cfg.run_dir} with --lora.rank {cfg.lora.rank}: it was trained without LoRA")
            load_adapters(model, checkpoint[LORA])
    if tc.activation_checkpointing:
        enable_activation_checkpointing(model)
    if tc.compile:
        model.compile(dynamic=True)  # in place: parameter names and checkpoints stay the same
    model = wrap_model(model, tc.data_parallel, env, device)
    task = build_task(cfg.task, tokenizer.vocab_info)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    if checkpoint is not None:
        load_optimizer_state(model, optimizer, checkpoint[OPTIMIZER])
    lr_at = build_lr_schedule(cfg.lr_scheduler, cfg.optimizer.lr, tc.max_steps)
    # One process, eager: time this model's step in both precisions (ranks timing apart could disagree).
    timer = step_timer(model, task, tokenizer.vocab_info, cfg.data.max_tokens, device) if env.world_size == 1 and not tc.compile else None
    # The key names what the timing depends on: the model, its batch size and the threads it runs on.
    step_key = f"{cfg.model!r}|lora {cfg.lora.rank}|max_tokens {cfg.data.max_tokens}|threads {torch.get_num_threads()}"
    precision = choose_precision(tc.autocast, device, timer, step_key)
    grad_scaler = build_grad_scaler(precision, device, checkpoint.get(GRAD_SCALER) if checkpoint is not None else None)
    data = shaped_for(cfg.data, precision.autocast_dtype is not None)  # batch shapes for the precision chosen
    shard = {"rank": env.rank, "world_size": env.world_size}
    train_batches = Seq2SeqBatches(data, "train", tokenizer, seed=tc.seed, shuffle=True, corpora=directions.trained, **shard)
    valid_batches = Seq2SeqBatches(data, "valid", tokenizer, seed=tc.seed, shuffle=False, corpora=directions.primary, **shard)
    train_batches.prepare()  # encoded once into the data cache (or opened from it), before any progress display
    valid_batches.prepare()
    return Components(directions, tokenizer, train_batches, valid_batches, model, task, optimizer, lr_at, precision, grad_scaler)
