"""Which precision a run computes in: bf16 autocast where the hardware multiplies bf16 fast, fp32 elsewhere.

Why a measurement: on CPUs with native bf16 matmuls (AVX512-BF16 or AMX) a bf16 `torch.mm` runs
several times faster than fp32 (seen here: 461 vs 78 GFLOP/s on one core of an AMD EPYC with
AVX512-BF16), while on CPUs without them bf16 is emulated and far slower than fp32. What torch
reports about the CPU is checked first, then confirmed by timing a small matmul in both precisions
(about 0.3 s), because a flag is not a speed. The result is cached per machine (CPU model, torch
version) in ~/.cache/fs2mini/, so later runs decide at once. On CUDA, bf16 autocast is on (`auto`),
as before. Either way the master weights, the optimizer state and the loss stay fp32: autocast
only runs matmuls (and what torch lists with them) in bf16.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

MIN_SPEEDUP = 1.5
"""bf16 is chosen on CPU only when its matmul ran at least this many times faster than fp32's."""


@dataclass(frozen=True)
class MatmulProbe:
    """fp32 and bf16 `torch.mm` speed on this machine, and what torch says about its bf16 support."""

    native_bf16: bool
    fp32_gflops: float
    bf16_gflops: float

    @property
    def speedup(self) -> float:
        return self.bf16_gflops / self.fp32_gflops


@dataclass(frozen=True)
class Precision:
    """The run's choice, and the sentence that says why (printed in the run's first line)."""

    bf16: bool
    reason: str


def choose_precision(mode: Literal["auto", "bf16", "off"], device: torch.device) -> Precision:
    """`--trainer.autocast`: off = fp32; bf16 = bf16 (warned where slow); auto = bf16 where it is fast."""
    if mode == "off":
        return Precision(False, "fp32 (--trainer.autocast off)")
    if device.type != "cpu":
        return Precision(True, f"bf16 autocast ({device.type})")
    probe = cpu_matmul_probe()
    measured = f"bf16 mm {probe.bf16_gflops:.0f} vs fp32 {probe.fp32_gflops:.0f} GFLOP/s"
    fast = probe.native_bf16 and probe.speedup >= MIN_SPEEDUP
    if mode == "bf16":
        if not fast:
            print(f"warning: --trainer.autocast bf16 on a CPU without fast bf16 matmuls ({measured}): "
                  f"expect about {1 / probe.speedup:.1f}x slower matmuls than fp32", file=sys.stderr)
        return Precision(True, f"bf16 autocast (--trainer.autocast bf16; {measured})")
    if fast:
        return Precision(True, f"bf16 autocast (CPU has native bf16: {measured})")
    why = "no native bf16 on this CPU" if not probe.native_bf16 else f"bf16 not faster here: {measured}"
    return Precision(False, f"fp32 ({why})")


def cpu_matmul_probe(cache_dir: Path | None = None) -> MatmulProbe:
    """The probe for this machine: from the cache, or measured now and cached."""
    cache = (cache_dir or default_cache_dir()) / "matmul-probe.json"
    key = f"{cpu_model()}|torch {torch.__version__}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return MatmulProbe(**cached["probe"])
    except (OSError, ValueError, TypeError):
        pass  # no cache, or an unreadable one: measure again
    probe = measure_matmuls()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "probe": asdict(probe)}))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home only costs the next run another 0.3 s
    return probe


def measure_matmuls(n: int = 1024, rounds: int = 5) -> MatmulProbe:
    """Best-of-`rounds` speed of an n×n `torch.mm` in fp32 and bf16 on one thread, alternating.

    One thread and the best round, because the ratio is a property of a core and a busy machine
    only ever slows a round down (about 0.3 s in all)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        matrices = {dtype: (torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype))
                    for dtype in (torch.float32, torch.bfloat16)}
        best = dict.fromkeys(matrices, 0.0)
        for _ in range(rounds):
            for dtype, (a, b) in matrices.items():
                started = time.perf_counter()
                torch.mm(a, b)
                best[dtype] = max(best[dtype], 2 * n**3 / (time.perf_counter() - started) / 1e9)
    finally:
        torch.set_num_threads(threads)
    return MatmulProbe(native_bf16=has_native_bf16(), fp32_gflops=best[torch.float32],
                       bf16_gflops=best[torch.bfloat16])


def has_native_bf16() -> bool:
    """What torch knows about the CPU: AVX512-BF16 or AMX tiles (oneDNN uses either for bf16 matmuls)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fs2mini"
