"""Per-sentence scoring speed: `fs2mini.forced.score_pairs` (what `python -m fs2mini.score` runs) against the loss
pass of `python -m fs2mini.evaluate --source --reference` on the same pairs, with the same model in one process.

The pairs are the first N of the run's training split (default 10,000), written to two aligned files. The evaluate
side is exactly its loss pass: the files read as an `AlignedFiles` corpus, prepared into the data cache (timed apart:
a first evaluation pays it once, a second reads the cache), its batches, `validation.validate` (loss and NLL: two
forward passes per batch). The score side encodes the text, batches by length under the same token budget (the
run's --data.max-tokens) and makes one forward pass per batch. Both run fp32 (as evaluate does), alternated
`--repeats` times; the best time of each is reported, as pairs/s and target tokens/s. Nothing is written to the repo.

    python benchmarks/score_speed.py --run runs/default
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from pathlib import Path

import torch

from fs2mini.config import load_config
from fs2mini.corpus import read_pairs
from fs2mini.data import RunCorpus, Seq2SeqBatches
from fs2mini.evaluate import AlignedFiles
from fs2mini.forced import score_pairs
from fs2mini.pipeline import Skipped
from fs2mini.precision import cpu_model
from fs2mini.rundir import CONFIG_FILE
from fs2mini.task import build_task
from fs2mini.translator import Translator
from fs2mini.validation import validate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=Path("runs/default"))
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.run / CONFIG_FILE)
    translator = Translator.from_run(args.run, device="cpu")
    langs = (translator.source_lang, translator.target_lang)
    pairs = [(s.strip(), t.strip()) for s, t in read_pairs(cfg.data.corpus, "train", Skipped())][: args.pairs]
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    print(f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | python "
          f"{platform.python_version()} | {len(pairs)} training pairs of {args.run} | --data.max-tokens {cfg.data.max_tokens}")

    with tempfile.TemporaryDirectory() as tmp:
        source_file, target_file = Path(tmp) / "pairs.src", Path(tmp) / "pairs.tgt"
        source_file.write_text("".join(s + "\n" for s in sources), encoding="utf-8")
        target_file.write_text("".join(t + "\n" for t in targets), encoding="utf-8")
        data = dataclasses.replace(cfg.data, cache_dir=Path(tmp) / "prepared")
        batches = Seq2SeqBatches(data, "test", translator.tokenizer, seed=0, shuffle=False,
                                 corpora=[RunCorpus.of(AlignedFiles(source_file, target_file, langs))])
        start = time.perf_counter()
        batches.prepare()
        prepare_s = time.perf_counter() - start
        task = build_task(cfg.task, translator.tokenizer.vocab_info)

        def evaluate_loss() -> int:
            return int(validate(translator.model, task, batches, translator.device, autocast_dtype=None)["tokens"])

        def score() -> int:
            scores = score_pairs(translator.model, translator.tokenizer, sources, targets, *langs,
                                 max_tokens=cfg.data.max_tokens, device=translator.device)
            return sum(s.tokens + 1 for s in scores)  # the loss's tokens: the forced language token too

        best: dict[str, tuple[float, int]] = {}
        for _ in range(args.repeats):
            for name, run in (("evaluate loss pass", evaluate_loss), ("score", score)):
                start = time.perf_counter()
                tokens = run()
                seconds = time.perf_counter() - start
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, tokens)
                print(f"  {name}: {seconds:.1f} s", flush=True)
    print(f"evaluate's first preparation of the files (encoding into the data cache): {prepare_s:.1f} s")
    for name, (seconds, tokens) in best.items():
        print(f"{name:20s} {seconds:7.1f} s  {len(pairs) / seconds:8.1f} pairs/s  {tokens / seconds:9.0f} target tokens/s "
              f"({tokens} tokens)")


if __name__ == "__main__":
    main()
