"""Command line: `python -m fs2mini.train [FLAGS]` trains; `... check COMPONENT [FLAGS]` tests one part;
`... prepare [FLAGS]` encodes the corpora into the data cache ahead of training (`fs2mini.prepared`).

`check` and `prepare` live in `fs2mini.check`, imported only when one of them is asked for.

Recipes call `main(CONFIG, models={...}, tasks={...}, ...)` to get the same CLI with their own
defaults and their own alternatives: a recipe's model config appears as `model:my-arch` next to
`model:small`, a corpus as `data.corpus:NAME`, and so on (see `cli_type`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import tyro

from fs2mini.config import TrainConfig, refuse_training_on_import
from fs2mini.corpus import CORPORA
from fs2mini.data import DataConfig
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.metrics import best_effort
from fs2mini.model import ARCHS
from fs2mini.optim import LR_SCHEDULERS, OPTIMIZERS
from fs2mini.task import TaskConfig
from fs2mini.trainer import train

CHECK_USAGE = ("Test one component without training: check {tokenizer,data,model,task,optimizer,lr-scheduler,trainer} "
               "[FLAGS]\n\n"  # (fs2mini.check.COMPONENTS, spelled out: a training run does not import that module)
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
            from fs2mini.check import prepare

            prepare(parse_config(default, args[1:], doc, **choices))
        elif args[:1] == ["check"]:
            from fs2mini.check import COMPONENTS, check  # check and prepare are read only when asked for

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
