"""Generator stages: reading, shuffling, sharding, budgeted batching."""

import random

import pytest

from fs2mini.errors import UserError
from fs2mini.pipeline import (Skipped, batch_by_max_tokens, chunk, raw_line_chunks_in_step, read_text, shard,
                              shuffle_window)


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


def test_two_files_are_read_in_step_and_different_lengths_name_both_counts(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(b"1\n2\n3\n4\n5")  # a last line without its line break counts
    second.write_bytes(b"one\ntwo\nthree\nfour\nfive\n")
    assert list(raw_line_chunks_in_step((first, second), 2, ("A", "B"))) == [
        (1, [b"1\n", b"2\n"], [b"one\n", b"two\n"]), (3, [b"3\n", b"4\n"], [b"three\n", b"four\n"]), (5, [b"5"], [b"five\n"])]
    second.write_bytes(b"one\ntwo\nthree\n")
    for size in (2, 3, 100):  # the shorter ends inside a chunk, at its end, or both fit in one
        with pytest.raises(UserError, match="^A has 5 lines but B has 3; expected aligned files, one sentence per line$"):
            list(raw_line_chunks_in_step((first, second), size, ("A", "B")))
        with pytest.raises(UserError, match="^B has 3 lines but A has 5;"):
            list(raw_line_chunks_in_step((second, first), size, ("B", "A")))


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


def test_batches_keep_a_multiple_of_the_batch_size_multiple_where_the_budget_allows():
    rng = random.Random(1)
    sizes = sorted(rng.randint(1, 100) for _ in range(700))
    batches = batch_by_max_tokens(sizes, range(len(sizes)), 512, Skipped(), batch_size_multiple=8)
    assert [i for b in batches for i in b] == list(range(len(sizes)))
    for batch in batches:
        assert len(batch) * max(sizes[i] for i in batch) <= 512
    roomy = [b for b in batches if max(sizes[i] for i in b) <= 32]  # room for 16 items: never cut short but at the end
    assert len(roomy) >= 10 and all(len(b) % 8 == 0 for b in roomy[:-1])
    plain = batch_by_max_tokens(sizes, range(len(sizes)), 512, Skipped())
    assert sum(len(b) % 8 == 0 for b in batches) > 2 * sum(len(b) % 8 == 0 for b in plain)
