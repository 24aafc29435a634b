"""Hugging Face's NLLB/M2M100 tokenizer files, read into fs2mini's `TokenizerLayout` and written from one.

Why a module of its own: a Hub checkpoint numbers its tokens in its own way, spread over several files
(sentencepiece.bpe.model, tokenizer_config.json, M2M100's vocab.json), and fs2mini's tokenizer needs those ids
exactly (`fs2mini.tokenizer.TokenizerLayout`). `python -m fs2mini.hf import` reads them, CTranslate2's directory
(fs2mini.ctranslate) is read the same way, and `export` writes the files transformers' `NllbTokenizer` loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fs2mini.errors import UserError
from fs2mini.hf_weights import read_json_object
from fs2mini.relayout import NLLB_SPECIALS
from fs2mini.rundir import LAYOUT_FILE, TOKENIZER_FILE
from fs2mini.tokenizer import Tokenizer, TokenizerLayout, token_lang

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
TOKENIZER_CONFIG = "tokenizer_config.json"
"""A Hugging Face tokenizer's settings: its class, its language codes, its added tokens and their ids."""
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
"""The names of the special tokens (and the language codes) that NllbTokenizer takes as special."""


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


def nllb_tokenizer_files(tokenizer: Tokenizer, source_lang: str, target_lang: str, model_max_length: int,
                         run_dir: Path) -> dict[str, bytes]:
    """The files that make `tokenizer` (in NLLB's layout) an NllbTokenizer, by name: the sentencepiece model,
    tokenizer_config.json and special_tokens_map.json. A layout NllbTokenizer cannot express is one sentence
    naming `run_dir`'s tokenizer file."""
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
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "sep_token": "</s>", "cls_token": "<s>", "mask_token": "<mask>"}
    # Explicit ids: NLLB puts the codes right after the pieces and <mask> last (left to itself,
    # transformers 5 converting the sentencepiece model would put <mask> before the codes).
    added = {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>", **{layout.lang_ids[c]: c for c in codes},
             **({mask_id: "<mask>"} if mask_id is not None else {})}
    decoder = {str(i): {"content": text, "lstrip": text == "<mask>", "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for i, text in added.items()}
    tokenizer_config = {"tokenizer_class": "NllbTokenizer", **specials, "additional_special_tokens": codes,
                        "added_tokens_decoder": decoder,
                        "src_lang": by_id.get(layout.lang_ids.get(source_lang), codes[0]),
                        "tgt_lang": by_id.get(layout.lang_ids.get(target_lang)),
                        "legacy_behaviour": False, "model_max_length": model_max_length}
    return {SPM_FILE: tokenizer.model_bytes, TOKENIZER_CONFIG: _json_file(tokenizer_config),
            SPECIAL_TOKENS_MAP: _json_file({**specials, "additional_special_tokens": codes})}


def _json_file(value: dict[str, Any]) -> bytes:
    """`value` as the JSON files of a save_pretrained directory hold it: indented, one newline at the end."""
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")
