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

Both check before they write. Import compares every tensor's name and shape with what config.json declares
(a layer more or fewer than `encoder_layers`, another width, a `vocab_size` the table does not have: one
sentence naming the tensors and the field), before the model is built. Export checks its checkpoint as
`translate` does (the run's tokenizer is the one it was trained with, its weights build the run's model) and
against the architecture config.json records. Each writes into a hidden scratch directory beside its target and
renames it into place (`staged`): an error, Ctrl-C, SIGTERM or SIGHUP leaves nothing, and what a SIGKILL leaves
is removed by the next import or export into the same folder.

The two models compute the same function (docs/nllb.md, "Equivalence with transformers", lists every convention):
fs2mini fuses q/k/v (self-attention) and k/v (encoder–decoder attention) into one projection, so
their weights and biases are concatenated on import and split on export; everything else maps
one to one. HF's positions are rows `pad_idx + 1 + j` of the sinusoidal table, which is
`ModelConfig.position_offset = pad_idx + 1`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro
from torch import Tensor

from fs2mini.checkpoint import (TOKENIZER, find_checkpoints, load_first_readable, load_weights, refuse_other_architecture,
                                write_checkpoint)
from fs2mini.config import TrainConfig, config_to_json, load_config, save_config
from fs2mini.corpus import TsvCorpus
from fs2mini.data import DataConfig, run_directions
from fs2mini.errors import RunStopped, UserError, exit_on_user_error, finite
from fs2mini.lora import model_weights
from fs2mini.model import ModelConfig, build_model
from fs2mini.relayout import NLLB_SPECIALS, to_nllb_ids
from fs2mini.rundir import BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE, LAYOUT_FILE, MARKER, TOKENIZER_FILE
from fs2mini.tokenizer import Tokenizer, TokenizerConfig, TokenizerLayout, checked_tokenizer, token_lang, tokenizer_record

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


def read_json_object(path: Path, expected: str) -> dict[str, Any]:
    """The JSON object in `path`, or one sentence naming the file: a file fetched from outside may be truncated,
    not UTF-8, or hold a list; `expected` says what it should be."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; expected {expected}") from None
    except (OSError, ValueError) as err:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise UserError(f"cannot read {path} ({type(err).__name__}: {err}); expected {expected}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a JSON {type(value).__name__}; expected {expected}")
    return value


def config_int(hf: dict[str, Any], key: str, where: Path) -> int:
    """`hf[key]` as a positive integer (JSON may spell one 1024.0 or 1e3), or one sentence naming the key."""
    value = hf.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{where}: {key} is {value!r}; expected a positive integer")
    return value


def model_config_from_hf(hf: dict[str, Any], where: Path) -> ModelConfig:
    """The fs2mini shape of an M2M100 config.json, or one sentence naming what fs2mini cannot represent."""
    arch = [str(name) for name in hf.get("architectures") or []] if isinstance(hf.get("architectures"), list) else []
    if hf.get("model_type") != "m2m_100" or (arch and "M2M100ForConditionalGeneration" not in arch):
        raise UserError(f"{where} describes model_type {hf.get('model_type')!r} ({', '.join(arch) or 'no architectures'}); "
                        "expected an M2M100/NLLB checkpoint (model_type 'm2m_100', M2M100ForConditionalGeneration)")
    for key, expected in [("activation_function", "relu"), ("tie_word_embeddings", True)]:
        if hf.get(key, expected) != expected:
            raise UserError(f"{where}: {key} is {hf[key]!r}; fs2mini supports {expected!r} only")
    ints = {key: config_int(hf, key, where) for key in ("d_model", "max_position_embeddings", "encoder_layers",
                                                        "decoder_layers", "encoder_attention_heads",
                                                        "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim")}
    if ints["encoder_ffn_dim"] != ints["decoder_ffn_dim"]:
        raise UserError(f"{where}: encoder_ffn_dim {ints['encoder_ffn_dim']} differs from decoder_ffn_dim "
                        f"{ints['decoder_ffn_dim']}; fs2mini expects one ffn_inner_dim")
    for key in ("encoder_attention_heads", "decoder_attention_heads"):
        if ints["d_model"] % ints[key]:
            raise UserError(f"{where}: {key} {ints[key]} does not divide d_model {ints['d_model']}; expected a divisor")
    dropouts = [hf.get(key, default) for key, default in
                [("dropout", 0.1), ("attention_dropout", 0.1), ("activation_dropout", 0.0)]]
    for key, p in zip(("dropout", "attention_dropout", "activation_dropout"), dropouts):
        if not (finite(p) and 0 <= p < 1):
            raise UserError(f"{where}: {key} is {p!r}; expected a probability in [0, 1)")
    pad_id = hf.get("pad_token_id")
    if not isinstance(pad_id, int) or isinstance(pad_id, bool) or pad_id < 0:
        raise UserError(f"{where}: pad_token_id is {pad_id!r}; expected the id of <pad>, an integer >= 0")
    return ModelConfig(
        model_dim=ints["d_model"], max_seq_len=ints["max_position_embeddings"], num_encoder_layers=ints["encoder_layers"],
        num_decoder_layers=ints["decoder_layers"], num_encoder_attn_heads=ints["encoder_attention_heads"],
        num_decoder_attn_heads=ints["decoder_attention_heads"], ffn_inner_dim=ints["encoder_ffn_dim"],
        dropout_p=dropouts[0], attention_dropout_p=dropouts[1], ffn_dropout_p=dropouts[2], position_offset=pad_id + 1,
        scale_embeddings=bool(hf.get("scale_embedding", True)))


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


def _hf_layer_tensors(side: str) -> list[str]:
    """The M2M100 names of one layer's tensors, after `model.{side}.layers.{i}.`."""
    names = [hf_name for _, hf_name in _layer_names(side == "decoder")] + [f"self_attn.{x}_proj" for x in "qkv"]
    if side == "decoder":
        names += [f"encoder_attn.{x}_proj" for x in "kv"]
    return [f"{name}.{p}" for name in names for p in ("weight", "bias")]


EMBEDDING_NAMES = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                   "lm_head.weight")
"""Names of M2M100's one embedding table (tied: a checkpoint holds any of them, save_pretrained keeps one)."""
POSITION_NAMES = ("model.encoder.embed_positions.weights", "model.decoder.embed_positions.weights")
"""Sinusoidal tables that older checkpoints saved: computed, never trained, so fs2mini computes its own."""
_LAYER = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.")


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of an M2M100 of shape `cfg` (the embedding table apart): its shape and the config.json fields
    that give it."""
    d, f = cfg.model_dim, cfg.ffn_inner_dim
    out = {f"model.{side}.layer_norm.{p}": ((d,), f"d_model {d}")
           for side in ("encoder", "decoder") for p in ("weight", "bias")}
    for side, count in [("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)]:
        for i in range(count):
            for name in _hf_layer_tensors(side):
                weight = name.endswith(".weight")
                if name.startswith(("fc1.", "fc2.")):
                    inner = (f, d) if name.startswith("fc1.") else (d, f)
                    shape, fields = inner if weight else inner[:1], f"{side}_ffn_dim {f}, d_model {d}"
                else:  # projections (d, d) and their biases, layer norms
                    shape, fields = (d, d) if weight and "layer_norm" not in name else (d,), f"d_model {d}"
                out[f"model.{side}.layers.{i}.{name}"] = (shape, fields)
    return out


def _describe(names: list[str]) -> str:
    """Tensor names for a message: a whole layer as `model.encoder.layers.1.*`, at most four items, and the count."""
    by_layer: dict[str, list[str]] = {}
    for name in names:
        by_layer.setdefault(m[0] if (m := _LAYER.match(name)) else name, []).append(name)
    items: list[str] = []
    for key, members in by_layer.items():
        whole = (m := _LAYER.match(key)) and len(members) == len(_hf_layer_tensors(m[1]))
        items += [f"{key}*"] if whole else members
    shown = ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
    return f"{shown} ({len(names)} tensor{'s' if len(names) > 1 else ''})"


def _layer_fields(names: list[str], cfg: ModelConfig) -> str:
    """The config.json fields that declare how many layers the named tensors' layers belong to."""
    counts = {"encoder": cfg.num_encoder_layers, "decoder": cfg.num_decoder_layers}
    fields = dict.fromkeys(f"{m[1]}_layers {counts[m[1]]}" for name in names if (m := _LAYER.match(name)))
    return f" ({', '.join(fields)})" if fields else ""


def checked_hf_weights(tensors: dict[str, Tensor], cfg: ModelConfig, vocab_size: int, weights: Path,
                       config: Path) -> dict[str, Tensor]:
    """`tensors` under M2M100ForConditionalGeneration's names (a bare M2M100Model saves them without `model.`),
    once each is one that `config` declares, with the shape it gives: a tensor it does not declare (a layer more
    than `encoder_layers`), one it declares that is missing, or another width, is one sentence naming the tensors
    and the config.json field. Checked before the model is built, so an absurd config allocates nothing."""
    named: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        named.setdefault(key if key.startswith("model.") or key == "lm_head.weight" else f"model.{key}", tensor)
    expected = expected_hf_shapes(cfg)
    unexpected = [name for name in named if name not in expected and name not in EMBEDDING_NAMES + POSITION_NAMES]
    if unexpected:
        raise UserError(f"{weights} holds {_describe(unexpected)}, which {config} does not declare"
                        f"{_layer_fields(unexpected, cfg)}; expected exactly the tensors of the model it describes")
    embedding = [name for name in EMBEDDING_NAMES if name in named]
    missing = [name for name in expected if name not in named] + ([] if embedding else [EMBEDDING_NAMES[0]])
    if missing:
        raise UserError(f"{weights} lacks {_describe(missing)}, which {config} declares{_layer_fields(missing, cfg)}; "
                        "expected every tensor of the model it describes")
    table = ((vocab_size, cfg.model_dim), f"vocab_size {vocab_size}, d_model {cfg.model_dim}")
    for name, (shape, fields) in {**expected, **dict.fromkeys(embedding, table)}.items():
        if tuple(named[name].shape) != shape:
            raise UserError(f"{weights} does not fit {config}: {name} has shape {list(named[name].shape)}; expected "
                            f"{list(shape)} from {fields}")
    # The one size no tensor pins down: the sinusoidal table the model computes (and transformers too) at load.
    positions, total = (cfg.position_offset + cfg.max_seq_len) * cfg.model_dim, sum(t.numel() for t in named.values())
    if positions > total:
        raise UserError(f"{config}: max_position_embeddings {cfg.max_seq_len} asks for a position table of "
                        f"{positions:,} numbers, more than all {total:,} weights in {weights}; expected the longest "
                        "sequence the model takes (NLLB: 1024)")
    return named


def fs2mini_state_from_hf(hf: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """fs2mini's state dict (fp32) from an M2M100 one that `checked_hf_weights` returned (q/k/v and k/v
    concatenated; the shared table once)."""
    out = {"embed.weight": next(hf[name] for name in EMBEDDING_NAMES if name in hf)}
    for side in ("encoder", "decoder"):
        for p in ("weight", "bias"):
            out[f"{side}_norm.{p}"] = hf[f"model.{side}.layer_norm.{p}"]
    for side, ours, count in [("encoder", "encoder_layers", cfg.num_encoder_layers),
                              ("decoder", "decoder_layers", cfg.num_decoder_layers)]:
        for i in range(count):
            theirs = f"model.{side}.layers.{i}"
            for p in ("weight", "bias"):
                for fs_name, hf_name in _layer_names(side == "decoder"):
                    out[f"{ours}.{i}.{fs_name}.{p}"] = hf[f"{theirs}.{hf_name}.{p}"]
                out[f"{ours}.{i}.self_attn.qkv_proj.{p}"] = torch.cat(
                    [hf[f"{theirs}.self_attn.{x}_proj.{p}"] for x in "qkv"])
                if side == "decoder":
                    out[f"{ours}.{i}.encoder_decoder_attn.kv_proj.{p}"] = torch.cat(
                        [hf[f"{theirs}.encoder_attn.{x}_proj.{p}"] for x in "kv"])
    return {name: tensor.float() for name, tensor in out.items()}  # (a no-op for fp32 weights)


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
    expected = "a JSON object whose weight_map maps tensor names to shard files"
    weight_map = read_json_object(index, expected).get("weight_map")
    if not isinstance(weight_map, dict):
        raise UserError(f"{index} has no weight_map object; expected {expected}")
    bad = [name for name in weight_map.values() if not isinstance(name, str) or Path(name).name != name]
    names = [] if bad else sorted(set(weight_map.values()))
    if bad or not names:
        raise UserError(f"{index} names shard {bad[0]!r}; expected the file names of shards beside it" if bad else
                        f"{index} names no shards; expected a weight_map of tensor names to shard files")
    return names


def read_weights(src: Path) -> tuple[dict[str, Tensor], Path]:
    """Every tensor of `src`'s weight files (found by `weight_files`), and the file that names them for messages
    (the weights file, or the shards' index)."""
    files = weight_files(src)
    if not files:
        raise UserError(f"{src} has no model.safetensors or pytorch_model.bin (nor their .index.json); expected a "
                        "Hugging Face save_pretrained directory")
    tensors: dict[str, Tensor] = {}
    for path in files:
        tensors.update(read_safetensors_file(path) if path.name.endswith(".safetensors") else read_bin(path))
    kind = next(name for name in WEIGHT_FILES if name.endswith(files[0].suffix))
    return tensors, files[0] if files[0].name == kind else src / f"{kind}.index.json"


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


TOKENIZER_CONFIG = "tokenizer_config.json"
"""A Hugging Face tokenizer's settings: its class, its language codes, its added tokens and their ids."""


def nllb_layout(src: Path, num_pieces: int, vocab_size: int) -> TokenizerLayout:
    """NLLB's ids: fairseq specials, pieces + 1, language codes from tokenizer_config.json after the pieces."""
    config_path = src / TOKENIZER_CONFIG
    tok_cfg = read_json_object(config_path, "a Hugging Face tokenizer_config.json") if config_path.is_file() else {}
    if (src / "vocab.json").is_file() and tok_cfg.get("tokenizer_class") != "NllbTokenizer":
        return m2m100_layout(src, tok_cfg, vocab_size)
    first = num_pieces + 1  # fairseq's offset of 1
    added = {token: i for token, i in added_tokens(config_path, tok_cfg).items() if i >= first}
    codes = [c for c in added if c != "<mask>"]
    if not codes:
        lists = [tok_cfg.get(key) for key in ("extra_special_tokens", "additional_special_tokens")]
        from_list = next((value for value in lists if isinstance(value, list) and value), None)
        if from_list is None or not all(isinstance(code, str) for code in from_list):
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


def added_tokens(config_path: Path, tok_cfg: dict[str, Any]) -> dict[str, int]:
    """tokenizer_config.json's added_tokens_decoder as {token: id}, or one sentence naming the entry that is not
    `"ID": {"content": TOKEN, ...}`."""
    decoder = tok_cfg.get("added_tokens_decoder") or {}
    try:
        tokens = {entry["content"]: int(i) for i, entry in decoder.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{config_path}: added_tokens_decoder is malformed ({type(err).__name__}: {err}); expected an "
                        'object mapping each id to {"content": TOKEN, ...}') from None
    odd = [f"{token!r}: {i}" for token, i in tokens.items() if not isinstance(token, str) or i < 0]
    if odd:
        raise UserError(f"{config_path}: added_tokens_decoder has {odd[0]}; expected string tokens at ids >= 0")
    return tokens


def m2m100_layout(src: Path, tok_cfg: dict[str, Any], vocab_size: int) -> TokenizerLayout:
    """M2M100's ids: vocab.json maps every piece (and <s> <pad> </s> <unk>) to its id; `__en__`
    language tokens follow at len(vocab) + i, in the order tokenizer_config.json lists them."""
    path = src / "vocab.json"
    expected = "a JSON object mapping <s>, <pad>, </s>, <unk> and every piece to its id"
    vocab = read_json_object(path, expected)
    odd = [f"{piece!r} maps to {i!r}" for piece, i in vocab.items()
           if not isinstance(i, int) or isinstance(i, bool) or i < 0]
    odd += [f"no {piece}" for piece in ("<s>", "<pad>", "</s>", "<unk>") if piece not in vocab]
    if odd:
        raise UserError(f"{path} is not an M2M100 vocabulary ({odd[0]}); expected {expected}")
    specials = {key: vocab[piece] for key, piece in
                [("bos_id", "<s>"), ("pad_id", "<pad>"), ("eos_id", "</s>"), ("unk_id", "<unk>")]}
    tokens = added_tokens(src / TOKENIZER_CONFIG, tok_cfg)
    language_codes = tok_cfg.get("language_codes", "m2m100")
    known = M2M100_LANGUAGE_CODES.get(language_codes, []) if isinstance(language_codes, str) else []
    listed = [f"__{code}__" for code in known]
    for i, token in enumerate(listed):
        tokens.setdefault(token, len(vocab) + i)
    lang_ids = {lang: i for token, i in tokens.items() if (lang := token_lang(token)) is not None}
    if not lang_ids:
        raise UserError(f"{src / TOKENIZER_CONFIG}: language_codes {language_codes!r} is unknown; "
                        f"expected one of {', '.join(M2M100_LANGUAGE_CODES)}")
    top = max([*lang_ids.values(), *vocab.values()])
    if top >= vocab_size:
        raise UserError(f"{path} and its language tokens use ids up to {top}, which do not fit the model's vocab_size "
                        f"{vocab_size}; expected the tokenizer of this model")
    piece_ids = {piece: i for piece, i in vocab.items() if piece not in ("<s>", "<pad>", "</s>", "<unk>")}
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


STAGING_SUFFIX = ".fs2mini-partial"
"""Ends the name of the hidden directory beside its target that an import or export is written into (`staged`)."""


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A new empty directory to write `target`'s content into, renamed to `target` when the block completes.

    It lies in a hidden scratch directory beside `target` (`.NAME.HOST.PID.XXXX.fs2mini-partial`; the block may
    use the rest of it), removed however the block ends: an error, Ctrl-C, or SIGTERM/SIGHUP, which stop the
    block with exit status 128 + the signal. A SIGKILL (or a power cut) stops Python too, so the next `staged`
    in the same folder removes the scratch directories whose process is gone. A write that fails (a read-only
    folder, a full disk) is one sentence."""
    for path in remove_stale_scratch(target.parent):
        print(f"removed {path}, left by an import or export that was killed", file=sys.stderr)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_host()}.{os.getpid()}.", suffix=STAGING_SUFFIX,
                                        dir=target.parent))
    except OSError as err:
        raise UserError(f"cannot write {target}: {err.strerror or err}; expected a folder this user can write to") from None
    try:
        content = scratch / target.name
        content.mkdir()
        with _stopped_by_signals():
            yield content
        if target.exists():
            target.rmdir()  # (empty: checked by the callers)
        os.replace(content, target)
    except OSError as err:
        raise UserError(f"cannot write {target}: {err.strerror or err}; nothing was written there") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `RunStopped` in the block (so that `finally` clauses run), as Ctrl-C raises
    KeyboardInterrupt; their previous handlers come back after it."""
    def stop(signum: int, frame: Any) -> None:
        raise RunStopped(f"stopped by {signal.Signals(signum).name}; what was written so far is removed", 128 + signum)

    main_thread = threading.current_thread() is threading.main_thread()  # (only it may set handlers)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)} if main_thread else {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _host() -> str:
    """This machine's name as it appears in scratch directory names: letters, digits and hyphens."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def remove_stale_scratch(folder: Path) -> list[Path]:
    """Remove the scratch directories of `staged` in `folder` whose process, on this machine, is gone; returns them.
    A live process's, and another machine's (a shared file system), are left alone."""
    pattern = re.compile(rf"^\..*\.{re.escape(_host())}\.(\d+)\.\w+{re.escape(STAGING_SUFFIX)}$")
    stale = [path for path in (folder.iterdir() if folder.is_dir() else ())
             if (m := pattern.match(path.name)) and path.is_dir() and not _alive(int(m[1]))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # (PermissionError: another user's process)
        return True
    return True


def import_checkpoint(src: str, run_dir: Path, source_lang: str, target_lang: str, tsv: Path | None = None,
                      revision: str | None = None) -> Path:
    """Write `run_dir` (config.json, tokenizer.model + tokenizer_layout.json, checkpoints/best.pt) from `src`.

    Every file of `src` is checked before anything is written; the run is written by `staged`, so a failure or
    a stop signal leaves nothing behind."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"{run_dir} already exists; expected a new run directory")
    if tsv is not None and not tsv.is_file():  # before a download: the run's config would name a corpus that is not there
        raise UserError(f"--tsv {tsv} {'is a directory' if tsv.is_dir() else 'does not exist'}; expected a file of sentence "
                        "pairs, source<TAB>target per line")
    path = fetch(src, revision)
    config_path = path / "config.json"
    hf = read_json_object(config_path, "the config.json of a Hugging Face save_pretrained directory")
    model_cfg = model_config_from_hf(hf, config_path)
    vocab_size = config_int(hf, "vocab_size", config_path)
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
    tokenizer = Tokenizer(spm_path, (source_lang, target_lang), model_bytes=spm_bytes, layout=layout)  # checks the codes
    tensors, weights_path = read_weights(path)
    state = fs2mini_state_from_hf(checked_hf_weights(tensors, model_cfg, vocab_size, weights_path, config_path), model_cfg)
    del tensors
    with torch.device("meta"):  # no memory for weights about to be replaced (600M: 2.5 GB)
        model = build_model(model_cfg, tokenizer.vocab_info)
    load_weights(model, state, str(weights_path), fits=str(config_path), assign=True)
    cfg = TrainConfig(run_name=run_dir.name, output_dir=run_dir.resolve(), model=model_cfg,
                      tokenizer=TokenizerConfig(vocab_size=vocab_size),
                      data=DataConfig(corpus=TsvCorpus(path=(tsv or TsvCorpus.path).resolve(), source_lang=source_lang,
                                                       target_lang=target_lang)))
    with staged(run_dir) as tmp:
        (tmp / MARKER).touch()  # a run directory fs2mini may write into (fs2mini.rundir)
        (tmp / TOKENIZER_FILE).write_bytes(spm_bytes)
        (tmp / LAYOUT_FILE).write_text(layout.to_json(), encoding="utf-8")
        save_config(cfg, tmp / CONFIG_FILE)
        (tmp / CHECKPOINT_DIR).mkdir()
        write_checkpoint(tmp / CHECKPOINT_DIR / BEST_CHECKPOINT, model.state_dict(),
                         config=json.loads((tmp / CONFIG_FILE).read_text()), tokenizer=tokenizer_record(tokenizer), step=0,
                         imported_from=str(src))
    return run_dir


def export_run(run_dir: Path, out: Path, checkpoint: str | None = None, *, trust_recipe_code: bool = False) -> Path:
    """Write `out`: config.json, model.safetensors, sentencepiece.bpe.model and tokenizer files for transformers.

    The checkpoint is checked as `Translator.from_run` checks it (the run's tokenizer is the one it was trained
    with, its weights build the run's model: every tensor, none more, each of its shape), and against the
    architecture the run's config.json records, before anything is written."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists; expected a new directory")
    cfg = load_config(run_dir / CONFIG_FILE, trust_recipe_code=trust_recipe_code)
    if not isinstance(cfg.model, ModelConfig):
        raise UserError(f"{run_dir / CONFIG_FILE}: model {type(cfg.model).__qualname__} is not fs2mini's ModelConfig; "
                        "only the built-in architecture exports to M2M100")
    ckpt_path, state = load_first_readable(find_checkpoints(run_dir, checkpoint), mmap=True)
    refuse_other_architecture(state, ckpt_path, config_to_json(cfg)["model"], run_dir / CONFIG_FILE)
    tokenizer = checked_tokenizer(run_dir / TOKENIZER_FILE, run_directions(cfg.data).languages, state.get(TOKENIZER),
                                  ckpt_path)
    with torch.device("meta"):  # the weights come from the checkpoint: checked, not copied
        model = build_model(cfg.model, tokenizer.vocab_info)
    load_weights(model, model_weights(state), f"checkpoint {ckpt_path}",  # (a LoRA run: its adapters merged in)
                 fits=f"the model in {run_dir / CONFIG_FILE}", assign=True)
    weights = model.state_dict()
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
    with staged(out) as tmp:
        try:
            save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        except SafetensorError as err:  # (safetensors' own type for a failed write: a full disk)
            raise UserError(f"cannot write {out}: {err}; nothing was written there") from None
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
        (tmp / TOKENIZER_CONFIG).write_text(json.dumps(
            {"tokenizer_class": "NllbTokenizer", **specials, "additional_special_tokens": codes,
             "added_tokens_decoder": decoder,
             "src_lang": by_id.get(layout.lang_ids.get(source_lang), codes[0]),
             "tgt_lang": by_id.get(layout.lang_ids.get(target_lang)),
             "legacy_behaviour": False, "model_max_length": cfg.model.max_seq_len}, indent=2) + "\n")
        (tmp / "special_tokens_map.json").write_text(json.dumps({**specials, "additional_special_tokens": codes}, indent=2) + "\n")
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
    trust_recipe_code: bool = False
    """Allow importing (i.e. running) the recipe code outside fs2mini that RUN_DIR/config.json names: only for runs you trust."""


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
    trust_recipe_code: bool = False
    """Allow importing (i.e. running) the recipe code outside fs2mini that RUN_DIR/config.json names: only for runs you trust."""


def export_ctranslate2(run_dir: Path, out: Path, quantization: str, checkpoint: str | None = None, *,
                       trust_recipe_code: bool = False) -> Path:
    """`export_run` into scratch space, then CTranslate2's converter from it into `out`, all in one `staged` write."""
    from fs2mini.ctranslate import convert_exported, import_ctranslate2

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists; expected a new directory")
    import_ctranslate2()  # before the export's work
    with staged(out) as converted:
        exported = export_run(run_dir, converted.parent / "m2m100", checkpoint, trust_recipe_code=trust_recipe_code)
        convert_exported(exported, converted, quantization)  # (renamed over the empty `converted`)
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
                export_run(args.run_dir, args.out, args.checkpoint, trust_recipe_code=args.trust_recipe_code)
            case CTranslate2Args():
                export_ctranslate2(args.run_dir, args.out, args.quantization, args.checkpoint,
                                   trust_recipe_code=args.trust_recipe_code)


if __name__ == "__main__":
    main()
