"""Text -> ids -> windows -> batches, as pure functions.

The book builds one-hot tensors of shape (windows, 60, vocab) up front, hundreds
of MB for a 600K-character corpus. Here the corpus is kept once as int32 ids and
a window is just its start offset: ``ids[start : start + maxlen]`` is the input
and ``ids[start + maxlen]`` the book's target. Batches are vectors of start
offsets, gathered into windows on the device inside the jitted step, so memory
stays O(corpus length).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.errors import CharLMError


@dataclass(frozen=True)
class Vocab:
    """Sorted unique characters of the training text, as in the book's ``chars``."""

    chars: str

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        """Ids of ``text`` (int32); characters outside the vocabulary are an error naming them."""
        lookup = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - lookup.keys())
        if unknown:
            shown = "".join(unknown[:20])
            raise CharLMError(
                f"{what} has {len(unknown)} character(s) not in the model's vocabulary: {shown!r}; "
                "remove them or train on text that contains them"
            )
        return np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def to_json(self) -> str:
        return json.dumps({"chars": self.chars})

    @classmethod
    def from_json(cls, payload: str) -> "Vocab":
        return cls(json.loads(payload)["chars"])


@dataclass(frozen=True)
class Split:
    """Which window starts train and which validate, over one encoded corpus.

    Validation is the tail of the text: every character from
    ``val_first_target`` on is predicted from the ``maxlen`` characters before
    it, and no training target (in either objective) lies at or after
    ``val_start``, so the tail is never trained on.
    """

    train_starts: np.ndarray  # (train_windows,) int32
    val_starts: np.ndarray  # (val_windows,) int32


def prepare_text(text: str, lowercase: bool) -> str:
    return text.lower() if lowercase else text


def window_starts(num_chars: int, maxlen: int, step: int) -> np.ndarray:
    """Start offsets of the book's windows: ``range(0, len(text) - maxlen, step)``.

    Every such window has its target ``start + maxlen`` inside the text, which
    is also the last of the dense objective's targets.
    """
    return np.arange(0, max(num_chars - maxlen, 0), step, dtype=np.int32)


def split_windows(num_chars: int, maxlen: int, step: int, val_fraction: float) -> Split:
    """Training windows from the head, validation windows (stride 1) from the tail."""
    val_start = num_chars - int(round(num_chars * val_fraction)) if val_fraction > 0 else num_chars
    # A training window [s, s + maxlen] (inputs and the book's target) must end before val_start.
    train_starts = window_starts(val_start, maxlen, step)
    # Validation: every target at index >= val_start + maxlen, context fully inside the tail.
    if val_fraction > 0:
        val_starts = np.arange(val_start, num_chars - maxlen, 1, dtype=np.int32)
    else:
        val_starts = np.zeros((0,), np.int32)
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
    return Split(train_starts=train_starts, val_starts=val_starts)


def gather_windows(ids: jax.Array, starts: jax.Array, maxlen: int) -> jax.Array:
    """Windows ``ids[s : s + maxlen]`` for each start: (batch,) -> (batch, maxlen)."""
    offsets = jnp.arange(maxlen, dtype=starts.dtype)
    return ids[starts[:, None] + offsets[None, :]]  # (batch, maxlen)


def gather_next_chars(ids: jax.Array, starts: jax.Array, maxlen: int) -> jax.Array:
    """The book's target: the character right after each window, (batch,)."""
    return ids[starts + maxlen]


def gather_dense_targets(ids: jax.Array, starts: jax.Array, maxlen: int) -> jax.Array:
    """Next character at every window position: ``ids[s + 1 : s + maxlen + 1]``, (batch, maxlen)."""
    return gather_windows(ids, starts + 1, maxlen)


def epoch_permutation(key: jax.Array, num_windows: int) -> np.ndarray:
    """The epoch's shuffled order of window indices, a pure function of the key."""
    return np.asarray(jax.random.permutation(key, num_windows))


def batches_per_epoch(num_windows: int, batch_size: int) -> int:
    """Full batches only: the last partial batch is dropped (reshuffled next epoch) to keep one shape."""
    return num_windows // batch_size


def epoch_batches(key: jax.Array, starts: np.ndarray, batch_size: int,
                  first_batch: int = 0) -> Iterator[np.ndarray]:
    """Shuffled batches of window starts for one epoch, from ``first_batch`` on (for resuming)."""
    order = epoch_permutation(key, len(starts))
    for b in range(first_batch, batches_per_epoch(len(starts), batch_size)):
        yield starts[order[b * batch_size:(b + 1) * batch_size]]


def padded_eval_batches(starts: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every validation window once, in fixed-size batches; padding rows get weight 0."""
    for begin in range(0, len(starts), batch_size):
        chunk = starts[begin:begin + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(chunk) < batch_size:
            weights[len(chunk):] = 0.0
            chunk = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0], np.int32)])
        yield chunk, weights


def one_hot_nbytes(num_windows: int, maxlen: int, vocab_size: int) -> int:
    """Bytes of the book's bool arrays x (windows, maxlen, vocab) and y (windows, vocab)."""
    return num_windows * maxlen * vocab_size + num_windows * vocab_size
