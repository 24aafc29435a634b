"""Command line: `python -m fs2mini.translate RUN_DIR` translates one sentence per line (the API is `fs2mini.translator`).

It reads one sentence per line and prints one translation per line, so its output lines up with its
input (an empty line gives an empty line). Sources longer than the model's `max_seq_len` are truncated
to fit, with a warning on stderr naming the line: one odd line should not stop a file.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TextIO

import tyro

from fs2mini.errors import UserError, exit_on_user_error
from fs2mini.generation import GenerationConfig, check_generation_config
from fs2mini.pipeline import INNER_LINE_BREAK, text_line
# Re-exported: `from fs2mini.translate import Translator` is the import README and users' scripts have always used.
from fs2mini.translator import Translator  # noqa: F401


@dataclass(frozen=True)
class TranslateArgs:
    """Translate one sentence per line (stdin or --input) to one line per translation on stdout.

    Empty input lines give empty output lines. Lines longer than the model's max_seq_len are
    truncated with a warning on stderr. With --nbest N > 1 each input line gives N lines of the form
    `LINE_NUMBER<TAB>SCORE<TAB>TRANSLATION`, best first (an empty input line gives one, with score 0).
    On a terminal, without --input, it prompts and translates each line as it is entered.
    """

    run_dir: tyro.conf.Positional[Path]
    """Run directory written by python -m fs2mini.train."""
    input: Path | None = None
    """UTF-8 text file with one sentence per line; default stdin."""
    checkpoint: str | None = None
    """Checkpoint file, or its name in RUN_DIR/checkpoints (best, step_00000600); default best.pt, else the newest step."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (CUDA when available)."""
    source_lang: str | None = None
    """Source language (default: the run's, or the one a trained direction into --target-lang starts from)."""
    target_lang: str | None = None
    """Target language: any of the run's (a multilingual run), or e.g. fra_Latn for a model imported from NLLB."""
    trust_recipe_code: bool = False
    """Allow importing (i.e. running) the recipe code outside fs2mini that RUN_DIR/config.json names: only for runs you trust."""
    generation: Annotated[GenerationConfig, tyro.conf.arg(name="")] = GenerationConfig()


def main(argv: Sequence[str] | None = None) -> None:
    try:
        _run(tyro.cli(TranslateArgs, args=None if argv is None else list(argv)))
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


def _run(args: TranslateArgs) -> None:
    with exit_on_user_error():
        check_generation_config(args.generation)
        translator = Translator.from_run(args.run_dir, args.checkpoint, args.device, source_lang=args.source_lang,
                                         target_lang=args.target_lang, trust_recipe_code=args.trust_recipe_code)
        use_utf8(sys.stdout)
        if args.input is None:
            use_utf8(sys.stdin)
            if sys.stdin.isatty():
                _interactive(translator, args.generation)
            else:  # bytes, split at b"\n" only: a stray \r must not make two lines of one
                stdin = getattr(sys.stdin, "buffer", None) or (line.encode("utf-8") for line in sys.stdin)
                _translate_stream(translator, stdin, "stdin", args.generation)
        else:
            try:
                handle = args.input.open("rb")
            except OSError as err:
                raise UserError(f"--input {args.input}: {err.strerror}; expected a readable text file") from None
            with handle:
                _translate_stream(translator, handle, str(args.input), args.generation)


def use_utf8(stream: TextIO) -> None:
    """Read and write UTF-8 whatever the locale says (a C locale would otherwise fail on accents)."""
    reconfigure = getattr(stream, "reconfigure", None)  # absent on test doubles such as io.StringIO
    if reconfigure is not None:
        reconfigure(encoding="utf-8")


def _translate_stream(translator: Translator, handle: Iterable[bytes], name: str, cfg: GenerationConfig) -> None:
    """Translate a chunk of lines at a time, so output starts early and memory stays bounded.

    Exactly one output line per input line, in order: a line that is not UTF-8 gives an empty line
    and a warning naming it, and the command ends with an error once every other line is printed."""
    chunk_lines = cfg.batch_size * 16
    first_line = 1
    invalid: list[int] = []
    for chunk in _chunks(_lines(handle, name, invalid), chunk_lines):
        _print_translations(translator, chunk, first_line, cfg)
        first_line += len(chunk)
    if invalid:
        raise UserError(f"{name}: {len(invalid)} line(s) not valid UTF-8 (line {', '.join(map(str, invalid[:5]))}"
                        f"{', ...' if len(invalid) > 5 else ''}); their output lines are empty, the others are translated")


def _lines(handle: Iterable[bytes], name: str, invalid: list[int]) -> Iterator[str]:
    """Input lines split at b"\n" only; other line-break characters inside a line become spaces."""
    for line_number, raw in enumerate(handle, start=1):
        raw = text_line(raw, name, line_number == 1)
        try:
            yield INNER_LINE_BREAK.sub(" ", raw.decode("utf-8"))
        except UnicodeDecodeError:
            print(f"warning: {name}: line {line_number} is not valid UTF-8; its output line is empty", file=sys.stderr)
            invalid.append(line_number)
            yield ""


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _print_translations(translator: Translator, lines: list[str], first_line: int, cfg: GenerationConfig) -> None:
    def warn(index: int, length: int, limit: int) -> None:
        print(f"warning: line {first_line + index} has {length} tokens; truncated to the model's max_seq_len {limit}",
              file=sys.stderr)

    if cfg.nbest == 1:
        for text in translator.translate(lines, cfg, on_truncated=warn):
            print(INNER_LINE_BREAK.sub(" ", text))  # one output line per input line, whatever the model wrote
    else:
        for index, hyps in enumerate(translator.translate_nbest(lines, cfg, on_truncated=warn)):
            for text, score in hyps:
                print(f"{first_line + index}\t{score:.4f}\t{INNER_LINE_BREAK.sub(' ', text)}")
    sys.stdout.flush()


def _interactive(translator: Translator, cfg: GenerationConfig) -> None:
    """Prompt on stderr, translate each line as it is entered, stop at end of input (Ctrl-D)."""
    print(f"Translating {translator.source_lang}→{translator.target_lang} with {translator.checkpoint_path}; "
          "one sentence per line, Ctrl-D to quit.", file=sys.stderr)
    line_number = 0
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            print(file=sys.stderr)
            return
        line_number += 1
        _print_translations(translator, [line.rstrip("\r\n")], line_number, cfg)


if __name__ == "__main__":
    main()
