"""Three CUDA measurements behind the "Speed on a GPU" figures of docs/results.md (~40 s on an H200):

    python benchmarks/cuda_probe.py              # needs a CUDA GPU; `cpu` as argument for a smoke run

1. the cost of a new batch shape: SMALL training steps on 25 batches never seen before, then on the
   same 25 again, with cuDNN attention allowed (PyTorch's default on Hopper) and with fs2mini's
   `CUDA_SDPA_BACKENDS` (cuDNN excluded);
2. steady-state training throughput and MFU (achieved matmul FLOP/s ÷ measured bf16 `torch.mm`
   peak) for SMALL, BASE and dense_600m with 32k-token batches, shapes repeated;
3. fs2mini vs Hugging Face M2M100 (same shapes, same loss, same step) on BASE and dense_600m.

Every step is `benchmarks/bench.py`'s `make_train_step`, i.e. `fs2mini.trainer.train_step` (bf16
autocast, summed label-smoothed CE, gradients ÷ target tokens, clip to 1, fused AdamW). Batches
are random ids with Bible-like lengths (12–90 tokens); the tokenizer (bench.py's, trained once on
the Bible corpus and cached) is loaded only because fs2mini's model is built from one, as in training.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fs2mini.model  # noqa: E402
from bench import SIZES, bench_tokenizer, make_train_step, sync, train_flops  # noqa: E402
from fs2mini.data import Seq2SeqBatch, collate  # noqa: E402


def random_batches(count: int, max_tokens: int, seed: int, device: torch.device, tok: dict) -> list[Seq2SeqBatch]:
    """Batches of random ids; each has its own longest length, so shapes differ batch to batch."""
    rng = random.Random(seed)
    vocab = tok["vocab"]
    eos, top, prefix = vocab["eos_idx"], vocab["size"] - 1, [vocab["eos_idx"], tok["target_lang_id"]]
    batches = []
    for _ in range(count):
        longest = rng.randint(12, 90)
        pairs = []
        for _ in range(max(1, max_tokens // (2 * longest))):
            source = [rng.randint(10, top) for _ in range(rng.randint(longest - 8, longest))]
            target = prefix + [rng.randint(10, top) for _ in range(rng.randint(longest - 8, longest))] + [eos]
            pairs.append((source, target))
        batches.append(collate(pairs, vocab["pad_idx"]).to(device))
    return batches


def timed(step, batches: list[Seq2SeqBatch], device: torch.device) -> list[float]:
    times = []
    for batch in batches:
        sync(device)
        start = time.perf_counter()
        step(batch)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def mm_peak(device: torch.device) -> float:
    """bf16 `torch.mm` FLOP/s on 8192² matrices (fp32 1024² on CPU)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ a
    times = timed(lambda _: a @ a, [None] * 10, device)
    return 2 * n**3 / statistics.median(times)


def main(device: torch.device) -> None:
    smoke = device.type == "cpu"
    print(f"torch {torch.__version__} | {torch.cuda.get_device_name(device) if not smoke else 'CPU smoke run'}")
    _, tok = bench_tokenizer()
    with_cudnn = [SDPBackend.CUDNN_ATTENTION, *fs2mini.model.CUDA_SDPA_BACKENDS]
    for label, backends in [("cuDNN attention allowed", with_cudnn), ("fs2mini's backends", fs2mini.model.CUDA_SDPA_BACKENDS)]:
        fs2mini.model.CUDA_SDPA_BACKENDS = backends  # read by fs2mini.model.attention at each call
        _, step = make_train_step("fs2mini", SIZES["small"], tok, device, bf16=device.type == "cuda")
        step(random_batches(1, 4096, 99, device, tok)[0])
        batches = random_batches(3 if smoke else 25, 4096, len(label), device, tok)
        new, again = timed(step, batches, device), timed(step, batches, device)
        print(f"SMALL, {label}: new shapes {statistics.median(new) * 1e3:.1f} ms/step, "
              f"same shapes again {statistics.median(again) * 1e3:.1f} ms/step", flush=True)

    peak = mm_peak(device)
    print(f"{'bf16' if not smoke else 'fp32'} torch.mm peak {peak / 1e12:.1f} TFLOP/s")
    max_tokens = 2048 if smoke else 32768
    for size in ("small",) if smoke else ("small", "base", "dense_600m"):
        for system in ("fs2mini", "hf") if size != "small" else ("fs2mini",):
            _, step = make_train_step(system, SIZES[size], tok, device, bf16=device.type == "cuda")
            batches = random_batches(2 if smoke else 6, max_tokens, 7, device, tok)
            timed(step, batches, device)  # first pass: every shape's one-time costs
            seconds = sum(timed(step, batches, device))
            flops = sum(train_flops(SIZES[size], tok["vocab"]["size"], b) for b in batches)
            print(f"{size} {system}, {max_tokens}-token batches: "
                  f"{sum(b.num_target_tokens for b in batches) / seconds:,.0f} target tok/s, "
                  f"{flops / seconds / 1e12:.1f} TFLOP/s = {flops / seconds / peak:.1%} of the mm peak", flush=True)
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main(torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda"))
