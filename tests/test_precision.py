"""Precision: `--trainer.autocast auto` follows a measured matmul probe on CPU and the compute capability on
CUDA; bf16 and fp16 (loss-scaled) training learn, and an fp16 run resumes exactly."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import fs2mini.precision as precision
from conftest import tiny_config
from fs2mini.checkpoint import load_checkpoint
from fs2mini.data import collate
from fs2mini.precision import MatmulProbe, Precision, build_grad_scaler, choose_precision, cpu_matmul_probe
from fs2mini.trainer import train, train_step
from helpers import read_metrics

CPU = torch.device("cpu")


@pytest.mark.parametrize("probe, mode, dtype, reason", [
    (MatmulProbe(True, 80.0, 460.0), "auto", torch.bfloat16, "bf16 autocast (CPU has native bf16: bf16 mm 460 vs fp32 80 GFLOP/s)"),
    (MatmulProbe(False, 80.0, 1.0), "auto", None, "fp32 (no native bf16 on this CPU)"),
    (MatmulProbe(True, 80.0, 90.0), "auto", None, "fp32 (bf16 not faster here: bf16 mm 90 vs fp32 80 GFLOP/s)"),
    (MatmulProbe(True, 80.0, 460.0), "off", None, "fp32 (--trainer.autocast off)"),
])
def test_auto_chooses_bf16_only_where_it_measured_faster(probe, mode, dtype, reason, monkeypatch):
    monkeypatch.setattr(precision, "cpu_matmul_probe", lambda: probe)
    assert choose_precision(mode, CPU) == precision.Precision(dtype, reason)


@pytest.mark.parametrize("capability, mode, dtype, reason", [
    ((7, 5), "auto", torch.float16, "fp16 autocast + GradScaler (cuda: compute capability 7.5 has no native bf16)"),
    ((7, 0), "auto", torch.float16, "fp16 autocast + GradScaler (cuda: compute capability 7.0 has no native bf16)"),
    ((8, 0), "auto", torch.bfloat16, "bf16 autocast (cuda: compute capability 8.0 has native bf16)"),
    ((9, 0), "fp16", torch.float16, "fp16 autocast + GradScaler (--trainer.autocast fp16; cuda: compute capability 9.0)"),
    ((9, 0), "off", None, "fp32 (--trainer.autocast off)"),
])
def test_auto_on_cuda_chooses_bf16_from_compute_capability_8_and_fp16_before(capability, mode, dtype, reason, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    chosen = choose_precision(mode, torch.device("cuda"))
    assert chosen == precision.Precision(dtype, reason)
    assert chosen.scales_loss == (dtype == torch.float16)


def test_forced_bf16_on_a_gpu_without_native_bf16_warns(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert choose_precision("bf16", torch.device("cuda")).autocast_dtype == torch.bfloat16
    assert "warning: --trainer.autocast bf16 on a GPU without native bf16 (cuda: compute capability 7.5)" in capsys.readouterr().err


def test_forced_bf16_on_a_slow_cpu_runs_but_warns_with_the_measured_slowdown(monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_matmul_probe", lambda: MatmulProbe(False, 80.0, 2.0))
    assert choose_precision("bf16", CPU).autocast_dtype == torch.bfloat16
    err = capsys.readouterr().err
    assert "warning: --trainer.autocast bf16 on a CPU without fast bf16 matmuls" in err and "40.0x slower" in err


def test_probe_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    measured = MatmulProbe(True, 10.0, 50.0)
    monkeypatch.setattr(precision, "measure_matmuls", lambda: measured)
    assert cpu_matmul_probe(tmp_path) == measured
    monkeypatch.setattr(precision, "measure_matmuls", lambda: pytest.fail("measured again"))
    assert cpu_matmul_probe(tmp_path) == measured
    (tmp_path / "matmul-probe.json").write_text("{not json")
    monkeypatch.setattr(precision, "measure_matmuls", lambda: measured)
    assert cpu_matmul_probe(tmp_path) == measured  # a damaged cache is measured again


def test_the_real_probe_measures_both_precisions():
    probe = precision.measure_matmuls(n=128, rounds=2)
    assert probe.fp32_gflops > 0 and probe.bf16_gflops > 0 and isinstance(probe.native_bf16, bool)


def test_bf16_training_is_finite_and_learns_the_reversal_task(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=150, validate_every=50,
                      checkpoint_every=150, autocast="bf16")
    run_dir = train(cfg)
    valid = [m["loss"] for m in read_metrics(run_dir / "metrics.jsonl") if m["split"] == "valid"]
    assert all(math.isfinite(loss) for loss in valid)
    assert valid[-1] < 0.5 * valid[0], valid  # ln(28) ≈ 3.3 at step 0
    weights = torch.load(run_dir / "checkpoints" / "step_00000150.pt", weights_only=True)["model"]
    assert all(w.dtype == torch.float32 for w in weights.values())  # master weights stay fp32


def test_a_grad_scaler_only_for_fp16_fresh_or_at_the_scale_a_checkpoint_saved():
    fp16 = Precision(torch.float16, "fp16")
    assert build_grad_scaler(Precision(torch.bfloat16, "bf16"), CPU, None) is None
    assert build_grad_scaler(Precision(None, "fp32"), CPU, None) is None
    fresh = build_grad_scaler(fp16, CPU, None)  # a new run, or a checkpoint without "grad_scaler" (older, or not fp16)
    assert fresh.get_scale() == 2.0**16
    found = {**fresh.state_dict(), "scale": 1024.0, "_growth_tracker": 7}
    assert build_grad_scaler(fp16, CPU, found).state_dict() == found


@pytest.mark.parametrize("factor, overflowed", [(1e35, True), (math.nan, False)])
def test_an_fp16_update_is_skipped_as_an_overflow_only_when_the_loss_is_finite(factor, overflowed):
    """1e35 × 2**16 overflows only once scaled (the scaler's business); a NaN loss is a bad step."""
    model = torch.nn.Linear(1, 1)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = build_grad_scaler(Precision(torch.float16, "fp16"), CPU, None)
    result = train_step(model, lambda m, batch: ((m.weight * factor).sum(), 1), optimizer, [collate([([3], [3, 3])], 0)],
                        0.1, max_grad_norm=1.0, device=CPU, autocast_dtype=torch.float16, grad_scaler=scaler)
    assert not result.applied and result.overflowed == overflowed
    assert torch.equal(model.weight, before) and scaler.get_scale() == 2.0**15  # skipped; the scale halved


def test_fp16_training_skips_overflows_learns_and_resumes_exactly(reversal_tsv, tokenizer_cache, tmp_path, capsys):
    """CPU autocast fp16 works (torch 2.13), so the fp16 + GradScaler path is tested here. The first updates
    overflow at GradScaler's initial scale 2**16 and are skipped by design: more of them than
    --trainer.max-bad-steps, which counts non-finite losses only. The scale is saved and restored."""
    def config(run: str, max_steps: int):
        cfg = tiny_config(reversal_tsv, tmp_path / run, tokenizer_cache, max_steps=max_steps, validate_every=6,
                          checkpoint_every=6, log_every=1, max_bad_steps=2, autocast="fp16", valid_translate_sentences=0)
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_tokens=128))  # CPUs emulate fp16 matmuls

    straight = train(config("straight", 12))
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "fp16 autocast + GradScaler (--trainer.autocast fp16; cpu)" in err and "warning: --trainer.autocast fp16 on CPU" in err
    records = read_metrics(straight / "metrics.jsonl")
    steps = [r for r in records if r["split"] == "train"]
    assert steps[0]["skipped_steps"] == 1 and steps[-1]["skipped_steps"] > 2  # overflow skips did not stop the run
    assert steps[-1]["loss_scale"] <= 2.0**16 / 2 ** steps[-1]["skipped_steps"]
    valid = [r["loss"] for r in records if r["split"] == "valid"]
    assert valid[-1] < 0.8 * valid[0], valid
    train(config("resumed", 6))
    resumed = train(config("resumed", 12))
    ends = [load_checkpoint(run / "checkpoints" / "step_00000012.pt") for run in (straight, resumed)]
    assert ends[1]["grad_scaler"] == ends[0]["grad_scaler"]  # without it the resumed run would overflow again
    for name, weight in ends[0]["model"].items():
        assert torch.equal(weight, ends[1]["model"][name]), name


@pytest.mark.parametrize("fp32_s, bf16_s, dtype, reason", [
    (0.50, 0.40, torch.bfloat16, "bf16 autocast (CPU has native bf16: bf16 mm 460 vs fp32 80 GFLOP/s; "
                                 "a step of this model 400 ms in bf16 vs 500 in fp32)"),
    (0.40, 0.50, None, "fp32 (bf16 not faster for this model: a step of this model 500 ms in bf16 vs 400 in fp32; "
                       "bf16 mm 460 vs fp32 80 GFLOP/s)"),
])
def test_auto_times_the_run_s_own_step_before_choosing_bf16(fp32_s, bf16_s, dtype, reason, tmp_path, monkeypatch):
    """A matmul probe 2-6x faster in bf16 is not enough: auto keeps fp32 for a model whose own step is not faster
    in bf16, and times each model once (cached by its key)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_matmul_probe", lambda: MatmulProbe(True, 80.0, 460.0))
    calls = []

    def time_step(dtype):
        calls.append(dtype)
        return bf16_s if dtype == torch.bfloat16 else fp32_s

    assert choose_precision("auto", CPU, time_step, "model A") == Precision(dtype, reason)
    assert sorted(map(str, set(calls))) == ["None", "torch.bfloat16"]
    calls.clear()
    assert choose_precision("auto", CPU, time_step, "model A") == Precision(dtype, reason)
    assert calls == []  # read from the cache
    choose_precision("auto", CPU, time_step, "model B")
    assert calls  # another model is timed
    assert choose_precision("bf16", CPU, time_step, "model C").autocast_dtype == torch.bfloat16  # asked for: as asked


def test_step_timer_leaves_the_run_s_random_state_and_weights_as_they_were():
    """Timing a step before training must not change the run: same weights, no gradients, same random stream."""
    from fs2mini.components import step_timer
    from fs2mini.model import ARCHS, build_model
    from fs2mini.task import TaskConfig, build_task
    from fs2mini.vocab import VocabInfo

    vocab = VocabInfo(size=60, pad_idx=1, bos_idx=0, eos_idx=2, unk_idx=3)
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(ARCHS["tiny"], dropout_p=0.3), vocab)  # dropout draws random numbers
    before = {name: value.clone() for name, value in model.state_dict().items()}
    state = torch.get_rng_state()
    timer = step_timer(model, build_task(TaskConfig(), vocab), vocab, 600, CPU)
    assert timer(None) > 0 and timer(torch.bfloat16) > 0
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
