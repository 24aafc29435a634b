"""Command line: `python -m fs2mini.train [FLAGS]` trains; `... check COMPONENT [FLAGS]` tests one part;
`... prepare [FLAGS]` encodes the corpora into the data cache ahead of training (`fs2mini.prepared`).

`check` is the counterpart of the fairseq2 tutorial's `fairseq2 test tatoeba.py -f tokenizer`: it
builds one component and only what it depends on, runs it the way the training run will (the model
makes a forward and backward pass on a real batch; the trainer check runs every validation the
run runs and says whether the directory would be resumed), prints a summary and how long that
took, and exits non-zero with the reason if it fails.

Recipes call `main(CONFIG, models={...}, tasks={...}, ...)` to get the same CLI with their own
defaults and their own alternatives: a recipe's model config appears as `model:my-arch` next to
`model:small`, a corpus as `data.corpus:NAME`, and so on (see `cli_type`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import tyro

from fs2mini.checkpoint import TrainState
from fs2mini.components import Components, build_components, build_tokenizer, newest_checkpoint
from fs2mini.config import TrainConfig, as_started, check_config, refuse_training_on_import
from fs2mini.corpus import CORPORA, describe_corpus, read_pairs
from fs2mini.data import DataConfig, RunDirections, Seq2SeqBatch
from fs2mini.distributed import DistEnv, pick_device
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.metrics import best_effort
from fs2mini.model import ARCHS
from fs2mini.optim import LR_SCHEDULERS, OPTIMIZERS, build_lr_schedule
from fs2mini.pipeline import Skipped
from fs2mini.precision import autocast_for, choose_precision
from fs2mini.prepared import open_or_prepare
from fs2mini.task import TaskConfig
from fs2mini.tokenizer import Tokenizer
from fs2mini.trainer import train

COMPONENTS = ("tokenizer", "data", "model", "task", "optimizer", "lr-scheduler", "trainer")

CHECK_USAGE = (f"Test one component without training: check {{{','.join(COMPONENTS)}}} [FLAGS]\n\n"
               "Encode the corpora into the data cache ahead of training (a run does it on first use): prepare [FLAGS]")

TASKS = {"label-smoothed": TaskConfig()}
"""The CLI's `task:NAME` choices (shown only once a recipe adds another)."""

Choices = Mapping[str, Any]
"""Named config instances offered as `section:NAME` subcommands; each is also that choice's defaults."""


def cli_type(default: TrainConfig, *, corpora: Choices = {}, models: Choices = {}, tasks: Choices = {},
             optimizers: Choices = {}, lr_schedulers: Choices = {}) -> type:
    """`TrainConfig` as tyro should parse it: each replaceable ingredient a union of fs2mini's built-in
    choices and the recipe's own. A default of a class not named in any choice (a recipe's
    `CONFIG = TrainConfig(model=MyArch())`) is offered under its class name in kebab case.
    """
    corpus_choice = _choice_type(CORPORA, corpora, *default.data.corpora, *default.data.zero_shot_corpora)
    data = _with_field_types(DataConfig, corpus=corpus_choice, more_corpora=tuple[corpus_choice, ...],
                             zero_shot_corpora=tuple[corpus_choice, ...])
    return _with_field_types(
        TrainConfig,
        data=data,
        model=_choice_type(ARCHS, models, default.model),
        task=_choice_type(TASKS, tasks, default.task),
        optimizer=_choice_type(OPTIMIZERS, optimizers, default.optimizer),
        lr_scheduler=_choice_type(LR_SCHEDULERS, lr_schedulers, default.lr_scheduler),
    )


def _choice_type(builtin: Choices, extra: Choices, *defaults: Any) -> Any:
    choices = {**builtin, **extra}
    for default in defaults:
        if not any(type(choice) is type(default) for choice in choices.values()):
            choices[re.sub(r"(?<!^)(?=[A-Z])", "-", type(default).__name__).lower()] = default
    if len(choices) == 1:
        return type(defaults[0])
    return tyro.extras.subcommand_type_from_defaults(dict(choices))


def _with_field_types(cls: type, **field_types: Any) -> type:
    """A frozen subclass of dataclass `cls` whose named fields have other types (help texts are inherited)."""
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    fields = [(name, tp, dataclasses.field(default_factory=defaults[name].default_factory
                                           if defaults[name].default is dataclasses.MISSING
                                           else (lambda value=defaults[name].default: value)))
              for name, tp in field_types.items()]
    subclass = dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,), frozen=True)
    subclass.__module__ = cls.__module__  # so tyro finds the field docstrings in fs2mini's source
    return subclass


def _fields_of(instance: Any) -> dict[str, Any]:
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def _as_base(cls: type, parsed: Any) -> Any:
    """The parsed config as a plain instance of `cls` (the CLI-only subclass does not outlive parsing)."""
    return cls(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(cls)})


def parse_config(default: TrainConfig, args: Sequence[str], description: str, **choices: Choices) -> TrainConfig:
    """The CLI: every field of `TrainConfig` as a flag, alternatives as `name:choice` subcommands."""
    train_type = cli_type(default, **choices)
    data_type = typing.get_type_hints(train_type)["data"]
    cli_default = train_type(**{**_fields_of(default), "data": data_type(**_fields_of(default.data))})
    parsed = tyro.cli(
        train_type,
        default=cli_default,
        args=list(args),
        description=description,
        config=(tyro.conf.CascadeSubcommandArgs,),
    )
    return dataclasses.replace(_as_base(TrainConfig, parsed), data=_as_base(DataConfig, parsed.data))


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


def main(default: TrainConfig = TrainConfig(), *, description: str | None = None, corpora: Choices = {},
         models: Choices = {}, tasks: Choices = {}, optimizers: Choices = {}, lr_schedulers: Choices = {},
         argv: Sequence[str] | None = None) -> None:
    """Parse the command line on top of `default` (offering the recipe's own alternatives too), then
    train or check a component (never while a recipe is imported to rebuild its classes: `refuse_training_on_import`)."""
    refuse_training_on_import()  # before any parsing: the importing command's own arguments are in sys.argv
    args = list(sys.argv[1:] if argv is None else argv)
    doc = f"{(description or TrainConfig.__doc__ or '').strip()}\n\n{CHECK_USAGE}"
    choices = dict(corpora=corpora, models=models, tasks=tasks, optimizers=optimizers, lr_schedulers=lr_schedulers)
    with exit_on_user_error():
        if args[:1] == ["prepare"]:
            prepare(parse_config(default, args[1:], doc, **choices))
        elif args[:1] == ["check"]:
            if len(args) < 2 or args[1].startswith("-"):
                raise UserError(f"check: name a component, one of {', '.join(COMPONENTS)}")
            check(args[1], parse_config(default, args[2:], doc, **choices))
        else:
            # Training outlives its terminal: a closed or broken stdout/stderr only loses the progress output.
            streams = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = best_effort(sys.stdout), best_effort(sys.stderr)
            try:
                train(parse_config(default, args, doc, **choices))
            finally:
                sys.stdout, sys.stderr = streams


if __name__ == "__main__":
    main()
