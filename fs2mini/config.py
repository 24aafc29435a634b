"""The top-level training config, the training loop's settings, and how it is written to / read from a run directory.

`TrainConfig` nests one frozen dataclass per component; `tyro` turns it into the command line
(`--model.model-dim 128`, `optimizer:sgd`, ...). A run directory stores it as `config.json`:
plain JSON where each dataclass carries its class name in `"_type"`, so a reader sees every value
and `load_config` rebuilds exactly the same object (including which alternative of a Union).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from fs2mini.data import DataConfig
from fs2mini.errors import UserError
from fs2mini.model import ARCHS, ModelArch
from fs2mini.optim import AdamWConfig, InverseSqrtConfig, LRSchedulerConfig, OptimizerConfig
from fs2mini.task import TaskConfig
from fs2mini.tokenizer import TokenizerConfig


@dataclass(frozen=True)
class TrainerConfig:
    """The training loop: how long, how each update is made, when to validate and save."""

    max_steps: int = 300
    """Number of optimizer updates to make (the default is a ~3-minute CPU demo; real runs need 20k+)."""
    max_epochs: int | None = None
    """Stop after this many passes over the training data, if reached before max_steps."""
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
    autocast: Literal["auto", "bf16", "off"] = "auto"
    """bf16 autocast: auto = on CUDA only (bf16 matmuls are slow on most CPUs)."""
    compile: bool = False
    """Compile the model's forward with torch.compile (dynamic shapes). Off by default: on CPU it was
    measured slower than eager (see README, Performance) and the first steps wait for compilation."""
    valid_translate_sentences: int = 100
    """Validation also translates the first N validation sentences and logs BLEU/chrF (0 = loss only)."""
    valid_beam_size: int = 1
    """Beam size of that validation decoding (1 = greedy, the fastest)."""
    best_metric: Literal["loss", "bleu"] = "loss"
    """Validation metric that decides checkpoints/best.pt (lowest loss or highest BLEU)."""
    max_bad_steps: int = 5
    """Stop after this many consecutive updates with a non-finite loss or gradient (each is skipped)."""
    progress: Literal["auto", "bar", "lines"] = "auto"
    """Progress display: a live bar on a terminal, periodic lines otherwise."""


@dataclass(frozen=True)
class TrainConfig:
    """Train an encoder–decoder translation model (English→French Bible by default)."""

    run_name: str = "fs2mini"
    """Name of the run; the run directory defaults to runs/<run_name>."""
    output_dir: Path | None = None
    """Run directory (config, tokenizer, checkpoints, metrics.jsonl); default runs/<run_name>."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    data: DataConfig = DataConfig()
    model: ModelArch = ARCHS["small"]
    """Model shape; `model:NAME` picks a preset whose fields can then be overridden."""
    task: TaskConfig = TaskConfig()
    optimizer: OptimizerConfig = AdamWConfig()
    lr_scheduler: LRSchedulerConfig = InverseSqrtConfig()
    trainer: TrainerConfig = TrainerConfig()

    @property
    def run_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("runs") / self.run_name


# Sections whose change makes an existing checkpoint mean something else.
INCOMPATIBLE_SECTIONS = ("tokenizer", "model")


def config_to_json(cfg: Any) -> Any:
    """JSON-ready nested dicts; dataclasses are tagged with their class name."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out: dict[str, Any] = {"_type": type(cfg).__name__}
        for f in dataclasses.fields(cfg):
            out[f.name] = config_to_json(getattr(cfg, f.name))
        return out
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, (tuple, list)):
        return [config_to_json(item) for item in cfg]
    return cfg


def config_from_json(tp: Any, value: Any) -> Any:
    """Inverse of `config_to_json` for a value of declared type `tp`."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return config_from_json(typing.get_args(tp)[0], value)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            return None
        for option in options:
            base = typing.get_args(option)[0] if typing.get_origin(option) is Annotated else option
            if isinstance(value, dict) and getattr(base, "__name__", None) == value.get("_type"):
                return config_from_json(base, value)
        non_none = [o for o in options if o is not type(None)]
        return config_from_json(non_none[0], value)
    if origin is tuple:
        args = typing.get_args(tp)
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return tuple(config_from_json(t, v) for t, v in zip(item_types, value))
    if origin is Literal:
        return value
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        kwargs = {f.name: config_from_json(hints[f.name], value[f.name]) for f in dataclasses.fields(tp) if f.name in value}
        return tp(**kwargs)
    if tp is Path:
        return Path(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(config_to_json(cfg), indent=2) + "\n")


def load_config(path: Path) -> TrainConfig:
    try:
        raw = json.loads(path.read_text())
        return config_from_json(TrainConfig, raw)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; expected a run directory written by fs2mini.train") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a valid fs2mini config: {err}") from None


def incompatible_fields(old: TrainConfig, new: TrainConfig) -> list[str]:
    """Dotted names of fields that differ in sections a checkpoint depends on."""
    differing: list[str] = []

    def compare(prefix: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                compare(f"{prefix}.{key}", a.get(key), b.get(key))
        elif a != b:
            differing.append(prefix)

    old_json, new_json = config_to_json(old), config_to_json(new)
    for section in INCOMPATIBLE_SECTIONS:
        compare(section, old_json[section], new_json[section])
    return differing

