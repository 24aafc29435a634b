"""An NLLB-style encoder–decoder Transformer, the protocol every fs2mini model follows, and presets.

`Seq2SeqModel` is what the trainer, validation and generation call: `forward` for teacher-forced
training, `encode` / `decode` / `project` and a `DecoderState` for incremental decoding. A model of
your own (a recipe's) only has to be an `nn.Module` with those methods, built by the `build(vocab)`
method of a frozen config dataclass; see recipes/custom_model.py.

The built-in architecture follows NLLB / fairseq2's `nllb` models: pre-LayerNorm layers with a
final LayerNorm on each stack, sinusoidal positions, embeddings scaled by √model_dim, a single
embedding table shared by the encoder, the decoder and the output projection, ReLU feed-forward
blocks, and dropout on embeddings, attention weights and residual branches. Attention goes through
`F.scaled_dot_product_attention` so PyTorch picks the fastest kernel for the device.

The decoder takes an optional `DecoderState` (a key/value cache): with it, `decode` consumes only
the new target positions, reuses the self-attention keys/values of earlier steps and computes the
encoder–decoder keys/values once per sentence. Without it, `decode` runs teacher-forced over the
whole target, which is what training uses.

With `checkpoint_layers` on (`--trainer.activation-checkpointing`), training keeps only each layer's
input and recomputes the layer's activations in the backward pass: memory for big models, paid for
with about one more forward pass per update.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from fs2mini.dropout import Dropout
from fs2mini.errors import UserError, expect_positive_ints
from fs2mini.loss import linear_cross_entropy
from fs2mini.vocab import VocabInfo


@dataclass
class DecoderOutput:
    """What `forward` returns: teacher-forced decoder states and the output projection's weight.

    The loss is taken from here rather than from materialised logits: `loss` fuses the projection
    with label-smoothed cross-entropy (fs2mini/loss.py) and never builds the (tokens × vocab)
    logits; `logits` builds them for losses that need every probability (recipes/custom_loss.py).
    Both run after `forward` has returned, which DDP and FSDP allow: the weight is the module's
    own parameter, gathered by FSDP for this forward, and its gradient flows back in `backward`.
    """

    hidden: Tensor  # (batch, tgt_len, model_dim)
    output_weight: Tensor  # (vocab_size, model_dim)

    def logits(self) -> Tensor:
        """(batch, tgt_len, vocab_size) unnormalised scores."""
        return F.linear(self.hidden, self.output_weight)

    def loss(self, target_output: Tensor, pad_idx: int, label_smoothing: float) -> Tensor:
        """Label-smoothed cross-entropy summed over the non-pad positions of `target_output`."""
        return linear_cross_entropy(self.hidden, self.output_weight, target_output, pad_idx, label_smoothing)


@runtime_checkable
class Seq2SeqModel(Protocol):
    """What the trainer, validation and generation need of a model (besides being an `nn.Module`).

    - `forward(source, source_lengths, target_input) -> DecoderOutput`: teacher-forced; what a
      task's `compute_loss` calls (through DDP/FSDP wrappers, which only see `forward`).
    - `encode(source, source_lengths) -> (encoder_out, encoder_mask)`: encoder_out is
      (batch, src_len, model_dim); the mask is whatever `decode` wants back.
    - `decode(target_input, encoder_out, encoder_mask, state=None) -> (batch, tgt_len, model_dim)`:
      with a `DecoderState`, only the new positions (and the state grows by them).
    - `project(hidden) -> (..., vocab_size)` logits, `new_decoder_state() -> DecoderState`.
    - `max_seq_len`: the longest sequence it accepts (generation stops before it).
    Parameters must not depend on anything but the config and the vocabulary, so a checkpoint's
    state dict loads into a freshly built model.
    """

    max_seq_len: int

    def forward(self, source: Tensor, source_lengths: Tensor, target_input: Tensor) -> DecoderOutput: ...

    def encode(self, source: Tensor, source_lengths: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode(self, target_input: Tensor, encoder_out: Tensor, encoder_mask: Tensor,
               state: DecoderState | None = None) -> Tensor: ...

    def project(self, decoder_out: Tensor) -> Tensor: ...

    def new_decoder_state(self) -> DecoderState: ...


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the encoder–decoder Transformer (field names follow fairseq2's NllbConfig)."""

    model_dim: int = 128
    """Width of embeddings and of every layer's input and output."""
    max_seq_len: int = 1024
    """Longest sequence (source or target, in tokens) the model accepts."""
    num_encoder_layers: int = 4
    """Number of encoder layers."""
    num_decoder_layers: int = 4
    """Number of decoder layers."""
    num_encoder_attn_heads: int = 4
    """Attention heads per encoder layer; must divide model_dim."""
    num_decoder_attn_heads: int = 4
    """Attention heads per decoder layer (self and encoder–decoder attention); must divide model_dim."""
    ffn_inner_dim: int = 512
    """Hidden width of the feed-forward blocks."""
    dropout_p: float = 0.1
    """Dropout on embeddings and on each residual branch (attention and FFN outputs)."""
    attention_dropout_p: float = 0.0
    """Dropout on attention weights (fairseq's attention_dropout; 0 measured best, docs/results.md "Quality at equal updates")."""
    ffn_dropout_p: float = 0.0
    """Dropout after the FFN activation (fairseq's activation_dropout; 0 measured best, docs/results.md "Quality at equal updates")."""
    position_offset: int = 2
    """Row of the sinusoidal table used by the first token: 2, as NLLB/M2M100 (fairseq's pad_idx + 1), so that every
    model exports to Hugging Face and CTranslate2 exactly (runs before 2026-12-05 used 0 and do not export)."""
    scale_embeddings: bool = True
    """Multiply token embeddings by √model_dim (NLLB and fairseq do; M2M100's `scale_embedding`)."""
    init: Literal["fairseq", "hf"] = "hf"
    """Weight init: Hugging Face M2M100's (N(0, 0.02) for every weight) or fairseq's (Xavier-uniform
    linears, N(0, model_dim^-½) embeddings). N(0, 0.02) is the default, measured on the 256-wide
    model (docs/results.md, "Quality at equal updates"): +0.8 BLEU over fairseq's across 5 seeds at 1,200 equal updates, and
    with lr 1.5e-3 the best 18-minute model. Narrow models learn faster with fairseq's (the 64-wide
    `tiny` preset keeps it: the tests' toy tasks learn far slower with N(0, 0.02) at that width)."""


    def build(self, vocab: VocabInfo) -> EncoderDecoderModel:
        """The built-in architecture with this shape (see `build_model` for any model config)."""
        check_model_config(self)
        return EncoderDecoderModel(**self.module_arguments(vocab))

    def module_arguments(self, vocab: VocabInfo) -> dict[str, int | float]:
        """`EncoderDecoderModel`'s keyword arguments for this shape (a subclass's `build` reuses them)."""
        return dict(vocab_size=vocab.size, pad_idx=vocab.pad_idx, model_dim=self.model_dim,
                    max_seq_len=self.max_seq_len, num_encoder_layers=self.num_encoder_layers,
                    num_decoder_layers=self.num_decoder_layers, num_encoder_attn_heads=self.num_encoder_attn_heads,
                    num_decoder_attn_heads=self.num_decoder_attn_heads, ffn_inner_dim=self.ffn_inner_dim,
                    dropout_p=self.dropout_p, attention_dropout_p=self.attention_dropout_p,
                    ffn_dropout_p=self.ffn_dropout_p, position_offset=self.position_offset,
                    scale_embeddings=self.scale_embeddings, init=self.init)


# Named presets. The CLI offers them as `model:NAME` subcommands (underscores become dashes);
# a recipe adds its own with `main(..., models={"my-arch": MyConfig()})`.
ARCHS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(model_dim=64, num_encoder_layers=2, num_decoder_layers=2, num_encoder_attn_heads=4,
                        num_decoder_attn_heads=4, ffn_inner_dim=256, dropout_p=0.0, attention_dropout_p=0.0,
                        ffn_dropout_p=0.0, init="fairseq"),  # 64 wide: see ModelConfig.init
    "small": ModelConfig(),  # a quick look: trains in minutes on a laptop CPU
    # The default run's model: the best of a 2-core CPU's time budget (docs/results.md, "Quality within a time budget").
    "medium": ModelConfig(model_dim=256, ffn_inner_dim=1024),
    "base": ModelConfig(model_dim=512, num_encoder_layers=6, num_decoder_layers=6, num_encoder_attn_heads=8,
                        num_decoder_attn_heads=8, ffn_inner_dim=2048, dropout_p=0.1),
    # NLLB-200 dense 600M (fairseq2's `dense_600m`).
    "dense_600m": ModelConfig(model_dim=1024, num_encoder_layers=12, num_decoder_layers=12,
                              num_encoder_attn_heads=16, num_decoder_attn_heads=16, ffn_inner_dim=4096,
                              dropout_p=0.1, attention_dropout_p=0.1, ffn_dropout_p=0.0),  # NLLB-200's dropouts
}

def check_model_config(cfg: ModelConfig) -> None:
    """Reject shapes that cannot build, naming the flag and what was expected."""
    expect_positive_ints([
        ("--model.model-dim", cfg.model_dim),
        ("--model.max-seq-len", cfg.max_seq_len),
        ("--model.num-encoder-layers", cfg.num_encoder_layers),
        ("--model.num-decoder-layers", cfg.num_decoder_layers),
        ("--model.num-encoder-attn-heads", cfg.num_encoder_attn_heads),
        ("--model.num-decoder-attn-heads", cfg.num_decoder_attn_heads),
        ("--model.ffn-inner-dim", cfg.ffn_inner_dim),
    ])
    if cfg.position_offset < 0:
        raise UserError(f"--model.position-offset must be >= 0, got {cfg.position_offset}")
    for flag, heads in [
        ("--model.num-encoder-attn-heads", cfg.num_encoder_attn_heads),
        ("--model.num-decoder-attn-heads", cfg.num_decoder_attn_heads),
    ]:
        if cfg.model_dim % heads:
            raise UserError(f"{flag} {heads} must divide --model.model-dim {cfg.model_dim}")
    for flag, p in [("--model.dropout-p", cfg.dropout_p), ("--model.attention-dropout-p", cfg.attention_dropout_p),
                    ("--model.ffn-dropout-p", cfg.ffn_dropout_p)]:
        if not 0.0 <= p < 1.0:
            raise UserError(f"{flag} must be in [0, 1), got {p}")


def build_model(cfg, vocab: VocabInfo) -> nn.Module:
    """The model a config describes: `cfg.build(vocab)`, checked against `Seq2SeqModel`.

    `cfg` is `ModelConfig` or any frozen dataclass with a `build(vocab)` method (a recipe's own
    architecture); a missing method fails here with one sentence instead of deep in training.
    """
    name = type(cfg).__qualname__
    if not callable(getattr(cfg, "build", None)):
        raise UserError(f"model config {name} has no build(vocab) method; expected a dataclass whose "
                        "build(vocab: VocabInfo) returns an nn.Module following fs2mini.model.Seq2SeqModel")
    model = cfg.build(vocab)
    missing = [m for m in ("forward", "encode", "decode", "project", "new_decoder_state", "max_seq_len")
               if not hasattr(model, m)]
    if not isinstance(model, nn.Module) or missing:
        raise UserError(f"{name}.build returned {type(model).__qualname__}, which is not an nn.Module with "
                        f"{', '.join(missing) or 'parameters'}; expected a model following fs2mini.model.Seq2SeqModel")
    return model


def enable_activation_checkpointing(model: nn.Module) -> None:
    """`--trainer.activation-checkpointing`: turn on the model's `checkpoint_layers` (before compile and DDP/FSDP
    wrap it); a recipe's own model must have that attribute and honour it (an `EncoderDecoderModel` subclass does)."""
    if not hasattr(model, "checkpoint_layers"):
        raise UserError(f"--trainer.activation-checkpointing: model {type(model).__qualname__} has no checkpoint_layers "
                        "attribute; expected an EncoderDecoderModel (subclass), or drop the flag")
    model.checkpoint_layers = True


@dataclass
class DecoderState:
    """Key/value cache for incremental decoding; one entry per decoder layer.

    Rows of the decoder input may come in groups that share one source sentence (the beams of beam
    search): `rows = sentences * group`, sentence-major. Self-attention keys/values belong to rows;
    encoder–decoder keys/values belong to sentences, so beams never copy them.

    `self_kv[i]` is a preallocated pair of buffers (rows, heads, capacity, head_dim) whose first
    `num_steps` positions are filled; `capacity` doubles when full, so a step writes one position
    instead of concatenating the whole past.
    `cross_kv[i]` is the encoder output projected once: (sentences, heads, src_len, head_dim).
    """

    num_layers: int
    self_kv: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)
    cross_kv: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)
    num_steps: int = 0

    def __post_init__(self) -> None:
        self.self_kv = [None] * self.num_layers
        self.cross_kv = [None] * self.num_layers

    def append_self_kv(self, index: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store layer `index`'s new (rows, heads, new, head_dim) keys/values; return all of them so far."""
        end = self.num_steps + k.size(2)
        buffers = self.self_kv[index]
        if buffers is None or buffers[0].size(2) < end:
            capacity = max(end, 2 * buffers[0].size(2) if buffers is not None else 16)
            grown = tuple(k.new_empty(k.size(0), k.size(1), capacity, k.size(3)) for _ in range(2))
            if buffers is not None:
                for new, old in zip(grown, buffers):
                    new[:, :, : self.num_steps] = old[:, :, : self.num_steps]
            buffers = self.self_kv[index] = grown
        buffers[0][:, :, self.num_steps : end] = k
        buffers[1][:, :, self.num_steps : end] = v
        return buffers[0][:, :, :end], buffers[1][:, :, :end]

    def reorder(self, rows: Tensor, sentences: Tensor | None = None) -> None:
        """Keep `rows` of the self-attention cache (e.g. to follow beams) and, when given, `sentences`
        of the encoder–decoder cache (when sentences leave the batch)."""
        steps = self.num_steps
        for i, buffers in enumerate(self.self_kv):
            if buffers is not None:
                # Only the filled positions are gathered, into fresh buffers of the same capacity.
                gathered = tuple(b.new_empty(rows.numel(), *b.shape[1:]) for b in buffers)
                for new, old in zip(gathered, buffers):
                    torch.index_select(old[:, :, :steps], 0, rows, out=new[:, :, :steps])
                self.self_kv[i] = gathered
        if sentences is not None:
            self.cross_kv = [None if kv is None else (kv[0].index_select(0, sentences), kv[1].index_select(0, sentences))
                             for kv in self.cross_kv]


def sinusoidal_positions(max_len: int, dim: int) -> Tensor:
    """(max_len, dim) table: sin in the first half, cos in the second, as fairseq/NLLB."""
    half = dim // 2
    inv_freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(max_len, dtype=torch.float32).unsqueeze(1) * inv_freq.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table


CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""SDPA kernels allowed on CUDA: all but cuDNN's. cuDNN attention (chosen first on Hopper) builds a
plan for every new (batch, length) shape, and length-bucketed batches rarely repeat a shape: on an
H200, SMALL training steps on new shapes took 315 ms with it and 22 ms without (19 vs 23 ms when
shapes repeat), so the first epoch of `fs2mini.train` ran 7x slower than the next ones."""


def residual_dtype(x: Tensor) -> torch.dtype:
    """The dtype the residual stream of both stacks is kept in: bf16 under bf16 autocast on CPU, else `x`'s own.

    Why: autocast leaves the residual stream fp32, so every layer norm's output was cast to bf16 for the
    next matmul, every branch's bf16 output promoted back on the residual add, and each of those casts had
    a twin in backward: 32 activation-sized casts per `model:medium` step (casts of all kinds are a fifth of a
    bf16 step on a CPU with AMX, where the matmuls are 7x faster than fp32 and the memory-bound work around
    them is not). From the embeddings on, a bf16 stream needs most of them no more (12 are left; side by
    side over 600 updates, 6.4% less time and the same validation loss, docs/results.md): CPU layer norm
    takes and returns bf16 under autocast (its statistics in fp32), as does the fused loss. Master
    weights, gradients and the loss stay fp32.
    CUDA keeps autocast's fp32 stream (its casts are cheap next to its matmuls; no GPU measured this);
    fp16 keeps it too (fp16's range is too narrow for a residual sum)."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return torch.bfloat16
    return x.dtype


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, dropout: Dropout) -> Tensor:
    """`F.scaled_dot_product_attention`, with dropout on the attention weights while training.

    On CPU with attention dropout, SDPA has no fused kernel and falls back to its own unfused math
    (scores, softmax, `bernoulli_` dropout, weighted sum); this is the same math with fs2mini's
    cheaper `Dropout`, measured +3% on a SMALL training step. Everywhere else SDPA is used as is
    (on CUDA without cuDNN's kernel: see `CUDA_SDPA_BACKENDS`).
    On CPU in bf16 or fp16 (autocast) the same math is used too: the CPU's fused SDPA kernel is 4x slower
    there than these two matmuls at fs2mini's lengths (bf16, 64 sentences x 4 heads x 32 positions x 64 dims,
    forward + backward on 2 cores: 9.9 ms vs 2.5 ms; forward only 1.1 ms vs 0.5 ms; in fp32 the kernel is the
    faster one and is kept). The CPU softmax of bf16 scores sums each row in fp32 and rounds once: the same
    weights as casting to fp32 and back, without the two casts (forward + backward 0.71 → 0.46 ms there; the
    backward now starts from the rounded weights, a difference within bf16's precision).
    `mask` is True where a key may be attended to; no row may be fully masked.
    """
    dropping = dropout.training and dropout.p > 0
    if not (q.device.type == "cpu" and (dropping or q.dtype in (torch.bfloat16, torch.float16))):
        with sdpa_kernel(CUDA_SDPA_BACKENDS) if q.is_cuda else contextlib.nullcontext():
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout.p if dropping else 0.0, is_causal=is_causal
            )
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)
    if is_causal:
        # in place: the matmul's backward does not need its output
        scores.masked_fill_(torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).triu_(1), float("-inf"))
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    return dropout(scores.softmax(dim=-1)) @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused input projection for queries, keys and values."""

    def __init__(self, model_dim: int, num_heads: int, dropout_p: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_dropout = Dropout(dropout_p)
        self.qkv_proj = nn.Linear(model_dim, 3 * model_dim)
        self.out_proj = nn.Linear(model_dim, model_dim)

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None,
        causal: bool,
        state: DecoderState | None = None,
        layer_index: int = 0,
    ) -> Tensor:
        batch, seq_len, model_dim = x.shape
        # (3, batch, heads, seq_len, head_dim)
        qkv = self.qkv_proj(x).view(batch, seq_len, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # unbind, not qkv[i]: its backward is one stack, not 3 zero-filled buffers
        past_len = 0
        if state is not None:
            past_len = state.num_steps
            k, v = state.append_self_kv(layer_index, k, v)  # (batch, heads, past_len + seq_len, head_dim)
        attn_mask, is_causal = key_mask, False
        if causal:
            if past_len == 0:
                is_causal = True
            elif seq_len > 1:
                # New positions may see all cached ones and the new ones up to themselves.
                positions = torch.arange(seq_len, device=x.device).unsqueeze(1) + past_len
                attn_mask = torch.arange(past_len + seq_len, device=x.device).unsqueeze(0) <= positions
        out = attention(q, k, v, attn_mask, is_causal, self.attn_dropout)
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq_len, model_dim))


class EncoderDecoderAttention(nn.Module):
    """Decoder queries attend to encoder outputs; keys/values can be projected once and cached."""

    def __init__(self, model_dim: int, num_heads: int, dropout_p: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_dropout = Dropout(dropout_p)
        self.q_proj = nn.Linear(model_dim, model_dim)
        self.kv_proj = nn.Linear(model_dim, 2 * model_dim)
        self.out_proj = nn.Linear(model_dim, model_dim)

    def forward(
        self,
        x: Tensor,
        encoder_out: Tensor,
        encoder_mask: Tensor | None,
        state: DecoderState | None = None,
        layer_index: int = 0,
    ) -> Tensor:
        """x: (batch, seq_len, model_dim). With `state`, `encoder_out`/`encoder_mask` may hold one row per
        sentence and x `batch = sentences * group` rows (sentence-major): a group's queries share its keys/values."""
        batch, seq_len, model_dim = x.shape
        kv = state.cross_kv[layer_index] if state is not None else None
        if kv is None:
            sentences, src_len = encoder_out.shape[:2]
            # (2, sentences, heads, src_len, head_dim)
            kv_all = self.kv_proj(encoder_out).view(sentences, src_len, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            kv = tuple(kv_all.unbind(0))
            if state is not None:
                # Made contiguous once: every later step reads them, and SDPA reads contiguous ones faster.
                kv = state.cross_kv[layer_index] = (kv[0].contiguous(), kv[1].contiguous())
        sentences = kv[0].size(0)
        # (sentences, heads, group * seq_len, head_dim): the queries of a sentence's rows side by side
        q = self.q_proj(x).view(sentences, batch // sentences * seq_len, self.num_heads, -1).transpose(1, 2)
        out = attention(q, kv[0], kv[1], encoder_mask, False, self.attn_dropout)
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq_len, model_dim))


class FeedForward(nn.Module):
    """Linear → ReLU → dropout → Linear, as in NLLB."""

    def __init__(self, model_dim: int, inner_dim: int, dropout_p: float) -> None:
        super().__init__()
        self.inner_proj = nn.Linear(model_dim, inner_dim)
        self.dropout = Dropout(dropout_p)
        self.out_proj = nn.Linear(inner_dim, model_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.dropout(F.relu(self.inner_proj(x))))


class EncoderLayer(nn.Module):
    def __init__(self, model_dim: int, num_heads: int, ffn_inner_dim: int, dropout_p: float, attention_dropout_p: float,
                 ffn_dropout_p: float) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(model_dim)
        self.self_attn = SelfAttention(model_dim, num_heads, attention_dropout_p)
        self.ffn_norm = nn.LayerNorm(model_dim)
        self.ffn = FeedForward(model_dim, ffn_inner_dim, ffn_dropout_p)
        self.dropout = Dropout(dropout_p)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        x = x + self.dropout(self.self_attn(self.self_attn_norm(x), key_mask, causal=False))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, model_dim: int, num_heads: int, ffn_inner_dim: int, dropout_p: float, attention_dropout_p: float,
                 ffn_dropout_p: float) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(model_dim)
        self.self_attn = SelfAttention(model_dim, num_heads, attention_dropout_p)
        self.encoder_decoder_attn_norm = nn.LayerNorm(model_dim)
        self.encoder_decoder_attn = EncoderDecoderAttention(model_dim, num_heads, attention_dropout_p)
        self.ffn_norm = nn.LayerNorm(model_dim)
        self.ffn = FeedForward(model_dim, ffn_inner_dim, ffn_dropout_p)
        self.dropout = Dropout(dropout_p)

    def forward(
        self, x: Tensor, encoder_out: Tensor, encoder_mask: Tensor | None, state: DecoderState | None, index: int
    ) -> Tensor:
        attn = self.self_attn(self.self_attn_norm(x), None, True, state, index)
        x = x + self.dropout(attn)
        attn = self.encoder_decoder_attn(self.encoder_decoder_attn_norm(x), encoder_out, encoder_mask, state, index)
        x = x + self.dropout(attn)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class EncoderDecoderModel(nn.Module):
    """`encode` the source once, `decode` target positions, `project` hidden states to logits."""

    def __init__(
        self,
        *,
        vocab_size: int,
        pad_idx: int,
        model_dim: int,
        max_seq_len: int,
        num_encoder_layers: int,
        num_decoder_layers: int,
        num_encoder_attn_heads: int,
        num_decoder_attn_heads: int,
        ffn_inner_dim: int,
        dropout_p: float,
        attention_dropout_p: float,
        ffn_dropout_p: float,
        position_offset: int = 0,
        scale_embeddings: bool = True,
        init: Literal["fairseq", "hf"] = "hf",
    ) -> None:
        super().__init__()
        self.init = init
        self.pad_idx = pad_idx
        self.model_dim = model_dim
        self.max_seq_len = max_seq_len
        self.embed = nn.Embedding(vocab_size, model_dim, padding_idx=pad_idx)
        self.position_offset = position_offset
        self.register_buffer("positions", sinusoidal_positions(position_offset + max_seq_len, model_dim), persistent=False)
        self.embed_scale = math.sqrt(model_dim) if scale_embeddings else 1.0
        self.dropout = Dropout(dropout_p)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(model_dim, num_encoder_attn_heads, ffn_inner_dim, dropout_p, attention_dropout_p, ffn_dropout_p)
            for _ in range(num_encoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(model_dim)
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(model_dim, num_decoder_attn_heads, ffn_inner_dim, dropout_p, attention_dropout_p, ffn_dropout_p)
            for _ in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(model_dim)
        self.checkpoint_layers = False
        """Recompute each layer's activations in the backward pass instead of keeping them (training only)."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fairseq's Transformer init (N(0, dim^-1/2) embeddings, Xavier linears) or Hugging Face's
        (N(0, 0.02) everywhere: smaller tied output weights, so first logits are near uniform);
        zero biases and pad row either way."""
        embed_std = self.model_dim**-0.5 if self.init == "fairseq" else 0.02
        nn.init.normal_(self.embed.weight, mean=0.0, std=embed_std)
        with torch.no_grad():
            self.embed.weight[self.pad_idx].zero_()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if self.init == "fairseq":
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)

    def _embed(self, tokens: Tensor, offset: int) -> Tensor:
        seq_len = tokens.size(1)
        if offset + seq_len > self.max_seq_len:
            raise ValueError(f"sequence of {offset + seq_len} tokens exceeds max_seq_len {self.max_seq_len}")
        x = self.embed(tokens) * self.embed_scale + self.position_embeddings(offset, seq_len)
        return self.dropout(x.to(residual_dtype(x)))

    def position_embeddings(self, offset: int, seq_len: int) -> Tensor:
        """(seq_len, model_dim) added to the embeddings of positions offset … offset+seq_len-1.

        Sinusoidal here, starting at row `position_offset` of the table; a subclass may learn them
        instead (recipes/custom_model.py)."""
        start = self.position_offset + offset
        return self.positions[start : start + seq_len]

    def encoder_mask(self, source_lengths: Tensor, src_len: int) -> Tensor:
        """(batch, 1, 1, src_len) True where a key is a real token, shaped to broadcast over heads and queries."""
        positions = torch.arange(src_len, device=source_lengths.device)
        return (positions.unsqueeze(0) < source_lengths.unsqueeze(1))[:, None, None, :]

    def encode(self, source: Tensor, source_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, src_len) tokens → ((batch, src_len, model_dim) states, key mask for `decode`)."""
        mask = self.encoder_mask(source_lengths, source.size(1))
        x = self._embed(source, 0)
        for layer in self.encoder_layers:
            x = self._run_layer(layer, x, mask, checkpointed=self.checkpoint_layers)
        return self.encoder_norm(x), mask

    def decode(
        self, target_input: Tensor, encoder_out: Tensor, encoder_mask: Tensor, state: DecoderState | None = None
    ) -> Tensor:
        """(batch, tgt_len) → (batch, tgt_len, model_dim); with `state`, only the new positions."""
        offset = state.num_steps if state is not None else 0
        x = self._embed(target_input, offset)
        # Never with a state: a recomputed layer would append its keys/values to the cache a second time.
        checkpointed = self.checkpoint_layers and state is None
        for index, layer in enumerate(self.decoder_layers):
            x = self._run_layer(layer, x, encoder_out, encoder_mask, state, index, checkpointed=checkpointed)
        if state is not None:
            state.num_steps += target_input.size(1)
        return self.decoder_norm(x)

    def _run_layer(self, layer: nn.Module, *inputs, checkpointed: bool) -> Tensor:
        """`layer(*inputs)`, under activation checkpointing when `checkpointed` and gradients are recorded
        for training (it restores the RNG state before recomputing, so dropout draws the same masks)."""
        if checkpointed and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *inputs, use_reentrant=False)
        return layer(*inputs)

    def project(self, decoder_out: Tensor) -> Tensor:
        """Logits over the vocabulary through the shared embedding table: (..., vocab_size)."""
        return F.linear(decoder_out, self.embed.weight)

    def new_decoder_state(self) -> DecoderState:
        return DecoderState(num_layers=len(self.decoder_layers))

    def forward(self, source: Tensor, source_lengths: Tensor, target_input: Tensor) -> DecoderOutput:
        """Teacher-forced decoder states (batch, tgt_len, model_dim) and the shared output weight."""
        encoder_out, encoder_mask = self.encode(source, source_lengths)
        return DecoderOutput(self.decode(target_input, encoder_out, encoder_mask), self.embed.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
