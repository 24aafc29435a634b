"""Precision: `--trainer.autocast auto` follows a measured matmul probe on CPU; bf16 training learns."""

from __future__ import annotations

import math

import pytest
import torch

import fs2mini.precision as precision
from conftest import tiny_config
from fs2mini.precision import MatmulProbe, choose_precision, cpu_matmul_probe
from fs2mini.trainer import train
from helpers import read_metrics

CPU = torch.device("cpu")


@pytest.mark.parametrize("probe, mode, bf16, reason", [
    (MatmulProbe(True, 80.0, 460.0), "auto", True, "bf16 autocast (CPU has native bf16: bf16 mm 460 vs fp32 80 GFLOP/s)"),
    (MatmulProbe(False, 80.0, 1.0), "auto", False, "fp32 (no native bf16 on this CPU)"),
    (MatmulProbe(True, 80.0, 90.0), "auto", False, "fp32 (bf16 not faster here: bf16 mm 90 vs fp32 80 GFLOP/s)"),
    (MatmulProbe(True, 80.0, 460.0), "off", False, "fp32 (--trainer.autocast off)"),
])
def test_auto_chooses_bf16_only_where_it_measured_faster(probe, mode, bf16, reason, monkeypatch):
    monkeypatch.setattr(precision, "cpu_matmul_probe", lambda: probe)
    assert choose_precision(mode, CPU) == precision.Precision(bf16, reason)


def test_forced_bf16_on_a_slow_cpu_runs_but_warns_with_the_measured_slowdown(monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_matmul_probe", lambda: MatmulProbe(False, 80.0, 2.0))
    assert choose_precision("bf16", CPU).bf16
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
