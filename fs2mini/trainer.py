"""The training loop in three parts: components built from the config, one update (`train_step`), a short loop.

- `build_components` (fs2mini/components.py) makes every ingredient from the config;
- `train_step` makes one update: set the learning rate → `task.compute_loss` on each micro-batch
  and backpropagate → divide gradients by the update's total target tokens → clip → step. It is the
  one place to read a step, and the benchmarks time this same function;
- `TrainState` (fs2mini/checkpoint.py) is where the run stands (step, epoch, position in the epoch, best
  validation value, counters, RNG states), saved in every checkpoint and restored from it;
- `train` runs the loop: next micro-batches → `train_step` → log → validate/checkpoint at their
  intervals. A run directory that already has checkpoints is resumed from the newest readable one,
  so rerunning the same command continues a stopped run, bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fs2mini.checkpoint import (TrainState, best_checkpoint_path, checkpoint_path, keep_resume_point, prune_checkpoints,
                                write_checkpoint)
from fs2mini.components import Components, build_components, newest_checkpoint, run_tokenizer
from fs2mini.config import TrainConfig, TrainerConfig, as_started, check_config, config_to_json, refuse_training_on_import
from fs2mini.data import RunDirections, Seq2SeqBatch, epoch_batches
from fs2mini.distributed import (DistEnv, all_reduce_max, all_reduce_sum, barrier, full_state_dicts, gradient_sync, init_distributed,
                                 shutdown, weights_finite)
from fs2mini.dropout import set_dropout_enabled
from fs2mini.errors import UserError, finite
from fs2mini.host_memory import keep_freed_memory
from fs2mini.metrics import ProgressDisplay, RunClock, TokenRate
from fs2mini.precision import autocast_for
from fs2mini.rundir import BEST_CHECKPOINT, CHECKPOINT_DIR, RunDirectory, check_writable, write_run_files
from fs2mini.stopping import catch_stop_signals, restore_signal_handlers, save_and_stop
from fs2mini.tokenizer import tokenizer_record
from fs2mini.trackers import RunLog
from fs2mini.validation import Validator

LossFunction = Callable[[nn.Module, Seq2SeqBatch], tuple[Tensor, int]]
"""(model, batch) -> (loss summed over the batch's target tokens, their number): `Task.compute_loss`."""


@dataclass(frozen=True)
class StepResult:
    """What one update did, summed over every micro-batch (and every rank)."""

    loss: float  # per target token
    num_tokens: int
    grad_norm: float  # before clipping
    applied: bool  # False: the loss or gradient was not finite and the update was skipped
    overflowed: bool = False
    """Skipped by fp16's loss scaler (finite loss, gradients overflowed at its scale, which it halves):
    expected now and then, most in the first steps, so not a bad step while the scale is still >= 1."""


def train_step(model: nn.Module, compute_loss: LossFunction, optimizer: torch.optim.Optimizer,
               micro_batches: Sequence[Seq2SeqBatch], lr: float, *, max_grad_norm: float, device: torch.device,
               autocast_dtype: torch.dtype | None, grad_scaler: torch.amp.GradScaler | None = None,
               env: DistEnv = DistEnv()) -> StepResult:
    """One optimizer update over `micro_batches` (gradient accumulation), exact per target token.

    With `grad_scaler` (fp16) the loss is scaled up before backward, so that small gradients survive
    fp16, and the gradients are scaled back down before clipping; an update whose scaled gradients
    overflowed is skipped and the scale lowered."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device)
    num_tokens = 0
    for index, batch in enumerate(micro_batches):
        with gradient_sync(model, index == len(micro_batches) - 1), autocast_for(device, autocast_dtype):
            loss, n = compute_loss(model, batch.to(device))
            (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()
        loss_sum += loss.detach()
        num_tokens += n
    loss_all, tokens_all = all_reduce_sum([float(loss_sum), num_tokens], env, device)
    # Summed losses → gradient of the mean over every target token of the update, on all ranks.
    # (DDP and FSDP average gradients over ranks, hence the world size.)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(tokens_all / env.world_size)
    if grad_scaler is not None:
        grad_scaler.unscale_(optimizer)  # clip (and log) the true gradients; inf/nan if they overflowed
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    loss_per_token = loss_all / tokens_all
    applied = math.isfinite(loss_per_token) and math.isfinite(grad_norm)
    if applied and grad_scaler is not None:
        grad_scaler.step(optimizer)
    elif applied:
        optimizer.step()
    overflowed = False
    if grad_scaler is not None:
        # Below a scale of 1, scaling no longer explains the overflow: the gradients themselves diverged.
        overflowed = not applied and math.isfinite(loss_per_token) and grad_scaler.get_scale() >= 1
        grad_scaler.update()  # halves the scale after an overflow, doubles it after 2000 clean steps
    return StepResult(loss_per_token, int(tokens_all), grad_norm, applied, overflowed)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the run described by `cfg`; returns the run directory.

    Under `torchrun` this runs in every process; see fs2mini/distributed.py. Never while a recipe is imported to
    rebuild its classes (`refuse_training_on_import`: a recipe that calls this, not `fs2mini.train.main`, at import).
    The process keeps the memory its steps freed (`keep_freed_memory`) after this returns, until it exits.
    """
    refuse_training_on_import()
    cfg = as_started(cfg)
    check_config(cfg)
    keep_freed_memory()  # each step reuses the memory the last one freed, instead of faulting it in again
    env, device = init_distributed(cfg.trainer.device)
    try:
        directions = check_config(cfg, env)
        run_dir = _train(cfg, directions, env, device)
        barrier(env)  # leave together: a rank tearing down Gloo while a peer still talks to it aborts
        return run_dir
    except RuntimeError as err:
        # Another rank died (that rank prints its own error): say so in one line, not a traceback.
        if not (env.active and (isinstance(err, torch.distributed.DistError) or "closed by peer" in str(err))):
            raise
        raise UserError(f"rank {env.rank}: another process of the job failed or stopped, so this one stops too") from None
    finally:
        shutdown(env)


def _train(cfg: TrainConfig, directions: RunDirections, env: DistEnv, device: torch.device) -> Path:
    check_writable(cfg.run_dir)
    # Rank 0 holds the directory's lock for the whole run; a failure before the first write leaves it as it was.
    with RunDirectory(cfg.run_dir) if env.is_main else contextlib.nullcontext():
        return _train_locked(cfg, directions, env, device)


def _train_locked(cfg: TrainConfig, directions: RunDirections, env: DistEnv, device: torch.device) -> Path:
    tc, run_dir = cfg.trainer, cfg.run_dir
    checkpoint = newest_checkpoint(cfg, env)
    init = None  # a new run started from another model's weights (--init); a resume continues from its own
    if checkpoint is None and cfg.init is not None:
        from fs2mini.initialize import read_init  # only a run started from other weights reads them: not on the training path
        init = read_init(cfg.init, directions.languages, cfg.lang_map, cfg.add_languages, config_to_json(cfg)["model"])
    tokenizer = init.tokenizer if init is not None else run_tokenizer(cfg, directions, checkpoint, env)
    parts = build_components(cfg, directions, tokenizer, device, env, checkpoint, init.weights if init is not None else None)
    init_message = init.message() if init is not None else None
    del init  # its weights are the model's now (or were copied into it): not held twice for the whole run
    state = TrainState.resumed(checkpoint, device) if checkpoint is not None else TrainState()
    if env.rank > 0:
        torch.manual_seed(tc.seed + 1000 * env.rank + state.step)  # different dropout masks on each rank
    if env.is_main:  # only now: a refused resume or a failed build leaves the directory as it was
        write_run_files(cfg, tokenizer)
        if checkpoint is not None:  # resumed from best.pt alone: it becomes the step checkpoint
            keep_resume_point(run_dir / CHECKPOINT_DIR, state.step)
    barrier(env)
    display = ProgressDisplay(tc.max_steps, state.step, tc.progress if env.is_main else "off", tc.log_every,
                              budget_s=tc.max_seconds, elapsed_s=state.elapsed_s)
    display.message(
        f"run {run_dir} | device {device} | {parts.precision.reason} | {parts.num_parameters:,} parameters | "
        f"vocab {tokenizer.vocab_info.size}"
        + (f" | {env.world_size} processes ({tc.data_parallel})" if env.active else "")
        + (f" | resumed at step {state.step}" if checkpoint is not None else "")
        + (f" | LoRA rank {cfg.lora.rank}: {sum(p.numel() for p in parts.model.parameters() if p.requires_grad):,} trainable"
           if cfg.lora.rank else "")
    )
    if init_message is not None:
        display.message(init_message)
    metrics = RunLog(cfg, state.step, state.wandb_run_id) if env.is_main else None
    if metrics is not None:
        state.wandb_run_id = metrics.wandb_run_id
    stop_requests: list[int] = []
    previous_handlers = catch_stop_signals(stop_requests, env)
    try:
        _loop(cfg, parts, state, Validator(cfg, parts, env, device, metrics, display), metrics, display, stop_requests,
              env, device)
        return run_dir
    finally:
        restore_signal_handlers(previous_handlers)
        display.close()
        if metrics is not None:
            metrics.close()


def _loop(cfg: TrainConfig, parts: Components, state: TrainState, validate_now: Validator, metrics: RunLog | None,
          display: ProgressDisplay, stop_requests: list[int], env: DistEnv, device: torch.device) -> None:
    """Updates until max_steps (or max_epochs, max_time, patience, a stop signal), validating and saving at their intervals."""
    tc = cfg.trainer
    if _already_finished(state, tc, display):
        return
    saver = Checkpointer(cfg, parts, state, device, env)
    clock = RunClock(state)
    batches = epoch_batches(parts.train_batches, state.epoch, state.position)
    parts.model.train()
    dropout_on = None  # switched at the first update and when an epoch starts (--trainer.dropout-from-epoch)
    if state.step == 0:
        validate_now(state.step, state.elapsed_s)  # the untrained baseline, so the curve starts where training does
    speed = TokenRate()
    budget_elapsed_s = state.elapsed_s  # the same on every rank: restored from one checkpoint, then agreed each step
    while state.step < tc.max_steps:
        batches, micro_batches = _next_update(parts, state, tc, batches, display, env, device)
        if micro_batches is None:  # --trainer.max-epochs reached
            break
        if tc.dropout_from_epoch and dropout_on != (on := state.epoch >= tc.dropout_from_epoch):
            dropout_on = _switch_dropout(parts.model, on, tc, display)
        state.position = micro_batches[-1][0]
        state.step += 1
        lr = parts.lr_at(state.step, min(1.0, budget_elapsed_s / tc.max_seconds) if tc.max_seconds else 0.0)
        if not (finite(lr) and lr >= 0):
            raise UserError(f"the learning-rate schedule gave {lr} at step {state.step}; expected a finite number >= 0 "
                            "(check --optimizer.lr and the --lr-scheduler settings)")
        result = train_step(parts.model, parts.task.compute_loss, parts.optimizer, [b for _, b in micro_batches], lr,
                            max_grad_norm=tc.max_grad_norm, device=device, autocast_dtype=parts.precision.autocast_dtype,
                            grad_scaler=parts.grad_scaler, env=env)
        _count_bad_step(state, result, tc.max_bad_steps)
        if result.applied and not weights_finite(parts.model, env, device):
            raise UserError(f"stopping at step {state.step}: the update made the weights non-finite (lr {lr:.3g}); "
                            f"nothing was saved from this step, checkpoints up to step {saver.saved_step} are intact "
                            "(try a lower --optimizer.lr)")
        clock.tick()
        tokens_per_s = speed.add(result.num_tokens, result.loss)
        display.update(state.step, speed.mean_loss, lr, tokens_per_s, state.elapsed_s)
        if state.step % tc.log_every == 0:
            if metrics is not None:
                metrics.write({"step": state.step, "split": "train", "loss": speed.mean_loss, "tokens": speed.tokens, "lr": lr,
                               "grad_norm": result.grad_norm, "tokens_per_s": tokens_per_s, "epoch": state.epoch,
                               "skipped_steps": state.skipped_steps, "elapsed_s": state.elapsed_s,
                               **({"loss_scale": parts.grad_scaler.get_scale()} if parts.grad_scaler is not None else {})})
            speed = TokenRate()
        # Every rank must agree to stop (and on the next learning rate): the slowest clock decides for all.
        budget_elapsed_s = all_reduce_max(round(state.elapsed_s * 1000), env, device) / 1000 if tc.max_seconds else 0.0
        out_of_time = tc.max_seconds is not None and budget_elapsed_s >= tc.max_seconds
        last_step = state.step == tc.max_steps or out_of_time
        patience_ran_out = False
        if state.step % tc.validate_every == 0 or last_step:
            patience_ran_out = saver.save_best(validate_now(state.step, state.elapsed_s))
        if state.step % tc.checkpoint_every == 0 or last_step or patience_ran_out:
            clock.tick()
            saver.save()
        if out_of_time:
            display.message(f"reached --trainer.max-time {tc.max_time} ({state.elapsed_s:.0f} s of training)")
            break
        if patience_ran_out:
            display.message(f"early stop: {tc.patience} validations without a better {tc.best_metric} "
                            f"(best {state.best_value:.4g})")
            break
        if all_reduce_sum([len(stop_requests)], env, device)[0]:
            clock.tick()
            save_and_stop(saver, stop_requests, cfg.run_dir)
    if saver.saved_step != state.step:  # stopped early by --trainer.max-epochs
        saver.save_best(validate_now(state.step, state.elapsed_s))
        clock.tick()
        saver.save()
    display.message(f"done: {state.step} steps, checkpoints in {cfg.run_dir / CHECKPOINT_DIR}")


def _switch_dropout(model: nn.Module, on: bool, tc: TrainerConfig, display: ProgressDisplay) -> bool:
    """Dropout on or off by `--trainer.dropout-from-epoch`; returns `on`. The caller derives `on` from the epoch
    alone, so a resumed run switches where the uninterrupted one did."""
    if set_dropout_enabled(model, on) == 0 and not on:  # said once, where the flag would have acted
        display.message(f"note: --trainer.dropout-from-epoch {tc.dropout_from_epoch} has no dropout layers to switch in "
                        "this model (fs2mini.dropout.Dropout or nn.Dropout); its dropout stays as the model has it")
    return on


def _already_finished(state: TrainState, tc: TrainerConfig, display: ProgressDisplay) -> bool:
    """A resumed run whose time budget or patience was already used up has nothing left to do."""
    if tc.max_seconds is not None and state.elapsed_s >= tc.max_seconds:
        display.message(f"this run already used its --trainer.max-time {tc.max_time}; nothing to do")
        return True
    if tc.patience is not None and state.patience_count >= tc.patience:
        display.message(f"this run already stopped early (--trainer.patience {tc.patience}); nothing to do")
        return True
    return False


def _next_update(parts: Components, state: TrainState, tc: TrainerConfig, batches: Iterator[tuple[int, Seq2SeqBatch]],
                 display: ProgressDisplay, env: DistEnv, device: torch.device
                 ) -> tuple[Iterator[tuple[int, Seq2SeqBatch]], list[tuple[int, Seq2SeqBatch]] | None]:
    """The next update's micro-batches (with their positions in the epoch), starting the next epoch when
    this one is used up; None for them when that reaches --trainer.max-epochs."""
    while True:
        micro_batches = list(itertools.islice(batches, tc.grad_accum_steps))
        # Every rank must make the same updates: the epoch ends for all as soon as one rank cannot
        # fill a whole update (uneven shards; its leftover batches are reshuffled into later epochs).
        if not all_reduce_max(int(len(micro_batches) < tc.grad_accum_steps), env, device):
            return batches, micro_batches
        if state.position == 0:
            raise UserError(
                f"the training split gives fewer than --trainer.grad-accum-steps {tc.grad_accum_steps} batches "
                f"per process (skipped: {parts.train_batches.skipped.summary() or 'nothing'})"
            )
        state.epoch, state.position = state.epoch + 1, 0
        if tc.max_epochs is not None and state.epoch >= tc.max_epochs:
            display.message(f"reached --trainer.max-epochs {tc.max_epochs}")
            return batches, None
        batches = epoch_batches(parts.train_batches, state.epoch, 0)


class Checkpointer:
    """Step checkpoints, best.pt, the N best checkpoints and the patience counter of one run."""

    def __init__(self, cfg: TrainConfig, parts: Components, state: TrainState, device: torch.device, env: DistEnv) -> None:
        self.cfg, self.parts, self.state, self.device, self.env = cfg, parts, state, device, env
        self.directory = cfg.run_dir / CHECKPOINT_DIR
        self.saved_step = state.step
        """The step of the newest step checkpoint (a stop saves only when it is older than the current step)."""

    def save(self, path: Path | None = None) -> None:
        save_checkpoint(self.cfg, self.parts, self.state, self.device, self.env, path)
        if path is None:
            self.saved_step = self.state.step

    def save_best(self, result: dict[str, float]) -> bool:
        """Update best.pt, the N best checkpoints and the patience counter; True when patience ran out."""
        tc, state = self.cfg.trainer, self.state
        value = result[tc.best_metric]
        better = math.isfinite(value) and state.improves(value, tc.best_metric)
        state.patience_count = 0 if better else state.patience_count + 1
        if better:
            state.best_value = value
        dropped = _rank_best(state, value, tc.best_metric, tc.keep_best_checkpoints) if math.isfinite(value) else [state.step]
        if better:
            self.save(self.directory / BEST_CHECKPOINT)
        if tc.keep_best_checkpoints and state.step not in dropped:
            self.save(best_checkpoint_path(self.directory, state.step))
        for step in dropped if self.env.is_main else []:
            best_checkpoint_path(self.directory, step).unlink(missing_ok=True)
        return tc.patience is not None and state.patience_count >= tc.patience


def _rank_best(state: TrainState, value: float, metric: str, keep: int) -> list[int]:
    """Put this step's `value` among `state.best_checkpoints` (the `keep` best, best first; the earlier
    of equal values first); returns the steps that fell out (possibly this one)."""
    entries = sorted([*state.best_checkpoints, [value, state.step]], key=lambda e: e[0] if metric == "loss" else -e[0])
    state.best_checkpoints = entries[:keep]
    return [int(step) for _, step in entries[keep:]]


def _count_bad_step(state: TrainState, result: StepResult, max_bad_steps: int) -> None:
    if result.applied:
        state.bad_steps = 0
        return
    state.skipped_steps += 1
    if result.overflowed:  # the fp16 loss scaler finding its scale: by design, not a sign of divergence
        return
    state.bad_steps += 1
    if state.bad_steps >= max_bad_steps:
        raise UserError(
            f"stopping at step {state.step}: {state.bad_steps} consecutive updates had a non-finite loss or gradient "
            "(try a lower --optimizer.lr); checkpoints are intact"
        )


def save_checkpoint(cfg: TrainConfig, parts: Components, state: TrainState, device: torch.device, env: DistEnv,
                    path: Path | None = None) -> None:
    """Gather full state dicts (a collective under FSDP) and let the main process write them.

    Without `path` this is the step checkpoint (older ones are pruned); `best.pt` is never pruned.
    """
    model_state, optimizer_state = full_state_dicts(parts.model, parts.optimizer)
    if not env.is_main:
        return
    lora = None
    if cfg.lora.rank:  # frozen weights under their plain names, adapters apart
        from fs2mini.adapters import adapter_state, split_adapters

        model_state, adapters = split_adapters(model_state)
        lora = adapter_state(adapters, cfg.lora)
    checkpoint_dir = cfg.run_dir / CHECKPOINT_DIR
    write_checkpoint(path if path is not None else checkpoint_path(checkpoint_dir, state.step), model_state,
                     config=config_to_json(cfg), tokenizer=tokenizer_record(parts.tokenizer), step=state.step,
                     train_state=state.state_dict(device), optimizer=optimizer_state, lora=lora,
                     grad_scaler=parts.grad_scaler.state_dict() if parts.grad_scaler is not None else None)
    if path is None:
        prune_checkpoints(checkpoint_dir, cfg.trainer.keep_last_checkpoints)
