"""A synthetic corpus whose task is known to be learnable: reverse a sequence of letters.

Tests and the kill/resume soak script (benchmarks/kill_resume.py) need a corpus that is small, offline, and
that a tiny model learns exactly in seconds, so success and failure are unambiguous.
"""

from __future__ import annotations

import random
from pathlib import Path

LETTERS = "abcdefghijkl"


def reversal_pairs(num_pairs: int, seed: int = 0) -> list[tuple[str, str]]:
    """(`x y z`, `z y x`) pairs of 3–8 letters."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(num_pairs):
        words = [rng.choice(LETTERS) for _ in range(rng.randint(3, 8))]
        pairs.append((" ".join(words), " ".join(reversed(words))))
    return pairs


def write_reversal_tsv(path: Path, num_pairs: int, seed: int = 0) -> Path:
    """Lines `x y z<TAB>z y x<TAB>attribution`, the Tatoeba/manythings layout."""
    lines = [f"{source}\t{target}\tCC-BY test" for source, target in reversal_pairs(num_pairs, seed)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
