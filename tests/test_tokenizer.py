"""Tokenizer: language tokens, layout, round trip, cache keyed by corpus and settings."""

import subprocess
import sys

from fs2mini.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, TokenizerConfig, load_or_train_tokenizer


def test_language_tokens_are_real_pieces_and_layout_matches_nllb(reversal_tokenizer):
    tok = reversal_tokenizer
    source = tok.encode_source(["a b c"], "eng")[0]
    target = tok.encode_target(["c b a"], "fra")[0]
    assert tok.pieces(source[:1]) == ["__eng__"] and source[-1] == EOS_ID
    assert target[:2] == [EOS_ID, tok.lang_ids["fra"]] and target[-1] == EOS_ID
    assert UNK_ID not in tok.lang_ids.values()
    assert tok.target_prefix("fra") == target[:2]
    info = tok.vocab_info
    assert (info.size, info.pad_idx, info.unk_idx, info.bos_idx, info.eos_idx) == (28, PAD_ID, UNK_ID, BOS_ID, EOS_ID)


def test_round_trip_and_decode_strips_specials(reversal_tokenizer):
    tok = reversal_tokenizer
    for text in ["a b c", "l k j i h g f e"]:
        ids = tok.encode_target([text], "fra")[0]
        assert tok.decode(ids + [PAD_ID, PAD_ID]) == text


def test_cache_is_reused_for_same_text_and_invalidated_when_corpus_changes(tmp_path):
    cfg = TokenizerConfig(vocab_size=15, cache_dir=tmp_path)
    text = ["a b c d", "e f g h", "a c e g"] * 50
    first = load_or_train_tokenizer(cfg, text, ["eng", "fra"])
    mtime = first.model_path.stat().st_mtime_ns
    again = load_or_train_tokenizer(cfg, text, ["eng", "fra"])
    assert again.model_path == first.model_path and again.model_path.stat().st_mtime_ns == mtime
    changed = load_or_train_tokenizer(cfg, text + ["h g f e"], ["eng", "fra"])
    assert changed.model_path != first.model_path
    bigger = load_or_train_tokenizer(TokenizerConfig(vocab_size=16, cache_dir=tmp_path), text, ["eng", "fra"])
    assert bigger.model_path != first.model_path
    assert len(list(tmp_path.glob("*.model"))) == 3


def test_a_streamed_corpus_is_sampled_over_its_whole_length_and_keyed_by_its_fingerprint(tmp_path):
    # The first half of the stream uses letters a-f, the second half m-r: a sample of the first lines only
    # would leave m-r as <unk>. The stream is a generator: it is read only when a model must be trained.
    def stream():
        for i in range(4000):
            yield " ".join("abcdef"[(i + k) % 6] for k in range(4)) if i < 2000 else " ".join("mnopqr"[(i + k) % 6] for k in range(4))

    cfg = TokenizerConfig(vocab_size=20, max_training_sentences=300, cache_dir=tmp_path)
    tok = load_or_train_tokenizer(cfg, stream(), ["eng", "fra"], fingerprint="corpus-v1")
    for text in ("a b c", "m n o", "r q p"):
        assert UNK_ID not in tok.piece_ids([text])[0], text
    unread = iter(())  # a cached model: the text is not needed
    assert load_or_train_tokenizer(cfg, unread, ["eng", "fra"], fingerprint="corpus-v1").model_path == tok.model_path
    assert load_or_train_tokenizer(cfg, stream(), ["eng", "fra"], fingerprint="corpus-v2").model_path != tok.model_path


def test_a_model_cut_off_by_a_full_disk_never_reaches_the_cache(tmp_path):
    """Sentencepiece's C++ ignores a failed write; under a file-size limit (writes fail as on a full disk) the training
    is one `cannot write` error and the cache holds no model, so the next run trains again instead of failing."""
    script = ("import resource, signal, sys\n"
              "from fs2mini.errors import exit_on_user_error\n"
              "from pathlib import Path\n"
              "from fs2mini.tokenizer import TokenizerConfig, load_or_train_tokenizer\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))\n"
              "with exit_on_user_error():\n"
              f"    load_or_train_tokenizer(TokenizerConfig(vocab_size=60, cache_dir=Path({str(tmp_path)!r})), "
              "[' '.join(chr(97 + (i * j) % 26) * (1 + j % 3) for j in range(12)) for i in range(400)], ['eng', 'fra'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: cannot write" in done.stderr and "incomplete" in done.stderr, done.stderr
    assert list(tmp_path.glob("*.model")) == []
