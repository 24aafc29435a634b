"""Scale, at a size CI affords (benchmarks/scale.py's corpus and commands): a prepared 200 k-pair corpus trains
in the memory of a 20 k-pair one, and a run resumed mid-epoch ends with the weights of one that never stopped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scale  # noqa: E402

pytestmark = pytest.mark.slow

SIZES = (20_000, 200_000)
STEPS = 10
"""Updates of the memory runs, and K of the resume check (K then resume to 2·K, against 2·K at once)."""
POOL = ("--data.pool-size", "10000")
"""Both corpora larger than a pool, so that what is compared is the corpus size: a pool's encoded sentences are held
at once (~1.2 KB a pair here), and the default pool of 100 k pairs would hold all of the small corpus but not the large."""


@pytest.fixture(scope="module")
def setups(tmp_path_factory) -> dict[int, scale.Setup]:
    """Each size's corpus, tokenizer (small: sentencepiece on 20 k sentences) and 2-worker cache."""
    root = tmp_path_factory.mktemp("scale")
    found = {}
    for num_pairs in SIZES:
        path, _ = scale.write_corpus(root, num_pairs)
        setup = scale.Setup(path, *scale.held_out(root), root / str(num_pairs), vocab_size=2000,
                            max_training_sentences=20_000, extra=POOL)
        found[num_pairs] = setup
        prepared = scale.prepare(setup, workers=2)  # (trains the tokenizer first)
        assert prepared["pairs"]["train"] > 0.99 * num_pairs
    return found


def test_corpus_is_deterministic_and_parallel(tmp_path):
    first, _ = scale.write_corpus(tmp_path / "a", 3000, seed=1)
    again, _ = scale.write_corpus(tmp_path / "b", 3000, seed=1)
    other, _ = scale.write_corpus(tmp_path / "c", 3000, seed=2)
    assert first.read_bytes() == again.read_bytes() != other.read_bytes()
    lines = first.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3000 and all(line.count("\t") == 1 for line in lines)
    assert len(set(lines)) > 2500  # recombined, not a few verses repeated


def test_peak_rss_does_not_grow_with_the_corpus(setups, tmp_path):
    peak = {n: scale.train(setup, tmp_path / f"run-{n}", STEPS, STEPS)["peak_rss_mb"] for n, setup in setups.items()}
    small, large = peak[SIZES[0]], peak[SIZES[1]]
    assert large - small < 100, f"peak RSS {large:.0f} MB at {SIZES[1]:,} pairs vs {small:.0f} MB at {SIZES[0]:,}"


def test_resume_mid_epoch_is_exact(setups, tmp_path):
    setup = setups[SIZES[1]]
    straight = scale.train(setup, tmp_path / "straight", 2 * STEPS, STEPS)
    stopped = scale.train(setup, tmp_path / "stopped", STEPS, STEPS)
    resumed = scale.train(setup, tmp_path / "stopped", 2 * STEPS, STEPS)
    assert (straight["start_step"], stopped["start_step"], resumed["start_step"]) == (0, 0, STEPS)
    assert resumed["first_update_s"] is not None  # (it made update STEPS + 1)
    expected, got = scale.final_weights(tmp_path / "straight"), scale.final_weights(tmp_path / "stopped")
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"resumed weights differ from the uninterrupted run's in {different}"
