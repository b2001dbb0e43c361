"""Which cells track what: features computed from the text itself, and the cells that follow each one.

Each feature is a number per character, known from the text up to and including it (what the model has
read when its state is taken): inside double quotes, inside single quotes, bracket depth, position in the
line, leading spaces of the line so far, inside a word, after a newline, inside a ``#`` comment.

A unit (a layer's cell state ``c`` or output ``h``, one of ``layers * hidden * 2``) tracks a feature as
well as the absolute Pearson correlation of its value with the feature over the text. Chance is measured,
not assumed: the feature is shifted circularly by random offsets (which keeps its runs and its mean, and
breaks its alignment with the text), and the best correlation of any unit with each shifted copy is
recorded; a unit counts as tracking the feature only when it beats every shifted copy's best
(``CellRanking.beats_chance``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Shifted copies of each feature: the chance level is the best of their best units, so a unit of no meaning
# beats it with probability 1 / (SHIFTS + 1) per feature.
SHIFTS = 99
MIN_SHIFT_FRACTION = 0.1  # a shift moves the feature at least this share of the text (no near-alignment)


def _inside(text: np.ndarray, mark: str) -> np.ndarray:
    """1 from an opening ``mark`` to its closing one (both included: the state after reading the opener)."""
    is_mark = text == mark
    count = np.cumsum(is_mark)
    return ((count % 2 == 1) | (is_mark & (count % 2 == 0))).astype(np.float64)


def _since_line_start(text: np.ndarray) -> np.ndarray:
    """Characters since the last newline (0 at a newline)."""
    index = np.arange(len(text))
    last_newline = np.maximum.accumulate(np.where(text == "\n", index, -1))
    return (index - last_newline - (last_newline < 0)).astype(np.float64) * (text != "\n")


def _leading_spaces(text: np.ndarray) -> np.ndarray:
    """Spaces at the start of the current line read so far (they stop counting at its first other character)."""
    values, run, leading = np.zeros(len(text)), 0, True
    for t, char in enumerate(text):  # a linear pass: the rule is a tiny state machine
        if char == "\n":
            run, leading = 0, True
        elif char == " " and leading:
            run += 1
        else:
            leading = False
        values[t] = run
    return values


def _in_comment(text: np.ndarray) -> np.ndarray:
    values, inside = np.zeros(len(text)), False
    for t, char in enumerate(text):
        inside = (inside or char == "#") and char != "\n"
        values[t] = inside
    return values


def text_features(text: str) -> dict[str, np.ndarray]:
    """Every feature of ``text`` (see the module docstring), each (len(text),) float64."""
    chars = np.array(list(text), dtype=object)
    opens, closes = np.isin(chars, list("([{")), np.isin(chars, list(")]}"))
    depth = np.maximum(np.cumsum(opens.astype(int) - closes.astype(int)), 0)
    return {
        "inside double quotes": _inside(chars, '"'),
        "inside single quotes": _inside(chars, "'"),
        "bracket depth": depth.astype(np.float64),
        "position in line": _since_line_start(chars),
        "indentation": _leading_spaces(chars),
        "inside a word": np.array([c.isalnum() or c == "_" for c in text], np.float64),
        "after a newline": (chars == "\n").astype(np.float64),
        "inside a # comment": _in_comment(chars),
    }


@dataclass(frozen=True)
class CellRanking:
    """The best unit for one feature: which, its correlation, and the chance level it is measured against."""

    feature: str
    unit: str  # "c[layer][index]" or "h[layer][index]"
    kind: str  # "c" or "h"
    layer: int
    index: int
    correlation: float  # signed Pearson r of the unit with the feature
    chance: float  # the best |r| any unit reached with a shifted copy of the feature
    present: bool = True  # False when the text never varies in this feature (nothing to track)

    @property
    def beats_chance(self) -> bool:
        return self.present and abs(self.correlation) > self.chance


def _correlations(units: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``units`` (n, u) with each row of ``features`` (f, n): (f, u); 0 for a
    constant column."""
    centred = units - units.mean(axis=0)
    f = (features - features.mean(axis=1, keepdims=True)).astype(units.dtype)
    norms = np.sqrt(np.outer((f**2).sum(axis=1), (centred**2).sum(axis=0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (f @ centred) / norms
    return np.nan_to_num(r)


def rank_cells(c: np.ndarray, h: np.ndarray, text: str, seed: int = 0) -> list[CellRanking]:
    """The best unit of ``c`` and ``h`` ((n, layers, hidden) each, row t after reading ``text[t]``) for each
    feature of ``text``, with its chance level (see the module docstring). ``seed`` fixes the shifts."""
    n, layers, hidden = c.shape
    if len(text) != n:
        raise ValueError(f"text has {len(text)} characters but the states {n} rows")
    units = np.concatenate([c.reshape(n, -1), h.reshape(n, -1)], axis=1).astype(np.float32)  # (n, 2 * L * H)
    rng = np.random.default_rng(seed)
    low = max(1, int(MIN_SHIFT_FRACTION * n))
    shifts = rng.integers(low, max(n - low, low + 1), SHIFTS)
    rankings = []
    for name, feature in text_features(text).items():
        if feature.std() == 0:
            rankings.append(CellRanking(name, "-", "c", 0, 0, 0.0, 0.0, present=False))
            continue
        r = _correlations(units, feature[None, :])[0]
        best = int(np.argmax(np.abs(r)))
        shifted = np.stack([np.roll(feature, int(s)) for s in shifts])  # (SHIFTS, n)
        chance = float(np.abs(_correlations(units, shifted)).max())
        kind = "c" if best < layers * hidden else "h"
        layer, index = divmod(best % (layers * hidden), hidden)
        rankings.append(CellRanking(name, f"{kind}[{layer}][{index}]", kind, layer, index, float(r[best]), chance))
    return rankings


def describe_rankings(rankings: Sequence[CellRanking]) -> str:
    """The rankings as a plain table, one feature a line."""
    lines = [f"{'feature':<22} {'best unit':<12} {'r':>7} {'chance':>7}  tracks it"]
    for r in rankings:
        if not r.present:
            lines.append(f"{r.feature:<22} {'-':<12} {'':>7} {'':>7}  not in this text")
            continue
        verdict = "yes" if r.beats_chance else "no"
        lines.append(f"{r.feature:<22} {r.unit:<12} {r.correlation:>+7.3f} {r.chance:>7.3f}  {verdict}")
    return "\n".join(lines)
