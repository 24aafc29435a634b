"""Validation's translation files (RUN_DIR/translations) under faults: a full disk is one `cannot write` line, and the
temporary file of a write a kill interrupted does not outlive the next run."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import pytest

from conftest import tiny_config
from fs2mini.errors import UserError
from fs2mini.rundir import TRANSLATIONS_DIR
from fs2mini.trainer import train


@pytest.fixture()
def cfg(reversal_tsv, tokenizer_cache, tmp_path):
    return tiny_config(reversal_tsv, tmp_path / "run", tokenizer_cache, max_steps=2, validate_every=2, checkpoint_every=2,
                       valid_translate_sentences=4)


def test_a_full_disk_when_the_translations_folder_is_made_is_one_cannot_write_line(cfg, monkeypatch):
    """The folder was made outside the write's error handling: a full disk there was an OSError traceback."""
    make = Path.mkdir

    def full(self, *args, **kwargs):
        if self.name == TRANSLATIONS_DIR:
            raise OSError(errno.ENOSPC, "No space left on device")
        return make(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(UserError, match=rf"^cannot write {cfg.run_dir / TRANSLATIONS_DIR}/valid_step_00000002.tsv: "
                                        "No space left on device; the run's other files are intact$"):
        train(cfg)
    assert not (cfg.run_dir / TRANSLATIONS_DIR).exists()


def test_a_killed_write_of_translations_leaves_no_temporary_file_after_the_next_run(cfg):
    run_dir = train(cfg)
    translations = run_dir / TRANSLATIONS_DIR
    killed = translations / ".valid_step_00000004.tsv.k1ll3d.tmp"  # what a SIGKILL inside write_atomically leaves
    killed.write_text("src\tref\thalf a li")
    train(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, max_steps=4)))
    assert sorted(p.name for p in translations.iterdir()) == ["valid_step_00000002.tsv", "valid_step_00000004.tsv"]
