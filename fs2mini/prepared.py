"""Prepared corpora: each split encoded once into memory-mapped token ids, reused by every later run and rank.

Holding a corpus as Python strings costs about 2 KB of memory a pair in every rank and a full
re-encoding at every start; a 10 M-pair corpus would not fit a 24 GB machine. Like fairseq's
preprocessed datasets and Hugging Face `datasets`, fs2mini instead encodes a split once, in worker
processes, into flat arrays on disk, and reads only the pairs a batch needs from them:

    CACHE_DIR/<key>-<split>/
        source.ids, target.ids          piece ids of every sentence, end to end (uint16, or int32 for big vocabularies)
        source.offsets, target.offsets  int64, pairs + 1 entries: sentence i is ids[offsets[i]:offsets[i + 1]]
        source.text, target.text        the UTF-8 text (validation translations, subword regularization)
        source.text.offsets, ...        int64 byte offsets of each sentence's text
        meta.json                       counts, size, time and CRC-32 of every file, what reading the corpus skipped

Only piece ids are stored (no language token, tag or `</s>`): the batches add those, so one cache
serves every layout of the same tokenizer. The key hashes the split's content (`corpus_fingerprint`:
the corpus's settings and the SHA-256 of its files), the tokenizer's model file and id layout, and
this format's version, so a changed corpus or tokenizer is never read from an old cache. A cache is
written into a temporary directory and renamed into place (a killed or disk-full preparation leaves
nothing that is used), verified whenever it is opened (sizes; checksums of any file written since;
a truncated or damaged one is prepared again), and prepared under a file lock, so the ranks of a run (and runs
sharing the cache) wait for one preparation instead of racing.

Arrays are opened per request (`np.memmap`) and copied out, never kept mapped: pages a long run has
read do not pile up in its resident memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from fs2mini.checkpoint import remove_partial_writes
from fs2mini.corpus import (DATA_CORPUS, Corpus, LineChunk, Split, chunk_pairs, corpus_fingerprint, describe_corpus, line_chunks,
                            read_pairs)
from fs2mini.errors import FieldPath, UserError
from fs2mini.pipeline import Skipped, chunk
from fs2mini.tokenizer import Tokenizer

FORMAT_VERSION = 2
"""Bumped whenever the layout above changes, so older caches are prepared again rather than misread."""

CHUNK_PAIRS = 4096
"""Pairs a worker encodes at a time: large enough that sending them is cheap next to encoding them."""

SIDES = ("source", "target")


@dataclass(frozen=True)
class PreparedSplit:
    """One prepared split of one corpus: pairs read by index from the arrays on disk."""

    directory: Path
    num_pairs: int
    id_dtype: str
    skipped: dict[str, Any]
    """What reading the corpus skipped: {"counts": {reason: n}, "locations": {reason: ["file:line", ...]}}
    (`Skipped.add_all` replays it, so that strict mode stops at a skipped line whatever prepared the cache)."""

    def __len__(self) -> int:
        return self.num_pairs

    def pieces(self, index: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
        """(piece ids of sentences `index` end to end as int64, their lengths) on one side ("source"/"target")."""
        starts, lengths = self._spans(index, f"{side}.offsets")
        ids = self._array(f"{side}.ids", self.id_dtype)
        return ids[_gather_positions(starts, lengths)].astype(np.int64), lengths

    def lengths(self, index: np.ndarray, side: str) -> np.ndarray:
        """Number of pieces of sentences `index` on one side."""
        return self._spans(index, f"{side}.offsets")[1]

    def texts(self, index: np.ndarray, side: str) -> list[str]:
        """The text of sentences `index` on one side."""
        starts, lengths = self._spans(index, f"{side}.text.offsets")
        data = self._array(f"{side}.text", np.uint8)
        return [bytes(data[start:start + length]).decode("utf-8", "surrogatepass")
                for start, length in zip(starts.tolist(), lengths.tolist())]

    def pairs(self, limit: int | None = None) -> list[tuple[str, str]]:
        """The first `limit` (default: all) pairs as text, in corpus order."""
        index = np.arange(self.num_pairs if limit is None else min(limit, self.num_pairs))
        return list(zip(self.texts(index, "source"), self.texts(index, "target")))

    def _spans(self, index: np.ndarray, offsets_name: str) -> tuple[np.ndarray, np.ndarray]:
        offsets = self._array(offsets_name, np.int64)
        index = np.asarray(index, dtype=np.int64)
        starts = np.asarray(offsets[index])
        return starts, np.asarray(offsets[index + 1]) - starts

    def _array(self, name: str, dtype: Any) -> np.ndarray:
        path = self.directory / name
        if path.stat().st_size == 0:  # (an empty file cannot be mapped)
            return np.empty(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")


def _gather_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions `starts[i] + 0 .. lengths[i] - 1` of every row, end to end (no Python loop over rows)."""
    total = int(lengths.sum())
    row_starts_in_output = np.cumsum(lengths) - lengths
    return np.repeat(starts - row_starts_in_output, lengths) + np.arange(total, dtype=np.int64)


def cache_key(fingerprint: str, tokenizer: Tokenizer) -> str:
    """What a prepared split depends on: the split's content, the tokenizer's model and id layout, the format."""
    digest = hashlib.sha256(f"{FORMAT_VERSION}\n{fingerprint}\n{tokenizer.fingerprint}\n".encode())
    digest.update(tokenizer.layout.to_json().encode())
    return digest.hexdigest()[:24]


def open_or_prepare(corpus: Corpus, split: Split, tokenizer: Tokenizer, cache_dir: Path, *, field: FieldPath = DATA_CORPUS,
                    workers: int = 0, chunk_pairs: int = CHUNK_PAIRS) -> PreparedSplit:
    """The prepared `split` of `corpus` for `tokenizer`: from the cache when it is there and intact, else
    encoded now (with `workers` processes; 0 = one per CPU core) and cached. Messages name the corpus by its config `field`."""
    fingerprint = corpus_fingerprint(corpus, split, field)
    name = f"{cache_key(fingerprint, tokenizer)}-{split}"
    directory = cache_dir / name
    if cache_dir.exists() and not cache_dir.is_dir():
        raise UserError(f"--data.cache-dir {cache_dir} is not a directory; expected a directory for prepared corpora")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache_dir / f"{name}.lock"))
        lock.acquire()
    except OSError as err:
        raise UserError(f"cannot use the data cache {cache_dir} (--data.cache-dir): {err.strerror or err}") from None
    try:
        if directory.exists():
            problem = verify(directory)
            if problem is None:
                return load(directory)
            print(f"warning: prepared data {directory} is damaged ({problem}); preparing it again", file=sys.stderr)
            shutil.rmtree(directory, ignore_errors=True)
        _prepare(corpus, split, tokenizer, directory, field, workers, chunk_pairs)
        return load(directory)
    finally:
        lock.release()


def load(directory: Path) -> PreparedSplit:
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    return PreparedSplit(directory, meta["num_pairs"], meta["id_dtype"], meta["skipped"])


def verify(directory: Path) -> str | None:
    """What is wrong with a prepared split (a missing or unreadable file, a size or checksum that differs
    from meta.json), or None when it is intact.

    A file whose size and modification time are those meta.json recorded is not read again: checksumming
    the 4.8 GB cache of 10 M pairs at every start took 2 s per rank. Anything that writes to a file
    changes its modification time, so a damaged file is still read and caught."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            return f"format {meta.get('format')}, expected {FORMAT_VERSION}"
        for name, expected in meta["files"].items():
            path = directory / name
            size = path.stat().st_size
            if size != expected["size"]:
                return f"{name} has {size} bytes, expected {expected['size']}"
            if path.stat().st_mtime_ns != expected["mtime_ns"] and _crc32(path) != expected["crc32"]:
                return f"{name} does not match its checksum"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as handle:
        while block := handle.read(8 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def _prepare(corpus: Corpus, split: Split, tokenizer: Tokenizer, directory: Path, field: FieldPath, workers: int,
             chunk_pairs: int) -> None:
    """Encode the split into a temporary directory beside `directory`, then rename it into place."""
    remove_partial_writes(directory.parent, of=directory.name)  # of a killed preparation (we hold the lock)
    tmp = directory.parent / f".{directory.name}.{os.getpid()}.tmp"
    skipped = Skipped()
    what = f"{describe_corpus(corpus)} ({split})"
    try:
        tmp.mkdir()
        id_dtype = "uint16" if tokenizer.vocab_info.size <= 1 << 16 else "int32"
        # A TSV or aligned-text file is read here as raw lines and parsed by the workers; any other corpus's pairs
        # are read here and only encoded by them.
        chunks = line_chunks(corpus, split, chunk_pairs, field)
        if chunks is None:
            chunks = chunk(read_pairs(corpus, split, skipped, field), chunk_pairs)
        with _Writer(tmp, id_dtype) as writer, _Progress(what) as progress:
            for encoded in _encoded_chunks(chunks, tokenizer, id_dtype, workers):
                skipped.add_all(*encoded.pop("skipped"))
                writer.append(encoded)
                progress.update(writer.num_pairs)
        meta = {"format": FORMAT_VERSION, "num_pairs": writer.num_pairs, "id_dtype": id_dtype,
                "skipped": {"counts": dict(skipped), "locations": skipped.locations},
                "corpus": what, "tokenizer": tokenizer.fingerprint,
                "files": {path.name: {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns, "crc32": _crc32(path)}
                          for path in sorted(tmp.iterdir())}}
        with (tmp / "meta.json").open("w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, directory)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise UserError(f"cannot prepare {what} in {directory.parent} (--data.cache-dir): {err.strerror or err}; "
                            "nothing was cached and the corpus is unchanged") from None
        raise


class _Writer:
    """Appends encoded chunks to the split's files, keeping running offsets.

    Arrays go through the file objects' own `write`, not `ndarray.tofile`: numpy reports a failed write (a full
    disk) as "N requested and M written", without the reason, which the user needs to read ("No space left on device")."""

    def __init__(self, directory: Path, id_dtype: str) -> None:
        self.directory, self.id_dtype = directory, id_dtype
        self.num_pairs = 0
        self.ends = {f"{side}{kind}": 0 for side in SIDES for kind in (".ids", ".text")}
        self.handles: dict[str, Any] = {}

    def __enter__(self) -> _Writer:
        for side in SIDES:
            for name in (f"{side}.ids", f"{side}.offsets", f"{side}.text", f"{side}.text.offsets"):
                self.handles[name] = (self.directory / name).open("wb")
            for name in (f"{side}.offsets", f"{side}.text.offsets"):
                self.handles[name].write(np.zeros(1, np.int64))
        return self

    def append(self, encoded: dict[str, np.ndarray]) -> None:
        for side in SIDES:
            for kind in (".ids", ".text"):
                data, lengths = encoded[f"{side}{kind}"], encoded[f"{side}{kind}.lengths"]
                self.handles[f"{side}{kind}"].write(np.ascontiguousarray(data))
                offsets_name = f"{side}.offsets" if kind == ".ids" else f"{side}.text.offsets"
                self.handles[offsets_name].write(self.ends[f"{side}{kind}"] + np.cumsum(lengths, dtype=np.int64))
                self.ends[f"{side}{kind}"] += int(lengths.sum())
        self.num_pairs += len(encoded["source.ids.lengths"])

    def __exit__(self, failed: type[BaseException] | None, *exc: object) -> None:
        """Every file flushed and fsynced (complete before meta.json records it), then closed; after a failure only
        closed, quietly: the directory is removed, and a second "disk full" from the flush would hide the first."""
        try:
            if failed is None:
                for handle in self.handles.values():
                    handle.flush()
                    os.fsync(handle.fileno())
        finally:
            for handle in self.handles.values():
                with contextlib.suppress(OSError):
                    handle.close()


def _encoded_chunks(chunks: Iterator[list[tuple[str, str]] | LineChunk], tokenizer: Tokenizer, id_dtype: str,
                    workers: int) -> Iterator[dict[str, Any]]:
    """Each chunk encoded, in order: in this process when the split is one chunk, else by a pool of workers."""
    first = next(chunks, None)
    if first is None:
        yield _encode_chunk([], tokenizer, id_dtype)
        return
    second = next(chunks, None)
    if second is None:
        yield _encode_chunk(first, tokenizer, id_dtype)
        return
    workers = workers or os.cpu_count() or 1
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    state = (str(tokenizer.model_path), tokenizer.langs, tokenizer.model_bytes, tokenizer.layout, id_dtype)
    with context.Pool(workers, initializer=_start_worker, initargs=state) as pool:
        # In order, with at most two chunks per worker in flight (Pool.imap would read the whole corpus ahead).
        pending: deque[Any] = deque()
        for pairs in chain([first, second], chunks):
            pending.append(pool.apply_async(_encode_in_worker, (pairs,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


_WORKER: dict[str, Any] = {}


def _start_worker(model_path: str, langs: Sequence[str], model_bytes: bytes, layout: Any, id_dtype: str) -> None:
    _WORKER["tokenizer"] = Tokenizer(Path(model_path), langs, model_bytes=model_bytes, layout=layout)
    _WORKER["id_dtype"] = id_dtype


def _encode_in_worker(job: list[tuple[str, str]] | LineChunk) -> dict[str, Any]:
    return _encode_chunk(job, _WORKER["tokenizer"], _WORKER["id_dtype"])


def _encode_chunk(job: list[tuple[str, str]] | LineChunk, tokenizer: Tokenizer, id_dtype: str) -> dict[str, Any]:
    """`_encode` of a chunk of pairs, or of the pairs of a chunk of lines, with what parsing them skipped
    ({"skipped": (counts, locations)})."""
    found = Skipped()
    pairs = chunk_pairs(job, found) if isinstance(job, LineChunk) else job
    return {**_encode(pairs, tokenizer, id_dtype), "skipped": (dict(found), found.locations)}


def _encode(pairs: list[tuple[str, str]], tokenizer: Tokenizer, id_dtype: str) -> dict[str, np.ndarray]:
    """Piece ids and UTF-8 text of both sides of `pairs`, as flat arrays with per-sentence lengths."""
    encoded: dict[str, np.ndarray] = {}
    for side, texts in zip(SIDES, ([source for source, _ in pairs], [target for _, target in pairs])):
        ids = tokenizer.piece_ids(texts) if texts else []
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        encoded[f"{side}.ids"] = np.fromiter(chain.from_iterable(ids), id_dtype, int(lengths.sum()))
        encoded[f"{side}.ids.lengths"] = lengths
        raw = [text.encode("utf-8", "surrogatepass") for text in texts]
        encoded[f"{side}.text"] = np.frombuffer(b"".join(raw), np.uint8)
        encoded[f"{side}.text.lengths"] = np.fromiter(map(len, raw), np.int64, len(raw))
    return encoded


class _Progress:
    """A live count of prepared pairs on a terminal; a line at the start and one at the end otherwise."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.started = time.perf_counter()
        self.count = 0
        self.live = None

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty():
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.live = Progress(SpinnerColumn(), TextColumn("preparing {task.description}: {task.completed:,} pairs"),
                                 TimeElapsedColumn(), transient=True)
            self.live.start()
            self.task = self.live.add_task(self.what, total=None)
        else:
            print(f"preparing {self.what} (encoded once, then reused)", file=sys.stderr, flush=True)
        return self

    def update(self, count: int) -> None:
        self.count = count
        if self.live is not None:
            self.live.update(self.task, completed=count)

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()
        if exc[0] is None:
            elapsed = time.perf_counter() - self.started
            print(f"prepared {self.what}: {self.count:,} pairs in {elapsed:.1f}s "
                  f"({self.count / max(elapsed, 1e-9):,.0f} pairs/s)", file=sys.stderr, flush=True)
