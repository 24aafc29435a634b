"""Command line: `python -m fs2mini.train [FLAGS]` trains; `... check COMPONENT [FLAGS]` tests one part.

`check` is the counterpart of the fairseq2 tutorial's `fairseq2 test tatoeba.py -f tokenizer`: it
builds one component and only what it depends on, prints a summary and how long that took, and
exits non-zero with the reason if it fails. Recipes call `main(CONFIG)` to get the same CLI with
their own defaults.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import torch
import tyro

from fs2mini.config import TrainConfig
from fs2mini.corpus import corpus_languages
from fs2mini.data import Seq2SeqBatches
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.model import build_model
from fs2mini.optim import build_lr_schedule, build_optimizer
from fs2mini.task import build_task
from fs2mini.distributed import pick_device
from fs2mini.trainer import TaskBuilder, build_tokenizer, check_config, train

COMPONENTS = ("tokenizer", "data", "model", "task", "optimizer", "lr-scheduler", "trainer")

CHECK_USAGE = f"Test one component without training: check {{{','.join(COMPONENTS)}}} [FLAGS]"


def parse_config(default: TrainConfig, args: Sequence[str], description: str) -> TrainConfig:
    """The CLI: every field of `TrainConfig` as a flag, alternatives as `name:choice` subcommands."""
    return tyro.cli(
        TrainConfig,
        default=default,
        args=list(args),
        description=description,
        config=(tyro.conf.CascadeSubcommandArgs,),
    )


def check(component: str, cfg: TrainConfig, make_task: TaskBuilder = build_task) -> None:
    """Build `component` (and what it needs), print a summary and the time it took."""
    started = time.perf_counter()
    if component not in COMPONENTS:
        raise UserError(f"check: unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
    check_config(cfg)
    if component == "trainer":
        print(f"device {pick_device(cfg.trainer.device)}, {cfg.trainer.max_steps} steps, run dir {cfg.run_dir}")
    if component == "lr-scheduler":
        lr_at = build_lr_schedule(cfg.lr_scheduler, cfg.optimizer.lr, cfg.trainer.max_steps)
        marks = sorted({1, 10, 100, 1000, cfg.trainer.max_steps // 2, cfg.trainer.max_steps})
        print("lr " + "  ".join(f"step {s}: {lr_at(s):.3e}" for s in marks if s > 0))
    if component in ("tokenizer", "data", "model", "task", "optimizer"):
        tokenizer = build_tokenizer(cfg)
        source_lang, target_lang = corpus_languages(cfg.data.corpus)
        vocab = tokenizer.vocab_info
        if component == "tokenizer":
            sample = "In the beginning God created the heaven and the earth."
            ids = tokenizer.encode_source([sample], source_lang)[0]
            print(f"tokenizer {tokenizer.model_path}")
            print(f"vocab size {vocab.size} (pad {vocab.pad_idx}, unk {vocab.unk_idx}, bos {vocab.bos_idx}, eos {vocab.eos_idx})")
            print(f"languages {source_lang}→{target_lang}; encode: {' '.join(tokenizer.pieces(ids))}")
            print(f"decode: {tokenizer.decode(ids)}")
        if component in ("data", "task"):
            batches = Seq2SeqBatches(cfg.data, "train", tokenizer, seed=cfg.trainer.seed, shuffle=True)
            epoch = list(batches)
            if not epoch:
                raise UserError(f"the training split produced no batch (skipped: {batches.skipped.summary()})")
            batch = epoch[0]
            sentences = sum(b.source.size(0) for b in epoch)
            padding = sum(b.padding_fraction for b in epoch) / len(epoch)
            print(f"one epoch: {len(epoch)} batches, {sentences} sentence pairs, mean padding {padding:.1%}")
            print(
                f"first batch: source {tuple(batch.source.shape)}, target {tuple(batch.target_input.shape)}, "
                f"{batch.num_target_tokens} target tokens, padding {batch.padding_fraction:.1%}"
            )
            print(f"source[0]: {tokenizer.decode(batch.source[0].tolist())}")
            print(f"target[0]: {tokenizer.decode(batch.target_output[0].tolist())}")
        if component in ("model", "task", "optimizer"):
            model = build_model(cfg.model, vocab)
            print(f"model {model.num_parameters():,} parameters: {cfg.model}")
        if component == "task":
            task = make_task(cfg.task, vocab.pad_idx)
            with torch.no_grad():
                loss, num_tokens = task.compute_loss(model, batch)
            print(f"task {type(task).__name__}: loss {float(loss) / num_tokens:.3f} per token on the first batch "
                  f"(ln vocab = {torch.log(torch.tensor(float(vocab.size))):.3f})")
        if component == "optimizer":
            optimizer = build_optimizer(cfg.optimizer, model.parameters())
            print(f"optimizer {optimizer}")
    print(f"check {component}: OK in {time.perf_counter() - started:.2f}s")


def main(default: TrainConfig = TrainConfig(), *, description: str | None = None, make_task: TaskBuilder = build_task,
         argv: Sequence[str] | None = None) -> None:
    """Parse the command line on top of `default`, then train or check a component."""
    args = list(sys.argv[1:] if argv is None else argv)
    doc = f"{(description or TrainConfig.__doc__ or '').strip()}\n\n{CHECK_USAGE}"
    with exit_on_user_error():
        if args[:1] == ["check"]:
            if len(args) < 2 or args[1].startswith("-"):
                raise UserError(f"check: name a component, one of {', '.join(COMPONENTS)}")
            check(args[1], parse_config(default, args[2:], doc), make_task)
        else:
            train(parse_config(default, args, doc), make_task)


if __name__ == "__main__":
    main()
