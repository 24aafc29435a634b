"""Generator stages: reading, shuffling, sharding, budgeted batching."""

import random

import pytest

from fs2mini.errors import UserError
from fs2mini.pipeline import Skipped, batch_by_max_tokens, chunk, read_text, shard, shuffle_window


def test_read_text_rtrims_skips_header_and_counts_invalid_utf8(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"header\r\nfirst  \r\nbad \xff\xfe line\nlast")
    dropped = Skipped()
    assert list(read_text(path, dropped, skip_header=1)) == [(2, "first  "), (4, "last")]
    assert dropped == {"invalid utf-8": 1}
    assert dropped.locations == {"invalid utf-8": [f"{path}:3"]}


def test_read_text_missing_file_and_directory_fail_with_the_path(tmp_path):
    with pytest.raises(UserError, match="missing.txt"):
        read_text(tmp_path / "missing.txt", Skipped())
    with pytest.raises(UserError, match="is a directory"):
        read_text(tmp_path, Skipped())


def test_shuffle_window_is_a_seeded_permutation():
    items = list(range(1000))
    first = list(shuffle_window(items, 100, random.Random(3)))
    again = list(shuffle_window(items, 100, random.Random(3)))
    other = list(shuffle_window(items, 100, random.Random(4)))
    assert sorted(first) == items
    assert first == again
    assert first != other
    assert first != items


def test_shards_are_disjoint_and_complete():
    items = list(range(103))
    shards = [list(shard(items, rank, 4)) for rank in range(4)]
    assert sorted(x for s in shards for x in s) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_chunk_keeps_the_remainder():
    assert list(chunk(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_batches_respect_the_padded_token_budget_and_count_oversized_items():
    rng = random.Random(0)
    sizes = [rng.randint(1, 60) for _ in range(500)] + [300]
    dropped = Skipped()
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    batches = batch_by_max_tokens(sizes, order, 256, dropped)
    assert dropped == {"longer than max_tokens": 1}
    assert [i for b in batches for i in b] == order[:-1]
    for batch in batches:
        assert len(batch) * max(sizes[i] for i in batch) <= 256
