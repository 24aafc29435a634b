"""A multilingual sentencepiece tokenizer: training (cached), language tokens, encode/decode.

Layout of the token sequences (fairseq2's NLLB layout, so an NLLB-style decoder starts from EOS
as in fairseq and the target language is a forced first prediction):

    source:         __eng__ w1 w2 ... </s>
    target input:   </s> __fra__ v1 v2 ...
    target output:  __fra__ v1 v2 ... </s>

Language tokens are sentencepiece *user-defined symbols*, so they are real pieces with their own
ids (never `<unk>`), and they survive any vocabulary size. The trained model is cached under
`cache_dir` by a key that hashes the training text and every setting, so changing the corpus or the
vocabulary size trains a new model while rerunning the same command reuses the old one.

Every checkpoint records the tokenizer it was trained with (`tokenizer_record`: a SHA-256 of the
model file, its size, the language token ids, and the file's bytes, a few hundred KB), because
embeddings are meaningless with any other tokenizer: `checked_tokenizer` refuses a run
directory's `tokenizer.model` that differs from its checkpoint's, and restores a missing one from
the checkpoint instead of training a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sentencepiece as spm
import torch
from filelock import FileLock

from fs2mini.checkpoint import remove_partial_writes
from fs2mini.errors import UserError, expect, finite
from fs2mini.rundir import LAYOUT_FILE
from fs2mini.vocab import VocabInfo

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SUFFIX = [EOS_ID]
"""The end of every source and target sequence in fs2mini's own layout (`Tokenizer.suffix` in any layout)."""


@dataclass(frozen=True)
class TokenizerConfig:
    """Sentencepiece model trained on both sides of the training split."""

    vocab_size: int = 5000
    """Number of pieces, including <pad>, <unk>, <s>, </s> and the language tokens."""
    model_type: Literal["unigram", "bpe"] = "unigram"
    """Sentencepiece algorithm."""
    character_coverage: float = 1.0
    """Fraction of characters covered by the model (lower it, e.g. 0.9995, for CJK scripts)."""
    max_training_sentences: int = 2_000_000
    """Sentencepiece samples at most this many sentences to train the model."""
    cache_dir: Path = Path(".cache/fs2mini/tokenizers")
    """Where trained models are kept, keyed by a hash of the training text and these settings."""


def lang_token(lang: str) -> str:
    return f"__{lang}__"


def base_code(lang: str) -> str:
    """The language of a code without its script: `zho_Hans` -> `zho`."""
    return lang.split("_", 1)[0]


def token_lang(token: str) -> str | None:
    """The language code a `__lang__` token names (the inverse of `lang_token`); None for any other token."""
    if len(token) > 4 and token.startswith("__") and token.endswith("__"):
        return token[2:-2]
    return None



@dataclass(frozen=True)
class TokenizerLayout:
    """How a model's token ids relate to the sentencepiece model's; the defaults are fs2mini's own layout.

    NLLB (fairseq's dictionary): <s>=0 <pad>=1 </s>=2 <unk>=3, piece i of the sentencepiece model
    at i + 1 (its own <unk> <s> </s> at 0-2 are never produced as pieces), then the language codes
    (eng_Latn, ...) appended after the pieces, then <mask>. `vocab_size` is the embedding table's
    row count, which may exceed the ids used. M2M100 numbers its pieces in its own order
    (`piece_ids`, from vocab.json) and puts `__en__`-style language tokens after them.
    """

    pad_id: int = PAD_ID
    """Model id of padding."""
    unk_id: int = UNK_ID
    """Model id of the unknown piece (sentencepiece's <unk> maps here)."""
    bos_id: int = BOS_ID
    """Model id of <s> (never generated)."""
    eos_id: int = EOS_ID
    """Model id of </s>: ends every sequence and starts the decoder."""
    piece_offset: int = 0
    """Model id of sentencepiece piece i is i + piece_offset."""
    vocab_size: int | None = None
    """Size of the model's vocabulary; None: the sentencepiece model's size."""
    lang_ids: dict[str, int] = field(default_factory=dict)
    """Language code → model id of its token; empty: the `__lang__` pieces of the sentencepiece model."""
    piece_ids: dict[str, int] = field(default_factory=dict)
    """Piece → model id (M2M100's vocab.json, whose order is not the sentencepiece model's); empty: piece_offset."""

    def to_json(self) -> str:
        return json.dumps({"pad_id": self.pad_id, "unk_id": self.unk_id, "bos_id": self.bos_id, "eos_id": self.eos_id,
                           "piece_offset": self.piece_offset, "vocab_size": self.vocab_size,
                           "lang_ids": self.lang_ids, "piece_ids": self.piece_ids}, indent=1) + "\n"


def read_layout(path: Path) -> TokenizerLayout:
    """The layout in `path` (a `LAYOUT_FILE`), or one sentence saying what is wrong with it."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        layout = TokenizerLayout(**raw)
        ints = [layout.pad_id, layout.unk_id, layout.bos_id, layout.eos_id, layout.piece_offset, *layout.lang_ids.values()]
        if not all(isinstance(i, int) and i >= 0 for i in ints) or not all(isinstance(k, str) for k in layout.lang_ids):
            raise ValueError("ids must be integers >= 0")
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"{path} is not a tokenizer layout ({err}); expected the JSON written by fs2mini.hf import") from None
    return layout


def first_codes(codes: Iterable[str]) -> str:
    """The first eight of a model's language codes, sorted, for an error message (NLLB has 202)."""
    ordered = sorted(codes)
    return ", ".join(ordered[:8]) + (", ..." if len(ordered) > 8 else "")


class Tokenizer:
    """A sentencepiece model plus the language-token layout described in the module docstring."""

    def __init__(self, model_path: Path, langs: Sequence[str], model_bytes: bytes | None = None,
                 layout: TokenizerLayout | None = None) -> None:
        """Load `model_path`, or `model_bytes` (a copy kept in a checkpoint) when given.

        `layout`: the model's ids (see `TokenizerLayout`); by default the `LAYOUT_FILE` beside
        `model_path` when there is one, else fs2mini's own layout."""
        self.model_path = Path(model_path)
        layout_path = self.model_path.with_name(LAYOUT_FILE)
        layout_source = "its layout"  # given by the caller (a checkpoint's record, an imported directory)
        if layout is None:
            layout = read_layout(layout_path) if layout_path.is_file() else TokenizerLayout()
            layout_source = layout_path.name
        self.layout = layout
        self.suffix = [layout.eos_id]
        """The end of every source and target sequence: `</s>`."""
        try:
            self.model_bytes = self.model_path.read_bytes() if model_bytes is None else model_bytes
            self.sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        except (OSError, RuntimeError) as err:
            raise UserError(f"cannot load tokenizer model {self.model_path}: {getattr(err, 'strerror', None) or err}") from None
        self.fingerprint = hashlib.sha256(self.model_bytes).hexdigest()
        """SHA-256 of the model file: what a checkpoint records to name its tokenizer."""
        self.langs = tuple(langs)
        self.lang_ids = {}
        for lang in self.langs:
            if layout.lang_ids:
                if lang not in layout.lang_ids:
                    raise UserError(f"unknown language code {lang!r} for tokenizer {self.model_path}; expected one of "
                                    f"{first_codes(layout.lang_ids)} ({len(layout.lang_ids)} codes in {layout_source})")
                self.lang_ids[lang] = layout.lang_ids[lang]
                continue
            piece_id = self.sp.piece_to_id(lang_token(lang))
            if piece_id == self.sp.unk_id():
                raise UserError(f"tokenizer {self.model_path} has no language token {lang_token(lang)}")
            self.lang_ids[lang] = piece_id + layout.piece_offset
        num_pieces = self.sp.get_piece_size()
        size = layout.vocab_size if layout.vocab_size is not None else num_pieces + layout.piece_offset
        self.vocab_info = VocabInfo(size, layout.pad_id, layout.bos_id, layout.eos_id, layout.unk_id)
        self._special_ids = {layout.pad_id, layout.bos_id, layout.eos_id, *self.lang_ids.values()}
        # Model id ↔ sentencepiece id, when they differ (None: the same, fs2mini's own layout).
        self._sp_unk = self.sp.unk_id()
        self._identity = layout.piece_offset == 0 and layout.unk_id == self._sp_unk and not layout.piece_ids
        # With `piece_ids`: sentencepiece id → model id, and back (pieces missing from it are <unk>).
        self._to_model = [layout.piece_ids.get(self.sp.id_to_piece(i), layout.unk_id) for i in range(num_pieces)] \
            if layout.piece_ids else None
        self._to_sp = {m: i for i, m in enumerate(self._to_model or []) if m != layout.unk_id}
        self._piece_range = range(layout.piece_offset, layout.piece_offset + num_pieces)

    def encode_source(self, texts: list[str], lang: str) -> list[list[int]]:
        """`__lang__ pieces </s>` for each text (batch call: sentencepiece encodes in C++)."""
        prefix = self.source_prefix(lang)
        return [prefix + ids + self.suffix for ids in self.piece_ids(texts)]

    def encode_target(self, texts: list[str], lang: str) -> list[list[int]]:
        """`</s> __lang__ pieces </s>`: the decoder input is [:-1] and the expected output [1:]."""
        prefix = self.target_prefix(lang)
        return [prefix + ids + self.suffix for ids in self.piece_ids(texts)]

    def piece_ids(self, texts: list[str], sampling: tuple[float, int, int] | None = None) -> list[list[int]]:
        """Piece ids of each text without any special token; `prefix + piece_ids + suffix` is a sequence.

        `sampling` = (alpha, nbest size, seed): a segmentation sampled per text (subword regularization),
        the same for the same seed (sentencepiece's generator is seeded and runs in one thread)."""
        if sampling is None:
            ids = self.sp.encode(texts)
        else:
            alpha, nbest_size, seed = sampling
            spm.set_random_generator_seed(seed)
            ids = self.sp.encode(texts, enable_sampling=True, alpha=alpha, nbest_size=nbest_size, num_threads=1)
        if self._identity:
            return ids
        if self._to_model is not None:
            table = self._to_model
            return [[table[i] for i in row] for row in ids]
        unk, sp_unk, offset = self.layout.unk_id, self._sp_unk, self.layout.piece_offset
        return [[unk if i == sp_unk else i + offset for i in row] for row in ids]

    def piece_id(self, piece: str) -> int | None:
        """The model id of one piece of the sentencepiece model (a corpus tag such as <BT>), None if it has none."""
        sp_id = self.sp.piece_to_id(piece)
        if sp_id == self._sp_unk and piece != self.sp.id_to_piece(self._sp_unk):
            return None
        if self._to_model is not None:
            return self._to_model[sp_id]
        return sp_id + self.layout.piece_offset

    def source_prefix(self, lang: str) -> list[int]:
        """The start of every source sequence: `__lang__`."""
        return [self.lang_ids[lang]]

    def target_prefix(self, lang: str) -> list[int]:
        """The forced start of every target sequence: `</s> __lang__`."""
        return [self.layout.eos_id, self.lang_ids[lang]]

    def decode(self, ids: Iterable[int]) -> str:
        """Text for token ids, without pad/bos/eos/language tokens."""
        return self.sp.decode([self._sp_id(i) for i in ids if i not in self._special_ids and self._sp_id(i) is not None])

    def pieces(self, ids: Iterable[int]) -> list[str]:
        names = {i: lang for lang, i in self.layout.lang_ids.items()}
        return [self.sp.id_to_piece(sp_id) if (sp_id := self._sp_id(i)) is not None else names.get(i, f"<{i}>")
                for i in ids]

    def _sp_id(self, model_id: int) -> int | None:
        """The sentencepiece id of a model id; None for ids outside the sentencepiece model (language codes, <mask>)."""
        if self._identity:
            return model_id
        if model_id == self.layout.unk_id:
            return self._sp_unk
        if model_id == self.layout.eos_id:
            return self.sp.eos_id()
        if self._to_model is not None:
            return self._to_sp.get(model_id)
        return model_id - self.layout.piece_offset if model_id in self._piece_range else None


def tokenizer_record(tokenizer: Tokenizer) -> dict[str, Any]:
    """What a checkpoint keeps of its tokenizer: identity (fingerprint, size, language ids), the file itself, and an
    imported model's id layout (so a checkpoint copied out of its run directory still starts a run: `--init`)."""
    record = {"sha256": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_info.size, "lang_ids": dict(tokenizer.lang_ids),
              "model_bytes": torch.frombuffer(bytearray(tokenizer.model_bytes), dtype=torch.uint8).clone()}
    if tokenizer.layout != TokenizerLayout():
        record["layout"] = tokenizer.layout.to_json()
    return record


def checked_tokenizer(path: Path, langs: Sequence[str], record: dict[str, Any] | None, checkpoint: Path) -> Tokenizer:
    """The tokenizer a checkpoint was trained with: `path` verified against the checkpoint's `record`,
    or (when `path` is missing) the copy inside the checkpoint. Never a newly trained one. Its ids follow
    the `LAYOUT_FILE` beside `path`, else the layout the record keeps (an imported model's checkpoint
    copied out of its run directory), else fs2mini's own.

    Checkpoints of older fs2mini versions have no record: `path` is then used unverified."""
    if record is None:
        if not path.is_file():
            raise UserError(f"{path} does not exist and {checkpoint} (written by an older fs2mini) holds no copy of it; "
                            "expected the tokenizer the run was trained with")
        print(f"warning: {checkpoint} does not record its tokenizer; using {path} unverified", file=sys.stderr)
        return Tokenizer(path, langs)
    kept = bytes(record["model_bytes"].numpy().tobytes())
    layout = None  # the file beside `path`, or fs2mini's own
    if not path.with_name(LAYOUT_FILE).is_file() and "layout" in record:
        layout = TokenizerLayout(**json.loads(record["layout"]))
    if not path.is_file():
        print(f"warning: {path} is missing; using the copy kept in {checkpoint} (sha256 {record['sha256'][:12]})",
              file=sys.stderr)
        tokenizer = Tokenizer(path, langs, model_bytes=kept, layout=layout)
    else:
        tokenizer = Tokenizer(path, langs, layout=layout)
    found = {"sha256": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_info.size, "lang_ids": dict(tokenizer.lang_ids)}
    expected = tokenizer_identity(record)
    if found != expected:
        differing = [key for key in found if found[key] != expected[key]]
        raise UserError(f"{path} ({describe_tokenizer(found)}) is not the tokenizer {checkpoint} was trained with "
                        f"({describe_tokenizer(expected)}; differing: {', '.join(differing)}); put the original back, or "
                        f"delete {path.name} to have it restored from the checkpoint")
    return tokenizer


def tokenizer_identity(record: dict[str, Any]) -> dict[str, Any]:
    """What names a tokenizer in a checkpoint's `tokenizer_record`: fingerprint, vocabulary size, language ids."""
    return {key: record[key] for key in ("sha256", "vocab_size", "lang_ids")}


def describe_tokenizer(identity: dict[str, Any]) -> str:
    """`tokenizer_identity` in a message."""
    return f"sha256 {identity['sha256'][:12]}, vocab {identity['vocab_size']}, language ids {identity['lang_ids']}"


def check_tokenizer_config(cfg: TokenizerConfig, langs: Sequence[str]) -> None:
    """Reject settings sentencepiece cannot train with, before any text is read."""
    if cfg.vocab_size < 8 + len(langs):
        raise UserError(f"--tokenizer.vocab-size {cfg.vocab_size} is too small; expected at least {8 + len(langs)}")
    expect("--tokenizer.character-coverage", cfg.character_coverage,
           finite(cfg.character_coverage) and 0 < cfg.character_coverage <= 1, "a number in (0, 1]")
    expect("--tokenizer.max-training-sentences", cfg.max_training_sentences, cfg.max_training_sentences > 0,
           "a positive integer")


def load_or_train_tokenizer(cfg: TokenizerConfig, sentences: Iterable[str], langs: Sequence[str],
                            fingerprint: str | None = None, tags: Sequence[str] = ()) -> Tokenizer:
    """Reuse the cached model for this exact text and settings, or train and cache a new one.

    `fingerprint` names the text when the caller knows it without reading it (the corpus's content
    fingerprint): `sentences` is then streamed to sentencepiece only if a model must be trained, and
    never held in memory (sentencepiece keeps a uniform sample of `max_training_sentences` of them).
    Without it the text itself is hashed, which needs it whole. `tags` (corpus tags such as <BT>) become
    pieces of their own, as the language tokens are."""
    check_tokenizer_config(cfg, langs)
    if fingerprint is None:
        sentences = [s for s in sentences if s]
    key = _cache_key(cfg, sentences if fingerprint is None else [fingerprint], langs, tags)
    model_path = cfg.cache_dir / f"spm-{cfg.vocab_size}-{key}.model"
    if not model_path.exists():
        _train_sentencepiece(cfg, (s for s in sentences if s), langs, model_path, tags)
    return Tokenizer(model_path, langs)


def balanced_sentences(by_language: dict[str, list[str]], max_sentences: int) -> list[str]:
    """The same number of sentences from every language, so a small language is not drowned out.

    Each language gives `min(largest language, max_sentences // languages)` sentences: a larger
    one a sample of its own, a smaller one its sentences repeated (sentencepiece counts them again),
    both drawn by a fixed seed so the result, and the tokenizer cache key, are the same on every run."""
    share = min(max(map(len, by_language.values())), max(1, max_sentences // len(by_language)))
    balanced: list[str] = []
    for lang, sentences in by_language.items():
        order = list(range(len(sentences)))
        random.Random(f"balance-{lang}").shuffle(order)
        balanced.extend(sentences[order[i % len(order)]] for i in range(share))
    return balanced


def _cache_key(cfg: TokenizerConfig, text: Iterable[str], langs: Sequence[str], tags: Sequence[str] = ()) -> str:
    digest = hashlib.sha256()
    settings = (cfg.vocab_size, cfg.model_type, cfg.character_coverage, cfg.max_training_sentences, tuple(langs)) + (
        (tuple(tags),) if tags else ())
    digest.update(repr(settings).encode())
    for sentence in text:
        digest.update(sentence.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _train_sentencepiece(cfg: TokenizerConfig, text: Iterable[str], langs: Sequence[str], model_path: Path,
                         tags: Sequence[str] = ()) -> None:
    """Train into a temporary directory beside `model_path` and rename, so an interrupted training never leaves a
    half model.

    Under a lock per model (as prepared corpora are): one process trains it, another waiting for it reuses it,
    and a temporary directory of this model found under the lock was left by a killed training and is removed.
    Ctrl-C while the text is read stops at once; once sentencepiece trains (C++, which no signal interrupts)
    the model it finishes is kept in the cache for the next run before the interrupt is raised (`_Sigint`)."""
    try:
        model_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{model_path}.lock")
        lock.acquire()
    except OSError as err:
        raise UserError(f"cannot create tokenizer cache {model_path.parent}: {err.strerror}") from None
    try:
        if model_path.exists():  # trained by another process while this one waited for the lock
            return
        remove_partial_writes(model_path.parent, of=model_path.name)  # a killed training's (we hold the lock)
        tmp = model_path.parent / f".{model_path.name}.{os.getpid()}.tmp"
        try:
            tmp.mkdir()
        except OSError as err:
            raise UserError(f"cannot write to tokenizer cache {model_path.parent}: {err.strerror}") from None
        try:
            with _Sigint() as sigint:
                _train_into(cfg, sigint.reading(text), langs, tmp / "spm", tags)
                _check_written(tmp / "spm.model", model_path)
                try:
                    os.replace(tmp / "spm.model", model_path)
                except OSError as err:
                    raise UserError(f"cannot write {model_path}: {err.strerror}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if sigint.requested:
            print(f"interrupted while sentencepiece trained (it cannot be stopped midway); its model is kept in "
                  f"{model_path} for the next run", file=sys.stderr)
            raise KeyboardInterrupt
    finally:
        lock.release()


def _check_written(trained: Path, model_path: Path) -> None:
    """Sentencepiece's C++ ignores a failed write (a full disk): a cut-off model must not reach the cache under its
    final name, where every later run with these settings would fail to load it."""
    try:
        spm.SentencePieceProcessor(model_file=str(trained))
    except (OSError, RuntimeError):
        free = shutil.disk_usage(trained.parent).free
        raise UserError(f"cannot write {model_path}: sentencepiece's model file is incomplete "
                        f"({trained.stat().st_size if trained.exists() else 0} bytes written, {free:,} bytes free "
                        "on its disk); expected a writable tokenizer cache with free space") from None


def _train_into(cfg: TokenizerConfig, text: Iterator[str], langs: Sequence[str], prefix: Path, tags: Sequence[str]) -> None:
    """Sentencepiece training of `prefix`.model; an error of the text reader (or Ctrl-C) stops it and is raised as is."""
    raised: list[BaseException] = []

    def reading(sentences: Iterator[str]) -> Iterator[str]:
        """The text; an error of the corpus reader is kept and raised again, which makes sentencepiece give up at
        once (with a message of its own that would hide it)."""
        try:
            yield from sentences
        except BaseException as err:
            raised.append(err)
            raise

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=reading(text),
            model_prefix=str(prefix),
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.max_training_sentences,
            shuffle_input_sentence=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            user_defined_symbols=[lang_token(lang) for lang in langs] + list(tags),
            minloglevel=2,
            num_threads=os.cpu_count() or 1,
        )
    except RuntimeError as err:
        if raised:
            raise raised[0] from None
        # Drop sentencepiece's "INTERNAL: file.cc(744) [check] " prefix; keep its sentence.
        message = str(err).strip().splitlines()[-1].rsplit("] ", 1)[-1] or type(err).__name__
        raise UserError(f"--tokenizer.vocab-size {cfg.vocab_size}: sentencepiece training failed: {message}") from None
    if raised:  # (sentencepiece went on without the rest of the text: not kept)
        raise raised[0]


class _Sigint:
    """Ctrl-C during sentencepiece training: at once while the text is read; after training once it is read.

    Python runs a signal handler only between bytecodes, so a Ctrl-C while sentencepiece's C++ trains is
    seen only when it returns. Raising it then would throw the finished model away; instead it is noted
    (`requested`) and raised by the caller once the model is kept. While the text is read (`reading`), the
    handler raises at once, in the reader, and sentencepiece gives up. Only the default handler is replaced
    (the trainer's own, which saves and stops, is left alone) and only in the main thread (where handlers run)."""

    def __init__(self) -> None:
        self.requested = False
        self._read = False
        self._previous: Any = None

    def reading(self, text: Iterable[str]) -> Iterator[str]:
        yield from text
        self._read = True

    def _handle(self, signum: int, frame: Any) -> None:
        if not self._read:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _Sigint:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
