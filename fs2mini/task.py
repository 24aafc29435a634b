"""The training objective: how a model turns a batch into a loss.

`Seq2Seq` is the task the trainer calls: label-smoothed cross-entropy, the NLLB/fairseq default.
To try another loss, subclass `Seq2Seq` and override `compute_loss` (see recipes/custom_loss.py).
`compute_loss` returns the loss *summed* over target tokens together with the token count, so the
trainer can normalise by the true number of tokens across gradient-accumulation steps and uneven
batches instead of averaging averages.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch.nn.functional as F
from torch import Tensor

from fs2mini.data import Seq2SeqBatch
from fs2mini.errors import UserError
from fs2mini.model import EncoderDecoderModel


@dataclass(frozen=True)
class TaskConfig:
    """Settings of the standard sequence-to-sequence objective."""

    label_smoothing: float = 0.1
    """Probability mass spread uniformly over the vocabulary (0 = plain negative log-likelihood)."""


class Seq2Seq:
    """Teacher-forced label-smoothed cross-entropy over the target tokens."""

    def __init__(self, label_smoothing: float, pad_idx: int) -> None:
        self.label_smoothing = label_smoothing
        self.pad_idx = pad_idx

    def compute_loss(self, model: EncoderDecoderModel, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
        """(loss summed over non-pad target tokens, number of those tokens); what training minimises."""
        logits = model(batch.source, batch.source_lengths, batch.target_input)
        return self.label_smoothed_nll(logits, batch.target_output), batch.num_target_tokens

    def label_smoothed_nll(self, logits: Tensor, target: Tensor, label_smoothing: float | None = None) -> Tensor:
        """Summed (1-ε)·NLL + ε·mean over the vocabulary of -log p, skipping pad targets.

        This is PyTorch's own `cross_entropy(label_smoothing=ε)`, which fuses the log-softmax and
        never materialises a smoothed target distribution.
        """
        smoothing = self.label_smoothing if label_smoothing is None else label_smoothing
        return F.cross_entropy(
            logits.flatten(0, 1).float(),
            target.flatten(),
            ignore_index=self.pad_idx,
            reduction="sum",
            label_smoothing=smoothing,
        )

    def compute_nll(self, model: EncoderDecoderModel, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
        """Unsmoothed summed NLL: what perplexity is computed from."""
        logits = model(batch.source, batch.source_lengths, batch.target_input)
        return self.label_smoothed_nll(logits, batch.target_output, 0.0), batch.num_target_tokens


def check_task_config(cfg: TaskConfig) -> None:
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise UserError(f"--task.label-smoothing must be in [0, 1), got {cfg.label_smoothing}")


def build_task(cfg: TaskConfig, pad_idx: int) -> Seq2Seq:
    check_task_config(cfg)
    return Seq2Seq(cfg.label_smoothing, pad_idx)
