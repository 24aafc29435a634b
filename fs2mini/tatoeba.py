"""Download Tatoeba sentence pairs (manythings.org's Anki export) for `recipes/tatoeba.py`.

`python -m fs2mini.tatoeba --lang fra` fetches `fra-eng.zip` and extracts `fra.txt`
(`English<TAB>French<TAB>attribution` per line) into `examples/`, which is what the fairseq2
tutorial does with wget + unzip. Standard library only; offline it stops with a clear message.
"""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import tyro

from fs2mini.errors import UserError, exit_on_user_error

URL_TEMPLATE = "https://www.manythings.org/anki/{lang}-eng.zip"


def download_tatoeba(lang: str = "fra", dest_dir: Path = Path("examples"), url: str | None = None, timeout_s: float = 30.0) -> Path:
    """Download the `{lang}-eng.zip` pairs and extract `{lang}.txt` into `dest_dir`.

    Args:
        lang: Tatoeba/manythings language code of the non-English side (fra, deu, spa, ...).
        dest_dir: Directory that receives `{lang}.txt`.
        url: Zip to download; default is manythings.org's file for `lang`.
        timeout_s: Network timeout in seconds.
    """
    url = url or URL_TEMPLATE.format(lang=lang)
    member = f"{lang}.txt"
    # manythings.org rejects Python's default user agent.
    request = urllib.request.Request(url, headers={"User-Agent": "Mozilla/5.0 (fs2mini download helper)"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(
            f"cannot download {url} ({reason}); without network access, download it elsewhere and "
            f"unzip {member} into {dest_dir}/"
        ) from None
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
        data = archive.read(member)
    except (zipfile.BadZipFile, KeyError):
        raise UserError(f"{url} is not a zip archive containing {member}") from None
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / member
    partial = target.with_suffix(".txt.partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def main() -> None:
    with exit_on_user_error():
        path = tyro.cli(download_tatoeba)
        print(f"wrote {path} ({sum(1 for _ in path.open('rb')):,} sentence pairs)")


if __name__ == "__main__":
    main()
