"""Generic, pure-Python generator stages for streaming data: read, shuffle, shard, chunk, batch.

Each stage takes an iterator and returns an iterator, so a data pipeline is ordinary function
composition that a reader can follow and a debugger can step through. Stages that drop items
record them in a `Skipped` counter (reason → count, plus the first line numbers), because nothing
may be dropped silently; in strict mode a malformed line stops the run instead.
"""

from __future__ import annotations

import codecs
import gzip
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice, zip_longest
from pathlib import Path
from typing import TypeVar

from fs2mini.errors import UserError

T = TypeVar("T")

MAX_LOCATIONS_PER_REASON = 5


class Skipped(Counter):
    """Skipped items by reason, with where the first few came from (`file:line`).

    With `strict=True`, a skip that has a location (a malformed input line) raises `UserError`
    instead; skips without one (e.g. a sentence longer than the length limit) are only counted.
    """

    def __init__(self, strict: bool = False) -> None:
        super().__init__()
        self.strict = strict
        self.locations: dict[str, list[str]] = {}

    def add(self, reason: str, location: str | None = None, count: int = 1) -> None:
        if self.strict and location is not None:
            raise UserError(f"{location}: {reason}; expected source<TAB>target lines of UTF-8 text (--data.strict)")
        if count <= 0:
            return
        self[reason] += count
        if location is not None:
            seen = self.locations.setdefault(reason, [])
            if len(seen) < MAX_LOCATIONS_PER_REASON:
                seen.append(location)

    def add_all(self, counts: Mapping[str, int], locations: Mapping[str, list[str]]) -> None:
        """Add what another reading skipped (counts by reason, and the first locations of each), as `add`
        would have while reading it: in strict mode the first located skip stops here."""
        for reason, count in counts.items():
            where = locations.get(reason, [])
            for location in where:
                self.add(reason, location)
            self.add(reason, count=count - len(where))

    def copy(self) -> Skipped:
        other = Skipped(self.strict)
        other.update(self)
        other.locations = {reason: list(where) for reason, where in self.locations.items()}
        return other

    def summary(self) -> str:
        """`no tab: 3 (a.tsv:5, a.tsv:9, a.tsv:12)` for every reason, most frequent first."""
        parts = []
        for reason, count in self.most_common():
            where = self.locations.get(reason)
            parts.append(f"{reason}: {count}" + (f" ({', '.join(where)}{', ...' if count > len(where) else ''})" if where else ""))
        return "; ".join(parts)


INNER_LINE_BREAK = re.compile("[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
"""Characters that some readers (str.splitlines, universal newlines) take for the end of a line."""


def text_line(raw: bytes, where: str, first: bool) -> bytes:
    """One line of bytes read up to its b"\n", without its LF or CRLF ending (and a first line's UTF-8 BOM).

    Files that are not UTF-8 at all stop here with what was found (a UTF-16 or UTF-32 byte-order
    mark or NUL bytes; CR-only line endings), rather than as a vocabulary-size error or a
    one-line corpus later on."""
    if first:
        for bom, encoding in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                              (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
            if raw.startswith(bom) and b"\x00" in raw:  # (FF FE alone may start a line of Latin-1 bytes)
                raise UserError(f"{where} is {encoding} text (byte-order mark {bom.hex(' ').upper()}); expected UTF-8 "
                                f"(convert it: iconv -f {encoding} -t UTF-8)")
        raw = raw.removeprefix(codecs.BOM_UTF8)
    if b"\x00" in raw:
        raise UserError(f"{where} contains NUL bytes, as UTF-16 text does; expected UTF-8 (convert it: iconv -f UTF-16 -t UTF-8)")
    raw = raw.removesuffix(b"\n").removesuffix(b"\r")
    if first and raw.count(b"\r") > 1:
        raise UserError(f"{where} ends its lines with CR (\\r) only; expected LF or CRLF line endings "
                        "(convert it: tr '\\r' '\\n')")
    return raw


def read_text(path: Path, skipped: Skipped, *, skip_header: int = 0) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file without its line ending (LF or CRLF), after `skip_header` lines.

    Only the line ending is trimmed: trailing tabs are data in a TSV file (an empty last column).

    Lines that are not valid UTF-8 are skipped and counted instead of failing the whole corpus:
    one bad byte in a million-line crawl should not stop a run. A path ending in .gz is decompressed
    as it is read, never whole, since crawled corpora are large. The file is opened eagerly so a missing
    file fails when the pipeline is built, not at the first batch.
    """
    return usable_lines(_decode_lines(_open_text(path), path, skip_header), path, skipped)


def usable_lines(lines: Iterator[tuple[int, str, str | None]], path: Path, skipped: Skipped,
                 ) -> Iterator[tuple[int, str]]:
    """The lines without a problem; the others counted in `skipped` at `path:line`."""
    for line_number, line, problem in lines:
        if problem is None:
            yield line_number, line
        else:
            skipped.add(problem, f"{path}:{line_number}")


GZIP_MAGIC = b"\x1f\x8b"
"""The first two bytes of every gzip file."""


def _decode_lines(handle, path: Path, skip_header: int) -> Iterator[tuple[int, str, str | None]]:
    with handle:
        yield from decode_raw_lines(_raw_lines(handle, path), 1, path, skip_header)


def raw_line_chunks(path: Path, size: int) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the first line, the next `size` lines as undecoded bytes) of a text file (.gz too), for
    worker processes to decode with `decode_raw_lines` while this one only reads."""
    return _raw_line_chunks(_open_text(path), path, size)


def _open_text(path: Path):
    """The file opened for reading bytes, decompressing a .gz one; one sentence if it cannot be."""
    if path.is_dir():
        raise UserError(f"{path} is a directory; expected a text file")
    try:
        handle = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
    except OSError as err:
        raise UserError(f"cannot open {path}: {err.strerror}") from None
    return handle


def _raw_line_chunks(handle, path: Path, size: int) -> Iterator[tuple[int, list[bytes]]]:
    with handle:
        lines = _raw_lines(handle, path)
        first = 1
        while block := list(islice(lines, size)):
            yield first, block
            first += len(block)


def raw_line_chunks_in_step(paths: tuple[Path, Path], size: int, names: tuple[str, str]
                            ) -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """(number of the first line, the next `size` lines of the first file, as many of the second) of two files of
    aligned lines read together, so that line i of one only ever meets line i of the other, however each is decoded
    or filtered later. Files of different lengths stop, once the shorter ends, with one sentence naming both by
    `names` (e.g. `--source data/test.src`) and their line counts."""
    firsts, seconds = raw_line_chunks(paths[0], size), raw_line_chunks(paths[1], size)
    for first_chunk, second_chunk in zip_longest(firsts, seconds):
        first_line = (first_chunk or second_chunk)[0]
        blocks = (first_chunk[1] if first_chunk else [], second_chunk[1] if second_chunk else [])
        if len(blocks[0]) != len(blocks[1]):
            counts = [first_line - 1 + len(block) + sum(len(rest) for _, rest in chunks)  # (one of them is at its end)
                      for block, chunks in zip(blocks, (firsts, seconds))]
            raise UserError(f"{names[0]} has {counts[0]} lines but {names[1]} has {counts[1]}; "
                            "expected aligned files, one sentence per line")
        yield first_line, blocks[0], blocks[1]


def decode_raw_lines(raw_lines: Iterable[bytes], first_line: int, path: Path,
                     skip_header: int) -> Iterator[tuple[int, str, str | None]]:
    """(line number, line, problem) of lines `first_line`, `first_line + 1`, ... of `path` read as bytes, where
    `problem` says why the line cannot be used (not UTF-8, a line break character inside; the line is then "")
    or is None. Nothing is dropped here, so that two files of aligned sentences lose only the pair with a
    bad line, not the alignment of every later line."""
    where = str(path)
    for line_number, raw in enumerate(raw_lines, start=first_line):
        if line_number == 1 and raw.startswith(GZIP_MAGIC) and path.suffix != ".gz":
            raise UserError(f"{path} is gzip-compressed but its name does not end in .gz; expected UTF-8 text "
                            f"(rename it to {path.name}.gz)")
        raw = text_line(raw, where, line_number == 1)
        if line_number <= skip_header:
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield line_number, "", "invalid utf-8"
            continue
        if INNER_LINE_BREAK.search(line):
            yield line_number, "", "line break character (e.g. a stray \\r) inside the line"
            continue
        yield line_number, line, None


def _raw_lines(handle, path: Path) -> Iterator[bytes]:
    """The lines of an open file as bytes; a .gz file that stops early or is no gzip stops with its name."""
    try:
        for raw in handle:
            yield raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise UserError(f"{path} is truncated or not a valid gzip file ({err}); expected a complete .gz file") from None


def shuffle_window(items: Iterable[T], window: int, rng: random.Random) -> Iterator[T]:
    """Shuffle a stream with a bounded buffer: exact uniform shuffle when the window holds it all."""
    buffer: list[T] = []
    for item in items:
        if len(buffer) < window:
            buffer.append(item)
            continue
        index = rng.randrange(window)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def shard(items: Iterable[T], rank: int, world_size: int) -> Iterator[T]:
    """Every `world_size`-th item starting at `rank`: shards are disjoint and cover the stream."""
    for index, item in enumerate(items):
        if index % world_size == rank:
            yield item


def chunk(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    current: list[T] = []
    for item in items:
        current.append(item)
        if len(current) == size:
            yield current
            current = []
    if current:
        yield current


def batch_by_max_tokens(sizes: Sequence[int], order: Iterable[int], max_tokens: int, skipped: Skipped,
                        batch_size_multiple: int = 1) -> list[list[int]]:
    """Cut the items `order` lists (indices into `sizes`, already sorted) into batches within budget.

    The budget counts padding, like fairseq's `--max-tokens`: a batch costs
    `len(batch) * max(sizes[i] for i in batch)`. Sorting by length first is what makes padding
    small. An item larger than the whole budget is dropped and counted. Returns lists of indices.

    With `batch_size_multiple` m, a batch the budget closes keeps a multiple of m items and the rest open the
    next batch (as fairseq's `--required-batch-size-multiple`); a batch the budget allows fewer than m items
    stays as it is, and so does the last one. Why: fewer distinct batch shapes (`fs2mini.data.LOW_PRECISION_LENGTH_MULTIPLE`).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    current_max = 0
    for index in order:
        size = sizes[index]
        if size > max_tokens:
            skipped.add("longer than max_tokens")
            continue
        new_max = size if size > current_max else current_max
        if current and new_max * (len(current) + 1) > max_tokens:
            kept = len(current) - len(current) % batch_size_multiple if len(current) >= batch_size_multiple else len(current)
            batches.append(current[:kept])
            current = current[kept:]
            new_max = max([size, *(sizes[i] for i in current)])
            if current and new_max * (len(current) + 1) > max_tokens:  # the rest and this item do not fit together
                batches.append(current)
                current, new_max = [], size
        current.append(index)
        current_max = new_max
    if current:
        batches.append(current)
    return batches
