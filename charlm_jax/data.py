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

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.errors import CharLMError


@dataclass(frozen=True)
class Vocab:
    """Sorted unique characters of the training text, as in the book's ``chars``.

    Encoding and decoding work on arrays of Unicode code points, so a million characters
    take milliseconds and generated ids turn into text without a Python loop. ``sorted``
    orders characters by code point, so the vocabulary's code points are sorted too.
    """

    chars: str

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    @cached_property
    def _codes(self) -> np.ndarray:
        return _code_points(self.chars)  # (size,) uint32, ascending

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        """Ids of ``text`` (int32); characters outside the vocabulary are an error naming them."""
        codes = _code_points(text)
        ids = np.searchsorted(self._codes, codes).astype(np.int32)
        known = self._codes[np.minimum(ids, max(self.size - 1, 0))] == codes if self.size else codes != codes
        if not known.all():
            unknown = sorted(set(_code_points_to_text(codes[~known])))
            raise CharLMError(
                f"{what} has {len(unknown)} character(s) not in the model's vocabulary: {''.join(unknown[:20])!r}; "
                "remove them or train on text that contains them"
            )
        return ids

    def decode(self, ids) -> str:
        return _code_points_to_text(self._codes[np.asarray(ids, dtype=np.intp).reshape(-1)])


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

    train_starts: np.ndarray  # (train_windows,) int32
    val_starts: np.ndarray  # (val_windows,) int32: every val_stride-th window of the tail
    val_start: int  # the first character of the held-out tail (the text's length without one)
    val_windows_all: int = 0  # windows in the whole tail (charlm-jax eval scores them all)
    val_stride: int = 1


def prepare_text(text: str, lowercase: bool) -> str:
    return text.lower() if lowercase else text


def window_starts(num_chars: int, maxlen: int, step: int) -> np.ndarray:
    """Start offsets of the book's windows: ``range(0, len(text) - maxlen, step)``.

    Every such window has its target ``start + maxlen`` inside the text, which
    is also the last of the dense objective's targets.
    """
    return np.arange(0, max(num_chars - maxlen, 0), step, dtype=np.int32)


def split_windows(num_chars: int, maxlen: int, step: int, val_fraction: float, val_chars: int = 0) -> Split:
    """Training windows from the head, validation windows from the tail: all of them (stride 1), or,
    when there are more than ``val_chars`` (> 0), every k-th with the smallest k that keeps them within it."""
    val_start = num_chars - int(round(num_chars * val_fraction)) if val_fraction > 0 else num_chars
    # A training window [s, s + maxlen] (inputs and the book's target) must end before val_start.
    train_starts = window_starts(val_start, maxlen, step)
    # Validation: every target at index >= val_start + maxlen, context fully inside the tail.
    val_windows_all = max(num_chars - maxlen - val_start, 0) if val_fraction > 0 else 0
    stride = -(-val_windows_all // val_chars) if val_chars and val_windows_all > val_chars else 1
    val_starts = np.arange(val_start, val_start + val_windows_all, stride, dtype=np.int32)
    if len(train_starts) == 0:
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
    return Split(train_starts=train_starts, val_starts=val_starts, val_start=val_start,
                 val_windows_all=val_windows_all, val_stride=stride)


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


def epoch_permutation(key: jax.Array, num_windows: int) -> np.ndarray:
    """The epoch's shuffled order of window indices, a pure function of the key."""
    return np.asarray(jax.random.permutation(key, num_windows))


def batches_per_epoch(num_windows: int, batch_size: int) -> int:
    """Full batches only: the last partial batch is dropped (reshuffled next epoch) to keep one shape."""
    return num_windows // batch_size


def epoch_blocks(key: jax.Array, starts: np.ndarray, batch_size: int, block_steps: int,
                 first_batch: int = 0) -> Iterator[np.ndarray]:
    """The epoch's shuffled batches of window starts, grouped into blocks, (steps, batch) each.

    Blocks begin at multiples of ``block_steps`` from the epoch's first batch, so a run
    compiles at most two block sizes (full, and the epoch's remainder), and a run resumed
    inside a block (from ``first_batch``) first finishes that block and then falls back into
    step with an uninterrupted one.
    """
    order = epoch_permutation(key, len(starts))
    total = batches_per_epoch(len(starts), batch_size)
    batch = first_batch
    while batch < total:
        end = min((batch // block_steps + 1) * block_steps, total)
        yield starts[order[batch * batch_size:end * batch_size]].reshape(end - batch, batch_size)
        batch = end


def padded_eval_batches(starts: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every validation window once, in fixed-size batches; padding rows get weight 0."""
    for begin in range(0, len(starts), batch_size):
        chunk = starts[begin:begin + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(chunk) < batch_size:
            weights[len(chunk):] = 0.0
            chunk = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0], np.int32)])
        yield chunk, weights
