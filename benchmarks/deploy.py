"""Deployment speed and quality: fs2mini's own beam search (fp32, bf16) against CTranslate2 (float32, int8).

A trained run (the default `make train` model) translates its corpus's test split with the same
beam and length settings in each engine, one after the other, in one process; the figures are
sentences per second and BLEU / chrF (sacrebleu). CTranslate2 runs on the converted directories
`python -m fs2mini.hf ctranslate2 RUN OUT --quantization ...` writes. Writes benchmarks/deploy.json.

    python benchmarks/deploy.py --run runs/fs2mini      # the run `make train` writes
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from fs2mini.config import load_config
from fs2mini.corpus import read_pairs
from fs2mini.scoring import score_translations
from fs2mini.generation import GenerationConfig
from fs2mini.hf import export_ctranslate2
from fs2mini.pipeline import Skipped
from fs2mini.precision import cpu_model, has_native_bf16, measure_matmuls
from fs2mini.translator import Translator


def timed(name: str, translate, sources: list[str], references: list[str]) -> dict:
    translate(sources[:8])  # warm-up: first calls allocate
    start = time.perf_counter()
    hypotheses = translate(sources)
    seconds = time.perf_counter() - start
    scores = score_translations(hypotheses, references)
    row = {"engine": name, "sentences": len(sources), "seconds": round(seconds, 2),
           "sentences_per_s": round(len(sources) / seconds, 2), "bleu": round(scores.bleu, 2), "chrf": round(scores.chrf, 2)}
    print(f"{name:28s} {row['sentences_per_s']:8.2f} sent/s  BLEU {row['bleu']:6.2f}  chrF {row['chrf']:6.2f}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=Path("runs/fs2mini"))
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--max-sentences", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("deploy.json"))
    args = parser.parse_args()
    cfg = load_config(args.run / "config.json")
    pairs = list(read_pairs(cfg.data.corpus, "test", Skipped()))[: args.max_sentences]
    sources, references = [s for s, _ in pairs], [r for _, r in pairs]
    generation = GenerationConfig(beam_size=args.beam_size)
    probe = measure_matmuls()
    machine = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "native_bf16": has_native_bf16(),
               "fp32_mm_gflops": round(probe.fp32_gflops), "bf16_mm_gflops": round(probe.bf16_gflops),
               "torch": torch.__version__, "python": platform.python_version()}
    print(f"{machine} | {len(sources)} test sentences of {args.run} | beam {args.beam_size}", file=sys.stderr)
    rows = []
    ours = Translator.from_run(args.run, device="cpu")
    rows.append(timed("fs2mini fp32", lambda texts: ours.translate(texts, generation), sources, references))
    if has_native_bf16():
        def bf16(texts):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return ours.translate(texts, generation)
        rows.append(timed("fs2mini bf16 autocast", bf16, sources, references))
    with tempfile.TemporaryDirectory() as tmp:
        for quantization in ("float32", "int8"):
            out = export_ctranslate2(args.run, Path(tmp) / quantization, quantization)
            converted = Translator.from_run(out)
            rows.append(timed(f"CTranslate2 {quantization}", lambda texts: converted.translate(texts, generation),
                              sources, references))
    base = rows[0]["sentences_per_s"]
    for row in rows:
        row["speedup_vs_fs2mini_fp32"] = round(row["sentences_per_s"] / base, 2)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine, "run": str(args.run),
                                    "beam_size": args.beam_size, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
