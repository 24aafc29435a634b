"""Deployment through CTranslate2: convert an exported run, and translate with the converted model.

Why CTranslate2: it is the standard CPU inference engine for M2M100/NLLB models (int8 weights,
fused kernels, no Python per step), and it reads exactly the directory `fs2mini.hf export` writes.
`python -m fs2mini.hf ctranslate2 RUN_DIR OUT --quantization int8` exports and converts in one go;
`python -m fs2mini.translate OUT` then translates with it, as with a run directory: the same
tokenizer code (the exported sentencepiece model and NLLB ids, copied into OUT), the same length
limits and batching, the same output. `--sampling` maps to CTranslate2's own sampling
(`sampling_topk/topp/temperature`): the same distribution, but CTranslate2's generator makes the
draws, so samples differ from fs2mini's and are reproducible only for the same seed, input and batching.
`ctranslate2` (and `transformers`, which its converter uses) are optional: `pip install 'fs2mini[deploy]'`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from fs2mini.errors import UserError
from fs2mini.generation import GenerationConfig, Hypothesis, max_output_lengths
from fs2mini.tokenizer import Tokenizer, token_lang
from fs2mini.translator import Translator, TruncationCallback, warn_truncated

Quantization = Literal["int8", "int8_float32", "float32"]
TOKENIZER_FILES = ("sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json")
"""What `fs2mini.hf export` writes for the tokenizer, copied next to the converted model."""


def is_ctranslate2_dir(path: Path) -> bool:
    """A directory CTranslate2's converter wrote (its weights are model.bin, its vocabulary a JSON list)."""
    return (path / "model.bin").is_file() and (path / "shared_vocabulary.json").is_file()


def import_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise UserError("CTranslate2 is not installed; expected `pip install 'fs2mini[deploy]'` "
                        "(ctranslate2 and transformers)") from None
    return ctranslate2


def convert_exported(exported: Path, out: Path, quantization: Quantization) -> Path:
    """Convert the M2M100 directory `exported` into the new CTranslate2 directory `out` (atomically)."""
    import_ctranslate2()
    from ctranslate2.converters import TransformersConverter

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        converted = tmp / "model"
        try:
            TransformersConverter(str(exported), copy_files=[f for f in TOKENIZER_FILES if (exported / f).is_file()]
                                  ).convert(str(converted), quantization=quantization)
        except ImportError as err:  # the converter reads the model with transformers
            raise UserError(f"CTranslate2's converter needs {err.name or 'transformers'}; expected "
                            "`pip install 'fs2mini[deploy]'`") from None
        os.replace(converted, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class CTranslate2Translator(Translator):
    """`Translator` whose search (greedy, beam or sampling) runs in CTranslate2, with fs2mini's tokenizer and limits."""

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None) -> None:
        """`device`: cpu, cuda, cuda:N, or auto (CUDA when CTranslate2 sees a GPU)."""
        ctranslate2 = import_ctranslate2()
        from fs2mini.hf_tokenizer import nllb_layout  # the exported tokenizer files are read as `hf import` reads them

        self.vocabulary = json.loads((path / "shared_vocabulary.json").read_text(encoding="utf-8"))
        self.token_ids = {token: i for i, token in enumerate(self.vocabulary)}
        spm_path = path / TOKENIZER_FILES[0]
        if not spm_path.is_file():
            raise UserError(f"{spm_path} does not exist; expected a directory written by python -m fs2mini.hf ctranslate2")
        try:
            tok_cfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
            longest_source = int(tok_cfg["model_max_length"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"cannot read {path / 'tokenizer_config.json'} ({type(err).__name__}: {err}); expected the "
                            "tokenizer files python -m fs2mini.hf ctranslate2 copies there") from None
        probe = Tokenizer(spm_path, ())
        layout = nllb_layout(path, probe.sp.get_piece_size(), len(self.vocabulary))
        # A run trained with fs2mini's tokenizer exports its codes as `__eng__`: `eng` names them too.
        aliases = {lang: i for code, i in layout.lang_ids.items() if (lang := token_lang(code)) is not None}
        layout = dataclasses.replace(layout, lang_ids={**layout.lang_ids, **aliases})
        source_lang, target_lang = (next((a for a, i in aliases.items() if i == layout.lang_ids.get(code)), code)
                                    for code in (tok_cfg.get("src_lang"), tok_cfg.get("tgt_lang")))
        tokenizer = Tokenizer(spm_path, tuple(layout.lang_ids), layout=layout)  # every code: any may be asked for
        kind, _, index = device.partition(":")
        if kind == "auto":
            kind = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        self.new_engine = lambda: ctranslate2.Translator(str(path), device=kind, device_index=int(index or 0),
                                                         intra_threads=threads or torch.get_num_threads())
        try:
            self.engine = self.new_engine()
        except (RuntimeError, ValueError) as err:
            raise UserError(f"cannot load the CTranslate2 model in {path}: {err}") from None
        self.set_random_seed = ctranslate2.set_random_seed
        super().__init__(None, tokenizer, source_lang, target_lang or source_lang, checkpoint_path=path / "model.bin")
        self.longest_source = longest_source
        self.banned_tokens = [[self.vocabulary[i]] for i in self.banned_ids]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def max_seq_len(self) -> int:
        return self.longest_source

    def search(self, texts: Sequence[str], cfg: GenerationConfig = GenerationConfig(),
               on_truncated: TruncationCallback = warn_truncated, *, source_lang: str | None = None,
               target_lang: str | None = None) -> list[list[Hypothesis]]:
        """As `Translator.search`. CTranslate2 takes one length limit per batch: each batch (sentences of similar
        length) runs to its longest limit and each output is cut at its own, which is exactly where fs2mini's
        greedy search stops; a beam that reaches the limit may rank its hypotheses differently.

        With `cfg.sampling`, CTranslate2 samples (its `sampling_topk` 0 is the whole vocabulary, as fs2mini's
        `top_k` 0). Its worker threads seed their generators when they start, so each such call loads a fresh
        engine after `set_random_seed(cfg.seed)`: the same seed, input and batch size give the same samples."""
        results, todo, sources, target_lang = self.encoded_sources(texts, cfg, on_truncated, source_lang, target_lang)
        if not todo:
            return results
        prefix = self.tokenizer.target_prefix(target_lang)[1:]  # CTranslate2 starts the decoder with </s> itself
        limits = max_output_lengths(torch.tensor([len(ids) for ids in sources]), cfg.max_len_a, cfg.max_len_b,
                                    self.max_seq_len - len(prefix) - 1).tolist()
        order = sorted(range(len(sources)), key=lambda p: len(sources[p]))
        engine, sampling = self.engine, {}
        if cfg.sampling:
            self.set_random_seed(cfg.seed % 2**32)  # (its seeds are 32-bit)
            engine = self.new_engine()
            sampling = dict(sampling_topk=cfg.top_k, sampling_topp=cfg.top_p, sampling_temperature=cfg.temperature)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            found = engine.translate_batch(
                [[self.vocabulary[i] for i in sources[p]] for p in batch],
                target_prefix=[[self.vocabulary[i] for i in prefix]] * len(batch),
                beam_size=cfg.beam_size, num_hypotheses=cfg.nbest, length_penalty=cfg.len_penalty,
                max_decoding_length=max(limits[p] for p in batch) + len(prefix),
                suppress_sequences=self.banned_tokens or None, return_scores=True, max_input_length=0, **sampling)
            for p, result in zip(batch, found):
                results[todo[p]] = [
                    Hypothesis(tuple(self.token_ids[t] for t in tokens[len(prefix):][: limits[p]]), score, ())
                    for tokens, score in zip(result.hypotheses, result.scores)]
        return results
