"""`evaluate --source --reference`: the user's files are never written, every input line gives one output line
(in step, even when each file has its bad lines elsewhere), and what became of an empty side is said once."""

import json
import os

import pytest

from fs2mini.evaluate import main
from fs2mini.scoring import score_translations


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_output_next_to_the_inputs_is_refused_and_leaves_them_as_they_were(trained_reversal_run, tmp_path, capsys,
                                                                           monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    source, reference = data / "test.src", data / "test.ref"
    source.write_bytes(b"a b c\n\xff x\n\nd e f g\n")
    reference.write_bytes(b"c b a\nx\nz\ng f e d\n")
    before = {path: path.read_bytes() for path in (source, reference)}
    code, err = run_main([str(trained_reversal_run), "--source", str(source), "--reference", str(reference),
                          "--output", str(data / "test.hyp")], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: --output {data / 'test.hyp'} would overwrite --")
    assert "expected an --output whose .src, .ref, .hyp and .json files are none of evaluate's inputs" in err
    assert {path: path.read_bytes() for path in (source, reference)} == before
    assert sorted(path.name for path in data.iterdir()) == ["test.ref", "test.src"]  # no .hyp or .json either

    # The same file by another spelling: a relative path, a symlink, a hard link.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(reference, elsewhere / "mine.ref")
    os.link(source, elsewhere / "linked.src")
    for output, named in ((elsewhere / "mine.hyp", f"--reference {reference}"), (elsewhere / "linked.hyp", f"--source {source}")):
        code, err = run_main([str(trained_reversal_run), "--source", str(source), "--reference", str(reference),
                              "--output", str(output)], capsys)
        assert code == 2 and err.count("\n") == 1 and named in err
    monkeypatch.chdir(tmp_path)
    code, err = run_main([str(trained_reversal_run), "--source", "data/test.src", "--reference", str(reference),
                          "--output", "data/../data/test.hyp"], capsys)
    assert code == 2 and "would overwrite --source data/test.src" in err
    assert {path: path.read_bytes() for path in (source, reference)} == before


def test_the_run_config_and_the_default_output_are_never_overwritten(trained_reversal_run, tmp_path, capsys):
    config = trained_reversal_run / "config.json"
    before = config.read_bytes()
    code, err = run_main([str(trained_reversal_run), "--max-sentences", "2", "--output", str(trained_reversal_run / "config.hyp")],
                         capsys)
    assert code == 2 and err.count("\n") == 1 and f"would overwrite the run's config {config}" in err
    assert config.read_bytes() == before
    # Files evaluate wrote before, scored again with the default output: it would write onto them.
    main([str(trained_reversal_run), "--max-sentences", "3", "--beam-size", "1"])
    capsys.readouterr()
    written = trained_reversal_run / "eval"
    code, err = run_main([str(trained_reversal_run), "--source", str(written / "test.src"), "--reference",
                          str(written / "test.ref")], capsys)
    assert code == 2 and err.startswith(f"error: the default --output {written / 'test.hyp'} would overwrite --source")


def test_every_input_line_gives_one_output_line_in_step(trained_reversal_run, tmp_path, capsys):
    # Bad lines at different places in each file: an empty source (2), an empty reference (3), a source that is
    # not UTF-8 (4), a reference that is not UTF-8 (6), both sides empty (7).
    (tmp_path / "my.src").write_bytes(b"a b c\n\nd e f g\nh \xff i\nj k\nl m n\n \nk j i h\n")
    (tmp_path / "my.ref").write_bytes(b"c b a\ne d\n\ni h\nk j\nn \xfe m l\n\nh i j k\n")
    output = tmp_path / "out" / "my.hyp"
    main([str(trained_reversal_run), "--source", str(tmp_path / "my.src"), "--reference", str(tmp_path / "my.ref"),
          "--output", str(output), "--beam-size", "2"])
    captured = capsys.readouterr()
    sources, references, hypotheses = (output.with_suffix(s).read_text(encoding="utf-8").split("\n")[:-1]
                                       for s in (".src", ".ref", ".hyp"))
    assert sources == ["a b c", "", "d e f g", "", "j k", "l m n", "", "k j i h"]
    assert references == ["c b a", "e d", "", "i h", "k j", "", "", "h i j k"]
    # Line i of the output translates line i of --source: the model reverses its input.
    assert hypotheses[0] == "c b a" and hypotheses[4] == "k j" and hypotheses[7] == "h i j k"
    assert hypotheses[2] == "g f e d" and hypotheses[5]  # translated, scored against an empty reference
    assert hypotheses[1] == hypotheses[3] == hypotheses[6] == ""  # no source, no translation
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["pairs"] == record["translated"] == 8 and record["incomplete_pairs"] == 5 and record["dropped_pairs"] == 0
    assert record["incomplete"] == {"empty line": 4, "invalid utf-8": 2}
    assert record["bleu"] == pytest.approx(score_translations(hypotheses, references).bleu)  # scored as written
    notes = [line for line in captured.err.splitlines() if "empty or unreadable" in line]
    assert len(notes) == 1
    assert notes[0].startswith(f"{tmp_path / 'my.src'} / {tmp_path / 'my.ref'}: 5 of 8 lines have an empty or unreadable "
                               "side, kept as empty lines so that each output line stays with its input line: 3 without a "
                               "source (empty hypothesis), 2 without a reference (translation scored against an empty one); "
                               "left out of the loss. ")
    assert "my.src:2" in notes[0] and "my.ref:3" in notes[0] and "my.src:4" in notes[0] and "my.ref:6" in notes[0]
    assert "8 pairs (5 with an empty or unreadable side, scored as such; loss over 3)" in captured.out


def test_files_of_different_lengths_are_one_error_naming_both(trained_reversal_run, tmp_path, capsys):
    (tmp_path / "my.src").write_text("a b c\nd e\n", encoding="utf-8")
    (tmp_path / "long.ref").write_text("c b a\ne d\nx\ny\n", encoding="utf-8")
    output = tmp_path / "out" / "my.hyp"
    code, err = run_main([str(trained_reversal_run), "--source", str(tmp_path / "my.src"), "--reference",
                          str(tmp_path / "long.ref"), "--output", str(output)], capsys)
    assert code == 2 and err == (f"error: --source {tmp_path / 'my.src'} has 2 lines but --reference {tmp_path / 'long.ref'} "
                                 "has 4; expected aligned files, one sentence per line\n")
    assert not output.parent.exists()


def test_a_test_set_without_one_complete_pair_is_an_error(trained_reversal_run, tmp_path, capsys):
    (tmp_path / "my.src").write_text("a b c\n\n", encoding="utf-8")
    (tmp_path / "my.ref").write_text("\ne d\n", encoding="utf-8")
    code, err = run_main([str(trained_reversal_run), "--source", str(tmp_path / "my.src"), "--reference",
                          str(tmp_path / "my.ref"), "--output", str(tmp_path / "out" / "my.hyp")], capsys)
    assert code == 2 and err.count("\n") == 1 and "has no sentence pairs" in err
