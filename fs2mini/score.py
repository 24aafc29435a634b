"""Command line: `python -m fs2mini.score RUN_DIR --source F --target F`: each pair's log-probability under a run's
model, one line per pair, for filtering (back-translated or crawled pairs) and reranking (n-best lists).

The scoring itself is `fs2mini.forced.score_pairs`; this module reads the two files in step, in pools of
`POOL_PAIRS` pairs (sorted by length inside a pool, as training's pools are), and prints the scores in input order.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import tyro

from fs2mini.config import load_config
from fs2mini.ctranslate import is_ctranslate2_dir
from fs2mini.errors import UserError, exit_on_user_error, expect_positive_ints
from fs2mini.forced import LengthCallback, PairScore, score_pairs
from fs2mini.pipeline import decode_raw_lines, raw_line_chunks, raw_line_chunks_in_step
from fs2mini.rundir import CONFIG_FILE
from fs2mini.translate import use_utf8
from fs2mini.translator import Translator

POOL_PAIRS = 100_000
"""Pairs read, sorted by length and scored together (the default --data.pool-size): memory stays bounded."""


@dataclass(frozen=True)
class ScoreArgs:
    """Score aligned sentence pairs with a run's model: one line per pair, in input order,
    `LOG_PROB<TAB>TOKENS<TAB>LOG_PROB_PER_TOKEN`.

    LOG_PROB is the sum of the log-probabilities of the target's tokens and its final </s> given the source,
    teacher-forced through the loss training uses (the forced target-language token is not counted: the sum
    translate's scores are made of); TOKENS how many tokens it sums; the last column their mean. Empty lines are
    scored too (an empty target is only </s>). A pair whose line is not UTF-8, or whose target is longer than the
    model's max_seq_len, prints nan with a warning on stderr.
    """

    run_dir: tyro.conf.Positional[Path]
    """Run directory written by python -m fs2mini.train."""
    source: Path
    """Source sentences, one per line (UTF-8; a .gz file is read as it decompresses)."""
    target: Path
    """Their translations, line by line: as many lines as --source."""
    source_lang: str | None = None
    """Language of --source (default: the run's, or the one a trained direction into --target-lang starts from)."""
    target_lang: str | None = None
    """Language of --target: any of the run's (a multilingual run), or e.g. fra_Latn for a model imported from NLLB."""
    checkpoint: str | None = None
    """Checkpoint file, or its name in RUN_DIR/checkpoints (best, step_00000600); default best.pt, else the newest step."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (CUDA when available)."""
    max_tokens: int | None = None
    """Padded tokens per batch, counted as training counts them (pairs × longest side); default: the run's
    --data.max-tokens."""
    output: Path | None = None
    """File the score lines are written to; default stdout."""
    trust_recipe_code: bool = False
    """Allow importing (i.e. running) the recipe code outside fs2mini that RUN_DIR/config.json names: only for runs you trust."""


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.cli(ScoreArgs, args=None if argv is None else list(argv))
    with exit_on_user_error():
        score(args)


def score(args: ScoreArgs) -> None:
    if args.max_tokens is not None:
        expect_positive_ints([("--max-tokens", args.max_tokens)])
    for flag, path in (("--source", args.source), ("--target", args.target)):
        if not path.is_file():
            raise UserError(f"{flag} {path} " + ("is a directory" if path.is_dir() else "does not exist")
                            + "; expected a text file, one sentence per line")
    source_lines, target_lines = count_lines(args.source), count_lines(args.target)
    if source_lines != target_lines:
        raise UserError(f"--source {args.source} has {source_lines} lines but --target {args.target} has {target_lines}; "
                        "expected aligned files, one sentence per line")
    if is_ctranslate2_dir(args.run_dir):
        raise UserError(f"{args.run_dir} is a CTranslate2 model, which gives translations but no log-probabilities; "
                        "expected the run directory it was converted from")
    translator = Translator.from_run(args.run_dir, args.checkpoint, args.device, source_lang=args.source_lang,
                                     target_lang=args.target_lang, trust_recipe_code=args.trust_recipe_code)
    max_tokens = args.max_tokens or load_config(args.run_dir / CONFIG_FILE,
                                                trust_recipe_code=args.trust_recipe_code).data.max_tokens
    if args.output is None:
        use_utf8(sys.stdout)
        unreadable = _score_files(args, translator, max_tokens, sys.stdout)
    else:
        try:
            handle = args.output.open("w", encoding="utf-8")
        except OSError as err:
            raise UserError(f"--output {args.output}: cannot write ({err.strerror}); expected a writable file") from None
        with handle:
            unreadable = _score_files(args, translator, max_tokens, handle)
    if unreadable:
        raise UserError(f"{len(unreadable)} pair(s) could not be read (line {', '.join(map(str, unreadable[:5]))}"
                        f"{', ...' if len(unreadable) > 5 else ''}); their lines say nan, the others are scored")


def count_lines(path: Path) -> int:
    """Lines of a text file (.gz too), a last line without a line break included: a cheap pass before scoring."""
    return sum(len(block) for _, block in raw_line_chunks(path, POOL_PAIRS))


def _score_files(args: ScoreArgs, translator: Translator, max_tokens: int, out: TextIO) -> list[int]:
    """Print one line per pair, pool by pool; returns the numbers of the lines that could not be read."""
    unreadable: list[int] = []
    for first_line, sources, targets, problems in _pools(args.source, args.target):
        scores = score_pairs(translator.model, translator.tokenizer, sources, targets, translator.source_lang,
                             translator.target_lang, max_tokens=max_tokens, device=translator.device,
                             on_truncated=_length_warning(first_line, "source", "truncated"),
                             on_too_long=_length_warning(first_line, "target", "scored nan"))
        for index, problem in problems:
            print(f"warning: line {first_line + index}: {problem}; scored nan", file=sys.stderr)
            scores[index] = PairScore(math.nan, 0, math.nan)
            unreadable.append(first_line + index)
        out.write("".join(f"{s.log_prob:.4f}\t{s.tokens}\t{s.per_token:.4f}\n" for s in scores))
        out.flush()
    return unreadable


def _length_warning(first_line: int, side: str, outcome: str) -> LengthCallback:
    def warn(index: int, length: int, limit: int) -> None:
        print(f"warning: line {first_line + index}: the {side} has {length} tokens, more than the model's max_seq_len "
              f"{limit}; {outcome}", file=sys.stderr)

    return warn


def _pools(source: Path, target: Path) -> Iterator[tuple[int, list[str], list[str], list[tuple[int, str]]]]:
    """(first line number, sources, targets, (index, problem) of unreadable pairs) of each pool of the two files."""
    for first_line, source_lines, target_lines in raw_line_chunks_in_step((source, target), POOL_PAIRS,
                                                                          (f"--source {source}", f"--target {target}")):
        sources, targets, problems = [], [], []
        decoded = zip(decode_raw_lines(source_lines, first_line, source, 0),
                      decode_raw_lines(target_lines, first_line, target, 0))
        for index, ((_, source_text, source_problem), (_, target_text, target_problem)) in enumerate(decoded):
            sources.append(source_text.strip())  # as training's corpora and evaluate read their lines
            targets.append(target_text.strip())
            if source_problem or target_problem:
                problems.append((index, f"{source if source_problem else target}: {source_problem or target_problem}"))
        yield first_line, sources, targets, problems


if __name__ == "__main__":
    main()
