"""The off-target rate (fs2mini/langid.py) on text of known languages, its code table against py3langid's model,
and the rate in multilingual validation."""

import dataclasses

import pytest

from conftest import tiny_config
from fs2mini.corpus import TsvCorpus
from fs2mini.errors import UserError
from fs2mini.langid import LABELS, identify, langid_label, off_target_rate, require_identifier
from helpers import read_metrics

ENGLISH = ["In the beginning God created the heaven and the earth.",
           "And the earth was without form, and void; and darkness was upon the face of the deep.",
           "And God said, Let there be light: and there was light.",
           "And God saw the light, that it was good."]
FRENCH = ["Au commencement, Dieu créa les cieux et la terre.",
          "La terre était informe et vide: il y avait des ténèbres à la surface de l'abîme.",
          "Dieu dit: Que la lumière soit! Et la lumière fut.",
          "Dieu vit que la lumière était bonne."]


def test_english_into_french_is_all_off_target_and_french_none():
    assert off_target_rate(ENGLISH, "fra", ["eng", "fra"]) == 1.0
    assert off_target_rate(FRENCH, "fra", ["eng", "fra"]) == 0.0
    assert off_target_rate(FRENCH, "fra_Latn", []) == 0.0  # among all of py3langid's languages
    assert off_target_rate(ENGLISH, "eng", ["eng", "fra", "deu"]) == 0.0


def test_a_mix_gives_the_fraction_and_an_empty_answer_counts_as_off_target():
    assert off_target_rate(FRENCH[:3] + ENGLISH[:1], "fra", ["eng", "fra"]) == 0.25
    assert off_target_rate([*FRENCH[:2], *ENGLISH[:3]], "fra", ["eng", "fra"]) == pytest.approx(3 / 5)
    assert off_target_rate([*FRENCH[:3], ""], "fra", ["eng", "fra"]) == 0.25
    assert identify(["", "12:3 ...", FRENCH[0]], ["eng", "fra"]) == [None, None, "fr"]


def test_identification_chooses_among_the_run_languages():
    # py3langid over all its languages takes this Indonesian verse for Malay; among a run's languages it is Indonesian.
    verse = "Datanglah firman TUHAN kepada Yunus bin Amitai, demikian:"
    assert identify([verse], []) == ["ms"]
    assert identify([verse], ["eng", "ind"]) == ["id"]
    assert off_target_rate([verse], "ind", ["eng"]) == 0.0
    assert identify([ENGLISH[0]], ["fra", "deu", "xyz"]) in (["fr"], ["de"])  # only the run's languages can come out


def test_codes_map_to_the_labels_of_py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    assert LABELS == set(LanguageIdentifier.from_model_file(MODEL_FILE).labels) - {"zxx"}
    assert [langid_label(code) for code in ("eng", "fra_Latn", "zho_Hans", "cmn", "jpn", "kor", "swh", "yue", "fr")] == [
        "en", "fr", "zh", "zh", "ja", "ko", "sw", "yue", "fr"]
    assert langid_label("xyz") is None and langid_label("rev") is None


def test_a_language_without_an_identifier_model_is_not_measured_or_an_error_when_asked_for():
    assert off_target_rate(FRENCH, "xyz", ["eng", "fra"]) is None
    assert off_target_rate([], "fra", ["eng"]) is None
    require_identifier("fra_Latn", "--off-target always")
    with pytest.raises(UserError, match=r"^--off-target always: language xyz has no identifier model \(py3langid knows"):
        require_identifier("xyz", "--off-target always")


@pytest.fixture(scope="module")
def two_target_run(reversal_tsv, tokenizer_cache, tmp_path_factory):
    """eng→fra and eng→deu on the reversal corpus, a few steps: enough to validate with translations."""
    from fs2mini.trainer import train

    cfg = tiny_config(reversal_tsv, tmp_path_factory.mktemp("two-targets") / "run", tokenizer_cache,
                      max_steps=10, validate_every=10, checkpoint_every=10, valid_translate_sentences=6)
    deu = TsvCorpus(path=reversal_tsv, target_lang="deu", valid_percent=3.0, test_percent=3.0)
    return train(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, more_corpora=(deu,))))


def test_validation_of_a_run_into_two_languages_reports_each_off_target_rate(two_target_run):
    valid = [m for m in read_metrics(two_target_run / "metrics.jsonl") if m["split"] == "valid"]
    last = valid[-1]
    rates = []
    for name, target in (("eng-fra", "fra"), ("eng-deu", "deu")):
        rows = (two_target_run / "translations" / f"valid_step_{last['step']:08d}.{name}.tsv").read_text("utf-8").splitlines()
        hypotheses = [row.split("\t")[2] for row in rows]
        assert len(hypotheses) == 6 and last[f"{name}/off_target"] == pytest.approx(
            off_target_rate(hypotheses, target, ["eng", "fra", "deu"]))
        rates.append(last[f"{name}/off_target"])
    assert last["off_target"] == pytest.approx(sum(rates) / 2)
    assert valid[0]["step"] == 0 and "off_target" not in valid[0]  # nothing translated at step 0
