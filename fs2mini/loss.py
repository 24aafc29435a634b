"""Output projection fused with label-smoothed cross-entropy, computed in chunks of target tokens.

Why: with a vocabulary of V and N target tokens, the plain route (`logits = h @ Wᵀ`, then
`cross_entropy`) writes an N×V logits tensor, an N×V log-softmax kept for backward, and in backward
an N×V zero-filled gradient and another N×V softmax gradient: four passes over tensors of
~130 MB for 4096 tokens × 8000 pieces, which on a CPU cost as much as the matmuls around them.
Here each chunk of rows computes its logits, its loss and its gradient while the chunk is still in
cache, and keeps only the gradients with respect to the hidden states and the weight (N×d and V×d)
for backward. Pad targets are dropped before the projection, so padding costs no vocabulary work.

The value is PyTorch's `F.cross_entropy(h @ Wᵀ, target, ignore_index=pad, label_smoothing=ε,
reduction="sum")` (in bf16 up to its rounding): per token (1-ε)·(-log p[gold]) + ε·mean over the vocabulary of
(-log p). `linear_token_nll` gives the same -log p[gold] token by token, without gradients, for
scoring sentences one by one (fs2mini/forced.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ROWS = 512
"""Target tokens per chunk (512 × 8000 fp32 logits = 16 MB). Measured on one core, 4096 tokens ×
vocab 8000 × dim 128, forward + backward: unfused `F.linear` + `F.cross_entropy` 620 ms, this
function 320 ms. Chunks of 128–1024 rows were within noise of each other, one 4096-row chunk 15%
slower: smaller chunks re-read the weight more often, larger ones fall out of cache."""

LOW_PRECISION_CPU_ROW_MULTIPLE = 64
"""On CPU in bf16/fp16 a chunk is padded with zero rows to a multiple of this many (with `CHUNK_ROWS`, only
the last chunk needs it). oneDNN compiles a kernel for each new matmul shape (5–7 ms, docs/performance.md),
and the last chunk has the batch's target-token count mod `CHUNK_ROWS` rows, so its three matmuls kept
bringing shapes the kernel cache had dropped: over 300 `model:medium` updates, compilations fell from 165
to 78 per 100 updates late in the run and the process from 2,578 to 1,538 MB with the padding. Padded to
64 rows there are 8 sizes; the pad rows (32 on average) cost about 2% of the loss's matmuls at 2048-token
batches. fp32 (MKL) and CUDA compile nothing per shape: no padding."""


@torch.compiler.disable
def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, pad_idx: int, label_smoothing: float,
                         chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """Summed label-smoothed cross-entropy of `hidden @ weight.T` against `target`, skipping pad targets.

    hidden: (..., model_dim); weight: (vocab, model_dim); target: hidden's leading shape.

    Kept out of torch.compile: the pad filter has a data-dependent size and the chunk loop's length
    depends on it, so dynamo specialised on every batch's target-token count and recompiled until
    its recompile limit (seen under --trainer.compile: "hit config.recompile_limit (8)").
    """
    keep = target.reshape(-1) != pad_idx
    rows = hidden.reshape(-1, hidden.size(-1))[keep]
    if torch.is_autocast_enabled(rows.device.type) and rows.dtype == torch.float32:
        # Under autocast the last layer norm hands over fp32 rows: in that precision the loss's three
        # vocabulary-sized matmuls would run in fp32 (the weight gradient's `addmm_` is not autocast):
        # a medium training step went from 2,182 to 2,296 target tokens/s (bf16, one core, docs/performance.md).
        rows = rows.to(torch.get_autocast_dtype(rows.device.type))
    # Under no_grad (validation) autograd still reports the parameters' requires_grad to the Function, so
    # whether gradients are wanted is passed in: otherwise validation computed them, three times the matmuls.
    return _LinearCrossEntropy.apply(rows, weight, target.reshape(-1)[keep], label_smoothing, chunk_rows,
                                     chunk_row_multiple(rows), torch.is_grad_enabled())


def chunk_row_multiple(rows: Tensor) -> int:
    """Rows a chunk is padded to a multiple of: `LOW_PRECISION_CPU_ROW_MULTIPLE` where oneDNN would
    compile its matmuls for each new row count (bf16/fp16 on CPU), else 1."""
    low_precision = rows.dtype in (torch.bfloat16, torch.float16)
    return LOW_PRECISION_CPU_ROW_MULTIPLE if low_precision and rows.device.type == "cpu" else 1


@torch.no_grad()
def linear_token_nll(hidden: Tensor, weight: Tensor, target: Tensor, pad_idx: int, chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """-log p[target] of `hidden @ weight.T` at every position: `target`'s shape, 0 where it is pad.

    The unsmoothed terms `linear_cross_entropy` sums (its chunks, its log-sum-exp), one per token, so a
    sentence's score is the sum of its positions and the batch's sum is the loss with label smoothing 0."""
    keep = target.reshape(-1) != pad_idx
    rows = hidden.reshape(-1, hidden.size(-1))[keep]
    gold_ids = target.reshape(-1)[keep]
    loss_dtype = torch.promote_types(rows.dtype, torch.float32)
    kept = torch.empty(rows.size(0), dtype=loss_dtype, device=rows.device)
    for start in range(0, rows.size(0), chunk_rows):
        gold = gold_ids[start : start + chunk_rows].unsqueeze(1)
        _, nll, _ = _chunk_terms(rows[start : start + chunk_rows], weight, gold, loss_dtype)
        kept[start : start + chunk_rows] = nll.squeeze(1)
    return torch.zeros(target.shape, dtype=loss_dtype, device=rows.device).masked_scatter_(target != pad_idx, kept)


def _chunk_terms(chunk: Tensor, weight: Tensor, gold: Tensor, loss_dtype: torch.dtype, need_probs: bool = False
                 ) -> tuple[Tensor | None, Tensor, Tensor]:
    """For rows `chunk` (rows, dim) and their gold ids (rows, 1): the softmax (rows, vocab, written over the logits;
    None unless `need_probs`), -log p[gold] (rows, 1) and mean_v(-log p[v]) (rows, 1), in `loss_dtype`."""
    logits = (chunk @ weight.T).to(loss_dtype)
    gold_logit = logits.gather(1, gold)
    mean_logit = logits.mean(dim=-1, keepdim=True)
    # log-sum-exp in place (torch.logsumexp would allocate another chunk-sized tensor):
    # afterwards `logits` holds exp(logit - max), the softmax up to the factor 1/total.
    max_logit = logits.amax(dim=-1, keepdim=True)
    total = logits.sub_(max_logit).exp_().sum(dim=-1, keepdim=True)
    log_z = max_logit + total.log()
    # -log p[gold] = log_z - logit[gold];  mean_v(-log p[v]) = log_z - mean_v(logit[v])
    return logits.div_(total) if need_probs else None, log_z - gold_logit, log_z - mean_logit


def _bf16_chunk_terms(chunk: Tensor, weight: Tensor, gold: Tensor, mean_weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """As `_chunk_terms` for bf16 rows in training on CPU, the softmax in bf16 (`mean_weight`: the table's mean
    row, (dim,) fp32).

    Why: `_chunk_terms` makes eleven passes over a chunk (the logits cast to fp32, max, subtract, exp, sums, the
    gradient's division and the cast back to bf16), 9 ms for 512 × 8000 logits on 2 cores, four times the chunk's
    bf16 matmul. PyTorch's softmax is one kernel, which for bf16 sums each row in fp32 and rounds once. The loss
    then needs only p[gold] and the gold and mean logits (the mean as a dot product with the mean row).
    What it costs in precision: p[gold] is rounded to bf16 (8 significant bits, relative error up to 2⁻⁸), so
    -log p[gold] is within about ±0.004 of the exact value (unbiased), and the gold entry of the gradient,
    p[gold] - (1-ε) - ε/V, is off by up to ~0.004 in absolute terms instead of 2⁻⁸ of its own size (the
    other entries round as before; side by side over 1,200 updates the validation loss stayed within noise,
    docs/results.md). A gold probability below fp32's smallest normal number (-log p > 87.3) counts as that
    number, in -log p[gold] and in the smoothing term alike; the gradient does not depend on it.
    Validation and scoring (no gradient) keep `_chunk_terms`, exact; so do fp32 (where this saved nothing
    measurable: 154 vs 152 ms for 2,000 tokens), fp16 (whose probabilities would underflow from
    -log p > 16.6) and CUDA (not measured there)."""
    logits = chunk @ weight.T
    probs = logits.softmax(dim=-1)
    nll = probs.gather(1, gold).float().clamp_min_(torch.finfo(torch.float32).tiny).log_().neg_()
    log_z = logits.gather(1, gold).float() + nll
    return probs, nll, log_z - (chunk.float() * mean_weight).sum(dim=-1, keepdim=True)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor, target: Tensor, label_smoothing: float, chunk_rows: int,
                row_multiple: int, grad_enabled: bool) -> Tensor:
        need_grad = grad_enabled and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        # A frozen table (LoRA, --model.freeze embeddings) needs no vocab × dim gradient: for NLLB's 256k
        # pieces that is 1 GB written and a third of the loss's matmuls saved.
        need_grad_weight = grad_enabled and ctx.needs_input_grad[1]
        # bf16/fp16 logits are summed in fp32
        vocab, weight_dtype, loss_dtype = weight.size(0), weight.dtype, torch.promote_types(rows.dtype, torch.float32)
        loss = torch.zeros((), dtype=loss_dtype, device=rows.device)
        grad_rows = torch.empty_like(rows) if need_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=loss_dtype, device=weight.device) if need_grad_weight else None
        # Training on CPU in bf16 takes the softmax path (`_bf16_chunk_terms` says why); validation and scoring stay exact.
        softmax_in_bf16 = need_grad and rows.dtype == torch.bfloat16 and rows.device.type == "cpu"
        mean_weight = weight.float().mean(0) if softmax_in_bf16 else None  # · row = the row's mean logit
        weight = weight.to(rows.dtype)  # bf16/fp16 rows: the table cast once, not at each chunk's matmuls
        for start in range(0, rows.size(0), chunk_rows):
            chunk, gold = rows[start : start + chunk_rows], target[start : start + chunk_rows].unsqueeze(1)
            real = chunk.size(0)
            if pad := -real % row_multiple:  # zero rows (gold 0) up to a size whose kernels are compiled already
                chunk, gold = torch.cat([chunk, chunk.new_zeros(pad, chunk.size(1))]), torch.cat([gold, gold.new_zeros(pad, 1)])
            probs, nll, smooth = (_bf16_chunk_terms(chunk, weight, gold, mean_weight) if softmax_in_bf16
                                  else _chunk_terms(chunk, weight, gold, loss_dtype, need_grad))
            loss += ((1.0 - label_smoothing) * nll[:real] + label_smoothing * smooth[:real]).sum()
            if need_grad:
                # d loss / d logits = softmax - (1-ε)·onehot(gold) - ε/V, written over the softmax buffer.
                grad_logits = probs.sub_(label_smoothing / vocab)
                # indexing, not scatter_add_/scatter_, which on CPU copy a bf16 chunk to fp32 and back (5 ms, vs 0.02)
                grad_logits[torch.arange(gold.size(0), device=gold.device), gold.squeeze(1)] += label_smoothing - 1.0
                grad_logits[real:] = 0  # pad rows: no gradient for the table
                grad_logits = grad_logits.to(chunk.dtype)
                grad_rows[start : start + real] = (grad_logits @ weight)[:real]
                if grad_weight is not None and grad_logits.dtype == grad_weight.dtype:
                    grad_weight.addmm_(grad_logits.T, chunk)  # accumulates without a vocab × dim temporary
                elif grad_weight is not None:
                    grad_weight += (grad_logits.T @ chunk).to(loss_dtype)
        if need_grad:
            ctx.save_for_backward(grad_rows, grad_weight.to(weight_dtype) if grad_weight is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_rows, grad_weight = ctx.saved_tensors
        return (grad_rows * grad_loss.to(grad_rows.dtype),
                grad_weight * grad_loss.to(grad_weight.dtype) if grad_weight is not None else None, None, None, None, None, None)
