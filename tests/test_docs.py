"""README.md and docs/ stay true: the README stays a short front door, its module map names exactly
the modules of the package, every command the pages show names a real entry point and real flags,
and every relative link leads to a file (and heading) that exists.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

# A command in a code block: `python -m fs2mini.X ...`, `python recipes/X.py ...`, or the same under torchrun.
COMMAND = re.compile(r"\b(?:python\s+(?:-m\s+(?P<module>fs2mini\.\w+)|(?P<recipe>recipes/[\w/]+\.py))"
                     r"|torchrun\b.*?\s(?:-m\s+(?P<tmodule>fs2mini\.\w+)|(?P<trecipe>recipes/[\w/]+\.py)))(?P<rest>.*)")
SUBCOMMAND = re.compile(r"^[a-z][\w.-]*:[\w-]+$")  # model:base, data.corpus:tsv, lr-scheduler:cosine
POSITIONAL_SUBCOMMANDS = {"fs2mini.hf": {"import", "export", "ctranslate2"}}  # hf's first word picks its CLI


def test_readme_is_at_most_250_lines():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= 250, f"README.md has {lines} lines; move a section to docs/ and link it (at most 250)"


def module_map() -> list[str]:
    """The file names in the README's module map (the table under `## The package`)."""
    text = README.read_text(encoding="utf-8")
    assert "\n## The package\n" in text, "README.md has no '## The package' section (the module map)"
    section = text.split("\n## The package\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\|[^|\n]*\|\s*`fs2mini/(\w+\.py)`\s*\|", section, re.MULTILINE)


def test_module_map_lists_exactly_the_modules_of_the_package():
    listed = module_map()
    modules = sorted(path.name for path in (ROOT / "fs2mini").glob("*.py"))
    assert len(listed) == len(set(listed)), f"listed twice in README's module map: {sorted({m for m in listed if listed.count(m) > 1})}"
    missing = sorted(set(modules) - set(listed))
    extra = sorted(set(listed) - set(modules))
    assert not missing, f"README's module map misses fs2mini/{', fs2mini/'.join(missing)}: add one line each"
    assert not extra, f"README's module map names files that do not exist: fs2mini/{', fs2mini/'.join(extra)}"


def code_block_lines(path: Path) -> list[str]:
    """Shell lines of a page's fenced code blocks (not ```python), continuation lines joined."""
    lines, inside, language = [], False, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            inside, language = not inside, line.strip()[3:].strip()
            continue
        if inside and language != "python":
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + line.strip()
            else:
                lines.append(line.strip())
    return lines


def commands() -> list[tuple[str, str, list[str]]]:
    """(where, entry point, arguments) of every fs2mini command in README.md and docs/*.md."""
    found = []
    for path in PAGES:
        for line in code_block_lines(path):
            line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]  # a shell comment
            match = COMMAND.search(line)
            if match is None:
                continue
            entry = match["module"] or match["recipe"] or match["tmodule"] or match["trecipe"]
            rest = re.split(r"\s(?:\||>|<|;|&&)", " " + match["rest"])[0]  # up to a pipe or a redirection
            found.append((f"{path.relative_to(ROOT)}: {line.strip()}", entry, shlex.split(rest)))
    return found


def help_invocation(entry: str, args: list[str]) -> tuple[str, ...]:
    """The arguments whose `--help` lists the flags of a command: its subcommands, then --help."""
    positional = [args[0]] if args and args[0] in POSITIONAL_SUBCOMMANDS.get(entry, ()) else []
    return (*positional, *(arg for arg in args if SUBCOMMAND.match(arg)), "--help")


# Runs each `--help` in one interpreter (importing torch once instead of once per command keeps this test
# to seconds), each as the command line would: `python -m MODULE` or `python RECIPE.py` with sys.argv set.
HELP_RUNNER = r"""
import contextlib, io, json, runpy, sys, tempfile, warnings
from pathlib import Path
from fs2mini.config import TrainConfig, save_config
warnings.simplefilter("ignore")
# recipes/finetune_nllb.py reads the --init run's config.json before it parses any other flag; an import of
# facebook/nllb-200-distilled-600M needs the network and 2.5 GB, so --init gets a run directory holding
# only a config.json (the flags are the same whatever the imported shape).
init = Path(tempfile.mkdtemp()) / "imported"
init.mkdir()
save_config(TrainConfig(), init / "config.json")
texts = {}
for key in json.load(sys.stdin):
    entry, *args = key
    if entry == "recipes/finetune_nllb.py":
        args = ["--init", str(init), *args]
    sys.argv = [entry, *args]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if entry.endswith(".py"):
                runpy.run_path(entry, run_name="__main__")
            else:
                runpy.run_module(entry, run_name="__main__", alter_sys=True)
        except SystemExit:
            pass
    texts[json.dumps(key)] = out.getvalue()
print(json.dumps(texts))
"""


def test_every_command_in_readme_and_docs_names_a_real_entry_point_and_real_flags():
    found = commands()
    assert len(found) >= 20, f"found only {len(found)} commands in README.md and docs/: is the pattern broken?"
    for where, entry, _ in found:
        if entry.endswith(".py"):
            assert (ROOT / entry).is_file(), f"{where}\n  {entry} does not exist"
        else:
            assert (ROOT / (entry.replace(".", "/") + ".py")).is_file(), f"{where}\n  no module {entry}"
    keys = sorted({(entry, *help_invocation(entry, args)) for _, entry, args in found})
    result = subprocess.run([sys.executable, "-c", HELP_RUNNER], input=json.dumps(keys), cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    texts = json.loads(result.stdout.splitlines()[-1])
    for key in keys:
        assert "--help" in texts[json.dumps(key)] or "usage" in texts[json.dumps(key)].lower(), \
            f"`{' '.join(key)}` printed no help:\n{texts[json.dumps(key)][-2000:]}"
    problems = []
    for where, entry, args in found:
        text = texts[json.dumps((entry, *help_invocation(entry, args)))]
        for flag in (arg.split("=", 1)[0] for arg in args if arg.startswith("--")):
            if not re.search(re.escape(flag) + r"(?![\w.-])", text):
                problems.append(f"{where}\n  {flag} is not in `{entry} {' '.join(help_invocation(entry, args))}`")
    assert not problems, "\n".join(problems)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_leads_to_a_file_and_heading_that_exist():
    problems = []
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", linked.read_text(encoding="utf-8"), re.MULTILINE)
                if anchor not in {slug(h) for h in headings}:
                    problems.append(f"{path.relative_to(ROOT)}: {target}: no such heading")
    assert not problems, "\n".join(problems)
