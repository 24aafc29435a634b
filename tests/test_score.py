"""Per-sentence scores (fs2mini.forced, python -m fs2mini.score): they add up to validation's loss on the same pairs,
come back in input order whatever the batching, equal the scores search reports, and bad input is one error line."""

import json
import math

import pytest

from fs2mini.evaluate import main as evaluate_main
from fs2mini.forced import score_pairs
from fs2mini.generation import GenerationConfig
from fs2mini.score import main
from fs2mini.translator import Translator


@pytest.fixture(scope="module")
def translator(trained_reversal_run):
    return Translator.from_run(trained_reversal_run, device="cpu")


@pytest.fixture(scope="module")
def pairs(reversal_tsv):
    """Correct pairs of the training file, then wrong ones (a target that is not the reversal)."""
    rows = [line.split("\t")[:2] for line in reversal_tsv.read_text(encoding="utf-8").splitlines()[:60]]
    return [(source, target) for source, target in rows] + [(source, source) for source, _ in rows[:20]]


def scores_of(translator, pairs, max_tokens=512):
    sources, targets = zip(*pairs)
    return score_pairs(translator.model, translator.tokenizer, sources, targets, translator.source_lang,
                       translator.target_lang, max_tokens=max_tokens, device=translator.device)


def test_scores_add_up_to_the_validation_loss_of_the_same_pairs(translator, pairs, trained_reversal_run, tmp_path):
    """Summed over pairs (with the forced language token that training also predicts), minus the scores are the NLL
    `evaluate --source --reference` computes through the data pipeline (the prepared cache's encoding, its batches,
    validation's `compute_nll`)."""
    source, reference = write(tmp_path / "src.txt", [s for s, _ in pairs]), write(tmp_path / "ref.txt", [t for _, t in pairs])
    evaluate_main([str(trained_reversal_run), "--source", source, "--reference", reference, "--beam-size", "1",
                   "--max-sentences", "1", "--device", "cpu", "--output", str(tmp_path / "eval" / "out.hyp")])
    record = json.loads((tmp_path / "eval" / "out.json").read_text())
    scores = scores_of(translator, pairs)
    assert sum(s.tokens + 1 for s in scores) == record["tokens"]
    assert -sum(s.log_prob + s.lang_log_prob for s in scores) == pytest.approx(record["nll"] * record["tokens"], rel=1e-5)


def test_scores_keep_input_order_whatever_the_batches(translator, pairs):
    scores = scores_of(translator, pairs)
    assert len(scores) == len(pairs) and len({round(s.log_prob, 3) for s in scores}) > 20
    for other in (scores_of(translator, pairs, max_tokens=20), scores_of(translator, pairs, max_tokens=100_000),
                  scores_of(translator, pairs[::-1])[::-1]):
        assert [s.tokens for s in other] == [s.tokens for s in scores]
        assert [s.log_prob for s in other] == pytest.approx([s.log_prob for s in scores], abs=1e-4)
    # The trained model prefers the reversal to the copy of each source.
    correct, wrong = scores[:20], scores[60:]
    assert all(c.per_token > w.per_token for c, w in zip(correct, wrong))
    assert all(s.per_token == s.log_prob / s.tokens for s in scores)


def test_scores_are_the_log_probabilities_search_reports(translator, pairs):
    """A greedy translation scored by force-decoding: the sum of the positional scores greedy search reported."""
    sources = [source for source, _ in pairs[:30]]
    found = translator.search(sources, GenerationConfig(beam_size=1))
    texts = [translator.tokenizer.decode(hyps[0].tokens) for hyps in found]
    same = [i for i, (hyps, text) in enumerate(zip(found, texts))  # (where re-encoding gives the same pieces)
            if translator.tokenizer.encode_target([text], translator.target_lang)[0][2:-1] == list(hyps[0].tokens)]
    assert len(same) >= 20
    scores = scores_of(translator, [(sources[i], texts[i]) for i in same])
    for i, score in zip(same, scores):
        assert score.log_prob == pytest.approx(sum(found[i][0].positional_scores), abs=1e-4)
        assert score.tokens == len(found[i][0].tokens) + 1


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_cli_prints_one_line_per_pair_in_order(trained_reversal_run, translator, pairs, tmp_path, capsys):
    sources, targets = [s for s, _ in pairs[:10]] + ["", "a b"], [t for _, t in pairs[:10]] + ["c", ""]
    args = [str(trained_reversal_run), "--source", write(tmp_path / "s", sources), "--target", write(tmp_path / "t", targets),
            "--max-tokens", "16", "--device", "cpu"]
    main(args)
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    expected = scores_of(translator, list(zip(sources, targets)))
    assert len(rows) == 12 and [int(row[1]) for row in rows] == [s.tokens for s in expected]
    assert [float(row[0]) for row in rows] == pytest.approx([s.log_prob for s in expected], abs=1e-4)
    assert [float(row[2]) for row in rows] == pytest.approx([s.per_token for s in expected], abs=1e-4)
    assert rows[-1][1] == "1"  # an empty target is only </s>
    main([*args, "--output", str(tmp_path / "scores.tsv")])
    assert [line.split("\t") for line in (tmp_path / "scores.tsv").read_text().splitlines()] == rows


def test_cli_scores_nan_for_a_target_too_long_and_goes_on(trained_reversal_run, tmp_path, capsys):
    main([str(trained_reversal_run), "--source", write(tmp_path / "s", ["a b", "c d", "e f"]),
          "--target", write(tmp_path / "t", ["b a", " ".join(["a"] * 1100), "f e"]), "--device", "cpu"])
    captured = capsys.readouterr()
    rows = [line.split("\t") for line in captured.out.splitlines()]
    assert rows[1][0] == "nan" and rows[1][2] == "nan" and not math.isnan(float(rows[0][0])) and len(rows) == 3
    assert "warning: line 2: the target has 1102 tokens, more than the model's max_seq_len 1024; scored nan" in captured.err


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err, captured.out


@pytest.mark.parametrize("case,expected", [
    ("misaligned", "--source {tmp}/s has 3 lines but --target {tmp}/t2 has 2; expected aligned files"),
    ("missing", "--target {tmp}/nope does not exist; expected a text file"),
    ("unknown language", "--target-lang 'deu': the run has no such language; expected one of eng, fra"),
    ("zero max tokens", "--max-tokens must be a positive integer, got 0"),
    ("no run", "run directory {tmp}/no-run does not exist"),
    ("invalid UTF-8", "1 pair(s) could not be read (line 2); their lines say nan"),
])
def test_bad_input_is_one_error_line(case, expected, trained_reversal_run, tmp_path, capsys):
    source, target = write(tmp_path / "s", ["a b", "c d", "e f"]), write(tmp_path / "t", ["b a", "d c", "f e"])
    args = {"misaligned": [str(trained_reversal_run), "--source", source, "--target", write(tmp_path / "t2", ["b a", "d c"])],
            "missing": [str(trained_reversal_run), "--source", source, "--target", str(tmp_path / "nope")],
            "unknown language": [str(trained_reversal_run), "--source", source, "--target", target, "--target-lang", "deu"],
            "zero max tokens": [str(trained_reversal_run), "--source", source, "--target", target, "--max-tokens", "0"],
            "no run": [str(tmp_path / "no-run"), "--source", source, "--target", target],
            "invalid UTF-8": [str(trained_reversal_run), "--source", source, "--target", target]}[case]
    if case == "invalid UTF-8":
        (tmp_path / "t").write_bytes(b"b a\n\xff d c\nf e\n")
    code, err, out = run_main(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and expected.format(tmp=tmp_path) in lines[-1], err
    assert all(line.startswith("warning: ") for line in lines[:-1]) and "Traceback" not in err
    if case == "invalid UTF-8":  # every other pair is scored, the bad one says nan
        assert [line.split("\t")[0] == "nan" for line in out.splitlines()] == [False, True, False]
        assert "warning: line 2: " in err
