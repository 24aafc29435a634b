"""fs2mini's model in M2M100's terms and back: parameter names, fused projections, config.json.

Why a module of its own: import and export are one mapping read in two directions, and the checks of an
outside checkpoint (fs2mini.hf_weights) need the same tensor names, so each name is spelled here once.

The two models compute the same function (docs/nllb.md, "Equivalence with transformers", lists every convention):
fs2mini fuses q/k/v (self-attention) and k/v (encoder–decoder attention) into one projection, so
their weights and biases are concatenated on import and split on export; everything else maps
one to one. HF's positions are rows `pad_idx + 1 + j` of the sinusoidal table, which is
`ModelConfig.position_offset = pad_idx + 1`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fs2mini.errors import UserError
from fs2mini.model import ModelConfig
from fs2mini.tokenizer import TokenizerLayout

EMBEDDING_NAMES = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                   "lm_head.weight")
"""Names of M2M100's one embedding table (tied: a checkpoint holds any of them, save_pretrained keeps one)."""
POSITION_NAMES = ("model.encoder.embed_positions.weights", "model.decoder.embed_positions.weights")
"""Sinusoidal tables that older checkpoints saved: computed, never trained, so fs2mini computes its own."""


def _layer_names(decoder: bool) -> list[tuple[str, str]]:
    """(fs2mini name, HF name) of one layer's unfused parameters, without .weight/.bias."""
    names = [("self_attn.out_proj", "self_attn.out_proj"), ("self_attn_norm", "self_attn_layer_norm"),
             ("ffn.inner_proj", "fc1"), ("ffn.out_proj", "fc2"), ("ffn_norm", "final_layer_norm")]
    if decoder:
        names += [("encoder_decoder_attn.q_proj", "encoder_attn.q_proj"),
                  ("encoder_decoder_attn.out_proj", "encoder_attn.out_proj"),
                  ("encoder_decoder_attn_norm", "encoder_attn_layer_norm")]
    return names


def hf_layer_tensors(side: str) -> list[str]:
    """The M2M100 names of one layer's tensors, after `model.{side}.layers.{i}.`."""
    names = [hf_name for _, hf_name in _layer_names(side == "decoder")] + [f"self_attn.{x}_proj" for x in "qkv"]
    if side == "decoder":
        names += [f"encoder_attn.{x}_proj" for x in "kv"]
    return [f"{name}.{p}" for name in names for p in ("weight", "bias")]


def fs2mini_state_from_hf(hf: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """fs2mini's state dict (fp32) from an M2M100 one that `fs2mini.hf_weights.checked_hf_weights` returned
    (q/k/v and k/v concatenated; the shared table once)."""
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


def hf_config(model: ModelConfig, layout: TokenizerLayout, vocab_size: int) -> dict[str, Any]:
    """M2M100 config.json for an fs2mini model (the inverse of `fs2mini.hf_weights.model_config_from_hf`)."""
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
