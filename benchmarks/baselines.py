"""The models fs2mini is compared against, built to the same shapes, and the one loss they all use.

- `PlainTransformer`: what a user writes by hand with `torch.nn.Transformer` (pre-LN, tied
  embeddings, sinusoidal positions, the usual causal and key-padding masks).
- `build_hf_m2m100`: Hugging Face's `M2M100ForConditionalGeneration` (the NLLB architecture) with
  the same width, depth, heads, FFN, vocabulary and dropout, randomly initialised.

Every system is trained with `label_smoothed_ce`: `F.cross_entropy(label_smoothing=0.1,
reduction="sum", ignore_index=pad)` on its logits, i.e. the loss `fs2mini.task.Seq2Seq` computed
before it was fused with the output projection. `plain_transformer_loss` and `hf_loss` give it in
the form `fs2mini.trainer.train_step` calls (`Task.compute_loss`), so the baselines are trained by
the same step as fs2mini.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from fs2mini.data import Seq2SeqBatch
from fs2mini.model import ModelConfig, sinusoidal_positions

LABEL_SMOOTHING = 0.1


def label_smoothed_ce(logits: Tensor, target: Tensor, pad_idx: int) -> Tensor:
    """Summed label-smoothed cross-entropy over non-pad targets (what a user writes by hand)."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), target.flatten(), ignore_index=pad_idx, reduction="sum",
        label_smoothing=LABEL_SMOOTHING,
    )


class PlainTransformer(nn.Module):
    """`nn.Transformer(norm_first=True)` with a shared embedding table and sinusoidal positions."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_idx: int) -> None:
        super().__init__()
        self.pad_idx = pad_idx
        self.embed = nn.Embedding(vocab_size, cfg.model_dim, padding_idx=pad_idx)
        nn.init.normal_(self.embed.weight, std=cfg.model_dim**-0.5)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_seq_len, cfg.model_dim), persistent=False)
        self.scale = math.sqrt(cfg.model_dim)
        self.dropout = nn.Dropout(cfg.dropout_p)
        self.transformer = nn.Transformer(
            d_model=cfg.model_dim, nhead=cfg.num_encoder_attn_heads, num_encoder_layers=cfg.num_encoder_layers,
            num_decoder_layers=cfg.num_decoder_layers, dim_feedforward=cfg.ffn_inner_dim, dropout=cfg.dropout_p,
            batch_first=True, norm_first=True,
        )

    def _embed(self, tokens: Tensor) -> Tensor:
        return self.dropout(self.embed(tokens) * self.scale + self.positions[: tokens.size(1)])

    def forward(self, source: Tensor, source_lengths: Tensor, target_input: Tensor) -> Tensor:
        src_pad = source == self.pad_idx
        tgt_pad = target_input == self.pad_idx
        causal = nn.Transformer.generate_square_subsequent_mask(target_input.size(1), device=source.device)
        hidden = self.transformer(
            self._embed(source), self._embed(target_input), tgt_mask=causal, src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad, tgt_is_causal=True,
        )
        return F.linear(hidden, self.embed.weight)


def build_hf_m2m100(cfg: ModelConfig, vocab_size: int, pad_idx: int, eos_idx: int, *,
                    attention_dropout: float | None = None, activation_dropout: float | None = None) -> nn.Module:
    """Hugging Face's NLLB/M2M100 model with fs2mini's shapes (SDPA attention, no layerdrop).

    Its attention and activation dropout follow `cfg` (the speed benchmark: the same work as fs2mini)
    unless given (the quality benchmark sets them as the HF baseline is usually trained)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(
        vocab_size=vocab_size, max_position_embeddings=cfg.max_seq_len, d_model=cfg.model_dim,
        encoder_layers=cfg.num_encoder_layers, decoder_layers=cfg.num_decoder_layers,
        encoder_attention_heads=cfg.num_encoder_attn_heads, decoder_attention_heads=cfg.num_decoder_attn_heads,
        encoder_ffn_dim=cfg.ffn_inner_dim, decoder_ffn_dim=cfg.ffn_inner_dim, dropout=cfg.dropout_p,
        attention_dropout=cfg.attention_dropout_p if attention_dropout is None else attention_dropout,
        activation_dropout=cfg.ffn_dropout_p if activation_dropout is None else activation_dropout, encoder_layerdrop=0.0,
        decoder_layerdrop=0.0, activation_function="relu", scale_embedding=True, pad_token_id=pad_idx,
        bos_token_id=2, eos_token_id=eos_idx, decoder_start_token_id=eos_idx, tie_word_embeddings=True,
    )
    return M2M100ForConditionalGeneration(config)


def hf_logits(model: nn.Module, source: Tensor, target_input: Tensor, pad_idx: int) -> Tensor:
    """Teacher-forced logits of the HF model; padding masks as a user passes them."""
    out = model(
        input_ids=source, attention_mask=(source != pad_idx).long(), decoder_input_ids=target_input,
        decoder_attention_mask=(target_input != pad_idx).long(), use_cache=False,
    )
    return out.logits


def plain_transformer_loss(model: PlainTransformer, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
    """(summed label-smoothed CE, target tokens) of `PlainTransformer`: a `fs2mini.trainer.LossFunction`."""
    logits = model(batch.source, batch.source_lengths, batch.target_input)
    return label_smoothed_ce(logits, batch.target_output, model.pad_idx), batch.num_target_tokens


def hf_loss(model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
    """(summed label-smoothed CE, target tokens) of the HF model: a `fs2mini.trainer.LossFunction`."""
    pad = model.config.pad_token_id
    logits = hf_logits(model, batch.source, batch.target_input, pad)
    return label_smoothed_ce(logits, batch.target_output, pad), batch.num_target_tokens
