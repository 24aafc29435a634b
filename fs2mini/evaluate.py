"""Command line: `python -m fs2mini.evaluate RUN_DIR --split test`: loss, perplexity, BLEU and chrF of a run.

It adds to `fs2mini.scoring` (BLEU and chrF with sacrebleu, also what validation reports) the teacher-forced
loss and perplexity of the same split and the off-target rate (fs2mini/langid.py), and writes sources,
references, hypotheses and scores to files for a closer look. Pairs left out (an empty line on either side,
a line that is not UTF-8) are counted on stderr and in the JSON, since a score over fewer pairs than the test
set has is not the test set's score.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

import tyro

from fs2mini.config import TrainConfig, load_config
from fs2mini.corpus import READ_CHUNK_LINES, Split, aligned_pairs, describe_corpus, read_pairs
from fs2mini.data import RunCorpus, RunDirections, Seq2SeqBatches, run_directions
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.generation import GenerationConfig, check_generation_config
from fs2mini.langid import require_identifier
from fs2mini.pipeline import Skipped, decode_raw_lines, raw_line_chunks
from fs2mini.rundir import CONFIG_FILE, EVAL_DIR
from fs2mini.scoring import check_bleu_tokenize, translate_and_score
from fs2mini.task import build_task
from fs2mini.translate import use_utf8
from fs2mini.translator import Translator
from fs2mini.validation import combine_losses, validate


@dataclass(frozen=True)
class AlignedFiles:
    """A test set given as two aligned files (`evaluate --source --reference`), read as a corpus so the
    loss and perplexity are computed over it exactly as over a run's own split."""

    source: Path
    reference: Path
    langs: tuple[str, str]

    def languages(self) -> tuple[str, str]:
        return self.langs

    def read_pairs(self, split: Split, skipped: Skipped) -> list[tuple[str, str]]:
        """Line i of --source with line i of --reference; a pair with an empty or unreadable side is left out
        (whole, so the later pairs stay aligned) and counted in `skipped` at its file:line."""
        sources, references = ([line for first, block in raw_line_chunks(path, READ_CHUNK_LINES)
                                for line in decode_raw_lines(block, first, path, 0)] for path in (self.source, self.reference))
        if len(sources) != len(references):
            raise UserError(f"--source {self.source} has {len(sources)} lines but --reference {self.reference} has "
                            f"{len(references)}; expected aligned files, one sentence per line")
        return list(aligned_pairs(iter(sources), iter(references), self.source, self.reference, skipped))


@dataclass(frozen=True)
class EvaluateArgs:
    """Evaluate a run on one split: loss and perplexity (teacher-forced), BLEU and chrF (translated).

    Writes the sources, references and hypotheses (one sentence per line, aligned) and a JSON file
    with every score next to each other: by default RUN_DIR/eval/SPLIT.{src,ref,hyp,json}.
    """

    run_dir: tyro.conf.Positional[Path]
    """Run directory written by python -m fs2mini.train."""
    split: str = "test"
    """Which split of the run's corpus: train, valid or test."""
    max_sentences: int | None = None
    """Translate only the first N pairs for BLEU/chrF (loss and perplexity always cover the whole split)."""
    checkpoint: str | None = None
    """Checkpoint file, or its name in RUN_DIR/checkpoints (best, step_00000600); default best.pt, else the newest step."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (CUDA when available)."""
    output: Path | None = None
    """Hypothesis file; .src, .ref and .json files go next to it. Default RUN_DIR/eval/SPLIT.hyp (or SOURCE-NAME.hyp)."""
    source: Path | None = None
    """Score any test set: a source file, one sentence per line, translated instead of the run's split (needs --reference)."""
    reference: Path | None = None
    """The reference translations of --source, line by line."""
    source_lang: str | None = None
    """Language of --source (default: the run's, or the one a trained direction into --target-lang starts from).
    Without --source: score only the run's directions from it (and into --target-lang)."""
    target_lang: str | None = None
    """Language of --reference, any of the run's (default: the run's first direction). Without --source: score only the
    run's directions into it (and from --source-lang), instead of every one."""
    bleu_tokenize: str | None = None
    """sacrebleu's tokenizer for BLEU (13a, intl, char, zh, ja-mecab, ko-mecab, ...); default by target language:
    zh for Chinese, ja-mecab for Japanese, ko-mecab for Korean (char without MeCab), 13a for the others."""
    off_target: Literal["auto", "always", "never"] = "auto"
    """Off-target rate (translations not in the target language, by py3langid): auto = where the target language has
    an identifier model, always = a target language without one is an error, never = not measured."""
    generation: Annotated[GenerationConfig, tyro.conf.arg(name="")] = GenerationConfig()


def evaluate(args: EvaluateArgs) -> dict:
    """Run the evaluation described by `args`, print a report, write the files; returns the JSON record."""
    splits = get_args(Split)
    if args.split not in splits:
        raise UserError(f"--split {args.split!r} is not a split; expected one of {', '.join(splits)}")
    check_generation_config(args.generation)
    if args.max_sentences is not None and args.max_sentences <= 0:
        raise UserError(f"--max-sentences must be a positive integer, got {args.max_sentences}")
    if (args.source is None) != (args.reference is None):
        raise UserError("--source and --reference go together: a file of sentences to translate and their references")
    check_bleu_tokenize(args.bleu_tokenize)
    from fs2mini.ctranslate import is_ctranslate2_dir

    if is_ctranslate2_dir(args.run_dir):
        raise UserError(f"{args.run_dir} is a CTranslate2 model, which gives translations but no losses; expected the run "
                        f"directory it was converted from (or: python -m fs2mini.translate {args.run_dir}, then sacrebleu)")
    name = args.split if args.source is None else args.source.stem
    output = args.output if args.output is not None else args.run_dir / EVAL_DIR / f"{name}.hyp"
    if output.suffix in (".src", ".ref", ".json"):
        raise UserError(f"--output {output} would be overwritten by the {output.suffix} file; expected e.g. {output.with_suffix('.hyp')}")
    if args.source is not None:
        translator = Translator.from_run(args.run_dir, args.checkpoint, args.device, source_lang=args.source_lang,
                                         target_lang=args.target_lang)
        langs = (translator.source_lang, translator.target_lang)
        _check_off_target(args, [langs[1]])
        cfg = load_config(args.run_dir / CONFIG_FILE)
        return _evaluate_direction(args, translator, cfg, RunCorpus.of(AlignedFiles(args.source, args.reference, langs)), output)
    # The run's own split: every direction, or those that --source-lang / --target-lang name.
    translator = Translator.from_run(args.run_dir, args.checkpoint, args.device)
    cfg = load_config(args.run_dir / CONFIG_FILE)
    run = run_directions(cfg.data)
    corpora = _chosen_directions(args, run)
    _check_off_target(args, [entry.langs[1] for entry in corpora])
    if len(run.primary) == 1 and not run.zero_shot:
        return _evaluate_direction(args, translator, cfg, run.primary[0], output)
    # Several directions: each scored into its own files, then their average (zero-shot ones apart).
    records = {}
    for entry in corpora:
        print(f"--- {entry.name}" + (" (zero-shot)" if entry.zero_shot else ""))
        records[entry.name] = _evaluate_direction(args, translator, cfg, entry, output.with_name(f"{output.stem}.{entry.name}.hyp"))
    trained = [entry.name for entry in corpora if not entry.zero_shot]
    zero_shot = [name for name in records if name not in trained]
    # Loss, nll and ppl per target token over the trained directions, as validation's overall loss; BLEU, chrF and
    # the off-target rate their plain mean (the rate where every one has it). None when only zero-shot directions were chosen.
    losses = [{key: records[name][key] for key in ("loss", "nll", "ppl", "tokens")} for name in trained]
    means = ("bleu", "chrf", "chrf_pp") + (("off_target",) if all(records[name]["off_target"] is not None for name in trained) else ())
    average = {**combine_losses(losses), **{key: sum(records[name][key] for name in trained) / len(trained) for key in means}
               } if trained else None
    summary = {"run_dir": str(args.run_dir), "checkpoint": str(translator.checkpoint_path), "step": translator.step,
               "split": args.split, "directions": records, "average": average, "zero_shot": zero_shot}
    _write(output.with_suffix(".json"), json.dumps(summary, indent=2) + "\n", output)
    if average is not None:
        print(f"--- average of {len(trained)} trained directions: loss {average['loss']:.4f}  BLEU {average['bleu']:.2f}  "
              f"chrF {average['chrf']:.2f}  chrF++ {average['chrf_pp']:.2f}" + _off_target_text(average.get("off_target")))
    for name in records:
        print(f"{name:>12}{' (zero-shot)' if name in zero_shot else '':12}  loss {records[name]['loss']:.4f}  "
              f"BLEU {records[name]['bleu']:.2f}  chrF {records[name]['chrf']:.2f}" + _off_target_text(records[name]["off_target"]))
    print(f"wrote {output.with_suffix('.json')} (every direction scored" + (" and their average)" if average else ")"))
    return summary


def _chosen_directions(args: EvaluateArgs, run: RunDirections) -> list[RunCorpus]:
    """The run's directions (trained, then zero-shot) from --source-lang and into --target-lang, where given."""
    everything = run.evaluated
    chosen = [entry for entry in everything
              if args.source_lang in (None, entry.langs[0]) and args.target_lang in (None, entry.langs[1])]
    if not chosen:
        flags = " ".join(f"{flag} {lang}" for flag, lang in (("--source-lang", args.source_lang), ("--target-lang", args.target_lang))
                         if lang is not None)
        raise UserError(f"{flags}: no direction of the run matches; expected one of "
                        f"{', '.join(entry.name for entry in everything)}")
    return chosen


def _check_off_target(args: EvaluateArgs, target_langs: list[str]) -> None:
    """--off-target always: every target language needs an identifier model (checked before anything is translated)."""
    if args.off_target == "always":
        for lang in target_langs:
            require_identifier(lang, "--off-target always")


def _off_target_text(rate: float | None) -> str:
    return "" if rate is None else f"  off-target {rate:.1%}"


def _write(path: Path, text: str, output: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise UserError(f"--output {output}: cannot write ({err.strerror}); expected a writable location") from None


def _evaluate_direction(args: EvaluateArgs, translator: Translator, cfg: TrainConfig, entry: RunCorpus, output: Path) -> dict:
    """Loss of the corpus's split and BLEU/chrF of its translations; prints the report, writes the files."""
    corpus, (source_lang, target_lang) = entry.corpus, entry.langs
    skipped = Skipped(cfg.data.strict)
    pairs = list(read_pairs(corpus, args.split, skipped, entry.field))
    if not pairs:
        where = f"the {args.split} split of {describe_corpus(corpus)}" if args.source is None else str(args.source)
        raise UserError(f"direction {entry.name}: {where} has no sentence pairs" + (f" (skipped: {skipped.summary()})" if skipped else ""))

    batches = Seq2SeqBatches(cfg.data, args.split, translator.tokenizer, seed=0, shuffle=False, corpora=[entry])
    losses = validate(translator.model, build_task(cfg.task, translator.tokenizer.vocab_info), batches,
                      translator.device, autocast_dtype=None)
    result = translate_and_score(translator, pairs, args.generation, args.max_sentences, source_lang=source_lang,
                                 target_lang=target_lang, bleu_tokenize=args.bleu_tokenize,
                                 measure_off_target=args.off_target != "never")
    scores = result.scores

    paths = {suffix: output.with_suffix(suffix) for suffix in (".src", ".ref", ".hyp", ".json")}
    record = {
        "run_dir": str(args.run_dir), "checkpoint": str(translator.checkpoint_path), "step": translator.step,
        "split": args.split if args.source is None else None,
        "source": str(args.source) if args.source else None, "reference": str(args.reference) if args.reference else None,
        "source_lang": source_lang, "target_lang": target_lang, "pairs": len(pairs), "translated": len(result.hypotheses),
        "dropped_pairs": sum(skipped.values()), "dropped": dict(skipped.most_common()),
        **losses, "bleu": scores.bleu, "chrf": scores.chrf, "chrf_pp": scores.chrf_pp, "precisions": list(scores.precisions),
        "brevity_penalty": scores.brevity_penalty, "length_ratio": scores.length_ratio,
        "bleu_signature": scores.bleu_signature, "chrf_signature": scores.chrf_signature,
        "chrf_pp_signature": scores.chrf_pp_signature, "bleu_tokenize": scores.bleu_tokenize,
        "bleu_tokenize_note": scores.bleu_tokenize_note, "off_target": result.off_target,
        "generation": dataclasses.asdict(args.generation),
    }
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        for suffix, lines in ((".src", result.sources), (".ref", result.references), (".hyp", result.hypotheses)):
            paths[suffix].write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths[".json"].write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise UserError(f"--output {output}: cannot write ({err.strerror}); expected a writable location") from None

    what = f"split {args.split}" if args.source is None else f"{args.source} / {args.reference}"
    if skipped:  # never silently: a score over fewer pairs is not the test set's
        print(f"dropped {record['dropped_pairs']} of {record['dropped_pairs'] + len(pairs)} pairs of {what} "
              f"(direction {entry.name}): {skipped.summary()}", file=sys.stderr)
    print(f"run {args.run_dir} | checkpoint {translator.checkpoint_path} (step {translator.step}) | {what}: {len(pairs)} pairs"
          + (f" ({record['dropped_pairs']} dropped)" if skipped else ""))
    print(f"loss {losses['loss']:.4f}  nll {losses['nll']:.4f}  ppl {losses['ppl']:.3f}  "
          f"(teacher-forced over {losses['tokens']} target tokens)")
    print(f"BLEU {scores.bleu:.2f}  chrF {scores.chrf:.2f}  chrF++ {scores.chrf_pp:.2f}  ({len(result.hypotheses)} sentences, "
          f"beam {args.generation.beam_size})")
    print(f"n-gram precisions {' / '.join(f'{p:.1f}' for p in scores.precisions)}  brevity penalty "
          f"{scores.brevity_penalty:.3f}  hyp/ref length {scores.length_ratio:.3f}")
    if result.off_target is not None:
        print(f"off-target {result.off_target:.1%}: translations py3langid does not identify as {target_lang}")
    elif args.off_target == "auto":
        print(f"off-target rate not measured: {target_lang} has no identifier model (py3langid)")
    print(f"BLEU signature: {scores.bleu_signature}" + (f"  (note: {scores.bleu_tokenize_note})" if scores.bleu_tokenize_note else ""))
    print(f"chrF signature: {scores.chrf_signature}")
    print(f"chrF++ signature: {scores.chrf_pp_signature}")
    print(f"wrote {paths['.hyp']} (and .src, .ref, .json next to it)")
    return record


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.cli(EvaluateArgs, args=None if argv is None else list(argv))
    with exit_on_user_error():
        use_utf8(sys.stdout)
        evaluate(args)


if __name__ == "__main__":
    main()
