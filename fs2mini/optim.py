"""Optimizers and learning-rate schedules: configs, builders, and the schedule as a pure function.

A schedule is `lr_at(step) -> float`, a function of the step alone. The trainer sets the learning
rate from it before every update, so there is no scheduler state to save, restore or get out of
step with the optimizer when a run resumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Union

import torch
import tyro

from fs2mini.errors import UserError


@dataclass(frozen=True)
class AdamWConfig:
    """AdamW with NLLB/fairseq's betas."""

    lr: float = 1e-3
    """Peak learning rate (reached at the end of warmup)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """Adam's moving-average coefficients."""
    eps: float = 1e-8
    """Adam's denominator term."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""


@dataclass(frozen=True)
class SGDConfig:
    """Plain SGD with momentum (a baseline, or for tiny experiments)."""

    lr: float = 0.1
    """Peak learning rate."""
    momentum: float = 0.9
    """Momentum factor."""
    weight_decay: float = 0.0
    """L2 penalty."""


OptimizerConfig = Union[
    Annotated[AdamWConfig, tyro.conf.subcommand("adamw")],
    Annotated[SGDConfig, tyro.conf.subcommand("sgd")],
]


@dataclass(frozen=True)
class InverseSqrtConfig:
    """Linear warmup, then decay ∝ 1/√step (the Transformer / fairseq / NLLB schedule)."""

    warmup_steps: int = 100
    """Steps of linear warmup from `init_lr` to the optimizer's lr."""
    init_lr: float = 1e-7
    """Learning rate at step 0."""


@dataclass(frozen=True)
class CosineConfig:
    """Linear warmup, then cosine decay to `final_lr_scale × lr` at the last step."""

    warmup_steps: int = 400
    """Steps of linear warmup from 0."""
    final_lr_scale: float = 0.01
    """Final learning rate as a fraction of the peak."""


@dataclass(frozen=True)
class ConstantConfig:
    """Linear warmup, then the optimizer's lr for the rest of the run."""

    warmup_steps: int = 0
    """Steps of linear warmup from 0."""


LRSchedulerConfig = Union[
    Annotated[InverseSqrtConfig, tyro.conf.subcommand("inverse-sqrt")],
    Annotated[CosineConfig, tyro.conf.subcommand("cosine")],
    Annotated[ConstantConfig, tyro.conf.subcommand("constant")],
]


def check_optimizer_config(cfg: OptimizerConfig) -> None:
    if cfg.lr <= 0:
        raise UserError(f"--optimizer.lr must be positive, got {cfg.lr}")


def check_lr_scheduler_config(cfg: LRSchedulerConfig) -> None:
    if cfg.warmup_steps < 0:
        raise UserError(f"--lr-scheduler.warmup-steps must be >= 0, got {cfg.warmup_steps}")


def build_optimizer(cfg: OptimizerConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    check_optimizer_config(cfg)
    match cfg:
        case AdamWConfig():
            # foreach: one fused kernel launch per parameter group instead of one per tensor.
            return torch.optim.AdamW(
                params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True
            )
        case SGDConfig():
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_lr_schedule(cfg: LRSchedulerConfig, peak_lr: float, max_steps: int) -> Callable[[int], float]:
    """`lr_at(step)` for step = 1, 2, ... (the update about to be made)."""
    check_lr_scheduler_config(cfg)
    warmup = cfg.warmup_steps
    match cfg:
        case InverseSqrtConfig():
            init_lr = cfg.init_lr

            def lr_at(step: int) -> float:
                if step < warmup:
                    return init_lr + (peak_lr - init_lr) * step / warmup
                return peak_lr * math.sqrt(max(warmup, 1) / step)

        case CosineConfig():
            final_lr = peak_lr * cfg.final_lr_scale

            def lr_at(step: int) -> float:
                if step < warmup:
                    return peak_lr * step / warmup
                progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
                return final_lr + (peak_lr - final_lr) * 0.5 * (1 + math.cos(math.pi * progress))

        case ConstantConfig():

            def lr_at(step: int) -> float:
                return peak_lr * step / warmup if step < warmup else peak_lr

    return lr_at
