"""`python -m fs2mini.train check COMPONENT` and `... prepare`: one component built and run without training.

`check` is the counterpart of the fairseq2 tutorial's `fairseq2 test tatoeba.py -f tokenizer`: it
builds one component and only what it depends on, runs it the way the training run will (the model
makes a forward and backward pass on a real batch; the trainer check runs every validation the
run runs and says whether the directory would be resumed), prints a summary and how long that
took, and exits non-zero with the reason if it fails. `prepare` encodes every corpus split a run reads
into the data cache (`fs2mini.prepared`) ahead of training. `fs2mini.train.main` imports this module
only for these two subcommands, so a training run never reads it.
"""

from __future__ import annotations

import time

import torch

from fs2mini.checkpoint import TrainState
from fs2mini.components import Components, build_components, build_tokenizer, newest_checkpoint
from fs2mini.config import TrainConfig, as_started, check_config
from fs2mini.corpus import describe_corpus, read_pairs
from fs2mini.data import RunDirections, Seq2SeqBatch
from fs2mini.distributed import DistEnv, pick_device
from fs2mini.errors import UserError
from fs2mini.optim import build_lr_schedule
from fs2mini.pipeline import Skipped
from fs2mini.precision import autocast_for, choose_precision
from fs2mini.prepared import open_or_prepare
from fs2mini.tokenizer import Tokenizer

COMPONENTS = ("tokenizer", "data", "model", "task", "optimizer", "lr-scheduler", "trainer")
"""What `check COMPONENT` tests, in the order a run builds them."""


def check(component: str, cfg: TrainConfig) -> None:
    """Build `component` (and what it needs), run it as training will, print a summary and the time it took."""
    started = time.perf_counter()
    if component not in COMPONENTS:
        raise UserError(f"check: unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
    cfg = as_started(cfg)
    directions = check_config(cfg)
    device = pick_device(cfg.trainer.device)
    if component == "trainer":
        _check_trainer(cfg, device)
    if component == "lr-scheduler":
        lr_at = build_lr_schedule(cfg.lr_scheduler, cfg.optimizer.lr, cfg.trainer.max_steps)
        marks = sorted({1, 10, 100, 1000, cfg.trainer.max_steps // 2, cfg.trainer.max_steps})
        print("lr " + "  ".join(f"step {s}: {lr_at(s):.3e}" for s in marks if s > 0))
    if component in ("tokenizer", "data", "model", "task", "optimizer"):
        tokenizer = build_tokenizer(cfg, directions)
        if component == "tokenizer":
            _check_tokenizer(directions, tokenizer)
            return _done(component, started)
        parts = build_components(cfg, directions, tokenizer, device)
        if component == "optimizer":
            print(f"optimizer {parts.optimizer}")
            return _done(component, started)
        epoch = iter(parts.train_batches)
        batch = next(epoch, None)
        if batch is None:
            raise UserError(f"the training split produced no batch (skipped: {parts.train_batches.skipped.summary()})")
        if component == "data":  # the whole epoch, one batch at a time (a corpus of millions of pairs is never held)
            batches, sentences, padding = 1, batch.source.size(0), batch.padding_fraction
            for other in epoch:
                batches, sentences, padding = batches + 1, sentences + other.source.size(0), padding + other.padding_fraction
            print(f"one epoch: {batches} batches, {sentences} sentence pairs, mean padding {padding / batches:.1%}")
            print(f"first batch: source {tuple(batch.source.shape)}, target {tuple(batch.target_input.shape)}, "
                  f"{batch.num_target_tokens} target tokens, padding {batch.padding_fraction:.1%}")
            print(f"source[0]: {tokenizer.decode(batch.source[0].tolist())}")
            print(f"target[0]: {tokenizer.decode(batch.target_output[0].tolist())}")
        if component == "model":
            _check_model(cfg, parts, batch.to(device))
        if component == "task":
            with torch.no_grad():
                loss, num_tokens = parts.task.compute_loss(parts.model, batch.to(device))
            print(f"task {type(parts.task).__name__}: loss {float(loss) / num_tokens:.3f} per token on the first batch "
                  f"(ln vocab = {torch.log(torch.tensor(float(tokenizer.vocab_info.size))):.3f})")
    _done(component, started)


def prepare(cfg: TrainConfig) -> None:
    """Train (or find) the tokenizer and prepare every split a run of `cfg` reads, printing where each is cached."""
    started = time.perf_counter()
    cfg = as_started(cfg)
    directions = check_config(cfg)
    tokenizer = build_tokenizer(cfg, directions)
    data = cfg.data
    print(f"tokenizer {tokenizer.model_path}")
    for split, corpora in (("train", directions.trained), ("valid", directions.evaluated), ("test", directions.evaluated)):
        for entry in corpora:
            prepared = open_or_prepare(entry.corpus, split, tokenizer, data.cache_dir, field=entry.field,
                                       workers=data.prepare_workers)
            size = sum(path.stat().st_size for path in prepared.directory.iterdir())
            print(f"{describe_corpus(entry.corpus)} {split}: {len(prepared):,} pairs, {size / 1e6:,.1f} MB in {prepared.directory}")
    print(f"prepare: OK in {time.perf_counter() - started:.2f}s")


def _done(component: str, started: float) -> None:
    print(f"check {component}: OK in {time.perf_counter() - started:.2f}s")


def _check_tokenizer(directions: RunDirections, tokenizer: Tokenizer) -> None:
    first = directions.trained[0]  # --data.corpus
    source_lang, target_lang = first.langs
    vocab = tokenizer.vocab_info
    source, target = next(iter(read_pairs(first.corpus, "train", Skipped())))
    print(f"tokenizer {tokenizer.model_path}")
    print(f"vocab size {vocab.size} (pad {vocab.pad_idx}, unk {vocab.unk_idx}, bos {vocab.bos_idx}, eos {vocab.eos_idx})")
    if len(directions.primary) > 1:
        print(f"languages {', '.join(tokenizer.langs)} (language tokens "
              f"{', '.join(f'{lang}={i}' for lang, i in tokenizer.lang_ids.items())}); directions "
              f"{', '.join(entry.name for entry in directions.primary)}")
    print(f"languages {source_lang}→{target_lang}; first training pair:")
    source_ids = tokenizer.encode_source([source], source_lang)[0]
    print(f"source layout: {' '.join(tokenizer.pieces(source_ids))}")
    print(f"target layout: {' '.join(tokenizer.pieces(tokenizer.encode_target([target], target_lang)[0]))}")
    print(f"decode(source): {tokenizer.decode(source_ids)}")


def _check_model(cfg: TrainConfig, parts: Components, batch: Seq2SeqBatch) -> None:
    """One forward and backward pass on a real batch, timed, as a training step makes it (no update)."""
    model = parts.model
    print(f"model {type(model).__name__}, {parts.num_parameters:,} parameters: {cfg.model}")
    started = time.perf_counter()
    print(f"precision: {parts.precision.reason}")
    with autocast_for(next(model.parameters()).device, parts.precision.autocast_dtype):
        encoder_out, _ = model.encode(batch.source, batch.source_lengths)
        loss, num_tokens = parts.task.compute_loss(model, batch)
    loss.backward()
    elapsed = time.perf_counter() - started
    grads = sum(1 for p in model.parameters() if p.grad is not None)
    print(f"batch: source {tuple(batch.source.shape)} → encoder output {tuple(encoder_out.shape)}; "
          f"target {tuple(batch.target_input.shape)} → logits (…, {parts.tokenizer.vocab_info.size})")
    print(f"loss {loss.detach().item() / num_tokens:.3f} per target token over {num_tokens} tokens; forward+backward "
          f"{elapsed:.2f}s; {grads} of {sum(1 for _ in model.parameters())} parameter tensors got gradients")


def _check_trainer(cfg: TrainConfig, device: torch.device) -> None:
    """Everything `train` checks before its first step, without writing anything."""
    tc = cfg.trainer
    checkpoint = newest_checkpoint(cfg, DistEnv())
    print(f"device {device}, {tc.max_steps} steps, {choose_precision(tc.autocast, device).reason}, run dir {cfg.run_dir}")
    if checkpoint is not None:
        saved = TrainState.saved_in(checkpoint)
        print(f"{cfg.run_dir} has checkpoints: training would resume at step {saved.step} (epoch {saved.epoch})")
    elif cfg.run_dir.exists():
        print(f"{cfg.run_dir} exists without checkpoints: training would start at step 0")
    else:
        print(f"{cfg.run_dir} does not exist yet: training would create it and start at step 0")
