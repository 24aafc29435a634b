"""Generation: cached decoding is exact, beam 1 is greedy, beams are sorted and distinct, limits hold; sampling is
seeded, independent of the batch, draws from the distribution it names and becomes greedy at its limits."""

import pytest
import torch

from fs2mini.errors import UserError
from fs2mini.generation import (GenerationConfig, beam_search, check_generation_config, generate,
                                greedy_search, max_output_lengths)
from fs2mini.model import EncoderDecoderModel, ModelConfig, build_model
from fs2mini.sampling import draw_tokens
from fs2mini.vocab import VocabInfo

VOCAB = VocabInfo(size=40, pad_idx=0, bos_idx=2, eos_idx=3, unk_idx=1)
LANG_IDS = (4, 5)  # stand-ins for __eng__ and __fra__
PREFIX = (3, 5)  # </s> __fra__
BANNED = (0, 2, *LANG_IDS)


def tiny_model(seed=0, max_seq_len=1024):
    torch.manual_seed(seed)
    # fairseq's init: its larger weights give peaked random logits, so the hand-biased cases below (an
    # end-of-sentence bias that ends sentences at different steps) happen; N(0, 0.02) logits are near-flat.
    cfg = ModelConfig(model_dim=32, max_seq_len=max_seq_len, num_encoder_layers=2, num_decoder_layers=2,
                      num_encoder_attn_heads=4, num_decoder_attn_heads=4, ffn_inner_dim=64, dropout_p=0.1,
                      init="fairseq", position_offset=0)  # the random models these cases were written against
    return build_model(cfg, VOCAB).eval()


def source_batch(lengths, seed=0):
    """(batch, longest) `__eng__ tokens </s>` rows padded with 0, and their lengths."""
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    source = torch.zeros((len(lengths), longest), dtype=torch.long)
    for row, length in enumerate(lengths):
        source[row, 0] = LANG_IDS[0]
        source[row, 1 : length - 1] = torch.randint(6, VOCAB.size, (length - 2,), generator=generator)
        source[row, length - 1] = VOCAB.eos_idx
    return source, torch.tensor(lengths)


def bias_logits(model, bias):
    """Make `model.project` add `bias` (vocab,) to every logit: steers a random model towards or away from tokens."""
    model.project = lambda hidden: EncoderDecoderModel.project(model, hidden) + bias
    return model


def teacher_forced_log_probs(model, source, length, tokens):
    """Log-probs of `tokens` then </s> after the prefix, recomputed without cache for one unpadded sentence."""
    target = torch.tensor([[*PREFIX, *tokens]])
    with torch.no_grad():
        lprobs = torch.log_softmax(model.project(model(source[None, :length], torch.tensor([length]), target).hidden).float(), dim=-1)
    expected = torch.tensor([*tokens, VOCAB.eos_idx])
    return lprobs[0, len(PREFIX) - 1 :].gather(1, expected[:, None]).squeeze(1)


def test_cached_decoding_gives_the_log_probs_of_full_recomputation():
    model = tiny_model()
    source, lengths = source_batch([9, 4, 6])
    encoder_out, encoder_mask = model.encode(source, lengths)
    state = model.new_decoder_state()
    target = torch.tensor(PREFIX).expand(3, -1)
    step_input, cached = target, []
    with torch.no_grad():
        for _ in range(8):  # greedy, feeding only the new token each time
            lprobs = torch.log_softmax(model.project(model.decode(step_input, encoder_out, encoder_mask, state)[:, -1]), -1)
            cached.append(lprobs)
            step_input = lprobs.argmax(-1, keepdim=True)
            target = torch.cat([target, step_input], dim=1)
        full = torch.log_softmax(model(source, lengths, target[:, :-1]).logits(), -1)  # (batch, 9, vocab)
    torch.testing.assert_close(torch.stack(cached, dim=1), full[:, len(PREFIX) - 1 :], atol=1e-5, rtol=0)


def test_cache_shared_by_beams_grows_and_follows_reordering():
    """Rows grouped per sentence share its encoder–decoder cache; the self-attention cache grows past its
    first capacity and follows `reorder`, including when a sentence leaves the batch."""
    model = tiny_model()
    source, lengths = source_batch([9, 4, 6])
    encoder_out, encoder_mask = model.encode(source, lengths)
    group, steps = 3, 40  # 42 positions: the self-attention buffers grow twice
    generator = torch.Generator().manual_seed(0)
    sentence_of_row = torch.arange(3).repeat_interleave(group)
    target = torch.tensor(PREFIX).expand(3 * group, -1)
    state = model.new_decoder_state()
    with torch.no_grad():
        model.decode(torch.tensor(PREFIX).expand(3, -1), encoder_out, encoder_mask, state)
        state.reorder(sentence_of_row)
        sentences = torch.arange(3)
        for step in range(steps):
            if step == 20:  # sentence 1 leaves; its rows and its encoder rows go
                keep = torch.tensor([0, 2])
                rows = (keep.unsqueeze(1) * group + torch.arange(group)).view(-1)
                sentences, target, encoder_out, encoder_mask = sentences[keep], target[rows], encoder_out[keep], encoder_mask[keep]
                state.reorder(rows, keep)
            # each row continues a random row of the same sentence, as beams do
            parents = (torch.arange(sentences.numel()).repeat_interleave(group) * group
                       + torch.randint(0, group, (sentences.numel() * group,), generator=generator))
            tokens = torch.randint(6, VOCAB.size, (parents.numel(), 1), generator=generator)
            target = torch.cat([target[parents], tokens], dim=1)
            state.reorder(parents)
            cached = model.project(model.decode(tokens, encoder_out, encoder_mask, state)[:, -1])
        full = model(source[sentences].repeat_interleave(group, 0), lengths[sentences].repeat_interleave(group), target).logits()
    torch.testing.assert_close(cached, full[:, -1], atol=1e-5, rtol=0)


def test_greedy_positional_scores_match_unbatched_recomputation():
    model = bias_logits(tiny_model(), torch.zeros(VOCAB.size).index_fill(0, torch.tensor([VOCAB.eos_idx]), 3.0))
    source, lengths = source_batch([9, 3, 6, 12, 5])
    max_lens = max_output_lengths(lengths, 1.2, 10, model.max_seq_len - len(PREFIX))
    hyps = greedy_search(model, source, lengths, PREFIX, max_lens, 1.0, eos_idx=VOCAB.eos_idx, banned_ids=BANNED)
    assert len({len(h.tokens) for h in hyps}) > 1, "sentences should end at different steps"
    for row, hyp in enumerate(hyps):
        expected = teacher_forced_log_probs(model, source[row], int(lengths[row]), hyp.tokens)
        torch.testing.assert_close(torch.tensor(hyp.positional_scores), expected, atol=1e-5, rtol=0)
        assert hyp.score == pytest.approx(sum(hyp.positional_scores) / (len(hyp.tokens) + 1))


@pytest.mark.parametrize("seed,eos_bias", [(0, 0.0), (1, 2.0), (2, 4.0)])
def test_beam_size_1_gives_exactly_greedy_tokens(seed, eos_bias):
    model = bias_logits(tiny_model(seed), torch.zeros(VOCAB.size).index_fill(0, torch.tensor([VOCAB.eos_idx]), eos_bias))
    source, lengths = source_batch([9, 3, 6, 12, 5, 7], seed=seed)
    max_lens = max_output_lengths(lengths, 1.2, 10, model.max_seq_len - len(PREFIX))
    greedy = greedy_search(model, source, lengths, PREFIX, max_lens, 1.0, eos_idx=VOCAB.eos_idx, banned_ids=BANNED)
    beam = beam_search(model, source, lengths, PREFIX, max_lens, 1, 1.0, eos_idx=VOCAB.eos_idx, banned_ids=BANNED)
    assert [h.tokens for h in greedy] == [hyps[0].tokens for hyps in beam]
    assert [h.score for h in greedy] == pytest.approx([hyps[0].score for hyps in beam], abs=1e-5)


def test_beam_search_returns_nbest_distinct_hypotheses_sorted_by_score_with_exact_scores():
    model = bias_logits(tiny_model(3), torch.zeros(VOCAB.size).index_fill(0, torch.tensor([VOCAB.eos_idx]), 2.0))
    source, lengths = source_batch([9, 3, 6, 12], seed=3)
    cfg = GenerationConfig(beam_size=4, nbest=4, len_penalty=1.0)
    found = generate(model, source, lengths, PREFIX, cfg, eos_idx=VOCAB.eos_idx, banned_ids=BANNED)
    assert len(found) == 4
    for row, hyps in enumerate(found):
        assert len(hyps) == 4
        assert len({h.tokens for h in hyps}) == 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for hyp in hyps:  # the cache followed the beams: scores equal a fresh teacher-forced pass
            expected = teacher_forced_log_probs(model, source[row], int(lengths[row]), hyp.tokens)
            torch.testing.assert_close(torch.tensor(hyp.positional_scores), expected, atol=1e-5, rtol=0)
            assert hyp.score == pytest.approx(sum(hyp.positional_scores) / (len(hyp.tokens) + 1), abs=1e-5)


def test_beam_search_finds_at_least_the_greedy_score_on_average():
    model = tiny_model(4)
    source, lengths = source_batch([7, 8, 9, 10, 11, 12], seed=4)
    # Scored per token (len_penalty 1), the objective a wider search can only improve on average here.
    greedy = generate(model, source, lengths, PREFIX, GenerationConfig(beam_size=1, len_penalty=1.0), eos_idx=3,
                      banned_ids=BANNED)
    beam = generate(model, source, lengths, PREFIX, GenerationConfig(beam_size=5, len_penalty=1.0), eos_idx=3,
                    banned_ids=BANNED)
    assert sum(h[0].score for h in beam) >= sum(h[0].score for h in greedy)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_pad_bos_and_language_tokens_are_never_generated(beam_size):
    bias = torch.zeros(VOCAB.size)
    bias[list(BANNED)] = 50.0  # the model would pick them at every step if they were allowed
    model = bias_logits(tiny_model(), bias)
    source, lengths = source_batch([5, 8])
    cfg = GenerationConfig(beam_size=beam_size, nbest=beam_size, max_len_a=1.0, max_len_b=4)
    for hyps in generate(model, source, lengths, PREFIX, cfg, eos_idx=VOCAB.eos_idx, banned_ids=BANNED):
        for hyp in hyps:
            assert hyp.tokens and not set(hyp.tokens) & set(BANNED)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_eos_is_allowed_from_the_first_step(beam_size):
    bias = torch.zeros(VOCAB.size).index_fill(0, torch.tensor([VOCAB.eos_idx]), 50.0)
    model = bias_logits(tiny_model(), bias)
    source, lengths = source_batch([5, 8])
    found = generate(model, source, lengths, PREFIX, GenerationConfig(beam_size=beam_size), eos_idx=3, banned_ids=BANNED)
    assert [hyps[0].tokens for hyps in found] == [(), ()]


@pytest.mark.parametrize("beam_size", [1, 4])
def test_outputs_stop_at_their_maximum_length_and_the_model_limit(beam_size):
    bias = torch.zeros(VOCAB.size).index_fill(0, torch.tensor([VOCAB.eos_idx]), -50.0)  # never ends by itself
    model = bias_logits(tiny_model(max_seq_len=14), bias)
    source, lengths = source_batch([3, 6, 14])
    cfg = GenerationConfig(beam_size=beam_size, nbest=beam_size, max_len_a=0.5, max_len_b=3)
    found = generate(model, source, lengths, PREFIX, cfg, eos_idx=VOCAB.eos_idx, banned_ids=BANNED)
    # int(0.5 * source_len + 3): 4, 6 and 10 tokens, all within max_seq_len 14 - prefix 2 = 12
    assert [[len(h.tokens) for h in hyps] for hyps in found] == [[n] * beam_size for n in (4, 6, 10)]
    capped = GenerationConfig(beam_size=beam_size, nbest=1, max_len_a=2.0, max_len_b=3)
    found = generate(model, source, lengths, PREFIX, capped, eos_idx=VOCAB.eos_idx, banned_ids=BANNED)
    assert [len(hyps[0].tokens) for hyps in found] == [9, 12, 12]  # 2 * 6 + 3 = 15 and 31 are capped at 12


def test_generate_restores_training_mode():
    model = tiny_model().train()
    source, lengths = source_batch([5])
    generate(model, source, lengths, PREFIX, GenerationConfig(beam_size=2), eos_idx=3, banned_ids=BANNED)
    assert model.training


@pytest.mark.parametrize("cfg,flag", [
    (GenerationConfig(beam_size=0), "--beam-size"),
    (GenerationConfig(beam_size=2, nbest=3), "--nbest"),
    (GenerationConfig(batch_size=0), "--batch-size"),
    (GenerationConfig(max_len_a=-1.0), "--max-len-a"),
    (GenerationConfig(max_len_a=0.0, max_len_b=0), "--max-len-a"),
    (GenerationConfig(beam_size=1, sampling=True, temperature=0.0), "--temperature 0.0: expected a finite number > 0"),
    (GenerationConfig(beam_size=1, sampling=True, temperature=float("inf")), "--temperature inf: expected"),
    (GenerationConfig(beam_size=1, sampling=True, top_p=0.0), r"--top-p 0.0: expected a number in \(0, 1\]"),
    (GenerationConfig(beam_size=1, sampling=True, top_p=1.5), r"--top-p 1.5: expected a number in \(0, 1\]"),
    (GenerationConfig(beam_size=1, sampling=True, top_k=-1), "--top-k -1: expected an integer >= 0"),
    (GenerationConfig(beam_size=1, sampling=True, seed=-1), "--seed -1: expected an integer in"),
    (GenerationConfig(sampling=True), "--sampling with --beam-size 4: .* expected --beam-size 1"),
    (GenerationConfig(beam_size=1, temperature=0.5), "--temperature 0.5 applies to sampling only; expected --sampling"),
    (GenerationConfig(top_k=5), "--top-k 5 applies to sampling only"),
])
def test_bad_generation_settings_are_rejected_with_the_flag(cfg, flag):
    with pytest.raises(UserError, match=flag):
        check_generation_config(cfg)


def sampling(**fields):
    return GenerationConfig(**{"beam_size": 1, "sampling": True, "len_penalty": 1.0, **fields})


def eos_biased_model(seed=0, eos_bias=2.0):
    """A random model whose sentences end at different steps."""
    return bias_logits(tiny_model(seed), torch.zeros(VOCAB.size).index_fill(0, torch.tensor([VOCAB.eos_idx]), eos_bias))


def run(model, source, lengths, cfg):
    return generate(model, source, lengths, PREFIX, cfg, eos_idx=VOCAB.eos_idx, banned_ids=BANNED)


@pytest.mark.parametrize("limit", [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4), dict(temperature=1e-30)])
def test_sampling_at_its_limits_is_greedy_search(limit):
    model = eos_biased_model()
    source, lengths = source_batch([9, 3, 6, 12, 5, 7])
    greedy = run(model, source, lengths, GenerationConfig(beam_size=1, len_penalty=1.0))
    sampled = run(model, source, lengths, sampling(seed=5, **limit))
    assert len({len(hyps[0].tokens) for hyps in greedy}) > 1, "sentences should end at different steps"
    assert sampled == greedy  # tokens, scores and positional scores alike


def test_same_seed_same_samples_other_seed_other_samples():
    model = tiny_model(1)
    source, lengths = source_batch([9, 3, 6, 12, 5, 7], seed=1)
    first = run(model, source, lengths, sampling(seed=7, nbest=3))
    assert run(model, source, lengths, sampling(seed=7, nbest=3)) == first
    other = run(model, source, lengths, sampling(seed=8, nbest=3))
    assert [h.tokens for hyps in other for h in hyps] != [h.tokens for hyps in first for h in hyps]
    greedy = [hyps[0].tokens for hyps in run(model, source, lengths, GenerationConfig(beam_size=1))]
    assert [hyps[0].tokens for hyps in first] != greedy  # a random model's samples are not its arg-max


def test_samples_do_not_depend_on_the_batch_they_are_drawn_in():
    """A sentence's draws are seeded from the sentence: alone, in another order or next to others, it gets the
    same samples (the model's arithmetic is not bit-identical across batch shapes: scores agree to rounding)."""
    model = eos_biased_model(2, eos_bias=1.0)
    source, lengths = source_batch([9, 3, 6, 12, 5, 7], seed=2)
    cfg = sampling(seed=11, nbest=2, temperature=1.5)
    together = run(model, source, lengths, cfg)
    order = torch.tensor([5, 2, 0, 4, 1, 3])
    shuffled = run(model, source[order], lengths[order], cfg)
    alone = [run(model, source[row : row + 1, : int(lengths[row])], lengths[row : row + 1], cfg)[0] for row in range(6)]
    for row in range(6):
        for other in (alone[row], shuffled[order.tolist().index(row)]):
            assert [h.tokens for h in other] == [h.tokens for h in together[row]]
            assert [h.score for h in other] == pytest.approx([h.score for h in together[row]], abs=1e-5)


def test_nbest_samples_are_independent_sorted_and_scored_by_the_model():
    model = eos_biased_model(3)
    source, lengths = source_batch([9, 3, 6, 12], seed=3)
    found = run(model, source, lengths, sampling(seed=1, nbest=5, temperature=2.0, top_p=0.9))
    for row, hyps in enumerate(found):
        assert len(hyps) == 5 and len({h.tokens for h in hyps}) > 1
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for hyp in hyps:  # the model's own log-probabilities (temperature 1, unfiltered), as greedy reports them
            expected = teacher_forced_log_probs(model, source[row], int(lengths[row]), hyp.tokens)
            torch.testing.assert_close(torch.tensor(hyp.positional_scores), expected, atol=1e-5, rtol=0)
            assert not set(hyp.tokens) & set(BANNED)
    one = run(model, source, lengths, sampling(seed=1, nbest=1, temperature=2.0, top_p=0.9))
    assert all(hyps[0].tokens in {h.tokens for h in many} for hyps, many in zip(one, found))  # sample 0, with nbest 1 or 5


def test_sampling_keeps_to_the_length_limits_and_never_draws_banned_tokens():
    bias = torch.zeros(VOCAB.size).index_fill(0, torch.tensor([VOCAB.eos_idx]), -50.0)
    bias[list(BANNED)] = 50.0  # banned tokens would take all the mass if they were allowed
    model = bias_logits(tiny_model(max_seq_len=14), bias)
    source, lengths = source_batch([3, 6, 14])
    found = run(model, source, lengths, sampling(max_len_a=0.5, max_len_b=3, nbest=2, temperature=5.0))
    assert [[len(h.tokens) for h in hyps] for hyps in found] == [[4, 4], [6, 6], [10, 10]]
    assert not {token for hyps in found for h in hyps for token in h.tokens} & set(BANNED)


def evenly_spread(count):
    """`count` uniform numbers at the centres of equal bins: a draw by inverse CDF then hits each token in
    proportion to its probability, to within one bin."""
    return (torch.arange(count, dtype=torch.float32) + 0.5) / count


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0), (1.0, 5, 1.0),
                                                     (1.0, 0, 0.6), (1.5, 8, 0.7)])
def test_draws_follow_the_tempered_truncated_distribution(temperature, top_k, top_p):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(VOCAB.size, generator=generator) * 2
    logits[list(BANNED)] = -torch.inf
    lprobs = torch.log_softmax(logits, dim=-1)
    # The distribution written out: tempered, the top k, then the nucleus of mass top_p, renormalised each time.
    expected = torch.softmax(lprobs / temperature, dim=-1)
    ranked = expected.argsort(descending=True)
    keep = ranked[: top_k] if top_k else ranked[: (expected > 0).sum()]
    kept = expected[keep] / expected[keep].sum()
    keep = keep[: int((kept.cumsum(0) - kept < top_p).sum())]
    expected = torch.zeros_like(expected).index_copy(0, keep, expected[keep]) / expected[keep].sum()
    count = 20_000
    tokens = draw_tokens(lprobs.expand(count, -1), evenly_spread(count), temperature, top_k, top_p)
    assert set(tokens.tolist()) <= set(keep.tolist())  # within the top k and the nucleus; never a banned token
    frequencies = torch.bincount(tokens, minlength=VOCAB.size).float() / count
    torch.testing.assert_close(frequencies, expected, atol=2 / count, rtol=0)


def test_a_draw_at_the_top_of_the_unit_interval_takes_the_last_possible_token():
    lprobs = torch.log(torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    assert draw_tokens(lprobs, torch.tensor([1.0 - 1e-9]), 1.0, 0, 1.0).tolist() == [1]
    assert draw_tokens(lprobs, torch.tensor([0.0]), 1.0, 0, 1.0).tolist() == [0]
