"""`Translator`: text in, text out, with a trained run's model, its tokenizer and the directions it was trained on.

Each call may name its target (and source) language, by default the run's first direction. Build it from a run
directory (`Translator.from_run`) or from objects already in memory (the trainer's model and tokenizer), then call
it on strings; sentences are sorted by length into batches so padding stays small, and results come back in input
order. It is a library module (the trainer validates with it, `fs2mini.ctranslate` extends it); the command line
around it is `fs2mini.translate`.

Sources longer than the model's `max_seq_len` are truncated to fit (keeping the language token and the final
`</s>`), with a warning (`on_truncated`) naming the sentence: one odd line should not stop a file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from fs2mini.checkpoint import (TOKENIZER, checkpoint_step, find_checkpoints, load_first_readable, load_weights,
                                refuse_other_architecture)
from fs2mini.config import config_to_json, load_config
from fs2mini.data import run_directions
from fs2mini.distributed import pick_device
from fs2mini.errors import UserError
from fs2mini.generation import GenerationConfig, Hypothesis, check_generation_config, generate
from fs2mini.lora import model_weights
from fs2mini.model import Seq2SeqModel, build_model
from fs2mini.rundir import CONFIG_FILE, LAYOUT_FILE, TOKENIZER_FILE
from fs2mini.tokenizer import Tokenizer, checked_tokenizer

# Called with (index of the text, its length in tokens, the length it was cut to).
TruncationCallback = Callable[[int, int, int], None]


def warn_truncated(index: int, length: int, limit: int) -> None:
    """The default `TruncationCallback`: one line on stderr, counting sentences from 1."""
    print(f"warning: sentence {index + 1} has {length} tokens; truncated to the model's max_seq_len {limit}", file=sys.stderr)


class Translator:
    """Text in, text out: a model, its tokenizer and the directions it was trained on."""

    def __init__(
        self,
        model: Seq2SeqModel,
        tokenizer: Tokenizer,
        source_lang: str,
        target_lang: str,
        *,
        directions: Sequence[tuple[str, str]] = (),
        checkpoint_path: Path | None = None,
        step: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.source_lang = source_lang
        """Source language of a call that names none."""
        self.target_lang = target_lang
        """Target language of a call that names none."""
        self.directions = tuple(directions) or ((source_lang, target_lang),)
        """The (source, target) directions the model was trained on: a call naming only its target takes its source from them."""
        self.checkpoint_path = checkpoint_path
        """The checkpoint the weights came from, when built by `from_run` (for reports)."""
        self.step = step
        """That checkpoint's training step, when known."""
        vocab = tokenizer.vocab_info
        self.eos_idx = vocab.eos_idx
        # Pad and BOS never appear in a target; language tokens only as the forced prefix.
        self.banned_ids = sorted({vocab.pad_idx, vocab.bos_idx, *tokenizer.lang_ids.values()})

    @classmethod
    def from_run(cls, run_dir: Path | str, checkpoint: str | None = None, device: str = "auto", *,
                 source_lang: str | None = None, target_lang: str | None = None,
                 trust_recipe_code: bool = False) -> Translator:
        """Load `config.json`, `tokenizer.model` and the first readable checkpoint (see `find_checkpoints`) of a run directory.

        `source_lang` / `target_lang` replace the run's first direction as the default of every call:
        any language of the run (`target_lang` alone takes its source from a trained direction), or
        for a model imported from NLLB any of its codes, e.g. fra_Latn. `trust_recipe_code`: a run trained
        with a recipe's own classes is rebuilt by importing, i.e. running, that recipe (see `load_config`)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"run directory {run_dir} does not exist; expected a directory written by python -m fs2mini.train")
        from fs2mini.ctranslate import CTranslate2Translator, is_ctranslate2_dir  # (it imports this module)

        if is_ctranslate2_dir(run_dir):  # a run converted by `fs2mini.hf ctranslate2`
            if checkpoint is not None:
                raise UserError(f"--checkpoint {checkpoint}: {run_dir} is a CTranslate2 model, which holds one set of "
                                "weights; expected no --checkpoint (convert another checkpoint with --checkpoint instead)")
            translator = CTranslate2Translator(run_dir, device)
            translator.source_lang, translator.target_lang = translator.languages(source_lang, target_lang)
            return translator
        cfg = load_config(run_dir / CONFIG_FILE, trust_recipe_code=trust_recipe_code)
        run = run_directions(cfg.data)
        run_langs, directions = run.languages, run.directions
        imported = (run_dir / LAYOUT_FILE).is_file()  # an NLLB/M2M100 layout knows more codes than the run's corpus
        if not imported:  # an unknown language is refused before the checkpoint is loaded
            check_languages(run_langs, source_lang, target_lang)
        torch_device = pick_device(device, "--device")
        path, state = load_first_readable(find_checkpoints(run_dir, checkpoint))
        # Another run's checkpoint with the same shapes (other heads, positions, scaling) loads, and translates wrongly.
        refuse_other_architecture(state, path, config_to_json(cfg)["model"], run_dir / CONFIG_FILE)
        tokenizer = checked_tokenizer(run_dir / TOKENIZER_FILE, run_langs, state.get(TOKENIZER), path)
        wanted = [lang for lang in (source_lang, target_lang) if lang is not None and lang not in tokenizer.lang_ids]
        if wanted:  # the codes of an imported layout beyond the run's pair
            tokenizer = Tokenizer(tokenizer.model_path, tuple(dict.fromkeys((*run_langs, *wanted))),
                                  model_bytes=tokenizer.model_bytes, layout=tokenizer.layout)
        model = build_model(cfg.model, tokenizer.vocab_info)
        # (a LoRA run: its adapters merged in)
        load_weights(model, model_weights(state), f"checkpoint {path}", fits=f"the model in {run_dir / CONFIG_FILE}")
        model.to(torch_device).eval()
        translator = cls(model, tokenizer, *directions[0], directions=directions, checkpoint_path=path,
                         step=checkpoint_step(state))
        translator.source_lang, translator.target_lang = translator.languages(source_lang, target_lang)
        return translator

    def languages(self, source_lang: str | None = None, target_lang: str | None = None) -> tuple[str, str]:
        """The (source, target) languages of a call: each given one checked, the missing ones chosen.

        Neither given: the defaults. Only a source: the default target if a trained direction leads
        from the source into it, else the only target one does (fra→eng for --source-lang fra in a run
        with eng→fra, fra→eng). Only a target: likewise the default source, else the only one leading into
        it. A language into itself only where the run trained that direction."""
        check_languages(tuple(self.tokenizer.lang_ids), source_lang, target_lang)
        if source_lang is None and target_lang is None:
            return self.source_lang, self.target_lang
        if target_lang is None:
            targets = [into for source, into in self.directions if source == source_lang]
            if self.target_lang in targets or (not targets and self.target_lang != source_lang):
                target_lang = self.target_lang  # (no trained direction from it: a code of an imported model)
            elif len(targets) == 1:
                target_lang = targets[0]
            else:
                raise UserError(f"--source-lang {source_lang}: " + (f"the run translates it into {', '.join(targets)}"
                                if targets else "no direction of the run starts from it") + "; pass --target-lang too")
        if source_lang is None:
            sources = [source for source, into in self.directions if into == target_lang]
            if self.source_lang in sources or (not sources and self.source_lang != target_lang):
                source_lang = self.source_lang
            elif len(sources) == 1:
                source_lang = sources[0]
            else:
                raise UserError(f"--target-lang {target_lang}: " + (f"the run translates into it from {', '.join(sources)}"
                                if sources else "no direction of the run translates into it") + "; pass --source-lang too")
        if source_lang == target_lang and (source_lang, target_lang) not in self.directions:
            raise UserError(f"--source-lang {source_lang} --target-lang {target_lang}: the run never trained "
                            f"{source_lang} into itself; expected two different languages")
        return source_lang, target_lang

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_seq_len(self) -> int:
        """Longest source the model takes; longer ones are cut (`encoded_sources`)."""
        return self.model.max_seq_len

    def __call__(self, text: str, cfg: GenerationConfig = GenerationConfig(), *, source_lang: str | None = None,
                 target_lang: str | None = None) -> str:
        """The best translation of one sentence (into `target_lang`, default the run's; see `languages`)."""
        return self.translate([text], cfg, source_lang=source_lang, target_lang=target_lang)[0]

    def translate(self, texts: Sequence[str], cfg: GenerationConfig = GenerationConfig(),
                  on_truncated: TruncationCallback = warn_truncated, *, source_lang: str | None = None,
                  target_lang: str | None = None) -> list[str]:
        """The best translation of each text, in input order; an empty (or blank) text gives ""."""
        found = self.search(texts, cfg, on_truncated, source_lang=source_lang, target_lang=target_lang)
        return [self.tokenizer.decode(hyps[0].tokens) for hyps in found]

    def translate_nbest(self, texts: Sequence[str], cfg: GenerationConfig = GenerationConfig(),
                        on_truncated: TruncationCallback = warn_truncated, *, source_lang: str | None = None,
                        target_lang: str | None = None) -> list[list[tuple[str, float]]]:
        """Up to `cfg.nbest` (translation, score) pairs per text, best first."""
        found = self.search(texts, cfg, on_truncated, source_lang=source_lang, target_lang=target_lang)
        return [[(self.tokenizer.decode(hyp.tokens), hyp.score) for hyp in hyps] for hyps in found]

    def encoded_sources(self, texts: Sequence[str], cfg: GenerationConfig, on_truncated: TruncationCallback,
                        source_lang: str | None, target_lang: str | None
                        ) -> tuple[list[list[Hypothesis]], list[int], list[list[int]], str]:
        """What every search starts from: one empty hypothesis per text, the indices of the non-blank texts,
        their encoded sources (cut to `max_seq_len`, `on_truncated` called for each cut), the target language."""
        check_generation_config(cfg)
        source_lang, target_lang = self.languages(source_lang, target_lang)
        results: list[list[Hypothesis]] = [[Hypothesis((), 0.0, ())] for _ in texts]
        todo = [i for i, text in enumerate(texts) if text.strip()]
        sources = self.tokenizer.encode_source([texts[i].strip() for i in todo], source_lang) if todo else []
        for position, ids in enumerate(sources):
            if len(ids) > self.max_seq_len:
                on_truncated(todo[position], len(ids), self.max_seq_len)
                sources[position] = ids[: self.max_seq_len - 1] + [self.eos_idx]
        return results, todo, sources, target_lang

    def search(self, texts: Sequence[str], cfg: GenerationConfig = GenerationConfig(),
               on_truncated: TruncationCallback = warn_truncated, *, source_lang: str | None = None,
               target_lang: str | None = None) -> list[list[Hypothesis]]:
        """Hypotheses (token ids and scores) per text, in input order; blank texts get one empty hypothesis."""
        results, todo, sources, target_lang = self.encoded_sources(texts, cfg, on_truncated, source_lang, target_lang)
        if not todo:
            return results
        prefix = self.tokenizer.target_prefix(target_lang)
        pad_idx = self.tokenizer.vocab_info.pad_idx
        # Sorted by length, so each batch holds similar lengths and little padding.
        order = sorted(range(len(sources)), key=lambda position: len(sources[position]))
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            source, source_lengths = pad_sources([sources[p] for p in batch], pad_idx, self.device)
            found = generate(self.model, source, source_lengths, prefix, cfg, eos_idx=self.eos_idx, banned_ids=self.banned_ids)
            for position, hyps in zip(batch, found):
                results[todo[position]] = hyps
        return results


def check_languages(known: Sequence[str], source_lang: str | None, target_lang: str | None) -> None:
    """Refuse a language the run has no token for, listing those it has."""
    for flag, lang in (("--source-lang", source_lang), ("--target-lang", target_lang)):
        if lang is not None and lang not in known:
            raise UserError(f"{flag} {lang!r}: the run has no such language; expected one of {', '.join(known)}")


def pad_sources(sources: Sequence[list[int]], pad_idx: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, longest) padded ids and (batch,) lengths, on `device`."""
    longest = max(map(len, sources))
    source = torch.tensor([ids + [pad_idx] * (longest - len(ids)) for ids in sources], dtype=torch.long)
    lengths = torch.tensor([len(ids) for ids in sources], dtype=torch.long)
    return source.to(device), lengths.to(device)
