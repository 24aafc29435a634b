"""Command line: `python -m fs2mini.evaluate RUN_DIR --split test`: loss, perplexity, BLEU and chrF of a run.

It adds to `fs2mini.scoring` (BLEU and chrF with sacrebleu, also what validation reports) the teacher-forced
loss and perplexity of the same split and the off-target rate (fs2mini/langid.py), and writes sources,
references, hypotheses and scores to files for a closer look. A test set of two files (`--source`, `--reference`)
keeps one output line per input line, so the files it writes can be put next to the user's: a side that is empty
or not UTF-8 is an empty line (an empty source gives an empty hypothesis), scored as such and said on stderr. Pairs
a run's own split leaves out are counted on stderr and in the JSON, since a score over fewer pairs than the test
set has is not the test set's score. No file evaluate writes may be one of its inputs.
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
from fs2mini.corpus import READ_CHUNK_LINES, Split, corpus_files, describe_corpus, read_pairs
from fs2mini.data import RunCorpus, RunDirections, Seq2SeqBatches, run_directions
from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.generation import GenerationConfig, check_generation_config
from fs2mini.langid import require_identifier
from fs2mini.pipeline import Skipped, decode_raw_lines, raw_line_chunks_in_step
from fs2mini.rundir import CONFIG_FILE, EVAL_DIR
from fs2mini.scoring import check_bleu_tokenize, translate_and_score
from fs2mini.task import build_task
from fs2mini.translate import use_utf8
from fs2mini.translator import Translator
from fs2mini.validation import combine_losses, validate


OUTPUT_SUFFIXES = (".src", ".ref", ".hyp", ".json")
"""The files written for one direction, next to each other: sources, references, hypotheses, scores."""


@dataclass(frozen=True)
class AlignedFiles:
    """A test set given as two aligned files (`evaluate --source --reference`): every line is translated and scored
    (`read_lines`), and the pairs with both sides are also read as a corpus (`read_pairs`), so the loss and
    perplexity are computed over them exactly as over a run's own split."""

    source: Path
    reference: Path
    langs: tuple[str, str]

    def languages(self) -> tuple[str, str]:
        return self.langs

    def read_pairs(self, split: Split, skipped: Skipped) -> list[tuple[str, str]]:
        """The pairs with both sides (a loss needs a source and a target). The others are not recorded in `skipped`:
        evaluate says in one line what became of them, from `read_lines`."""
        return [(source, reference) for source, reference in self.read_lines(Skipped()) if source and reference]

    def read_lines(self, skipped: Skipped) -> list[tuple[str, str]]:
        """(line i of --source, line i of --reference) for every i, the two files read in step so that a bad line in
        one never shifts the other. A side that is blank or unreadable (not UTF-8, a line break inside) is "" and
        counted in `skipped` at its file:line: the files evaluate writes keep one line per input line."""
        lines = []
        names = (f"--source {self.source}", f"--reference {self.reference}")
        for first, sources, references in raw_line_chunks_in_step((self.source, self.reference), READ_CHUNK_LINES, names):
            for (number, source, source_problem), (_, reference, reference_problem) in zip(
                    decode_raw_lines(sources, first, self.source, 0), decode_raw_lines(references, first, self.reference, 0)):
                lines.append((_side(source, source_problem, f"{self.source}:{number}", skipped),
                              _side(reference, reference_problem, f"{self.reference}:{number}", skipped)))
        return lines


def _side(text: str, problem: str | None, where: str, skipped: Skipped) -> str:
    """`text` without surrounding spaces, or "" with why (its `problem`, or "empty line") counted at `where`."""
    text = text.strip()
    if problem is None and text:
        return text
    skipped.add(problem or "empty line", where)
    return ""


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
    """Score any test set: a source file, one sentence per line, translated instead of the run's split (needs --reference).
    Every line gives one output line: an empty or non-UTF-8 side is an empty line, scored as such."""
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
    trust_recipe_code: bool = False
    """Allow importing (i.e. running) the recipe code outside fs2mini that RUN_DIR/config.json names: only for runs you trust."""
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
    inputs = [("the run's config", args.run_dir / CONFIG_FILE)]
    if args.source is not None:
        _check_inputs_kept(args, output, [output.with_suffix(suffix) for suffix in OUTPUT_SUFFIXES],
                           [*inputs, ("--source", args.source), ("--reference", args.reference)])
        translator = Translator.from_run(args.run_dir, args.checkpoint, args.device, source_lang=args.source_lang,
                                         target_lang=args.target_lang, trust_recipe_code=args.trust_recipe_code)
        langs = (translator.source_lang, translator.target_lang)
        _check_off_target(args, [langs[1]])
        cfg = load_config(args.run_dir / CONFIG_FILE, trust_recipe_code=args.trust_recipe_code)
        return _evaluate_direction(args, translator, cfg, RunCorpus.of(AlignedFiles(args.source, args.reference, langs)), output)
    # The run's own split: every direction, or those that --source-lang / --target-lang name.
    translator = Translator.from_run(args.run_dir, args.checkpoint, args.device, trust_recipe_code=args.trust_recipe_code)
    cfg = load_config(args.run_dir / CONFIG_FILE, trust_recipe_code=args.trust_recipe_code)
    run = run_directions(cfg.data)
    corpora = _chosen_directions(args, run)
    _check_off_target(args, [entry.langs[1] for entry in corpora])
    several = len(run.primary) > 1 or bool(run.zero_shot)
    # Several directions: each scored into its own files, then their average (zero-shot ones apart) into OUTPUT.json.
    outputs = {entry.name: output.with_name(f"{output.stem}.{entry.name}.hyp") if several else output for entry in corpora}
    _check_inputs_kept(args, output, [path.with_suffix(suffix) for path in outputs.values() for suffix in OUTPUT_SUFFIXES]
                       + [output.with_suffix(".json")],
                       inputs + [(f"the {entry.flag} file", path) for entry in corpora
                                 for path in corpus_files(entry.corpus, entry.field) or ()])
    if not several:
        return _evaluate_direction(args, translator, cfg, run.primary[0], output)
    records = {}
    for entry in corpora:
        print(f"--- {entry.name}" + (" (zero-shot)" if entry.zero_shot else ""))
        records[entry.name] = _evaluate_direction(args, translator, cfg, entry, outputs[entry.name])
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


def _check_inputs_kept(args: EvaluateArgs, output: Path, written: list[Path], inputs: list[tuple[str, Path]]) -> None:
    """Stop before anything is written if a file evaluate would write is one of its (named) inputs: --output
    data/test.hyp next to --source data/test.src would rewrite the test set with its own lines. Paths are compared
    resolved, and as the same file where both exist, so that neither another spelling, a symlink nor a hard link
    hides it. Refused rather than written under another name: --output (or its default) says where the files go,
    and that is where the user will look for them."""
    for path in written:
        for label, source in inputs:
            if path.resolve() == source.resolve() or (path.exists() and source.exists() and path.samefile(source)):
                flag = "--output" if args.output is not None else "the default --output"
                alias = "" if path == source else f" {path} is that file"
                raise UserError(f"{flag} {output} would overwrite {label} {source} (its {path.suffix} file{alias}); expected "
                                "an --output whose .src, .ref, .hyp and .json files are none of evaluate's inputs (another "
                                "name or directory)")


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
    # Two files given keep every line, so what is written stays aligned with them (whatever the run's --data.strict
    # said of its training data); a run's own split leaves out what its reader cannot use, and counts it.
    every_line = isinstance(corpus, AlignedFiles)
    skipped = Skipped() if every_line else Skipped(cfg.data.strict)
    pairs = corpus.read_lines(skipped) if every_line else list(read_pairs(corpus, args.split, skipped, entry.field))
    incomplete = sum(1 for source, reference in pairs if not (source and reference))
    what = f"split {args.split}" if args.source is None else f"{args.source} / {args.reference}"
    if incomplete == len(pairs):
        where = f"the {args.split} split of {describe_corpus(corpus)}" if args.source is None else what
        raise UserError(f"direction {entry.name}: {where} has no sentence pairs" + (" with both sides" if every_line else "")
                        + (f" (skipped: {skipped.summary()})" if skipped else ""))

    batches = Seq2SeqBatches(cfg.data, args.split, translator.tokenizer, seed=0, shuffle=False, corpora=[entry])
    losses = validate(translator.model, build_task(cfg.task, translator.tokenizer.vocab_info), batches,
                      translator.device, autocast_dtype=None)
    result = translate_and_score(translator, pairs, args.generation, args.max_sentences, source_lang=source_lang,
                                 target_lang=target_lang, bleu_tokenize=args.bleu_tokenize,
                                 measure_off_target=args.off_target != "never")
    scores = result.scores

    paths = {suffix: output.with_suffix(suffix) for suffix in OUTPUT_SUFFIXES}
    record = {
        "run_dir": str(args.run_dir), "checkpoint": str(translator.checkpoint_path), "step": translator.step,
        "split": args.split if args.source is None else None,
        "source": str(args.source) if args.source else None, "reference": str(args.reference) if args.reference else None,
        "source_lang": source_lang, "target_lang": target_lang, "pairs": len(pairs), "translated": len(result.hypotheses),
        "dropped_pairs": 0 if every_line else sum(skipped.values()), "dropped": {} if every_line else dict(skipped.most_common()),
        "incomplete_pairs": incomplete, "incomplete": dict(skipped.most_common()) if every_line else {},
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

    if incomplete:  # never silently: what the score counts for these lines is said
        without_source = sum(1 for source, _ in pairs if not source)
        print(f"{what}: {incomplete} of {len(pairs)} lines have an empty or unreadable side, kept as empty lines so that "
              f"each output line stays with its input line: {without_source} without a source (empty hypothesis), "
              f"{incomplete - without_source} without a reference (translation scored against an empty one); left out "
              f"of the loss. {skipped.summary()}", file=sys.stderr)
    elif skipped:  # never silently: a score over fewer pairs is not the test set's
        print(f"dropped {record['dropped_pairs']} of {record['dropped_pairs'] + len(pairs)} pairs of {what} "
              f"(direction {entry.name}): {skipped.summary()}", file=sys.stderr)
    print(f"run {args.run_dir} | checkpoint {translator.checkpoint_path} (step {translator.step}) | {what}: {len(pairs)} pairs"
          + (f" ({record['dropped_pairs']} dropped)" if record["dropped_pairs"] else "")
          + (f" ({incomplete} with an empty or unreadable side, scored as such; loss over {len(pairs) - incomplete})"
             if incomplete else ""))
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
