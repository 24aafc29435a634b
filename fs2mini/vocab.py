"""What a model needs to know about a vocabulary, and nothing else.

Kept apart from the tokenizer so that model code (fs2mini/model.py, a recipe's own model) can be
built from a vocabulary description without importing sentencepiece or any tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VocabInfo:
    """Size of the vocabulary and the ids of its special tokens."""

    size: int
    pad_idx: int
    bos_idx: int
    eos_idx: int
    unk_idx: int
