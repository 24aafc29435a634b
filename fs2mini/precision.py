"""Which precision a run computes in: bf16 autocast where the hardware multiplies bf16 natively, fp16
with loss scaling on GPUs that have no bf16, fp32 elsewhere.

Why a measurement on CPU: on CPUs with native bf16 matmuls (AVX512-BF16 or AMX) a bf16 `torch.mm`
runs several times faster than fp32 (seen here: 461 vs 78 GFLOP/s on one core of an AMD EPYC with
AVX512-BF16), while on CPUs without them bf16 is emulated and far slower than fp32. What torch
reports about the CPU is checked first, then confirmed by timing a small matmul in both precisions
(about 0.3 s), because a flag is not a speed. The result is cached per machine (CPU model, torch
version) in ~/.cache/fs2mini/, so later runs decide at once.

On CUDA, `auto` picks bf16 from compute capability 8.0 (Ampere) on, where tensor cores multiply it
natively; older GPUs (V100 7.0, T4 7.5) only emulate bf16 but multiply fp16 natively, so they get fp16
autocast with a `torch.amp.GradScaler`: fp16 is more precise than bf16 (10 mantissa bits to 7) but
has only 5 exponent bits to its 8, so small gradients underflow to zero unless the loss is scaled up
before backward (and the gradients scaled back down before clipping). Either way the master weights, the optimizer state and
the loss stay fp32: autocast only runs matmuls (and what torch lists with them) in 16 bits.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal

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
class StepProbe:
    """Seconds of one training step (forward and backward) of the run's own model and batch size, fp32 and bf16."""

    fp32_s: float
    bf16_s: float


StepTimer = Callable[[torch.dtype | None], float]
"""Seconds of one forward + backward of the run's model on a batch of its size, under autocast to the dtype (None: fp32)."""

AutocastMode = Literal["auto", "bf16", "fp16", "off"]
"""`--trainer.autocast`."""

NATIVE_BF16_CUDA = (8, 0)
"""The first CUDA compute capability (Ampere) whose tensor cores multiply bf16 natively."""


@dataclass(frozen=True)
class Precision:
    """The run's choice, and the sentence that says why (printed in the run's first line)."""

    autocast_dtype: torch.dtype | None
    """torch.bfloat16 or torch.float16 autocast, or None for fp32."""
    reason: str

    @property
    def scales_loss(self) -> bool:
        """fp16 needs a GradScaler: its 5 exponent bits flush small gradients to zero unless the loss is scaled up."""
        return self.autocast_dtype == torch.float16


def autocast_for(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (None: fp32, no autocast); the dtype is `Precision.autocast_dtype`."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def build_grad_scaler(precision: Precision, device: torch.device, state: dict[str, Any] | None) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (None for bf16 and fp32), at the scale a resumed run had found: `state` is its
    checkpoint's, None for a new run (or a checkpoint of another precision or an older version: it starts afresh)."""
    if not precision.scales_loss:
        return None
    scaler = torch.amp.GradScaler(device.type)
    if state is not None:
        scaler.load_state_dict(state)
    return scaler


def choose_precision(mode: AutocastMode, device: torch.device, time_step: StepTimer | None = None,
                     step_key: str = "") -> Precision:
    """`--trainer.autocast`: off = fp32; bf16 or fp16 as asked (warned where slow); auto = bf16 where native,
    else fp16 on CUDA and fp32 on CPU.

    On CPU, `auto` with `time_step` also times the run's own training step in both precisions (cached under
    `step_key`, which names the model and batch size): a matmul probe 2x faster in bf16 does not make every
    model faster, since the casts, layer norms and softmaxes around small matmuls do not speed up (a 128-wide
    model was seen slower in bf16 than in fp32 on such a CPU)."""
    if mode == "off":
        return Precision(None, "fp32 (--trainer.autocast off)")
    if device.type == "cuda":
        return _cuda_precision(mode, device)
    if device.type != "cpu":
        if mode == "fp16":
            return Precision(torch.float16, f"fp16 autocast + GradScaler (--trainer.autocast fp16; {device.type})")
        return Precision(torch.bfloat16, f"bf16 autocast ({device.type})")
    if mode == "fp16":
        print("warning: --trainer.autocast fp16 on CPU: most CPUs emulate fp16 matmuls (1 vs 95 GFLOP/s fp32 on an "
              "AMD EPYC core), so it is for testing the fp16 path, not for speed", file=sys.stderr)
        return Precision(torch.float16, "fp16 autocast + GradScaler (--trainer.autocast fp16; cpu)")
    return _cpu_precision(mode, time_step, step_key)


def _cuda_precision(mode: AutocastMode, device: torch.device) -> Precision:
    """bf16 from compute capability 8.0 on, fp16 + GradScaler before (where bf16 is emulated)."""
    major, minor = torch.cuda.get_device_capability(device)
    native_bf16 = (major, minor) >= NATIVE_BF16_CUDA
    capability = f"cuda: compute capability {major}.{minor}"
    if mode == "fp16":
        return Precision(torch.float16, f"fp16 autocast + GradScaler (--trainer.autocast fp16; {capability})")
    if mode == "bf16":
        if not native_bf16:
            print(f"warning: --trainer.autocast bf16 on a GPU without native bf16 ({capability}): expect slow "
                  "matmuls; --trainer.autocast fp16 (or auto) multiplies natively there", file=sys.stderr)
        return Precision(torch.bfloat16, f"bf16 autocast (--trainer.autocast bf16; {capability})")
    if native_bf16:
        return Precision(torch.bfloat16, f"bf16 autocast ({capability} has native bf16)")
    return Precision(torch.float16, f"fp16 autocast + GradScaler ({capability} has no native bf16)")


def _cpu_precision(mode: AutocastMode, time_step: StepTimer | None, step_key: str) -> Precision:
    """bf16 where the measured probes say it is fast (auto), or as asked with a warning where it is slow."""
    probe = cpu_matmul_probe()
    measured = f"bf16 mm {probe.bf16_gflops:.0f} vs fp32 {probe.fp32_gflops:.0f} GFLOP/s"
    fast = probe.native_bf16 and probe.speedup >= MIN_SPEEDUP
    if mode == "bf16":
        if not fast:
            print(f"warning: --trainer.autocast bf16 on a CPU without fast bf16 matmuls ({measured}): "
                  f"expect about {1 / probe.speedup:.1f}x slower matmuls than fp32", file=sys.stderr)
        return Precision(torch.bfloat16, f"bf16 autocast (--trainer.autocast bf16; {measured})")
    if fast and time_step is not None:
        steps = step_probe(step_key, time_step)
        timed = f"a step of this model {steps.bf16_s * 1e3:.0f} ms in bf16 vs {steps.fp32_s * 1e3:.0f} in fp32"
        if steps.bf16_s >= steps.fp32_s:
            return Precision(None, f"fp32 (bf16 not faster for this model: {timed}; {measured})")
        return Precision(torch.bfloat16, f"bf16 autocast (CPU has native bf16: {measured}; {timed})")
    if fast:
        return Precision(torch.bfloat16, f"bf16 autocast (CPU has native bf16: {measured})")
    why = "no native bf16 on this CPU" if not probe.native_bf16 else f"bf16 not faster here: {measured}"
    return Precision(None, f"fp32 ({why})")


def cpu_matmul_probe(cache_dir: Path | None = None) -> MatmulProbe:
    """The probe for this machine: from the cache, or measured now and cached."""
    return _cached_probe((cache_dir or default_cache_dir()) / "matmul-probe.json", "", MatmulProbe, measure_matmuls)


def step_probe(step_key: str, time_step: StepTimer, cache_dir: Path | None = None) -> StepProbe:
    """The training step of the model `step_key` names in fp32 and in bf16: from the cache, or timed now (best of
    two after a warm-up each, alternating: a busy machine only slows a round down) and cached."""
    def measure() -> StepProbe:
        best = {None: math.inf, torch.bfloat16: math.inf}
        for dtype in best:
            time_step(dtype)  # warm-up: first-use allocations and kernel choices
        for _ in range(2):
            for dtype in best:
                best[dtype] = min(best[dtype], time_step(dtype))
        return StepProbe(fp32_s=best[None], bf16_s=best[torch.bfloat16])

    return _cached_probe((cache_dir or default_cache_dir()) / "step-probes.json", step_key, StepProbe, measure)


def _cached_probe(cache: Path, key_suffix: str, kind: type, measure: Callable[[], Any]) -> Any:
    """`kind` for this CPU and torch (and `key_suffix`) from the JSON file `cache`, else `measure()`d and added to it."""
    key = f"{cpu_model()}|torch {torch.__version__}" + (f"|{key_suffix}" if key_suffix else "")
    entries: dict = {}
    try:
        entries = json.loads(cache.read_text())
        entries = entries if isinstance(entries, dict) and "key" not in entries else {}  # (the old one-entry form)
        if key in entries:
            return kind(**entries[key])
    except (OSError, ValueError, TypeError):
        pass  # no cache, or an unreadable one: measure again
    probe = measure()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**entries, key: asdict(probe)}))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home only costs the next run another measurement
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
