"""Runs survive what happens to real runs: SIGTERM, SIGKILL, a full disk, NaNs, a corrupt checkpoint."""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import fs2mini.checkpoint
from fs2mini.checkpoint import TrainState, list_checkpoints, load_checkpoint
from fs2mini.errors import UserError
from helpers import read_metrics
from fs2mini.task import Seq2Seq
from fs2mini.trainer import StepResult, _count_bad_step, train

from conftest import tiny_config


def cli_args(tsv: Path, cache: Path, out: Path, steps: int) -> list[str]:
    """The tiny reversal config as command-line flags, as a user would resume it."""
    return [sys.executable, "-m", "fs2mini.train", "--output-dir", str(out), "data.corpus:tsv", "--data.corpus.path", str(tsv),
            "--tokenizer.vocab-size", "28", "--tokenizer.cache-dir", str(cache), "--data.max-tokens", "512",
            "--model.model-dim", "64", "--model.num-encoder-layers", "2", "--model.num-decoder-layers", "2",
            "--model.ffn-inner-dim", "128", "--model.dropout-p", "0.1", "--trainer.max-steps", str(steps),
            "--trainer.checkpoint-every", "20", "--trainer.validate-every", "1000", "--trainer.log-every", "1",
            "--trainer.progress", "lines"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])["model"]


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and any(m["step"] >= step for m in read_metrics(metrics) if m["split"] == "train"):
            return
        time.sleep(0.02)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_mid_epoch_then_resumed_ends_bit_identical(how, reversal_tsv, tokenizer_cache, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(cli_args(reversal_tsv, tokenizer_cache, straight, 90), check=True, capture_output=True)

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(cli_args(reversal_tsv, tokenizer_cache, resumed, 90), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_step(resumed, 30, process)  # past the step-20 checkpoint, inside the first epoch (~50 batches)
    process.send_signal(how)
    _, stderr = process.communicate(timeout=120)
    if how == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert "stopped by SIGTERM after step" in stderr and "Run the same command again to resume" in stderr
        assert "Traceback" not in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    stopped_at = load_checkpoint(list_checkpoints(resumed / "checkpoints")[-1])["step"]
    assert 20 <= stopped_at < 90

    again = subprocess.run(cli_args(reversal_tsv, tokenizer_cache, resumed, 90), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resumed at step {stopped_at}" in again.stderr
    expected = final_weights(straight)
    for name, tensor in final_weights(resumed).items():
        assert torch.equal(tensor, expected[name]), name
    train_steps = [m["step"] for m in read_metrics(resumed / "metrics.jsonl") if m["split"] == "train"]
    assert train_steps == list(range(1, 91)), "each step logged exactly once"


class FillsUp:
    """A file whose disk fills after `room` bytes: what a real full disk does to torch.save's writes."""

    def __init__(self, handle, room):
        self.handle, self.room = handle, room

    def write(self, data):
        if len(data) > self.room:
            self.handle.write(bytes(data[:self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.mark.parametrize("room", [0, 3000])  # at the first byte, or inside the zip archive (torch's RuntimeError)
def test_disk_full_keeps_previous_checkpoint_and_says_so(room, reversal_tsv, tokenizer_cache, tmp_path, monkeypatch):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=4, checkpoint_every=2)
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):  # the disk fills while step 4's checkpoint is written
        handle = real_fdopen(fd, *args, **kwargs)
        return FillsUp(handle, room) if Path(f"/proc/self/fd/{fd}").resolve().name.startswith(".step_00000004.pt.") else handle

    monkeypatch.setattr(fs2mini.checkpoint.os, "fdopen", fdopen)
    with pytest.raises(UserError, match=r"cannot write checkpoint .*step_00000004\.pt: No space left on device; earlier "
                                        r"checkpoints are intact"):
        train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "step_00000002.pt"]  # no partial file left
    assert load_checkpoint(checkpoints / "step_00000002.pt")["step"] == 2


def test_disk_full_at_resume_is_one_error_line_from_the_lock(reversal_tsv, tokenizer_cache, tmp_path, monkeypatch):
    """The lock's PID is the first thing a resume writes."""
    import fs2mini.rundir

    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=2, checkpoint_every=2)
    run = train(cfg)
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs2mini.rundir.os, "pwrite", no_space)
    with pytest.raises(UserError) as error:
        train(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, max_steps=4)))
    assert str(error.value).startswith(f"cannot write {run / '.fs2mini-lock'}: No space left on device")
    assert {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # no lock left


class NaNAfter(Seq2Seq):
    """Real losses for the first 3 training steps, then NaN: what a diverging run looks like."""

    training_calls = 0

    def compute_loss(self, model, batch):
        loss, n = super().compute_loss(model, batch)
        if model.training:
            self.training_calls += 1
            if self.training_calls > 3:
                loss = loss * float("nan")
        return loss, n


@dataclass(frozen=True)
class NaNAfterConfig:
    def build(self, vocab):
        return NaNAfter(0.0, vocab.pad_idx)


def test_non_finite_updates_are_skipped_then_the_run_stops(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=50, checkpoint_every=2, log_every=1, keep_last_checkpoints=5,
                      max_bad_steps=4)
    with pytest.raises(UserError, match=r"stopping at step 7: 4 consecutive updates had a non-finite loss or gradient"):
        train(dataclasses.replace(cfg, task=NaNAfterConfig()))
    before_nan = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000002.pt")
    assert before_nan["step"] == 2
    skipped = [m["skipped_steps"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if m["split"] == "train"]
    assert skipped == [0, 0, 0, 1, 2, 3]
    weights_at_4 = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000004.pt")["model"]
    weights_at_6 = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000006.pt")["model"]
    for name in weights_at_4:  # skipped updates leave the weights untouched
        assert torch.equal(weights_at_4[name], weights_at_6[name]), name


def test_fp16_loss_scale_overflows_are_skipped_but_never_stop_the_run():
    """GradScaler skips updates whose scaled gradients overflow while it finds its scale: by design, not divergence."""
    state = TrainState()
    for _ in range(10):
        _count_bad_step(state, StepResult(4.0, 10, math.inf, applied=False, overflowed=True), max_bad_steps=2)
    assert (state.bad_steps, state.skipped_steps) == (0, 10)
    _count_bad_step(state, StepResult(math.nan, 10, math.nan, applied=False), max_bad_steps=2)
    with pytest.raises(UserError, match=r"stopping at step 0: 2 consecutive updates had a non-finite loss"):
        _count_bad_step(state, StepResult(math.nan, 10, math.nan, applied=False), max_bad_steps=2)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reversal_tsv, tokenizer_cache, tmp_path, capsys):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=4, checkpoint_every=2)
    train(cfg)
    newest = tmp_path / "run" / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    train(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, max_steps=6)))
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert f"warning: checkpoint {newest} is corrupt" in err and "resumed at step 2" in err
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000006.pt")["step"] == 6


class NaNWeightsAdamW(torch.optim.AdamW):
    """A real AdamW for 2 updates; the 3rd writes NaN into a weight (what an exploding update does)."""

    def step(self, closure=None):
        result = super().step(closure)
        self.updates = getattr(self, "updates", 0) + 1
        if self.updates == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result


@dataclass(frozen=True)
class NaNWeightsConfig:
    lr: float = 3e-3

    def build(self, params):
        return NaNWeightsAdamW(params, lr=self.lr)


def test_non_finite_weights_stop_the_run_and_are_never_saved(reversal_tsv, tokenizer_cache, tmp_path):
    cfg = tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=6, checkpoint_every=1, validate_every=1,
                      valid_translate_sentences=2, keep_last_checkpoints=10)
    with pytest.raises(UserError, match=r"stopping at step 3: the update made the weights non-finite .* up to step 2 are intact"):
        train(dataclasses.replace(cfg, optimizer=NaNWeightsConfig()))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step_00000001.pt", "step_00000002.pt"]
    for path in [*list_checkpoints(checkpoints), checkpoints / "best.pt"]:
        assert all(torch.isfinite(t).all() for t in load_checkpoint(path)["model"].values()), path


def test_sighup_saves_a_checkpoint_like_sigterm(reversal_tsv, tokenizer_cache, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(cli_args(reversal_tsv, tokenizer_cache, run, 400), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_for_step(run, 5, process)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGHUP, stderr
    assert "stopped by SIGHUP after step" in stderr and "Traceback" not in stderr
    assert 5 <= load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] < 400


def test_a_closed_stderr_does_not_stop_training(reversal_tsv, tokenizer_cache, tmp_path):
    """`python -m fs2mini.train ... 2>&1 | head -1`: the reader leaves after the first line."""
    run = tmp_path / "run"
    process = subprocess.Popen(cli_args(reversal_tsv, tokenizer_cache, run, 30), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    process.stdout.readline()
    process.stdout.close()
    assert process.wait(timeout=120) == 0
    assert load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] == 30
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl") if m["split"] == "train"] == list(range(1, 31))


def test_disk_full_at_the_start_is_one_sentence_and_leaves_nothing(reversal_tsv, tokenizer_cache, tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs2mini.checkpoint.os, "fsync", no_space)
    with pytest.raises(UserError, match=r"cannot write .*tokenizer.model: No space left on device"):
        train(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=2))
    assert not (tmp_path / "run").exists()  # created for the run, removed again: no partial file


def test_disk_full_while_logging_keeps_whole_lines_and_stops(reversal_tsv, tokenizer_cache, tmp_path, monkeypatch):
    import fs2mini.metrics

    class FillsUp:
        def __init__(self, handle):
            self.handle, self.lines = handle, 0

        def write(self, text):
            self.lines += 1
            if self.lines == 3:
                self.handle.write(text[:5])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(text)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    real_open = open
    monkeypatch.setattr(fs2mini.metrics, "open", lambda *a, **k: FillsUp(real_open(*a, **k)), raising=False)
    with pytest.raises(UserError, match=r"cannot write .*metrics.jsonl: No space left on device; it keeps every line"):
        train(tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=20, log_every=1))
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2  # whole lines only


def _sentences(count):
    words = "the cat sat on a mat and dog ran far le chat est sur tapis un chien".split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 5)) for i in range(count)]


def _spy_on_sentencepiece(monkeypatch, after=lambda: None):
    """Record how each sentencepiece training ended ("returned" or the exception's name); `after()` runs once it returned."""
    import fs2mini.tokenizer

    real_train, ends = fs2mini.tokenizer.spm.SentencePieceTrainer.train, []

    def train_and_record(**kwargs):
        try:
            real_train(**kwargs)
        except BaseException as err:
            ends.append(type(err).__name__)
            raise
        ends.append("returned")
        after()

    monkeypatch.setattr(fs2mini.tokenizer.spm.SentencePieceTrainer, "train", train_and_record)
    return ends


@pytest.fixture
def interactive_sigint():
    """Ctrl-C as a terminal delivers it: Python's default handler. A shell that starts a job in the background (`&`)
    makes it ignore SIGINT, and then Python never turns SIGINT into KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_the_tokenizer_reads_its_text_stops_sentencepiece_at_once(tmp_path, monkeypatch, interactive_sigint):
    from fs2mini.tokenizer import TokenizerConfig, load_or_train_tokenizer

    ends = _spy_on_sentencepiece(monkeypatch)

    def text():
        for index, sentence in enumerate(_sentences(3000)):
            if index == 500:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the corpus is read
            yield sentence

    cache = tmp_path / "spm"
    with pytest.raises(KeyboardInterrupt):
        load_or_train_tokenizer(TokenizerConfig(vocab_size=40, cache_dir=cache), text(), ("eng", "fra"), fingerprint="f")
    assert ends == ["RuntimeError"]  # sentencepiece gave up at once instead of training on the first 500 sentences
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []  # no model, no temporary directory


def test_ctrl_c_once_sentencepiece_trains_keeps_its_model_for_the_next_run(tmp_path, monkeypatch, capsys,
                                                                          interactive_sigint):
    """Python sees a Ctrl-C that comes while sentencepiece's C++ trains only when it returns: the model is done then."""
    from fs2mini.tokenizer import TokenizerConfig, load_or_train_tokenizer

    ends = _spy_on_sentencepiece(monkeypatch, after=lambda: os.kill(os.getpid(), signal.SIGINT))
    cfg = TokenizerConfig(vocab_size=40, cache_dir=tmp_path / "spm")
    with pytest.raises(KeyboardInterrupt):
        load_or_train_tokenizer(cfg, iter(_sentences(3000)), ("eng", "fra"), fingerprint="f")
    assert "its model is kept in" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    tokenizer = load_or_train_tokenizer(cfg, iter(["never read"]), ("eng", "fra"), fingerprint="f")
    assert ends == ["returned"] and tokenizer.vocab_info.size == 40  # the next run trained nothing


def test_a_killed_tokenizer_trainings_temporary_directory_is_removed_by_the_next(tmp_path):
    from fs2mini.tokenizer import TokenizerConfig, load_or_train_tokenizer

    cfg = TokenizerConfig(vocab_size=40, cache_dir=tmp_path / "spm")
    model = load_or_train_tokenizer(cfg, iter(_sentences(300)), ("eng", "fra"), fingerprint="f").model_path
    model.unlink()
    leftover = model.parent / f".{model.name}.4242.tmp"  # SIGKILL while sentencepiece trained (another process)
    leftover.mkdir()
    (leftover / "spm.model").write_bytes(b"half")
    load_or_train_tokenizer(cfg, iter(_sentences(300)), ("eng", "fra"), fingerprint="f")
    assert model.is_file() and not leftover.exists()


def test_atomic_writes_get_the_mode_of_any_file_the_user_writes(tmp_path):
    # mkstemp's 0600 must not leak: a run directory shared with a team (or served read-only) stays readable.
    previous = os.umask(0o027)
    try:
        path = tmp_path / "config.json"
        fs2mini.checkpoint.write_atomically(path, lambda handle: handle.write(b"{}"))
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)
    fs2mini.checkpoint.write_atomically(path, lambda handle: handle.write(b"{}"))
    assert path.stat().st_mode & 0o777 == 0o666 & ~previous
