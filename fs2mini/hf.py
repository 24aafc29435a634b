"""Hugging Face M2M100/NLLB checkpoints in and out: `python -m fs2mini.hf import SRC RUN_DIR` and `export RUN_DIR OUT`.

`import` reads an `M2M100ForConditionalGeneration` directory in `save_pretrained` layout
(config.json, model.safetensors or pytorch_model.bin, sentencepiece.bpe.model, tokenizer_config.json)
or a Hub id at `--revision` (fetched with `huggingface_hub`), and writes an fs2mini run directory: config.json,
tokenizer.model with tokenizer_layout.json beside it (NLLB's ids are not fs2mini's own, see
`fs2mini.tokenizer.TokenizerLayout`), and checkpoints/best.pt. `translate`, `evaluate`,
`Translator.from_run` and recipes/finetune_nllb.py use that directory as any other run
(`--init RUN_DIR` starts a fine-tuning run from it: fs2mini.initialize).
`export` writes the reverse: a directory `transformers.AutoModelForSeq2SeqLM` and `AutoTokenizer`
load. Neither needs `transformers`. Weights go through `safetensors` when the checkpoint has them; a
pytorch_model.bin (all that facebook/nllb-200-distilled-600M serves) goes through torch's tensors-only
unpickler (`weights_only=True`), which refuses any other object before it runs.

The two models compute the same function (docs/nllb.md, "Equivalence with transformers", lists every convention):
fs2mini fuses q/k/v (self-attention) and k/v (encoder–decoder attention) into one projection, so
their weights and biases are concatenated on import and split on export; everything else maps
one to one. HF's positions are rows `pad_idx + 1 + j` of the sinusoidal table, which is
`ModelConfig.position_offset = pad_idx + 1`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro
from torch import Tensor

from fs2mini.checkpoint import find_checkpoints, load_first_readable, load_weights, write_checkpoint
from fs2mini.config import TrainConfig, load_config, save_config
from fs2mini.corpus import TsvCorpus
from fs2mini.data import DataConfig
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.lora import model_weights
from fs2mini.model import ModelConfig, build_model
from fs2mini.relayout import NLLB_SPECIALS, to_nllb_ids
from fs2mini.rundir import BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE, LAYOUT_FILE, MARKER, TOKENIZER_FILE
from fs2mini.tokenizer import Tokenizer, TokenizerConfig, TokenizerLayout, token_lang, tokenizer_record

SPM_FILE = "sentencepiece.bpe.model"
"""The sentencepiece model's name in a Hugging Face NLLB/M2M100 directory."""
M2M100_LANGUAGE_CODES = {
    "m2m100": ("af am ar ast az ba be bg bn br bs ca ceb cs cy da de el en es et fa ff fi fr fy ga gd gl gu ha he hi hr "
               "ht hu hy id ig ilo is it ja jv ka kk km kn ko lb lg ln lo lt lv mg mk ml mn mr ms my ne nl no ns oc or "
               "pa pl ps pt ro ru sd si sk sl so sq sr ss su sv sw ta th tl tn tr uk ur uz vi wo xh yi yo zh zu").split(),
    "wmt21": "en ha is ja cs ru zh de".split(),
}
"""M2M100's language codes in id order (its tokenizer_config.json names the list: `language_codes`), as
transformers' M2M100Tokenizer numbers them: `__af__` at len(vocab.json), then one id each."""


# ---------------------------------------------------------------------------------------------
# Configs


def model_config_from_hf(hf: dict[str, Any], where: Path) -> ModelConfig:
    """The fs2mini shape of an M2M100 config.json, or one sentence naming what fs2mini cannot represent."""
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "m2m_100" or (arch and "M2M100ForConditionalGeneration" not in arch):
        raise UserError(f"{where} describes model_type {hf.get('model_type')!r} ({', '.join(arch) or 'no architectures'}); "
                        "expected an M2M100/NLLB checkpoint (model_type 'm2m_100', M2M100ForConditionalGeneration)")
    for key, expected in [("activation_function", "relu"), ("tie_word_embeddings", True)]:
        if hf.get(key, expected) != expected:
            raise UserError(f"{where}: {key} is {hf[key]!r}; fs2mini supports {expected!r} only")
    if hf.get("encoder_ffn_dim") != hf.get("decoder_ffn_dim"):
        raise UserError(f"{where}: encoder_ffn_dim {hf.get('encoder_ffn_dim')} differs from decoder_ffn_dim "
                        f"{hf.get('decoder_ffn_dim')}; fs2mini expects one ffn_inner_dim")
    try:
        return ModelConfig(
            model_dim=int(hf["d_model"]), max_seq_len=int(hf["max_position_embeddings"]),
            num_encoder_layers=int(hf["encoder_layers"]), num_decoder_layers=int(hf["decoder_layers"]),
            num_encoder_attn_heads=int(hf["encoder_attention_heads"]), num_decoder_attn_heads=int(hf["decoder_attention_heads"]),
            ffn_inner_dim=int(hf["encoder_ffn_dim"]), dropout_p=float(hf.get("dropout", 0.1)),
            attention_dropout_p=float(hf.get("attention_dropout", 0.1)), ffn_dropout_p=float(hf.get("activation_dropout", 0.0)),
            position_offset=int(hf["pad_token_id"]) + 1, scale_embeddings=bool(hf.get("scale_embedding", True)))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{where} lacks or mangles {err}; expected an M2M100 config.json") from None


def hf_config(model: ModelConfig, layout: TokenizerLayout, vocab_size: int) -> dict[str, Any]:
    """M2M100 config.json for an fs2mini model (the inverse of `model_config_from_hf`)."""
    if model.position_offset != layout.pad_id + 1:
        raise UserError(f"model position_offset {model.position_offset} is not pad_idx + 1 = {layout.pad_id + 1}, the only "
                        "layout Hugging Face M2M100 and CTranslate2 express (runs trained before 2026-12-05 used 0: "
                        "train again, the default is now 2)")
    return {
        "architectures": ["M2M100ForConditionalGeneration"], "model_type": "m2m_100", "vocab_size": vocab_size,
        "d_model": model.model_dim, "max_position_embeddings": model.max_seq_len,
        "encoder_layers": model.num_encoder_layers, "decoder_layers": model.num_decoder_layers,
        "encoder_attention_heads": model.num_encoder_attn_heads, "decoder_attention_heads": model.num_decoder_attn_heads,
        "encoder_ffn_dim": model.ffn_inner_dim, "decoder_ffn_dim": model.ffn_inner_dim, "activation_function": "relu",
        "dropout": model.dropout_p, "attention_dropout": model.attention_dropout_p,
        "activation_dropout": model.ffn_dropout_p, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
        "scale_embedding": model.scale_embeddings, "init_std": 0.02, "use_cache": True, "is_encoder_decoder": True,
        "pad_token_id": layout.pad_id, "bos_token_id": layout.bos_id, "eos_token_id": layout.eos_id,
        "decoder_start_token_id": layout.eos_id, "tie_word_embeddings": True, "torch_dtype": "float32",
    }


# ---------------------------------------------------------------------------------------------
# Weights


def _layer_names(decoder: bool) -> list[tuple[str, str]]:
    """(fs2mini name, HF name) of one layer's unfused parameters, without .weight/.bias."""
    names = [("self_attn.out_proj", "self_attn.out_proj"), ("self_attn_norm", "self_attn_layer_norm"),
             ("ffn.inner_proj", "fc1"), ("ffn.out_proj", "fc2"), ("ffn_norm", "final_layer_norm")]
    if decoder:
        names += [("encoder_decoder_attn.q_proj", "encoder_attn.q_proj"),
                  ("encoder_decoder_attn.out_proj", "encoder_attn.out_proj"),
                  ("encoder_decoder_attn_norm", "encoder_attn_layer_norm")]
    return names


def fs2mini_state_from_hf(hf: dict[str, Tensor], cfg: ModelConfig, where: Path) -> dict[str, Tensor]:
    """fs2mini's state dict from an M2M100 one (q/k/v and k/v concatenated; the shared table once)."""
    def take(name: str) -> Tensor:
        for key in (name, name.removeprefix("model.")):
            if key in hf:
                return hf[key]
        raise UserError(f"{where} has no tensor {name}; expected every weight of an M2M100 model")

    shared = next((hf[k] for k in ("model.shared.weight", "model.encoder.embed_tokens.weight", "lm_head.weight",
                                   "shared.weight") if k in hf), None)
    if shared is None:
        raise UserError(f"{where} has no model.shared.weight; expected the embedding table of an M2M100 model")
    out = {"embed.weight": shared, "encoder_norm.weight": take("model.encoder.layer_norm.weight"),
           "encoder_norm.bias": take("model.encoder.layer_norm.bias"),
           "decoder_norm.weight": take("model.decoder.layer_norm.weight"),
           "decoder_norm.bias": take("model.decoder.layer_norm.bias")}
    for side, ours, count in [("encoder", "encoder_layers", cfg.num_encoder_layers),
                              ("decoder", "decoder_layers", cfg.num_decoder_layers)]:
        for i in range(count):
            theirs = f"model.{side}.layers.{i}"
            for p in ("weight", "bias"):
                for fs_name, hf_name in _layer_names(side == "decoder"):
                    out[f"{ours}.{i}.{fs_name}.{p}"] = take(f"{theirs}.{hf_name}.{p}")
                out[f"{ours}.{i}.self_attn.qkv_proj.{p}"] = torch.cat(
                    [take(f"{theirs}.self_attn.{x}_proj.{p}") for x in "qkv"])
                if side == "decoder":
                    out[f"{ours}.{i}.encoder_decoder_attn.kv_proj.{p}"] = torch.cat(
                        [take(f"{theirs}.encoder_attn.{x}_proj.{p}") for x in "kv"])
    return out


def hf_state_from_fs2mini(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """The inverse of `fs2mini_state_from_hf`: M2M100 names, fused projections split, contiguous copies."""
    out = {"model.shared.weight": state["embed.weight"], "model.encoder.layer_norm.weight": state["encoder_norm.weight"],
           "model.encoder.layer_norm.bias": state["encoder_norm.bias"],
           "model.decoder.layer_norm.weight": state["decoder_norm.weight"],
           "model.decoder.layer_norm.bias": state["decoder_norm.bias"]}
    for side, ours, count in [("encoder", "encoder_layers", cfg.num_encoder_layers),
                              ("decoder", "decoder_layers", cfg.num_decoder_layers)]:
        for i in range(count):
            theirs = f"model.{side}.layers.{i}"
            for p in ("weight", "bias"):
                for fs_name, hf_name in _layer_names(side == "decoder"):
                    out[f"{theirs}.{hf_name}.{p}"] = state[f"{ours}.{i}.{fs_name}.{p}"]
                for x, part in zip("qkv", state[f"{ours}.{i}.self_attn.qkv_proj.{p}"].chunk(3)):
                    out[f"{theirs}.self_attn.{x}_proj.{p}"] = part
                if side == "decoder":
                    for x, part in zip("kv", state[f"{ours}.{i}.encoder_decoder_attn.kv_proj.{p}"].chunk(2)):
                        out[f"{theirs}.encoder_attn.{x}_proj.{p}"] = part
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""A save_pretrained directory's weights, in the order import prefers them: each alone, or sharded with NAME.index.json."""


def weight_files(src: Path) -> list[Path]:
    """The files holding `src`'s weights (safetensors first, since they never unpickle); empty when there are none."""
    for name in WEIGHT_FILES:
        index = src / f"{name}.index.json"
        if index.is_file():
            return [src / shard for shard in shard_names(index)]
        if (src / name).is_file():
            return [src / name]
    return []


def shard_names(index: Path) -> list[str]:
    """The shard files an index.json's weight_map names, each once; only names beside the index (no paths)."""
    try:
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"cannot read {index} ({type(err).__name__}: {err}); expected a JSON object whose weight_map "
                        "maps tensor names to shard files") from None
    bad = [name for name in names if not isinstance(name, str) or Path(name).name != name]
    if bad or not names:
        raise UserError(f"{index} names shard {bad[0]!r}; expected the file names of shards beside it" if bad else
                        f"{index} names no shards; expected a weight_map of tensor names to shard files")
    return names


def read_weights(src: Path) -> dict[str, Tensor]:
    """Every tensor of `src`'s weight files, found by `weight_files`."""
    files = weight_files(src)
    if not files:
        raise UserError(f"{src} has no model.safetensors or pytorch_model.bin (nor their .index.json); expected a "
                        "Hugging Face save_pretrained directory")
    tensors: dict[str, Tensor] = {}
    for path in files:
        tensors.update(read_safetensors_file(path) if path.name.endswith(".safetensors") else read_bin(path))
    return tensors


def read_safetensors_file(path: Path) -> dict[str, Tensor]:
    """One safetensors file's tensors, or one sentence naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"cannot read {path}: {err}; expected a safetensors file") from None


def read_bin(path: Path) -> dict[str, Tensor]:
    """One pytorch_model.bin's state dict, through torch's restricted unpickler: tensors and plain containers
    only, so a pickle naming any other class or function (code that would run on load) is refused unrun."""
    expected = "expected a state dict of tensors as torch.save(model.state_dict()) writes it"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        # torch's message is a paragraph on how to allow the object anyway; keep only the object's name.
        what = re.search(r"GLOBAL ([\w.]+)", str(err))
        raise UserError(f"{path} holds more than tensors (a pickled {what[1] if what else 'object'}), which fs2mini "
                        f"never unpickles; {expected}") from None
    except Exception as err:  # an untrusted file: zip, pickle or storage errors, whichever torch meets first
        first = (str(err).splitlines() or [""])[0]
        raise UserError(f"cannot read {path} ({type(err).__name__}: {first}); {expected} (zip format)") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}; {expected}")
    odd = [key for key, value in state.items() if not isinstance(key, str) or not isinstance(value, Tensor)]
    if odd:
        raise UserError(f"{path}: entry {odd[0]!r} is of type {type(state[odd[0]]).__name__}, not a tensor; {expected}")
    return state


# ---------------------------------------------------------------------------------------------
# Tokenizer


def nllb_layout(src: Path, num_pieces: int, vocab_size: int) -> TokenizerLayout:
    """NLLB's ids: fairseq specials, pieces + 1, language codes from tokenizer_config.json after the pieces."""
    config_path = src / "tokenizer_config.json"
    tok_cfg = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if (src / "vocab.json").is_file() and tok_cfg.get("tokenizer_class") != "NllbTokenizer":
        return m2m100_layout(src, tok_cfg, vocab_size)
    first = num_pieces + 1  # fairseq's offset of 1
    decoder = tok_cfg.get("added_tokens_decoder") or {}
    added = {entry["content"]: int(i) for i, entry in decoder.items() if int(i) >= first}
    codes = [c for c in added if c != "<mask>"]
    if not codes:
        from_list = tok_cfg.get("extra_special_tokens") or tok_cfg.get("additional_special_tokens")
        if not from_list:
            raise UserError(f"{config_path} names no language codes; expected added_tokens_decoder or "
                            "additional_special_tokens listing eng_Latn-style codes")
        added = {code: first + k for k, code in enumerate(from_list)}
        codes = list(added)
    lang_ids = {code: added[code] for code in codes}
    top = max(lang_ids.values())
    if top >= vocab_size:
        raise UserError(f"{src / SPM_FILE} has {num_pieces} pieces and {len(codes)} language codes (ids up to {top}), "
                        f"which do not fit the model's vocab_size {vocab_size}; expected the tokenizer of this model")
    return TokenizerLayout(**NLLB_SPECIALS, piece_offset=1, vocab_size=vocab_size, lang_ids=lang_ids)


def m2m100_layout(src: Path, tok_cfg: dict[str, Any], vocab_size: int) -> TokenizerLayout:
    """M2M100's ids: vocab.json maps every piece (and <s> <pad> </s> <unk>) to its id; `__en__`
    language tokens follow at len(vocab) + i, in the order tokenizer_config.json lists them."""
    path = src / "vocab.json"
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
        specials = {key: int(vocab[piece]) for key, piece in
                    [("bos_id", "<s>"), ("pad_id", "<pad>"), ("eos_id", "</s>"), ("unk_id", "<unk>")]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not an M2M100 vocabulary ({type(err).__name__}: {err}); expected a JSON object "
                        "mapping <s>, <pad>, </s>, <unk> and every piece to its id") from None
    decoder = tok_cfg.get("added_tokens_decoder") or {}
    tokens = {entry["content"]: int(i) for i, entry in decoder.items()}
    listed = [f"__{code}__" for code in M2M100_LANGUAGE_CODES.get(tok_cfg.get("language_codes", "m2m100"), [])]
    for i, token in enumerate(listed):
        tokens.setdefault(token, len(vocab) + i)
    lang_ids = {lang: i for token, i in tokens.items() if (lang := token_lang(token)) is not None}
    if not lang_ids:
        raise UserError(f"{src / 'tokenizer_config.json'}: language_codes {tok_cfg.get('language_codes')!r} is unknown; "
                        f"expected one of {', '.join(M2M100_LANGUAGE_CODES)}")
    top = max([*lang_ids.values(), *vocab.values()])
    if top >= vocab_size:
        raise UserError(f"{path} and its language tokens use ids up to {top}, which do not fit the model's vocab_size "
                        f"{vocab_size}; expected the tokenizer of this model")
    piece_ids = {piece: int(i) for piece, i in vocab.items() if piece not in ("<s>", "<pad>", "</s>", "<unk>")}
    return TokenizerLayout(**specials, vocab_size=vocab_size, lang_ids=lang_ids, piece_ids=piece_ids)


# ---------------------------------------------------------------------------------------------
# Import and export


HUB_FILES = ["*.json", "*.model", "*.safetensors"]
"""What import downloads of a Hub repository: configs and index files, the sentencepiece model, safetensors weights."""
HUB_BIN_FILES = ["pytorch_model*.bin"]
"""Downloaded too only when the repository has no safetensors (a second copy of the same weights otherwise)."""


def fetch(src: str, revision: str | None = None) -> Path:
    """A local directory as is; otherwise a Hub id downloaded at `revision` (default main): configs, tokenizer
    and safetensors, and the pytorch_model*.bin files only when that revision has no safetensors."""
    path = Path(src)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; expected a Hugging Face save_pretrained directory")
        if revision is not None:
            raise UserError(f"--revision {revision}: {src} is a local directory; expected a Hub id such as "
                            "facebook/nllb-200-distilled-600M (a revision names a branch, tag or commit of one)")
        return path
    if src.count("/") != 1:
        raise UserError(f"{src} does not exist; expected a local directory or a Hub id such as facebook/nllb-200-distilled-600M")
    path = download(src, revision, HUB_FILES)
    found = weight_files(path)  # a pytorch_model.bin.index.json comes with the JSON files, its shards do not
    return path if found and all(f.is_file() for f in found) else download(src, revision, HUB_FILES + HUB_BIN_FILES)


def download(src: str, revision: str | None, patterns: list[str]) -> Path:
    """`huggingface_hub.snapshot_download` of the files matching `patterns`, its failures as one sentence."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RevisionNotFoundError

    at = {} if revision is None else {"revision": revision}  # None is snapshot_download's own default: main
    try:
        return Path(snapshot_download(src, allow_patterns=patterns, **at))
    except RevisionNotFoundError:
        raise UserError(f"--revision {revision or 'main'}: no such branch, tag or commit in {src}; expected one of "
                        "its branches (such as main), tags or commit hashes") from None
    except Exception as err:  # network, authentication, unknown repository: one line (Hub messages span several)
        why = " ".join(str(err).split())
        raise UserError(f"cannot fetch {src} from the Hugging Face Hub ({type(err).__name__}: {why}); "
                        "expected a reachable Hub id or a local directory") from None


def import_checkpoint(src: str, run_dir: Path, source_lang: str, target_lang: str, tsv: Path | None = None,
                      revision: str | None = None) -> Path:
    """Write `run_dir` (config.json, tokenizer.model + tokenizer_layout.json, checkpoints/best.pt) from `src`.

    Built in a temporary sibling directory and renamed at the end, so a failure leaves nothing behind."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"{run_dir} already exists; expected a new run directory")
    path = fetch(src, revision)
    config_path = path / "config.json"
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{config_path} does not exist; expected a Hugging Face save_pretrained directory") from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {config_path} ({err}); expected a Hugging Face config.json") from None
    model_cfg = model_config_from_hf(hf, config_path)
    vocab_size = int(hf.get("vocab_size", 0))
    spm_path = path / SPM_FILE
    if not spm_path.is_file():
        raise UserError(f"{spm_path} does not exist; expected the checkpoint's sentencepiece model")
    spm_bytes = spm_path.read_bytes()
    import sentencepiece as spm

    try:
        num_pieces = spm.SentencePieceProcessor(model_proto=spm_bytes).get_piece_size()
    except RuntimeError as err:
        raise UserError(f"cannot load {spm_path}: {err}; expected a sentencepiece model") from None
    layout = nllb_layout(path, num_pieces, vocab_size)
    state = fs2mini_state_from_hf(read_weights(path), model_cfg, path)
    cfg = TrainConfig(run_name=run_dir.name, output_dir=run_dir.resolve(), model=model_cfg,
                      tokenizer=TokenizerConfig(vocab_size=vocab_size),
                      data=DataConfig(corpus=TsvCorpus(path=(tsv or TsvCorpus.path).resolve(), source_lang=source_lang,
                                                       target_lang=target_lang)))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    try:
        (tmp / MARKER).touch()  # a run directory fs2mini may write into (fs2mini.rundir)
        (tmp / TOKENIZER_FILE).write_bytes(spm_bytes)
        (tmp / LAYOUT_FILE).write_text(layout.to_json(), encoding="utf-8")
        tokenizer = Tokenizer(tmp / TOKENIZER_FILE, (source_lang, target_lang))  # checks the language codes
        model = build_model(model_cfg, tokenizer.vocab_info)
        load_weights(model, state, str(path), fits="its config.json")
        save_config(cfg, tmp / CONFIG_FILE)
        (tmp / CHECKPOINT_DIR).mkdir()
        write_checkpoint(tmp / CHECKPOINT_DIR / BEST_CHECKPOINT, model.state_dict(),
                         config=json.loads((tmp / CONFIG_FILE).read_text()), tokenizer=tokenizer_record(tokenizer), step=0,
                         imported_from=str(src))
        if run_dir.exists():
            run_dir.rmdir()
        os.replace(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


def export_run(run_dir: Path, out: Path, checkpoint: str | None = None) -> Path:
    """Write `out`: config.json, model.safetensors, sentencepiece.bpe.model and tokenizer files for transformers."""
    from safetensors.torch import save_file

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists; expected a new directory")
    cfg = load_config(run_dir / CONFIG_FILE)
    if not isinstance(cfg.model, ModelConfig):
        raise UserError(f"{run_dir / CONFIG_FILE}: model {type(cfg.model).__qualname__} is not fs2mini's ModelConfig; "
                        "only the built-in architecture exports to M2M100")
    ckpt_path, state = load_first_readable(find_checkpoints(run_dir, checkpoint))
    tokenizer = Tokenizer(run_dir / TOKENIZER_FILE, ())
    weights = model_weights(state)  # LoRA adapters merged in
    if tokenizer.layout == TokenizerLayout():  # trained with fs2mini's own tokenizer: rewritten in NLLB's ids
        nllb = to_nllb_ids(tokenizer, weights)
        tokenizer, weights = Tokenizer(tokenizer.model_path, (), model_bytes=nllb.model_bytes, layout=nllb.layout), nllb.state
    layout = tokenizer.layout
    if layout.piece_offset != 1 or not layout.lang_ids or layout.piece_ids:
        raise UserError(f"{run_dir / TOKENIZER_FILE} uses M2M100's vocab.json ids; export writes NLLB's layout, "
                        "expected a run trained with fs2mini's tokenizer or imported from an NLLB checkpoint")
    vocab_size = tokenizer.vocab_info.size
    by_id: dict[int, str] = {}
    for code, i in layout.lang_ids.items():  # a fine-tuned run adds its corpus's codes as aliases after the originals
        by_id.setdefault(i, code)
    codes = [by_id[i] for i in sorted(by_id)]
    first_code = tokenizer.sp.get_piece_size() + 1
    if min(by_id) < first_code:
        raise UserError(f"{run_dir / LAYOUT_FILE}: language ids start inside the sentencepiece pieces; NllbTokenizer "
                        f"expects them from {first_code} on")
    # NLLB's <mask> follows its original codes; codes added later (--add-languages) follow <mask>.
    mask_id = next((i for i in range(first_code, vocab_size) if i not in by_id), None)
    hf_state = hf_state_from_fs2mini(weights, cfg.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg.model, layout, vocab_size), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"decoder_start_token_id": layout.eos_id, "bos_token_id": layout.bos_id, "eos_token_id": layout.eos_id,
             "pad_token_id": layout.pad_id}, indent=2) + "\n")
        (tmp / SPM_FILE).write_bytes(tokenizer.model_bytes)
        source_lang, target_lang = cfg.data.corpus.languages()
        specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                    "sep_token": "</s>", "cls_token": "<s>", "mask_token": "<mask>"}
        # Explicit ids: NLLB puts the codes right after the pieces and <mask> last (left to itself,
        # transformers 5 converting the sentencepiece model would put <mask> before the codes).
        added = {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>", **{layout.lang_ids[c]: c for c in codes},
                 **({mask_id: "<mask>"} if mask_id is not None else {})}
        decoder = {str(i): {"content": text, "lstrip": text == "<mask>", "normalized": False, "rstrip": False,
                            "single_word": False, "special": True} for i, text in added.items()}
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "NllbTokenizer", **specials, "additional_special_tokens": codes,
             "added_tokens_decoder": decoder,
             "src_lang": by_id.get(layout.lang_ids.get(source_lang), codes[0]),
             "tgt_lang": by_id.get(layout.lang_ids.get(target_lang)),
             "legacy_behaviour": False, "model_max_length": cfg.model.max_seq_len}, indent=2) + "\n")
        (tmp / "special_tokens_map.json").write_text(json.dumps({**specials, "additional_special_tokens": codes}, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"exported {ckpt_path} to {out}", file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class ImportArgs:
    """Import a Hugging Face M2M100/NLLB checkpoint into a new fs2mini run directory."""

    src: tyro.conf.Positional[str]
    """save_pretrained directory, or a Hub id such as facebook/nllb-200-distilled-600M."""
    run_dir: tyro.conf.Positional[Path]
    """New run directory to write."""
    source_lang: str = "eng_Latn"
    """Default source language code of the run (translate --source-lang overrides it)."""
    target_lang: str = "fra_Latn"
    """Default target language code of the run (translate --target-lang overrides it)."""
    tsv: Path | None = None
    """Sentence pairs the run's config names as its corpus (what `fs2mini.evaluate RUN_DIR` scores); default examples/fra.txt."""
    revision: str | None = None
    """Branch, tag, commit hash or refs/pr/N of a Hub SRC to fetch; default main. A local SRC takes none."""


@dataclass(frozen=True)
class ExportArgs:
    """Export an imported (or fine-tuned) run to a directory transformers loads."""

    run_dir: tyro.conf.Positional[Path]
    """Run directory (imported with `fs2mini.hf import`, possibly fine-tuned)."""
    out: tyro.conf.Positional[Path]
    """New directory to write."""
    checkpoint: str | None = None
    """Checkpoint file or name in RUN_DIR/checkpoints; default best.pt, else the newest step."""


@dataclass(frozen=True)
class CTranslate2Args:
    """Export a run and convert it for CTranslate2 (`pip install 'fs2mini[deploy]'`); translate it with fs2mini.translate OUT."""

    run_dir: tyro.conf.Positional[Path]
    """Run directory (trained with fs2mini, or imported and possibly fine-tuned)."""
    out: tyro.conf.Positional[Path]
    """New directory to write."""
    quantization: Literal["int8", "int8_float32", "float32"] = "int8"
    """Weight type: int8 (fastest on CPU), int8_float32 (int8 weights, float32 elsewhere), float32 (exact)."""
    checkpoint: str | None = None
    """Checkpoint file or name in RUN_DIR/checkpoints; default best.pt, else the newest step."""


def export_ctranslate2(run_dir: Path, out: Path, quantization: str, checkpoint: str | None = None) -> Path:
    """`export_run` into a temporary directory, then CTranslate2's converter from it into `out`."""
    from fs2mini.ctranslate import convert_exported, import_ctranslate2

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists; expected a new directory")
    import_ctranslate2()  # before the export's work
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        exported = export_run(run_dir, Path(tmp) / "m2m100", checkpoint)
        convert_exported(exported, out, quantization)  # renamed over `out` (an empty directory is replaced)
    print(f"converted to CTranslate2 ({quantization}) in {out}; translate with python -m fs2mini.translate {out}",
          file=sys.stderr)
    return out


Command = (Annotated[ImportArgs, tyro.conf.subcommand("import")] | Annotated[ExportArgs, tyro.conf.subcommand("export")]
           | Annotated[CTranslate2Args, tyro.conf.subcommand("ctranslate2")])


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.cli(Command, args=None if argv is None else list(argv))
    with exit_on_user_error():
        match args:
            case ImportArgs():
                import_checkpoint(args.src, args.run_dir, args.source_lang, args.target_lang, args.tsv, args.revision)
                print(f"imported {args.src} into {args.run_dir}", file=sys.stderr)
            case ExportArgs():
                export_run(args.run_dir, args.out, args.checkpoint)
            case CTranslate2Args():
                export_ctranslate2(args.run_dir, args.out, args.quantization, args.checkpoint)


if __name__ == "__main__":
    main()
