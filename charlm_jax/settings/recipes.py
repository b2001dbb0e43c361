"""Named recipes: complete sets of TrainConfig values, chosen from evidence.

``book`` is the book's experiment exactly (its defaults, its objective, no clipping, a
constant learning rate); it is the default because a reader of the book must find the same
experiment. ``fast`` is the best model the evidence of ``benchmarks/recipes.py`` found for a
budget of minutes on a CPU: the book's data, windows and optimizer family, a deeper model with
dropout, the dense objective and a schedule fitted to the time budget. ``streams`` is ``fast``
on consecutive streams with the LSTM state carried between batches (truncated BPTT). Flags given
next to ``--recipe`` override single values of it.
"""

from __future__ import annotations

import math
from typing import Any

from charlm_jax.errors import CharLMError
from charlm_jax.settings.config import TrainConfig

RECIPES: dict[str, dict[str, Any]] = {
    "book": {},
    "fast": {
        # Chosen by benchmarks/recipes.py-style runs on the built-in corpus (600K characters at most,
        # 300-600 s of training on 2 CPU cores, validation as the book measures it; runs kept in
        # benchmarks/results/*-recipes*). The finding behind every value: at this data size the
        # book's LSTM(128) is limited by what it can hold, and bigger models by overfitting, so
        # the recipe buys depth and pays for it with dropout.
        #
        # A target at every window position: 60 training signals per window instead of 1, at
        # almost the same cost per step (the backward pass runs through all 60 steps anyway).
        "objective": "dense",
        # Two layers of 192 (0.5M parameters): 1.617 bits/char at 600 s against 1.738 for one
        # layer of 128, 1.693 for one of 256 and 1.705 for one of 384 (300 s), 1.666 for three of 160.
        "num_layers": 2,
        "hidden_size": 192,
        # On each layer's outputs; 0.3 let one layer of 256 overfit in its second epoch (1.714 ->
        # 1.731), 0.5 held it (1.708 -> 1.693). Decoupled weight decay added nothing measurable.
        "dropout": 0.4,
        # A short linear warm-up to 0.02, then a cosine to 0.001 over the run: over --epochs, or,
        # with --time-limit, over the steps the budget holds (measured), so a ten-minute run ends
        # at its low rate. 50 warm-up steps instead of 200 put it ahead of the book within the
        # first minute (2.22 vs 2.24 bits/char at ~55 s).
        "learning_rate": 0.02,
        "lr_schedule": "cosine",
        "warmup_steps": 50,
        "lr_final_fraction": 0.05,
        # Gradient global norms measured per epoch: mean 0.1-0.7, maxima 3-7 only in the first
        # epoch; clipping at 1.0 tames those early spikes and leaves later steps untouched.
        "clip_norm": 1.0,
        # Stop once validation stops improving; the best epoch stays in <out>/best.
        "early_stopping_patience": 3,
    },
}
RECIPES["streams"] = {
    **RECIPES["fast"],
    # fast's model, objective, optimizer and schedule on consecutive streams with the LSTM state carried
    # between batches (truncated BPTT, as char-rnn trains): each character is computed once per epoch
    # instead of ~20 times from a zero state. On Shakespeare at a 150 s budget: 2.597 bits/char against
    # fast's 2.839 (benchmarks/recipes.py; the 600 s race is in docs/recipes.md). An epoch is one pass
    # over the text (seconds on a small one), so validation runs every 100 steps instead of each epoch,
    # and early stopping, counted in epochs, is off: a --time-limit ends the run.
    "batching": "streams",
    "eval_every_steps": 100,
    "early_stopping_patience": 0,
}
DEFAULT_RECIPE = "book"
# ``auto`` is not a fixed set of values: it picks one for the time budget (``auto_values``).
AUTO_RECIPE = "auto"
RECIPE_NAMES = (*RECIPES, AUTO_RECIPE)

# The budget tiers of ``auto``: (up to this many training seconds, values), from benchmarks/budget_race.py
# (results/2026-12-02-cpu-budget-exploration: 60 and 120 s on pydoc and python-source; the 600 s race of
# results/2026-11-30-cpu-recipes). At a minute the model that makes the most updates wins: one layer of
# 128 on 64 streams makes ~2,000 updates where the 2 x 192 makes ~150 (bits/char at 60 s, seed 0: 1.83 and
# 2.18 against the book's 2.22 and 2.51; 2 x 192 with dropout 0.2: 3.10, 2.78). At ten minutes the larger,
# regularised model wins (streams). Tier limits lie between the budgets measured.
_SHORT = {
    **RECIPES["streams"],
    "num_layers": 1,
    "hidden_size": 128,
    "dropout": 0.0,  # a few epochs of a small text in a minute: nothing to regularise yet
    "batch_size": 64,  # twice the updates of 128 streams in the same time (1.83 vs 1.88, 2.18 vs 2.20)
    "epochs": 1000,  # an upper bound only: the time limit ends the run and its schedule is fitted to it
}
# At two minutes one layer of 192 (dropout 0.1) on 64 streams: 1.767 / 2.131 at 120 s against 1.848 / 2.278
# for the one-minute model, which overfits or stalls by then, and 2.100 (pydoc) for streams' 2 x 192, which has
# made ~400 updates. Its upper limit, 300 s, lies between the 120 s and the 600 s evidence: not raced there.
_MEDIUM = {**_SHORT, "hidden_size": 192, "dropout": 0.1}
AUTO_TIERS: tuple[tuple[float, dict[str, Any]], ...] = (
    (90.0, _SHORT),
    (300.0, _MEDIUM),
    (math.inf, {**RECIPES["streams"], "epochs": 1000}),
)
# A small text is read many times within the budget, and the short tier's unregularised model overfits it.
# The passes a budget makes over a text are estimated from the short tier's measured throughput (characters
# trained per second of budget on 2 CPU cores, the 60 s race: ~1,900 updates of 64 x 60 characters); above
# SMALL_TEXT_PASSES the short tier trains with SMALL_TEXT_DROPOUT instead of none.
SHORT_CHARS_PER_SECOND = 120_000
SMALL_TEXT_PASSES = 30.0
# 120K-character slices of pydoc / python-source at 60 s (results/2026-12-02-cpu-budget-small-texts, seed 0):
# dropout 0 / 0.2 / 0.4 scored 2.175 / 2.167 / 2.115 and 2.592 / 2.567 / 2.556 bits/char, in that order on both.
SMALL_TEXT_DROPOUT = 0.4


def auto_values(time_limit: float | None, corpus_chars: int | None = None) -> dict[str, Any]:
    """The values ``--recipe auto`` uses for a budget of ``time_limit`` training seconds on a text of
    ``corpus_chars`` characters (None: a text large enough not to need regularising at that budget).

    Every tier trains in float32: bfloat16 bought more steps and no better model at 60 s on an AMX CPU
    (results/2026-12-02-cpu-budget-exploration); ``--compute-dtype bfloat16`` overrides, as any flag does.
    """
    if time_limit is None:
        raise CharLMError(
            "--recipe auto picks its model and schedule for a time budget: pass --time-limit SECONDS "
            "(or name a fixed recipe: --recipe book, fast or streams)"
        )
    if not time_limit > 0:
        raise CharLMError(f"--time-limit must be > 0 seconds, got {time_limit:g}")
    values = dict(next(values for limit, values in AUTO_TIERS if time_limit <= limit))
    if values.get("dropout") == 0.0 and corpus_chars and budget_passes(time_limit, corpus_chars) > SMALL_TEXT_PASSES:
        values["dropout"] = SMALL_TEXT_DROPOUT
    return values


def budget_passes(time_limit: float, corpus_chars: int) -> float:
    """About how many times a run of the short tier reads a text of ``corpus_chars`` in ``time_limit`` s."""
    return time_limit * SHORT_CHARS_PER_SECOND / max(corpus_chars, 1)


def recipe_values(name: str, time_limit: float | None = None, corpus_chars: int | None = None) -> dict[str, Any]:
    """The TrainConfig values of recipe ``name`` (``auto``: for ``time_limit`` seconds on ``corpus_chars``)."""
    if name == AUTO_RECIPE:
        return auto_values(time_limit, corpus_chars)
    if name not in RECIPES:
        raise CharLMError(f"unknown recipe {name!r}: pass one of {', '.join(RECIPE_NAMES)}")
    return dict(RECIPES[name])


def recipe_config(
    name: str = DEFAULT_RECIPE,
    *,
    time_limit: float | None = None,
    corpus_chars: int | None = None,
    **overrides: Any,
) -> TrainConfig:
    """The TrainConfig of recipe ``name``, with ``overrides`` (TrainConfig fields) on top; ``auto`` needs
    the run's ``time_limit`` (the ``Limits.max_seconds`` it will be given) and is told the text's length
    by ``corpus_chars`` (``len(text)``), so it can regularise a text the budget reads many times."""
    values = recipe_values(name, time_limit, corpus_chars)
    return TrainConfig(**{**values, **overrides})
