"""A run's token ids rewritten in NLLB's layout, so that a model trained with fs2mini's own tokenizer exports too.

Why a rewrite and not a new tokenizer format: `transformers`' NllbTokenizer and CTranslate2's
converter know one sentencepiece layout (fairseq's dictionary, `fs2mini.hf.NLLB_SPECIALS`):
<s>=0 <pad>=1 </s>=2 <unk>=3, sentencepiece piece j at id j + 1 (the model's own <unk> <s> </s>
at pieces 0-2), language codes after the pieces, <mask> last. fs2mini's own tokenizer puts
<pad> <unk> <s> </s> at 0-3 and its `__eng__` language tokens among the pieces. Both describe the
same segmentation, so the export reorders the sentencepiece model's pieces (specials first, language
tokens taken out and appended as codes) and gathers the embedding rows into the new order: the
exported model computes exactly the same function on exactly the same segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from sentencepiece import sentencepiece_model_pb2
from torch import Tensor

from fs2mini.tokenizer import Tokenizer, TokenizerLayout, lang_token, token_lang

NLLB_SPECIALS = {"bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3}
"""fairseq's dictionary: <s> <pad> </s> <unk> first, then the sentencepiece pieces shifted by one."""


@dataclass(frozen=True)
class NllbIds:
    """What a run looks like in NLLB's layout: its sentencepiece model, the ids, the model weights."""

    model_bytes: bytes
    layout: TokenizerLayout
    state: dict[str, Tensor]


def to_nllb_ids(tokenizer: Tokenizer, state: dict[str, Tensor]) -> NllbIds:
    """`tokenizer` (fs2mini's own layout) and the weights `state` of its model, rewritten in NLLB's layout.

    The languages are the tokenizer's `__code__` pieces, named `__code__` and `code`; one <mask> row follows them,
    a copy of <unk>'s (never produced: NLLB's layout has it, so tokenizers expect it there)."""
    if tokenizer.layout != TokenizerLayout():
        raise ValueError("to_nllb_ids rewrites fs2mini's own layout only")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.model_bytes)
    old = tokenizer.layout
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    specials = {old.unk_id: "unk", old.bos_id: "bos", old.eos_id: "eos", old.pad_id: "pad"}
    codes = {}  # code -> old id
    kept = []  # old ids of the pieces that stay pieces, in their order
    for old_id, piece in enumerate(proto.pieces):
        if old_id in specials:
            continue
        code = token_lang(piece.piece)
        if piece.type == kinds.USER_DEFINED and code is not None:
            codes[code] = old_id
        else:
            kept.append(old_id)
    old_pieces = list(proto.pieces)
    new_pieces = [old_pieces[old.unk_id], old_pieces[old.bos_id], old_pieces[old.eos_id]] + [old_pieces[i] for i in kept]
    del proto.pieces[:]
    proto.pieces.extend(new_pieces)
    spec = proto.trainer_spec
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    # Model id of each row, in NLLB's order: specials, pieces from sentencepiece id 3 on, codes, <mask>.
    rows = [old.bos_id, old.pad_id, old.eos_id, old.unk_id] + kept + list(codes.values()) + [old.unk_id]
    first_code = len(new_pieces) + 1
    # Exported under their `__eng__` piece names (transformers matches added tokens inside words: a code named
    # `eng` would split "length"), and known to fs2mini by its own names (`eng`) too.
    lang_ids = {}
    for k, code in enumerate(codes):
        lang_ids[lang_token(code)] = lang_ids[code] = first_code + k
    layout = TokenizerLayout(**NLLB_SPECIALS, piece_offset=1, vocab_size=len(rows), lang_ids=lang_ids)
    embed = state["embed.weight"]
    return NllbIds(proto.SerializeToString(), layout, {**state, "embed.weight": embed[rows].clone()})
