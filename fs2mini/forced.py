"""Force-decoding: the log-probability a model gives each (source, target) pair, for filtering and reranking.

`score_pairs` encodes the pairs as training does (`__src__ pieces </s>` and `</s> __tgt__ pieces </s>`, the
tokenizer's `encode_source`/`encode_target`), sorts them by length and cuts them into batches under a
padded-token budget (fs2mini.data's `length_order` and batching), runs one teacher-forced forward pass per
batch and takes each target token's -log p from the projection + cross-entropy the trainer uses
(`fs2mini.loss.linear_token_nll`). Scores come back in input order.

The forced language token is scored apart: `PairScore.log_prob` covers what a translation chooses (its pieces
and its </s>), the sum greedy and beam search report as a hypothesis's positional scores, so `score` and
`translate --nbest` rank alike; the language token's log-probability is kept next to it because training's loss
counts it (`log_prob + lang_log_prob` is minus the pair's NLL at label smoothing 0, summed as validation sums).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fs2mini.data import Rows, collate_rows, length_order
from fs2mini.loss import linear_token_nll
from fs2mini.model import Seq2SeqModel
from fs2mini.pipeline import Skipped, batch_by_max_tokens
from fs2mini.tokenizer import Tokenizer

# Called with (index of the pair, its length in tokens, the model's limit).
LengthCallback = Callable[[int, int, int], None]


@dataclass(frozen=True)
class PairScore:
    """One pair's score under the model (NaN when its target is too long for the model to read)."""

    log_prob: float
    """Sum of log p of the target's pieces and its final </s>, given the source and the forced `</s> __lang__`."""
    tokens: int
    """How many tokens `log_prob` sums: the target's pieces and </s>."""
    lang_log_prob: float
    """log p of the forced target-language token after </s> (counted by training's loss, chosen by no search)."""

    @property
    def per_token(self) -> float:
        """Mean log-probability per token, comparable across lengths (what filtering thresholds usually use)."""
        return self.log_prob / self.tokens if self.tokens else math.nan


@torch.no_grad()
def score_pairs(
    model: Seq2SeqModel,
    tokenizer: Tokenizer,
    sources: Sequence[str],
    targets: Sequence[str],
    source_lang: str,
    target_lang: str,
    *,
    max_tokens: int,
    device: torch.device,
    on_truncated: LengthCallback | None = None,
    on_too_long: LengthCallback | None = None,
) -> list[PairScore]:
    """The score of each (sources[i], targets[i]), in order; text is used as given (strip it first if needed).

    `max_tokens`: padded tokens per batch, counted as training counts them (pairs × longest of source and target).
    A source longer than the model's `max_seq_len` is cut to fit, keeping its </s>, and `on_truncated` is called;
    a target that does not fit scores NaN and `on_too_long` is called (a score of part of it would rank it wrongly).
    The model is switched to eval mode and back.
    """
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
    if not sources:
        return []
    limit, eos_idx, pad_idx = model.max_seq_len, tokenizer.vocab_info.eos_idx, tokenizer.vocab_info.pad_idx
    source_ids = tokenizer.encode_source(list(sources), source_lang)
    target_ids = tokenizer.encode_target(list(targets), target_lang)
    for index, ids in enumerate(source_ids):
        if len(ids) > limit:
            if on_truncated is not None:
                on_truncated(index, len(ids), limit)
            source_ids[index] = ids[: limit - 1] + [eos_idx]
    # The decoder reads all of a target but its final </s>.
    fits = [len(ids) - 1 <= limit for ids in target_ids]
    for index, ok in enumerate(fits):
        if not ok and on_too_long is not None:
            on_too_long(index, len(target_ids[index]) - 1, limit)
    scores = [PairScore(math.nan, len(ids) - 2, math.nan) for ids in target_ids]
    todo = [index for index, ok in enumerate(fits) if ok]
    if not todo:
        return scores
    src = Rows.from_lists([source_ids[i] for i in todo])
    tgt = Rows.from_lists([target_ids[i] for i in todo])
    src_lengths, tgt_lengths = src.lengths, tgt.lengths - 1
    order = torch.sort(length_order(src_lengths, tgt_lengths), stable=True).indices.tolist()
    sizes = torch.maximum(src_lengths, tgt_lengths).tolist()
    # A pair longer than the whole budget gets a batch of its own instead of being dropped.
    batches = batch_by_max_tokens(sizes, order, max(max_tokens, max(sizes)), Skipped())
    was_training = model.training
    model.eval()
    try:
        for batch_index in batches:
            batch = collate_rows(src, tgt, torch.tensor(batch_index), pad_idx).to(device)
            output = model(batch.source, batch.source_lengths, batch.target_input)
            nll = linear_token_nll(output.hidden, output.output_weight, batch.target_output, pad_idx)  # (batch, tgt_len)
            lang_log_probs = (-nll[:, 0]).tolist()
            log_probs = (-nll[:, 1:].sum(dim=1)).tolist()
            for position, log_prob, lang_log_prob in zip(batch_index, log_probs, lang_log_probs):
                index = todo[position]
                scores[index] = PairScore(log_prob, scores[index].tokens, lang_log_prob)
    finally:
        model.train(was_training)
    return scores
