"""How often py3langid is wrong about text known to be in its language: the Bible's own test references.

The off-target rate (fs2mini/langid.py) counts a translation as off-target when the identifier does not find the
target language in it; whatever it finds wrongly in correct text is counted against the model. This script
measures that floor on every Bible of `fs2mini.corpus.BIBLES` (the test split: Jonah, Galatians, Philippians,
1 Peter, 406 verses), identifying each reference among three sets of languages: English and its own (a
bilingual run), the 22 languages of the Bibles (the largest run the corpus gives), and all of py3langid's.
It is why the rate chooses among the run's languages. Takes a few seconds.

    python benchmarks/langid_references.py
"""

from __future__ import annotations

from fs2mini.corpus import BIBLES, BibleCorpus, read_pairs
from fs2mini.langid import off_target_rate
from fs2mini.pipeline import Skipped


def main() -> None:
    bible_langs = sorted({lang for lang, _ in BIBLES.values()})
    print(f"{'bible':>5} {'lang':>4} {'verses':>6}  {'eng + it':>8}  {f'{len(bible_langs)} bible langs':>14}  {'all py3langid':>13}")
    for code, (lang, _) in BIBLES.items():
        references = [reference for _, reference in read_pairs(BibleCorpus("k", code), "test", Skipped())]
        rates = [off_target_rate(references, lang, among) for among in (["eng"], bible_langs, [])]
        print(f"{code:>5} {lang:>4} {len(references):>6}  " + "  ".join(
            f"{rate:>{width}.2%}" for rate, width in zip(rates, (8, 14, 13))))


if __name__ == "__main__":
    main()
