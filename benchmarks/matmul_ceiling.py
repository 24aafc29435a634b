"""How much of the square `torch.mm` peak can a bf16 training step reach on this CPU, even in principle?

    python benchmarks/matmul_ceiling.py            # MEDIUM and BASE, bf16 autocast, ~1 min on 2 cores
    python benchmarks/matmul_ceiling.py medium

Why: `make bench` reports each step's matmul FLOP/s ÷ the bf16 `torch.mm` peak of large squares. A step's
matmuls are not squares: with model_dim 256 or 512 most of them have an inner dimension of 256–512 and run
well below the square peak even alone. This script times `fs2mini.trainer.train_step` steps (as bench.py
builds them, averaged over a few batch shapes), lists the step's `mm`, `addmm` and `bmm` calls (all its
matmuls on the bf16 CPU path; torch.profiler, by input shape), times each shape alone on contiguous operands,
and prints the ceiling: the efficiency the step would have if it were nothing but its matmuls at the speed
they reach alone. A target above the ceiling cannot be met by removing overhead; only larger matmuls (wider
models, longer batches) or other kernels raise it.

The peak is bench.py's own (`bench.mm_worker`: 2 s of back-to-back 1024² and 2048² calls, the median and the
fastest tenth of the best size): on the 2-vCPU AMX VMs of this project the bf16 rate of one and the same call
flips between about 560-810 and 2,300 GFLOP/s over seconds to minutes (fp32 is steady). The ceiling is given against the fastest tenth; it
varies between runs too (the shapes' times alone moved by up to a third), so run it more than once. Batches
are random token ids in shapes close to the benchmark's real batches (about 2,048 and 4,096 tokens, lengths
multiples of 8 as bf16 training pads them, no padding inside).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

from fs2mini.data import Seq2SeqBatch  # noqa: E402
from fs2mini.host_memory import keep_freed_memory  # noqa: E402

SHAPES = {  # (sentences, source length, target length): ~2,048-token (MEDIUM) and 4,096-token (BASE) batches
    "medium": [(64, 32, 32), (48, 40, 40), (80, 24, 24), (32, 64, 64)],
    "base": [(128, 32, 32), (96, 40, 40)],
}


def random_batch(sentences: int, source_len: int, target_len: int) -> Seq2SeqBatch:
    target = torch.randint(10, bench.VOCAB_SIZE, (sentences, target_len))
    return Seq2SeqBatch(torch.randint(10, bench.VOCAB_SIZE, (sentences, source_len)),
                        torch.full((sentences,), source_len), target, target.roll(-1, dims=1), sentences * target_len)


def best_seconds(fn, calls: int = 10) -> float:
    """Fastest of three rounds of `calls` calls, per call (after a warm-up)."""
    for _ in range(3):
        fn()
    rounds = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return min(rounds)


def alone_seconds(op: str, shapes: list[list[int]]) -> tuple[float, float]:
    """(FLOPs, best seconds) of one matmul of these input shapes, run alone on contiguous bf16 operands."""
    first, second = (shapes[1], shapes[2]) if op == "aten::addmm" else (shapes[0], shapes[1])
    a, b = torch.randn(*first, dtype=torch.bfloat16), torch.randn(*second, dtype=torch.bfloat16)
    if op == "aten::bmm":
        return 2 * first[0] * first[1] * first[2] * second[2], best_seconds(lambda: torch.bmm(a, b))
    return 2 * first[0] * first[1] * second[1], best_seconds(lambda: torch.mm(a, b))


def ceiling(size: str, tok: dict) -> None:
    batches = [random_batch(*shape) for shape in SHAPES[size]]
    _, step = bench.make_train_step("fs2mini", bench.SIZES[size], tok, torch.device("cpu"), bf16=True)
    for batch in batches:  # oneDNN compiles each new bf16 matmul shape once
        step(batch)
    start = time.perf_counter()
    for batch in batches * 2:
        step(batch)
    step_s = (time.perf_counter() - start) / (2 * len(batches))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in batches:
            step(batch)
    flops = in_step = alone = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm"):
            op_flops, op_s = alone_seconds(event.key, event.input_shapes)
            flops += op_flops * event.count / len(batches)
            alone += op_s * event.count / len(batches)
            in_step += event.self_cpu_time_total / 1e6 / len(batches)
    peak = bench.mm_worker({"device": "cpu", "precision": "bf16"})  # the peak `make bench` divides by
    median, fastest = peak["flops_per_s"], peak["p90_flops_per_s"]
    print(f"{size.upper()} bf16: step {step_s * 1e3:.0f} ms, {flops / 1e9:.1f} GFLOP of matmuls; their time in the step "
          f"{in_step * 1e3:.0f} ms ({in_step / step_s:.0%} of it), the same shapes alone {alone * 1e3:.0f} ms")
    print(f"  bf16 torch.mm peak: median {median / 1e9:.0f}, fastest tenth {fastest / 1e9:.0f} GFLOP/s")
    print(f"  step: {flops / step_s / fastest:.0%} of the fastest tenth ({flops / step_s / median:.0%} of the median); "
          f"ceiling (only its matmuls, at their speed alone): {flops / alone / fastest:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description="A bf16 training step's matmuls timed alone: how much of the "
                                                 "torch.mm peak the step could reach at all.")
    parser.add_argument("sizes", nargs="*", metavar="SIZE", help="medium and/or base (default: both)")
    sizes = parser.parse_args().sizes or ["medium", "base"]
    if unknown := [size for size in sizes if size not in SHAPES]:
        parser.error(f"unknown size {unknown[0]!r}; expected medium or base")
    keep_freed_memory()
    torch.manual_seed(1)
    _, tok = bench.bench_tokenizer()
    for size in sizes:
        ceiling(size, tok)


if __name__ == "__main__":
    main()
