"""Speed benchmark: fs2mini vs a hand-written `nn.Transformer` vs Hugging Face M2M100, in fp32 and bf16, on one machine.

    make bench                                  # the full suite (~15 min on 2 CPU cores with native bf16)
    python benchmarks/bench.py --quick          # a ~2-minute smoke run (SMALL, both precisions)
    python benchmarks/bench.py --precisions fp32  # one precision only (fp32, bf16, both, or auto)
    python benchmarks/bench.py --compile        # also fs2mini under torch.compile (slow start)
    python benchmarks/bench.py --device cuda    # the same on a CUDA GPU, bf16 autocast, + dense_600m

Precisions (`--precisions`, default auto): on a CPU every figure is measured in fp32 and, where the
CPU multiplies bf16 natively (AVX512-BF16 or AMX: `fs2mini.precision.has_native_bf16`), again under
bf16 autocast, i.e. `train_step(..., autocast_dtype=torch.bfloat16)` as `fs2mini.train --trainer.autocast bf16` runs it
(bf16 matmuls, fp32 master weights, optimizer state and loss); on a CPU without native bf16 only
fp32 (bf16 is emulated there, and far slower). The report's header gives the CPU model, the CPU flags
that decide matmul speed, and `fs2mini.precision.cpu_matmul_probe` (what `--trainer.autocast auto`
decides with: native bf16 or not, one-core fp32 vs bf16 GFLOP/s). Every table row is a system at one
precision; "vs HF" compares with HF at the same precision, and "vs HF fp32" compares fs2mini bf16
with HF in fp32, what a HF user gets by default.

On CUDA every system trains under bf16 autocast (as `fs2mini.train` does there; `--precisions` can
add fp32), batches hold `--cuda-max-tokens` tokens (a 4096-token batch leaves a GPU mostly idle), the
sizes include NLLB's dense_600m, efficiency is measured against the bf16 `torch.mm` peak of the GPU
(i.e. MFU), memory is the peak CUDA allocation, and the data pipeline (CPU-only) is not re-measured.

What is measured (every measurement runs in its own subprocess, so peak RSS is per system, and the
runs alternate, A B C in fp32 then A B C in bf16, repeated, so that drift of the machine is shared
out evenly):

- training: one update made by `fs2mini.trainer.train_step`, the function `fs2mini.train` runs
  (forward, label-smoothed CE summed over non-pad targets, backward, gradients ÷ target tokens,
  clip to norm 1, non-finite check, AdamW step (fused kernel) at a fixed lr 1e-4), in fp32 or
  under bf16 autocast, for every system: fs2mini built by `build_components` as a training run
  builds it, in a process that keeps freed memory (`fs2mini.host_memory`) as `fs2mini.train`'s
  does; the baselines with the same loss and optimizer, with glibc's default malloc settings; on
  identical batches of real Bible verses cut by fs2mini's pipeline at a 4096-token budget, shaped as
  `fs2mini.train` shapes them for the step's precision (bf16: lengths padded to multiples of 8,
  `fs2mini.data.shaped_for`, so a batch holds fewer real tokens; fp32: unpadded); steady state: the
  timed batches are also run once untimed, since a long run meets its batch shapes again and the
  one-time costs of a new shape (oneDNN compiles a bf16 kernel per matmul shape on CPU, ~5 ms each;
  kernel plans and allocator growth on CUDA) are then paid (a real bf16 run on CPU still meets 1-2
  new shapes per update, docs/performance.md);
  throughput in non-pad target tokens/s and non-pad source+target tokens/s, median over repeats, for SMALL and BASE (4096-token batches) and MEDIUM, the
  default run's model at the default run's 2048-token batches;
- generation (SMALL and MEDIUM): greedy and beam-4 sentences/s on 200 test verses in batches of 50, with the output
  length forced equal for every system (so each does the same work) and unforced; for bf16 the
  search runs under `torch.autocast("cpu", dtype=torch.bfloat16)` (the device's autocast on CUDA);
- data: sentences/s of one epoch of `Seq2SeqBatches` (read → encode → bucket → collate) vs a naive
  per-sentence loop, both pinned to one CPU core; and the padding of fs2mini's batches;
- efficiency (every training row, column "of mm peak"): achieved matmul FLOP/s of the training step over the measured `torch.mm` peak of
  this machine in the step's own precision (fp32 `torch.mm` for fp32 steps, bf16 for bf16 steps).
  FLOPs per step, with B sentences, S source and T target positions (padding included: it is
  computed), d model_dim, f ffn_inner_dim, V vocabulary, Le/Ld layers:
      encoder MACs = Le·(B·S·(4d² + 2df) + 2·B·S²·d)
      decoder MACs = Ld·(B·T·(6d² + 2df) + 2d²·B·S + 2·B·T²·d + 2·B·T·S·d)
      output MACs  = B·T·V·d
      train FLOPs  = 3 (forward + 2× backward) · 2 (FLOPs per MAC) · (encoder + decoder + output)
  i.e. 6 × non-embedding parameters × tokens, plus attention, plus the output projection.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fs2mini.corpus import BibleCorpus, corpus_languages, read_pairs, training_sentences  # noqa: E402
from fs2mini.data import LOW_PRECISION_LENGTH_MULTIPLE, DataConfig, Seq2SeqBatch, Seq2SeqBatches, collate, shaped_for  # noqa: E402
from fs2mini.host_memory import keep_freed_memory  # noqa: E402
from fs2mini.model import ARCHS, ModelConfig  # noqa: E402
from fs2mini.pipeline import Skipped  # noqa: E402
from fs2mini.precision import choose_precision, cpu_matmul_probe, has_native_bf16  # noqa: E402
from fs2mini.tokenizer import Tokenizer, TokenizerConfig, load_or_train_tokenizer  # noqa: E402

SIZES: dict[str, ModelConfig] = {"small": ARCHS["small"], "medium": ARCHS["medium"], "base": ARCHS["base"], "dense_600m": ARCHS["dense_600m"]}
SYSTEMS = ("fs2mini", "torch", "hf")
SYSTEM_NAMES = {"fs2mini": "fs2mini", "fs2mini-compile": "fs2mini + torch.compile",
                "torch": "plain nn.Transformer", "hf": "HF M2M100"}
VOCAB_SIZE = 8000
MAX_TOKENS = 4096
SIZE_MAX_TOKENS = {"medium": DataConfig().max_tokens}
"""Batch budgets that differ from MAX_TOKENS on CPU: `medium` is the default run's model, measured at its batches."""
GEN_BATCH = 50
FORCED_LEN = 32  # tokens generated before </s> when the output length is forced
PRECISIONS = ("fp32", "bf16")  # bf16 = bf16 autocast, as `fs2mini.train --trainer.autocast bf16`


@dataclass(frozen=True)
class BenchConfig:
    """Benchmark fs2mini's training, generation and data pipeline against baselines."""

    quick: bool = False
    """A ~2-minute smoke run: one repeat, SMALL only, 2 training steps, 50 sentences, forced-length generation only."""
    precisions: Literal["auto", "fp32", "bf16", "both"] = "auto"
    """auto: fp32, plus bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX); bf16 only on CUDA."""
    repeats: int = 2
    """Alternating rounds of every system at every precision (training and generation); the median is reported."""
    small_steps: int = 5
    """Timed training steps per SMALL run (after 2 warm-up steps and one untimed pass over the timed batches)."""
    medium_steps: int = 5
    """Timed training steps per MEDIUM run (likewise): the default run's model and batch size."""
    base_steps: int = 2
    """Timed training steps per BASE run (after 1 warm-up step and a pass over the timed batches)."""
    compile: bool = False
    """Also measure fs2mini with torch.compile (inductor); its compile time is reported separately."""
    hf: bool = True
    """Include Hugging Face M2M100 when `transformers` is installed."""
    output: Path = Path("benchmarks/results.json")
    """Where the JSON results are written."""
    workdir: Path | None = None
    """Scratch directory for the shared batches (default: a temporary directory)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """cpu: the CI-like figures, 4096-token batches. cuda: larger batches, dense_600m too, MFU."""
    cuda_max_tokens: int = 16384
    """Token budget of each training batch on CUDA (CPU uses 4096)."""


# --------------------------------------------------------------------------------------------
# Workers: each runs in its own process and prints one JSON line.


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA allocation on a GPU, peak RSS of the process on CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


LR = 1e-4
"""Fixed learning rate of every system (no warmup schedule: the timings do not depend on it)."""


def build_system(system: str, cfg: ModelConfig, tok: dict, device: torch.device, *, bf16: bool):
    """(model, compute_loss(model, batch) -> (summed loss, target tokens), optimizer) of one system.

    fs2mini is built by `fs2mini.components.build_components`, as `fs2mini.train` builds it (with
    `TrainerConfig(compile=True)` for fs2mini-compile, and `--trainer.autocast` bf16 or off as
    `bf16` says); the baselines get the same label-smoothed CE (baselines.py) and the same
    AdamW(lr=LR) from `fs2mini.optim.build_optimizer` (fused kernel).
    """
    from baselines import LABEL_SMOOTHING, PlainTransformer, build_hf_m2m100, hf_loss, plain_transformer_loss

    from fs2mini.components import build_components
    from fs2mini.config import TrainConfig, TrainerConfig
    from fs2mini.data import run_directions
    from fs2mini.optim import AdamWConfig, build_optimizer
    from fs2mini.task import TaskConfig
    from fs2mini.vocab import VocabInfo

    optimizer_cfg = AdamWConfig(lr=LR)
    vocab = VocabInfo(**tok["vocab"])
    match system:
        case "fs2mini" | "fs2mini-compile":
            train_cfg = TrainConfig(
                model=cfg, optimizer=optimizer_cfg, task=TaskConfig(label_smoothing=LABEL_SMOOTHING),
                trainer=TrainerConfig(max_grad_norm=1.0, autocast="bf16" if bf16 else "off", seed=0,
                                      compile=system == "fs2mini-compile"),
            )
            parts = build_components(train_cfg, run_directions(train_cfg.data), Tokenizer(Path(tok["path"]), tok["langs"]),
                                     device)
            return parts.model, parts.task.compute_loss, parts.optimizer
        case "torch":
            model, compute_loss = PlainTransformer(cfg, vocab.size, vocab.pad_idx), plain_transformer_loss
        case "hf":
            model, compute_loss = build_hf_m2m100(cfg, vocab.size, vocab.pad_idx, vocab.eos_idx), hf_loss
        case _:
            raise ValueError(f"unknown system {system}")
    model.to(device)
    return model, compute_loss, build_optimizer(optimizer_cfg, [p for p in model.parameters() if p.requires_grad])


def make_train_step(system: str, cfg: ModelConfig, tok: dict, device: torch.device, *, bf16: bool):
    """(model, step): `step(batch)` is one update of `system` by `fs2mini.trainer.train_step`, the
    function `fs2mini.train` runs, so the benchmark times the trainer itself: bf16 autocast when
    `bf16` (fp32 otherwise), summed loss, backward, gradients ÷ target tokens, clip to 1, the
    non-finite check, AdamW (fused kernel). One micro-batch per update; `tok` is `bench_tokenizer`'s dict."""
    from fs2mini.trainer import train_step

    torch.manual_seed(0)
    model, compute_loss, optimizer = build_system(system, cfg, tok, device, bf16=bf16)
    model.train()

    def step(batch: Seq2SeqBatch) -> float:
        """Returns the loss per target token."""
        return train_step(model, compute_loss, optimizer, [batch], LR, max_grad_norm=1.0, device=device,
                          autocast_dtype=torch.bfloat16 if bf16 else None).loss

    return model, step


def train_worker(job: dict) -> dict:
    if job["system"].startswith("fs2mini"):
        keep_freed_memory()  # as fs2mini.train's process does
    device = torch.device(job["device"])
    cfg = SIZES[job["size"]]
    batches: list[Seq2SeqBatch] = [b.to(device) for b in torch.load(job["batches"], weights_only=False)]
    model, step = make_train_step(job["system"], cfg, job["tok"], device, bf16=job["precision"] == "bf16")
    timed = batches[job["warmup"] : job["warmup"] + job["steps"]]
    # A batch shape's first step pays one-time costs (oneDNN's bf16 kernels compiled per matmul shape
    # on CPU; kernel plans and allocator growth on CUDA, with cuDNN attention ~0.3 s, see cuda_probe.py)
    # that a long run, meeting its shapes again, does not: the timed batches are also run once untimed.
    warmup = batches[: job["warmup"]] + timed
    start = time.perf_counter()
    for batch in warmup:
        step(batch)
    sync(device)
    warmup_s = time.perf_counter() - start
    times, losses = [], []
    for batch in timed:
        start = time.perf_counter()
        losses.append(step(batch))  # float(loss) waits for the step's GPU work
        sync(device)
        times.append(time.perf_counter() - start)
    total = sum(times)
    target_tokens = sum(b.num_target_tokens for b in timed)
    source_tokens = sum(int(b.source_lengths.sum()) for b in timed)
    return {
        "target_tokens_per_s": target_tokens / total,
        "tokens_per_s": (target_tokens + source_tokens) / total,
        "step_s": statistics.median(times),
        "total_s": total,
        "warmup_s": warmup_s,
        "flops": sum(train_flops(cfg, VOCAB_SIZE, b) for b in timed),
        "first_loss": losses[0],
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": peak_memory_mb(device),
    }


def train_flops(cfg: ModelConfig, vocab: int, batch: Seq2SeqBatch) -> float:
    """Matmul FLOPs of one training step on this (padded) batch; formula in the module docstring."""
    b, s = batch.source.shape
    t = batch.target_input.size(1)
    d, f = cfg.model_dim, cfg.ffn_inner_dim
    encoder = cfg.num_encoder_layers * (b * s * (4 * d * d + 2 * d * f) + 2 * b * s * s * d)
    decoder = cfg.num_decoder_layers * (b * t * (6 * d * d + 2 * d * f) + 2 * d * d * b * s + 2 * b * t * t * d + 2 * b * t * s * d)
    output = b * t * vocab * d
    return 6.0 * (encoder + decoder + output)


def generate_worker(job: dict) -> dict:
    """Greedy and beam-4 sentences/s; forced = every output exactly FORCED_LEN tokens + </s>; for bf16
    every search (warm-up included) runs under bf16 autocast."""
    from fs2mini.precision import autocast_for

    torch.manual_seed(0)
    device = torch.device(job["device"])
    cfg = SIZES[job["size"]]
    sources: list[list[int]] = job["sources"]
    tok = job["tok"]
    eos, pad, lang = tok["vocab"]["eos_idx"], tok["vocab"]["pad_idx"], tok["target_lang_id"]
    batches = [collate([(s, [eos, lang, eos]) for s in sources[i : i + GEN_BATCH]], pad).to(device)
               for i in range(0, len(sources), GEN_BATCH)]
    if job["system"] == "fs2mini":
        search = _fs2mini_generate(cfg, tok, device)
    else:
        search = _hf_generate(cfg, tok, device)

    def run(batch: Seq2SeqBatch, beam: int, forced: bool) -> list[int]:
        with autocast_for(device, torch.bfloat16 if job["precision"] == "bf16" else None):
            return search(batch, beam, forced)

    results = {}
    run(batches[0], 1, True)  # warm-up
    run(batches[0], 4, True)
    for name, beam, forced in [("greedy_forced", 1, True), ("beam4_forced", 4, True),
                               ("greedy", 1, False), ("beam4", 4, False)]:
        if job["forced_only"] and not forced:
            continue
        sync(device)
        start = time.perf_counter()
        lengths = [n for batch in batches for n in run(batch, beam, forced)]
        sync(device)
        elapsed = time.perf_counter() - start
        results[name] = {"sentences_per_s": len(sources) / elapsed, "mean_output_len": statistics.mean(lengths)}
    results["peak_rss_mb"] = peak_memory_mb(device)
    return results


def _fs2mini_generate(cfg: ModelConfig, tok: dict, device: torch.device):
    from torch import Tensor

    from fs2mini.generation import GenerationConfig, generate
    from fs2mini.model import EncoderDecoderModel, build_model
    from fs2mini.vocab import VocabInfo

    vocab = VocabInfo(**tok["vocab"])

    class NoEarlyEos(EncoderDecoderModel):
        """</s> gets -1e4 added to its logit: never chosen unless the search forces it at max length."""

        def project(self, decoder_out: Tensor) -> Tensor:
            logits = super().project(decoder_out)
            logits[..., vocab.eos_idx] -= 1e4
            return logits

    model = build_model(cfg, vocab).to(device).eval()
    forced_model = copy.copy(model)  # same modules and weights; only `project` differs
    forced_model.__class__ = NoEarlyEos
    prefix = [vocab.eos_idx, tok["target_lang_id"]]
    banned = [vocab.pad_idx, vocab.bos_idx, *tok["lang_ids"]]

    def run(batch: Seq2SeqBatch, beam: int, forced: bool) -> list[int]:
        gen_cfg = GenerationConfig(beam_size=beam, max_len_a=0.0, max_len_b=FORCED_LEN) if forced else GenerationConfig(beam_size=beam)
        hyps = generate(forced_model if forced else model, batch.source, batch.source_lengths, prefix, gen_cfg,
                        eos_idx=vocab.eos_idx, banned_ids=banned)
        return [len(h[0].tokens) for h in hyps]

    return run


def _hf_generate(cfg: ModelConfig, tok: dict, device: torch.device):
    from baselines import build_hf_m2m100

    vocab = tok["vocab"]
    model = build_hf_m2m100(cfg, vocab["size"], vocab["pad_idx"], vocab["eos_idx"]).to(device).eval()
    pad = vocab["pad_idx"]

    @torch.no_grad()
    def run(batch: Seq2SeqBatch, beam: int, forced: bool) -> list[int]:
        # Decoder steps: fs2mini feeds `</s> __fra__` at once and then FORCED_LEN tokens, predicting
        # FORCED_LEN + 1 times; HF predicts __fra__ (forced) then FORCED_LEN tokens: the same count.
        if forced:
            length = dict(max_new_tokens=FORCED_LEN + 1, min_new_tokens=FORCED_LEN + 1)
        else:
            length = dict(max_new_tokens=int(1.2 * batch.source.size(1) + 10) + 2)
        out = model.generate(
            input_ids=batch.source, attention_mask=(batch.source != pad).long(), num_beams=beam, do_sample=False,
            forced_bos_token_id=tok["target_lang_id"], length_penalty=1.0, **length,
        )
        # Output row: </s> __fra__ tokens... [</s>] [pad...]
        return [int(((row != pad) & (row != vocab["eos_idx"])).sum()) - 1 for row in out]

    return run


def data_worker(job: dict) -> dict:
    """One epoch of the training split on one CPU core: fs2mini's pipeline or a naive loop."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    tokenizer = Tokenizer(Path(job["tok"]["path"]), job["tok"]["langs"])
    corpus = BibleCorpus()
    sentences = real = padded = batches = 0
    start = time.perf_counter()
    if job["impl"] == "fs2mini":
        for batch in Seq2SeqBatches(DataConfig(max_tokens=MAX_TOKENS), "train", tokenizer, seed=1, shuffle=True):
            sentences += batch.source.size(0)
            batches += 1
            real += int(batch.source_lengths.sum()) + batch.num_target_tokens
            padded += batch.source.numel() + batch.target_input.numel()
    else:
        for batch in naive_batches(tokenizer, corpus, 110):
            sentences += batch.source.size(0)
            batches += 1
            real += int(batch.source_lengths.sum()) + batch.num_target_tokens
            padded += batch.source.numel() + batch.target_input.numel()
    elapsed = time.perf_counter() - start
    return {"sentences_per_s": sentences / elapsed, "sentences": sentences, "batches": batches,
            "padding": 1 - real / padded, "seconds": elapsed, "peak_rss_mb": peak_rss_mb()}


def naive_batches(tokenizer: Tokenizer, corpus: BibleCorpus, batch_size: int):
    """What one writes first: encode each pair on its own, take `batch_size` at a time, pad."""
    source_lang, target_lang = corpus_languages(corpus)
    pad = tokenizer.vocab_info.pad_idx
    current = []
    for source, target in read_pairs(corpus, "train", Skipped()):
        current.append((tokenizer.encode_source([source], source_lang)[0], tokenizer.encode_target([target], target_lang)[0]))
        if len(current) == batch_size:
            yield naive_collate(current, pad)
            current = []
    if current:
        yield naive_collate(current, pad)


def naive_collate(examples: list[tuple[list[int], list[int]]], pad: int) -> Seq2SeqBatch:
    src_len = max(len(s) for s, _ in examples)
    tgt_len = max(len(t) for _, t in examples)
    source = torch.tensor([s + [pad] * (src_len - len(s)) for s, _ in examples])
    target = torch.tensor([t + [pad] * (tgt_len - len(t)) for _, t in examples])
    lengths = torch.tensor([len(t) - 1 for _, t in examples])
    target_input = target[:, :-1].clone()
    target_input[torch.arange(tgt_len - 1) >= lengths.unsqueeze(1)] = pad
    return Seq2SeqBatch(source, torch.tensor([len(s) for s, _ in examples]), target_input, target[:, 1:],
                        int(lengths.sum()))


def mm_worker(job: dict) -> dict:
    """Matmul peak of this machine in one precision: for each large square size, the median rate of 2 s of
    back-to-back `torch.mm`s on all threads; the peak is the best size's. Also the rate of the fastest tenth
    of the calls (the 10th-percentile time), best size likewise.

    Why both: on the 2-vCPU AMX VMs of this project the bf16 rate of one and the same call flips between
    modes about 3× apart (1024²: ~350 and ~1,140 GFLOP/s, from one second to the next; fp32 is steady), so a
    peak taken from 10 calls was 2,105 GFLOP/s in one session and 700-800 in probes of the next, on a VM of
    the same kind. The efficiency column divides by the median; the fastest tenth says how fast the fast mode is."""
    device = torch.device(job["device"])
    dtype = torch.bfloat16 if job["precision"] == "bf16" else torch.float32
    medians, p90s = {}, {}
    for n in (1024, 2048) if device.type == "cpu" else (4096, 8192):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b)
        times: list[float] = []
        window = time.perf_counter() + 2.0
        while len(times) < 10 or time.perf_counter() < window:
            sync(device)
            start = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            times.append(time.perf_counter() - start)
        medians[str(n)] = 2 * n**3 / statistics.median(times)
        p90s[str(n)] = 2 * n**3 / statistics.quantiles(times, n=10)[0]  # the fastest tenth's slowest call
    return {"flops_per_s": max(medians.values()), "p90_flops_per_s": max(p90s.values()), "by_size": medians,
            "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch.")}


WORKERS = {"train": train_worker, "generate": generate_worker, "data": data_worker, "mm": mm_worker}


# --------------------------------------------------------------------------------------------
# The driver.


def run_job(job: dict) -> dict:
    """Run one worker in a fresh Python process; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, __file__, "_worker", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job.get('kind')}/{job.get('system', job.get('impl'))} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_tokenizer() -> tuple[Tokenizer, dict]:
    """The benchmark's tokenizer (Bible corpus, vocab 8000, trained once then cached) and, as JSON for
    the workers, what they need of it: its model path and languages (fs2mini's components are built
    from a `Tokenizer`), its special ids, the target language id and every language id."""
    corpus = BibleCorpus()
    langs = corpus_languages(corpus)
    tokenizer = load_or_train_tokenizer(TokenizerConfig(vocab_size=VOCAB_SIZE), training_sentences(corpus, Skipped()), langs)
    vocab = tokenizer.vocab_info
    tok = {"path": str(tokenizer.model_path), "langs": list(langs), "target_lang_id": tokenizer.lang_ids[langs[1]],
           "lang_ids": list(tokenizer.lang_ids.values()),
           "vocab": {"size": vocab.size, "pad_idx": vocab.pad_idx, "bos_idx": vocab.bos_idx, "eos_idx": vocab.eos_idx,
                     "unk_idx": vocab.unk_idx}}
    return tokenizer, tok


def prepare(workdir: Path, steps_needed: int, num_gen: int, shapes: set[tuple[int, str]]
            ) -> tuple[dict, dict[tuple[int, str], Path], list[list[int]]]:
    """Tokenizer (vocab 8000, cached), the shared training batches of each (token budget, precision) as
    `fs2mini.train` would cut them (`shaped_for`: bf16 pads lengths to multiples of 8), the generation sources."""
    tokenizer, tok = bench_tokenizer()
    paths = {}
    for max_tokens, precision in sorted(shapes):
        data = shaped_for(DataConfig(max_tokens=max_tokens), low_precision=precision != "fp32")
        stream = iter(Seq2SeqBatches(data, "train", tokenizer, seed=1, shuffle=True))
        paths[max_tokens, precision] = workdir / f"train_batches_{max_tokens}_{precision}.pt"
        torch.save([next(stream) for _ in range(steps_needed)], paths[max_tokens, precision])
    test_sources = [source for source, _ in read_pairs(BibleCorpus(), "test", Skipped())][:num_gen]
    sources = tokenizer.encode_source(test_sources, tokenizer.langs[0])
    return tok, paths, sources


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def run_precisions(cfg: BenchConfig) -> list[str]:
    """What `--precisions` means on this machine: auto = fp32, plus bf16 on a CPU with native bf16; bf16 on CUDA."""
    match cfg.precisions:
        case "auto" if cfg.device == "cuda":
            return ["bf16"]
        case "auto":
            return list(PRECISIONS) if has_native_bf16() else ["fp32"]
        case "both":
            return list(PRECISIONS)
        case single:
            return [single]


def main(cfg: BenchConfig) -> dict:
    started = time.perf_counter()
    hf_available = cfg.hf and _has_transformers()
    systems = [s for s in SYSTEMS if s != "hf" or hf_available]
    if cfg.compile:
        systems.insert(1, "fs2mini-compile")
    repeats = 1 if cfg.quick else cfg.repeats
    on_cuda = cfg.device == "cuda"
    if on_cuda and not torch.cuda.is_available():
        sys.exit("bench.py: --device cuda but CUDA is not available on this machine")
    if cfg.cuda_max_tokens <= 0:
        sys.exit(f"bench.py: --cuda-max-tokens must be a positive integer, got {cfg.cuda_max_tokens}")
    precisions = run_precisions(cfg)
    if cfg.quick:
        plan = {"small": (1, 2)}
    elif on_cuda:  # GPU steps are short: more of them, and NLLB's own size
        plan = {"small": (3, 20), "base": (3, 20), "dense_600m": (2, 10)}
    else:
        plan = {"small": (2, cfg.small_steps), "medium": (2, cfg.medium_steps), "base": (1, cfg.base_steps)}
    budgets = {size: cfg.cuda_max_tokens if on_cuda else SIZE_MAX_TOKENS.get(size, MAX_TOKENS) for size in plan}
    gen_sizes = [size for size in ("small", "medium") if size in plan]
    num_gen = 50 if cfg.quick else 200
    machine = machine_info(cfg.device)
    if not on_cuda:
        # What `fs2mini.train --trainer.autocast auto` decides with (cached per CPU model and torch).
        machine["bf16_probe"] = asdict(cpu_matmul_probe())
        auto = choose_precision("auto", torch.device("cpu"))  # (results.json keeps its {"bf16", "reason"} format)
        machine["autocast_auto"] = {"bf16": auto.autocast_dtype == torch.bfloat16, "reason": auto.reason}
        if "bf16" in precisions and not machine["bf16_probe"]["native_bf16"]:
            log("warning: bf16 on a CPU without native bf16 matmuls: emulated, expect it far slower than fp32")
    results: dict = {"machine": machine,
                     "config": {"quick": cfg.quick, "repeats": repeats, "plan": plan, "device": cfg.device,
                                "precisions": precisions, "max_tokens": budgets, "vocab": VOCAB_SIZE}}
    with tempfile.TemporaryDirectory(dir=cfg.workdir) as tmp:
        shapes = {(budget, precision) for budget in budgets.values() for precision in precisions}
        tok, paths, gen_sources = prepare(Path(tmp), max(w + s for w, s in plan.values()), num_gen, shapes)
        results["mm"] = {}
        for precision in precisions:
            results["mm"][precision] = run_job({"kind": "mm", "device": cfg.device, "precision": precision})
            mm = results["mm"][precision]
            log(f"{precision} torch.mm peak: {mm['flops_per_s'] / 1e9:.1f} GFLOP/s (fastest tenth {mm['p90_flops_per_s'] / 1e9:.1f})")

        # Rounds alternate A B C in fp32, A B C in bf16, so drift of the machine hits every row alike.
        results["train"] = {}
        for size, (warmup, steps) in plan.items():
            runs: dict[tuple[str, str], list[dict]] = {(s, p): [] for s in systems for p in precisions}
            for repeat in range(repeats):
                for precision in precisions:
                    for system in systems:
                        job = {"kind": "train", "system": system, "size": size, "precision": precision,
                               "batches": str(paths[budgets[size], precision]), "device": cfg.device, "tok": tok,
                               "warmup": warmup + (2 if system == "fs2mini-compile" else 0), "steps": steps}
                        runs[system, precision].append(run_job(job))
                        log(f"train {size} {system} {precision} #{repeat + 1}: "
                            f"{runs[system, precision][-1]['target_tokens_per_s']:.0f} target tok/s")
            results["train"][size] = {s: {p: summarise_train(runs[s, p]) for p in precisions} for s in systems}

        results["generate"] = {}
        gen_systems = [s for s in ("fs2mini", "hf") if s in systems]
        for size in gen_sizes:
            gen_runs: dict[tuple[str, str], list[dict]] = {(s, p): [] for s in gen_systems for p in precisions}
            for repeat in range(repeats):
                for precision in precisions:
                    for system in gen_systems:
                        gen_runs[system, precision].append(run_job({
                            "kind": "generate", "system": system, "size": size, "precision": precision,
                            "sources": gen_sources, "tok": tok, "device": cfg.device, "forced_only": cfg.quick}))
                        log(f"generate {size} {system} {precision} #{repeat + 1}: " + ", ".join(
                            f"{k} {v['sentences_per_s']:.0f}/s" for k, v in gen_runs[system, precision][-1].items()
                            if isinstance(v, dict)))
            results["generate"][size] = {s: {p: summarise_generate(gen_runs[s, p]) for p in precisions} for s in gen_systems}

        data_runs: dict[str, list[dict]] = {} if on_cuda else {"fs2mini": [], "naive": []}  # CPU-only work
        for repeat in range(1 if cfg.quick else 2):
            for impl in data_runs:
                data_runs[impl].append(run_job({"kind": "data", "impl": impl, "tok": tok}))
                log(f"data {impl} #{repeat + 1}: {data_runs[impl][-1]['sentences_per_s']:.0f} sentences/s")
        results["data"] = {impl: {**runs[0], "sentences_per_s": median_of(runs, "sentences_per_s")} for impl, runs in data_runs.items()}

    for size in plan:  # every system's matmul FLOP/s ÷ the torch.mm peak of its precision
        for system_runs in results["train"][size].values():
            for precision, own in system_runs.items():
                own["mm_efficiency"] = own["flops_per_s"] / results["mm"][precision]["flops_per_s"]
    results["wall_s"] = time.perf_counter() - started
    return results


def summarise_train(runs: list[dict]) -> dict:
    out = {k: median_of(runs, k) for k in ("target_tokens_per_s", "tokens_per_s", "step_s", "warmup_s")}
    out["flops_per_s"] = statistics.median(r["flops"] / r["total_s"] for r in runs)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["parameters"] = runs[0]["parameters"]
    out["first_loss"] = runs[0]["first_loss"]
    out["runs"] = [round(r["target_tokens_per_s"], 1) for r in runs]
    return out


def summarise_generate(runs: list[dict]) -> dict:
    modes = [k for k in runs[0] if isinstance(runs[0][k], dict)]
    out: dict = {m: {"sentences_per_s": statistics.median(r[m]["sentences_per_s"] for r in runs),
                     "mean_output_len": runs[0][m]["mean_output_len"]} for m in modes}
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return out


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        log("transformers is not installed: skipping HF M2M100 (pip install -e '.[bench]')")
        return False
    return True


def machine_info(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": len(os.sched_getaffinity(0)),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line for line in lines if line.startswith("model name"))
        info["cpu"] = model.split(":", 1)[1].strip()
        flags = set(next(line for line in lines if line.startswith("flags")).split(":", 1)[1].split())
        # What decides fp32 and bf16 matmul speed on a CPU (figures are only comparable within one kind).
        info["cpu_flags"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"})
    except (OSError, StopIteration):
        pass
    return info


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_report(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)  # a log file does not wrap at 80 columns
    m, config = results["machine"], results["config"]
    on_cuda = config.get("device") == "cuda"
    precisions = config["precisions"]
    both = precisions == list(PRECISIONS)  # then fs2mini bf16 is also compared with HF fp32
    where = m["gpu"] if on_cuda else "CPU"
    memory = "peak CUDA MB" if on_cuda else "peak RSS MB"
    console.print(f"[bold]fs2mini benchmark[/bold] — {m.get('gpu', m['cpu'])}, {m['cpus']} CPUs, torch {m['torch']}, "
                  f"{results['wall_s']:.0f} s")
    console.print(f"CPU: {m['cpu']}, flags {' '.join(m.get('cpu_flags', [])) or 'unknown'}")
    if "bf16_probe" in m:
        probe = m["bf16_probe"]
        auto = "bf16 autocast" if m["autocast_auto"]["bf16"] else "fp32"
        console.print(f"bf16 probe (fs2mini.precision, one core): native bf16 {'yes' if probe['native_bf16'] else 'no'}, "
                      f"fp32 {probe['fp32_gflops']:.0f} vs bf16 {probe['bf16_gflops']:.0f} GFLOP/s "
                      f"({probe['bf16_gflops'] / probe['fp32_gflops']:.2f}×); --trainer.autocast auto picks {auto}")
    fastest = [f"{p} {results['mm'][p]['p90_flops_per_s'] / 1e9:.0f}" for p in precisions if "p90_flops_per_s" in results["mm"][p]]
    console.print("torch.mm peak (all threads): " + ", ".join(
        f"{p} {results['mm'][p]['flops_per_s'] / 1e9:.0f} GFLOP/s" for p in precisions)
        + (f" (median of 2 s of calls; their fastest tenth: {', '.join(fastest)})" if fastest else ""))

    def versus(value: float, ref: float | None) -> str:
        return f"{value / ref:.2f}×" if ref else "-"

    caption = "vs HF: ÷ HF M2M100 at the same precision" + (
        "; vs HF fp32: fs2mini bf16 ÷ HF M2M100 fp32 (what HF gives by default)" if both else "")

    for size, systems in results["train"].items():
        budget = config["max_tokens"][size] if isinstance(config["max_tokens"], dict) else config["max_tokens"]
        table = Table(title=f"training {size.upper()} ({where}, {budget}-token batches, bf16 lengths in multiples "
                            f"of {LOW_PRECISION_LENGTH_MULTIPLE}, steady state, median of {config['repeats']})", caption=caption)
        columns = ["system", "precision", "target tok/s", "src+tgt tok/s", "vs HF",
                   *(["vs HF fp32"] if both else []), "of mm peak", "step s", memory, "runs"]
        for col in columns:
            table.add_column(col, justify="left" if col in ("system", "precision") else "right")
        hf = {p: r["target_tokens_per_s"] for p, r in systems.get("hf", {}).items()}
        for system, by_precision in systems.items():
            for precision, r in by_precision.items():
                tps = r["target_tokens_per_s"]
                fp32_ref = [versus(tps, hf.get("fp32")) if system == "fs2mini" and precision == "bf16" else ""] if both else []
                table.add_row(SYSTEM_NAMES[system], precision, f"{tps:.0f}", f"{r['tokens_per_s']:.0f}",
                              versus(tps, hf.get(precision)), *fp32_ref,
                              f"{r['mm_efficiency']:.0%}" if "mm_efficiency" in r else "-", f"{r['step_s']:.3f}",
                              f"{r['peak_rss_mb']:.0f}", " ".join(f"{x:.0f}" for x in r["runs"]))
            table.add_section()
        console.print(table)

    for size, generated in results["generate"].items():
        table = Table(title=f"generation {size.upper()} ({where}, random weights, batches of {GEN_BATCH}; "
                            f"forced = {FORCED_LEN} tokens + </s>)", caption=caption)
        for col in ("mode", "system", "precision", "sentences/s", "vs HF", *(["vs HF fp32"] if both else []),
                    "mean output len"):
            table.add_column(col, justify="left" if col in ("mode", "system", "precision") else "right")
        hf = generated.get("hf", {})
        first = next(iter(next(iter(generated.values())).values()))  # modes, in the order they ran
        for mode in [k for k, v in first.items() if isinstance(v, dict)]:
            for system, by_precision in generated.items():
                for precision, modes in by_precision.items():
                    r = modes[mode]
                    sps = r["sentences_per_s"]
                    fp32_ref = hf.get("fp32", {}).get(mode, {}).get("sentences_per_s")
                    table.add_row(mode, SYSTEM_NAMES[system], precision, f"{sps:.1f}",
                                  versus(sps, hf.get(precision, {}).get(mode, {}).get("sentences_per_s")),
                                  *([versus(sps, fp32_ref) if system == "fs2mini" and precision == "bf16" else ""] if both else []),
                                  f"{r['mean_output_len']:.1f}")
            table.add_section()
        console.print(table)

    table = Table(title="data pipeline (one epoch of the Bible training split, one CPU core)")
    for col in ("pipeline", "sentences/s", "padding", "batches", "seconds"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    for impl, r in results["data"].items():
        name = "fs2mini Seq2SeqBatches" if impl == "fs2mini" else "naive per-sentence loop (110/batch)"
        table.add_row(name, f"{r['sentences_per_s']:.0f}", f"{r['padding']:.1%}", str(r["batches"]), f"{r['seconds']:.2f}")
    if results["data"]:
        console.print(table)
    for size, systems in results["train"].items():
        for precision, r in systems["fs2mini"].items():  # (the table's "of mm peak" column, spelled out)
            mm = results["mm"][precision]
            console.print(f"efficiency {size.upper()} {precision}: fs2mini step {r['flops_per_s'] / 1e9:.1f} GFLOP/s of "
                          f"matmul / torch.mm {mm['dtype']} peak {mm['flops_per_s'] / 1e9:.1f} GFLOP/s = {r['mm_efficiency']:.0%}"
                          + (f" ({r['flops_per_s'] / mm['p90_flops_per_s']:.0%} of its fastest tenth)" if "p90_flops_per_s" in mm else ""))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        job = json.loads(sys.argv[2])
        print(json.dumps(WORKERS[job["kind"]](job)))
    else:
        cfg = tyro.cli(BenchConfig)
        results = main(cfg)
        cfg.output.parent.mkdir(parents=True, exist_ok=True)
        cfg.output.write_text(json.dumps(results, indent=2) + "\n")
        print_report(results)
        print(f"results written to {cfg.output}")
