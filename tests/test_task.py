"""Loss: the label-smoothed NLL equals a hand computation, summed over non-pad tokens."""

import torch

from fs2mini.data import collate
from fs2mini.task import Seq2Seq


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, source, source_lengths, target_input):
        return self.logits


def test_loss_equals_hand_computed_label_smoothed_cross_entropy():
    torch.manual_seed(0)
    batch = collate([([4, 5, 3], [3, 6, 7, 3]), ([4, 3], [3, 8, 3])], pad_idx=0)
    vocab, eps = 9, 0.1
    logits = torch.randn(2, batch.target_output.size(1), vocab)
    loss, num_tokens = Seq2Seq(eps, pad_idx=0).compute_loss(FixedLogits(logits), batch)

    expected = 0.0
    for b in range(2):
        for t in range(batch.target_output.size(1)):
            gold = int(batch.target_output[b, t])
            if gold == 0:
                continue
            log_probs = torch.log_softmax(logits[b, t], dim=-1)
            expected += (1 - eps) * -log_probs[gold] + eps * -log_probs.mean()
    assert num_tokens == 5
    torch.testing.assert_close(loss, torch.as_tensor(expected), atol=1e-5, rtol=1e-5)


def test_nll_is_unsmoothed():
    batch = collate([([4, 3], [3, 5, 3])], pad_idx=0)
    logits = torch.zeros(1, 2, 6)
    nll, n = Seq2Seq(0.1, pad_idx=0).compute_nll(FixedLogits(logits), batch)
    torch.testing.assert_close(nll, torch.tensor(2 * torch.log(torch.tensor(6.0)).item()))
    assert n == 2
