"""Whether a Hugging Face M2M100/NLLB checkpoint is what its config.json says, read without running its code.

Why a module of its own: `python -m fs2mini.hf import` takes files from outside, and this is the part that
decides whether to trust them. config.json becomes fs2mini's `ModelConfig`, or one sentence naming what fs2mini
cannot represent. The weights are found in a save_pretrained directory (model.safetensors or pytorch_model.bin,
each alone or sharded with its .index.json) and read: safetensors when the checkpoint has them; a
pytorch_model.bin (all that facebook/nllb-200-distilled-600M serves) through torch's tensors-only unpickler
(`weights_only=True`), which refuses any other object before it runs. Then every tensor's name and shape is
compared with what config.json declares (a layer more or fewer than `encoder_layers`, another width, a
`vocab_size` the table does not have: one sentence naming the tensors and the field), before the model is
built, so an absurd config allocates nothing.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fs2mini.errors import UserError, finite
from fs2mini.hf_convert import EMBEDDING_NAMES, POSITION_NAMES, hf_layer_tensors
from fs2mini.model import ModelConfig


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



# ---------------------------------------------------------------------------------------------
# Weight files


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
# Every tensor against config.json


_LAYER = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.")


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of an M2M100 of shape `cfg` (the embedding table apart): its shape and the config.json fields
    that give it."""
    d, f = cfg.model_dim, cfg.ffn_inner_dim
    out = {f"model.{side}.layer_norm.{p}": ((d,), f"d_model {d}")
           for side in ("encoder", "decoder") for p in ("weight", "bias")}
    for side, count in [("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)]:
        for i in range(count):
            for name in hf_layer_tensors(side):
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
        whole = (m := _LAYER.match(key)) and len(members) == len(hf_layer_tensors(m[1]))
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

