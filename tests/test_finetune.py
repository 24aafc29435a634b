"""Fine-tuning: --init from any run or checkpoint, LoRA adapters (peft) merged on every read, new language codes."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fs2mini.checkpoint import list_checkpoints, load_checkpoint
from fs2mini.corpus import TsvCorpus
from fs2mini.errors import UserError
from fs2mini.lora import LoraConfig
from fs2mini.model import ModelConfig
from fs2mini.trainer import train
from fs2mini.translator import Translator
from helpers import read_metrics


def _init_config(reversal_tsv, source_run, out, cache, **trainer):
    cfg = tiny_config(reversal_tsv, out, cache, **{"max_steps": 6, "validate_every": 3, "checkpoint_every": 3, **trainer})
    return dataclasses.replace(cfg, init=source_run)


def test_init_from_a_run_starts_from_its_weights_with_fresh_optimizer(trained_reversal_run, reversal_tsv, tmp_path, capsys):
    cfg = _init_config(reversal_tsv, trained_reversal_run, tmp_path / "ft", tmp_path / "cache", max_steps=3)
    source_file = trained_reversal_run / "checkpoints" / "best.pt"
    source_bytes = source_file.read_bytes()
    run = train(cfg)
    # The model trained on the source's memory-mapped tensors (copy-on-write): the source file is untouched.
    assert source_file.read_bytes() == source_bytes
    printed = capsys.readouterr()
    assert "initialized from" in printed.out + printed.err
    assert "optimizer, learning-rate schedule and step start afresh" in printed.out + printed.err
    valid = [r for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "valid"]
    first = valid[0]
    source_best = load_checkpoint(trained_reversal_run / "checkpoints" / "best.pt")
    assert first["step"] == 0 and first["loss"] < 0.2  # the learned model, not a random one (~3.3)
    assert source_best["step"] == 600
    assert (run / "tokenizer.model").read_bytes() == (trained_reversal_run / "tokenizer.model").read_bytes()
    checkpoint = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    assert checkpoint["step"] == 3
    # Fresh AdamW state: 3 steps, not 603.
    steps = {int(s["step"]) for s in checkpoint["optimizer"]["state"].values()}
    assert steps == {3}


def test_init_from_a_checkpoint_file(trained_reversal_run, reversal_tsv, tmp_path):
    step_file = list_checkpoints(trained_reversal_run / "checkpoints")[-1]
    run = train(_init_config(reversal_tsv, step_file, tmp_path / "ft", tmp_path / "cache", max_steps=1))
    assert list_checkpoints(run / "checkpoints")


def test_init_with_another_architecture_is_one_line_and_leaves_nothing(trained_reversal_run, reversal_tsv, tmp_path):
    cfg = _init_config(reversal_tsv, trained_reversal_run, tmp_path / "ft", tmp_path / "cache")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, ffn_inner_dim=96))
    with pytest.raises(UserError, match=r"--init .* was trained with ffn_inner_dim 128, the configured model has "
                                        r"ffn_inner_dim 96; expected the same architecture \(--model.ffn-inner-dim 128\)"):
        train(cfg)
    # Settings that change no tensor's shape are compared too: heads, positions.
    heads = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, ffn_inner_dim=128, num_encoder_attn_heads=2))
    with pytest.raises(UserError, match="num_encoder_attn_heads 4, the configured model has num_encoder_attn_heads 2"):
        train(heads)
    assert not (tmp_path / "ft").exists()
    with pytest.raises(UserError, match="--init .* does not exist"):
        train(dataclasses.replace(cfg, init=tmp_path / "nowhere"))
    with pytest.raises(UserError, match="--lang-map applies to the model --init starts from"):
        train(dataclasses.replace(cfg, init=None, lang_map=("eng=eng_Latn",)))


@pytest.mark.parametrize("flag, item, needle", [
    ("lang_map", "eng", "--lang-map eng: expected CORPUS_CODE=MODEL_CODE"),
    ("lang_map", "=eng_Latn", "--lang-map =eng_Latn: expected CORPUS_CODE=MODEL_CODE"),
    ("add_languages", "xyz_Latn", "--add-languages xyz_Latn: expected NEW_CODE=RELATED_CODE"),
])
def test_a_malformed_language_item_is_refused_on_resume_too(trained_reversal_run, reversal_tsv, tmp_path, flag, item, needle):
    """A resumed run ignores --init, and took `--lang-map eng` (no `=`) without a word: the form is checked first."""
    cfg = _init_config(reversal_tsv, trained_reversal_run, tmp_path / "ft", tmp_path / "cache", max_steps=1)
    run = train(cfg)
    written = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    longer = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, max_steps=2), **{flag: (item,)})
    with pytest.raises(UserError, match=f"^{needle}"):
        train(longer)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == written  # nothing resumed, nothing written


def _lora_config(reversal_tsv, source_run, out, cache, max_steps):
    cfg = _init_config(reversal_tsv, source_run, out, cache, max_steps=max_steps, validate_every=100, checkpoint_every=5)
    return dataclasses.replace(cfg, lora=LoraConfig(rank=4, alpha=8.0), optimizer=dataclasses.replace(cfg.optimizer, lr=1e-2))


def test_lora_trains_adapters_only_and_every_reader_sees_them_merged(trained_reversal_run, reversal_tsv, tmp_path):
    run = train(_lora_config(reversal_tsv, trained_reversal_run, tmp_path / "lora", tmp_path / "cache", 10))
    checkpoint = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    source = load_checkpoint(trained_reversal_run / "checkpoints" / "best.pt")["model"]
    # The frozen weights are the source's, bit for bit; only the adapters moved.
    assert set(checkpoint["model"]) == set(source)
    assert all(torch.equal(checkpoint["model"][k], source[k]) for k in source)
    assert checkpoint["lora"]["rank"] == 4 and any(".lora_B." in k for k in checkpoint["lora"]["weights"])
    assert all(p.abs().max() > 0 for k, p in checkpoint["lora"]["weights"].items() if ".lora_B." in k)
    merged = Translator.from_run(run, checkpoint=list_checkpoints(run / "checkpoints")[-1].name, device="cpu").model
    name = "encoder_layers.0.self_attn.qkv_proj.weight"
    assert not torch.equal(merged.state_dict()[name], source[name])
    # The merged plain model computes what the adapted model computed while training.
    from fs2mini.adapters import add_adapters, load_adapters

    cfg = _lora_config(reversal_tsv, trained_reversal_run, tmp_path / "unused", tmp_path / "cache", 10)
    adapted = cfg.model.build(Translator.from_run(run, device="cpu").tokenizer.vocab_info)
    adapted.load_state_dict(checkpoint["model"])
    adapted = add_adapters(adapted, LoraConfig(rank=4, alpha=8.0))
    load_adapters(adapted, checkpoint["lora"])
    source_ids = torch.tensor([[5, 6, 7, 8, 3]])
    target_ids = torch.tensor([[3, 6, 7]])
    with torch.no_grad():
        a = adapted.eval()(source_ids, torch.tensor([5]), target_ids).logits()
        b = merged.eval()(source_ids, torch.tensor([5]), target_ids).logits()
    assert (a - b).abs().max() < 1e-4


def test_lora_resume_is_exact(trained_reversal_run, reversal_tsv, tmp_path):
    straight = train(_lora_config(reversal_tsv, trained_reversal_run, tmp_path / "a", tmp_path / "cache", 10))
    train(_lora_config(reversal_tsv, trained_reversal_run, tmp_path / "b", tmp_path / "cache", 5))
    resumed = train(_lora_config(reversal_tsv, trained_reversal_run, tmp_path / "b", tmp_path / "cache", 10))
    a = load_checkpoint(list_checkpoints(straight / "checkpoints")[-1])["lora"]["weights"]
    b = load_checkpoint(list_checkpoints(resumed / "checkpoints")[-1])["lora"]["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("lora, needle", [
    (LoraConfig(rank=4, targets=("fc1",)), "no linear layer of the model has these names"),
    (LoraConfig(rank=64), "is not below the narrowest targeted layer"),
    (LoraConfig(rank=-1), "--lora.rank must be >= 0"),
])
def test_lora_that_would_change_nothing_is_refused(trained_reversal_run, reversal_tsv, tmp_path, lora, needle):
    cfg = dataclasses.replace(_init_config(reversal_tsv, trained_reversal_run, tmp_path / "ft", tmp_path / "cache"), lora=lora)
    with pytest.raises(UserError, match=needle):
        train(cfg)
    assert not (tmp_path / "ft").exists()


# ---------------------------------------------------------------------------------------------
# A new language for an imported model

transformers = None


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    global transformers
    transformers = pytest.importorskip("transformers")
    from test_hf import write_nllb_dir

    from fs2mini.hf import import_checkpoint

    root = tmp_path_factory.mktemp("nllb")
    write_nllb_dir(root / "hf")
    import_checkpoint(str(root / "hf"), root / "run", "eng_Latn", "fra_Latn")
    return root / "run"


def test_a_checkpoint_copied_out_of_its_run_keeps_the_imported_layout(imported, tmp_path):
    """No tokenizer.model or tokenizer_layout.json beside it: the copies the checkpoint keeps are used."""
    import shutil

    from fs2mini.initialize import read_init

    copy = tmp_path / "elsewhere" / "best.pt"
    copy.parent.mkdir()
    shutil.copy(imported / "checkpoints" / "best.pt", copy)
    tokenizer = read_init(copy, ("eng_Latn", "fra_Latn")).tokenizer
    original = read_init(imported, ("eng_Latn", "fra_Latn")).tokenizer
    assert tokenizer.layout == original.layout and tokenizer.lang_ids == original.lang_ids
    assert tokenizer.encode_source(["the cat"], "eng_Latn") == original.encode_source(["the cat"], "eng_Latn")


def test_add_language_grows_the_table_from_a_related_code(imported):
    from fs2mini.initialize import read_init

    init = read_init(imported, ("eng_Latn", "xyz_Latn"), add_languages=("xyz_Latn=fra_Latn",))
    table = init.weights["embed.weight"]
    old = load_checkpoint(imported / "checkpoints" / "best.pt")["model"]["embed.weight"]
    new_id = init.tokenizer.lang_ids["xyz_Latn"]
    assert new_id == old.size(0) and table.size(0) == old.size(0) + 1
    assert torch.equal(table[new_id], old[init.tokenizer.layout.lang_ids["fra_Latn"]])
    assert torch.equal(table[: old.size(0)], old)


def test_new_languages_take_the_spare_rows_after_mask_first():
    """NLLB-200: codes, <mask>, then two unused rows; a new code must get the next id (tokenizers number added tokens
    contiguously), so it takes a spare row, and only then does the table grow."""
    from fs2mini.initialize import _with_new_languages
    from fs2mini.tokenizer import TokenizerLayout

    table = torch.randn(10, 4)
    layout = TokenizerLayout(lang_ids={"aaa_Latn": 5, "bbb_Latn": 6}, vocab_size=10)  # <mask> 7, spare 8 and 9
    grown_layout, weights = _with_new_languages(layout, {"embed.weight": table}, ("x_Latn=aaa_Latn", "y_Latn=bbb_Latn",
                                                                                 "z_Latn=aaa_Latn"), Path("run"))
    assert [grown_layout.lang_ids[c] for c in ("x_Latn", "y_Latn", "z_Latn")] == [8, 9, 10]
    grown = weights["embed.weight"]
    assert grown.shape == (11, 4) and grown_layout.vocab_size == 11
    assert torch.equal(grown[8], table[5]) and torch.equal(grown[9], table[6]) and torch.equal(grown[10], table[5])
    assert torch.equal(grown[:8], table[:8])


@pytest.mark.parametrize("item, needle", [
    ("fra_Latn=eng_Latn", "already has 'fra_Latn'"),
    ("xyz_Latn=qqq_Latn", "unknown related code 'qqq_Latn'"),
    ("x y=fra_Latn", "expected NEW_CODE=RELATED_CODE"),
    ("xyz_Latn", "expected NEW_CODE=RELATED_CODE"),
])
def test_bad_new_language_is_one_line(imported, item, needle):
    from fs2mini.initialize import read_init

    with pytest.raises(UserError, match=needle):
        read_init(imported, ("eng_Latn", "fra_Latn"), add_languages=(item,))


def test_add_language_to_fs2mini_tokenizer_is_refused(trained_reversal_run):
    from fs2mini.initialize import read_init

    with pytest.raises(UserError, match="fs2mini's own tokenizer"):
        read_init(trained_reversal_run, ("eng", "fra"), add_languages=("deu=fra",))


def test_fine_tuned_new_language_translates_and_exports(imported, tmp_path):
    pairs = tmp_path / "xyz.tsv"
    pairs.write_text("".join(f"the cat {i} sat\tle chat {i} est\n" for i in range(200)))
    cfg = tiny_config(pairs, tmp_path / "ft", tmp_path / "cache", max_steps=2, validate_every=2, checkpoint_every=2,
                      valid_translate_sentences=2)
    imported_model = json.loads((imported / "config.json").read_text())["model"]
    cfg = dataclasses.replace(
        cfg, init=imported, add_languages=("xyz_Latn=fra_Latn",),
        model=ModelConfig(**{k: v for k, v in imported_model.items() if not k.startswith("_")}),
        data=dataclasses.replace(cfg.data, max_source_len=60, max_target_len=60, corpus=TsvCorpus(path=pairs, source_lang="eng_Latn", target_lang="xyz_Latn",
                                                              valid_percent=5.0, test_percent=5.0)))
    run = train(cfg)
    translator = Translator.from_run(run, device="cpu")
    assert translator.target_lang == "xyz_Latn"
    assert isinstance(translator("the cat"), str)
    from fs2mini.hf import export_run

    out = export_run(run, tmp_path / "export")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, src_lang="eng_Latn", tgt_lang="xyz_Latn")
    assert hf_tok.convert_tokens_to_ids("xyz_Latn") == translator.tokenizer.lang_ids["xyz_Latn"]
    assert hf_tok.convert_tokens_to_ids("fra_Latn") == translator.tokenizer.layout.lang_ids["fra_Latn"]
    hf_model = transformers.AutoModelForSeq2SeqLM.from_pretrained(out)
    assert hf_model.config.vocab_size == translator.tokenizer.vocab_info.size
