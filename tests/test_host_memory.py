"""keep_freed_memory: a training step stops faulting in fresh pages once the thresholds are raised."""

import platform
import subprocess
import sys
import textwrap

import pytest

import fs2mini.trainer
from conftest import tiny_config

# In a fresh process (the thresholds are per process): how much of a freed 30 MB block stays resident.
PROBE = textwrap.dedent("""
    import os, sys, torch
    from fs2mini.host_memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def resident_mb():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    before = resident_mb()
    block = torch.ones(30 << 18)  # 30 MB of fp32, written
    del block
    print(resident_mb() - before)
""")


def resident_after_free_mb(mode: str) -> float:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_freed_blocks_stay_in_the_process_for_the_next_step():
    # glibc's default maps a block this size on its own and unmaps it when freed: the next step faults
    # 30 MB of fresh pages in again. Kept, the block stays in the heap, resident, for reuse.
    # (The effect on a real step, 17,000 page faults per update to none: docs/results.md.)
    assert resident_after_free_mb("default") < 10
    assert resident_after_free_mb("keep") > 28


def test_training_keeps_freed_memory(reversal_tsv, tmp_path, tokenizer_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(fs2mini.trainer, "keep_freed_memory", lambda: calls.append(True))
    fs2mini.trainer.train(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=2))
    assert calls == [True]


def test_malloc_settings_the_user_made_are_left_alone(monkeypatch):
    from fs2mini.host_memory import keep_freed_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
