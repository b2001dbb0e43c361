"""Every decoding option as one value: built and validated once, passed whole from the CLI to the scan.

``GenerationOptions`` is what ``--temperatures``, ``--top-k`` ... ``--no-repeat-ngram`` become, what
``charlm_jax.generate`` and ``stream`` build from their keywords, and what the training loop builds
for its per-epoch samples; the jitted scan receives it as one argument. It is a pytree:

* static (hashed into the jit's cache key; a new value compiles once): ``length``, ``mode``,
  ``sampler``, ``top_k``, ``history_window`` (the size of the ring the repetition controls
  read), and whether each optional control is on;
* traced (new values never recompile): ``temperatures`` (one per row, float32), ``top_p``,
  ``min_p``, ``repetition_penalty``, ``repetition_window``, ``no_repeat_ngram``, ``stop_ids``;
* neither: ``stop``, the stop strings, which the scan reads as ``stop_ids`` (their ids in a model's
  vocabulary, ``with_stop_ids``): other strings of the same shape never recompile.

Adding an option touches this file (the field and its check), the scan that reads it and the flag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from charlm_jax.errors import CharLMError
from charlm_jax.settings.config import (
    BOOK_TEMPERATURES,
    DEFAULT_HISTORY_WINDOW,
    DEFAULT_REPETITION_WINDOW,
    DEFAULT_SAMPLER,
    GENERATION_MODES,
    SAMPLERS,
    check_temperatures,
)

STATIC_FIELDS = ("length", "mode", "sampler", "top_k", "history_window", "no_copy_ngram")
TRACED_FIELDS = (
    "temperatures",
    "top_p",
    "min_p",
    "repetition_penalty",
    "repetition_window",
    "no_repeat_ngram",
    "stop_ids",
    "copy_table",
)
# Stop strings: how many, and how long each may be (the scan compares the last MAX_STOP_LENGTH ids with each).
MAX_STOPS, MAX_STOP_LENGTH = 16, 64
# Padding of ``stop_ids`` (right-aligned): a place no id matches is -1, and a sequence's unused places are
# ANY_ID (they match every id), so a shorter sequence compares only its own length.
ANY_ID = -2


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_top_k(top_k: Any) -> None:
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise CharLMError(f"top_k must be a positive integer, got {top_k!r}: pass e.g. --top-k 40")


def check_fraction(name: str, value: Any) -> None:
    """``top_p`` and ``min_p``: in (0, 1], or None (off)."""
    if value is not None:
        v = np.asarray(value, np.float64)
        if not np.all((v > 0) & (v <= 1)):
            raise CharLMError(f"{name} must be in (0, 1], got {value!r}: pass e.g. --{name.replace('_', '-')} 0.9")


def check_sampler(sampler: Any) -> None:
    if sampler not in SAMPLERS:
        raise CharLMError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


def check_mode(mode: Any) -> None:
    if mode not in GENERATION_MODES:
        raise CharLMError(f"mode must be one of {', '.join(GENERATION_MODES)}, got {mode!r}")


@dataclass(frozen=True, eq=False)
class GenerationOptions:
    """How a generation runs and how each step draws (see the module docstring); checked when built.

    ``temperatures`` gives one row per value (the book's four temperatures are four rows of one
    call); ``length`` characters are generated per row. Filters act on the tempered distribution
    (``charlm_jax.use.sampling``); the repetition controls on the raw logits, from the last
    ``history_window`` ids (prompt included): ``repetition_window`` must fit in it, and
    ``no_repeat_ngram`` forbids repeating an n-gram that occurs wholly inside it.
    """

    length: int = 400
    temperatures: Any = BOOK_TEMPERATURES  # stored as a (rows,) float32 array
    mode: str = "stateful"
    sampler: str = DEFAULT_SAMPLER
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    repetition_window: int = DEFAULT_REPETITION_WINDOW
    no_repeat_ngram: int | None = None
    history_window: int = DEFAULT_HISTORY_WINDOW
    no_copy_ngram: int | None = None  # never complete an n-gram of the training text (``copy_table`` holds them)
    copy_table: Any = None  # (first hashes sorted, second hashes) of the text's n-grams (``use.copies.ngram_table``)
    stop: tuple[str, ...] = ()  # a row ends when its text ends with any of them (they are kept in the text)
    stop_ids: Any = None  # (rows, stops, length) int32 once encoded for a vocabulary (``with_stop_ids``)

    def __post_init__(self) -> None:
        if not _is_int(self.length) or self.length <= 0:
            raise CharLMError(f"length must be a positive integer, got {self.length!r}: pass e.g. --length 400")
        object.__setattr__(self, "length", int(self.length))
        object.__setattr__(self, "temperatures", check_temperatures(self.temperatures))
        check_mode(self.mode)
        check_sampler(self.sampler)
        check_top_k(self.top_k)
        check_fraction("top_p", self.top_p)
        check_fraction("min_p", self.min_p)
        if self.repetition_penalty is not None and not (
            np.isfinite(self.repetition_penalty) and self.repetition_penalty > 0
        ):
            raise CharLMError(
                f"repetition_penalty must be > 0 (1: none; > 1 discourages repeats), got "
                f"{self.repetition_penalty!r}: pass e.g. --repetition-penalty 1.3"
            )
        if not _is_int(self.history_window) or self.history_window < 1:
            raise CharLMError(
                f"history_window must be a positive integer, got {self.history_window!r}: "
                f"pass e.g. --history-window {DEFAULT_HISTORY_WINDOW}"
            )
        if not _is_int(self.repetition_window) or self.repetition_window < 1:
            raise CharLMError(
                f"repetition_window must be a positive integer, got {self.repetition_window!r}: "
                "pass e.g. --repetition-window 20"
            )
        if self.repetition_penalty is not None and self.repetition_window > self.history_window:
            raise CharLMError(
                f"repetition_window {self.repetition_window} is longer than history_window "
                f"{self.history_window}: pass --history-window {self.repetition_window} or more"
            )
        if self.no_repeat_ngram is not None and (
            not _is_int(self.no_repeat_ngram) or not 1 <= self.no_repeat_ngram <= self.history_window
        ):
            raise CharLMError(
                f"no_repeat_ngram must be an integer from 1 to history_window ({self.history_window}), "
                f"got {self.no_repeat_ngram!r}: pass e.g. --no-repeat-ngram 8"
            )

        if self.no_copy_ngram is not None and (
            not _is_int(self.no_copy_ngram) or not 2 <= self.no_copy_ngram <= self.history_window + 1
        ):
            raise CharLMError(
                f"no_copy_ngram must be an integer from 2 to history_window + 1 ({self.history_window + 1}), "
                f"got {self.no_copy_ngram!r}: pass e.g. --no-copy-ngram 12"
            )
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        check_stop(self.stop)

    @property
    def rows(self) -> int:
        return int(np.shape(self.temperatures)[0])

    @property
    def keeps_history(self) -> bool:
        """The scan carries the last ids only when a repetition control reads them."""
        return self.repetition_penalty is not None or self.no_repeat_ngram is not None or self.no_copy_ngram is not None

    def replace(self, **changes: Any) -> GenerationOptions:
        """A checked copy with ``changes`` (``dataclasses.replace``, validated again); ``stop_ids`` are dropped
        unless given (encode the stop strings again for the new rows)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return GenerationOptions(**{**values, "stop_ids": None, "copy_table": None, **changes})

    def with_stop_ids(self, encode) -> GenerationOptions:
        """A copy whose ``stop_ids`` hold ``stop`` encoded by ``encode`` (a string -> its ids in a model's
        vocabulary), right-aligned in (rows, stops, longest) with ``ANY_ID`` before a shorter one; unchanged
        without stop strings."""
        if not self.stop:
            return self
        encoded = [np.asarray(encode(text), np.int32) for text in self.stop]
        longest = max(len(ids) for ids in encoded)
        table = np.full((len(encoded), longest), ANY_ID, np.int32)
        for row, ids in zip(table, encoded):
            row[longest - len(ids) :] = ids
        rows = np.broadcast_to(table, (self.rows, *table.shape)).copy()
        return _built({**self.__dict__, "stop_ids": rows})

    def with_rows(self, temperatures: Any, **per_row: Any) -> GenerationOptions:
        """The same options with the per-row temperatures given as they are (an array already checked
        and placed on devices, e.g. split over a mesh); not validated again. ``per_row``: other traced
        fields as arrays with a value per row (a server's batch of requests), each shaped to broadcast
        against what reads it: (rows, 1) against the logits, ``repetition_window`` (rows,)."""
        unknown = set(per_row) - set(TRACED_FIELDS)
        if unknown:
            raise CharLMError(f"only {', '.join(TRACED_FIELDS)} can vary per row, got {sorted(unknown)}")
        return _built({**self.__dict__, **per_row, "temperatures": temperatures})


def check_stop(stop: tuple) -> None:
    if len(stop) > MAX_STOPS or not all(isinstance(text, str) and 0 < len(text) <= MAX_STOP_LENGTH for text in stop):
        raise CharLMError(
            f"stop must be up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_LENGTH} characters, got "
            f"{stop!r}: pass e.g. --stop '\\n\\n'"
        )


def _built(values: dict[str, Any]) -> GenerationOptions:
    """An instance made without ``__init__``: inside a jit its traced fields are tracers (or the placeholders
    jax uses while transforming trees), which the checks must never see."""
    built = object.__new__(GenerationOptions)
    object.__setattr__(built, "__dict__", values)
    return built


def _flatten(options: GenerationOptions):
    traced = tuple(getattr(options, name) for name in TRACED_FIELDS)
    static = tuple(getattr(options, name) for name in STATIC_FIELDS)
    return traced, static


def _unflatten(static, traced) -> GenerationOptions:
    return _built({**dict(zip(STATIC_FIELDS, static)), **dict(zip(TRACED_FIELDS, traced)), "stop": ()})


def _register() -> None:
    import jax

    jax.tree_util.register_pytree_node(GenerationOptions, _flatten, _unflatten)


_register()
