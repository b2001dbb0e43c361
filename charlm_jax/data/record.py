"""The text a run trained on: where it came from, how long it is and its sha256, kept with every checkpoint.

A run that remembers its text can be resumed and scored without being told the text again, and a resume
given another text is refused even when that text happens to have the same characters (a shuffled copy, a
newer edition): the sha256 of the raw UTF-8 text tells them apart, where the vocabulary cannot.

The identity is the sha256 of the text's UTF-8 bytes before lower-casing, which is also the sha256 of the
file it was read from and the ``source_sha256`` a prepared corpus records: a run prepared from a file and
the same file read as text are the same text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charlm_jax.errors import worded

if TYPE_CHECKING:
    from charlm_jax.data.prepared import PreparedCorpus

# How a text reached the run; all but "string" can be read again from ``source``.
KINDS = ("file", "url", "corpus", "prepared", "string")


@dataclass(frozen=True)
class TextRecord:
    """Where a run's text came from (``source``: a path, URL, built-in name or prepared directory; None for
    a string made in Python), its length in characters and the sha256 of its UTF-8 bytes."""

    kind: str
    source: str | None
    characters: int
    sha256: str

    def describe(self) -> str:
        where = {"corpus": f"the built-in corpus {self.source!r}", "string": "a string passed to fit"}.get(
            self.kind, f"{self.source!r}"
        )
        return f"{where} ({self.characters:,} characters, sha256 {self.sha256[:12]})"

    @property
    def readable(self) -> bool:
        """Whether the text can be read again without the caller passing it."""
        return self.kind != "string" and self.source is not None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "characters": self.characters, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TextRecord | None:
        if data is None:
            return None
        return cls(str(data["kind"]), data.get("source"), int(data["characters"]), str(data["sha256"]))


def text_sha256(text: str) -> str:
    # surrogatepass: a Python string may hold lone surrogates that no file would; they still hash.
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def record_of(text: str | PreparedCorpus) -> TextRecord:
    """The record of a training text: a ``load_text`` result knows its source, a bare string does not."""
    from charlm_jax.data.corpus import SourcedText
    from charlm_jax.data.prepared import PreparedCorpus

    if isinstance(text, PreparedCorpus):
        return TextRecord("prepared", str(text.path.resolve()), text.num_chars, text.source_sha256)
    if isinstance(text, SourcedText):
        return TextRecord(text.kind, text.source, len(text), text_sha256(text))
    return TextRecord("string", None, len(text), text_sha256(text))


def read_recorded_text(record: TextRecord | None, where: str, units: str = "chars") -> str | PreparedCorpus:
    """The text a record names, read again and checked against its sha256; one line when it cannot be."""
    if record is None:
        raise worded(f"the run in {where} recorded no text (an imported model given none): pass the {{text}}")
    if not record.readable:
        raise worded(
            f"the run in {where} trained on a string passed to fit, which it cannot read again: pass that string "
            "as its {text}"
        )
    from charlm_jax.data.corpus import load_text
    from charlm_jax.data.prepared import open_prepared

    if record.kind in ("file", "prepared") and not Path(str(record.source)).exists():
        raise worded(
            f"the run in {where} trained on {record.source!r}, which is gone: put it back, or pass the run's {{text}}"
        )
    text = open_prepared(str(record.source)) if record.kind == "prepared" else load_text(record.source, units=units)
    check_same_text(record, record_of(text), where)
    return text


def check_same_text(saved: TextRecord | None, given: TextRecord, where: str) -> None:
    """Refuse a resume whose text differs from the run's own (by sha256: the same characters are not enough)."""
    if saved is None or not saved.sha256 or not given.sha256 or saved.sha256 == given.sha256:
        return
    raise worded(
        f"the run in {where} trained on {saved.describe()}, not on {given.describe()}: pass the run's own "
        "{text} (or none: it is read again) with {resume}, or start another run in another {out}"
    )
