"""Sampling over a `Seq2SeqModel`: greedy search's loop with a random draw in place of the arg-max.

Back-translation decodes this way (Edunov et al. 2018, fairseq `--sampling`). Each token is drawn from
softmax(log p / temperature), restricted to the `top_k` most probable tokens and then to the smallest set holding `top_p` of the mass
(the order of Hugging Face's warpers and CTranslate2). Each (sentence, sample) draws by inverse CDF
from its own uniform numbers, made by a generator seeded from the seed, the sentence's source tokens,
its target prefix and the sample number, so the same seed and input give the same outputs whatever the
batch, the order or the other sentences (up to rounding differences of the model's own arithmetic
between batch shapes, which can flip a draw that lands on a boundary). A consequence: identical source
lines get identical samples; `--nbest N` draws N independent samples of each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fs2mini.generation import Hypothesis, one_row_search
from fs2mini.model import Seq2SeqModel


@torch.no_grad()
def sample_search(
    model: Seq2SeqModel,
    source: Tensor,
    source_lengths: Tensor,
    prefix: Sequence[int],
    max_lens: Tensor,
    samples: int,
    len_penalty: float,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    eos_idx: int,
    banned_ids: Sequence[int],
) -> list[list[Hypothesis]]:
    """`samples` independent samples of each sentence, best-scoring first (see the module docstring).

    Each sample is a row of its own (the source repeated `samples` times: the encoder's work is small next to
    the decoding), so finished samples leave the batch as greedy search's sentences do."""
    if samples > 1:
        source, source_lengths, max_lens = (t.repeat_interleave(samples, dim=0) for t in (source, source_lengths, max_lens))
    # (rows, longest + 1) the uniform number of each row's draw at each step, from the row's own generator
    uniforms = _uniforms(source, source_lengths, prefix, max_lens, samples, seed).to(source.device)

    def draw(lprobs: Tensor, rows: Tensor, step: int) -> tuple[Tensor, Tensor]:
        token = draw_tokens(lprobs, uniforms[rows, step], temperature, top_k, top_p)
        return lprobs.gather(1, token.unsqueeze(1)).squeeze(1), token

    hyps = one_row_search(model, source, source_lengths, prefix, max_lens, len_penalty, draw, eos_idx=eos_idx,
                           banned_ids=banned_ids)
    return [sorted(hyps[start : start + samples], key=lambda hyp: hyp.score, reverse=True)
            for start in range(0, len(hyps), samples)]


def _uniforms(source: Tensor, source_lengths: Tensor, prefix: Sequence[int], max_lens: Tensor, samples: int,
              seed: int) -> Tensor:
    """(rows, longest + 1) uniform numbers in [0, 1): row r's come from a CPU generator seeded by `sample_seed`
    (row r is sample r % samples of its sentence); each row gets its own max length + 1 of them, padded with 0."""
    rows = []
    for row, (ids, length, limit) in enumerate(zip(source.tolist(), source_lengths.tolist(), max_lens.tolist())):
        generator = torch.Generator().manual_seed(sample_seed(seed, ids[:length], prefix, row % samples))
        rows.append(torch.rand(limit + 1, generator=generator))
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


def sample_seed(seed: int, source_ids: Sequence[int], prefix: Sequence[int], sample: int) -> int:
    """The seed of one sample's generator: a hash of (seed, sample number, target prefix, source ids), never of
    where the sentence sits in the input or the batch."""
    key = np.array([seed, sample, len(prefix), *prefix, *source_ids], dtype=np.int64).tobytes()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def draw_tokens(lprobs: Tensor, uniforms: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """(rows,) one token per row of `lprobs` (rows, vocab), drawn by inverse CDF with `uniforms` (rows,) in [0, 1)
    from softmax(lprobs / temperature) restricted to the `top_k` most probable tokens (0 = all), then to the
    smallest set of most probable tokens holding at least `top_p` of the remaining mass. -inf tokens are never drawn."""
    # Shifted so the best token is at 0 before dividing: a temperature near 0 gives -huge (or -inf), never NaN.
    scaled = (lprobs - lprobs.amax(dim=-1, keepdim=True)) / temperature
    ids = None  # the vocabulary id of each column when the columns are sorted, most probable first
    if 0 < top_k < scaled.size(1):
        scaled, ids = scaled.topk(top_k, dim=-1)
    elif top_p < 1:
        scaled, ids = scaled.sort(dim=-1, descending=True, stable=True)
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1:  # a token stays if the more probable ones before it hold less than top_p (the first always)
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    pick = torch.searchsorted(cdf, uniforms.unsqueeze(1).to(cdf.dtype) * total, right=True)  # (rows, 1)
    # u * total may round up to total: then the last token with probability > 0 (the first column at the total).
    pick = torch.minimum(pick, (cdf < total).sum(dim=-1, keepdim=True))
    return (ids.gather(1, pick) if ids is not None else pick).squeeze(1)
