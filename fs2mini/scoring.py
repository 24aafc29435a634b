"""Translation scores: BLEU and chrF with sacrebleu, and a translator's output scored against references.

`score_translations` and `translate_and_score` are what validation during training and `python -m fs2mini.evaluate`
both call, so the two report the same numbers. Scores use sacrebleu's `BLEU()` and `CHRF()` with their default
settings (mixed case) and the signatures kept with them say exactly how they were computed, so numbers can be
compared across papers and runs.

BLEU's tokenizer follows the target language, as WMT and sacrebleu's own `-l` do: 13a splits words at spaces
and punctuation, which Chinese and Japanese do not write and Korean writes between phrases, so a 13a BLEU of
those scores whole sentences as one "word". Chinese gets sacrebleu's `zh` (one token per character),
Japanese and Korean MeCab (`ja-mecab`, `ko-mecab`: the `cjk` extra, `pip install 'fs2mini[cjk]'`); without
MeCab they fall back to `char` (one token per character), and the score says so.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF

from fs2mini.data import direction_name
from fs2mini.errors import UserError
from fs2mini.generation import GenerationConfig
from fs2mini.tokenizer import base_code
from fs2mini.translator import Translator

BLEU_TOKENIZERS = {"zho": "zh", "cmn": "zh", "yue": "zh", "jpn": "ja-mecab", "kor": "ko-mecab"}
"""BLEU's tokenizer for a target language (its code without script); any other language gets 13a."""
FALLBACK_BLEU_TOKENIZER = "char"
"""The tokenizer of a language whose own is not installed (one token per character, as for Chinese)."""


@functools.cache
def _tokenizer_problem(name: str) -> str | None:
    """Why sacrebleu cannot build tokenizer `name` here (MeCab not installed, a model it cannot download), or None."""
    try:
        BLEU(tokenize=name)
    except Exception as err:  # sacrebleu raises RuntimeError, ImportError or a download error, as the tokenizer goes
        return " ".join(str(err).split()) or type(err).__name__
    return None


def check_bleu_tokenize(name: str | None, flag: str = "--bleu-tokenize") -> None:
    """Stop with one sentence unless `name` is None or one of sacrebleu's tokenizers that works here."""
    if name is None:
        return
    if name not in BLEU.TOKENIZERS:
        raise UserError(f"{flag} {name!r} is not a sacrebleu tokenizer; expected one of {', '.join(BLEU.TOKENIZERS)}")
    problem = _tokenizer_problem(name)
    if problem is not None:
        raise UserError(f"{flag} {name}: sacrebleu cannot use it here ({problem}); expected an installed tokenizer "
                        "(ja-mecab and ko-mecab: pip install 'fs2mini[cjk]')")


def bleu_tokenizer(target_lang: str | None, override: str | None = None) -> tuple[str, str | None]:
    """(the tokenizer BLEU uses into `target_lang`, or `override`; a note when it is not the language's own)."""
    if override is not None:
        return override, None
    name = BLEU_TOKENIZERS.get(base_code(target_lang), "13a") if target_lang is not None else "13a"
    if _tokenizer_problem(name) is None:
        return name, None
    return FALLBACK_BLEU_TOKENIZER, (f"BLEU into {target_lang} uses sacrebleu's {FALLBACK_BLEU_TOKENIZER} tokenizer: "
                                     f"{name} is not installed (pip install 'fs2mini[cjk]')")


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
    """Hypothesis length / reference length, in BLEU's tokens (1.0 = as long as the references)."""
    chrf_pp: float
    """chrF++ (chrF with word bigrams, sacrebleu's CHRF(word_order=2)), as WMT reports it next to chrF."""
    chrf_pp_signature: str
    bleu_tokenize: str
    """sacrebleu's tokenizer for BLEU (also in its signature): chosen by the target language, or given."""
    bleu_tokenize_note: str | None
    """Why it is not the target language's own (its library is not installed); None when it is."""


def score_translations(hypotheses: Sequence[str], references: Sequence[str], target_lang: str | None = None,
                       bleu_tokenize: str | None = None) -> TranslationScores:
    """Corpus BLEU and chrF of `hypotheses` against one reference each (sacrebleu defaults), BLEU tokenized as
    `bleu_tokenize` says or else as `target_lang` is written (13a when neither is given)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("no translations to score")
    tokenize, note = bleu_tokenizer(target_lang, bleu_tokenize)
    bleu, chrf = BLEU(tokenize=tokenize), CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    chrf_pp = CHRF(word_order=2)
    chrf_pp_score = chrf_pp.corpus_score(list(hypotheses), [list(references)])
    return TranslationScores(bleu_score.score, chrf_score.score, str(bleu.get_signature()), str(chrf.get_signature()),
                             tuple(bleu_score.precisions), bleu_score.bp, bleu_score.sys_len / max(bleu_score.ref_len, 1),
                             chrf_pp_score.score, str(chrf_pp.get_signature()), tokenize, note)


@dataclass(frozen=True)
class Evaluation:
    """What `translate_and_score` translated, what it produced, and the scores."""

    sources: list[str]
    references: list[str]
    hypotheses: list[str]
    scores: TranslationScores
    off_target: float | None = None
    """Fraction of hypotheses not in the target language (fs2mini/langid.py); None when not measured."""


def translate_and_score(
    translator: Translator, pairs: Sequence[tuple[str, str]], cfg: GenerationConfig, max_sentences: int | None = None,
    *, source_lang: str | None = None, target_lang: str | None = None, bleu_tokenize: str | None = None,
    measure_off_target: bool = False,
) -> Evaluation:
    """Translate the sources of the first `max_sentences` (source, reference) pairs (all if None) and score them
    (from `source_lang` into `target_lang`: by default the translator's), with the off-target rate if asked for
    (among the languages the translator has tokens for; None if the target has no identifier model).

    A blank source gives an empty hypothesis, scored against its reference like any other; the off-target rate
    leaves it out, since the model was given nothing to put in a language."""
    if max_sentences is not None and max_sentences <= 0:
        raise UserError(f"--max-sentences must be a positive integer, got {max_sentences}")
    pairs = list(pairs[:max_sentences] if max_sentences is not None else pairs)
    if not pairs:
        raise UserError(f"direction {direction_name(translator.languages(source_lang, target_lang))}: "
                        "no sentence pairs to translate")
    sources = [source for source, _ in pairs]
    references = [reference for _, reference in pairs]
    hypotheses = translator.translate(sources, cfg, source_lang=source_lang, target_lang=target_lang)
    target = translator.languages(source_lang, target_lang)[1]
    off_target = None
    if measure_off_target:
        from fs2mini.langid import off_target_rate  # loads py3langid: only runs that measure it need it

        translated = [hypothesis for source, hypothesis in zip(sources, hypotheses) if source.strip()]
        off_target = off_target_rate(translated, target, translator.tokenizer.lang_ids)
    return Evaluation(sources, references, hypotheses, score_translations(hypotheses, references, target, bleu_tokenize),
                      off_target)
