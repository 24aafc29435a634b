"""fs2mini.hf: import/export of Hugging Face M2M100/NLLB checkpoints, equal to transformers in fp32.

Every model here is a tiny, fully random M2M100 (layer-norm gains and biases included) saved with
`save_pretrained`, with a tiny sentencepiece model in NLLB's layout around it: no network.
"""

import json
import random

import pytest
import sentencepiece as spm
import torch

transformers = pytest.importorskip("transformers")

from fs2mini.generation import GenerationConfig  # noqa: E402
from fs2mini.hf import export_run, import_checkpoint, main  # noqa: E402
from fs2mini.tokenizer import LAYOUT_FILE  # noqa: E402
from fs2mini.translator import Translator, pad_sources  # noqa: E402

CODES = ["deu_Latn", "eng_Latn", "fra_Latn", "spa_Latn"]
WORDS = "the cat sat on a mat and dog ran far le chat est sur tapis un chien court loin".split()


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def write_nllb_dir(path, *, layers=2, dim=16, scale_embedding=True, seed=0, max_positions=64):
    """A random M2M100 with an NLLB-layout tokenizer, as save_pretrained writes it; returns (model, vocab_size)."""
    path.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_sentences(300, 1)), model_prefix=str(path / "spm"),
                                   vocab_size=40, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, model_type="bpe",
                                   )
    (path / "spm.model").rename(path / "sentencepiece.bpe.model")
    (path / "spm.vocab").unlink()
    vocab_size = 40 + 1 + len(CODES) + 1  # fairseq offset, language codes, <mask>
    config = transformers.M2M100Config(
        vocab_size=vocab_size, d_model=dim, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=2 * dim, decoder_ffn_dim=2 * dim, max_position_embeddings=max_positions,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=scale_embedding, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(seed)
    model = transformers.M2M100ForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.05 if "embed" in name or "shared" in name else 0.5)
            if "layer_norm" in name and name.endswith("weight"):
                p.add_(1.0)
        # </s> along the final layer norm's bias: some random outputs end early, others run to the length limit.
        bias = model.model.decoder.layer_norm.bias
        model.model.shared.weight[2] = 0.32 * bias / bias.norm()
    model.save_pretrained(path)
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "NllbTokenizer",
                                                            "additional_special_tokens": CODES}))
    return model.eval(), vocab_size


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    hf_model, _ = write_nllb_dir(root / "hf")
    import_checkpoint(str(root / "hf"), root / "run", "eng_Latn", "fra_Latn")
    return hf_model, Translator.from_run(root / "run", device="cpu"), root


def _batch(translator, texts):
    tok = translator.tokenizer
    sources = tok.encode_source(texts, "eng_Latn")
    targets = tok.encode_target(texts[::-1], "fra_Latn")
    source, lengths = pad_sources(sources, tok.vocab_info.pad_idx, torch.device("cpu"))
    target, _ = pad_sources([t[:-1] for t in targets], tok.vocab_info.pad_idx, torch.device("cpu"))
    return source, lengths, target


def test_import_writes_run_dir(imported):
    _, translator, root = imported
    run = root / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "tokenizer.model", LAYOUT_FILE, "checkpoints"}
    tok = translator.tokenizer
    assert (tok.vocab_info.pad_idx, tok.vocab_info.bos_idx, tok.vocab_info.eos_idx, tok.vocab_info.unk_idx) == (1, 0, 2, 3)
    assert tok.lang_ids == {"eng_Latn": 42, "fra_Latn": 43}
    source = tok.encode_source(["the cat"], "eng_Latn")[0]
    assert source[0] == 42 and source[-1] == 2
    assert tok.target_prefix("fra_Latn") == [2, 43]
    assert tok.decode(source) == "the cat"


def test_logits_equal_transformers(imported):
    hf_model, translator, _ = imported
    source, lengths, target = _batch(translator, _sentences(8, 5))
    pad = translator.tokenizer.vocab_info.pad_idx
    with torch.no_grad():
        ours = translator.model(source, lengths, target).logits()
        theirs = hf_model(input_ids=source, attention_mask=(source != pad).long(), decoder_input_ids=target,
                          decoder_attention_mask=(target != pad).long()).logits
    real = target != pad
    assert real.sum() > 20 and (~real).any()
    assert (ours[real] - theirs[real]).abs().max() < 1e-4


def _hf_generate(hf_model, source, pad, lang_id, **kwargs):
    prompt = torch.tensor([[2, lang_id]]).expand(source.size(0), -1)
    with torch.no_grad():
        out = hf_model.generate(input_ids=source, attention_mask=(source != pad).long(), decoder_input_ids=prompt,
                                do_sample=False, suppress_tokens=[0, 1, 42, 43], **kwargs)
    return [row[2:].tolist() for row in out]


def _strip(ids, eos=2, pad=1):
    ids = list(ids)
    return ids[: ids.index(eos)] if eos in ids else [i for i in ids if i != pad]


@pytest.mark.slow
def test_greedy_equals_transformers(imported):
    hf_model, translator, _ = imported
    texts = _sentences(200, 7)
    cap = 12
    cfg = GenerationConfig(beam_size=1, max_len_a=0.0, max_len_b=cap, batch_size=100)
    ours = translator.search(texts, cfg)
    source, _, _ = _batch(translator, texts)
    theirs = _hf_generate(hf_model, source, 1, 43, num_beams=1, max_new_tokens=cap + 1)
    ended = 0
    for hyps, row in zip(ours, theirs):
        expected = _strip(row)
        assert list(hyps[0].tokens) == expected[:cap]
        ended += len(expected) < cap
    assert ended > 10, "too few outputs end with </s> for the test to check early stopping"
    assert len({tuple(h[0].tokens) for h in ours}) > 50


def test_beam_equals_transformers_with_fairseq_settings(imported):
    hf_model, translator, _ = imported
    texts = _sentences(150, 9)
    cap = 12
    cfg = GenerationConfig(beam_size=4, max_len_a=0.0, max_len_b=cap, batch_size=150, len_penalty=1.0)
    ours = translator.search(texts, cfg)
    source, _, _ = _batch(translator, texts)
    theirs = _hf_generate(hf_model, source, 1, 43, num_beams=4, max_new_tokens=cap + 1, early_stopping=True,
                          length_penalty=1.0)
    compared = 0
    for hyps, row in zip(ours, theirs):
        expected = _strip(row)
        if len(expected) < cap:  # ended by </s> within the limit (at the limit the libraries differ: README)
            assert list(hyps[0].tokens) == expected
            compared += 1
    assert compared > 8


def test_scale_embedding_false_and_positions(tmp_path):
    hf_model, _ = write_nllb_dir(tmp_path / "hf", scale_embedding=False, seed=3)
    import_checkpoint(str(tmp_path / "hf"), tmp_path / "run", "eng_Latn", "fra_Latn")
    translator = Translator.from_run(tmp_path / "run", device="cpu")
    assert translator.model.embed_scale == 1.0 and translator.model.position_offset == 2
    source, lengths, target = _batch(translator, _sentences(4, 2))
    with torch.no_grad():
        ours = translator.model(source, lengths, target).logits()
        theirs = hf_model(input_ids=source, attention_mask=(source != 1).long(), decoder_input_ids=target).logits
    real = target != 1
    assert (ours[real] - theirs[real]).abs().max() < 1e-4


def test_export_round_trip(imported, tmp_path):
    hf_model, translator, root = imported
    out = export_run(root / "run", tmp_path / "export")
    loaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    source, lengths, target = _batch(translator, _sentences(6, 11))
    with torch.no_grad():
        a = loaded(input_ids=source, attention_mask=(source != 1).long(), decoder_input_ids=target).logits
        b = hf_model(input_ids=source, attention_mask=(source != 1).long(), decoder_input_ids=target).logits
    assert torch.equal(a, b)
    # and back: the export imports into a run with the same logits
    import_checkpoint(str(out), tmp_path / "again", "eng_Latn", "fra_Latn")
    again = Translator.from_run(tmp_path / "again", device="cpu")
    with torch.no_grad():
        assert torch.equal(again.model(source, lengths, target).logits(), translator.model(source, lengths, target).logits())


def test_exported_tokenizer_loads_in_transformers(imported, tmp_path):
    _, translator, root = imported
    out = export_run(root / "run", tmp_path / "export")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, src_lang="eng_Latn", tgt_lang="fra_Latn")
    texts = _sentences(20, 13)
    ours = translator.tokenizer.encode_source(texts, "eng_Latn")
    assert hf_tok(texts)["input_ids"] == ours
    assert hf_tok.convert_tokens_to_ids("fra_Latn") == translator.tokenizer.lang_ids["fra_Latn"]


@pytest.mark.parametrize("damage, needle", [
    ("architecture", "model_type"),
    ("missing_weights", "model.safetensors"),
    ("vocab", "vocab_size"),
    ("shape", "does not fit"),
])
def test_bad_checkpoints(tmp_path, capsys, damage, needle):
    src = tmp_path / "hf"
    write_nllb_dir(src)
    config = json.loads((src / "config.json").read_text())
    if damage == "architecture":
        config["model_type"], config["architectures"] = "bart", ["BartForConditionalGeneration"]
    elif damage == "missing_weights":
        (src / "model.safetensors").unlink()
    elif damage == "vocab":
        config["vocab_size"] = 30
    elif damage == "shape":
        config["encoder_ffn_dim"] = config["decoder_ffn_dim"] = 64
    (src / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["import", str(src), str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))


def test_unknown_language_code(tmp_path, capsys):
    write_nllb_dir(tmp_path / "hf")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["import", str(tmp_path / "hf"), str(tmp_path / "run"), "--target-lang", "xxx_Latn"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --target-lang xxx_Latn: ") and "codes in its tokenizer" in err
    assert "tokenizer_layout.json" not in err  # a file of fs2mini's runs, not of the directory imported
    assert not (tmp_path / "run").exists()


def test_translate_cli_takes_nllb_codes(imported, tmp_path, capsys):
    from fs2mini.translate import main as translate_main

    _, translator, root = imported
    (tmp_path / "in.txt").write_text("the cat\n\na dog ran\n")
    translate_main([str(root / "run"), "--input", str(tmp_path / "in.txt"), "--target-lang", "spa_Latn", "--beam-size", "1"])
    lines = capsys.readouterr().out.splitlines()
    spanish = Translator.from_run(root / "run", device="cpu", target_lang="spa_Latn")
    assert spanish.tokenizer.target_prefix("spa_Latn") == [2, 44]
    assert lines == spanish.translate(["the cat", "", "a dog ran"], GenerationConfig(beam_size=1))
    with pytest.raises(SystemExit) as exit_info:
        translate_main([str(root / "run"), "--input", str(tmp_path / "in.txt"), "--target-lang", "fra"])
    assert exit_info.value.code == 2 and "unknown language code 'fra'" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_recipe_resumes_translates_exports(tmp_path):
    """recipes/finetune_nllb.py on an imported tiny model: train, resume, translate, export, load in transformers."""
    import subprocess
    import sys
    from pathlib import Path

    write_nllb_dir(tmp_path / "hf")
    import_checkpoint(str(tmp_path / "hf"), tmp_path / "imported", "eng_Latn", "fra_Latn")
    rng = random.Random(0)
    pairs = [" ".join(rng.choice(WORDS[:9]) for _ in range(rng.randint(1, 6))) for _ in range(400)]
    (tmp_path / "pairs.tsv").write_text("".join(f"{s}\t{' '.join(reversed(s.split()))}\n" for s in pairs))
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "finetune_nllb.py"
    run_dir = tmp_path / "ft"
    common = ["--init", tmp_path / "imported", "data.corpus:tsv", "--data.corpus.path", tmp_path / "pairs.tsv",
              "--data.corpus.valid-percent", "5", "--data.corpus.test-percent", "5", "--data.max-tokens", "256",
              "--output-dir", run_dir, "--trainer.validate-every", "2", "--trainer.checkpoint-every", "2",
              "--trainer.log-every", "1", "--trainer.valid-translate-sentences", "3", "--model.freeze", "embeddings"]

    def run(*args):
        return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=tmp_path)

    first = run(recipe, *common, "--trainer.max-steps", "2")
    assert first.returncode == 0, first.stderr
    second = run(recipe, *common, "--trainer.max-steps", "4")
    assert second.returncode == 0 and "resumed at step 2" in second.stderr + second.stdout, second.stderr
    # The run's model class is the recipe's own (FinetuneModelConfig): rebuilding it runs the recipe, with consent.
    translated = run("-m", "fs2mini.translate", run_dir, "--beam-size", "2", "--target-lang", "fra_Latn",
                     "--trust-recipe-code")
    assert translated.returncode == 0, translated.stderr
    tuned = Translator.from_run(run_dir, device="cpu", trust_recipe_code=True)
    imported = Translator.from_run(tmp_path / "imported", device="cpu")
    assert tuned.tokenizer.lang_ids == {"eng": 42, "fra": 43}
    assert torch.equal(tuned.model.embed.weight, imported.model.embed.weight)  # frozen
    assert not torch.equal(tuned.model.encoder_norm.bias, imported.model.encoder_norm.bias)  # trained
    out = export_run(run_dir, tmp_path / "export")
    loaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    source, lengths, target = _batch(imported, _sentences(5, 3))
    with torch.no_grad():
        theirs = loaded(input_ids=source, attention_mask=(source != 1).long(), decoder_input_ids=target).logits
        ours = tuned.model(source, lengths, target).logits()
    real = target != 1
    assert (ours[real] - theirs[real]).abs().max() < 1e-4


def test_finetuning_maps_the_codes_of_every_direction(tmp_path):
    """--init of an imported run for two directions (eng→fra, eng→spa) names spa too, not only the first direction's codes."""
    from fs2mini.initialize import read_init

    write_nllb_dir(tmp_path / "hf")
    import_checkpoint(str(tmp_path / "hf"), tmp_path / "imported", "eng_Latn", "fra_Latn")
    tokenizer = read_init(tmp_path / "imported", ("eng", "fra", "spa")).tokenizer
    assert tokenizer.lang_ids == {"eng": 42, "fra": 43, "spa": 44}
    assert tokenizer.target_prefix("spa") == [2, 44]


def test_m2m100_vocab_json_tokenizer_and_logits(tmp_path):
    """M2M100's own tokenizer: vocab.json ids in an order unlike the sentencepiece model's, `__en__` codes."""
    src = tmp_path / "m2m"
    hf_model, _ = write_nllb_dir(src)  # reuses the sentencepiece model; weights and config are replaced below
    sp = spm.SentencePieceProcessor(model_file=str(src / "sentencepiece.bpe.model"))
    pieces = [sp.id_to_piece(i) for i in range(3, sp.get_piece_size())][::-1]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{p: 4 + i for i, p in enumerate(pieces)}}
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "tokenizer_config.json").unlink()
    hf_tok = transformers.M2M100Tokenizer(str(src / "vocab.json"), str(src / "sentencepiece.bpe.model"),
                                          src_lang="en", tgt_lang="fr")
    hf_tok.save_pretrained(src)
    config = hf_model.config
    config.vocab_size = len(vocab) + 100 + 8  # 100 language codes, 8 "madeup words"
    torch.manual_seed(4)
    model = transformers.M2M100ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.save_pretrained(src)
    import_checkpoint(str(src), tmp_path / "run", "en", "fr")
    translator = Translator.from_run(tmp_path / "run", device="cpu")
    tok = translator.tokenizer
    texts = _sentences(20, 17) + ["the zebra"]  # z is not a piece: <unk>
    assert hf_tok(texts)["input_ids"] == tok.encode_source(texts, "en")
    assert tok.lang_ids == {"en": hf_tok.get_lang_id("en"), "fr": hf_tok.get_lang_id("fr")}
    assert [tok.decode(ids) for ids in tok.encode_source(texts[:5], "en")] == texts[:5]
    sources = tok.encode_source(texts, "en")
    source, lengths = pad_sources(sources, 1, torch.device("cpu"))
    target, _ = pad_sources([t[:-1] for t in tok.encode_target(texts[::-1], "fr")], 1, torch.device("cpu"))
    with torch.no_grad():
        ours = translator.model(source, lengths, target).logits()
        theirs = model(input_ids=source, attention_mask=(source != 1).long(), decoder_input_ids=target).logits
    real = target != 1
    assert (ours[real] - theirs[real]).abs().max() < 1e-4


def test_hub_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    """A SRC that is not a local path is fetched with huggingface_hub (stubbed here: no network in tests)."""
    import huggingface_hub

    write_nllb_dir(tmp_path / "hub_cache")
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, allow_patterns: asked.append((repo_id, allow_patterns)) or str(tmp_path / "hub_cache"))
    import_checkpoint("someone/tiny-nllb", tmp_path / "run", "eng_Latn", "fra_Latn")
    assert asked[0][0] == "someone/tiny-nllb" and "*.safetensors" in asked[0][1] and "*.bin" not in asked[0][1]
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_evaluate_an_imported_run(tmp_path, capsys):
    from fs2mini.evaluate import main as evaluate_main

    write_nllb_dir(tmp_path / "hf")
    rng = random.Random(1)
    pairs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) for _ in range(200)]
    (tmp_path / "pairs.tsv").write_text("".join(f"{s}\t{s}\n" for s in pairs))
    main(["import", str(tmp_path / "hf"), str(tmp_path / "run"), "--tsv", str(tmp_path / "pairs.tsv")])
    capsys.readouterr()
    evaluate_main([str(tmp_path / "run"), "--split", "test", "--beam-size", "1"])
    report = json.loads((tmp_path / "run" / "eval" / "test.json").read_text())
    assert report["bleu"] >= 0 and report["loss"] > 0
