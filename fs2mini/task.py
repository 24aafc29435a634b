"""The training objective: how a model turns a batch into a loss.

`Seq2Seq` is the task the trainer calls: label-smoothed cross-entropy, the NLLB/fairseq default.
To try another loss, subclass `Seq2Seq`, override `compute_loss`, and give it a config dataclass
whose `build(vocab)` returns it (see recipes/custom_loss.py): the config is then recorded in the
run's config.json, so resuming and `fs2mini.evaluate` use the same loss.
`compute_loss` returns the loss *summed* over target tokens together with the token count, so the
trainer can normalise by the true number of tokens across gradient-accumulation steps and uneven
batches instead of averaging averages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from fs2mini.data import Seq2SeqBatch
from fs2mini.errors import UserError
from fs2mini.vocab import VocabInfo


@runtime_checkable
class Task(Protocol):
    """What the trainer and validation call; `Seq2Seq` is the built-in one."""

    def compute_loss(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
        """(loss summed over the batch's target tokens, number of those tokens): what training minimises."""
        ...

    def compute_nll(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
        """(summed negative log-likelihood, tokens): what validation perplexity is computed from."""
        ...


@dataclass(frozen=True)
class TaskConfig:
    """Settings of the standard sequence-to-sequence objective."""

    label_smoothing: float = 0.1
    """Probability mass spread uniformly over the vocabulary (0 = plain negative log-likelihood)."""

    def build(self, vocab: VocabInfo) -> Seq2Seq:
        check_task_config(self)
        return Seq2Seq(self.label_smoothing, vocab.pad_idx)


class Seq2Seq:
    """Teacher-forced label-smoothed cross-entropy over the target tokens."""

    def __init__(self, label_smoothing: float, pad_idx: int) -> None:
        self.label_smoothing = label_smoothing
        self.pad_idx = pad_idx

    def compute_loss(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
        """(loss summed over non-pad target tokens, number of those tokens); what training minimises.

        `DecoderOutput.loss` fuses the output projection with the loss (fs2mini/loss.py), equal to
        `F.cross_entropy(logits, target, label_smoothing=ε, ignore_index=pad, reduction="sum")`
        without materialising the logits. A custom loss calls `output.logits()` instead.
        """
        output = model(batch.source, batch.source_lengths, batch.target_input)
        return output.loss(batch.target_output, self.pad_idx, self.label_smoothing), batch.num_target_tokens

    def compute_nll(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
        """Unsmoothed summed NLL: what perplexity is computed from."""
        output = model(batch.source, batch.source_lengths, batch.target_input)
        return output.loss(batch.target_output, self.pad_idx, 0.0), batch.num_target_tokens


def check_task_config(cfg: TaskConfig) -> None:
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise UserError(f"--task.label-smoothing must be in [0, 1), got {cfg.label_smoothing}")


def build_task(cfg, vocab: VocabInfo) -> Task:
    """The task a config describes: `cfg.build(vocab)`, checked against the `Task` protocol.

    `cfg` is `TaskConfig` or any frozen dataclass with a `build(vocab)` method (a recipe's loss).
    """
    name = type(cfg).__qualname__
    if not callable(getattr(cfg, "build", None)):
        raise UserError(f"task config {name} has no build(vocab) method; expected a dataclass whose "
                        "build(vocab: VocabInfo) returns a task with compute_loss and compute_nll (e.g. a Seq2Seq subclass)")
    task = cfg.build(vocab)
    if not isinstance(task, Task):
        raise UserError(f"{name}.build returned {type(task).__qualname__}, which lacks compute_loss/compute_nll; "
                        "expected a task following fs2mini.task.Task (subclass fs2mini.task.Seq2Seq)")
    return task
