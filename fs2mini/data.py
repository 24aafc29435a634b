"""Batches for training and evaluation: corpus → shuffle → shard → encode → bucket → `Seq2SeqBatch`.

`Seq2SeqBatches` is re-iterable: each `iter()` is one epoch, shuffled by `(seed, epoch)` so a run
is reproducible and a resumed run can replay exactly the epoch it stopped in. Sharding happens on
raw text, before the (comparatively expensive) encoding, so each rank only encodes its own share.
Sentences are encoded a pool at a time with sentencepiece's batch call, sorted by length inside the
pool (see `length_order`) and cut into batches under a padded-token budget, which keeps padding to
about 3% of source+target positions on the Bible corpus at 4096 tokens (sorting by max(source,
target) alone left 7.6%).
"""

from __future__ import annotations

import random
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from fs2mini.corpus import BibleCorpus, Corpus, Split, corpus_languages, read_pairs
from fs2mini.errors import UserError
from fs2mini.pipeline import Skipped, batch_by_max_tokens, chunk, shard, shuffle_window
from fs2mini.tokenizer import Tokenizer


@dataclass(frozen=True)
class DataConfig:
    """Which corpus to read and how to cut it into batches."""

    corpus: Corpus = BibleCorpus()
    """Where sentence pairs come from."""
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


@dataclass(frozen=True)
class Seq2SeqBatch:
    """A padded batch; target_input is the target shifted right (it starts with </s> __lang__)."""

    source: Tensor  # (batch, src_len) int64
    source_lengths: Tensor  # (batch,) tokens per source row, without padding
    target_input: Tensor  # (batch, tgt_len) decoder input
    target_output: Tensor  # (batch, tgt_len) what the decoder must predict; pad where padded
    target_lengths: Tensor  # (batch,)
    num_target_tokens: int  # sum of target_lengths, kept as a Python int to avoid a device sync

    def to(self, device: torch.device) -> Seq2SeqBatch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Seq2SeqBatch(
            move(self.source),
            move(self.source_lengths),
            move(self.target_input),
            move(self.target_output),
            move(self.target_lengths),
            self.num_target_tokens,
        )

    @property
    def padding_fraction(self) -> float:
        """Share of source+target positions that are padding."""
        real = int(self.source_lengths.sum()) + self.num_target_tokens
        return 1.0 - real / (self.source.numel() + self.target_input.numel())


def collate(examples: list[tuple[list[int], list[int]]], pad_idx: int) -> Seq2SeqBatch:
    """Pad (source ids, full target ids) pairs into a `Seq2SeqBatch`."""
    sources = [source for source, _ in examples]
    targets = [target for _, target in examples]
    target = _pad(targets, pad_idx)
    target_lengths = torch.tensor([len(t) - 1 for t in targets], dtype=torch.long)
    return Seq2SeqBatch(
        source=_pad(sources, pad_idx),
        source_lengths=torch.tensor([len(s) for s in sources], dtype=torch.long),
        target_input=_mask_final_eos(target[:, :-1], target_lengths, pad_idx),
        target_output=target[:, 1:].contiguous(),
        target_lengths=target_lengths,
        num_target_tokens=sum(len(t) - 1 for t in targets),
    )


def _pad(rows: list[list[int]], pad_idx: int) -> Tensor:
    """(len(rows), longest row) int64 tensor, right-padded.

    The rows are laid end to end in one flat int64 buffer (a C loop per row) that the tensor then
    views: 3-4× faster than `torch.tensor` on nested lists, which converts element by element.
    """
    width = max(map(len, rows))
    padding = [pad_idx] * width
    flat = array("q")
    for row in rows:
        flat.extend(row)
        flat.extend(padding[: width - len(row)])
    return torch.frombuffer(flat, dtype=torch.long).view(len(rows), width)


def length_order(example: tuple[list[int], list[int]]) -> tuple[int, int]:
    """Sort key that keeps both sides' lengths close within a batch (it is a snake through 2-D).

    Sentences are ordered by m = max(source, target length), the size the budget charges for;
    among equal m the order walks the L-shaped set of (source, target) lengths whose max is m, from
    short source to short target, alternating direction with m so that neighbouring groups meet
    at the same end. Consecutive sentences then differ little in *both* lengths.
    """
    source_len, target_len = len(example[0]), len(example[1]) - 1
    longest = max(source_len, target_len)
    offset = source_len - target_len
    return longest, offset if longest % 2 else -offset


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
    ) -> None:
        check_data_config(cfg)
        self.cfg = cfg
        self.split = split
        self.tokenizer = tokenizer
        self.source_lang, self.target_lang = corpus_languages(cfg.corpus)
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.next_epoch = 0
        self.skipped = Skipped(cfg.strict)
        """Sentences skipped in the most recent epoch, by reason."""

    def __iter__(self) -> Iterator[Seq2SeqBatch]:
        epoch = self.next_epoch
        self.next_epoch += 1
        return self.iter_epoch(epoch)

    def iter_epoch(self, epoch: int) -> Iterator[Seq2SeqBatch]:
        """The batches of one epoch; the same (seed, epoch) always gives the same batches."""
        self.skipped = Skipped(self.cfg.strict)
        rng = random.Random(f"{self.seed}-{epoch}-{self.split}")
        pairs = read_pairs(self.cfg.corpus, self.split, self.skipped)
        if self.shuffle:
            pairs = shuffle_window(pairs, self.cfg.shuffle_window, rng)
        pairs = shard(pairs, self.rank, self.world_size)
        return self._batches(pairs, rng, warn=epoch == 0)

    def _batches(self, pairs, rng: random.Random, warn: bool) -> Iterator[Seq2SeqBatch]:
        pad_idx = self.tokenizer.vocab_info.pad_idx
        for pool in chunk(pairs, self.cfg.pool_size):
            sources = self.tokenizer.encode_source([source for source, _ in pool], self.source_lang)
            targets = self.tokenizer.encode_target([target for _, target in pool], self.target_lang)
            examples = []
            for source, target in zip(sources, targets):
                if len(source) > self.cfg.max_source_len:
                    self.skipped.add("source longer than --data.max-source-len")
                elif len(target) - 1 > self.cfg.max_target_len:
                    self.skipped.add("target longer than --data.max-target-len")
                else:
                    examples.append((source, target))
            batches = batch_by_max_tokens(
                examples, lambda e: max(len(e[0]), len(e[1]) - 1), self.cfg.max_tokens, self.skipped,
                sort_key=length_order,
            )
            if self.shuffle:
                rng.shuffle(batches)
            for batch in batches:
                yield collate(batch, pad_idx)
        if warn and self.skipped:
            print(f"warning: skipped {sum(self.skipped.values())} {self.split} pairs: {self.skipped.summary()}", file=sys.stderr)


def check_data_config(cfg: DataConfig) -> None:
    for flag, value in [
        ("--data.max-tokens", cfg.max_tokens),
        ("--data.max-source-len", cfg.max_source_len),
        ("--data.max-target-len", cfg.max_target_len),
        ("--data.shuffle-window", cfg.shuffle_window),
        ("--data.pool-size", cfg.pool_size),
    ]:
        if value <= 0:
            raise UserError(f"{flag} must be a positive integer, got {value}")
