"""Optimizers and learning-rate schedules: configs, builders, and the schedule as a pure function.

A schedule is `lr_at(step, time_fraction) -> float`: a function of the step and of the share of
the run's time budget spent (`elapsed / --trainer.max-time`, 0 without one). The trainer sets the
learning rate from it before every update, so there is no scheduler state to save, restore or get
out of step with the optimizer when a run resumes. A schedule that decays over the run (cosine)
follows whichever budget runs out first, steps or time: a 12-minute run with max_steps 100,000
still decays to its final lr at minute 12. So does the cooldown that inverse-sqrt and constant can
end with (`cooldown_fraction`): a linear ramp to zero over the last part of the run, which with a
constant lr is the warmup-stable-decay schedule of budgeted training (Hägele et al. 2024).
`lr_at(step)` of one argument (a recipe's own schedule) is accepted too and sees the step alone.

Each config builds its own object (`AdamWConfig.build(params)`, `CosineConfig.build(peak_lr,
max_steps)`), so a recipe adds an optimizer or a schedule by writing one frozen dataclass with the
same method and passing it to `fs2mini.train.main(..., optimizers={...})`; `build_optimizer` and
`build_lr_schedule` are the one place the trainer calls, and they check what they get.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from fs2mini.errors import UserError, expect, finite

# lr_at(step, time_fraction): step = 1, 2, ... (the update about to be made); time_fraction in [0, 1].
Schedule = Callable[[int, float], float]


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

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW with PyTorch's fused kernel where every parameter is a plain CPU or CUDA tensor, else foreach.

        Why fused: on CPU, foreach AdamW runs its element-wise operations tensor by tensor, several passes over
        each; the fused kernel makes one pass. Inside a bf16 training step of the 9.4 M-parameter `medium`
        model the update took 19-20 ms with foreach and 6-7 ms fused (2 threads, docs/results.md), ~3% of
        the step. Sharded (FSDP) parameters keep foreach, which PyTorch supports for them everywhere.
        A resumed run keeps this choice whatever its checkpoint was written with (`load_optimizer_state`)."""
        params = list(params)
        fused = bool(params) and all(not hasattr(p, "to_local") and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay,
                                 **({"fused": True} if fused else {"foreach": True}))


@dataclass(frozen=True)
class SGDConfig:
    """Plain SGD with momentum (a baseline, or for tiny experiments)."""

    lr: float = 0.1
    """Peak learning rate."""
    momentum: float = 0.9
    """Momentum factor."""
    weight_decay: float = 0.0
    """L2 penalty."""

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


# The CLI's `optimizer:NAME` choices; a recipe adds its own with `main(..., optimizers={...})`.
OPTIMIZERS = {"adamw": AdamWConfig(), "sgd": SGDConfig()}


@dataclass(frozen=True)
class InverseSqrtConfig:
    """Linear warmup, then decay ∝ 1/√step (the Transformer / fairseq / NLLB schedule)."""

    warmup_steps: int = 100
    """Steps of linear warmup from `init_lr` to the optimizer's lr."""
    init_lr: float = 1e-7
    """Learning rate at step 0."""
    cooldown_fraction: float = 0.0
    """Last share of the run (of its steps or its --trainer.max-time, whichever ends first) over which the lr
    falls linearly to zero; 0 = none, the lr decays with steps only and has no end to reach."""

    def build(self, peak_lr: float, max_steps: int) -> Schedule:
        warmup, init_lr, cooldown = self.warmup_steps, self.init_lr, self.cooldown_fraction

        def lr_at(step: int, time_fraction: float = 0.0) -> float:
            if step < warmup:
                return init_lr + (peak_lr - init_lr) * step / warmup
            return peak_lr * math.sqrt(max(warmup, 1) / step) * cooldown_scale(cooldown, step, max_steps, time_fraction)

        return lr_at


@dataclass(frozen=True)
class CosineConfig:
    """Linear warmup, then cosine decay to `final_lr_scale × lr` at the end of the run: its last step, or the end
    of `--trainer.max-time` if that comes first."""

    warmup_steps: int = 400
    """Steps of linear warmup from 0."""
    final_lr_scale: float = 0.01
    """Final learning rate as a fraction of the peak."""

    def build(self, peak_lr: float, max_steps: int) -> Schedule:
        warmup, final_lr = self.warmup_steps, peak_lr * self.final_lr_scale

        def lr_at(step: int, time_fraction: float = 0.0) -> float:
            if step < warmup:
                return peak_lr * step / warmup
            # The budget nearer its end decides; a time-bounded run reaches final_lr when its time is up.
            progress = min(1.0, max((step - warmup) / max(1, max_steps - warmup), time_fraction))
            return final_lr + (peak_lr - final_lr) * 0.5 * (1 + math.cos(math.pi * progress))

        return lr_at


@dataclass(frozen=True)
class ConstantConfig:
    """Linear warmup, then the optimizer's lr for the rest of the run."""

    warmup_steps: int = 0
    """Steps of linear warmup from 0."""
    cooldown_fraction: float = 0.0
    """Last share of the run (of its steps or its --trainer.max-time, whichever ends first) over which the lr
    falls linearly to zero: warmup-stable-decay; 0 = constant to the end."""

    def build(self, peak_lr: float, max_steps: int) -> Schedule:
        warmup, cooldown = self.warmup_steps, self.cooldown_fraction

        def lr_at(step: int, time_fraction: float = 0.0) -> float:
            if step < warmup:
                return peak_lr * step / warmup
            return peak_lr * cooldown_scale(cooldown, step, max_steps, time_fraction)

        return lr_at


def cooldown_scale(cooldown_fraction: float, step: int, max_steps: int, time_fraction: float) -> float:
    """1 until the last `cooldown_fraction` of the run, then falling linearly to 0 at its end.

    The end is whichever budget is nearer to running out, steps or time, as for cosine: a budgeted run
    (max_steps far away, --trainer.max-time set) cools down over its last minutes. Ending at zero rather
    than at a floor is what makes the short final phase worth as much as a full decay (Hägele et al. 2024)."""
    if cooldown_fraction <= 0:
        return 1.0
    progress = max(step / max(1, max_steps), time_fraction)
    return max(0.0, min(1.0, (1.0 - progress) / cooldown_fraction))


# The CLI's `lr-scheduler:NAME` choices; a recipe adds its own with `main(..., lr_schedulers={...})`.
LR_SCHEDULERS = {"inverse-sqrt": InverseSqrtConfig(), "cosine": CosineConfig(), "constant": ConstantConfig()}


def check_optimizer_config(cfg) -> None:
    """Settings every optimizer config must have: a positive peak `lr` and a `build(params)` method."""
    name = type(cfg).__qualname__
    if not callable(getattr(cfg, "build", None)) or not isinstance(getattr(cfg, "lr", None), (int, float)):
        raise UserError(f"optimizer config {name} needs an lr field and a build(params) method returning a "
                        "torch.optim.Optimizer")
    if cfg.lr <= 0:
        raise UserError(f"--optimizer.lr must be positive, got {cfg.lr}")
    expect("--optimizer.lr", cfg.lr, finite(cfg.lr), "a finite positive learning rate")
    betas = getattr(cfg, "betas", None)
    if betas is not None:
        for beta in betas:
            expect("--optimizer.betas", " ".join(map(str, betas)), finite(beta) and 0 <= beta < 1, "two numbers in [0, 1)")
    for name, flag in [("eps", "--optimizer.eps"), ("weight_decay", "--optimizer.weight-decay"),
                       ("momentum", "--optimizer.momentum")]:
        value = getattr(cfg, name, None)
        if value is not None:
            expect(flag, value, finite(value) and value >= 0, "a finite number >= 0")


def check_lr_scheduler_config(cfg) -> None:
    name = type(cfg).__qualname__
    if not callable(getattr(cfg, "build", None)):
        raise UserError(f"lr scheduler config {name} has no build(peak_lr, max_steps) method returning lr_at(step, time_fraction)")
    warmup = getattr(cfg, "warmup_steps", 0)
    if warmup < 0:
        raise UserError(f"--lr-scheduler.warmup-steps must be >= 0, got {warmup}")
    # A negative learning rate anywhere in the schedule would train by gradient ascent.
    for name, flag in [("init_lr", "--lr-scheduler.init-lr"), ("final_lr_scale", "--lr-scheduler.final-lr-scale")]:
        value = getattr(cfg, name, None)
        if value is not None:
            expect(flag, value, finite(value) and value >= 0, "a finite number >= 0")
    cooldown = getattr(cfg, "cooldown_fraction", None)
    if cooldown is not None:
        expect("--lr-scheduler.cooldown-fraction", cooldown, finite(cooldown) and 0 <= cooldown <= 1,
               "a share of the run between 0 and 1, e.g. 0.2 for its last fifth")


def build_optimizer(cfg, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """`cfg.build(params)` for AdamWConfig, SGDConfig or a recipe's optimizer config."""
    check_optimizer_config(cfg)
    optimizer = cfg.build(params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UserError(f"{type(cfg).__qualname__}.build returned {type(optimizer).__qualname__}; expected a torch.optim.Optimizer")
    return optimizer


def build_lr_schedule(cfg, peak_lr: float, max_steps: int) -> Schedule:
    """`lr_at(step, time_fraction)` from `cfg.build(peak_lr, max_steps)`; a built `lr_at(step)` of one parameter
    (a recipe's schedule that knows nothing of time) is wrapped to ignore the time fraction."""
    check_lr_scheduler_config(cfg)
    lr_at = cfg.build(peak_lr, max_steps)
    if not callable(lr_at):
        raise UserError(f"{type(cfg).__qualname__}.build returned {type(lr_at).__qualname__}; expected a function "
                        "lr_at(step) or lr_at(step, time_fraction)")
    if _positional_parameters(lr_at) == 1:
        return lambda step, time_fraction=0.0: lr_at(step)
    return lr_at


def _positional_parameters(function: Callable) -> int:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it the new way
        return 2
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
