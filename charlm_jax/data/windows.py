"""Text -> ids -> windows -> batches, as pure functions.

The book builds one-hot tensors of shape (windows, 60, vocab) up front, hundreds
of MB for a 600K-character corpus. Here the corpus is kept once as ids (int32 for a
text, the smallest unsigned type in a memory-mapped prepared corpus) and a window is
just its start offset: ``ids[start : start + maxlen]`` is the input and
``ids[start + maxlen]`` the book's target. Each block of steps gathers its windows
(``maxlen + 1`` ids each) on the host, only the rows this process's devices train on,
so memory stays O(corpus length), or O(batch) with a memory map.
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.errors import CharLMError, CharLMWarning
from charlm_jax.settings.config import UNSEEN_POLICIES

UNIT_NAMES = {"chars": "char", "bytes": "byte"}  # what one unit is called in a figure: bits/char, bits/byte
# A byte model's vocabulary: the 256 byte values, byte b written as code point b (so ``chars[b]`` is latin-1's
# reading of the byte and id b is byte b).
BYTE_VALUES = "".join(map(chr, range(256)))
# How a byte model's output becomes text: a sequence that is not valid UTF-8 (a stray byte, or a character cut
# short by the end of a sample) is one U+FFFD per maximal invalid part, Python's "replace" rule.
BYTES_DECODE_ERRORS = "replace"


@dataclass(frozen=True)
class Vocab:
    """Sorted unique characters of the training text, as in the book's ``chars``; or, for a model of
    ``units="bytes"``, the 256 byte values of the text's UTF-8 form.

    Encoding and decoding work on arrays of Unicode code points (bytes), so a million characters
    take milliseconds and generated ids turn into text without a Python loop. ``sorted``
    orders characters by code point, so the vocabulary's code points are sorted too.
    """

    chars: str
    units: str = "chars"

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))

    @classmethod
    def of_bytes(cls) -> Vocab:
        return cls(BYTE_VALUES, "bytes")

    @classmethod
    def for_units(cls, units: str, text: str) -> Vocab:
        return cls.of_bytes() if units == "bytes" else cls.from_text(text)

    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def unit(self) -> str:
        """What one id stands for, in a figure's unit: ``char`` or ``byte``."""
        return UNIT_NAMES[self.units]

    @cached_property
    def _codes(self) -> np.ndarray:
        return _code_points(self.chars)  # (size,) uint32, ascending

    def encode(self, text: str, what: str = "text", unseen: str = "error") -> np.ndarray:
        """Ids of ``text`` (int32). Characters outside the vocabulary are an error naming them
        (``unseen="error"``), or left out with a ``CharLMWarning`` that counts them (``unseen="skip"``): never
        a silent figure. A byte model reads any text: its ids are the text's UTF-8 bytes, a file's
        undecodable bytes included, so it sees nothing unseen."""
        if unseen not in UNSEEN_POLICIES:
            raise CharLMError(f"unseen must be one of {', '.join(UNSEEN_POLICIES)}, got {unseen!r}")
        if self.units == "bytes":
            return np.frombuffer(text_bytes(text, what), np.uint8).astype(np.int32)
        ids, known = self.lookup(text)
        if known.all():
            return ids
        unknown = _code_points_to_text(_code_points(text)[~known])
        distinct = "".join(sorted(set(unknown)))
        if unseen == "error":
            raise CharLMError(
                f"{what} has {len(distinct)} character(s) not in the model's vocabulary: {distinct[:20]!r}; "
                "remove them, pass --unseen skip to leave them out, or train on text that contains them"
            )
        warnings.warn(
            CharLMWarning(
                f"{what}: {len(unknown):,} of {len(text):,} characters ({len(distinct)} distinct: {distinct[:20]!r}) "
                "are not in the model's vocabulary and were left out (--unseen skip)"
            ),
            stacklevel=2,
        )
        return ids[known]

    def lookup(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, known): each character's id, and whether the vocabulary has it (an unknown one's id is
        meaningless); both (len(text),)."""
        codes = _code_points(text)
        ids = np.searchsorted(self._codes, codes).astype(np.int32)
        known = self._codes[np.minimum(ids, max(self.size - 1, 0))] == codes if self.size else codes != codes
        return ids, known

    def decode(self, ids) -> str:
        """Text of ``ids``; a byte model's bytes decoded as UTF-8 under ``BYTES_DECODE_ERRORS``."""
        if self.units == "bytes":
            return self.decode_bytes(ids).decode("utf-8", BYTES_DECODE_ERRORS)
        return _code_points_to_text(self._codes[np.asarray(ids, dtype=np.intp).reshape(-1)])

    def decode_bytes(self, ids) -> bytes:
        """A byte model's ids as the raw bytes they stand for (no decoding policy applied)."""
        if self.units != "bytes":
            raise CharLMError("decode_bytes is for a model of --units bytes: use decode for a character model")
        return np.asarray(ids).reshape(-1).astype(np.uint8).tobytes()

    def decoder(self) -> Callable[[Any, bool], str]:
        """A decoder of ids arriving in pieces: ``decode(ids, final)``. For bytes a character cut between two
        pieces waits for the next one, so the pieces joined equal ``decode`` of all the ids."""
        if self.units != "bytes":
            return lambda ids, final=False: self.decode(ids)  # type: ignore[misc]
        incremental = codecs.getincrementaldecoder("utf-8")(BYTES_DECODE_ERRORS)
        return lambda ids, final=False: incremental.decode(self.decode_bytes(ids), final)  # type: ignore[misc]


def text_bytes(text: str, what: str = "text") -> bytes:
    """``text``'s UTF-8 bytes; a file read for a byte model (``read_text_file(units="bytes")``) keeps its
    undecodable bytes as surrogate escapes, which become those bytes again."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as error:
        raise CharLMError(
            f"{what} holds a lone surrogate {text[error.start]!r} at {error.start}, which no byte sequence spells: "
            "remove it"
        ) from None


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _code_points_to_text(codes: np.ndarray) -> str:
    return codes.astype("<u4").tobytes().decode("utf-32-le")


@dataclass(frozen=True)
class Split:
    """Which window starts train and which validate, over one encoded corpus.

    Validation is the tail of the text: every character from
    ``val_first_target`` on is predicted from the ``maxlen`` characters before
    it, and no training target (in either objective) lies at or after
    ``val_start``, so the tail is never trained on.
    """

    train_windows: int  # training window i starts at i * step: never materialised by the loop
    step: int
    val_starts: np.ndarray  # (val_windows,) int32: every val_stride-th window of the tail
    val_start: int  # the first character of the held-out tail (the text's length without one)
    val_windows_all: int = 0  # windows in the whole tail (charlm-jax eval scores them all)
    val_stride: int = 1

    @property
    def train_starts(self) -> np.ndarray:
        """Every training window's start, (train_windows,) int32: built on demand, for inspection (the
        loop draws starts per block from ``ShuffledWindows.blocks``; at 10^8 characters this array is 130 MB)."""
        return np.arange(self.train_windows, dtype=np.int32) * np.int32(self.step)


def prepare_text(text: str, lowercase: bool) -> str:
    return text.lower() if lowercase else text


def split_windows(num_chars: int, maxlen: int, step: int, val_fraction: float, val_chars: int = 0) -> Split:
    """Training windows from the head, validation windows from the tail: all of them (stride 1), or,
    when there are more than ``val_chars`` (> 0), every k-th with the smallest k that keeps them within it."""
    val_start = num_chars - int(round(num_chars * val_fraction)) if val_fraction > 0 else num_chars
    # The book's windows, range(0, len(text) - maxlen, step), over the head: a training window
    # [s, s + maxlen] (inputs and the book's target) ends before val_start.
    train_windows = len(range(0, max(val_start - maxlen, 0), step))
    # Validation: every target at index >= val_start + maxlen, context fully inside the tail.
    val_windows_all = max(num_chars - maxlen - val_start, 0) if val_fraction > 0 else 0
    stride = -(-val_windows_all // val_chars) if val_chars and val_windows_all > val_chars else 1
    val_starts = np.arange(val_start, val_start + val_windows_all, stride, dtype=np.int32)
    if train_windows == 0:
        raise CharLMError(
            f"text has {num_chars} characters, too short for one training window of {maxlen}+1 "
            f"characters after holding out {val_fraction:.0%} for validation: use a longer text "
            "or a smaller --maxlen"
        )
    if val_fraction > 0 and len(val_starts) == 0:
        raise CharLMError(
            f"the validation tail ({val_fraction:.0%} of {num_chars} characters) is shorter than one "
            f"window of {maxlen}+1 characters: use a longer text, a larger --val-fraction, "
            "or --val-fraction 0"
        )
    return Split(
        train_windows=train_windows,
        step=step,
        val_starts=val_starts,
        val_start=val_start,
        val_windows_all=val_windows_all,
        val_stride=stride,
    )


def gather_windows(ids: jax.Array, starts: jax.Array, width: int) -> jax.Array:
    """Windows ``ids[s : s + width]`` for each start, on the device: (batch,) -> (batch, width)."""
    offsets = jnp.arange(width, dtype=starts.dtype)
    return ids[starts[:, None] + offsets[None, :]]  # (batch, width)


def host_windows(ids: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Windows ``ids[s : s + width]`` for each start (any shape), as int32, read on the host.

    What a training step receives: its inputs are a window's first ``maxlen`` ids and its
    targets the rest (``width = maxlen + 1``). From a memory-mapped prepared corpus only the
    pages the windows touch are read, so a step costs the same whatever the corpus's size.
    """
    return np.asarray(ids[np.asarray(starts)[..., None] + np.arange(width)], np.int32)


# Rounds of the Feistel network behind ``shuffled``: 4 make a pseudo-random permutation from a good
# round function (Luby-Rackoff); 6 leave a margin.
FEISTEL_ROUNDS = 6
_U64 = np.uint64


def _mix(values: np.ndarray, round_key: np.uint64) -> np.ndarray:
    """A 64-bit integer hash (splitmix64's finaliser) of ``values + round_key``; numpy's uint64 wraps."""
    z = values + round_key
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def shuffled(key: jax.Array, num_items: int, positions: np.ndarray) -> np.ndarray:
    """Item at each of ``positions`` of a pseudo-random permutation of ``range(num_items)`` fixed by ``key``.

    Random access in O(1) memory: a Feistel network over the smallest even number of bits that holds
    ``num_items``, walked in cycles until the value falls inside the range (a bijection of a range
    restricted by cycle walking is a bijection of the smaller range; at most 4x the range, so a
    couple of walks). Written here because numpy's and jax's permutations materialise the whole
    permutation: 240 MB and a 30-million-element sort per epoch for 10^8 characters at stride 3.
    """
    with np.errstate(over="ignore"):
        bits = max(2, int(num_items - 1).bit_length())
        half = (bits + 1) // 2
        mask = _U64((1 << half) - 1)
        round_keys = np.asarray(jax.random.bits(key, (FEISTEL_ROUNDS,), jnp.uint32)).astype(_U64)

        def permute(x: np.ndarray) -> np.ndarray:
            left, right = x >> _U64(half), x & mask
            for round_key in round_keys:
                left, right = right, left ^ (_mix(right, round_key) & mask)
            return (left << _U64(half)) | right

        values = permute(np.asarray(positions, _U64))
        outside = values >= num_items
        while outside.any():
            values[outside] = permute(values[outside])
            outside = values >= num_items
    return values.astype(np.int64)


def batches_per_epoch(num_windows: int, batch_size: int) -> int:
    """Full batches only: the last partial batch is dropped (reshuffled next epoch) to keep one shape."""
    return num_windows // batch_size


def _blocks_of(total: int, block_steps: int, first_batch: int) -> Iterator[tuple[int, int]]:
    """(first, end) batch of each block: blocks begin at multiples of ``block_steps``, so a run compiles
    at most two block sizes (full, and the epoch's remainder), and a run resumed inside a block first
    finishes that block and then falls back into step with an uninterrupted one."""
    batch = first_batch
    while batch < total:
        end = min((batch // block_steps + 1) * block_steps, total)
        yield batch, end
        batch = end


@dataclass(frozen=True)
class ShuffledWindows:
    """The book's batches: windows of the training head in a shuffled order, each read from a zero state.

    Batch b of an epoch holds the windows at positions ``b * batch_size ...`` of the epoch's
    permutation (``shuffled``), computed when its block is reached. The last partial batch is
    dropped (reshuffled next epoch) to keep one shape.
    """

    split: Split
    batch_size: int
    block_steps: int
    carry_over = False  # every window starts from a zero state

    def __post_init__(self) -> None:
        if self.steps_per_epoch == 0:
            raise CharLMError(
                f"only {self.split.train_windows} training windows, fewer than one batch of "
                f"{self.batch_size}: pass a smaller --batch-size or a longer text"
            )

    @property
    def steps_per_epoch(self) -> int:
        return batches_per_epoch(self.split.train_windows, self.batch_size)

    def records_each_epoch(self, eval_every_steps: int) -> bool:
        """Whether every epoch's end is validated and recorded: always (an epoch is a pass over ~text/step windows)."""
        return True

    def blocks(self, key: jax.Array, first_batch: int = 0) -> Iterator[np.ndarray]:
        """The epoch's window starts from ``first_batch`` on, in blocks of (steps, batch) int32."""
        split = self.split
        for batch, end in _blocks_of(self.steps_per_epoch, self.block_steps, first_batch):
            windows = shuffled(key, split.train_windows, np.arange(batch * self.batch_size, end * self.batch_size))
            yield (windows * split.step).astype(np.int32).reshape(end - batch, self.batch_size)


@dataclass(frozen=True)
class ConsecutiveStreams:
    """Truncated BPTT, as char-rnn trains: the training head cut into ``batch_size`` equal streams.

    Batch k holds the window (``maxlen + 1`` ids) at ``offset + k * maxlen`` of every stream, so each
    batch continues where the one before it stopped and the LSTM state is carried between them
    (``carry_over``). The offset, drawn per epoch below ``maxlen``, moves the cuts between batches from
    epoch to epoch. Every window ends inside its stream, so no target reaches the held-out tail.
    """

    train_chars: int
    batch_size: int
    maxlen: int
    block_steps: int
    carry_over = True

    def __post_init__(self) -> None:
        if self.steps_per_epoch == 0:
            raise CharLMError(
                f"{self.train_chars:,} training characters cut into {self.batch_size} streams "
                f"leave less than two windows of {self.maxlen} per stream: pass a smaller "
                "--batch-size or --maxlen, or a longer text"
            )

    @property
    def steps_per_epoch(self) -> int:
        return max(self.train_chars // self.batch_size - self.maxlen, 0) // self.maxlen

    def records_each_epoch(self, eval_every_steps: int) -> bool:
        """An epoch of streams is one pass over the text (seconds on a small one) while a validation reads
        every held-out character ``maxlen`` times: with ``eval_every_steps`` set, only that schedule records."""
        return not eval_every_steps

    def blocks(self, key: jax.Array, first_batch: int = 0) -> Iterator[np.ndarray]:
        """The epoch's window starts from ``first_batch`` on, in blocks of (steps, streams) int32."""
        length = self.train_chars // self.batch_size
        offset = int(jax.random.randint(key, (), 0, self.maxlen))
        stream_starts = np.arange(self.batch_size, dtype=np.int64) * length + offset  # (streams,)
        for batch, end in _blocks_of(self.steps_per_epoch, self.block_steps, first_batch):
            steps = np.arange(batch, end, dtype=np.int64) * self.maxlen  # (steps,)
            yield (steps[:, None] + stream_starts[None, :]).astype(np.int32)


Batching = ShuffledWindows | ConsecutiveStreams


def make_batching(kind: str, split: Split, batch_size: int, maxlen: int, block_steps: int) -> Batching:
    """How a run of batching ``kind`` ("windows" or "streams") cuts the training head of ``split``."""
    if kind == "streams":
        return ConsecutiveStreams(split.val_start, batch_size, maxlen, block_steps)
    return ShuffledWindows(split, batch_size, block_steps)


def padded_eval_batches(starts: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every validation window once, in fixed-size batches; padding rows get weight 0."""
    for begin in range(0, len(starts), batch_size):
        chunk = starts[begin : begin + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(chunk) < batch_size:
            weights[len(chunk) :] = 0.0
            chunk = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0], np.int32)])
        yield chunk, weights


def sample_prompt(key: jax.Array, vocab: Vocab, ids: np.ndarray, train_chars: int, maxlen: int) -> str:
    """A random window of the training text (its first ``train_chars`` ids) as a prompt, as the book picks
    ``start_index``; also the default prompt saved with a run (epoch 1's key)."""
    start = int(jax.random.randint(key, (), 0, max(train_chars - maxlen - 1, 1)))
    window = ids[start : start + maxlen]
    if vocab.units != "bytes":
        return vocab.decode(window)
    # A byte window may begin or end inside a character: its cut parts are left out, so the prompt is the
    # text's own characters (an incremental decoder keeps an unfinished last character back).
    raw = vocab.decode_bytes(window).lstrip(bytes(range(0x80, 0xC0)))
    return codecs.getincrementaldecoder("utf-8")(BYTES_DECODE_ERRORS).decode(raw, False)
