"""Prepared corpora: the cache holds exactly what encoding the text gives, is reused, and is never trusted
when the corpus changed or the cache is damaged; weighted and tagged corpora; subword regularization."""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fs2mini import prepared as prepared_module
from fs2mini.corpus import ParallelTextCorpus, TsvCorpus, read_pairs
from fs2mini.data import DataConfig, Seq2SeqBatches, corpus_probabilities
from fs2mini.errors import UserError
from fs2mini.pipeline import Skipped
from fs2mini.prepared import open_or_prepare
from fs2mini.tokenizer import PAD_ID, TokenizerConfig, load_or_train_tokenizer
from fs2mini.train import main
from synthetic import write_reversal_tsv


def rows(batches):
    """Every (source, target_output) row of a list of batches, without padding."""
    out = []
    for b in batches:
        for i in range(b.source.size(0)):
            out.append((tuple(b.source[i, : b.source_lengths[i]].tolist()),
                        tuple(t for t in b.target_output[i].tolist() if t != PAD_ID)))
    return out


def data_config(corpus, cache: Path, **changes) -> DataConfig:
    return DataConfig(corpus=corpus, max_tokens=256, pool_size=500, cache_dir=cache, **changes)


@pytest.fixture()
def corpus(tmp_path):
    return TsvCorpus(path=write_reversal_tsv(tmp_path / "corpus.tsv", 1200, seed=3), valid_percent=5.0, test_percent=5.0)


def test_batches_hold_exactly_the_encoded_text_and_a_second_run_reuses_the_cache(corpus, reversal_tokenizer, tmp_path, capsys):
    cfg = data_config(corpus, tmp_path / "cache")
    epoch = rows(Seq2SeqBatches(cfg, "train", reversal_tokenizer, seed=1, shuffle=True).iter_epoch(0))
    assert "prepared" in capsys.readouterr().err
    pairs = list(read_pairs(corpus, "train", Skipped()))
    expected = zip(reversal_tokenizer.encode_source([s for s, _ in pairs], "eng"),
                   reversal_tokenizer.encode_target([t for _, t in pairs], "fra"))
    assert sorted(epoch) == sorted((tuple(s), tuple(t[1:])) for s, t in expected)
    again = Seq2SeqBatches(cfg, "train", reversal_tokenizer, seed=1, shuffle=True)
    assert rows(again.iter_epoch(0)) == epoch
    assert "prepar" not in capsys.readouterr().err  # opened, not prepared again
    assert again.text_pairs(3) == pairs[:3]


def test_skipping_batches_of_an_epoch_gives_the_rest_of_it(corpus, reversal_tokenizer, tmp_path):
    batches = Seq2SeqBatches(data_config(corpus, tmp_path / "cache"), "train", reversal_tokenizer, seed=4, shuffle=True)
    whole = rows(batches.iter_epoch(2))
    after = list(batches.iter_epoch(2, skip=5))
    assert rows(after) == rows(list(Seq2SeqBatches(data_config(corpus, tmp_path / "cache"), "train", reversal_tokenizer,
                                                   seed=4, shuffle=True).iter_epoch(2))[5:])
    assert len(rows(after)) < len(whole)


@pytest.mark.parametrize("kind", ["tsv", "text"])
def test_worker_processes_prepare_the_same_arrays_and_skips_as_one_process(corpus, reversal_tokenizer, tmp_path, kind):
    lines = corpus.path.read_text(encoding="utf-8").splitlines()
    lines[150:150] = ["no tab here", "\tempty source"] * 3  # malformed lines in the second and later chunks
    if kind == "tsv":
        corpus.path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        (tmp_path / "text").mkdir()
        for index, lang in enumerate(("eng", "fra")):
            (tmp_path / "text" / f"train.{lang}").write_text(
                "".join((line.split("\t") + [""])[index] + "\n" for line in lines), encoding="utf-8")
        corpus = ParallelTextCorpus(dir=tmp_path / "text")
    inline = open_or_prepare(corpus, "train", reversal_tokenizer, tmp_path / "one", workers=1, chunk_pairs=10_000)
    pooled = open_or_prepare(corpus, "train", reversal_tokenizer, tmp_path / "two", workers=2, chunk_pairs=97)
    for name in sorted(path.name for path in inline.directory.iterdir()):
        if name != "meta.json":
            assert (inline.directory / name).read_bytes() == (pooled.directory / name).read_bytes(), name
    assert len(pooled) == len(inline) > 1000
    assert pooled.skipped == inline.skipped and sum(inline.skipped["counts"].values()) == 6
    assert inline.skipped["locations"] == {reason: where[:5] for reason, where in inline.skipped["locations"].items()}


def test_a_changed_corpus_file_is_prepared_again(tmp_path, reversal_tokenizer):
    path = write_reversal_tsv(tmp_path / "c.tsv", 300, seed=1)
    corpus = TsvCorpus(path=path, valid_percent=0, test_percent=0)
    first = open_or_prepare(corpus, "train", reversal_tokenizer, tmp_path / "cache")
    write_reversal_tsv(path, 300, seed=2)  # same name, same size class, other content
    second = open_or_prepare(corpus, "train", reversal_tokenizer, tmp_path / "cache")
    assert first.directory != second.directory
    assert second.pairs(1) == list(read_pairs(corpus, "train", Skipped()))[:1] != first.pairs(1)


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_a_damaged_cache_is_detected_and_prepared_again(corpus, reversal_tokenizer, tmp_path, capsys, damage):
    good = open_or_prepare(corpus, "train", reversal_tokenizer, tmp_path / "cache")
    expected = good.pairs()
    ids = good.directory / "source.ids"
    if damage == "truncate":
        os.truncate(ids, ids.stat().st_size - 2)
    elif damage == "flip":
        data = bytearray(ids.read_bytes())
        data[len(data) // 2] ^= 0xFF
        ids.write_bytes(bytes(data))
    else:
        (good.directory / "meta.json").write_text("{not json")
    capsys.readouterr()
    again = open_or_prepare(corpus, "train", reversal_tokenizer, tmp_path / "cache")
    assert "is damaged" in capsys.readouterr().err
    assert again.pairs() == expected and prepared_module.verify(again.directory) is None


def test_a_full_disk_leaves_no_cache_and_says_so_in_one_line(corpus, reversal_tokenizer, tmp_path, monkeypatch):
    def full(self, encoded):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepared_module._Writer, "append", full)
    with pytest.raises(UserError, match=r"^cannot prepare .*corpus.tsv \(train\) in .*cache \(--data.cache-dir\): "
                                        r"No space left on device; nothing was cached"):
        open_or_prepare(corpus, "train", reversal_tokenizer, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def _limited_file_size(limit):
    """preexec_fn: writes beyond `limit` bytes fail with EFBIG, as writes to a full disk fail (root included)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (else the kernel kills the writer)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_real_failed_write_names_its_reason_and_a_rerun_prepares(reversal_tsv, tmp_path):
    """`python -m fs2mini.prepare` whose writes fail past 16 kB, as on a full disk: numpy's `tofile` said only "3399
    requested and 50 written"; the line must give the system's reason, and leave nothing that a rerun trusts."""
    cache = tmp_path / "prepared"
    flags = ["--output-dir", str(tmp_path / "run"), "data.corpus:tsv", "--data.corpus.path", str(reversal_tsv),
             "--tokenizer.vocab-size", "28", "--tokenizer.cache-dir", str(tmp_path / "spm"), "--data.cache-dir", str(cache)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    # The tokenizer first, without the limit: this test is about the data cache's writes.
    subprocess.run([sys.executable, "-m", "fs2mini.train", "check", "tokenizer", *flags], check=True, capture_output=True,
                   timeout=300, env=env)
    command = [sys.executable, "-m", "fs2mini.prepare", *flags]
    full = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=_limited_file_size(16_000),
                          env=env)
    errors = [line for line in full.stderr.splitlines() if not line.startswith("preparing ")]
    assert full.returncode == 2 and len(errors) == 1, full.stderr
    assert errors[0].startswith(f"error: cannot prepare {reversal_tsv} (train) in {cache} (--data.cache-dir): "
                                "File too large; nothing was cached"), errors
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "prepare: OK" in again.stdout, again.stderr
    splits = [p for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert len(splits) == 3 and all(prepared_module.verify(p) is None for p in splits)


def test_a_full_disk_at_the_flush_leaves_no_cache(corpus, reversal_tokenizer, tmp_path, monkeypatch):
    """Where the file system reports a full disk only when the data reaches it (fsync), as delayed allocation does."""
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepared_module.os, "fsync", full)
    with pytest.raises(UserError, match=r"^cannot prepare .*: No space left on device; nothing was cached"):
        open_or_prepare(corpus, "train", reversal_tokenizer, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    assert open_or_prepare(corpus, "train", reversal_tokenizer, tmp_path / "cache").pairs(2) == \
        list(read_pairs(corpus, "train", Skipped()))[:2]


def test_a_killed_preparation_leaves_nothing_that_is_used(corpus, reversal_tokenizer, tmp_path):
    cache = tmp_path / "cache"
    done = open_or_prepare(corpus, "train", reversal_tokenizer, cache)
    leftover = cache / f".{done.directory.name}.12345.tmp"  # what a SIGKILL in the middle leaves
    done.directory.rename(leftover)
    (leftover / "meta.json").unlink()
    again = open_or_prepare(corpus, "train", reversal_tokenizer, cache)
    assert not leftover.exists() and prepared_module.verify(again.directory) is None


def test_strict_mode_stops_at_a_malformed_line_even_when_the_cache_was_prepared_leniently(tmp_path, reversal_tokenizer):
    path = tmp_path / "bad.tsv"
    path.write_text("a b\tb a\nno tab here\nc d\td c\n", encoding="utf-8")
    corpus = TsvCorpus(path=path, valid_percent=0, test_percent=0)
    lenient = Seq2SeqBatches(data_config(corpus, tmp_path / "cache"), "train", reversal_tokenizer, seed=0, shuffle=False)
    list(lenient.iter_epoch(0))
    assert lenient.skipped["no tab"] == 1 and lenient.skipped.locations["no tab"] == [f"{path}:2"]
    strict = Seq2SeqBatches(data_config(corpus, tmp_path / "cache", strict=True), "train", reversal_tokenizer, seed=0,
                            shuffle=False)
    with pytest.raises(UserError, match=r"bad.tsv:2: no tab"):
        list(strict.iter_epoch(0))


def test_corpus_probabilities_mix_corpora_of_one_direction_by_weight_and_directions_by_temperature():
    # One corpus per direction: what sampling_probabilities gives.
    assert corpus_probabilities([("a", "b"), ("a", "c")], [300, 100], [1, 1], 1.0) == pytest.approx([0.75, 0.25])
    # Two corpora of a→b (weights 1 and 2) and a→c: a→b has weighted size 100 + 2·100 = 300.
    probabilities = corpus_probabilities([("a", "b"), ("a", "b"), ("a", "c")], [100, 100, 300], [1, 2, 1], 1.0)
    assert probabilities == pytest.approx([0.5 / 3, 1 / 3, 0.5])


def test_weighted_and_tagged_corpora_of_one_direction(tmp_path):
    genuine = TsvCorpus(path=write_reversal_tsv(tmp_path / "genuine.tsv", 600, seed=1), valid_percent=5, test_percent=0)
    synthetic = TsvCorpus(path=write_reversal_tsv(tmp_path / "bt.tsv", 600, seed=2), valid_percent=0, test_percent=0,
                          weight=3.0, tag="<BT>")
    cfg = data_config(genuine, tmp_path / "cache", more_corpora=(synthetic,))
    sentences = [s for corpus in cfg.corpora for pair in read_pairs(corpus, "train", Skipped()) for s in pair]
    tokenizer = load_or_train_tokenizer(TokenizerConfig(vocab_size=30, cache_dir=tmp_path / "spm"), sentences,
                                        ["eng", "fra"], tags=["<BT>"])
    tag, eng = tokenizer.piece_id("<BT>"), tokenizer.lang_ids["eng"]
    assert tag is not None and tag not in (eng, tokenizer.lang_ids["fra"])
    starts = Counter()
    for batch in Seq2SeqBatches(cfg, "train", tokenizer, seed=0, shuffle=True).iter_epoch(0):
        assert batch.source[:, 0].eq(eng).all()
        starts[bool(batch.source[0, 1] == tag)] += batch.source.size(0)
        assert batch.source[:, 1].eq(tag).all() or not batch.source[:, 1].eq(tag).any()  # one corpus per batch
    # Weight 3: the tagged corpus gives about three times the genuine one's pairs; the epoch ends after one pass
    # over the genuine corpus (the largest in weighted passes).
    assert 2.2 < starts[True] / starts[False] < 4.0
    valid = Seq2SeqBatches(cfg, "valid", tokenizer, seed=0, shuffle=False)
    assert valid.corpora == (genuine,)  # only a direction's first corpus is validated


def test_a_tag_the_tokenizer_lacks_is_refused_naming_its_flag(tmp_path, reversal_tokenizer):
    genuine = TsvCorpus(path=write_reversal_tsv(tmp_path / "g.tsv", 100, seed=1))
    cfg = data_config(genuine, tmp_path / "cache", more_corpora=(dataclasses.replace(genuine, tag="<BT>"),))
    with pytest.raises(UserError, match=r"^--data.more-corpora.0.tag '<BT>' is not a token of tokenizer"):
        Seq2SeqBatches(cfg, "train", reversal_tokenizer, seed=0, shuffle=True)


def test_subword_regularization_samples_training_segmentations_reproducibly(corpus, reversal_tokenizer, tmp_path):
    # (the reversal tokenizer's pieces are single letters and words; sampling splits the words)
    cfg = data_config(corpus, tmp_path / "cache", subword_alpha=0.5)
    batches = Seq2SeqBatches(cfg, "train", reversal_tokenizer, seed=1, shuffle=True)
    first, second = rows(batches.iter_epoch(0)), rows(batches.iter_epoch(1))
    assert rows(Seq2SeqBatches(cfg, "train", reversal_tokenizer, seed=1, shuffle=True).iter_epoch(0)) == first
    plain = rows(Seq2SeqBatches(data_config(corpus, tmp_path / "cache"), "train", reversal_tokenizer, seed=1,
                                shuffle=True).iter_epoch(0))
    decode = lambda rows_: sorted(reversal_tokenizer.decode(s) for s, _ in rows_)  # noqa: E731
    assert decode(first) == decode(plain) == decode(second)  # the same sentences, segmented otherwise
    assert sorted(first) != sorted(plain) and sorted(first) != sorted(second)
    valid = Seq2SeqBatches(cfg, "valid", reversal_tokenizer, seed=1, shuffle=False)
    assert rows(valid.iter_epoch(0)) == rows(Seq2SeqBatches(data_config(corpus, tmp_path / "cache"), "valid",
                                                             reversal_tokenizer, seed=1, shuffle=False).iter_epoch(0))


def test_prepare_command_caches_every_split_so_training_starts_without_preparing(tmp_path, capsys):
    from conftest import tiny_config

    corpus_path = write_reversal_tsv(tmp_path / "c.tsv", 800, seed=9)
    cfg = tiny_config(corpus_path, tmp_path / "run", tmp_path / "spm", max_steps=2)
    main(cfg, argv=["prepare"])
    out = capsys.readouterr()
    assert "prepare: OK" in out.out and out.out.count(" pairs, ") == 3  # train, valid and test
    main(cfg, argv=[])
    assert "preparing" not in capsys.readouterr().err


def test_pairs_of_an_empty_split_are_an_empty_cache_that_reads(tmp_path, reversal_tokenizer):
    corpus = TsvCorpus(path=write_reversal_tsv(tmp_path / "c.tsv", 50, seed=1), valid_percent=0, test_percent=0)
    empty = open_or_prepare(corpus, "valid", reversal_tokenizer, tmp_path / "cache")
    assert len(empty) == 0 and empty.pairs() == [] and empty.pieces(np.arange(0), "source")[0].size == 0
