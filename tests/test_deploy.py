"""Every run leaves fs2mini: export of a run trained with fs2mini's own tokenizer to the transformers
M2M100 layout, and from there to CTranslate2, computing the same translations in float32."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fs2mini.errors import UserError  # noqa: E402
from fs2mini.generation import GenerationConfig  # noqa: E402
from fs2mini.hf import export_run, main as hf_main  # noqa: E402
from fs2mini.relayout import to_nllb_ids  # noqa: E402
from fs2mini.translate import main as translate_main  # noqa: E402
from fs2mini.translator import Translator  # noqa: E402


def _sources(tsv, n=60):
    return [line.split("\t")[0] for line in tsv.read_text(encoding="utf-8").splitlines()[:n]]


@pytest.fixture(scope="module")
def exported(trained_reversal_run, tmp_path_factory):
    out = export_run(trained_reversal_run, tmp_path_factory.mktemp("export") / "m2m100")
    return trained_reversal_run, out


def test_relayout_keeps_every_id_meaning(trained_reversal_run):
    """Row i of the rewritten table is the row of the token that id i now names, for every token."""
    ours = Translator.from_run(trained_reversal_run, device="cpu").tokenizer
    table = torch.arange(ours.vocab_info.size, dtype=torch.float32).unsqueeze(1)
    nllb = to_nllb_ids(ours, {"embed.weight": table})
    from fs2mini.tokenizer import Tokenizer

    theirs = Tokenizer(ours.model_path, ours.langs, model_bytes=nllb.model_bytes, layout=nllb.layout)
    texts = ["a b c d", "j i h g f e", "k l a"]
    back = nllb.state["embed.weight"].squeeze(1).long()
    for lang in ours.langs:
        assert [[int(back[i]) for i in row] for row in theirs.encode_source(texts, lang)] == ours.encode_source(texts, lang)
        assert [[int(back[i]) for i in row] for row in theirs.encode_target(texts, lang)] == ours.encode_target(texts, lang)


def test_exported_run_translates_the_same_in_transformers(exported, reversal_tsv):
    run, out = exported
    translator = Translator.from_run(run, device="cpu")
    source_lang, target_lang = translator.source_lang, translator.target_lang
    texts = _sources(reversal_tsv)
    ours = translator.translate(texts, GenerationConfig(beam_size=1))
    # The codes are exported under their piece names: transformers finds added tokens inside words, so a code
    # named `eng` would split "length" (and `fra` "fragile") where sentencepiece does not.
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, src_lang=f"__{source_lang}__", tgt_lang=f"__{target_lang}__")
    nllb = to_nllb_ids(translator.tokenizer, translator.model.state_dict())
    from fs2mini.tokenizer import Tokenizer

    relaid = Tokenizer(out / "sentencepiece.bpe.model", (source_lang,), layout=nllb.layout)
    words = ["length fragile", "a b c", "engine fra eng"]
    assert hf_tok(words)["input_ids"] == relaid.encode_source(words, source_lang)
    hf_model = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    batch = hf_tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = hf_model.generate(**batch, forced_bos_token_id=hf_tok.convert_tokens_to_ids(f"__{target_lang}__"),
                                      num_beams=1, do_sample=False, max_new_tokens=40)
    theirs = [text.strip() for text in hf_tok.batch_decode(generated, skip_special_tokens=True)]
    assert theirs == ours
    assert len(set(ours)) > 20  # real, varied translations, not one string


def test_ctranslate2_equals_fs2mini_in_float32(exported, reversal_tsv, tmp_path, capsys):
    pytest.importorskip("ctranslate2", reason="ctranslate2 is an optional extra (pip install 'fs2mini[deploy]')")
    run, _ = exported
    out = tmp_path / "ct2"
    hf_main(["ctranslate2", str(run), str(out), "--quantization", "float32"])
    assert (out / "model.bin").is_file() and not list(tmp_path.glob(".ct2.*"))
    translator = Translator.from_run(run, device="cpu")
    converted = Translator.from_run(out)
    assert (converted.source_lang, converted.target_lang) == (translator.source_lang, translator.target_lang)
    with pytest.raises(UserError, match="is a CTranslate2 model, which holds one set of weights"):
        Translator.from_run(out, checkpoint="best")
    texts = _sources(reversal_tsv) + ["", "a"]
    for cfg in (GenerationConfig(beam_size=1), GenerationConfig(beam_size=4),
                GenerationConfig(beam_size=1, max_len_a=0.0, max_len_b=3)):  # the same length limits too
        assert converted.translate(texts, cfg) == translator.translate(texts, cfg)
    # Sampling maps to CTranslate2's: its own draws, reproducible for a seed; top-k 1 is greedy.
    sampled = GenerationConfig(beam_size=1, sampling=True, temperature=3.0, seed=3, nbest=2)
    first = converted.translate_nbest(texts, sampled)
    assert converted.translate_nbest(texts, sampled) == first and all(len(hyps) == 2 for hyps in first[:-2])
    assert [hyps[0][0] for hyps in first] != converted.translate(texts, GenerationConfig(beam_size=1))
    assert converted.translate(texts, GenerationConfig(beam_size=1, sampling=True, top_k=1, seed=3)) == \
        translator.translate(texts, GenerationConfig(beam_size=1))
    # The command line takes the converted directory as it takes a run directory.
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts[:5]) + "\n", encoding="utf-8")
    capsys.readouterr()
    translate_main([str(out), "--input", str(source), "--beam-size", "1"])
    assert capsys.readouterr().out.splitlines() == translator.translate(texts[:5], GenerationConfig(beam_size=1))


def test_ctranslate2_int8_translates(exported, reversal_tsv, tmp_path):
    pytest.importorskip("ctranslate2", reason="ctranslate2 is an optional extra (pip install 'fs2mini[deploy]')")
    run, _ = exported
    hf_main(["ctranslate2", str(run), str(tmp_path / "int8")])
    texts = _sources(reversal_tsv, 30)
    ours = Translator.from_run(run, device="cpu").translate(texts, GenerationConfig(beam_size=1))
    theirs = Translator.from_run(tmp_path / "int8").translate(texts, GenerationConfig(beam_size=1))
    assert sum(a == b for a, b in zip(ours, theirs)) >= 0.8 * len(texts)  # int8 weights: nearly always the same


def test_export_refuses_runs_that_cannot_be_expressed(trained_reversal_run, tmp_path, capsys):
    """A run trained before position_offset became 2 cannot compute the same function in M2M100: one line, no output."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained_reversal_run, old)
    config = json.loads((old / "config.json").read_text())
    config["model"]["position_offset"] = 0
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as stop:
        hf_main(["export", str(old), str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "position_offset 0" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(SystemExit):
        hf_main(["ctranslate2", str(trained_reversal_run), str(tmp_path / "taken")])
    assert "already exists" in capsys.readouterr().err and (tmp_path / "taken" / "x").read_text() == "mine"
