"""Multi-process training on PyTorch's own engine: process group, DDP / FSDP2, reductions, state dicts.

Launched by `torchrun`, each process reads RANK / WORLD_SIZE / LOCAL_RANK from the environment,
joins a process group (NCCL on CUDA, Gloo on CPU) and trains on its own device. Without torchrun
everything here degrades to single-process no-ops, so the trainer has one code path.

Checkpoints always hold *full* (unsharded) state dicts keyed by parameter name, obtained through
`torch.distributed.checkpoint.state_dict`, so a checkpoint written by 1 process, by DDP or by FSDP2
loads in any of them, and in the translator.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from fs2mini.errors import UserError

DataParallel = Literal["ddp", "fsdp", "none"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process prints, logs metrics and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(requested_device: str) -> tuple[DistEnv, torch.device]:
    """Join the torchrun job if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistEnv(), pick_device(requested_device)
    env = DistEnv(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = requested_device in ("auto", "cuda") and torch.cuda.is_available()
    if requested_device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--trainer.device {requested_device}: CUDA is not available on this machine; use cpu or auto")
    if use_cuda:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return env, device


def pick_device(name: str, flag: str = "--trainer.device") -> torch.device:
    """A device flag's value (`flag` names it in errors) → a usable device; auto = CUDA when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{flag} {name!r} is not a device; expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{flag} {name}: CUDA is not available on this machine; use cpu or auto")
    return device


def shutdown(env: DistEnv) -> None:
    """Leave the process group while the interpreter is fully alive.

    The reference cycles are collected first: a finished DDP module can sit in one (seen: closures holding
    sets of modules, not fs2mini's), and that module holds the Gloo process group. Freed only at interpreter
    exit, the group's threads are torn down too late, and the process aborts ("terminate called without an
    active exception") after a run that succeeded.
    """
    if env.active and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.active:
        dist.barrier()


def wrap_model(model: nn.Module, mode: DataParallel, env: DistEnv, device: torch.device) -> nn.Module:
    """DDP replicates the model; FSDP2 shards parameters, gradients and optimizer state per layer."""
    if not env.active:
        return model
    match mode:
        case "ddp":
            # broadcast_buffers=False: the only buffer is the constant sinusoidal table. (Newer torch
            # renames the flag with different semantics at init; the old one still means what we want.)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                return nn.parallel.DistributedDataParallel(
                    model, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False
                )
        case "none":
            raise UserError(
                f"--trainer.data-parallel none is single-process, but torchrun started {env.world_size}; use ddp or fsdp"
            )
        case "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in [*model.encoder_layers, *model.decoder_layers]:
                fully_shard(layer)
            fully_shard(model)  # the root unit holds the shared embedding and the final norms
            return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module (DDP keeps it in `.module`; FSDP2 modifies the module in place)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on non-final micro-batches of an update."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def all_reduce_sum(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Element-wise sum over ranks (one collective for the whole list)."""
    if not env.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_max(value: int, env: DistEnv, device: torch.device) -> int:
    if not env.active:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def weights_finite(model: nn.Module, env: DistEnv, device: torch.device) -> bool:
    """Whether every weight is finite (on every rank: FSDP shards them), checked after each update."""
    with torch.no_grad():
        local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
        bad = int(not bool(torch.stack([t.abs().max() for t in local if t.numel()]).isfinite().all()))
    return not all_reduce_max(bad, env, device)


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unsharded model and optimizer state keyed by parameter name (a collective under FSDP)."""
    return get_model_state_dict(model, options=_FULL), get_optimizer_state_dict(model, optimizer, options=_FULL)


OPTIMIZER_KERNEL_SETTINGS = ("foreach", "fused")
"""Param-group settings that say how the optimizer runs, not where training stands: the optimizer as built
for this process decides them, whatever the checkpoint's groups say."""


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, optimizer_state: dict[str, Any]) -> None:
    """Load a full, name-keyed optimizer state into the optimizer of a (possibly wrapped) model.

    `load_state_dict` replaces every param-group setting with the saved one, `foreach` and `fused` included:
    a checkpoint written by foreach AdamW (before 2026-12-05) would turn a fused optimizer back to foreach,
    and under fp16 the loss scaler, which checks for a fused optimizer when it is built, then fails in
    `step`. The kernel settings of the optimizer as built are kept."""
    kernels = [{key: group[key] for key in OPTIMIZER_KERNEL_SETTINGS if key in group} for group in optimizer.param_groups]
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))
    for group, kernel in zip(optimizer.param_groups, kernels):
        group.update(kernel)
