"""The training loop, written out by hand: one function, one update per iteration, top to bottom.

`train(cfg)` builds every component from its config, then repeats: set the learning rate → run
`task.compute_loss` on each micro-batch and backpropagate → divide gradients by the total number
of target tokens → clip → step → log → validate/checkpoint at their intervals. A run directory that
already has checkpoints is resumed from the newest readable one (model, optimizer, step, epoch,
position inside the epoch and RNG states), so rerunning the same command continues a stopped run.
"""

from __future__ import annotations

import itertools
import math
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from fs2mini.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_partial_writes,
    save_atomically,
)
from fs2mini.config import TrainConfig, TrainerConfig, config_to_json, incompatible_fields, load_config, save_config
from fs2mini.corpus import corpus_languages, describe_corpus, read_pairs, training_sentences
from fs2mini.data import Seq2SeqBatch, Seq2SeqBatches, check_data_config
from fs2mini.distributed import (
    DistEnv,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    full_state_dicts,
    gradient_sync,
    init_distributed,
    load_optimizer_state,
    shutdown,
    unwrap,
    wrap_model,
)
from fs2mini.errors import RunStopped, UserError
from fs2mini.evaluate import translate_and_score
from fs2mini.generation import GenerationConfig
from fs2mini.metrics import MetricsLog, ProgressDisplay
from fs2mini.pipeline import Skipped
from fs2mini.model import build_model, check_model_config
from fs2mini.optim import build_lr_schedule, build_optimizer, check_lr_scheduler_config, check_optimizer_config
from fs2mini.task import Seq2Seq, TaskConfig, build_task, check_task_config
from fs2mini.tokenizer import Tokenizer, load_or_train_tokenizer
from fs2mini.translate import Translator
from fs2mini.validation import autocast_for, validate

TaskBuilder = Callable[[TaskConfig, int], Seq2Seq]


def check_trainer_config(cfg: TrainerConfig) -> None:
    for flag, value in [
        ("--trainer.max-steps", cfg.max_steps),
        ("--trainer.grad-accum-steps", cfg.grad_accum_steps),
        ("--trainer.validate-every", cfg.validate_every),
        ("--trainer.checkpoint-every", cfg.checkpoint_every),
        ("--trainer.keep-last-checkpoints", cfg.keep_last_checkpoints),
        ("--trainer.log-every", cfg.log_every),
        ("--trainer.max-bad-steps", cfg.max_bad_steps),
        ("--trainer.valid-beam-size", cfg.valid_beam_size),
    ]:
        if value <= 0:
            raise UserError(f"{flag} must be a positive integer, got {value}")
    if cfg.max_epochs is not None and cfg.max_epochs <= 0:
        raise UserError(f"--trainer.max-epochs must be a positive integer, got {cfg.max_epochs}")
    if cfg.max_grad_norm < 0:
        raise UserError(f"--trainer.max-grad-norm must be >= 0, got {cfg.max_grad_norm}")
    if cfg.valid_translate_sentences < 0:
        raise UserError(f"--trainer.valid-translate-sentences must be >= 0, got {cfg.valid_translate_sentences}")
    if cfg.best_metric == "bleu" and cfg.valid_translate_sentences == 0:
        raise UserError("--trainer.best-metric bleu needs --trainer.valid-translate-sentences > 0")


def check_config(cfg: TrainConfig) -> None:
    """Reject every bad setting before any slow work (tokenizer training, data reading)."""
    corpus_languages(cfg.data.corpus)
    check_data_config(cfg.data)
    check_model_config(cfg.model)
    check_task_config(cfg.task)
    check_optimizer_config(cfg.optimizer)
    check_lr_scheduler_config(cfg.lr_scheduler)
    check_trainer_config(cfg.trainer)


def build_tokenizer(cfg: TrainConfig) -> Tokenizer:
    """The tokenizer for `cfg`'s corpus: from the cache, or trained on the training split."""
    langs = corpus_languages(cfg.data.corpus)
    skipped = Skipped(cfg.data.strict)
    sentences = training_sentences(cfg.data.corpus, skipped)
    if not sentences:
        raise UserError(
            f"{describe_corpus(cfg.data.corpus)} has no training sentence pairs "
            f"({'skipped: ' + skipped.summary() if skipped else 'it is empty'})"
        )
    return load_or_train_tokenizer(cfg.tokenizer, sentences, langs)


def epoch_batches(batches: Seq2SeqBatches, epoch: int, skip: int) -> Iterator[tuple[int, Seq2SeqBatch]]:
    """(batches consumed so far in the epoch, batch) for one epoch, after skipping `skip` batches."""
    for position, batch in enumerate(batches.iter_epoch(epoch), start=1):
        if position > skip:
            yield position, batch


def _prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory (main process only) and clear leftovers of a killed checkpoint write."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--output-dir {run_dir} is not writable: {err.strerror}") from None
    remove_partial_writes(run_dir / "checkpoints")


def _newest_checkpoint(cfg: TrainConfig, env: DistEnv) -> dict[str, Any] | None:
    """The newest readable checkpoint of the run directory, if it is resumed (checked against `cfg`)."""
    run_dir = cfg.run_dir
    checkpoint = None
    existing = list_checkpoints(run_dir / "checkpoints")
    for path in reversed(existing):
        try:
            checkpoint = load_checkpoint(path)
            break
        except UserError as err:
            if env.is_main:
                print(f"warning: {err}; trying the previous checkpoint", file=sys.stderr)
    if existing and checkpoint is None:
        raise UserError(
            f"no readable checkpoint in {run_dir / 'checkpoints'} ({len(existing)} corrupt); "
            "move them away to start this run over, or use another --output-dir"
        )
    if checkpoint is not None:
        previous = load_config(run_dir / "config.json")
        differing = incompatible_fields(previous, cfg)
        if differing:
            raise UserError(
                f"cannot resume {run_dir}: the checkpoint was trained with different {', '.join(differing)}; "
                "use another --output-dir or the original settings"
            )
    return checkpoint


def train(cfg: TrainConfig, make_task: TaskBuilder = build_task) -> Path:
    """Train (or resume) the run described by `cfg`; returns the run directory.

    Under `torchrun` this runs in every process; see fs2mini/distributed.py.
    """
    check_config(cfg)
    env, device = init_distributed(cfg.trainer.device)
    try:
        if cfg.trainer.best_metric == "bleu" and _sharded(cfg.trainer, env):
            raise UserError("--trainer.best-metric bleu is not available with --trainer.data-parallel fsdp; use loss")
        run_dir = _train(cfg, make_task, env, device)
        barrier(env)  # leave together: a rank tearing down Gloo while a peer still talks to it aborts
        return run_dir
    except RuntimeError as err:
        # Another rank died (that rank prints its own error): say so in one line, not a traceback.
        if not (env.active and (isinstance(err, torch.distributed.DistError) or "closed by peer" in str(err))):
            raise
        raise UserError(f"rank {env.rank}: another process of the job failed or stopped, so this one stops too") from None
    finally:
        shutdown(env)


def _sharded(tc: TrainerConfig, env: DistEnv) -> bool:
    """FSDP shards the parameters, so no rank has whole weights to translate with during validation."""
    return env.active and tc.data_parallel == "fsdp"


def _train(cfg: TrainConfig, make_task: TaskBuilder, env: DistEnv, device: torch.device) -> Path:
    tc = cfg.trainer
    run_dir = cfg.run_dir
    if env.is_main:
        _prepare_run_dir(run_dir)
    barrier(env)
    checkpoint = _newest_checkpoint(cfg, env)
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    random.seed(tc.seed)

    langs = corpus_languages(cfg.data.corpus)
    tokenizer_path = run_dir / "tokenizer.model"
    if env.is_main and (checkpoint is None or not tokenizer_path.exists()):
        shutil.copyfile(build_tokenizer(cfg).model_path, tokenizer_path)
    barrier(env)
    tokenizer = Tokenizer(tokenizer_path, langs)
    shard = {"rank": env.rank, "world_size": env.world_size}
    train_batches = Seq2SeqBatches(cfg.data, "train", tokenizer, seed=tc.seed, shuffle=True, **shard)
    valid_batches = Seq2SeqBatches(cfg.data, "valid", tokenizer, seed=tc.seed, shuffle=False, **shard)
    model = build_model(cfg.model, tokenizer.vocab_info).to(device)
    num_parameters = model.num_parameters()

    step, epoch, position, best_value = 0, 0, 0, None
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as err:
            first_problem = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise UserError(f"the checkpoint in {run_dir / 'checkpoints'} does not fit the configured model: {first_problem}") from None
        step, epoch, position = checkpoint["step"], checkpoint["epoch"], checkpoint["position"]
        best_value = checkpoint["best_value"]
    if tc.compile:
        model.compile(dynamic=True)  # in place: parameter names and checkpoints stay the same
    model = wrap_model(model, tc.data_parallel, env, device)
    task = make_task(cfg.task, tokenizer.vocab_info.pad_idx)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    lr_at = build_lr_schedule(cfg.lr_scheduler, cfg.optimizer.lr, tc.max_steps)
    if checkpoint is not None:
        load_optimizer_state(model, optimizer, checkpoint["optimizer"])
        random.setstate(checkpoint["rng"]["python"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if device.type == "cuda" and checkpoint["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
    if env.rank > 0:
        torch.manual_seed(tc.seed + 1000 * env.rank + step)  # different dropout masks on each rank

    if env.is_main:
        save_config(cfg, run_dir / "config.json")  # only now: a refused resume leaves the old one intact
    display = ProgressDisplay(tc.max_steps, step, tc.progress if env.is_main else "off", tc.log_every)
    display.message(
        f"run {run_dir} | device {device} | {num_parameters:,} parameters | vocab {tokenizer.vocab_info.size}"
        + (f" | {env.world_size} processes ({tc.data_parallel})" if env.active else "")
        + (f" | resumed at step {step}" if checkpoint is not None else "")
    )
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=step) if env.is_main else None

    def log(record: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.write(record)

    translate_in_validation = tc.valid_translate_sentences > 0 and not _sharded(tc, env)
    if translate_in_validation and env.is_main:  # only rank 0 translates
        valid_pairs = list(itertools.islice(read_pairs(cfg.data.corpus, "valid", Skipped()), tc.valid_translate_sentences))
        translator = Translator(unwrap(model), tokenizer, *langs)
        generation = GenerationConfig(beam_size=tc.valid_beam_size)

    def validate_and_log() -> dict[str, float]:
        result = validate(model, task, valid_batches, device, tc.autocast, env)
        if translate_in_validation:
            # Rank 0 translates (the unwrapped replica, no collectives); the scores reach every rank.
            scores = translate_and_score(translator, valid_pairs, generation).scores if env.is_main else None
            bleu, chrf = all_reduce_sum([scores.bleu, scores.chrf] if scores else [0.0, 0.0], env, device)
            result.update(bleu=bleu, chrf=chrf)
        log({"step": step, "split": "valid", **result})
        display.message(
            f"valid step {step}: loss {result['loss']:.3f}  nll {result['nll']:.3f}  ppl {result['ppl']:.2f}"
            + (f"  BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}" if "bleu" in result else "")
        )
        return result

    def save(path: Path | None = None) -> None:
        _save(run_dir, cfg, model, optimizer, step, epoch, position, best_value, device, env, path)

    def save_if_best(result: dict[str, float]) -> None:
        nonlocal best_value
        value = result[tc.best_metric]
        if best_value is None or (value < best_value if tc.best_metric == "loss" else value > best_value):
            best_value = value
            save(run_dir / "checkpoints" / "best.pt")

    batches = epoch_batches(train_batches, epoch, position)
    model.train()
    bad_steps = skipped_steps = 0
    saved_step = step
    stop_requests: list[int] = []
    previous_handlers = _catch_stop_signals(stop_requests, env)
    try:
        if step == 0:
            validate_and_log()  # the untrained baseline, so the curve starts where training does
        window_tokens, window_start = 0, time.perf_counter()
        while step < tc.max_steps:
            micro_batches = list(itertools.islice(batches, tc.grad_accum_steps))
            # Every rank must make the same updates: the epoch ends for all as soon as one rank cannot
            # fill a whole update (uneven shards; its leftover batches are reshuffled into later epochs).
            if all_reduce_max(int(len(micro_batches) < tc.grad_accum_steps), env, device):
                if position == 0:
                    raise UserError(
                        f"the training split gives fewer than --trainer.grad-accum-steps {tc.grad_accum_steps} batches "
                        f"per process (skipped: {train_batches.skipped.summary() or 'nothing'})"
                    )
                epoch, position = epoch + 1, 0
                if tc.max_epochs is not None and epoch >= tc.max_epochs:
                    display.message(f"reached --trainer.max-epochs {tc.max_epochs}")
                    break
                batches = epoch_batches(train_batches, epoch, 0)
                continue
            position = micro_batches[-1][0]
            step += 1

            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            num_tokens = 0
            for index, (_, batch) in enumerate(micro_batches):
                last_micro_batch = index == len(micro_batches) - 1
                with gradient_sync(model, last_micro_batch), autocast_for(device, tc.autocast):
                    loss, n = task.compute_loss(model, batch.to(device))
                    loss.backward()
                loss_sum += loss.detach()
                num_tokens += n
            loss_sum_all, tokens_all, stop_all = all_reduce_sum([float(loss_sum), num_tokens, len(stop_requests)], env, device)
            # Summed losses → gradient of the mean over every target token of the update, on all ranks.
            # (DDP and FSDP average gradients over ranks, hence the world size.)
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(tokens_all / env.world_size)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm if tc.max_grad_norm > 0 else math.inf)
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            loss_per_token = loss_sum_all / tokens_all
            if math.isfinite(loss_per_token) and math.isfinite(grad_norm):
                optimizer.step()
                bad_steps = 0
            else:
                bad_steps += 1
                skipped_steps += 1
                if bad_steps >= tc.max_bad_steps:
                    raise UserError(
                        f"stopping at step {step}: {bad_steps} consecutive updates had a non-finite loss or gradient "
                        "(try a lower --optimizer.lr); checkpoints are intact"
                    )

            window_tokens += tokens_all
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens / elapsed if elapsed > 0 else 0.0
            display.update(step, loss_per_token, lr, tokens_per_s)
            if step % tc.log_every == 0:
                log({"step": step, "split": "train", "loss": loss_per_token, "lr": lr, "grad_norm": grad_norm,
                     "tokens_per_s": tokens_per_s, "epoch": epoch, "skipped_steps": skipped_steps})
                window_tokens, window_start = 0, time.perf_counter()
            last_step = step == tc.max_steps
            if step % tc.validate_every == 0 or last_step:
                save_if_best(validate_and_log())
            if step % tc.checkpoint_every == 0 or last_step:
                save()
                saved_step = step
            if stop_all:
                if saved_step != step:
                    save()
                signum = stop_requests[0] if stop_requests else signal.SIGTERM
                raise RunStopped(
                    f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved in "
                    f"{run_dir / 'checkpoints'}. Run the same command again to resume.",
                    128 + signum,
                )
        if saved_step != step:  # stopped early by --trainer.max-epochs
            save_if_best(validate_and_log())
            save()
        display.message(f"done: {step} steps, checkpoints in {run_dir / 'checkpoints'}")
        return run_dir
    finally:
        _restore_signal_handlers(previous_handlers)
        display.close()
        if metrics is not None:
            metrics.close()


def _catch_stop_signals(requests: list[int], env: DistEnv) -> dict[int, Any]:
    """SIGINT/SIGTERM finish the current step, save and stop; a second signal interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def request_stop(signum: int, frame: Any) -> None:
        if requests:
            raise KeyboardInterrupt
        requests.append(signum)
        if env.is_main:
            print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint", file=sys.stderr, flush=True)

    return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _save(run_dir: Path, cfg: TrainConfig, model, optimizer, step: int, epoch: int, position: int,
          best_value: float | None, device: torch.device, env: DistEnv, path: Path | None = None) -> None:
    """Gather full state dicts (a collective under FSDP) and let the main process write them.

    Without `path` this is the step checkpoint (older ones are pruned); `best.pt` is never pruned.
    """
    model_state, optimizer_state = full_state_dicts(model, optimizer)
    if not env.is_main:
        return
    state = {
        "model": model_state,
        "optimizer": optimizer_state,
        "step": step,
        "epoch": epoch,
        "position": position,
        "best_value": best_value,
        "config": config_to_json(cfg),
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
    }
    checkpoint_dir = run_dir / "checkpoints"
    if path is not None:
        save_atomically(state, path)
        return
    save_atomically(state, checkpoint_path(checkpoint_dir, step))
    prune_checkpoints(checkpoint_dir, cfg.trainer.keep_last_checkpoints)
