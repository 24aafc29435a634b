"""Text input: translate's output has exactly one line per input line, in order, whatever the bytes;
corpus reading either yields clean lines or stops with a sentence (property-based, with hypothesis)."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fs2mini.errors import UserError
from fs2mini.generation import GenerationConfig
from fs2mini.pipeline import INNER_LINE_BREAK, Skipped, read_text
from fs2mini.translate import _translate_stream


class EchoTranslator:
    """Stands in for a model: 'translates' a line to itself in brackets, with a line break inside."""

    def translate(self, lines, cfg, on_truncated):
        return [f"[{line}]\n\u2028x" if line.strip() else "" for line in lines]  # blank in, blank out


line_bytes = st.one_of(st.binary(max_size=20), st.text(max_size=12).map(lambda t: t.encode("utf-8")),
                       st.sampled_from([b"\r", b"\xef\xbb\xbf", b"a\rb", b"\xff", b"\xc3", "\u2028".encode(), b"\x85"]))


def translate_bytes(data: bytes) -> tuple[list[str], str | None]:
    error = None
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            _translate_stream(EchoTranslator(), io.BytesIO(data), "input", GenerationConfig(batch_size=1))
        except UserError as err:
            error = str(err)
    return out.getvalue().split("\n")[:-1], error


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.lists(line_bytes, max_size=3).map(b"".join), max_size=8), crlf=st.booleans())
def test_translate_prints_one_line_per_input_line_or_stops_cleanly(lines, crlf):
    data = b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)
    lines = data.split(b"\n")[:-1]  # a generated piece may hold b"\n" itself: the input's lines are these
    out, error = translate_bytes(data)
    if error is not None and ("UTF-16" in error or "UTF-32" in error or "CR (" in error):
        return  # refused before translating: the whole file is in another encoding
    assert len(out) == len(lines)
    for number, (raw, printed) in enumerate(zip(lines, out), start=1):
        if printed == "":  # a blank line, or one that is not UTF-8 (then the command ends with an error)
            try:
                assert not raw.decode("utf-8").removeprefix("\ufeff" if number == 1 else "").strip() or error is not None
            except UnicodeDecodeError:
                assert error is not None and "not valid UTF-8" in error
        else:
            assert printed.startswith("[") and not INNER_LINE_BREAK.search(printed)


def test_invalid_utf8_names_the_right_line_and_keeps_the_good_lines():
    data = b"".join(f"good {i}\n".encode() for i in range(5000)) + b"bad \xff\n" + b"after\n"
    out, error = translate_bytes(data)
    assert len(out) == 5002 and out[4999].startswith("[good 4999]") and out[5000] == "" and out[5001].startswith("[after]")
    assert "line 5001" in error


@pytest.mark.parametrize("data,expected", [
    (b"a\rb\nc\n", ["[a b]", "[c]"]),  # a stray carriage return stays inside its line
    (b"\xef\xbb\xbfa\nb\n", ["[a]", "[b]"]),  # byte-order mark dropped
    (b"a\r\nb\r\n", ["[a]", "[b]"]),  # Windows line endings
    ("a\u2028b\nc\x85d\n".encode(), ["[a b]", "[c d]"]),  # Unicode line separators are not line ends
    (b"a\nb", ["[a]", "[b]"]),  # no final newline
])
def test_line_terminators_keep_one_output_line_per_input_line(data, expected):
    out, error = translate_bytes(data)
    assert error is None and out == [f"{e}  x" for e in expected]  # the model's own line breaks become spaces too


def test_utf16_input_is_refused_naming_the_encoding():
    out, error = translate_bytes("a\nb\n".encode("utf-16"))
    assert out == [] and "is UTF-16 text (byte-order mark FF FE)" in error


@settings(max_examples=200, deadline=None)
@given(data=st.lists(line_bytes, max_size=12).map(b"".join))
def test_corpus_lines_are_clean_or_the_read_stops_with_a_sentence(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "c.tsv"
    path.write_bytes(data)
    skipped = Skipped()
    try:
        lines = list(read_text(path, skipped))
    except UserError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    assert all(not INNER_LINE_BREAK.search(line) for _, line in lines)
    numbers = [n for n, _ in lines]
    assert numbers == sorted(set(numbers))
    assert len(lines) + sum(skipped.values()) == data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
