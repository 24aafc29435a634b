"""fs2mini.hf under bad input and faults: what import and export check before they write, and what they leave.

Export checks its checkpoint as translate does (the run's tokenizer, the run's architecture, every tensor of its
model and none more); import checks every tensor of an outside checkpoint against its config.json before it
allocates anything; malformed files, unwritable places, a full disk and stop signals give one `error:` line (or
the signal's exit status) and leave no output and no scratch directory. The models are tiny random M2M100s
(tests/test_hf.py's `write_nllb_dir`); the runs that differ in shape share one sentencepiece model.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fs2mini.checkpoint import load_checkpoint, write_checkpoint  # noqa: E402
from fs2mini.hf import import_checkpoint, main  # noqa: E402
from fs2mini.staged import STAGING_SUFFIX  # noqa: E402
from test_hf import write_nllb_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _nllb_dir(path, spm_from=None, **shape):
    """`write_nllb_dir`, with the sentencepiece model of `spm_from` (so that two shapes share one tokenizer)."""
    write_nllb_dir(path, **shape)
    if spm_from is not None:
        shutil.copy(spm_from / "sentencepiece.bpe.model", path / "sentencepiece.bpe.model")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Imported runs of three shapes with one tokenizer: `run` (2 layers, 16 wide), `one_layer`, `narrow` (8 wide)."""
    root = tmp_path_factory.mktemp("hf_checks")
    hf = _nllb_dir(root / "hf")
    _nllb_dir(root / "hf_one_layer", hf, layers=1, seed=5)
    _nllb_dir(root / "hf_narrow", hf, dim=8, seed=6)
    for name in ("run", "one_layer", "narrow"):
        import_checkpoint(str(root / ("hf" if name == "run" else f"hf_{name}")), root / name, "eng_Latn", "fra_Latn")
    return root


def _leftovers(folder):
    """Hidden scratch directories of import/export in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(STAGING_SUFFIX))


def _one_error_line(capsys, argv, target):
    """`main(argv)` exits 2 with one `error:` line and leaves neither `target` nor scratch beside it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert not target.exists() and not _leftovers(target.parent)
    return err[0]


# ---------------------------------------------------------------------------------------------
# Export checks its checkpoint (issue 27, defect 5)


def test_export_refuses_a_swapped_tokenizer_as_translate_does(runs, tmp_path, capsys):
    run = shutil.copytree(runs / "run", tmp_path / "run")
    other = _nllb_dir(tmp_path / "other_hf")  # a sentencepiece model trained again: other pieces, other sha256
    shutil.copy(other / "sentencepiece.bpe.model", run / "tokenizer.model")
    err = _one_error_line(capsys, ["export", run, tmp_path / "out"], tmp_path / "out")
    assert f"{run / 'tokenizer.model'}" in err and "is not the tokenizer" in err and "differing: sha256" in err


@pytest.mark.parametrize("source, needle", [
    ("one_layer", "was trained with num_encoder_layers 1, num_decoder_layers 1;"),  # was a KeyError traceback
    ("narrow", "was trained with model_dim 8, ffn_inner_dim 16;"),  # was an export transformers cannot load
])
def test_export_refuses_a_checkpoint_of_another_architecture(runs, tmp_path, capsys, source, needle):
    checkpoint = runs / source / "checkpoints" / "best.pt"
    err = _one_error_line(capsys, ["export", runs / "run", tmp_path / "out", "--checkpoint", checkpoint], tmp_path / "out")
    assert f"checkpoint {checkpoint} {needle}" in err and f"{runs / 'run' / 'config.json'} has" in err


@pytest.mark.parametrize("change, needle", [
    ("extra_layer", 'Unexpected key(s) in state_dict: "encoder_layers.1.'),  # was exported as a truncated model
    ("missing_tensor", 'Missing key(s) in state_dict: "decoder_layers.0.ffn.out_proj.bias"'),  # was a KeyError
    ("wider", "size mismatch for encoder_layers.0.ffn.inner_proj.weight"),
])
def test_export_refuses_weights_that_do_not_build_the_run_model(runs, tmp_path, capsys, change, needle):
    """Checkpoints whose recorded config matches the run but whose weights do not (edited, or an older fs2mini's)."""
    run = shutil.copytree(runs / "one_layer", tmp_path / "run")
    own = load_checkpoint(run / "checkpoints" / "best.pt")
    weights = dict(own["model"])
    if change == "extra_layer":
        weights.update({name.replace("layers.0.", "layers.1."): t for name, t in weights.items() if "layers.0." in name})
    elif change == "missing_tensor":
        del weights["decoder_layers.0.ffn.out_proj.bias"]
    else:
        weights["encoder_layers.0.ffn.inner_proj.weight"] = torch.zeros(64, 16)
    edited = tmp_path / "edited.pt"
    write_checkpoint(edited, weights, config=own["config"], tokenizer=own["tokenizer"], step=0)
    err = _one_error_line(capsys, ["export", run, tmp_path / "out", "--checkpoint", edited], tmp_path / "out")
    assert err.startswith(f"error: checkpoint {edited} does not fit the model in {run / 'config.json'}: ") and needle in err


# ---------------------------------------------------------------------------------------------
# Import checks every tensor against config.json (defect 6) and malformed files (defect 10)


def _damaged(src, tmp_path, damage):
    """A copy of the save_pretrained directory `src` with one defect."""
    dst = shutil.copytree(src, tmp_path / "hf")
    config = json.loads((dst / "config.json").read_text())
    if damage == "fewer_layers_declared":
        config["encoder_layers"] = config["decoder_layers"] = 1
    elif damage == "more_layers_declared":
        config["encoder_layers"] = 3
    elif damage == "vocab_size_null":
        config["vocab_size"] = None
    elif damage == "vocab_size_text":
        config["vocab_size"] = "46"
    elif damage == "heads_not_dividing":
        config["encoder_attention_heads"] = 3
    elif damage == "huge_positions":
        config["max_position_embeddings"] = 1e10
    elif damage == "truncated_config":
        (dst / "config.json").write_text(json.dumps(config)[:50])
    elif damage == "truncated_tokenizer_config":
        text = (dst / "tokenizer_config.json").read_text()
        (dst / "tokenizer_config.json").write_text(text[: len(text) // 2])
    elif damage == "malformed_added_tokens":
        (dst / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"42": "eng_Latn"}}))
    elif damage in ("narrow_projection", "short_projection"):
        from safetensors.torch import load_file, save_file

        weights = load_file(dst / "model.safetensors")
        name = "model.encoder.layers.0.self_attn.k_proj.weight"
        weights[name] = torch.zeros(16, 8) if damage == "narrow_projection" else torch.zeros(8, 16)
        save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    elif damage == "truncated_shard_index":
        hf_model = transformers.M2M100ForConditionalGeneration.from_pretrained(src)
        (dst / "model.safetensors").unlink()
        hf_model.save_pretrained(dst, max_shard_size="20KB")
        index = dst / "model.safetensors.index.json"
        index.write_text(index.read_text()[:60])
    if damage not in ("truncated_config",):
        (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("damage, expected", [
    # defect 6: a layer more in the weights than config.json declares was dropped silently (exit 0)
    ("fewer_layers_declared", "{hf}/model.safetensors holds model.decoder.layers.1.*, model.encoder.layers.1.* "
                              "(42 tensors), which {hf}/config.json does not declare (decoder_layers 1, encoder_layers 1)"),
    ("more_layers_declared", "{hf}/model.safetensors lacks model.encoder.layers.2.* (16 tensors), which "
                             "{hf}/config.json declares (encoder_layers 3)"),
    # defect 10: tracebacks
    ("vocab_size_null", "{hf}/config.json: vocab_size is None; expected a positive integer"),
    ("vocab_size_text", "{hf}/config.json: vocab_size is '46'; expected a positive integer"),
    ("heads_not_dividing", "{hf}/config.json: encoder_attention_heads 3 does not divide d_model 16"),
    ("huge_positions", "{hf}/config.json: max_position_embeddings 10000000000 asks for a position table of "
                       "160,000,000,032 numbers, more than all"),
    ("truncated_config", "cannot read {hf}/config.json (JSONDecodeError: "),
    ("truncated_tokenizer_config", "cannot read {hf}/tokenizer_config.json (JSONDecodeError: "),
    ("malformed_added_tokens", "{hf}/tokenizer_config.json: added_tokens_decoder is malformed"),
    ("narrow_projection", "{hf}/model.safetensors does not fit {hf}/config.json: "
                          "model.encoder.layers.0.self_attn.k_proj.weight has shape [16, 8]; expected [16, 16] from d_model 16"),
    ("short_projection", "model.encoder.layers.0.self_attn.k_proj.weight has shape [8, 16]; expected [16, 16]"),
    ("truncated_shard_index", "cannot read {hf}/model.safetensors.index.json (JSONDecodeError: "),
])
def test_malformed_outside_checkpoints_are_one_line(runs, tmp_path, capsys, damage, expected):
    src = _damaged(runs / "hf", tmp_path, damage)
    err = _one_error_line(capsys, ["import", src, tmp_path / "run"], tmp_path / "run")
    assert expected.format(hf=src) in err, err


def test_a_bare_m2m100_model_imports_as_the_full_one(runs, tmp_path):
    """M2M100Model (no `model.` prefix, no lm_head) saves the same tensors: imported the same, nothing refused."""
    hf_model = transformers.M2M100ForConditionalGeneration.from_pretrained(runs / "hf")
    src = shutil.copytree(runs / "hf", tmp_path / "bare", ignore=shutil.ignore_patterns("model.safetensors"))
    torch.save({name: t.clone() for name, t in hf_model.model.state_dict().items()}, src / "pytorch_model.bin")
    import_checkpoint(str(src), tmp_path / "run", "eng_Latn", "fra_Latn")
    ours, theirs = (load_checkpoint(r / "checkpoints" / "best.pt")["model"] for r in (tmp_path / "run", runs / "run"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_finetune_shape_flag_that_does_not_fit_the_import_leaves_nothing(runs, tmp_path):
    (tmp_path / "pairs.tsv").write_text("the cat\tle chat\n" * 50)
    done = subprocess.run([sys.executable, ROOT / "recipes" / "finetune_nllb.py", "--init", runs / "run",
                           "data.corpus:tsv", "--data.corpus.path", tmp_path / "pairs.tsv", "--output-dir", tmp_path / "ft",
                           "--model.ffn-inner-dim", "64"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "was trained with ffn_inner_dim 32, the configured model has ffn_inner_dim 64" in lines[0]
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_import_with_a_tsv_that_is_not_a_file_is_one_line_before_any_download(runs, tmp_path, capsys, monkeypatch, what):
    """`--tsv` names the run's corpus (what `evaluate RUN_DIR` scores): a missing one was imported without a word."""
    tsv = tmp_path / "pairs.tsv"
    if what == "directory":
        tsv.mkdir()
    monkeypatch.setattr("fs2mini.hf.fetch", lambda *args: pytest.fail("fetched before --tsv was checked"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["import", "facebook/nllb-200-distilled-600M", str(tmp_path / "run"), "--tsv", str(tsv)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    reason = "does not exist" if what == "missing" else "is a directory"
    assert err[0] == f"error: --tsv {tsv} {reason}; expected a file of sentence pairs, source<TAB>target per line"
    assert not (tmp_path / "run").exists() and not _leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# Where the output goes: unwritable places, a full disk, stop signals (defects 10 and 11)


@pytest.mark.parametrize("place, reason", [("read_only", "Permission denied"), ("under_a_file", "{parent} is a file")])
def test_export_to_an_unwritable_place_is_one_line(runs, tmp_path, capsys, place, reason):
    parent = tmp_path / place
    if place == "read_only":
        parent.mkdir(mode=0o555)
        if os.access(parent, os.W_OK):
            pytest.skip("permission bits do not bind this user (root)")
    else:
        parent.write_text("not a folder")
    out = parent / "export"
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(runs / "run"), str(out)])
    finally:
        parent.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0] == f"error: cannot write {out}: {reason.format(parent=parent)}; expected a folder this user can write to"
    assert not out.exists() and not _leftovers(tmp_path)


def _limited_file_size(limit):
    """preexec_fn: writes beyond `limit` bytes fail with EFBIG, as on a full disk (root included)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (else the kernel kills the writer)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("command, fails", [("import", "tokenizer.model"), ("import", "best.pt"), ("export", "weights")])
def test_a_full_disk_leaves_nothing(runs, tmp_path, command, fails):
    """Whichever write fails, the error names OUT (not the scratch file that failed, which is gone)."""
    out = tmp_path / "out"
    argv = ["import", runs / "hf", out] if command == "import" else ["export", runs / "run", out]
    # best.pt: tokenizer.model and config.json fit, the checkpoint (which holds the tokenizer too) does not.
    limit = (runs / "run" / "tokenizer.model").stat().st_size + 10_000 if fails == "best.pt" else 16_000
    done = subprocess.run([sys.executable, "-m", "fs2mini.hf", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, preexec_fn=_limited_file_size(limit), env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: cannot write {out}: "), done.stderr
    assert "File too large" in lines[0] and lines[0].endswith("; nothing was written there")
    assert not out.exists() and not _leftovers(tmp_path)


KILLED = """
import os, signal, sys, time
import safetensors.torch, fs2mini.hf

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.{signal})
    time.sleep(30)

fs2mini.hf.write_checkpoint = safetensors.torch.save_file = killed  # (the first large write of import, of export)
fs2mini.hf.main(sys.argv[1:])
"""


def _killed_while_writing(how, argv):
    """`python -m fs2mini.hf ARGV` that receives signal `how` in the middle of its first large write."""
    return subprocess.run([sys.executable, "-c", KILLED.format(signal=how), *map(str, argv)], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("command", ["import", "export"])
def test_a_stop_signal_while_writing_leaves_nothing(runs, tmp_path, command, how):
    out = tmp_path / "out"
    done = _killed_while_writing(how, ["import", runs / "hf", out] if command == "import" else ["export", runs / "run", out])
    assert done.returncode == 128 + getattr(signal, how), done.stderr
    assert done.stderr.strip().splitlines() == [f"stopped by {how}; what was written so far is removed"], done.stderr
    assert not out.exists() and not _leftovers(tmp_path)


def test_scratch_left_by_sigkill_is_removed_by_the_next_run_but_a_live_ones_is_kept(runs, tmp_path):
    done = _killed_while_writing("SIGKILL", ["export", runs / "run", tmp_path / "first"])
    assert done.returncode == -signal.SIGKILL
    left = _leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(".first."), left  # what no handler can clean up
    live = tmp_path / f".other.{left[0].split('.')[2]}.{os.getpid()}.abc{STAGING_SUFFIX}"  # this test's own process
    live.mkdir()
    done = subprocess.run([sys.executable, "-m", "fs2mini.hf", "export", str(runs / "run"), str(tmp_path / "second")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"removed {tmp_path / left[0]}, left by an import or export that was killed" in done.stderr
    assert _leftovers(tmp_path) == [live.name] and (tmp_path / "second" / "model.safetensors").is_file()
