"""What text a command reads: a string, a download, or a prepared corpus for a file too large to hold twice."""

from __future__ import annotations

import argparse
from pathlib import Path

from charlm_jax.cli.flags import AUTO_PREPARE_BYTES
from charlm_jax.errors import CharLMError


def text_length(text) -> int | None:
    """Characters of a run's text: a string or a prepared corpus (None when the run reads its own or the
    built-in corpus)."""
    if text is None:
        return None
    return len(text) if isinstance(text, str) else text.num_chars


def training_text(args: argparse.Namespace, lowercase: bool, units: str):
    """The text a run trains on: a string, or a prepared corpus (--data, or a --text file over
    AUTO_PREPARE_BYTES, prepared into <out>/prepared once and reused while its sha256 matches), or None
    when no text is named (the run's own text on --resume, else the built-in corpus)."""
    from charlm_jax.data.corpus import load_text
    from charlm_jax.data.prepared import open_prepared, prepared_for

    if args.data is not None:
        return open_prepared(args.data)
    if args.text is None and args.corpus is None:
        return None  # fit's choice: the run's own text for --resume, the built-in corpus for a new run
    if args.text is not None:
        # A download is checked before it is cached; a local file once, where it is read.
        downloaded = args.text.startswith(("http://", "https://"))
        path = local_text_file(args.text, args.sha256 if downloaded else None)
        if path.is_file() and path.stat().st_size > AUTO_PREPARE_BYTES:
            path = local_text_file(args.text, args.sha256)
            cache = Path(args.out) / "prepared"
            print(
                f"{path} is {path.stat().st_size / 2**20:,.0f} MiB: reading it through a prepared corpus in "
                f"{cache} (kept for --resume)",
                flush=True,
            )
            return prepared_for(path, cache, lowercase, units=units)
    return load_text(args.text if args.text is not None else args.corpus, sha256=args.sha256, units=units)


def local_text_file(text: str, sha256: str | None) -> Path:
    """The file ``--text`` names: a path, or a URL's download in the cache (``fetch_url``); its checksum
    checked against ``sha256`` when given (streamed: the file may be larger than memory)."""
    from charlm_jax.data.corpus import fetch_url, file_sha256

    if text.startswith(("http://", "https://")):
        return fetch_url(text, sha256=sha256)
    path = Path(text)
    if sha256 is not None and path.is_file() and (actual := file_sha256(path)) != sha256.lower():
        raise CharLMError(f"sha256 of {path} is {actual}, expected {sha256}: the file changed or the checksum is wrong")
    return path
