"""fs2mini.hf import of what the Hub serves: safetensors or pytorch_model.bin, single or sharded, at a --revision.

One tiny random M2M100 (tests/test_hf.py's `write_nllb_dir`) saved in each layout imports to the same
weights; a .bin that holds more than tensors is refused unrun; the Hub is a stub (no network).
"""

import fnmatch
import json
import shutil
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fs2mini.hf import main  # noqa: E402
from fs2mini.translator import Translator  # noqa: E402
from test_hf import _batch, _sentences, write_nllb_dir  # noqa: E402

WEIGHT_NAMES = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The model saved as safetensors (save_pretrained's default) and its import: (hf model, source dir, run dir)."""
    root = tmp_path_factory.mktemp("hf_import")
    hf_model, _ = write_nllb_dir(root / "hf")
    main(["import", str(root / "hf"), str(root / "run")])
    return hf_model, root / "hf", root / "run"


def _without_weights(src, dst):
    """A copy of `src` (config, tokenizer) without its weight files."""
    shutil.copytree(src, dst, ignore=lambda _, names: [n for n in names if n in WEIGHT_NAMES or "-of-" in n])
    return dst


def _save_bin_shards(state, dst, shards):
    """`state` as pytorch_model.bin, or split in `shards` files with the index transformers writes beside them."""
    if shards == 1:
        torch.save(state, dst / "pytorch_model.bin")
        return
    names = list(state)
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {name: state[name] for name in names[i::shards]}
        torch.save(part, dst / file)
        weight_map.update(dict.fromkeys(part, file))
    (dst / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _layout(hf_model, src, dst, layout):
    """The reference checkpoint with its weights saved as `layout` (what save_pretrained or the Hub would hold)."""
    _without_weights(src, dst)
    state = {name: t.detach().clone() for name, t in hf_model.state_dict().items()}
    if layout == "sharded_safetensors":
        hf_model.save_pretrained(dst, max_shard_size="20KB")
    else:
        _save_bin_shards(state, dst, 1 if layout == "bin" else 3)
    return dst


def _weights(run):
    return torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("layout", ["bin", "sharded_safetensors", "sharded_bin"])
def test_every_weight_layout_imports_the_same_model(reference, tmp_path, layout):
    hf_model, src, ref_run = reference
    dst = _layout(hf_model, src, tmp_path / "hf", layout)
    files = {p.name for p in dst.iterdir()}
    assert "model.safetensors" not in files
    if layout.startswith("sharded"):
        assert sum("-of-" in name for name in files) > 1, files
    main(["import", str(dst), str(tmp_path / "run")])
    ours, theirs = _weights(tmp_path / "run"), _weights(ref_run)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    translator, ref = Translator.from_run(tmp_path / "run", device="cpu"), Translator.from_run(ref_run, device="cpu")
    source, lengths, target = _batch(translator, _sentences(4, 21))
    with torch.no_grad():
        assert torch.equal(translator.model(source, lengths, target).logits(), ref.model(source, lengths, target).logits())


class _WritesMarker:
    """Unpickled by plain pickle, this opens (creates) the marker file: code a .bin may run on load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("content, needle", [
    ("malicious", "holds more than tensors"),
    ("list", "holds a list"),
    ("not_a_tensor", "not a tensor"),
    ("junk", "cannot read"),
])
def test_bad_bin_is_refused(reference, tmp_path, capsys, content, needle):
    hf_model, src, _ = reference
    dst = _without_weights(src, tmp_path / "hf")
    marker = tmp_path / "marker"
    state = dict(hf_model.state_dict())
    if content == "malicious":
        state["model.shared.weight"] = _WritesMarker(marker)
        torch.save(state, dst / "pytorch_model.bin")
    elif content == "list":
        torch.save(list(state.values()), dst / "pytorch_model.bin")
    elif content == "not_a_tensor":
        torch.save({**state, "step": 3}, dst / "pytorch_model.bin")
    else:
        (dst / "pytorch_model.bin").write_bytes(b"not a torch.save archive")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["import", str(dst), str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0] and "pytorch_model.bin" in err[0], err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))
    assert not marker.exists()
    if content == "malicious":  # the payload is live: an unrestricted unpickler runs it
        torch.load(dst / "pytorch_model.bin", weights_only=False)
        assert marker.exists()


def _stub_hub(monkeypatch, repo_dir):
    """snapshot_download serving `repo_dir` as a Hub repository: only the files `allow_patterns` match."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, *, allow_patterns, revision=None):
        calls.append({"repo_id": repo_id, "allow_patterns": list(allow_patterns), "revision": revision})
        snapshot = repo_dir.parent / f"snapshot{len(calls)}"
        snapshot.mkdir()
        for path in repo_dir.iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns):
                shutil.copy(path, snapshot / path.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_hub_revision_reaches_snapshot_download(reference, tmp_path, monkeypatch):
    _, src, ref_run = reference
    calls = _stub_hub(monkeypatch, shutil.copytree(src, tmp_path / "repo"))
    main(["import", "someone/tiny-nllb", str(tmp_path / "run"), "--revision", "v1.0"])
    assert [(c["repo_id"], c["revision"]) for c in calls] == [("someone/tiny-nllb", "v1.0")]
    assert not any("bin" in pattern for pattern in calls[0]["allow_patterns"])
    assert torch.equal(_weights(tmp_path / "run")["embed.weight"], _weights(ref_run)["embed.weight"])


@pytest.mark.parametrize("layout", ["bin", "sharded_bin"])
def test_hub_bin_only_downloads_the_bin_second(reference, tmp_path, monkeypatch, layout):
    """facebook/nllb-200-distilled-600M's main branch: config, tokenizer and pytorch_model.bin, no safetensors
    (nllb-200-3.3B: pytorch_model.bin.index.json and its shards, the index coming with the first, JSON-only download)."""
    hf_model, src, ref_run = reference
    repo = _layout(hf_model, src, tmp_path / "repo", layout)
    calls = _stub_hub(monkeypatch, repo)
    main(["import", "facebook/tiny-nllb", str(tmp_path / "run")])
    assert [c["revision"] for c in calls] == [None, None]
    first, second = (set(c["allow_patterns"]) for c in calls)
    assert not any("bin" in pattern for pattern in first) and first < second
    assert list((tmp_path / "snapshot2").glob("pytorch_model*.bin"))
    ours, theirs = _weights(tmp_path / "run"), _weights(ref_run)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def _one_error_line(capsys, tmp_path, argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))
    return err[0]


def test_unknown_revision_is_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import RevisionNotFoundError

    def snapshot_download(repo_id, *, allow_patterns, revision=None):
        response = types.SimpleNamespace(headers={}, request=None)
        raise RevisionNotFoundError(f"404 Client Error.\n\nRevision Not Found for url: {repo_id}@{revision}",
                                    response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    err = _one_error_line(capsys, tmp_path, ["import", "someone/tiny-nllb", str(tmp_path / "run"), "--revision", "nope"])
    assert err.startswith("error: --revision nope: no such branch, tag or commit in someone/tiny-nllb; expected")


def test_revision_of_a_local_directory_is_refused(reference, tmp_path, capsys):
    _, src, _ = reference
    err = _one_error_line(capsys, tmp_path, ["import", str(src), str(tmp_path / "run"), "--revision", "main"])
    assert err.startswith("error: --revision main:") and "Hub id" in err


def test_other_hub_failures_stay_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def snapshot_download(repo_id, *, allow_patterns, revision=None):
        raise OSError("connection refused\nretry later")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    err = _one_error_line(capsys, tmp_path, ["import", "someone/tiny-nllb", str(tmp_path / "run")])
    assert "cannot fetch someone/tiny-nllb" in err and "connection refused retry later" in err
