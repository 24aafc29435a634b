"""Train with your own loss: a task config whose `build` returns a `Seq2Seq` subclass.

This recipe swaps label smoothing for a focal loss, which down-weights tokens the model already
predicts well. `compute_loss` must return (loss summed over target tokens, number of tokens).
The task is recorded in the run's config.json (with this file's path), so resuming the run and
`python -m fs2mini.evaluate runs/custom_loss` use the focal loss too.

Run:   python recipes/custom_loss.py --trainer.max-steps 300 --task.gamma 2
Pick:  python recipes/custom_loss.py task:label-smoothed      (the built-in loss, for comparison)
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from fs2mini.config import TrainConfig
from fs2mini.data import Seq2SeqBatch
from fs2mini.task import Seq2Seq
from fs2mini.train import main
from fs2mini.vocab import VocabInfo


@dataclass(frozen=True)
class FocalLoss:
    """Focal loss: each target token's NLL weighted by (1 - p)^gamma."""

    gamma: float = 1.0
    """Focusing strength; 0 gives back plain negative log-likelihood."""

    def build(self, vocab: VocabInfo) -> Seq2Seq:
        return FocalSeq2Seq(self.gamma, vocab.pad_idx)


class FocalSeq2Seq(Seq2Seq):
    def __init__(self, gamma: float, pad_idx: int) -> None:
        super().__init__(label_smoothing=0.0, pad_idx=pad_idx)  # compute_nll (perplexity) stays the plain NLL
        self.gamma = gamma

    def compute_loss(self, model: torch.nn.Module, batch: Seq2SeqBatch) -> tuple[torch.Tensor, int]:
        logits = model(batch.source, batch.source_lengths, batch.target_input).logits()  # (batch, tgt_len, vocab)
        log_probs = logits.float().log_softmax(-1)
        target_log_probs = log_probs.gather(-1, batch.target_output.unsqueeze(-1)).squeeze(-1)
        weights = (1.0 - target_log_probs.exp()) ** self.gamma
        real_tokens = batch.target_output != self.pad_idx
        return -(weights * target_log_probs)[real_tokens].sum(), batch.num_target_tokens


CONFIG = TrainConfig(run_name=Path(__file__).stem, task=FocalLoss())

if __name__ == "__main__":
    main(CONFIG, description=__doc__, tasks={"focal": FocalLoss()})
