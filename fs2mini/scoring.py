"""Translation scores: BLEU and chrF with sacrebleu, and a translator's output scored against references.

`score_translations` and `translate_and_score` are what validation during training and `python -m fs2mini.evaluate`
both call, so the two report the same numbers. Scores use sacrebleu's `BLEU()` and `CHRF()` with their default
settings (13a tokenisation, mixed case), and the signatures kept with them say exactly that, so numbers can be
compared across papers and runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF

from fs2mini.data import direction_name
from fs2mini.errors import UserError
from fs2mini.generation import GenerationConfig
from fs2mini.translator import Translator


@dataclass(frozen=True)
class TranslationScores:
    """Corpus-level scores and the sacrebleu signatures that say how they were computed.

    BLEU's parts are kept because a length problem hides in them: precisions can be good while
    the brevity penalty (translations shorter than the references) takes the score down."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    precisions: tuple[float, ...]
    """1- to 4-gram precisions (percent)."""
    brevity_penalty: float
    length_ratio: float
    """Hypothesis length / reference length, in 13a tokens (1.0 = as long as the references)."""
    chrf_pp: float
    """chrF++ (chrF with word bigrams, sacrebleu's CHRF(word_order=2)), as WMT reports it next to chrF."""
    chrf_pp_signature: str


def score_translations(hypotheses: Sequence[str], references: Sequence[str]) -> TranslationScores:
    """Corpus BLEU and chrF of `hypotheses` against one reference each (sacrebleu defaults)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("no translations to score")
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    chrf_pp = CHRF(word_order=2)
    chrf_pp_score = chrf_pp.corpus_score(list(hypotheses), [list(references)])
    return TranslationScores(bleu_score.score, chrf_score.score, str(bleu.get_signature()), str(chrf.get_signature()),
                             tuple(bleu_score.precisions), bleu_score.bp, bleu_score.sys_len / max(bleu_score.ref_len, 1),
                             chrf_pp_score.score, str(chrf_pp.get_signature()))


@dataclass(frozen=True)
class Evaluation:
    """What `translate_and_score` translated, what it produced, and the scores."""

    sources: list[str]
    references: list[str]
    hypotheses: list[str]
    scores: TranslationScores


def translate_and_score(
    translator: Translator, pairs: Sequence[tuple[str, str]], cfg: GenerationConfig, max_sentences: int | None = None,
    *, source_lang: str | None = None, target_lang: str | None = None,
) -> Evaluation:
    """Translate the sources of the first `max_sentences` (source, reference) pairs (all if None) and score them
    (from `source_lang` into `target_lang`: by default the translator's)."""
    if max_sentences is not None and max_sentences <= 0:
        raise UserError(f"--max-sentences must be a positive integer, got {max_sentences}")
    pairs = list(pairs[:max_sentences] if max_sentences is not None else pairs)
    if not pairs:
        raise UserError(f"direction {direction_name(translator.languages(source_lang, target_lang))}: "
                        "no sentence pairs to translate")
    sources = [source for source, _ in pairs]
    references = [reference for _, reference in pairs]
    hypotheses = translator.translate(sources, cfg, source_lang=source_lang, target_lang=target_lang)
    return Evaluation(sources, references, hypotheses, score_translations(hypotheses, references))
