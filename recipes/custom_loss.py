"""Train with your own loss: subclass `Seq2Seq` and override `compute_loss`.

This recipe swaps label smoothing for a focal loss, which down-weights tokens the model already
predicts well. `compute_loss` must return (loss summed over target tokens, number of tokens).
Run it like any recipe:  python recipes/custom_loss.py --trainer.max-steps 300
"""

from pathlib import Path

import torch

from fs2mini.config import TrainConfig
from fs2mini.data import Seq2SeqBatch
from fs2mini.model import EncoderDecoderModel
from fs2mini.task import Seq2Seq, TaskConfig
from fs2mini.train import main

FOCAL_GAMMA = 1.0  # 0 gives back plain negative log-likelihood


class FocalSeq2Seq(Seq2Seq):
    def compute_loss(self, model: EncoderDecoderModel, batch: Seq2SeqBatch) -> tuple[torch.Tensor, int]:
        logits = model(batch.source, batch.source_lengths, batch.target_input)  # (batch, tgt_len, vocab)
        log_probs = logits.float().log_softmax(-1)
        target_log_probs = log_probs.gather(-1, batch.target_output.unsqueeze(-1)).squeeze(-1)
        weights = (1.0 - target_log_probs.exp()) ** FOCAL_GAMMA
        real_tokens = batch.target_output != self.pad_idx
        return -(weights * target_log_probs)[real_tokens].sum(), batch.num_target_tokens


def make_task(cfg: TaskConfig, pad_idx: int) -> Seq2Seq:
    return FocalSeq2Seq(cfg.label_smoothing, pad_idx)


CONFIG = TrainConfig(run_name=Path(__file__).stem)

if __name__ == "__main__":
    main(CONFIG, description=__doc__, make_task=make_task)
