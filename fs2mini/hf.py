"""Hugging Face M2M100/NLLB checkpoints in and out: `python -m fs2mini.hf import SRC RUN_DIR` and `export RUN_DIR OUT`.

`import` reads an `M2M100ForConditionalGeneration` directory in `save_pretrained` layout
(config.json, model.safetensors or pytorch_model.bin, sentencepiece.bpe.model, tokenizer_config.json)
or a Hub id at `--revision` (fetched with `huggingface_hub`), and writes an fs2mini run directory: config.json,
tokenizer.model with tokenizer_layout.json beside it (NLLB's ids are not fs2mini's own, see
`fs2mini.tokenizer.TokenizerLayout`), and checkpoints/best.pt. `translate`, `evaluate`,
`Translator.from_run` and recipes/finetune_nllb.py use that directory as any other run
(`--init RUN_DIR` starts a fine-tuning run from it: fs2mini.initialize).
`export` writes the reverse: a directory `transformers.AutoModelForSeq2SeqLM` and `AutoTokenizer`
load; `ctranslate2` converts that directory for CTranslate2 (fs2mini.ctranslate). None needs `transformers`.

Both check before they write. Import checks every file it reads: config.json and every tensor's name and shape
against it, before the model is built (fs2mini.hf_weights, which also says how a pytorch_model.bin is read
without running its code), and the tokenizer's ids (fs2mini.hf_tokenizer). Export checks its checkpoint as
`translate` does (the run's tokenizer is the one it was trained with, its weights build the run's model) and
against the architecture config.json records. Each writes through `fs2mini.staged.staged`: an error, Ctrl-C,
SIGTERM or SIGHUP leaves nothing, and what a SIGKILL leaves is removed by the next import or export into the
same folder.

This module holds the order of those steps and the command line. How the two models' weights and configs map
onto each other is fs2mini.hf_convert (docs/nllb.md, "Equivalence with transformers", lists every convention).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from fs2mini.checkpoint import (TOKENIZER, find_checkpoints, load_first_readable, load_weights, refuse_other_architecture,
                                write_checkpoint)
from fs2mini.config import TrainConfig, config_to_json, load_config, save_config
from fs2mini.corpus import TsvCorpus
from fs2mini.data import DataConfig, run_directions
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.hf_convert import fs2mini_state_from_hf, hf_config, hf_state_from_fs2mini
from fs2mini.hf_tokenizer import SPM_FILE, nllb_layout, nllb_tokenizer_files
from fs2mini.hf_weights import (checked_hf_weights, config_int, model_config_from_hf, read_json_object, read_weights,
                                weight_files)
from fs2mini.lora import model_weights
from fs2mini.model import ModelConfig, build_model
from fs2mini.relayout import to_nllb_ids
from fs2mini.rundir import BEST_CHECKPOINT, CHECKPOINT_DIR, CONFIG_FILE, LAYOUT_FILE, MARKER, TOKENIZER_FILE
from fs2mini.staged import staged
from fs2mini.tokenizer import Tokenizer, TokenizerConfig, TokenizerLayout, checked_tokenizer, first_codes, tokenizer_record


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
    for flag, lang in (("--source-lang", source_lang), ("--target-lang", target_lang)):
        if layout.lang_ids and lang not in layout.lang_ids:  # named here: the user gave a flag, not a layout file
            raise UserError(f"{flag} {lang}: {src} has no such language code; expected one of "
                            f"{first_codes(layout.lang_ids)} ({len(layout.lang_ids)} codes in its tokenizer)")
    tokenizer = Tokenizer(spm_path, (source_lang, target_lang), model_bytes=spm_bytes, layout=layout)
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
    layout, vocab_size = tokenizer.layout, tokenizer.vocab_info.size
    source_lang, target_lang = cfg.data.corpus.languages()
    tokenizer_files = nllb_tokenizer_files(tokenizer, source_lang, target_lang, cfg.model.max_seq_len, run_dir)
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
        for name, content in tokenizer_files.items():
            (tmp / name).write_bytes(content)
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
