"""Evaluation: sacrebleu scores with signatures, the evaluate CLI's report and files, clean errors."""

import json
import shutil

import pytest

from fs2mini.errors import UserError
from fs2mini.evaluate import main
from fs2mini.scoring import score_translations, translate_and_score
from fs2mini.generation import GenerationConfig
from fs2mini.translator import Translator


def test_scores_and_signatures_use_sacrebleu_defaults():
    perfect = score_translations(["the cat sat .", "a dog"], ["the cat sat .", "a dog"])
    assert perfect.bleu == pytest.approx(100.0) and perfect.chrf == pytest.approx(100.0)
    assert "nrefs:1" in perfect.bleu_signature and "tok:13a" in perfect.bleu_signature
    assert "nrefs:1" in perfect.chrf_signature
    assert score_translations(["x y z w"], ["the cat sat ."]).bleu < 1.0
    with pytest.raises(ValueError):
        score_translations(["a"], ["a", "b"])


def test_translate_and_score_takes_the_first_max_sentences(trained_reversal_run):
    translator = Translator.from_run(trained_reversal_run, device="cpu")
    pairs = [("a b c", "c b a"), ("k j i h", "h i j k"), ("h i", "i h")]
    result = translate_and_score(translator, pairs, GenerationConfig(beam_size=2), max_sentences=2)
    assert result.sources == ["a b c", "k j i h"] and result.references == ["c b a", "h i j k"]
    assert len(result.hypotheses) == 2 and result.hypotheses[0] == "c b a"
    assert result.scores == score_translations(result.hypotheses, result.references)


def test_a_blank_source_gives_an_empty_hypothesis_left_out_of_the_off_target_rate(trained_reversal_run, monkeypatch):
    from fs2mini import langid

    measured = []
    monkeypatch.setattr(langid, "off_target_rate", lambda hypotheses, target, among: measured.append(hypotheses) or 0.5)
    translator = Translator.from_run(trained_reversal_run, device="cpu")
    result = translate_and_score(translator, [("a b c", "c b a"), (" ", "x y"), ("h i", "i h")], GenerationConfig(beam_size=1),
                                 measure_off_target=True)
    assert result.hypotheses == ["c b a", "", "i h"] and result.off_target == 0.5
    assert measured == [["c b a", "i h"]]  # the model was given nothing to put in a language
    assert result.scores == score_translations(["c b a", "", "i h"], ["c b a", "x y", "i h"])


def test_cli_reports_loss_ppl_bleu_chrf_and_writes_aligned_files(trained_reversal_run, tmp_path, capsys):
    output = tmp_path / "out" / "test.hyp"
    main([str(trained_reversal_run), "--split", "test", "--beam-size", "2", "--output", str(output)])
    report = capsys.readouterr().out
    for field in ("loss", "ppl", "BLEU", "chrF", "BLEU signature: nrefs:1", "chrF signature: nrefs:1"):
        assert field in report
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["split"] == "test" and record["step"] in (300, 600) and record["generation"]["beam_size"] == 2
    assert record["bleu"] > 90 and record["chrf"] > 90 and record["loss"] < 0.2 and record["ppl"] < 1.2
    sources, references, hypotheses = (output.with_suffix(s).read_text().splitlines() for s in (".src", ".ref", ".hyp"))
    assert len(sources) == len(references) == len(hypotheses) == record["pairs"] == record["translated"] > 0
    assert references[0] == " ".join(reversed(sources[0].split()))


def test_cli_writes_under_the_run_directory_by_default(trained_reversal_run, capsys):
    main([str(trained_reversal_run), "--split", "valid", "--beam-size", "1", "--max-sentences", "5"])
    assert len((trained_reversal_run / "eval" / "valid.hyp").read_text().splitlines()) == 5
    assert json.loads((trained_reversal_run / "eval" / "valid.json").read_text())["translated"] == 5


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_unknown_split_is_a_one_line_error(trained_reversal_run, capsys):
    code, err = run_main([str(trained_reversal_run), "--split", "dev"], capsys)
    assert code == 2 and err == "error: --split 'dev' is not a split; expected one of train, valid, test\n"


def test_missing_run_is_a_one_line_error(tmp_path, capsys):
    code, err = run_main([str(tmp_path / "nope"), "--split", "test"], capsys)
    assert code == 2 and err.startswith("error: run directory") and err.count("\n") == 1


def test_empty_split_is_a_one_line_error(trained_reversal_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_reversal_run, run, ignore=shutil.ignore_patterns("eval"))
    config = json.loads((run / "config.json").read_text())
    config["data"]["corpus"]["test_percent"] = 0.0
    (run / "config.json").write_text(json.dumps(config))
    code, err = run_main([str(run), "--split", "test"], capsys)
    assert code == 2 and "test split" in err and "no sentence pairs" in err and err.count("\n") == 1


def test_any_test_set_is_scored_from_two_aligned_files_with_chrf_plus_plus(trained_reversal_run, tmp_path, capsys):
    from fs2mini.evaluate import EvaluateArgs, evaluate

    (tmp_path / "my.src").write_text("a b c\nd e f g\n", encoding="utf-8")
    (tmp_path / "my.ref").write_text("c b a\ng f e d\n", encoding="utf-8")
    record = evaluate(EvaluateArgs(trained_reversal_run, source=tmp_path / "my.src", reference=tmp_path / "my.ref",
                                   device="cpu", output=tmp_path / "out" / "my.hyp"))
    assert record["pairs"] == 2 and record["bleu"] > 50 and record["chrf_pp"] > 50 and record["loss"] < 1.0
    assert "chrF++ signature:" in capsys.readouterr().out
    assert (tmp_path / "out" / "my.hyp").read_text().splitlines() == ["c b a", "g f e d"]
    (tmp_path / "short.ref").write_text("c b a\n", encoding="utf-8")
    with pytest.raises(UserError, match="has 2 lines but --reference .*short.ref has 1"):
        evaluate(EvaluateArgs(trained_reversal_run, source=tmp_path / "my.src", reference=tmp_path / "short.ref"))
    with pytest.raises(UserError, match="--source and --reference go together"):
        evaluate(EvaluateArgs(trained_reversal_run, source=tmp_path / "my.src"))


def test_bleu_tokenizer_follows_the_target_language(monkeypatch):
    from fs2mini import scoring
    from fs2mini.scoring import bleu_tokenizer

    assert [bleu_tokenizer(lang)[0] for lang in ("zho", "zho_Hans", "cmn", "fra", "eng_Latn", "rev")] == [
        "zh", "zh", "zh", "13a", "13a", "13a"]
    assert bleu_tokenizer(None) == ("13a", None) and bleu_tokenizer("jpn", "char") == ("char", None)
    # MeCab where the cjk extra is installed (make install installs it), else per character with a note.
    assert bleu_tokenizer("jpn") in (("ja-mecab", None), ("char", "BLEU into jpn uses sacrebleu's char tokenizer: ja-mecab "
                                                                   "is not installed (pip install 'fs2mini[cjk]')"))
    assert bleu_tokenizer("kor_Hang")[0] in ("ko-mecab", "char")
    monkeypatch.setattr(scoring, "_tokenizer_problem", lambda name: "no MeCab" if "mecab" in name else None)
    assert bleu_tokenizer("kor")[0] == "char" and "ko-mecab is not installed" in bleu_tokenizer("kor")[1]
    assert bleu_tokenizer("zho")[0] == "zh"
    with pytest.raises(UserError, match=r"^--bleu-tokenize ja-mecab: sacrebleu cannot use it here \(no MeCab\); expected an "
                                        r"installed tokenizer \(ja-mecab and ko-mecab: pip install 'fs2mini\[cjk\]'\)$"):
        scoring.check_bleu_tokenize("ja-mecab")


def test_bleu_into_japanese_and_chinese_counts_words_not_sentences():
    hypothesis, reference = "初めに、神は天と地を創造された。", "初めに、神は天と地を造られた。"
    assert score_translations([hypothesis], [reference]).bleu == 0.0  # 13a: each sentence one "word"
    japanese = score_translations([hypothesis], [reference], "jpn")
    assert japanese.bleu > 30 and f"tok:{japanese.bleu_tokenize}" in japanese.bleu_signature
    assert japanese.bleu_tokenize in ("ja-mecab", "char")
    chinese = score_translations(["起初神创造天地。"], ["起初，神创造天地。"], "zho_Hans")
    assert chinese.bleu > 40 and "tok:zh" in chinese.bleu_signature and chinese.bleu_tokenize_note is None


def test_bleu_tokenize_flag_overrides_and_off_target_is_reported(trained_reversal_run, tmp_path, capsys):
    from fs2mini.langid import off_target_rate

    output = tmp_path / "char" / "test.hyp"
    main([str(trained_reversal_run), "--max-sentences", "20", "--bleu-tokenize", "char", "--output", str(output)])
    report = capsys.readouterr().out
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["bleu_tokenize"] == "char" and "tok:char" in record["bleu_signature"] and record["bleu_tokenize_note"] is None
    assert "BLEU signature: nrefs:1|case:mixed|eff:no|tok:char" in report
    hypotheses = output.read_text(encoding="utf-8").splitlines()
    assert record["off_target"] == off_target_rate(hypotheses, "fra", ["eng", "fra"]) and 0.0 <= record["off_target"] <= 1.0
    assert f"off-target {record['off_target']:.1%}: translations py3langid does not identify as fra" in report
    main([str(trained_reversal_run), "--max-sentences", "5", "--off-target", "never", "--output", str(output)])
    assert json.loads(output.with_suffix(".json").read_text())["off_target"] is None
    assert "off-target" not in capsys.readouterr().out


def test_unknown_bleu_tokenize_is_one_error_line_before_loading(tmp_path, capsys):
    code, err = run_main([str(tmp_path / "no-run"), "--bleu-tokenize", "mecab"], capsys)
    assert code == 2 and err == ("error: --bleu-tokenize 'mecab' is not a sacrebleu tokenizer; expected one of none, zh, "
                                 "13a, intl, char, ja-mecab, ko-mecab, spm, flores101, flores200, spBLEU-1K\n")
