"""Batches for training and evaluation: prepared split → shuffle → shard → read ids → bucket → `Seq2SeqBatch`.

`Seq2SeqBatches` is re-iterable: each `iter()` is one epoch, shuffled by `(seed, epoch)` so a run
is reproducible and a resumed run can replay exactly the epoch it stopped in (`iter_epoch(epoch,
skip)` cuts the batches it skips without padding them). Each corpus split is encoded once into the
data cache (`fs2mini.prepared`) and read from there by pair number, so no rank ever holds the corpus
as strings and no run re-encodes it: the pipeline shuffles and shards pair *numbers*, then reads the
ids of a pool of `--data.pool-size` pairs at a time into `Rows` (flat int64 tensors), sorts them by
length inside the pool (see `length_order`) and cuts them into batches under a padded-token budget,
which keeps padding to about 3% of source+target positions on the Bible corpus at 4096 tokens
(sorting by max(source, target) alone left 7.6%). With `--data.subword-alpha` the training split's
text is read instead and its segmentation sampled anew each epoch.

A run may train several corpora (`DataConfig.more_corpora`): several translation directions, and
several corpora of one direction (genuine and back-translated, in-domain and general). Each training
batch holds one corpus: each is bucketed on its own (lengths differ by language), and the corpus of
the next batch is drawn by `corpus_probabilities`: a direction ∝ (its weighted pairs)^(1/T),
`--data.sampling-temperature T`, shared among its corpora ∝ weight × pairs. An epoch ends when the
largest corpus (in pairs ÷ weight) has been seen once; the others are repeated, re-shuffled, as
often as their share asks. Validation and test read each direction's first corpus, in turn, unsampled.
`run_directions` derives the run's corpora, directions and languages from the config once (`RunDirections`);
everything downstream takes that value instead of deriving them again.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import chain, count, repeat
from pathlib import Path

import numpy as np
import torch
import tyro
from torch import Tensor

from fs2mini.corpus import CORPORA, DATA_CORPUS, Corpus, Split, corpus_languages, corpus_tag, corpus_weight, describe_corpus
from fs2mini.errors import FieldPath, UserError, cli_flag, expect, expect_positive_ints, finite
from fs2mini.pipeline import Skipped, batch_by_max_tokens, chunk, shard, shuffle_window
from fs2mini.prepared import PreparedSplit, open_or_prepare
from fs2mini.tokenizer import Tokenizer


# The built-in corpora as a type (the command line rebuilds it with a recipe's own corpora added).
CorpusChoice = tyro.extras.subcommand_type_from_defaults(CORPORA)


@dataclass(frozen=True)
class DataConfig:
    """Which corpora (one per translation direction) to read and how to cut them into batches."""

    corpus: CorpusChoice = CORPORA["bible"]
    """Where sentence pairs come from (the run's first direction; translate and evaluate default to it)."""
    more_corpora: tuple[CorpusChoice, ...] = ()
    """Further corpora trained in the same run: other directions, or more data of one direction mixed by each
    corpus's `weight` (set in a recipe; each entry's fields are flags)."""
    zero_shot_corpora: tuple[CorpusChoice, ...] = ()
    """Directions never trained on, only validated and evaluated (zero-shot), between languages of the run."""
    sampling_temperature: float = 1.0
    """Direction of each training batch drawn ∝ (its training pairs)^(1/T): 1 = by size, larger = flatter."""
    max_tokens: int = 2048
    """Token budget per batch, padding included: batch size × max(source, target length), as fairseq."""
    max_source_len: int = 256
    """Longer source sentences (in tokens, with specials) are skipped and counted."""
    max_target_len: int = 256
    """Longer target sentences (in tokens, with specials) are skipped and counted."""
    shuffle_window: int = 100_000
    """Sentences shuffled together; a window larger than the corpus shuffles it uniformly."""
    pool_size: int = 100_000
    """Sentences encoded and sorted by length together before being cut into batches (bigger: less padding)."""
    strict: bool = False
    """Stop at the first malformed corpus line (no tab, empty side, invalid UTF-8) instead of skipping it."""
    cache_dir: Path = Path(".cache/fs2mini/prepared")
    """Where each corpus split is kept once encoded (fs2mini.prepared), keyed by its content and the tokenizer."""
    prepare_workers: int = 0
    """Processes that encode a corpus the first time it is prepared (0 = one per CPU core)."""
    length_multiple: int | None = None
    """Pad every batch's source and target length up to a multiple of this (fairseq's
    `--required-seq-len-multiple`, Hugging Face's `pad_to_multiple_of`); the budget counts the padding.
    None: 8 when training multiplies in bf16/fp16, 1 in fp32 (`shaped_for`)."""
    batch_size_multiple: int = 1
    """Sentences per batch kept to a multiple of this where the budget allows as many (fairseq's
    `--required-batch-size-multiple`): fewer distinct batch shapes. On the default run's data with lengths in
    multiples of 8, 8 here took the kernel cache's simulated misses from 1.2 to 0.4 per update but left 6%
    fewer tokens per batch, so the default is 1."""
    subword_alpha: float = 0.0
    """Subword regularization of the training split: each epoch samples every sentence's segmentation with this
    sentencepiece alpha (0 = off; e.g. 0.5; smaller = more varied and longer segmentations). Training text
    is then encoded on the fly (about 1% of a step of the default model)."""
    subword_nbest_size: int = -1
    """Segmentations sampled from with --data.subword-alpha: the N best, or -1 = all (sentencepiece's nbest_size)."""

    @property
    def corpora(self) -> tuple[Corpus, ...]:
        """The trained directions' corpora, `corpus` first."""
        return (self.corpus, *self.more_corpora)

    @property
    def corpus_fields(self) -> tuple[tuple[FieldPath, Corpus], ...]:
        """(config field, corpus) of every corpus, trained then zero-shot: the field names it in messages."""
        return ((DATA_CORPUS, self.corpus), *((("data", "more_corpora", i), c) for i, c in enumerate(self.more_corpora)),
                *((("data", "zero_shot_corpora", i), c) for i, c in enumerate(self.zero_shot_corpora)))


LOW_PRECISION_LENGTH_MULTIPLE = 8
"""`--data.length-multiple` of a run whose matmuls are bf16/fp16. Why: on CPU, PyTorch runs those in oneDNN,
which compiles a kernel for each new shape and keeps the last 1024. Batches of every length brought ~29 new
shapes a step, each compiled again (an AMX Xeon: 5-7 ms for a new (rows x 256) @ (256 x 768), 0.3 ms for one
seen before; 17% of the default run's step, and a process growing to 4-6 GB). Lengths in multiples of 8
leave ~25 row counts and few enough shapes to stay compiled: 700 updates of the default run took 19% less
time for 8% more padded positions (docs/results.md). Tensor cores also want multiples of 8. In fp32 (MKL,
nothing compiled per shape) the padding would only cost, so fp32 keeps 1."""


def shaped_for(cfg: DataConfig, low_precision: bool) -> DataConfig:
    """`cfg` with `length_multiple` decided for a run whose matmuls are bf16/fp16 (`low_precision`) or fp32."""
    if cfg.length_multiple is not None:
        return cfg
    return replace(cfg, length_multiple=LOW_PRECISION_LENGTH_MULTIPLE if low_precision else 1)


def direction_name(langs: tuple[str, str]) -> str:
    """`eng-fra`: how a direction is named in metrics.jsonl, file names and messages."""
    return f"{langs[0]}-{langs[1]}"


@dataclass(frozen=True)
class RunCorpus:
    """One corpus of a run with what is derived from it once: the config field that names it, and its direction."""

    corpus: Corpus
    field: FieldPath
    """Where the corpus sits in the config, e.g. ("data", "more_corpora", 0): its flag in messages."""
    langs: tuple[str, str]
    """Its (source, target) language codes, checked."""
    zero_shot: bool = False
    """Validated and evaluated, never trained (--data.zero-shot-corpora)."""

    @classmethod
    def of(cls, corpus: Corpus, field: FieldPath = DATA_CORPUS, zero_shot: bool = False) -> RunCorpus:
        """`corpus` with its languages checked (messages name it by `field`)."""
        return cls(corpus, field, corpus_languages(corpus, field), zero_shot)

    @property
    def flag(self) -> str:
        return cli_flag(*self.field)

    @property
    def name(self) -> str:
        return direction_name(self.langs)


@dataclass(frozen=True)
class RunDirections:
    """The run's corpora, directions and languages, derived from its `DataConfig` once (`run_directions`, called by
    `check_config`) and passed down to the tokenizer, the batches, validation, translation and evaluation."""

    trained: tuple[RunCorpus, ...]
    """Every training corpus: --data.corpus, then --data.more-corpora."""
    primary: tuple[RunCorpus, ...]
    """The first corpus of each trained direction: the one validated, tested and translated (further corpora
    of a direction, e.g. back-translated pairs, are training data only)."""
    zero_shot: tuple[RunCorpus, ...]
    """--data.zero-shot-corpora: directions between the run's languages, validated and evaluated, never trained."""
    languages: tuple[str, ...]
    """Every language of the trained directions, in order of first appearance: the tokenizer's language tokens
    (a single-direction run: its (source, target) pair exactly)."""

    @property
    def directions(self) -> tuple[tuple[str, str], ...]:
        """The trained (source, target) directions, in order."""
        return tuple(entry.langs for entry in self.primary)

    @property
    def evaluated(self) -> tuple[RunCorpus, ...]:
        """What validation and evaluation read: each trained direction's first corpus, then the zero-shot ones."""
        return (*self.primary, *self.zero_shot)


def run_directions(cfg: DataConfig) -> RunDirections:
    """The run's corpora with their fields and directions, checked before any data is read: every language code
    valid (named by its flag), each trained direction's first corpus untagged, and zero-shot directions untrained,
    listed once and between the run's languages."""
    entries: list[RunCorpus] = []
    seen: dict[tuple[str, str], str] = {}
    for index, (field, corpus) in enumerate(cfg.corpus_fields):
        entry = RunCorpus.of(corpus, field, zero_shot=index >= len(cfg.corpora))
        langs = entry.langs
        if langs in seen and entry.zero_shot:
            raise UserError(f"{entry.flag} ({describe_corpus(corpus)}) repeats direction {entry.name} of {seen[langs]}; "
                            "expected a zero-shot direction that is not trained and listed once")
        if langs not in seen and not entry.zero_shot and corpus_tag(corpus) is not None:
            raise UserError(f"{cli_flag(*field, 'tag')} {corpus_tag(corpus)!r}: the first corpus of direction {entry.name} is "
                            "the one validated and translated, so it takes no tag; expected the tag on a further corpus of "
                            "the direction (e.g. the back-translated one)")
        seen.setdefault(langs, f"{entry.flag} ({describe_corpus(corpus)})")
        entries.append(entry)
    trained = tuple(entry for entry in entries if not entry.zero_shot)
    first: dict[tuple[str, str], RunCorpus] = {}
    for entry in trained:
        first.setdefault(entry.langs, entry)
    languages = trained[0].langs if len(trained) == 1 else tuple(dict.fromkeys(lang for e in trained for lang in e.langs))
    zero_shot = tuple(entry for entry in entries if entry.zero_shot)
    for entry in zero_shot:
        unknown = [lang for lang in entry.langs if lang not in languages]
        if unknown:
            raise UserError(f"{entry.flag}: language {unknown[0]} is not in the run's trained "
                            f"directions; expected one of {', '.join(languages)}")
    return RunDirections(trained, tuple(first.values()), zero_shot, languages)


def sampling_probabilities(sizes: Sequence[int], temperature: float) -> list[float]:
    """p_i ∝ size_i^(1/T), as NLLB and fairseq sample languages: T = 1 by size, T → ∞ uniform.

    Computed in log space (size^(1/T) overflows a float for a small T), the largest weight scaled to 1."""
    logs = [math.log(size) / temperature if size > 0 else -math.inf for size in sizes]
    top = max(logs)
    weights = [math.exp(log - top) for log in logs]
    total = sum(weights)
    return [weight / total for weight in weights]


def corpus_probabilities(directions: Sequence[tuple[str, str]], sizes: Sequence[int], weights: Sequence[float],
                         temperature: float) -> list[float]:
    """Probability that a training batch comes from each corpus: its direction's by temperature over the
    directions' weighted sizes (Σ weight × pairs), shared among the direction's corpora ∝ weight × pairs.

    With one corpus per direction this is `sampling_probabilities(sizes, temperature)`."""
    weighted = [weight * size for weight, size in zip(weights, sizes)]
    totals: dict[tuple[str, str], float] = {}
    for langs, amount in zip(directions, weighted):
        totals[langs] = totals.get(langs, 0.0) + amount
    direction_probability = dict(zip(totals, sampling_probabilities(list(totals.values()), temperature)))
    return [direction_probability[langs] * (amount / totals[langs] if totals[langs] > 0 else 0.0)
            for langs, amount in zip(directions, weighted)]


@dataclass(frozen=True)
class Seq2SeqBatch:
    """A padded batch; target_input is the target shifted right (it starts with </s> __lang__)."""

    source: Tensor  # (batch, src_len) int64
    source_lengths: Tensor  # (batch,) tokens per source row, without padding
    target_input: Tensor  # (batch, tgt_len) decoder input
    target_output: Tensor  # (batch, tgt_len) what the decoder must predict; pad where padded
    num_target_tokens: int  # non-pad target_output positions, a Python int (no device sync to read it)

    def to(self, device: torch.device) -> Seq2SeqBatch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Seq2SeqBatch(
            move(self.source),
            move(self.source_lengths),
            move(self.target_input),
            move(self.target_output),
            self.num_target_tokens,
        )

    @property
    def padding_fraction(self) -> float:
        """Share of source+target positions that are padding."""
        real = int(self.source_lengths.sum()) + self.num_target_tokens
        return 1.0 - real / (self.source.numel() + self.target_input.numel())


@dataclass(frozen=True)
class Rows:
    """Token rows laid end to end in one int64 tensor: row i is `tokens[starts[i] : starts[i] + lengths[i]]`.

    A pool of sentences is kept this way instead of as lists of Python ints, so that sorting,
    cutting and padding a batch are a few tensor operations rather than a loop over tokens.
    """

    tokens: Tensor  # (total tokens,) int64
    starts: Tensor  # (rows,) int64
    lengths: Tensor  # (rows,) int64

    @staticmethod
    def from_lists(rows: list[list[int]], prefix: Sequence[int] = (), suffix: Sequence[int] = ()) -> Rows:
        """`prefix + row + suffix` for each row; the ints are copied in one C loop (chained iterators)."""
        lengths = torch.tensor(list(map(len, rows)), dtype=torch.long) + (len(prefix) + len(suffix))
        laid_out = chain.from_iterable(chain.from_iterable(zip(repeat(prefix), rows, repeat(suffix))))
        tokens = torch.from_numpy(np.fromiter(laid_out, dtype=np.int64, count=int(lengths.sum())))
        return Rows(tokens, torch.cumsum(lengths, 0) - lengths, lengths)

    @staticmethod
    def from_pieces(pieces: np.ndarray, lengths: np.ndarray, prefix: Sequence[int] = (), suffix: Sequence[int] = ()) -> Rows:
        """`prefix + row + suffix` for rows given end to end (`pieces`, int64) with their `lengths`, in a few array operations."""
        out_lengths = lengths + (len(prefix) + len(suffix))
        out_starts = np.cumsum(out_lengths) - out_lengths
        tokens = np.empty(int(out_lengths.sum()), dtype=np.int64)
        for offset, token in enumerate(prefix):
            tokens[out_starts + offset] = token
        for offset, token in enumerate(suffix):
            tokens[out_starts + len(prefix) + lengths + offset] = token
        piece_starts = np.cumsum(lengths) - lengths
        tokens[np.repeat(out_starts + len(prefix) - piece_starts, lengths) + np.arange(int(lengths.sum()))] = pieces
        return Rows(torch.from_numpy(tokens), torch.from_numpy(out_starts), torch.from_numpy(out_lengths))

    def padded(self, index: Tensor, pad_idx: int, width: int | None = None) -> Tensor:
        """(len(index), `width` or the longest of these rows) int64 tensor of rows `index`, right-padded."""
        lengths = self.lengths[index]
        positions = torch.arange(int(lengths.max()) if width is None else width)
        flat = (self.starts[index].unsqueeze(1) + positions).clamp_(max=self.tokens.numel() - 1)  # (batch, width)
        return self.tokens[flat].masked_fill_(positions >= lengths.unsqueeze(1), pad_idx)


def encode_rows(tokenizer: Tokenizer, texts: list[str], prefix: list[int],
                sampling: tuple[float, int, int] | None = None) -> Rows:
    """`prefix pieces </s>` for each text (the layout of `Tokenizer.encode_source/encode_target`), as `Rows`."""
    return Rows.from_lists(tokenizer.piece_ids(texts, sampling), prefix, tokenizer.suffix)


def collate(examples: list[tuple[list[int], list[int]]], pad_idx: int) -> Seq2SeqBatch:
    """Pad (source ids, full target ids) pairs into a `Seq2SeqBatch`."""
    sources = Rows.from_lists([source for source, _ in examples])
    targets = Rows.from_lists([target for _, target in examples])
    return collate_rows(sources, targets, torch.arange(len(examples)), pad_idx)


def collate_rows(sources: Rows, targets: Rows, index: Tensor, pad_idx: int, length_multiple: int = 1) -> Seq2SeqBatch:
    """The pairs `index` of a pool (sources[i], full targets[i]) as a padded `Seq2SeqBatch` whose source and
    target lengths are multiples of `length_multiple`."""
    target_lengths = targets.lengths[index] - 1
    target = targets.padded(index, pad_idx, round_up(int(target_lengths.max()), length_multiple) + 1)
    return Seq2SeqBatch(
        source=sources.padded(index, pad_idx, round_up(int(sources.lengths[index].max()), length_multiple)),
        source_lengths=sources.lengths[index],
        target_input=_mask_final_eos(target[:, :-1], target_lengths, pad_idx),
        target_output=target[:, 1:].contiguous(),
        num_target_tokens=int(target_lengths.sum()),
    )


def round_up(value, multiple: int):
    """The smallest multiple of `multiple` that is >= `value` (an int, or elementwise for an integer tensor)."""
    return -(-value // multiple) * multiple


def length_order(source_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """Sort key that keeps both sides' lengths close within a batch (it is a snake through 2-D).

    Sentences are ordered by m = max(source, target length), the size the budget charges for;
    among equal m the order walks the L-shaped set of (source, target) lengths whose max is m, from
    short source to short target, alternating direction with m so that neighbouring groups meet
    at the same end. Consecutive sentences then differ little in *both* lengths. The key is one
    integer per sentence: m × (2·max m + 1) + (±(source − target)); sort it stably.
    """
    longest = torch.maximum(source_lengths, target_lengths)
    offset = source_lengths - target_lengths
    snake = torch.where(longest % 2 == 1, offset, -offset)
    scale = 2 * int(longest.max()) + 1 if longest.numel() else 1
    return longest * scale + snake


def _mask_final_eos(target_input: Tensor, target_lengths: Tensor, pad_idx: int) -> Tensor:
    """In rows shorter than the batch, [:-1] keeps the row's final </s>; it is not an input token."""
    positions = torch.arange(target_input.size(1)).unsqueeze(0)
    return target_input.masked_fill(positions >= target_lengths.unsqueeze(1), pad_idx)


class Seq2SeqBatches:
    """A re-iterable stream of batches of one split; each iteration is the next epoch."""

    def __init__(
        self,
        cfg: DataConfig,
        split: Split,
        tokenizer: Tokenizer,
        *,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        corpora: Sequence[RunCorpus] | None = None,
    ) -> None:
        """`corpora`: what to read (default, from `run_directions(cfg)`: every training corpus for "train", each
        trained direction's first corpus for "valid" and "test")."""
        check_data_config(cfg)
        self.cfg = cfg
        self.length_multiple = cfg.length_multiple or 1
        """Batch lengths are padded to multiples of this (unset: 1; a training run sets it, `shaped_for`)."""
        self.split = split
        self.tokenizer = tokenizer
        if corpora is None:
            run = run_directions(cfg)
            corpora = run.trained if split == "train" else run.primary
        self.entries = tuple(corpora)
        self.corpora = tuple(entry.corpus for entry in self.entries)
        self.directions = [entry.langs for entry in self.entries]
        self.source_lang, self.target_lang = self.directions[0]
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.next_epoch = 0
        self.skipped = Skipped(cfg.strict)
        """Sentences skipped in the most recent epoch, by reason."""
        self._prepared: list[PreparedSplit] | None = None
        """Each corpus's prepared split (token ids on disk, `fs2mini.prepared`), opened by `prepare`."""
        self._read_skipped = Skipped(cfg.strict)
        """What reading the corpus skipped; every epoch's `skipped` starts from a copy."""
        self._tag_ids = [self._tag_id(entry) for entry in self.entries]
        """Each corpus's tag as token ids put after the source language token ([] for an untagged corpus)."""

    def _tag_id(self, entry: RunCorpus) -> list[int]:
        tag = corpus_tag(entry.corpus)
        if tag is None:
            return []
        token = self.tokenizer.piece_id(tag)
        if token is None:
            raise UserError(f"{cli_flag(*entry.field, 'tag')} {tag!r} is not a token of tokenizer {self.tokenizer.model_path}; "
                            "expected a piece of its vocabulary (fs2mini adds the tags of a run's corpora when it trains one)")
        return [token]

    def prepare(self) -> list[PreparedSplit]:
        """Open each corpus's prepared split, encoding and caching it first if needed (done by the first
        epoch otherwise; the trainer calls it before training so the progress of a first preparation shows)."""
        if self._prepared is None:
            self._prepared = [open_or_prepare(entry.corpus, self.split, self.tokenizer, self.cfg.cache_dir,
                                              field=entry.field, workers=self.cfg.prepare_workers)
                              for entry in self.entries]
            self._read_skipped = Skipped(self.cfg.strict)
            for prepared in self._prepared:
                self._read_skipped.add_all(prepared.skipped["counts"], prepared.skipped["locations"])
        return self._prepared

    def text_pairs(self, limit: int | None = None) -> list[tuple[str, str]]:
        """The first `limit` (default: all) pairs of the first corpus as text, without reading the corpus again."""
        return self.prepare()[0].pairs(limit)

    def __iter__(self) -> Iterator[Seq2SeqBatch]:
        epoch = self.next_epoch
        self.next_epoch += 1
        return self.iter_epoch(epoch)

    def iter_epoch(self, epoch: int, skip: int = 0) -> Iterator[Seq2SeqBatch]:
        """The batches of one epoch after its first `skip` (which are cut but not padded: a resumed run
        skips what it consumed cheaply); the same (seed, epoch) always gives the same batches."""
        self.prepare()
        self.skipped = self._read_skipped.copy()
        if len(self.corpora) == 1:
            batches = self._batches(0, random.Random(f"{self.seed}-{epoch}-{self.split}"))
        elif not self.shuffle:
            batches = chain.from_iterable(self._batches(i, random.Random(f"{self.seed}-{epoch}-{self.split}-{i}"))
                                          for i in range(len(self.corpora)))
        else:
            batches = self._sampled(epoch)
        collated = self._collated(batches, skip)
        return self._warn_at_end(collated) if epoch == 0 else collated

    def _collated(self, batches: Iterator[tuple[Rows, Rows, list[int]]], skip: int) -> Iterator[Seq2SeqBatch]:
        pad_idx = self.tokenizer.vocab_info.pad_idx
        for position, (sources, targets, index) in enumerate(batches, start=1):
            if position > skip:
                yield collate_rows(sources, targets, torch.tensor(index), pad_idx, self.length_multiple)

    def _warn_at_end(self, batches: Iterator[Seq2SeqBatch]) -> Iterator[Seq2SeqBatch]:
        """`batches`, then one warning line if the epoch skipped pairs."""
        yield from batches
        if self.skipped:
            print(f"warning: skipped {sum(self.skipped.values())} {self.split} pairs: {self.skipped.summary()}", file=sys.stderr)

    def _sampled(self, epoch: int) -> Iterator[tuple[Rows, Rows, list[int]]]:
        """Training batches of several corpora, each batch's corpus drawn by `corpus_probabilities`."""
        sizes = [len(prepared) for prepared in self._prepared]
        weights = [corpus_weight(corpus) for corpus in self.corpora]
        probabilities = corpus_probabilities(self.directions, sizes, weights, self.cfg.sampling_temperature)
        last = max(range(len(sizes)), key=lambda i: sizes[i] / weights[i])  # the largest, counted in weighted passes
        streams = [self._passes(i, epoch, last=i == last) for i in range(len(sizes))]
        rng = random.Random(f"{self.seed}-{epoch}-{self.split}-directions")
        while (batch := next(streams[rng.choices(range(len(sizes)), probabilities)[0]], None)) is not None:
            yield batch  # (only the `last` corpus's stream ends: that ends the epoch)

    def _passes(self, index: int, epoch: int, last: bool) -> Iterator[tuple[Rows, Rows, list[int]]]:
        """Direction `index`'s batches, pass after pass (each shuffled anew); one pass when it is `last`."""
        for repeat_index in count():
            rng = random.Random(f"{self.seed}-{epoch}-{self.split}-{index}-{repeat_index}")
            produced = False
            for batch in self._batches(index, rng, count_skips=repeat_index == 0):
                produced = True
                yield batch
            if not produced:
                raise UserError(f"direction {direction_name(self.directions[index])} "
                                f"({describe_corpus(self.corpora[index])}) has no {self.split} pairs left after "
                                f"filtering (skipped: {self.skipped.summary() or 'nothing'})")
            if last:
                return

    def _batches(self, index: int, rng: random.Random, count_skips: bool = True) -> Iterator[tuple[Rows, Rows, list[int]]]:
        """One pass over corpus `index`'s pairs, as (source rows, target rows, pairs of one batch) of each pool; its
        skips are added to `skipped` when `count_skips` (a direction repeated within an epoch skips the same pairs
        again: only its first pass counts). Pairs are numbers into the prepared split until a pool reads its ids."""
        skipped = self.skipped if count_skips else Skipped(self.cfg.strict)
        prepared = self._prepared[index]
        pairs: Iterator[int] = iter(range(len(prepared)))
        if self.shuffle:
            pairs = shuffle_window(pairs, self.cfg.shuffle_window, rng)
        pairs = shard(pairs, self.rank, self.world_size)
        cfg = self.cfg
        source_lang, target_lang = self.directions[index]
        source_prefix = self.tokenizer.source_prefix(source_lang) + self._tag_ids[index]
        target_prefix = self.tokenizer.target_prefix(target_lang)
        for pool in chunk(pairs, cfg.pool_size):
            pool_index = np.array(pool, dtype=np.int64)
            if self.split == "train" and cfg.subword_alpha > 0:  # segmentations sampled anew, from the pool's text
                sampling = (cfg.subword_alpha, cfg.subword_nbest_size, rng.getrandbits(32))
                sources = encode_rows(self.tokenizer, prepared.texts(pool_index, "source"), source_prefix, sampling)
                targets = encode_rows(self.tokenizer, prepared.texts(pool_index, "target"), target_prefix, sampling)
            else:
                sources = Rows.from_pieces(*prepared.pieces(pool_index, "source"), source_prefix, self.tokenizer.suffix)
                targets = Rows.from_pieces(*prepared.pieces(pool_index, "target"), target_prefix, self.tokenizer.suffix)
            source_lengths, target_lengths = sources.lengths, targets.lengths - 1  # target without the leading </s>
            source_too_long = source_lengths > cfg.max_source_len
            target_too_long = ~source_too_long & (target_lengths > cfg.max_target_len)
            skipped.add("source longer than --data.max-source-len", count=int(source_too_long.sum()))
            skipped.add("target longer than --data.max-target-len", count=int(target_too_long.sum()))
            kept = torch.nonzero(~(source_too_long | target_too_long)).squeeze(1)
            order = kept[torch.sort(length_order(source_lengths[kept], target_lengths[kept]), stable=True).indices]
            longest = torch.maximum(source_lengths, target_lengths)
            sizes = round_up(longest, self.length_multiple).tolist()  # as the batch will be padded
            batches = batch_by_max_tokens(sizes, order.tolist(), cfg.max_tokens, skipped, cfg.batch_size_multiple)
            if self.shuffle:
                rng.shuffle(batches)
            for batch in batches:
                yield sources, targets, batch


def check_data_config(cfg: DataConfig) -> None:
    expect_positive_ints([
        ("--data.max-tokens", cfg.max_tokens),
        ("--data.max-source-len", cfg.max_source_len),
        ("--data.max-target-len", cfg.max_target_len),
        ("--data.shuffle-window", cfg.shuffle_window),
        ("--data.pool-size", cfg.pool_size),
        *([("--data.length-multiple", cfg.length_multiple)] if cfg.length_multiple is not None else []),
        ("--data.batch-size-multiple", cfg.batch_size_multiple),
    ])
    expect("--data.subword-alpha", cfg.subword_alpha, finite(cfg.subword_alpha) and cfg.subword_alpha >= 0,
           "a number >= 0 (0 = no subword regularization)")
    expect("--data.subword-nbest-size", cfg.subword_nbest_size, cfg.subword_nbest_size == -1 or cfg.subword_nbest_size > 0,
           "-1 (all segmentations) or a positive number")
    expect("--data.prepare-workers", cfg.prepare_workers, cfg.prepare_workers >= 0, "an integer >= 0 (0 = one per CPU core)")
    expect("--data.sampling-temperature", cfg.sampling_temperature,
           finite(cfg.sampling_temperature) and cfg.sampling_temperature > 0, "a number > 0 (1 = by size, larger = flatter)")


def epoch_batches(batches: Seq2SeqBatches, epoch: int, skip: int) -> Iterator[tuple[int, Seq2SeqBatch]]:
    """(batches consumed so far in the epoch, batch) for one epoch, after skipping `skip` batches."""
    return enumerate(batches.iter_epoch(epoch, skip=skip), start=skip + 1)
