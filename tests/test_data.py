"""Batches: determinism per (seed, epoch), sharding, token budget, padding layout."""

from pathlib import Path

import torch

from fs2mini.corpus import TsvCorpus
from fs2mini.data import DataConfig, Seq2SeqBatches, collate
from fs2mini.tokenizer import EOS_ID, PAD_ID


def make_batches(tsv: Path, tokenizer, seed=0, rank=0, world_size=1, max_tokens=256, shuffle=True, **shape):
    cfg = DataConfig(corpus=TsvCorpus(path=tsv, valid_percent=3.0, test_percent=3.0), max_tokens=max_tokens, pool_size=500,
                     **shape)
    return Seq2SeqBatches(cfg, "train", tokenizer, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size)


def rows(batches):
    """Every (source, target_output) row of a list of batches, without padding."""
    out = []
    for b in batches:
        for i in range(b.source.size(0)):
            out.append((tuple(b.source[i, : b.source_lengths[i]].tolist()), tuple(t for t in b.target_output[i].tolist() if t != PAD_ID)))
    return out


def test_same_seed_and_epoch_give_identical_batches_and_epochs_differ(reversal_tsv, reversal_tokenizer):
    a = make_batches(reversal_tsv, reversal_tokenizer, seed=1)
    b = make_batches(reversal_tsv, reversal_tokenizer, seed=1)
    epoch0, epoch1 = list(a), list(a)  # re-iterable: each iteration is the next epoch
    assert rows(epoch0) == rows(list(b.iter_epoch(0)))
    assert rows(epoch1) == rows(list(b.iter_epoch(1)))
    assert rows(epoch0) != rows(epoch1)
    assert sorted(rows(epoch0)) == sorted(rows(epoch1))


def test_shards_are_disjoint_and_cover_the_epoch(reversal_tsv, reversal_tokenizer):
    full = rows(make_batches(reversal_tsv, reversal_tokenizer).iter_epoch(0))
    shards = [rows(make_batches(reversal_tsv, reversal_tokenizer, rank=r, world_size=3).iter_epoch(0)) for r in range(3)]
    assert sorted(r for s in shards for r in s) == sorted(full)
    assert sum(map(len, shards)) == len(full)


def test_max_tokens_budget_counts_padding_and_padding_is_small(reversal_tsv, reversal_tokenizer):
    batches = list(make_batches(reversal_tsv, reversal_tokenizer, max_tokens=200).iter_epoch(0))
    for b in batches:
        assert b.source.size(0) * max(b.source.size(1), b.target_input.size(1)) <= 200
    padding = sum(b.padding_fraction for b in batches) / len(batches)
    assert padding < 0.15


def test_length_and_batch_size_multiples_shape_batches_without_changing_the_epoch(reversal_tsv, reversal_tokenizer):
    """Every length a multiple of 8 and most batch sizes a multiple of 4, within the budget counting that padding;
    the epoch holds the same pairs, and the extra padding changes no loss (so no mask misses it)."""
    from fs2mini.data import collate_rows, Rows
    from fs2mini.model import ModelConfig, build_model
    from fs2mini.task import Seq2Seq

    plain = list(make_batches(reversal_tsv, reversal_tokenizer, max_tokens=200).iter_epoch(0))
    shaped = list(make_batches(reversal_tsv, reversal_tokenizer, max_tokens=200, length_multiple=8,
                               batch_size_multiple=4).iter_epoch(0))
    assert sorted(rows(shaped)) == sorted(rows(plain))
    for b in shaped:
        assert b.source.size(1) % 8 == 0 and b.target_input.size(1) % 8 == 0
        assert b.source.size(0) * max(b.source.size(1), b.target_input.size(1)) <= 200
    assert sum(b.source.size(0) % 4 == 0 for b in shaped) >= len(shaped) - 3  # the pools' last batches may be short

    examples = [([4, 5, 6, EOS_ID], [EOS_ID, 9, 7, EOS_ID]), ([4, 5, EOS_ID], [EOS_ID, 9, 7, 8, 8, EOS_ID])]
    sources, targets = Rows.from_lists([s for s, _ in examples]), Rows.from_lists([t for _, t in examples])
    narrow, wide = (collate_rows(sources, targets, torch.arange(2), PAD_ID, multiple) for multiple in (1, 8))
    assert (narrow.source.size(1), wide.source.size(1), narrow.target_input.size(1), wide.target_input.size(1)) == (4, 8, 5, 8)
    assert wide.num_target_tokens == narrow.num_target_tokens
    torch.manual_seed(0)
    model = build_model(ModelConfig(model_dim=16, num_encoder_layers=1, num_decoder_layers=1, num_encoder_attn_heads=2,
                                    num_decoder_attn_heads=2, ffn_inner_dim=32, dropout_p=0.0),
                        reversal_tokenizer.vocab_info).eval()
    task = Seq2Seq(0.1, pad_idx=PAD_ID)
    torch.testing.assert_close(task.compute_loss(model, wide)[0], task.compute_loss(model, narrow)[0])


def test_collate_pads_and_shifts_targets():
    batch = collate([([4, 5, 6, EOS_ID], [EOS_ID, 9, 7, EOS_ID]), ([4, 5, EOS_ID], [EOS_ID, 9, 7, 8, 8, EOS_ID])], PAD_ID)
    assert batch.source.tolist() == [[4, 5, 6, EOS_ID], [4, 5, EOS_ID, PAD_ID]]
    assert batch.source_lengths.tolist() == [4, 3]
    assert batch.target_input.tolist() == [[EOS_ID, 9, 7, PAD_ID, PAD_ID], [EOS_ID, 9, 7, 8, 8]]
    assert batch.target_output.tolist() == [[9, 7, EOS_ID, PAD_ID, PAD_ID], [9, 7, 8, 8, EOS_ID]]
    assert batch.num_target_tokens == 8
    assert batch.source.dtype == torch.long


def test_length_order_pads_less_than_sorting_by_the_longer_side():
    import random

    from fs2mini.data import length_order
    from fs2mini.pipeline import Skipped, batch_by_max_tokens

    rng = random.Random(0)
    lengths = [(n, max(1, n + rng.randint(-8, 8))) for n in (rng.randint(3, 60) for _ in range(3000))]
    examples = [([4] * s, [EOS_ID] * (t + 1)) for s, t in lengths]
    source_lengths, target_lengths = torch.tensor([s for s, _ in lengths]), torch.tensor([t for _, t in lengths])
    sizes = torch.maximum(source_lengths, target_lengths).tolist()

    def padding(key) -> float:
        order = torch.sort(key, stable=True).indices.tolist()
        batches = [collate([examples[i] for i in b], PAD_ID) for b in batch_by_max_tokens(sizes, order, 512, Skipped())]
        assert sum(b.source.size(0) for b in batches) == len(examples)
        return sum(b.padding_fraction * (b.source.numel() + b.target_input.numel()) for b in batches) / sum(
            b.source.numel() + b.target_input.numel() for b in batches)

    assert padding(length_order(source_lengths, target_lengths)) < 0.75 * padding(torch.tensor(sizes))


def test_encode_rows_matches_the_tokenizer_layout(reversal_tokenizer):
    from fs2mini.data import Rows, encode_rows

    tok = reversal_tokenizer
    lang = tok.langs[0]
    texts = ["a b c", "c", "b a b a"]
    for expected, prefix in ((tok.encode_source(texts, lang), [tok.lang_ids[lang]]), (tok.encode_target(texts, lang), tok.target_prefix(lang))):
        rows = encode_rows(tok, texts, prefix)
        assert [rows.tokens[s : s + n].tolist() for s, n in zip(rows.starts.tolist(), rows.lengths.tolist())] == expected
        assert rows.padded(torch.tensor([1, 0]), PAD_ID).tolist() == [expected[1] + [PAD_ID] * (len(expected[0]) - len(expected[1])), expected[0]]
    assert Rows.from_lists([[5, 6], [7]], [1], [3]).tokens.tolist() == [1, 5, 6, 3, 1, 7, 3]


def test_cached_corpus_gives_the_same_epochs_and_skips_as_a_fresh_read(tmp_path, reversal_tokenizer):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("".join(f"{'a b ' * (i % 7)}c\t{'b ' * (i % 5)}a\n" for i in range(300)) + "no tab\n")
    cached = make_batches(tsv, reversal_tokenizer, seed=2)
    epochs = [rows(cached) for _ in range(3)]  # epochs 1 and 2 reuse the pairs read in epoch 0
    for epoch in range(3):
        fresh = make_batches(tsv, reversal_tokenizer, seed=2)
        assert rows(fresh.iter_epoch(epoch)) == epochs[epoch]
        assert fresh.skipped == cached.skipped == {"no tab": 1}
        assert fresh.skipped.locations == cached.skipped.locations == {"no tab": [f"{tsv}:301"]}
    assert rows(cached.iter_epoch(1)) == epochs[1]
