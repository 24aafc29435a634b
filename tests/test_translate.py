"""Translation: a trained reversal model translates unseen inputs through the API and the CLI; bad input fails cleanly."""

import dataclasses
import io
import shutil
import subprocess
import sys

import pytest
import tyro
from sacrebleu.metrics import BLEU

from fs2mini.errors import UserError
from fs2mini.generation import GenerationConfig
from synthetic import reversal_pairs
from fs2mini.translate import TranslateArgs, main
from fs2mini.translator import Translator


@pytest.fixture(scope="module")
def held_out(reversal_tsv):
    """40 letter sequences (3–8 words) that are not sources in the training TSV, with their reversals."""
    seen = {line.split("\t")[0] for line in reversal_tsv.read_text().splitlines()}
    return [(source, target) for source, target in reversal_pairs(100, seed=123) if source not in seen][:40]


@pytest.fixture(scope="module")
def translator(trained_reversal_run):
    return Translator.from_run(trained_reversal_run, device="cpu")


def bleu(hypotheses, references):
    return BLEU().corpus_score(hypotheses, [references]).score


@pytest.mark.parametrize("beam_size", [1, 4])
def test_unseen_inputs_are_translated_through_the_python_api(translator, held_out, beam_size):
    sources, references = zip(*held_out)
    hypotheses = translator.translate(list(sources), GenerationConfig(beam_size=beam_size, batch_size=7))
    assert bleu(hypotheses, list(references)) > 90
    assert translator("a b c d") == "d c b a"


def test_outputs_keep_input_order_with_mixed_lengths_and_small_batches(translator, held_out):
    sources = [source for source, _ in held_out]
    hypotheses = translator.translate(sources, GenerationConfig(beam_size=2, batch_size=3))
    # Out-of-order outputs would match almost none of their sources' reversals.
    assert sum(h == " ".join(reversed(s.split())) for h, s in zip(hypotheses, sources)) >= 0.9 * len(sources)


def test_nbest_gives_distinct_translations_best_first(translator):
    (nbest,) = translator.translate_nbest(["c a b"], GenerationConfig(beam_size=4, nbest=3))
    assert len(nbest) == 3 and len({text for text, _ in nbest}) == 3
    assert nbest[0][0] == "b a c"
    assert [score for _, score in nbest] == sorted((score for _, score in nbest), reverse=True)


def test_cli_translates_stdin_line_by_line(trained_reversal_run, held_out):
    sources, references = zip(*held_out)
    proc = subprocess.run(
        [sys.executable, "-m", "fs2mini.translate", str(trained_reversal_run), "--batch-size", "5", "--beam-size", "2"],
        input="\n".join(sources) + "\n", capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(sources)
    assert bleu(lines, list(references)) > 90


def test_cli_keeps_empty_lines_and_truncates_an_over_long_line_with_a_warning(trained_reversal_run):
    text = "c b a\n\n" + " ".join(["a"] * 1100) + "\nf e d\n"
    proc = subprocess.run(
        [sys.executable, "-m", "fs2mini.translate", str(trained_reversal_run), "--beam-size", "1",
         "--max-len-a", "0", "--max-len-b", "6"],
        input=text, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[0] == "a b c" and lines[1] == "" and lines[3] == "d e f" and len(lines) == 5
    assert "warning: line 3 has 1102 tokens; truncated" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_nbest_prints_numbered_scored_lines(trained_reversal_run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a b c\n\nd e\n"))
    main([str(trained_reversal_run), "--beam-size", "3", "--nbest", "2"])
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows] == ["1", "1", "2", "3", "3"]
    assert rows[0][2] == "c b a" and rows[3][2] == "e d"


def test_generation_flags_parse_without_a_prefix():
    args = tyro.cli(TranslateArgs, args=["run", "--beam-size", "2", "--max-len-a", "1.5", "--max-len-b", "3",
                                         "--len-penalty", "0.5", "--nbest", "2", "--batch-size", "8", "--device", "cpu"])
    assert args.generation == GenerationConfig(beam_size=2, max_len_a=1.5, max_len_b=3, len_penalty=0.5, nbest=2, batch_size=8)


def test_sampling_flags_parse_without_a_prefix():
    args = tyro.cli(TranslateArgs, args=["run", "--sampling", "--beam-size", "1", "--temperature", "0.7", "--top-k", "10",
                                         "--top-p", "0.9", "--seed", "3", "--nbest", "4"])
    assert args.generation == GenerationConfig(beam_size=1, sampling=True, temperature=0.7, top_k=10, top_p=0.9, seed=3, nbest=4)


def test_sampling_through_the_api_is_seeded_and_independent_of_batching(translator, held_out):
    sources = [source for source, _ in held_out] + ["", "a b c"]
    cfg = GenerationConfig(beam_size=1, sampling=True, temperature=3.0, seed=1, nbest=2, batch_size=64)
    first = translator.translate_nbest(sources, cfg)
    # Other batches (and other neighbours: the last 10 alone): the same samples.
    again = translator.translate_nbest(sources, dataclasses.replace(cfg, batch_size=3))
    tail = translator.translate_nbest(sources[-10:], cfg)
    assert [[text for text, _ in hyps] for hyps in again] == [[text for text, _ in hyps] for hyps in first]
    assert [[text for text, _ in hyps] for hyps in tail] == [[text for text, _ in hyps] for hyps in first[-10:]]
    assert first[-2] == [("", 0.0)]  # an empty line is not sampled
    greedy = translator.translate(sources, GenerationConfig(beam_size=1))
    assert [hyps[0][0] for hyps in first] != greedy  # temperature 3 leaves the arg-max
    other_seed = translator.translate(sources, dataclasses.replace(cfg, seed=2, nbest=1))
    assert other_seed != [hyps[0][0] for hyps in first]
    # Top-k 1 is greedy decoding, whatever the temperature.
    assert translator.translate(sources, GenerationConfig(beam_size=1, sampling=True, top_k=1, temperature=3.0)) == greedy


def test_cli_samples_reproducibly(trained_reversal_run, monkeypatch, capsys):
    outputs = []
    for seed in ("5", "5", "6"):
        monkeypatch.setattr(sys, "stdin", io.StringIO("a b c d e f\nk j i h\n"))
        main([str(trained_reversal_run), "--sampling", "--beam-size", "1", "--temperature", "4", "--seed", seed,
              "--nbest", "3"])
        outputs.append(capsys.readouterr().out)
    rows = [line.split("\t") for line in outputs[0].splitlines()]
    assert [row[0] for row in rows] == ["1", "1", "1", "2", "2", "2"]
    assert outputs[0] == outputs[1] and outputs[2] != outputs[0]


def run_main(argv, monkeypatch, capsys, stdin="a b c\n"):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def copy_run_without_checkpoints(run_dir, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(run_dir / name, copy / name)
    return copy


def test_missing_run_directory_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    code, err = run_main([str(tmp_path / "nope")], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: run directory") and err.count("\n") == 1


def test_run_without_config_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    code, err = run_main([str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "config.json does not exist" in err and err.count("\n") == 1


def test_run_without_checkpoints_is_a_one_line_error(trained_reversal_run, tmp_path, monkeypatch, capsys):
    code, err = run_main([str(copy_run_without_checkpoints(trained_reversal_run, tmp_path))], monkeypatch, capsys)
    assert code == 2 and "no checkpoint in" in err and err.count("\n") == 1


def test_unknown_checkpoint_name_lists_the_available_ones(trained_reversal_run, monkeypatch, capsys):
    code, err = run_main([str(trained_reversal_run), "--checkpoint", "nope"], monkeypatch, capsys)
    assert code == 2 and "--checkpoint nope" in err and "step_00000600.pt" in err


def test_corrupt_checkpoint_fails_cleanly_in_a_subprocess(trained_reversal_run, tmp_path):
    run = copy_run_without_checkpoints(trained_reversal_run, tmp_path)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "fs2mini.translate", str(run)], input="a b c\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: checkpoint") and "corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_best_checkpoint_is_preferred_to_the_newest_step(trained_reversal_run, tmp_path, monkeypatch, capsys):
    run = copy_run_without_checkpoints(trained_reversal_run, tmp_path)
    shutil.copytree(trained_reversal_run / "checkpoints", run / "checkpoints")
    (run / "checkpoints" / "best.pt").unlink(missing_ok=True)
    assert Translator.from_run(run, device="cpu").checkpoint_path.name == "step_00000600.pt"
    (run / "checkpoints" / "best.pt").write_bytes(b"broken best")  # as training does: say so, use the next one
    monkeypatch.setattr(sys, "stdin", io.StringIO("a b c\n"))
    main([str(run)])  # exits normally
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and "warning: checkpoint" in err and "best.pt is corrupt" in err and "trying step_00000600.pt" in err


@pytest.mark.parametrize("field, value", [("num_encoder_attn_heads", 2), ("scale_embeddings", False)])
def test_a_checkpoint_of_another_architecture_with_the_same_shapes_is_refused(trained_reversal_run, tmp_path, monkeypatch,
                                                                              capsys, field, value):
    """Weights of a model with other heads (or embedding scale) have the run's shapes: they loaded and translated
    wrongly without a word. The checkpoint's recorded architecture is compared with config.json first."""
    from fs2mini.checkpoint import load_checkpoint, write_checkpoint

    run = copy_run_without_checkpoints(trained_reversal_run, tmp_path)
    state = load_checkpoint(trained_reversal_run / "checkpoints" / "best.pt")
    configured = state["config"]["model"][field]
    other = {**state["config"], "model": {**state["config"]["model"], field: value}}
    path = run / "checkpoints" / "other.pt"
    write_checkpoint(path, state["model"], config=other, tokenizer=state["tokenizer"], step=state["step"])
    with pytest.raises(UserError) as refused:
        Translator.from_run(run, "other.pt", device="cpu")
    assert str(refused.value) == (f"checkpoint {path} was trained with {field} {value}; {run / 'config.json'} has {field} "
                                  f"{configured}; expected a checkpoint of this run")
    code, err = run_main([str(run), "--checkpoint", "other.pt"], monkeypatch, capsys)
    assert code == 2 and err == f"error: {refused.value}\n"
