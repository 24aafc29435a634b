"""Corpora as real data comes: gzip-compressed files, TSV files per split, and fairseq/Moses-style
aligned text files (`train.eng` + `train.fra`), all read as streams."""

import gzip

import pytest

from fs2mini.config import TrainConfig
from fs2mini.corpus import (ParallelTextCorpus, TsvCorpus, check_corpus_config, corpus_files, corpus_fingerprint,
                            describe_corpus, read_pairs)
from fs2mini.errors import UserError
from fs2mini.pipeline import Skipped, read_text
from fs2mini.train import parse_config

TEXT = b"\xef\xbb\xbfhello\tbonjour\r\nbad \xff\tline\ncat\tchat\n"


def test_gzip_file_reads_as_its_plain_text_does(tmp_path):
    plain, packed = tmp_path / "a.tsv", tmp_path / "a.tsv.gz"
    plain.write_bytes(TEXT)
    packed.write_bytes(gzip.compress(TEXT))
    plain_skipped, packed_skipped = Skipped(), Skipped()
    assert list(read_text(packed, packed_skipped)) == list(read_text(plain, plain_skipped)) == [
        (1, "hello\tbonjour"), (3, "cat\tchat")]
    assert packed_skipped == plain_skipped == {"invalid utf-8": 1}


@pytest.mark.parametrize("damage", [lambda data: data[:-12], lambda data: b"plain text, not gzip\n"])
def test_truncated_or_fake_gzip_names_the_file(tmp_path, damage):
    path = tmp_path / "a.tsv.gz"
    path.write_bytes(damage(gzip.compress(TEXT * 1000)))
    with pytest.raises(UserError, match=rf"^{path} is truncated or not a valid gzip file \(.*\); expected a complete .gz file$"):
        list(read_text(path, Skipped()))


def test_gzip_data_under_a_plain_name_is_named_as_such(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_bytes(gzip.compress(TEXT))
    with pytest.raises(UserError, match=rf"{path} is gzip-compressed but its name does not end in .gz"):
        list(read_text(path, Skipped()))


def write(path, lines, compress=False):
    data = "".join(f"{line}\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_tsv_split_files_are_whole_splits_and_path_is_all_training_data(tmp_path):
    train = write(tmp_path / "train.tsv", [f"s{i}\tt{i}" for i in range(50)])
    valid = write(tmp_path / "valid.tsv.gz", ["v\tw"], compress=True)
    corpus = TsvCorpus(path=train, valid_path=valid)
    assert len(list(read_pairs(corpus, "train", Skipped()))) == 50  # nothing held out by hash
    assert list(read_pairs(corpus, "valid", Skipped())) == [("v", "w")]
    assert list(read_pairs(corpus, "test", Skipped())) == []  # no test file: no test pairs
    test = write(tmp_path / "test.tsv", ["x\ty"])
    assert list(read_pairs(TsvCorpus(path=train, test_path=test), "test", Skipped())) == [("x", "y")]
    assert corpus_files(TsvCorpus(path=train, valid_path=valid, test_path=test)) == [train, valid, test]


def test_missing_tsv_split_file_names_its_flag(tmp_path):
    corpus = TsvCorpus(path=write(tmp_path / "train.tsv", ["a\tb"]), valid_path=tmp_path / "nope.tsv")
    with pytest.raises(UserError, match=r"^--data.more-corpora.0.valid-path .*nope.tsv does not exist; expected a TSV "
                                        r"file of validation pairs"):
        read_pairs(corpus, "train", Skipped(), ("data", "more_corpora", 0))


def test_tsv_split_file_that_is_the_training_file_is_refused(tmp_path):
    train = write(tmp_path / "train.tsv", ["a\tb"])
    with pytest.raises(UserError, match=r"--data.corpus.valid-path .*: expected a file other than --data.corpus.path"):
        check_corpus_config(TsvCorpus(path=train, valid_path=train))


def test_parallel_text_pairs_line_by_line_in_order_gzip_or_not(tmp_path):
    write(tmp_path / "train.eng", [f"english {i}" for i in range(5)])
    write(tmp_path / "train.fra.gz", [f"français {i}" for i in range(5)], compress=True)
    write(tmp_path / "valid.eng", ["one"])
    write(tmp_path / "valid.fra", ["un"])
    corpus = ParallelTextCorpus(dir=tmp_path)
    assert list(read_pairs(corpus, "train", Skipped())) == [(f"english {i}", f"français {i}") for i in range(5)]
    assert list(read_pairs(corpus, "valid", Skipped())) == [("one", "un")]
    assert describe_corpus(corpus) == f"{tmp_path}/*.{{eng,fra}}"
    assert corpus_files(corpus) == [tmp_path / "train.eng", tmp_path / "train.fra.gz", tmp_path / "valid.eng",
                                    tmp_path / "valid.fra"]


def test_parallel_text_bad_line_skips_its_pair_and_keeps_the_rest_aligned(tmp_path):
    (tmp_path / "train.eng").write_bytes(b"a\nbad \xff\nc\nd\n")
    write(tmp_path / "train.fra", ["A", "B", "", "D"])
    skipped = Skipped()
    assert list(read_pairs(ParallelTextCorpus(dir=tmp_path), "train", skipped)) == [("a", "A"), ("d", "D")]
    assert skipped.summary() == (f"invalid utf-8: 1 ({tmp_path}/train.eng:2); "
                                 f"empty source or target: 1 ({tmp_path}/train.fra:3)")


@pytest.mark.parametrize("source_lines, target_lines", [(5, 3), (2, 4)])
def test_parallel_text_of_different_lengths_names_both_files_and_their_counts(tmp_path, source_lines, target_lines):
    write(tmp_path / "train.eng", ["x"] * source_lines)
    write(tmp_path / "train.fra", ["y"] * target_lines)
    with pytest.raises(UserError, match=rf"^{tmp_path}/train.eng has {source_lines} lines but {tmp_path}/train.fra has "
                                        rf"{target_lines}; expected aligned files, one sentence per line$"):
        list(read_pairs(ParallelTextCorpus(dir=tmp_path), "train", Skipped()))


def test_parallel_text_missing_or_ambiguous_files_name_the_flag_and_the_files(tmp_path):
    corpus = ParallelTextCorpus(dir=tmp_path)
    with pytest.raises(UserError, match=r"^--data.corpus.dir .* has no train.eng or train.eng.gz; expected the train "
                                        r"split as train.eng and train.fra \(--data.corpus.train-prefix\)"):
        read_pairs(corpus, "train", Skipped())
    write(tmp_path / "train.eng", ["x"])
    write(tmp_path / "train.fra", ["y"])
    assert list(read_pairs(corpus, "train", Skipped())) == [("x", "y")]  # no valid files: fine until valid is read
    with pytest.raises(UserError, match=r"has no valid.eng or valid.eng.gz; expected the valid split as valid.eng"):
        read_pairs(corpus, "valid", Skipped())
    write(tmp_path / "train.eng.gz", ["x"], compress=True)
    with pytest.raises(UserError, match=r"holds both train.eng and train.eng.gz; expected only one of them"):
        read_pairs(corpus, "train", Skipped())
    with pytest.raises(UserError, match=r"^--data.corpus.dir .*missing is not a directory; expected one holding "
                                        r"train.eng and train.fra"):
        read_pairs(ParallelTextCorpus(dir=tmp_path / "missing"), "train", Skipped())
    with pytest.raises(UserError, match=r"--data.corpus.valid-prefix train: expected a prefix other than "):
        check_corpus_config(ParallelTextCorpus(dir=tmp_path, valid_prefix="train"))


def test_fingerprint_changes_when_any_file_of_the_corpus_changes(tmp_path):
    write(tmp_path / "train.eng", ["x"])
    write(tmp_path / "train.fra", ["y"])
    corpus = ParallelTextCorpus(dir=tmp_path)
    seen = {corpus_fingerprint(corpus, "train")}
    write(tmp_path / "train.fra", ["z"])
    seen.add(corpus_fingerprint(corpus, "train"))
    write(tmp_path / "valid.eng", ["v"])
    seen.add(corpus_fingerprint(corpus, "train"))
    tsv = write(tmp_path / "train.tsv", ["a\tb"])
    valid = write(tmp_path / "valid.tsv", ["c\td"])
    seen.add(corpus_fingerprint(TsvCorpus(path=tsv, valid_path=valid), "valid"))
    write(valid, ["c\te"])
    seen.add(corpus_fingerprint(TsvCorpus(path=tsv, valid_path=valid), "valid"))
    assert len(seen) == 5


def test_cli_offers_aligned_text_as_data_corpus_text():
    cfg = parse_config(TrainConfig(), ["data.corpus:text", "--data.corpus.dir", "x", "--data.corpus.target-lang", "deu"], "")
    assert cfg.data.corpus == ParallelTextCorpus(dir=cfg.data.corpus.dir, target_lang="deu")
    assert str(cfg.data.corpus.dir) == "x"
    cfg = parse_config(TrainConfig(), ["data.corpus:tsv", "--data.corpus.valid-path", "v.tsv"], "")
    assert str(cfg.data.corpus.valid_path) == "v.tsv" and cfg.data.corpus.test_path is None
