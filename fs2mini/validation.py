"""Loss and perplexity over a split, computed the same way during training and by `fs2mini.evaluate`.

Kept apart from the training loop so that evaluation and translation code can use it without
importing the trainer (and the trainer can import them).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fs2mini.corpus import describe_corpus
from fs2mini.data import Seq2SeqBatches, collate, direction_name
from fs2mini.distributed import DistEnv, all_reduce_max, all_reduce_sum
from fs2mini.errors import UserError
from fs2mini.precision import autocast_for
from fs2mini.task import Seq2Seq
from fs2mini.tokenizer import EOS_ID, PAD_ID


@torch.no_grad()
def validate(model: nn.Module, task: Seq2Seq, batches: Seq2SeqBatches, device: torch.device,
             autocast_dtype: torch.dtype | None, env: DistEnv = DistEnv()) -> dict[str, float]:
    """Loss (the training objective) and NLL/perplexity per target token over the whole split.

    Under torchrun each rank evaluates its shard and the sums are all-reduced. Ranks with fewer
    batches repeat a forward pass whose result is discarded, because FSDP needs every rank to run
    the same number of forward passes.
    """
    model.eval()
    own = list(batches)
    rounds = all_reduce_max(len(own), env, device)
    filler = own[0] if own else collate([([EOS_ID], [EOS_ID, EOS_ID])], PAD_ID)
    loss_sum = nll_sum = 0.0
    tokens = 0
    for index in range(rounds):
        batch = (own[index] if index < len(own) else filler).to(device)
        with autocast_for(device, autocast_dtype):
            loss, num_tokens = task.compute_loss(model, batch)
            nll, _ = task.compute_nll(model, batch)
        if index < len(own):
            loss_sum += float(loss)
            nll_sum += float(nll)
            tokens += num_tokens
    model.train()
    loss_sum, nll_sum, tokens = all_reduce_sum([loss_sum, nll_sum, tokens], env, device)
    if tokens == 0:
        directions = ", ".join(f"{direction_name(langs)} ({describe_corpus(corpus)})"
                               for langs, corpus in zip(batches.directions, batches.corpora))
        raise UserError(f"the {batches.split} split of direction {directions} has no usable sentence pairs "
                        f"(skipped: {batches.skipped.summary() or 'nothing'})")
    nll_per_token = nll_sum / tokens
    return {"loss": loss_sum / tokens, "nll": nll_per_token, "ppl": math.exp(min(nll_per_token, 100.0)), "tokens": int(tokens)}


def combine_losses(results: list[dict[str, float]]) -> dict[str, float]:
    """The `validate` results of several directions as one, per target token over all of them."""
    if len(results) == 1:
        return dict(results[0])
    tokens = sum(result["tokens"] for result in results)
    nll_per_token = sum(result["nll"] * result["tokens"] for result in results) / tokens
    return {"loss": sum(result["loss"] * result["tokens"] for result in results) / tokens, "nll": nll_per_token,
            "ppl": math.exp(min(nll_per_token, 100.0)), "tokens": int(tokens)}
