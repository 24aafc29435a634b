"""Greedy search and beam search over a `Seq2SeqModel`, batched and driven by its key/value cache.

Every decoding step is a handful of tensor operations over all (sentence, beam) rows at once: no
Python loop runs over sentences or beams inside a step. The source is encoded once, the forced
target prefix (`</s> __fra__`) is fed as the first `decode` call, and from then on each step feeds
only the newly chosen tokens while `DecoderState` keeps the rest.

Beam search follows fairseq's `SequenceGenerator`:
- each step ranks `2 * beam` candidates per sentence by cumulative log-probability;
- candidates ending in `</s>` among the best `beam` leave the beam into that sentence's finished
  list, scored `sum(log p) / length ** len_penalty` (length counts the final `</s>`);
- the best `beam` candidates that did not end in `</s>` continue, and the cache follows them;
- a sentence stops once it has `beam` finished hypotheses (they came from the top of the ranking,
  so the best of them is what fairseq reports) or reaches its maximum length, where `</s>` is
  forced. The same rule makes beam size 1 exactly greedy decoding.

Sampling (`--sampling`) lives in `fs2mini.sampling`, imported only when asked for.

Tokens that must never be produced (pad, BOS, language tokens) get a log-probability of -inf.
`</s>` is allowed from the first free step, so an empty translation is possible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fs2mini.errors import UserError, expect, expect_positive_ints, finite
from fs2mini.model import DecoderState, Seq2SeqModel


@dataclass(frozen=True)
class GenerationConfig:
    """How translations are searched for: beam width, length limits, length normalisation, batching."""

    beam_size: int = 4
    """Hypotheses kept per sentence at each step; 1 is greedy decoding."""
    max_len_a: float = 1.2
    """Outputs stop at int(max_len_a * source tokens + max_len_b) tokens before </s> (and within the model's max_seq_len)."""
    max_len_b: int = 10
    """Constant term of the maximum output length; see max_len_a."""
    len_penalty: float = 1.4
    """Hypotheses score sum(log p) / length**len_penalty: 1 = mean log-prob per token, 0 = plain sum (favours
    short outputs); 1.4 measured best with beam 4 on the Bible validation split (docs/results.md, "Quality within a time budget")."""
    nbest: int = 1
    """Hypotheses returned per sentence, best first; at most beam_size (with --sampling: samples per sentence)."""
    batch_size: int = 64
    """Sentences decoded together (each uses beam_size rows); lower it if memory runs out."""
    sampling: bool = False
    """Draw each next token at random instead of searching (back-translation; fairseq --sampling). Needs
    --beam-size 1; --nbest N draws N independent samples per sentence, returned best-scoring first. Scores are
    the model's own log-probabilities (temperature 1, no top-k/top-p), as greedy and beam search report them."""
    temperature: float = 1.0
    """With --sampling: log-probabilities are divided by it before drawing (< 1 sharper, > 1 flatter)."""
    top_k: int = 0
    """With --sampling: draw only among the k most probable tokens (0 = no limit, 1 = greedy)."""
    top_p: float = 1.0
    """With --sampling: then only among the most probable tokens that hold at least this much probability
    (nucleus sampling; 1 = no limit)."""
    seed: int = 0
    """With --sampling: a sentence's draws depend only on this seed, its source tokens, its target language and the
    sample number: the same seed and input give the same outputs whatever the batch (identical lines, identical samples)."""


def check_generation_config(cfg: GenerationConfig) -> None:
    """Reject settings that cannot search, naming the flag and what was expected."""
    expect_positive_ints([("--beam-size", cfg.beam_size), ("--nbest", cfg.nbest), ("--batch-size", cfg.batch_size)])
    expect("--temperature", cfg.temperature, finite(cfg.temperature) and cfg.temperature > 0,
           "a finite number > 0 (1 = the model's distribution, near 0 = greedy)")
    expect("--top-k", cfg.top_k, cfg.top_k >= 0, "an integer >= 0 (0 = no limit)")
    expect("--top-p", cfg.top_p, finite(cfg.top_p) and 0 < cfg.top_p <= 1, "a number in (0, 1] (1 = no limit)")
    expect("--seed", cfg.seed, 0 <= cfg.seed < 2**63, "an integer in [0, 2**63)")
    if cfg.sampling:
        if cfg.beam_size != 1:
            raise UserError(f"--sampling with --beam-size {cfg.beam_size}: sampling draws one token per step instead of "
                            "searching beams; expected --beam-size 1 (and --nbest N for N samples per sentence)")
    else:
        if cfg.nbest > cfg.beam_size:
            raise UserError(f"--nbest {cfg.nbest} must be at most --beam-size {cfg.beam_size}")
        for flag, value, default in (("--temperature", cfg.temperature, 1.0), ("--top-k", cfg.top_k, 0),
                                     ("--top-p", cfg.top_p, 1.0), ("--seed", cfg.seed, 0)):
            if value != default:
                raise UserError(f"{flag} {value} applies to sampling only; expected --sampling --beam-size 1 with it "
                                "(greedy and beam search use the model's own probabilities)")
    if cfg.max_len_a < 0 or cfg.max_len_b < 0:
        raise UserError(f"--max-len-a and --max-len-b must be >= 0, got {cfg.max_len_a} and {cfg.max_len_b}")
    if cfg.max_len_a == 0 and cfg.max_len_b == 0:
        raise UserError("--max-len-a and --max-len-b are both 0, so every output would be empty; expected one of them > 0")
    expect("--max-len-a", cfg.max_len_a, finite(cfg.max_len_a), "a finite number >= 0")
    expect("--len-penalty", cfg.len_penalty, finite(cfg.len_penalty), "a finite number (1 = mean log-prob per token)")
    shortest_source = 3  # __lang__ piece </s>
    expect("--max-len-a", cfg.max_len_a, int(cfg.max_len_a * shortest_source + cfg.max_len_b) >= 1,
           f"a value that with --max-len-b {cfg.max_len_b} allows at least one output token for a one-piece sentence "
           "(every output would be empty)")


@dataclass(frozen=True)
class Hypothesis:
    """One finished output of the search."""

    tokens: tuple[int, ...]
    """Generated token ids, without the forced prefix and without the final </s>."""
    score: float
    """Sum of the log-probabilities (final </s> included) / (len(tokens) + 1) ** len_penalty."""
    positional_scores: tuple[float, ...]
    """Log-probability of each token of `tokens`, then of the final </s>."""


def generate(
    model: Seq2SeqModel,
    source: Tensor,
    source_lengths: Tensor,
    prefix: Sequence[int],
    cfg: GenerationConfig,
    *,
    eos_idx: int,
    banned_ids: Sequence[int],
) -> list[list[Hypothesis]]:
    """The `cfg.nbest` best hypotheses of each source sentence, best first.

    source: (batch, src_len) padded token ids; source_lengths: (batch,). `prefix` is forced at the
    start of every target (e.g. `tokenizer.target_prefix(lang)`) and is not part of the outputs.
    `banned_ids` are never generated (pad, BOS, language tokens). `cfg.batch_size` is the caller's
    business: the whole batch given here is decoded at once. The model is switched to eval mode for
    the search and back to its previous mode afterwards, so a training loop can call this directly.
    """
    check_generation_config(cfg)
    max_lens = max_output_lengths(source_lengths, cfg.max_len_a, cfg.max_len_b, model.max_seq_len - len(prefix))
    was_training = model.training
    model.eval()
    try:
        if cfg.sampling:
            from fs2mini.sampling import sample_search  # only a run that samples reads it

            return sample_search(model, source, source_lengths, prefix, max_lens, cfg.nbest, cfg.len_penalty,
                                 temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                                 eos_idx=eos_idx, banned_ids=banned_ids)
        if cfg.beam_size == 1:
            return [[hyp] for hyp in greedy_search(model, source, source_lengths, prefix, max_lens, cfg.len_penalty,
                                                   eos_idx=eos_idx, banned_ids=banned_ids)]
        found = beam_search(model, source, source_lengths, prefix, max_lens, cfg.beam_size, cfg.len_penalty,
                            eos_idx=eos_idx, banned_ids=banned_ids)
        return [hyps[: cfg.nbest] for hyps in found]
    finally:
        model.train(was_training)


def max_output_lengths(source_lengths: Tensor, max_len_a: float, max_len_b: int, limit: int) -> Tensor:
    """(batch,) most tokens each output may have before its </s>: int(a * source_len + b), at most `limit`.

    `limit` is the model's max_seq_len minus the prefix length: the prefix and every generated token
    but the last (</s>, which is predicted and never fed back) occupy decoder positions.
    """
    if limit < 0:
        raise ValueError(f"the target prefix is longer than the model's max_seq_len by {-limit} tokens")
    lengths = (source_lengths.double() * max_len_a + max_len_b).floor().long()
    return lengths.clamp(min=0, max=limit)


def _start(
    model: Seq2SeqModel, source: Tensor, source_lengths: Tensor, prefix: Sequence[int], copies: int
) -> tuple[Tensor, Tensor, DecoderState, Tensor]:
    """Encode, feed the prefix once per sentence, then repeat each sentence's decoder rows `copies` times (beams).

    Returns encoder_out (batch, src_len, dim) and encoder_mask (batch, 1, 1, src_len), one row per
    sentence (the encoder–decoder cache stays per sentence: beams share it), the decoder state and
    the decoder output at the last prefix position (batch*copies, dim).
    """
    batch = source.size(0)
    encoder_out, encoder_mask = model.encode(source, source_lengths)
    state = model.new_decoder_state()
    prefix_tokens = torch.tensor(list(prefix), dtype=torch.long, device=source.device).expand(batch, -1)
    hidden = model.decode(prefix_tokens, encoder_out, encoder_mask, state)[:, -1]  # (batch, dim)
    if copies > 1:
        # Each sentence's self-attention cache is copied, not recomputed.
        rows = torch.arange(batch, device=source.device).repeat_interleave(copies)
        state.reorder(rows)
        hidden = hidden[rows]
    return encoder_out, encoder_mask, state, hidden


def _log_probs(model: Seq2SeqModel, hidden: Tensor, banned: Tensor, eos_idx: int, force_eos: Tensor | None) -> Tensor:
    """(rows, vocab) fp32 log-probabilities; banned ids -inf; rows where `force_eos` (if given) may only end."""
    lprobs = F.log_softmax(model.project(hidden).float(), dim=-1)
    lprobs[:, banned] = -torch.inf
    if force_eos is not None:
        eos = lprobs[:, eos_idx].clone()
        lprobs.masked_fill_(force_eos.unsqueeze(1), -torch.inf)
        lprobs[:, eos_idx] = eos
    return lprobs


@torch.no_grad()
def greedy_search(
    model: Seq2SeqModel,
    source: Tensor,
    source_lengths: Tensor,
    prefix: Sequence[int],
    max_lens: Tensor,
    len_penalty: float,
    *,
    eos_idx: int,
    banned_ids: Sequence[int],
) -> list[Hypothesis]:
    """The most likely next token at every step; finished sentences leave the batch (and the cache)."""
    def most_likely(lprobs: Tensor, rows: Tensor, step: int) -> tuple[Tensor, Tensor]:
        return lprobs.max(dim=-1)

    return one_row_search(model, source, source_lengths, prefix, max_lens, len_penalty, most_likely, eos_idx=eos_idx,
                           banned_ids=banned_ids)


Choose = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]
"""(log-probs (active, vocab), batch row of each active row (active,), step) → (log-prob, token) of each next token."""


def one_row_search(
    model: Seq2SeqModel,
    source: Tensor,
    source_lengths: Tensor,
    prefix: Sequence[int],
    max_lens: Tensor,
    len_penalty: float,
    choose: Choose,
    *,
    eos_idx: int,
    banned_ids: Sequence[int],
) -> list[Hypothesis]:
    """One hypothesis per source row, each step's token picked by `choose` (greedy: the arg-max; sampling: a draw)."""
    device = source.device
    batch = source.size(0)
    banned = torch.tensor(list(banned_ids), dtype=torch.long, device=device)
    max_lens = max_lens.to(device)
    encoder_out, encoder_mask, state, hidden = _start(model, source, source_lengths, prefix, 1)
    longest, shortest = int(max_lens.max()), int(max_lens.min())
    tokens = torch.full((batch, longest + 1), eos_idx, dtype=torch.long, device=device)
    scores = torch.zeros((batch, longest + 1), device=device)
    rows = torch.arange(batch, device=device)  # (active,) sentence of each row still decoding
    for step in range(longest + 1):
        # No row can be at its maximum length before `shortest`: skip the mask (and its device work).
        force_eos = step >= max_lens[rows] if step >= shortest else None
        lprobs = _log_probs(model, hidden, banned, eos_idx, force_eos)  # (active, vocab)
        score, token = choose(lprobs, rows, step)  # (active,) each
        tokens[rows, step] = token
        scores[rows, step] = score
        ended = token == eos_idx
        if bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)
            rows, token = rows[keep], token[keep]
            encoder_out, encoder_mask = encoder_out[keep], encoder_mask[keep]
            state.reorder(keep, keep)
        hidden = model.decode(token.unsqueeze(1), encoder_out, encoder_mask, state)[:, -1]
    return [_hypothesis(row_tokens, row_scores, eos_idx, len_penalty) for row_tokens, row_scores in zip(tokens.tolist(), scores.tolist())]


def _hypothesis(tokens: list[int], scores: list[float], eos_idx: int, len_penalty: float) -> Hypothesis:
    """Cut a greedy row after its first </s> (there always is one: it is forced at the maximum length)."""
    length = tokens.index(eos_idx)
    positional = tuple(scores[: length + 1])
    return Hypothesis(tuple(tokens[:length]), sum(positional) / (length + 1) ** len_penalty, positional)


@torch.no_grad()
def beam_search(
    model: Seq2SeqModel,
    source: Tensor,
    source_lengths: Tensor,
    prefix: Sequence[int],
    max_lens: Tensor,
    beam_size: int,
    len_penalty: float,
    *,
    eos_idx: int,
    banned_ids: Sequence[int],
) -> list[list[Hypothesis]]:
    """Every finished hypothesis of each sentence (at least one, usually `beam_size`), best first."""
    device = source.device
    batch, beam = source.size(0), beam_size
    banned = torch.tensor(list(banned_ids), dtype=torch.long, device=device)
    max_lens = max_lens.to(device)
    encoder_out, encoder_mask, state, hidden = _start(model, source, source_lengths, prefix, beam)
    longest, shortest = int(max_lens.max()), int(max_lens.min())

    # Finished hypotheses. A sentence stops once it has `beam`, and one step adds at most `beam`,
    # so 2 * beam slots per sentence always suffice.
    finished_tokens = torch.full((batch, 2 * beam, longest + 1), eos_idx, dtype=torch.long, device=device)
    finished_positional = torch.zeros((batch, 2 * beam, longest + 1), device=device)
    finished_scores = torch.full((batch, 2 * beam), -torch.inf, device=device)
    finished_lengths = torch.zeros((batch, 2 * beam), dtype=torch.long, device=device)
    num_finished = torch.zeros(batch, dtype=torch.long, device=device)

    sentences = torch.arange(batch, device=device)  # (active,) sentence index of each active sentence
    # All beams of a sentence start identical: only the first may expand at the first step.
    cumulative = torch.zeros((batch, beam), device=device)  # (active, beam) summed log-probs
    cumulative[:, 1:] = -torch.inf
    history = torch.empty((batch * beam, 0), dtype=torch.long, device=device)  # (active*beam, step)
    positional = torch.empty((batch * beam, 0), device=device)  # (active*beam, step)
    candidate_rank = torch.arange(2 * beam, device=device)  # (2*beam,)

    for step in range(longest + 1):
        active = sentences.numel()
        force_eos = (step >= max_lens[sentences]).repeat_interleave(beam) if step >= shortest else None  # (active*beam,)
        lprobs = _log_probs(model, hidden, banned, eos_idx, force_eos)  # (active*beam, vocab)
        vocab = lprobs.size(1)
        flat = lprobs.view(active, beam * vocab)
        top_scores, top_index = (cumulative.view(-1, 1) + lprobs).view(active, beam * vocab).topk(2 * beam, dim=1)
        top_lprobs = flat.gather(1, top_index)  # (active, 2*beam) log-prob of the candidate's last token
        top_tokens = top_index % vocab
        # (active, 2*beam) row in (active*beam) of the hypothesis each candidate extends
        top_rows = torch.arange(active, device=device).unsqueeze(1) * beam + top_index // vocab
        ends = top_tokens == eos_idx
        # fairseq: only </s> among the best `beam` candidates finishes; -inf ones are not hypotheses.
        finishing = ends & (candidate_rank < beam) & torch.isfinite(top_scores)

        if bool(finishing.any()):
            slots = num_finished[sentences].unsqueeze(1) + finishing.long().cumsum(dim=1) - 1  # (active, 2*beam)
            which, rank = finishing.nonzero(as_tuple=True)  # (new,) each
            sentence, slot, row = sentences[which], slots[which, rank], top_rows[which, rank]
            finished_tokens[sentence, slot, :step] = history[row]
            finished_positional[sentence, slot, :step] = positional[row]
            finished_positional[sentence, slot, step] = top_lprobs[which, rank]
            finished_scores[sentence, slot] = top_scores[which, rank] / (step + 1) ** len_penalty
            finished_lengths[sentence, slot] = step
            num_finished[sentences] += finishing.sum(dim=1)

        done = (num_finished[sentences] >= beam) | (step >= max_lens[sentences])  # (active,)
        if bool(done.all()):
            break
        # Continue the best `beam` candidates that did not end: rank non-</s> first, in score order.
        chosen = (ends.long() * 2 * beam + candidate_rank).topk(beam, dim=1, largest=False).indices  # (active, beam)
        cumulative = top_scores.gather(1, chosen)
        new_tokens = top_tokens.gather(1, chosen)
        new_lprobs = top_lprobs.gather(1, chosen)
        parents = top_rows.gather(1, chosen)
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            sentences, cumulative, new_tokens, new_lprobs, parents = (
                sentences[keep], cumulative[keep], new_tokens[keep], new_lprobs[keep], parents[keep])
            # The beams of one sentence share its encoder rows and cache, so those only follow whole sentences.
            encoder_out, encoder_mask = encoder_out[keep], encoder_mask[keep]
        else:
            keep = None
        parents = parents.view(-1)  # (active*beam,) rows of the previous step to continue
        history = torch.cat([history[parents], new_tokens.view(-1, 1)], dim=1)
        positional = torch.cat([positional[parents], new_lprobs.view(-1, 1)], dim=1)
        state.reorder(parents, keep)
        hidden = model.decode(new_tokens.view(-1, 1), encoder_out, encoder_mask, state)[:, -1]

    return _collect(finished_tokens, finished_positional, finished_scores, finished_lengths, num_finished)


def _collect(tokens: Tensor, positional: Tensor, scores: Tensor, lengths: Tensor, counts: Tensor) -> list[list[Hypothesis]]:
    """Per sentence, its finished hypotheses sorted by score (done once, after the search)."""
    tokens, positional, scores, lengths, counts = (t.cpu().tolist() for t in (tokens, positional, scores, lengths, counts))
    results = []
    for sent_tokens, sent_positional, sent_scores, sent_lengths, count in zip(tokens, positional, scores, lengths, counts):
        hyps = [
            Hypothesis(tuple(sent_tokens[i][:n]), sent_scores[i], tuple(sent_positional[i][: n + 1]))
            for i, n in ((i, sent_lengths[i]) for i in range(count))
        ]
        results.append(sorted(hyps, key=lambda hyp: hyp.score, reverse=True))
    return results
