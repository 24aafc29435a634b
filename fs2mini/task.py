"""The training objective: how a model turns a batch into a loss.

`Seq2Seq` is the task the trainer calls: label-smoothed cross-entropy, the NLLB/fairseq default.
To try another loss, subclass `Seq2Seq` and override `compute_loss` (see recipes/custom_loss.py).
`compute_loss` returns the loss *summed* over target tokens together with the token count, so the
trainer can normalise by the true number of tokens across gradient-accumulation steps and uneven
batches instead of averaging averages.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        """(loss summed over non-pad target tokens, number of those tokens); what training minimises.

        Passing `target_output` makes the model fuse its output projection with the loss
        (fs2mini/loss.py), equal to `F.cross_entropy(logits, target, label_smoothing=ε,
        ignore_index=pad, reduction="sum")` without materialising the logits. A custom loss calls
        `model(source, source_lengths, target_input)` for the logits instead.
        """
        loss = model(batch.source, batch.source_lengths, batch.target_input, batch.target_output, self.label_smoothing)
        return loss, batch.num_target_tokens

    def compute_nll(self, model: EncoderDecoderModel, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
        """Unsmoothed summed NLL: what perplexity is computed from."""
        return model(batch.source, batch.source_lengths, batch.target_input, batch.target_output, 0.0), batch.num_target_tokens


def check_task_config(cfg: TaskConfig) -> None:
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise UserError(f"--task.label-smoothing must be in [0, 1), got {cfg.label_smoothing}")


def build_task(cfg: TaskConfig, pad_idx: int) -> Seq2Seq:
    check_task_config(cfg)
    return Seq2Seq(cfg.label_smoothing, pad_idx)
