"""Look inside a model: per character of a text, what it predicted, what it expected next, and every cell.

``inspect(lm, text)`` reads the text once with the state carried (as ``score(mode="stateful")`` and
stateful generation read it), in compiled chunks of ``TRACE_CHUNK`` characters, and keeps per character:

* ``log2p[t]``: the log2-probability the model gave character ``t`` (NaN at ``t = 0``, which nothing
  predicts): ``score(lm, text, mode="stateful")`` is ``log2p[1:]``;
* ``top_ids[t]``, ``top_probs[t]``: the ``top_k`` likeliest next characters after reading ``t``;
* ``c[t]``, ``h[t]``: every layer's cell state and output after reading ``t`` (layers, hidden);
* ``gates[t]`` (``gates=True``): the activated input, forget, candidate and output gates (layers, 4, hidden).

Memory on the host: ``Inspection.bytes_per_char`` (``8 * layers * hidden`` for c and h, 16 more per unit for
the gates, ``8 * top_k`` for the top-k, 8 for the ids and log2p): about 1 KB a character for the book's model,
100 MB for 100K characters. The device holds one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from charlm_jax.data.windows import prepare_text
from charlm_jax.errors import CharLMError

TRACE_CHUNK = 4096
DEFAULT_TOP_K = 5


def unit_label(chars: str, units: str, index: int) -> str:
    """A vocabulary entry, printable (a byte above 0x7f as a backslash, x and two hex digits)."""
    return f"\\x{index:02x}" if units == "bytes" and index >= 0x80 else chars[index]


@dataclass(frozen=True)
class Inspection:
    """What ``inspect`` read (see the module docstring); arrays are numpy, one row per character."""

    text: str  # the text as the model read it (lower-cased when it was trained so)
    ids: np.ndarray  # (n,) int32
    log2p: np.ndarray  # (n,) float64, NaN first
    top_ids: np.ndarray  # (n, k) int32
    top_probs: np.ndarray  # (n, k) float32
    c: np.ndarray  # (n, layers, hidden) float32
    h: np.ndarray  # (n, layers, hidden) float32
    gates: np.ndarray | None  # (n, layers, 4, hidden) float32, or None
    chars: str  # the vocabulary: top_ids index it
    units: str = "chars"  # "bytes": each row is a byte, and ``text`` their UTF-8 decoding

    def labels(self) -> list[str]:
        """One printable label per row: the character; for a byte model the character at its first byte
        (a continuation byte's label is empty), or a backslash, x and two hex digits for a byte that starts none."""
        if self.units != "bytes":
            return list(self.text)
        raw, labels = bytes(int(i) for i in self.ids), []
        for t, byte in enumerate(raw):
            if 0x80 <= byte < 0xC0:
                labels.append("")
                continue
            width = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            try:
                labels.append(raw[t : t + width].decode("utf-8"))
            except UnicodeDecodeError:
                labels.append(f"\\x{byte:02x}")
        return labels

    def row_text(self) -> str:
        """One character per row: the text itself; for a byte model each byte as the code point of its value
        (ASCII bytes are themselves, so quotes, brackets and newlines are where they were)."""
        return self.text if self.units != "bytes" else "".join(self.chars[int(i)] for i in self.ids)

    def vocab_label(self, index: int) -> str:
        return unit_label(self.chars, self.units, index)

    @property
    def bytes_per_char(self) -> int:
        arrays = [self.ids, self.log2p, self.top_ids, self.top_probs, self.c, self.h]
        arrays += [self.gates] if self.gates is not None else []
        return sum(a.nbytes for a in arrays) // max(len(self.ids), 1)

    def surprisal(self) -> np.ndarray:
        """Bits per character, position by position (NaN first)."""
        return -self.log2p


def inspect(lm, text: str, top_k: int = DEFAULT_TOP_K, gates: bool = False, unseen: str = "error") -> Inspection:
    """Read ``text`` with ``lm`` (a ``LanguageModel``) and keep what it saw; see the module docstring.

    The text goes through the model's preprocessing (lower-casing); a character it never saw is refused, or
    left out with ``unseen="skip"`` (``Vocab.encode``). A byte model's rows are bytes.
    """
    from charlm_jax.model.trace import trace_states

    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= lm.vocab.size:
        raise CharLMError(f"top_k must be an integer from 1 to the vocabulary's {lm.vocab.size}, got {top_k!r}")
    prepared = prepare_text(text, lm.config.lowercase)
    ids = lm.vocab.encode(prepared, what="text", unseen=unseen)
    if len(ids) < 2:
        raise CharLMError("the text to inspect has fewer than 2 characters the model knows: pass a longer text")
    n, model = len(ids), lm.model
    log2p = np.full(n, np.nan)
    top_ids, top_probs = np.zeros((n, top_k), np.int32), np.zeros((n, top_k), np.float32)
    shape = (n, model.num_layers, model.hidden_size)
    c, h = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    kept_gates = np.zeros((n, model.num_layers, 4, model.hidden_size), np.float32) if gates else None
    carries = model.zero_carries(1)
    for begin in range(0, n, TRACE_CHUNK):
        chunk = ids[begin : begin + TRACE_CHUNK]
        size = len(chunk)  # the last chunk is padded to one shape; its carry is never used again
        carries, logits, chunk_c, chunk_h, chunk_gates = trace_states(
            lm.params, carries, np.pad(chunk, (0, TRACE_CHUNK - size)), model=model, gates=gates
        )
        log_probs = np.asarray(jax.nn.log_softmax(logits[:size], axis=-1), np.float64) / np.log(2.0)
        following = ids[begin + 1 : begin + size + 1]  # the characters each row predicts
        log2p[begin + 1 : begin + 1 + len(following)] = log_probs[np.arange(len(following)), following]
        order = np.argsort(-log_probs, axis=-1, kind="stable")[:, :top_k]
        top_ids[begin : begin + size] = order
        top_probs[begin : begin + size] = np.exp2(np.take_along_axis(log_probs, order, axis=-1))
        c[begin : begin + size], h[begin : begin + size] = np.asarray(chunk_c)[:size], np.asarray(chunk_h)[:size]
        if kept_gates is not None:
            kept_gates[begin : begin + size] = np.asarray(chunk_gates)[:size].reshape(size, model.num_layers, 4, -1)
    return Inspection(
        lm.vocab.decode(ids), ids, log2p, top_ids, top_probs, c, h, kept_gates, lm.vocab.chars, lm.vocab.units
    )
