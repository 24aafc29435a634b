"""Off-target rate: the share of translations that are not in the language they were asked for.

A multilingual model's commonest failure is answering in the wrong language (the source language, or another
of its target languages; worst in zero-shot directions), which BLEU blurs into a low score. Each translation
is given to py3langid, a naive Bayes identifier over byte n-grams that ships its own model (4 MB, no
download), and counted off-target when the language it finds is not the target.

The identifier only chooses among the languages the model was trained on (those of its language tokens),
not among all 140 it knows. A model cannot answer in a language it has never seen, and on close languages the
full identifier confuses the Bible's own references (16 % of the Indonesian test verses as Malay, 7 % of the
Turkish ones as Crimean Tatar, 2 % of a Spanish Bible as Galician or Extremaduran), a rate that would measure
the identifier, not the model. With only the target language known to the identifier, the choice is among
all of them.

fs2mini's codes are ISO 639-3, as NLLB writes them (`fra`, `zho_Hans`); py3langid's labels are mostly
ISO 639-1 (`fr`, `zh`), so `ISO639_1` maps one to the other.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from fs2mini.errors import UserError
from fs2mini.tokenizer import base_code

if TYPE_CHECKING:  # py3langid is imported when a language is first identified (loading its model takes 0.5 s)
    from py3langid.langid import LanguageIdentifier

# ISO 639-3 code (individual and macrolanguage codes, both as NLLB uses them) -> py3langid's label.
ISO639_1: dict[str, str] = {
    "afr": "af", "amh": "am", "arg": "an", "ara": "ar", "arb": "ar", "asm": "as", "aze": "az", "azj": "az",
    "bak": "ba", "bel": "be", "bul": "bg", "ben": "bn", "bre": "br", "bos": "bs", "cat": "ca", "ces": "cs",
    "cym": "cy", "dan": "da", "deu": "de", "dzo": "dz", "ell": "el", "eng": "en", "epo": "eo", "spa": "es",
    "est": "et", "ekk": "et", "eus": "eu", "fas": "fa", "pes": "fa", "fin": "fi", "fao": "fo", "fra": "fr",
    "fry": "fy", "gle": "ga", "gla": "gd", "glg": "gl", "guj": "gu", "hau": "ha", "heb": "he", "hin": "hi",
    "hrv": "hr", "hat": "ht", "hun": "hu", "hye": "hy", "ind": "id", "ibo": "ig", "isl": "is", "ita": "it",
    "jpn": "ja", "jav": "jv", "kat": "ka", "kaz": "kk", "khm": "km", "kan": "kn", "kor": "ko", "kur": "ku",
    "kmr": "ku", "kir": "ky", "lat": "la", "ltz": "lb", "lug": "lg", "lin": "ln", "lao": "lo", "lit": "lt",
    "lav": "lv", "lvs": "lv", "mlg": "mg", "plt": "mg", "mkd": "mk", "mal": "ml", "mon": "mn", "khk": "mn",
    "mar": "mr", "msa": "ms", "zsm": "ms", "mlt": "mt", "mya": "my", "nep": "ne", "npi": "ne", "nld": "nl",
    "nno": "nn", "nor": "no", "nob": "no", "oci": "oc", "orm": "om", "gaz": "om", "ori": "or", "ory": "or",
    "pan": "pa", "pol": "pl", "pus": "ps", "pbt": "ps", "por": "pt", "que": "qu", "quy": "qu", "ron": "ro",
    "rus": "ru", "kin": "rw", "san": "sa", "sme": "se", "sin": "si", "slk": "sk", "slv": "sl", "sna": "sn",
    "som": "so", "sqi": "sq", "als": "sq", "srp": "sr", "sot": "st", "swe": "sv", "swa": "sw", "swh": "sw",
    "tam": "ta", "tel": "te", "tgk": "tg", "tha": "th", "tuk": "tk", "tgl": "tl", "fil": "tl", "tur": "tr",
    "tat": "tt", "uig": "ug", "ukr": "uk", "urd": "ur", "uzb": "uz", "uzn": "uz", "vie": "vi", "vol": "vo",
    "wln": "wa", "xho": "xh", "yor": "yo", "zho": "zh", "cmn": "zh", "zul": "zu",
}

THREE_LETTER_LABELS = frozenset({
    "ace", "ary", "arz", "bcl", "crh", "ext", "fuv", "gcf", "gcr", "gom", "grc", "gug", "guw", "hbo", "kab",
    "kik", "lij", "ltg", "nso", "pcm", "sdh", "uzs", "vec", "wuu", "yue"})
"""py3langid's labels that are ISO 639-3 codes already (languages without a two-letter code)."""

LABELS = frozenset(ISO639_1.values()) | THREE_LETTER_LABELS
"""Every language py3langid identifies (its model also has `zxx`, no linguistic content, which is never a target)."""


def langid_label(lang: str) -> str | None:
    """py3langid's label for an fs2mini language code (`fra`, `fra_Latn`, or a two-letter `fr`); None if it has none."""
    code = base_code(lang)
    return code if code in LABELS else ISO639_1.get(code)


def require_identifier(lang: str, flag: str) -> None:
    """Stop with one sentence when `lang` has no identifier model, for a user who asked for the off-target rate."""
    if langid_label(lang) is None:
        raise UserError(f"{flag}: language {lang} has no identifier model (py3langid knows {len(LABELS)} languages, "
                        "e.g. eng, fra, deu, zho, jpn, kor); expected a target language it knows")


@functools.cache
def _identifier() -> LanguageIdentifier:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE)


def identify(texts: Sequence[str], among: Collection[str]) -> list[str | None]:
    """py3langid's label of each text, the most likely of those of the languages `among` (fs2mini codes; those
    without an identifier model are left out, and with fewer than two left, all of py3langid's languages count).
    None for a text without a letter (empty, digits, punctuation), which carries no evidence of a language."""
    candidates = {label for lang in among if (label := langid_label(lang)) is not None}
    identifier = _identifier()
    found: list[str | None] = []
    for text in texts:
        if not any(char.isalpha() for char in text):
            found.append(None)
            continue
        ranked = identifier.rank(text)  # (label, score) of every language, best first
        found.append(next(label for label, _ in ranked if label in candidates) if len(candidates) > 1 else ranked[0][0])
    return found


def off_target_rate(hypotheses: Sequence[str], target_lang: str, among: Collection[str]) -> float | None:
    """The fraction of `hypotheses` not identified as `target_lang`, choosing among the languages `among` and the
    target; None when the target language has no identifier model or there are no hypotheses.

    A hypothesis without a letter counts as off-target: an empty answer is not one in the target language,
    and leaving it out would let a model that answers nothing look perfect."""
    target = langid_label(target_lang)
    if target is None or not hypotheses:
        return None
    return sum(label != target for label in identify(hypotheses, {*among, target_lang})) / len(hypotheses)
