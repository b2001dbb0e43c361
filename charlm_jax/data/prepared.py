"""Prepared corpora: a text's ids written once to disk, read as a memory map.

A corpus of 10^8 characters held as a Python string and then as int32 ids costs ~9 bytes per
character before training starts. ``prepare`` streams the text through the encoder in blocks
(never holding it whole) and writes, in one directory:

* ``ids.bin``: every character's id, in the smallest unsigned type that holds the vocabulary
  (uint8 up to 256 characters, else uint16, else uint32), raw, in text order;
* ``meta.json``: the vocabulary, the dtype, the length, whether the text was lower-cased and
  the source file's sha256 (what an automatic preparation is keyed by).

One file of the whole text, not nanoGPT's ``train.bin``/``val.bin``: the held-out tail is a
training choice (``--val-fraction``, saved with each run), so one prepared corpus serves any split,
and a run's split is the same whether it read the text or its prepared ids. Training and ``eval``
read windows from the memory map: only the pages a batch touches are read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm_jax.data.corpus import file_sha256
from charlm_jax.data.windows import Vocab, prepare_text, text_bytes
from charlm_jax.errors import CharLMError, MachineError

IDS_NAME, META_NAME = "ids.bin", "meta.json"
FORMAT = 1
# Characters decoded, encoded and written per block: ~16M code points at once keep numpy's work
# vectorised and the peak memory of a block (~100 MB) independent of the corpus.
BLOCK_CHARS = 1 << 24
# Every Unicode code point: the encoder is one table lookup per character.
CODE_POINTS = 0x110000


@dataclass(frozen=True)
class PreparedCorpus:
    """A prepared corpus on disk: ``ids`` is a read-only memory map of ``ids.bin``."""

    path: Path
    vocab: Vocab
    ids: np.ndarray  # (num_chars,) memory map, uint8 / uint16 / uint32
    lowercase: bool
    source_sha256: str

    @property
    def units(self) -> str:
        return self.vocab.units

    @property
    def num_chars(self) -> int:
        return int(self.ids.shape[0])

    def text(self, start: int, stop: int) -> str:
        """The characters ``[start, stop)``, decoded (prompts and excerpts; never the whole corpus)."""
        return self.vocab.decode(self.ids[start:stop])


def smallest_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise AssertionError("unreachable: Unicode has fewer than 2**32 code points")


def text_blocks(
    path: Path, lowercase: bool, block_chars: int = BLOCK_CHARS, units: str = "chars"
) -> Iterator[np.ndarray]:
    """The file's code points in blocks (uint32), lower-cased per block when asked, as training would; for
    ``units="bytes"`` its UTF-8 bytes (uint8), lower-cased as text first, undecodable bytes kept as they are."""
    try:
        errors = "surrogateescape" if units == "bytes" else "strict"
        with open(path, encoding="utf-8", errors=errors, newline="") as handle:
            while block := handle.read(block_chars):
                block = prepare_text(block, lowercase)
                if units == "bytes":
                    yield np.frombuffer(text_bytes(block, str(path)), np.uint8)
                else:
                    yield np.frombuffer(block.encode("utf-32-le"), np.uint32)
    except UnicodeDecodeError as error:
        raise CharLMError(
            f"{str(path)!r} is not UTF-8 text (bad byte at offset {error.start} of a block): "
            "convert it (e.g. iconv -f latin1 -t utf-8), or prepare its bytes with --units bytes"
        ) from None
    except OSError as error:
        raise CharLMError(f"cannot read {str(path)!r} ({error.strerror}): check the path and its permissions") from None


def prepare(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    lowercase: bool = True,
    block_chars: int = BLOCK_CHARS,
    progress: Callable[[int], None] | None = None,
    units: str = "chars",
) -> PreparedCorpus:
    """Encode the UTF-8 file ``source`` into ``out_dir`` (see the module docstring); returns it opened.

    Two streaming passes: the first finds the vocabulary (a histogram of code points, so each
    block costs one ``bincount``), the second encodes through a code point -> id table and
    appends to ``ids.bin``. Files are written under temporary names and renamed when complete,
    so an interrupted preparation leaves nothing a later run would trust. ``progress`` is called
    with the characters done so far (both passes: up to twice the length). ``units="bytes"``: the ids are
    the file's UTF-8 bytes (any file), the vocabulary all 256 byte values.
    """
    source, out = Path(source), Path(out_dir)
    if not source.is_file():
        raise CharLMError(f"{str(source)!r} is not a file: pass the path of a UTF-8 text file")
    seen = np.zeros(CODE_POINTS, bool)
    total = 0
    for codes in text_blocks(source, lowercase, block_chars, units):
        seen |= np.bincount(codes, minlength=CODE_POINTS).astype(bool)
        total += len(codes)
        if progress:
            progress(total)
    if total == 0:
        raise CharLMError(f"{str(source)!r} is empty: pass a file with some text in it")
    codes_in_text = np.flatnonzero(seen)
    vocab = Vocab.of_bytes() if units == "bytes" else Vocab("".join(map(chr, codes_in_text)))
    dtype = smallest_dtype(vocab.size)
    table = np.zeros(CODE_POINTS, dtype)
    table[np.arange(vocab.size) if units == "bytes" else codes_in_text] = np.arange(vocab.size, dtype=dtype)
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=out, prefix=".ids-", delete=False)
    except OSError as error:
        raise MachineError(
            f"cannot write the prepared corpus into {str(out)!r} ({error.strerror}): pass an --out you can write to"
        ) from None
    try:
        written = 0
        with handle:
            for codes in text_blocks(source, lowercase, block_chars, units):
                handle.write(table[codes].tobytes())
                written += len(codes)
                if progress:
                    progress(total + written)
        meta = {
            "format": FORMAT,
            "chars": vocab.chars,
            "units": vocab.units,
            "dtype": dtype.name,
            "num_chars": total,
            "lowercase": lowercase,
            "source": str(source),
            "source_sha256": file_sha256(source),
        }
        meta_temp = out / f".{META_NAME}.tmp"
        meta_temp.write_text(json.dumps(meta))
        os.replace(handle.name, out / IDS_NAME)
        os.replace(meta_temp, out / META_NAME)
    except OSError as error:
        raise MachineError(
            f"cannot write the prepared corpus into {str(out)!r} ({error.strerror}): free space or pass another --out"
        ) from None
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
    return open_prepared(out)


def is_prepared(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / META_NAME).is_file() and (path / IDS_NAME).is_file()


def open_prepared(path: str | os.PathLike) -> PreparedCorpus:
    """A prepared directory, its ids memory-mapped read-only; a damaged one is a one-line error."""
    path = Path(path)
    if not is_prepared(path):
        raise CharLMError(
            f"{str(path)!r} is not a prepared corpus (no {META_NAME} and {IDS_NAME}): run "
            f"charlm-jax prepare --text FILE --out {path}"
        )
    try:
        meta = json.loads((path / META_NAME).read_text())
        dtype = np.dtype(meta["dtype"])
        vocab = Vocab(meta["chars"], meta["units"])
        expected = int(meta["num_chars"]) * dtype.itemsize
    except (ValueError, KeyError, TypeError) as error:
        raise CharLMError(
            f"{str(path / META_NAME)!r} is damaged ({type(error).__name__}): prepare the corpus again"
        ) from None
    size = (path / IDS_NAME).stat().st_size
    if size != expected:
        raise CharLMError(
            f"{str(path / IDS_NAME)!r} has {size:,} bytes, {expected:,} expected: the preparation "
            "was cut short or the file changed; prepare the corpus again"
        )
    ids = np.memmap(path / IDS_NAME, dtype=dtype, mode="r", shape=(int(meta["num_chars"]),))
    return PreparedCorpus(
        path=path,
        vocab=vocab,
        ids=ids,
        lowercase=bool(meta["lowercase"]),
        source_sha256=str(meta.get("source_sha256", "")),
    )


def prepared_for(
    source: str | os.PathLike,
    cache: str | os.PathLike,
    lowercase: bool,
    progress: Callable[[int], None] | None = None,
    units: str = "chars",
) -> PreparedCorpus:
    """The prepared corpus of ``source`` in ``cache``, reused when its sha256 and lower-casing match."""
    cache = Path(cache)
    if is_prepared(cache):
        corpus = open_prepared(cache)
        same = corpus.lowercase == lowercase and corpus.units == units
        if same and corpus.source_sha256 == file_sha256(Path(source)):
            return corpus
    return prepare(source, cache, lowercase=lowercase, progress=progress, units=units)


def corpus_ids(source: str | PreparedCorpus, lowercase: bool, units: str = "chars") -> tuple[Vocab, np.ndarray]:
    """The vocabulary and ids of a training text: encoded from a string, or a prepared corpus's memory map."""
    if isinstance(source, PreparedCorpus):
        if source.units != units:
            raise CharLMError(
                f"the prepared corpus {str(source.path)!r} holds {source.units} but this run reads {units}: prepare "
                f"it again with --units {units}, or change the flag"
            )
        if source.lowercase != lowercase:
            state = "lower-cased" if source.lowercase else "not lower-cased"
            raise CharLMError(
                f"the prepared corpus {str(source.path)!r} was {state} but this run's --lowercase is "
                f"{lowercase}: prepare it again to match, or change the flag"
            )
        return source.vocab, source.ids
    text = prepare_text(source, lowercase)
    vocab = Vocab.for_units(units, text)
    return vocab, vocab.encode(text)
