"""The top-level training config, the training loop's settings, their checks, and how it is written to / read from a run directory.

`TrainConfig` nests one frozen dataclass per component; `tyro` turns it into the command line
(`--model.model-dim 128`, `optimizer:sgd`, ...; see fs2mini/train.py, which also adds a recipe's
own alternatives). A run directory stores it as `config.json`: plain JSON where each dataclass
carries its class name in `"_type"`, so a reader sees every value and `load_config` rebuilds
exactly the same object (including which alternative was chosen). A class defined outside fs2mini
also records where it lives: `"_module"` (an importable module) or `"_file"` (the recipe file that
was run), so `translate`, `evaluate` and a resume rebuild a recipe's own model, task or corpus.

Rebuilding such a class imports its module, which runs its code; a run directory can come from anyone, so
`load_config` refuses a config.json naming code outside fs2mini unless the caller passes `trust_recipe_code`
(the CLIs' `--trust-recipe-code`), as Hugging Face asks for `trust_remote_code`. Only fs2mini's own classes, and
the recipe file this process runs (or imported with consent before), need none. A class of any other module needs it
even when that module is imported already (the standard library, torch, a recipe's helper module): building the class
runs its `__init__`/`__post_init__`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import torch
import tyro

from fs2mini.checkpoint import write_atomically
from fs2mini.corpus import check_corpus_config
from fs2mini.data import DataConfig, RunDirections, check_data_config, run_directions
from fs2mini.distributed import DistEnv
from fs2mini.errors import UserError, expect, expect_positive_ints, finite
from fs2mini.lora import LoraConfig, check_lora_config, check_lora_targets, linear_widths
from fs2mini.model import ARCHS, ModelConfig, check_model_config
from fs2mini.optim import LR_SCHEDULERS, OPTIMIZERS, AdamWConfig, InverseSqrtConfig, check_lr_scheduler_config, check_optimizer_config
from fs2mini.precision import AutocastMode
from fs2mini.task import TaskConfig, check_task_config
from fs2mini.tokenizer import TokenizerConfig, check_tokenizer_config
from fs2mini.vocab import VocabInfo

# The built-in alternatives as types (the command line rebuilds them with a recipe's own ones added).
ModelChoice = tyro.extras.subcommand_type_from_defaults(ARCHS)
OptimizerChoice = tyro.extras.subcommand_type_from_defaults(OPTIMIZERS)
LRSchedulerChoice = tyro.extras.subcommand_type_from_defaults(LR_SCHEDULERS)


@dataclass(frozen=True)
class TrainerConfig:
    """The training loop: how long, how each update is made, when to validate and save."""

    max_steps: int = 300
    """Number of optimizer updates to make (the default run is bounded by --trainer.max-time instead)."""
    max_epochs: int | None = None
    """Stop after this many passes over the training data, if reached before max_steps."""
    dropout_from_epoch: int = 0
    """Keep the model's dropout layers off for the first N passes over the training data: while every batch is text
    the model has not seen yet there is nothing to overfit, and dropout only slows learning (0 = dropout from the
    first update; docs/results.md, sweep 7)."""
    grad_accum_steps: int = 1
    """Micro-batches per update; gradients are normalised by their total target tokens."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this value (0 disables clipping)."""
    validate_every: int = 100
    """Validate every N updates (and after the last one)."""
    checkpoint_every: int = 100
    """Write a checkpoint every N updates (and after the last one)."""
    keep_last_checkpoints: int = 2
    """Step checkpoints kept in the run directory; older ones are deleted."""
    log_every: int = 25
    """Write a train line to metrics.jsonl every N updates."""
    seed: int = 2
    """Seed for parameter init, dropout and data shuffling."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (CUDA when available). Under torchrun each rank uses cuda:LOCAL_RANK or cpu."""
    data_parallel: Literal["ddp", "fsdp", "none"] = "ddp"
    """Under torchrun: ddp replicates the model, fsdp shards it per layer (FSDP2); none = single process only."""
    autocast: AutocastMode = "auto"
    """Mixed precision: auto = bf16 where it is native (CUDA compute capability >= 8.0; CPUs whose bf16 matmuls
    measure faster than fp32 and where this model's training step, timed once and cached, is faster in bf16),
    fp16 with loss scaling (GradScaler) on older GPUs, fp32 on other CPUs."""
    activation_checkpointing: bool = False
    """Recompute each encoder/decoder layer's activations in the backward pass instead of keeping them:
    less memory for big models and long batches, for about one more forward pass per update."""
    compile: bool = False
    """Compile the model's forward with torch.compile (dynamic shapes). Off by default: on CPU it was
    measured slower than eager (docs/results.md, "Speed on a CPU") and the first steps wait for compilation."""
    valid_translate_sentences: int | Literal["all"] = "all"
    """Validation also translates the validation split and logs BLEU/chrF: all of it, the first N, or none (0)."""
    valid_beam_size: int = 1
    """Beam size of that validation decoding (1 = greedy, the fastest)."""
    best_metric: Literal["loss", "bleu"] = "loss"
    """Validation metric that decides checkpoints/best.pt (lowest loss or highest BLEU)."""
    patience: int | None = None
    """Early stopping: stop after N validations in a row without a better best-metric (None = never)."""
    keep_best_checkpoints: int = 0
    """Also keep the N best validation checkpoints as checkpoints/best_step_*.pt (for `fs2mini.average --best`)."""
    max_time: str | None = None
    """Wall-clock budget of the training loop, counted across resumes: 18m, 2h, 90s or plain seconds (3600);
    None = no budget (the default run has 12m: raise it, or pass None, for a longer run)."""
    tensorboard: bool = True
    """Write TensorBoard event files to RUN_DIR/tb (`tensorboard --logdir RUN_DIR/tb`)."""
    wandb_project: str | None = None
    """Also log to this Weights & Biases project (needs `pip install wandb`); a resumed run keeps its W&B run."""
    max_bad_steps: int = 5
    """Stop after this many consecutive updates with a non-finite loss or gradient (each is skipped; fp16's
    loss-scale overflows do not count)."""
    progress: Literal["auto", "bar", "lines"] = "auto"
    """Progress display: a live bar on a terminal, periodic lines otherwise."""

    @property
    def max_seconds(self) -> float | None:
        """`max_time` in seconds (checked by `check_trainer_config`)."""
        return None if self.max_time is None else parse_duration(self.max_time)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `18m`, `2h`, `1.5h`, `90s` or `3600`; ValueError for anything else (or not > 0)."""
    text = text.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], None)
    number = float(text[:-1] if unit is not None else text)  # ValueError on garbage
    seconds = number * (unit or 1)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"not a positive duration: {text}")
    return seconds


def check_tracker_config(cfg: TrainerConfig) -> None:
    """Fail before any slow work when W&B is asked for but not installed."""
    if cfg.wandb_project is not None and importlib.util.find_spec("wandb") is None:
        raise UserError(f"--trainer.wandb-project {cfg.wandb_project}: the wandb package is not installed; "
                        "expected `pip install wandb` (or `pip install fs2mini[wandb]`)")


def check_trainer_config(cfg: TrainerConfig) -> None:
    expect_positive_ints([
        ("--trainer.max-steps", cfg.max_steps),
        ("--trainer.grad-accum-steps", cfg.grad_accum_steps),
        ("--trainer.validate-every", cfg.validate_every),
        ("--trainer.checkpoint-every", cfg.checkpoint_every),
        ("--trainer.keep-last-checkpoints", cfg.keep_last_checkpoints),
        ("--trainer.log-every", cfg.log_every),
        ("--trainer.max-bad-steps", cfg.max_bad_steps),
        ("--trainer.valid-beam-size", cfg.valid_beam_size),
    ])
    if cfg.max_epochs is not None and cfg.max_epochs <= 0:
        raise UserError(f"--trainer.max-epochs must be a positive integer, got {cfg.max_epochs}")
    expect("--trainer.dropout-from-epoch", cfg.dropout_from_epoch, cfg.dropout_from_epoch >= 0,
           "an integer >= 0 (0 = dropout from the first update)")
    if cfg.max_grad_norm < 0:
        raise UserError(f"--trainer.max-grad-norm must be >= 0, got {cfg.max_grad_norm}")
    expect("--trainer.max-grad-norm", cfg.max_grad_norm, finite(cfg.max_grad_norm), "a finite number >= 0 (0 disables clipping)")
    expect("--trainer.seed", cfg.seed, 0 <= cfg.seed < 2**63, "an integer in [0, 2**63)")
    if cfg.valid_translate_sentences != "all" and cfg.valid_translate_sentences < 0:
        raise UserError(f"--trainer.valid-translate-sentences must be >= 0, got {cfg.valid_translate_sentences}")
    if cfg.best_metric == "bleu" and cfg.valid_translate_sentences == 0:
        raise UserError("--trainer.best-metric bleu needs --trainer.valid-translate-sentences > 0")
    if cfg.patience is not None:
        expect("--trainer.patience", cfg.patience, cfg.patience > 0, "a positive number of validations")
    expect("--trainer.keep-best-checkpoints", cfg.keep_best_checkpoints, cfg.keep_best_checkpoints >= 0,
           "an integer >= 0 (0 keeps only best.pt)")
    if cfg.max_time is not None:
        try:
            parse_duration(cfg.max_time)
        except ValueError:
            raise UserError(f"--trainer.max-time {cfg.max_time}: expected a positive duration such as 18m, 2h, 90s "
                            "or 3600 (seconds)") from None
    check_tracker_config(cfg)


@dataclass(frozen=True)
class TrainConfig:
    """Train an encoder–decoder translation model (English→French Bible by default)."""

    run_name: str = "fs2mini"
    """Name of the run; the run directory defaults to runs/<run_name>."""
    output_dir: Path | None = None
    """Run directory (config, tokenizer, checkpoints, metrics.jsonl); default runs/<run_name>."""
    # (The defaults below are the default run, `make train`: recipes/bible_budget.py's lessons in a 12-minute
    # budget, docs/results.md "Quality within a time budget"; each class's own defaults stay generic. A comment
    # right above a field would become its --help text, hence the field docstrings.)
    tokenizer: TokenizerConfig = TokenizerConfig(vocab_size=8000)
    """Sentencepiece model trained on the training split (cached by corpus content and settings)."""
    data: DataConfig = DataConfig()
    """Corpora, splits, batching and the prepared-data cache."""
    model: ModelChoice = ARCHS["medium"]
    """Model shape; `model:NAME` picks a preset whose fields can then be overridden."""
    task: TaskConfig = TaskConfig()
    optimizer: OptimizerChoice = AdamWConfig(lr=1.5e-3, weight_decay=1e-4)
    lr_scheduler: LRSchedulerChoice = InverseSqrtConfig(warmup_steps=500, cooldown_fraction=0.25)
    trainer: TrainerConfig = TrainerConfig(max_steps=100_000, max_time="12m", validate_every=500, checkpoint_every=500,
                                           valid_translate_sentences=100, dropout_from_epoch=1)
    init: Path | None = None
    """Start from this run directory's (or checkpoint file's) weights and tokenizer: fine-tuning. The optimizer,
    learning-rate schedule and step start afresh (an `fs2mini.hf import` directory works too)."""
    lang_map: tuple[str, ...] = ()
    """With --init of an imported model: corpus code=model code, e.g. eng=eng_Latn (default: the one code starting eng_)."""
    add_languages: tuple[str, ...] = ()
    """With --init of an imported model: NEW=RELATED adds language code NEW, its embedding a copy of RELATED's
    (e.g. ary_Arab=arb_Arab)."""
    lora: LoraConfig = LoraConfig()
    """Low-rank adapters (--lora.rank 8): only they train; merged into the weights on export."""
    trust_recipe_code: bool = False
    """Resuming (or `check trainer` of) a run whose config.json names recipe code outside fs2mini (`_file`,
    `_module`) imports, i.e. runs, that code: allow it. Not needed when the recipe that trained the run runs
    again; a config.json's own value is never read back."""

    @property
    def run_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("runs") / self.run_name


def sharded(tc: TrainerConfig, env: DistEnv) -> bool:
    """FSDP shards the parameters, so no rank has whole weights to translate with during validation."""
    return env.active and tc.data_parallel == "fsdp"


def check_config(cfg: TrainConfig, env: DistEnv = DistEnv()) -> RunDirections:
    """Reject every bad setting before any slow work (tokenizer training, data reading); returns the run's
    directions, checked on the way, for the caller to pass down."""
    for field, corpus in cfg.data.corpus_fields:
        check_corpus_config(corpus, field)
    directions = run_directions(cfg.data)
    check_tokenizer_config(cfg.tokenizer, directions.languages)
    check_data_config(cfg.data)
    if isinstance(cfg.model, ModelConfig):
        check_model_config(cfg.model)
        longest = max(cfg.data.max_source_len, cfg.data.max_target_len)
        expect("--model.max-seq-len", cfg.model.max_seq_len, cfg.model.max_seq_len >= longest,
               f"at least {longest}, the longest sequence --data.max-source-len/--data.max-target-len let through")
    if isinstance(cfg.task, TaskConfig):
        check_task_config(cfg.task)
    check_optimizer_config(cfg.optimizer)
    check_lr_scheduler_config(cfg.lr_scheduler)
    check_trainer_config(cfg.trainer)
    check_lora_config(cfg.lora)
    if cfg.lora.rank and isinstance(cfg.model, ModelConfig):  # before any slow work; a recipe's model is checked when built
        with torch.device("meta"):  # the layers' names and widths, without allocating any weight
            check_lora_targets(cfg.lora, linear_widths(cfg.model.build(VocabInfo(8, 0, 2, 3, 1))))
    if cfg.init is None and (cfg.lang_map or cfg.add_languages):
        raise UserError(f"{'--lang-map' if cfg.lang_map else '--add-languages'} applies to the model --init starts "
                        "from; expected --init RUN_DIR too")
    if cfg.lang_map or cfg.add_languages:  # their form, also where --init is not read (a resume, check, prepare)
        from fs2mini.initialize import parse_add_languages, parse_lang_map  # only runs that use them import it

        parse_lang_map(cfg.lang_map)
        parse_add_languages(cfg.add_languages)
    if cfg.lora.rank and sharded(cfg.trainer, env):
        raise UserError("--lora.rank is not available with --trainer.data-parallel fsdp; use ddp")
    if cfg.trainer.best_metric == "bleu" and sharded(cfg.trainer, env):
        raise UserError("--trainer.best-metric bleu is not available with --trainer.data-parallel fsdp; use loss")
    return directions


# Sections whose change makes an existing checkpoint mean something else (where the tokenizer
# cache lives does not: the run directory keeps its own copy of the tokenizer).
INCOMPATIBLE_SECTIONS = ("tokenizer", "model", "lora")
IGNORED_FOR_COMPATIBILITY = ("tokenizer.cache_dir",)


RECIPE_MODULE_PREFIX = "fs2mini_recipe_"
"""Name prefix of the modules that recipe files are imported as (they are not importable by name)."""


def class_location(cls: type) -> dict[str, str]:
    """Where a config class outside fs2mini lives: its module, or the file of the script that ran."""
    module = cls.__module__
    if module.startswith("fs2mini.") or module == "fs2mini":
        return {}
    if module == "__main__" or module.startswith(RECIPE_MODULE_PREFIX):  # a script, or one loaded by `_import_recipe_file`
        main_file = getattr(sys.modules[module], "__file__", None)
        if main_file is None:
            raise UserError(f"config class {cls.__qualname__} is defined in an interactive session; define it in a "
                            "file (a recipe) so the run directory can rebuild it")
        return {"_file": str(Path(main_file).resolve())}
    return {"_module": module}


def import_config_class(value: dict[str, Any], where: Path | None) -> type:
    """The class a tagged dict names through `_module` or `_file`; one sentence if it is gone."""
    name = value["_type"]
    source = value.get("_module") or value.get("_file")
    prefix = f"{where}: " if where is not None else ""
    if "_file" in value and not recipe_path(value["_file"]).is_file():
        raise UserError(f"{prefix}recipe file {source} does not exist; expected the recipe that trained this run "
                        f"(it defines {name})")
    try:
        if "_module" in value:
            module = importlib.import_module(value["_module"])
        else:
            module = _import_recipe_file(recipe_path(value["_file"]))
    except UserError as err:  # e.g. a recipe that would start a training on import (`refuse_training_on_import`)
        raise UserError(f"{prefix}cannot import {source} for {name}: {err}") from None
    except (Exception, SystemExit) as err:  # an import runs the user's code: any error means "cannot rebuild"
        raise UserError(f"{prefix}cannot import {source} for {name} ({type(err).__name__}: {err}); "
                        "expected the recipe that trained this run to be importable") from None
    cls = getattr(module, name, None)
    # Defined there, as `class_location` records it: not a class the module imported (consent covers the module's own code).
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__):
        raise UserError(f"{prefix}{source} has no dataclass {name} of its own; expected the recipe that trained this run")
    return cls


def recipe_path(recorded: str) -> Path:
    """The file a `_file` entry names, absolute (fs2mini writes absolute paths; a relative one means the working
    directory's), so that one file is one module however it is spelled."""
    return Path(recorded).resolve()


def _recipe_module_name(path: Path) -> str:
    return f"{RECIPE_MODULE_PREFIX}{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def _loaded_recipe(path: Path) -> types.ModuleType | None:
    """The module recipe file `path` already is in this process (the script running now, or one imported
    before), or None: importing it would run its code."""
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) and Path(main.__file__).resolve() == path:
        return main
    return sys.modules.get(_recipe_module_name(path))


def _import_recipe_file(path: Path) -> types.ModuleType:
    """Import a recipe file as a module (its `if __name__ == "__main__"` part does not run).

    The recipe running right now is `__main__` already: its classes are used as they are."""
    loaded = _loaded_recipe(path)
    if loaded is not None:
        return loaded
    module_name = _recipe_module_name(path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def refuse_training_on_import() -> None:
    """Stop a training that a recipe would start while `import_config_class` imports it to rebuild a class.

    A recipe without an `if __name__ == "__main__":` guard calls `fs2mini.train.main` at import time, so rebuilding
    its classes (translate, evaluate, a resume) would start a training, in its default run directory, of whatever
    the importing command's arguments parse to. `fs2mini.train.main` calls this first; a recipe run as a script
    is not imported by `import_config_class` and trains as usual."""
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code is import_config_class.__code__:
            raise UserError("it starts a training when imported; expected its call of main() under "
                            '`if __name__ == "__main__":`, so that its classes can be rebuilt without training')
        frame = frame.f_back


def recipe_code(raw: Any, name: str = "") -> dict[str, str]:
    """The outside code that rebuilding the JSON `raw` of a config would run: {file or module: the field naming it},
    for every `_file` that is not a recipe this process has run already, and every `_module` outside fs2mini, imported
    already or not (building one of its classes runs its code) (ValueError for a `_file` or `_module` that is not a
    path or a name)."""
    found: dict[str, str] = {}
    if isinstance(raw, list):
        for index, item in enumerate(raw):
            for code, field in recipe_code(item, f"{name}.{index}").items():
                found.setdefault(code, field)
    if not isinstance(raw, dict):
        return found
    for key in ("_file", "_module"):
        if key not in raw:
            continue
        value = raw[key]
        if not isinstance(value, str):
            raise ValueError(f"{name.lstrip('.') or 'the config'}.{key} is {value!r}; expected a string")
        if key == "_file" and _loaded_recipe(recipe_path(value)) is None:
            found.setdefault(str(recipe_path(value)), name.lstrip(".") or "the config")
        if key == "_module" and value != "fs2mini" and not value.startswith("fs2mini."):
            found.setdefault(f"module {value}", name.lstrip(".") or "the config")
    for key, item in raw.items():
        for code, field in recipe_code(item, f"{name}.{key}").items():
            found.setdefault(code, field)
    return found


def config_to_json(cfg: Any) -> Any:
    """JSON-ready nested dicts; dataclasses are tagged with their class name (and location, see `class_location`)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out: dict[str, Any] = {"_type": type(cfg).__name__, **class_location(type(cfg))}
        for f in dataclasses.fields(cfg):
            out[f.name] = config_to_json(getattr(cfg, f.name))
        return out
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, (tuple, list)):
        return [config_to_json(item) for item in cfg]
    return cfg


def config_from_json(tp: Any, value: Any, where: Path | None = None, name: str = "") -> Any:
    """Inverse of `config_to_json` for a value of declared type `tp` (`where`: the file, `name`: the field, for messages)."""
    if isinstance(value, dict) and ("_module" in value or "_file" in value):
        tp = import_config_class(value, where)
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return config_from_json(typing.get_args(tp)[0], value, where, name)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            return None
        for option in options:
            base = typing.get_args(option)[0] if typing.get_origin(option) is Annotated else option
            if isinstance(value, dict) and getattr(base, "__name__", None) == value.get("_type"):
                return config_from_json(base, value, where, name)
        non_none = [o for o in options if o is not type(None)]
        for option in non_none[:-1]:  # e.g. `int | Literal["all"]`: the first option that takes the value
            try:
                return config_from_json(option, value, where, name)
            except UserError:
                continue
        return config_from_json(non_none[-1], value, where, name)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{where}: {name.lstrip('.')} is {value!r}; expected a list")
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return tuple(config_from_json(t, v, where, name) for t, v in zip(item_types, value))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"{where}: {name.lstrip('.')} is {value!r}; expected one of "
                            f"{', '.join(map(repr, typing.get_args(tp)))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: {name.lstrip('.') or 'the file'} is {value!r}; expected a JSON object")
        hints = typing.get_type_hints(tp, include_extras=True)
        kwargs = {f.name: config_from_json(hints[f.name], value[f.name], where, f"{name}.{f.name}")
                  for f in dataclasses.fields(tp) if f.name in value}
        return tp(**kwargs)
    if tp is Path:
        if not isinstance(value, str):
            raise UserError(f"{where}: {name.lstrip('.')} is {value!r}; expected a path (a string)")
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and (tp is bool or not isinstance(value, bool))):
        raise UserError(f"{where}: {name.lstrip('.')} is {value!r}; expected a value of type {tp.__name__}")
    return value


def resolve_paths(cfg: Any) -> Any:
    """`cfg` with every `Path` field made absolute (recipe classes included), so a run directory's
    config.json means the same files from any working directory."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        changes = {f.name: resolve_paths(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
        return dataclasses.replace(cfg, **changes)
    if isinstance(cfg, Path):
        return cfg.expanduser().resolve()
    return cfg


def as_started(cfg: TrainConfig) -> TrainConfig:
    """`cfg` as a run uses it: its run directory named explicitly and every path absolute (training and `check` alike)."""
    return resolve_paths(dataclasses.replace(cfg, output_dir=cfg.run_dir))


def save_config(cfg: TrainConfig, path: Path) -> None:
    text = json.dumps(config_to_json(cfg), indent=2) + "\n"
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def load_config(path: Path, *, trust_recipe_code: bool = False) -> TrainConfig:
    """The config a run directory was trained with, or one sentence saying what is wrong with the file.

    A config naming code outside fs2mini (`recipe_code`: a module not fs2mini's, a recipe file this process has not
    run) is refused before anything is imported or built, unless `trust_recipe_code`: a shared run directory must not
    run its author's code, nor choose which already-imported code to run, unasked."""
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; expected a run directory written by fs2mini.train") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; expected the config.json file written by fs2mini.train") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); expected the config.json written by fs2mini.train") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not a valid fs2mini config: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} holds a JSON {type(raw).__name__}; expected the object written by fs2mini.train")
    try:
        code = recipe_code(raw)
    except ValueError as err:
        raise UserError(f"{path} is not a valid fs2mini config: {err}") from None
    if code and not trust_recipe_code:
        listed = ", ".join(f"{source} (for {field})" for source, field in code.items())
        raise UserError(f"{path} names code from outside fs2mini, which loading the run would run: {listed}; pass "
                        "--trust-recipe-code (Python: trust_recipe_code=True) only if you trust it")
    raw.pop("trust_recipe_code", None)  # consent is the caller's to give, never the file's
    try:
        return config_from_json(TrainConfig, _upgrade(raw), path)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserError(f"{path} is not a valid fs2mini config: {type(err).__name__}: {err}") from None


def _upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A config.json of an earlier fs2mini, read as it was meant: before `attention_dropout_p` and
    `ffn_dropout_p` existed, `dropout_p` applied to attention weights and FFN activations too; before
    `init` existed, every model had fairseq's init (a key a model config class lacks is ignored)."""
    model = raw.get("model")
    if isinstance(model, dict) and "dropout_p" in model:
        for key in ("attention_dropout_p", "ffn_dropout_p"):
            model.setdefault(key, model["dropout_p"])
        model.setdefault("init", "fairseq")
    return raw


def incompatible_fields(old: TrainConfig, new: TrainConfig) -> list[str]:
    """Dotted names of fields that differ in sections a checkpoint depends on."""
    differing: list[str] = []

    def compare(prefix: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                compare(f"{prefix}.{key}", a.get(key), b.get(key))
        elif a != b and prefix not in IGNORED_FOR_COMPATIBILITY:
            differing.append(prefix)

    old_json, new_json = config_to_json(old), config_to_json(new)
    for section in INCOMPATIBLE_SECTIONS:
        compare(section, old_json[section], new_json[section])
    return differing

