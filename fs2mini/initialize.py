"""Start a run from another model's weights (`--init`): fine-tuning, continued training, domain adaptation.

`--init` names an fs2mini run directory (trained, or written by `python -m fs2mini.hf import`) or
one checkpoint file. The new run takes its tokenizer (embeddings mean nothing with any other) and
its weights, and starts everything else afresh: the optimizer state, the learning-rate schedule
and the step count (fairseq's `--finetune-from-model`, OpenNMT's `-train_from` with `-reset_optim all`).
Nothing is written until training starts, so a refused `--init` leaves no run directory behind;
a resumed run continues from its own checkpoints and ignores `--init`. The checkpoint is memory-mapped
and its tensors become the model's (on CPU), so a 600M model is not held twice while it starts.

The run's corpora name their languages (`eng`); an imported NLLB model names its own (`eng_Latn`):
each corpus code becomes another name of the one model code it starts with, or of the one
`--lang-map eng=eng_Latn` gives. `--add-languages ary_Arab=arb_Arab` adds a code the model lacks:
one new embedding row, a copy of the related code's, recorded in the run's tokenizer layout.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fs2mini.checkpoint import (TOKENIZER, checkpoint_step, differing_architecture, find_checkpoints, load_checkpoint,
                                load_first_readable)
from fs2mini.errors import UserError
from fs2mini.lora import model_weights
from fs2mini.rundir import CHECKPOINT_DIR, TOKENIZER_FILE
from fs2mini.tokenizer import Tokenizer, TokenizerLayout, checked_tokenizer

_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Initialization:
    """What a run started with `--init` takes from it."""

    tokenizer: Tokenizer
    weights: dict[str, Tensor]
    checkpoint: Path
    step: int | None

    def message(self) -> str:
        """The line the trainer prints: where the weights come from, and what starts afresh."""
        at = f" (its step {self.step})" if self.step else ""
        return (f"initialized from {self.checkpoint}{at}: weights and tokenizer; optimizer, learning-rate schedule "
                "and step start afresh")


def read_init(path: Path, langs: Sequence[str], lang_map: Sequence[str] = (), add_languages: Sequence[str] = (),
              configured_model: dict | None = None) -> Initialization:
    """The tokenizer (with the run's languages `langs` mapped and added) and weights `--init path` starts from.

    `configured_model`: the run's model section as config.json writes it; refused when an architecture field
    differs from the one the weights were trained with (a shape mismatch is caught when they are loaded)."""
    if path.is_file():
        checkpoint_file, state = path, load_checkpoint(path, mmap=True)
        run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
    elif path.is_dir():
        run_dir = path
        checkpoint_file, state = load_first_readable(find_checkpoints(path, None), mmap=True)
    else:
        raise UserError(f"--init {path} does not exist; expected a run directory (trained, or written by "
                        "python -m fs2mini.hf import) or a checkpoint file")
    differing = differing_architecture(state, configured_model or {})
    if differing:
        flags = " ".join("--model." + k.replace("_", "-") + f" {v}" for k, v in differing.items())
        raise UserError(f"--init {path} was trained with {', '.join(f'{k} {v}' for k, v in differing.items())}, the "
                        f"configured model has {', '.join(f'{k} {configured_model[k]}' for k in differing)}; expected the "
                        f"same architecture ({flags})")
    tokenizer = _source_tokenizer(run_dir, state, checkpoint_file)
    layout = tokenizer.layout
    weights = model_weights(state)
    if add_languages:
        layout, weights = _with_new_languages(layout, weights, add_languages, path)
    if layout.lang_ids:  # an imported layout: the corpora's codes become names of the model's codes
        layout = dataclasses.replace(layout, lang_ids={**layout.lang_ids, **map_languages(langs, layout.lang_ids, lang_map)})
    elif lang_map:
        raise UserError(f"--lang-map: {path} uses fs2mini's own tokenizer, whose languages are its own; "
                        "expected --lang-map only with a model imported from NLLB/M2M100")
    try:
        tokenizer = Tokenizer(tokenizer.model_path, langs, model_bytes=tokenizer.model_bytes, layout=layout)
    except UserError as err:
        raise UserError(f"--init {path}: {err}; its tokenizer cannot encode the run's languages") from None
    return Initialization(tokenizer, weights, checkpoint_file, checkpoint_step(state))


def _source_tokenizer(run_dir: Path, state: dict, checkpoint_file: Path) -> Tokenizer:
    """The tokenizer the checkpoint was trained with: its run directory's (checked), else the checkpoint's copy."""
    record = state.get(TOKENIZER)
    langs = tuple((record or {}).get("lang_ids", ()))  # the languages it was checked with when saved
    return checked_tokenizer(run_dir / TOKENIZER_FILE, langs, record, checkpoint_file)


def parse_lang_map(lang_map: Sequence[str]) -> dict[str, str]:
    """`--lang-map` items as {corpus code: model code}, or one line naming the item that is not CORPUS_CODE=MODEL_CODE.

    `check_config` asks this of every command, not only of a run that reads `--init`: a resumed run ignores `--init`
    and would take a malformed item without a word."""
    explicit = {}
    for item in lang_map:
        corpus_code, sep, model_code = item.partition("=")
        if not sep or not corpus_code or not model_code:
            raise UserError(f"--lang-map {item}: expected CORPUS_CODE=MODEL_CODE, e.g. eng=eng_Latn")
        explicit[corpus_code] = model_code
    return explicit


def parse_add_languages(add_languages: Sequence[str]) -> list[tuple[str, str]]:
    """`--add-languages` items as (new code, related code), or one line naming the item that is not NEW_CODE=RELATED_CODE
    (asked of every command, as `parse_lang_map`; whether the codes fit the model is checked when it is read)."""
    pairs = []
    for item in add_languages:
        code, sep, related = item.partition("=")
        if not sep or not _CODE.match(code) or not related:
            raise UserError(f"--add-languages {item}: expected NEW_CODE=RELATED_CODE with a code of letters, digits, "
                            "_ or - (e.g. ary_Arab=arb_Arab)")
        pairs.append((code, related))
    return pairs


def map_languages(langs: Sequence[str], codes: dict[str, int], lang_map: Sequence[str]) -> dict[str, int]:
    """The corpora's codes (every language of the run) as extra names of the model's language ids."""
    explicit = parse_lang_map(lang_map)
    mapped = {}
    for lang in langs:
        if lang in codes and lang not in explicit:
            continue
        code = explicit.get(lang)
        if code is None:
            candidates = [c for c in codes if c.split("_")[0] == lang]
            if len(candidates) != 1:
                raise UserError(f"corpus language {lang!r} matches {', '.join(candidates) or 'no code'} of the model; "
                                f"expected one: pass --lang-map {lang}=CODE (e.g. {lang}=eng_Latn)")
            code = candidates[0]
        if code not in codes:
            raise UserError(f"--lang-map {lang}={code}: unknown language code {code!r}; expected one of the model's "
                            f"codes such as {', '.join(sorted(codes)[:5])}")
        mapped[lang] = codes[code]
    return mapped


def _with_new_languages(layout: TokenizerLayout, weights: dict[str, Tensor], add_languages: Sequence[str],
                        path: Path) -> tuple[TokenizerLayout, dict[str, Tensor]]:
    """One embedding row per new code, copied from the related code's row: the first unused rows after the codes
    and the <mask> that follows them (NLLB-200 has two spare rows there), then rows appended to the table.

    Contiguous ids, because transformers' tokenizers give added tokens the next free id whatever their
    recorded one: a code placed after a gap would be exported under a wrong id."""
    if not layout.lang_ids:
        raise UserError(f"--add-languages: {path} uses fs2mini's own tokenizer, whose languages are pieces of its "
                        "sentencepiece model; expected a model imported from NLLB/M2M100 (python -m fs2mini.hf import)")
    embed = weights["embed.weight"]
    size = embed.size(0)
    lang_ids, rows = dict(layout.lang_ids), []
    next_id = max(lang_ids.values()) + 2  # after the last code and <mask>
    for code, related in parse_add_languages(add_languages):
        item = f"{code}={related}"
        if code in lang_ids:
            raise UserError(f"--add-languages {item}: the model already has {code!r} (id {lang_ids[code]}); "
                            "expected a new code")
        if related not in lang_ids:
            raise UserError(f"--add-languages {item}: unknown related code {related!r}; expected one of the model's "
                            f"codes such as {', '.join(sorted(layout.lang_ids)[:5])}")
        lang_ids[code] = next_id
        rows.append((next_id, embed[lang_ids[related]]))
        next_id += 1
    grown = torch.cat([embed, embed.new_zeros(max(0, next_id - size), embed.size(1))])
    for row, vector in rows:
        grown[row] = vector
    layout = dataclasses.replace(layout, lang_ids=lang_ids, vocab_size=grown.size(0))
    return layout, {**weights, "embed.weight": grown}
