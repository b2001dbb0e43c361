"""How much of a sample is copied from the training text: verbatim spans found with a suffix array.

``CopyIndex.build(ids)`` sorts the suffixes of a text's ids with libdivsufsort (``pydivsufsort``, the
``copy-check`` extra: O(n log n), about half a second for 10^7 ids on one core); it holds the ids and the suffix
array, ``4 + itemsize`` bytes per id (``CopyIndex.nbytes``: 10^8 characters of a vocabulary under 256 are 0.5 GB).
``matching_lengths`` gives, for every position of a sample, the length of the longest prefix of the sample from
there that occurs somewhere in the text (matching statistics), by narrowing each position's range of suffixes one
character at a time with binary searches run for all positions at once: O(m log n) per matched character.

``copy_report`` summarises them: the longest span (where it starts, its text) and the share of the sample's
characters that lie inside some span of at least ``min_span`` characters found in the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.errors import CharLMError

DEFAULT_MIN_SPAN = 20
# Two polynomial hashes of an n-gram (mod 2**32, ids counted from 1): the table is sorted by the first, and a
# candidate is in it when one of the entries sharing its first hash (at most SAME_FIRST_HASH are looked at) has its
# second hash too. A false ban needs both 32-bit hashes to collide.
HASH_BASES = (1_000_003, 2_147_483_629)
SAME_FIRST_HASH = 4


@dataclass(frozen=True)
class CopyIndex:
    """A text's ids and their suffix array (``suffixes[k]``: where the k-th smallest suffix starts)."""

    ids: np.ndarray
    suffixes: np.ndarray

    @classmethod
    def build(cls, ids: np.ndarray) -> CopyIndex:
        try:
            from pydivsufsort import divsufsort
        except ImportError:
            raise CharLMError("the copy check needs pydivsufsort: pip install -e '.[copy-check]'") from None
        ids = np.array(ids, dtype=np.uint8 if len(ids) and int(np.max(ids)) < 256 else np.int32)  # writable copy
        if not len(ids):
            raise CharLMError("the copy check needs a non-empty training text")
        return cls(ids, np.asarray(divsufsort(ids)))

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.suffixes.nbytes

    def matching_lengths(self, sample: np.ndarray) -> np.ndarray:
        """(m,) int: for each position i of ``sample``, the longest l with sample[i:i+l] somewhere in the text."""
        sample = np.asarray(sample, np.int64)
        m, n = len(sample), len(self.ids)
        starts = np.arange(m)
        low, high = np.zeros(m, np.int64), np.full(m, n, np.int64)
        lengths = np.zeros(m, np.int64)
        active = np.ones(m, bool)
        for offset in range(m):
            active &= starts + offset < m
            if not active.any():
                break
            which = np.flatnonzero(active)
            wanted = sample[which + offset]
            first = self._bound(low[which], high[which], wanted, offset, strict=False)
            last = self._bound(first, high[which], wanted, offset, strict=True)
            found = first < last
            low[which], high[which] = first, last
            lengths[which[found]] += 1
            active[which[~found]] = False
        return lengths

    def _bound(self, low, high, wanted, offset: int, strict: bool):
        """Per position, the first suffix in [low, high) whose id at ``offset`` is >= ``wanted`` (> when
        ``strict``); a suffix that ends before ``offset`` counts as smaller than every id."""
        low, high = low.copy(), high.copy()
        n = len(self.ids)
        while True:
            open_ = low < high
            if not open_.any():
                return low
            middle = (low + high) // 2
            where = self.suffixes[np.minimum(middle, n - 1)] + offset
            key = np.where(where < n, self.ids[np.minimum(where, n - 1)], -1)
            right = (key <= wanted) if strict else (key < wanted)
            low = np.where(open_ & right, middle + 1, low)
            high = np.where(open_ & ~right, middle, high)


@dataclass(frozen=True)
class CopyReport:
    """The copy check of one sample: its longest span found in the text and how much lies in long spans."""

    longest: int  # characters (units) of the longest span of the sample found verbatim in the text
    longest_at: int  # where it starts in the sample
    longest_text: str
    min_span: int
    copied_share: float  # of the sample's characters, the share inside a span of >= min_span found in the text

    def describe(self, unit: str = "char") -> str:
        return (
            f"copy check: longest span found in the training text {self.longest} {unit}s "
            f"({self.longest_text[:60]!r}{'...' if len(self.longest_text) > 60 else ''}); "
            f"{100 * self.copied_share:.1f}% of the sample in spans of >= {self.min_span}"
        )


def copy_report(lengths: np.ndarray, sample_text: str, min_span: int = DEFAULT_MIN_SPAN) -> CopyReport:
    """``CopyReport`` from ``matching_lengths`` of a sample whose characters are ``sample_text`` (one per id)."""
    if isinstance(min_span, bool) or not isinstance(min_span, (int, np.integer)) or min_span < 1:
        raise CharLMError(f"min_span must be a positive integer, got {min_span!r}: pass e.g. --copy-min 20")
    m = len(lengths)
    if m == 0:
        return CopyReport(0, 0, "", int(min_span), 0.0)
    at = int(np.argmax(lengths))
    covered = np.zeros(m + 1, np.int64)  # +1 where a long span starts, -1 after it ends
    long_spans = np.flatnonzero(lengths >= min_span)
    np.add.at(covered, long_spans, 1)
    np.add.at(covered, long_spans + lengths[long_spans], -1)
    share = float(np.mean(np.cumsum(covered)[:m] > 0))
    return CopyReport(int(lengths[at]), at, sample_text[at : at + int(lengths[at])], int(min_span), share)


def training_ids(lm) -> np.ndarray:
    """The ids of the text ``lm``'s run trained on (the head before its held-out tail), read again from where the
    run recorded it."""
    from charlm_jax.data.record import read_recorded_text
    from charlm_jax.use.lm import run_ids

    if lm.text is None or not lm.text.readable:
        raise CharLMError(
            "the copy check reads the run's training text, which this model's run did not record in a form it can "
            "read again: pass the text (charlm_jax.use.copies.CopyIndex.build(lm.vocab.encode(text)))"
        )
    ids, split = run_ids(lm, read_recorded_text(lm.text, "this model's run", lm.config.units))
    return np.asarray(ids[: split.val_start])


def training_index(lm) -> CopyIndex:
    """The ``CopyIndex`` of the text ``lm``'s run trained on."""
    return CopyIndex.build(training_ids(lm))


_TABLES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def training_ngram_table(lm, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``ngram_table`` of the run's training text, built once per text and n in this process."""
    assert lm.text is not None
    key = (lm.text.sha256, n, lm.config.units, lm.config.lowercase)
    if key not in _TABLES:
        _TABLES[key] = ngram_table(training_ids(lm), n)
    return _TABLES[key]


def copy_check(lm, sample: str, index: CopyIndex | None = None, min_span: int = DEFAULT_MIN_SPAN) -> CopyReport:
    """The copy check of ``sample`` (a generated text) against ``index`` (default: the run's training text)."""
    from charlm_jax.data.windows import prepare_text

    index = index if index is not None else training_index(lm)
    ids = lm.vocab.encode(prepare_text(sample, lm.config.lowercase), what="sample")
    text = lm.vocab.decode(ids) if lm.config.units != "bytes" else "".join(lm.vocab.chars[int(i)] for i in ids)
    return copy_report(index.matching_lengths(ids), text, min_span)


def ngram_hashes(ids: np.ndarray, n: int, base: int) -> np.ndarray:
    """The hash of every n-gram of ``ids``, (len - n + 1,) uint32: sum of (id + 1) * base**(n - 1 - j) mod 2**32."""
    ids = np.asarray(ids, np.uint32) + np.uint32(1)
    count = len(ids) - n + 1
    hashes = np.zeros(max(count, 0), np.uint32)
    for j in range(n):
        hashes = hashes * np.uint32(base) + ids[j : j + count]
    return hashes


def ngram_table(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct n-grams of ``ids`` as (first hashes, second hashes), sorted by the first: 8 bytes per n-gram."""
    if len(ids) < n:
        raise CharLMError(f"the training text has {len(ids)} characters, fewer than the n-gram's {n}")
    pairs = (ngram_hashes(ids, n, HASH_BASES[0]).astype(np.uint64) << np.uint64(32)) | ngram_hashes(
        ids, n, HASH_BASES[1]
    )
    pairs = np.unique(pairs)
    return (pairs >> np.uint64(32)).astype(np.uint32), (pairs & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def copied_ngrams(recent: jax.Array, pushed: jax.Array, table, n: int, vocab: int) -> jax.Array:
    """(batch, vocab): the ids that would complete an n-gram of the table's text after each row's last n - 1 ids
    (read from the decode state's ring ``recent`` (batch, width) of ``pushed`` (batch,) ids). Nothing is banned
    before a row has n - 1 ids."""
    first_table, second_table = table
    width = recent.shape[1]
    order = (pushed[:, None] - (n - 1) + jnp.arange(n - 1)[None, :]) % width  # the last n - 1 ids, oldest first
    context = jnp.take_along_axis(recent, order, axis=1).astype(jnp.uint32) + jnp.uint32(1)  # (batch, n - 1)
    candidates = jnp.arange(1, vocab + 1, dtype=jnp.uint32)[None, :]
    hashes = []
    for base in HASH_BASES:
        partial = jnp.zeros(context.shape[0], jnp.uint32)
        for j in range(n - 1):
            partial = partial * jnp.uint32(base) + context[:, j]
        hashes.append(partial[:, None] * jnp.uint32(base) + candidates)  # (batch, vocab)
    first, second = hashes
    start = jnp.searchsorted(first_table, first, side="left")
    found = jnp.zeros(first.shape, bool)
    size = first_table.shape[0]
    for k in range(SAME_FIRST_HASH):
        at = jnp.minimum(start + k, size - 1)
        found |= (start + k < size) & (first_table[at] == first) & (second_table[at] == second)
    return found & (pushed >= n - 1)[:, None]
