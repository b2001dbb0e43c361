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
        # Chosen by benchmarks/recipes.py runs on the built-in corpus (results/2026-11-23-cpu-recipe-exploration,
        # 2026-11-23-cpu-recipes, 2026-11-24-cpu-recipes). The finding behind every value: at this data size the
        # book's LSTM(128) is limited by what it can hold, and bigger models by overfitting, so
        # the recipe buys depth and pays for it with dropout.
        #
        # A target at every window position: a training signal per character instead of one per window, at
        # almost the same cost per step (the backward pass runs through every step anyway).
        "objective": "dense",
        # Two layers of 192: ahead of one layer of 128, 256 or 384 and of three of 160 at equal time
        # (results/2026-11-23-cpu-recipe-exploration).
        "num_layers": 2,
        "hidden_size": 192,
        # On each layer's outputs: less let the larger models overfit by their second epoch, more held them
        # (results/2026-11-23-cpu-recipes-no-dropout). Decoupled weight decay added nothing measurable.
        "dropout": 0.4,
        # A short linear warm-up, then a cosine to lr_final_fraction of the peak over the run: over --epochs,
        # or, with --time-limit, over the steps the budget holds (measured), so a budgeted run ends at its low
        # rate. The short warm-up put it ahead of the book within the first minute (results/2026-11-24-cpu-recipes).
        "learning_rate": 0.02,
        "lr_schedule": "cosine",
        "warmup_steps": 50,
        "lr_final_fraction": 0.05,
        # The gradient's global norm spikes only in the first epoch (the records' grad_norm_max); clipping
        # tames those spikes and leaves later steps untouched.
        "clip_norm": 1.0,
        # Stop once validation stops improving; the best epoch stays in <out>/best.
        "early_stopping_patience": 3,
    },
}
RECIPES["streams"] = {
    **RECIPES["fast"],
    # fast's model, objective, optimizer and schedule on consecutive streams with the LSTM state carried
    # between batches (truncated BPTT, as char-rnn trains): each character is computed once per epoch
    # instead of once per window that holds it (results/2026-11-30-cpu-recipes-150s-exploration; the races
    # are in docs/recipes.md). An epoch is one pass over the text (seconds on a small one), so validation
    # runs every eval_every_steps instead of each epoch, and early stopping, counted in epochs, is off:
    # a --time-limit ends the run.
    "batching": "streams",
    "eval_every_steps": 100,
    "early_stopping_patience": 0,
}
DEFAULT_RECIPE = "book"
# ``auto`` is not a fixed set of values: it picks one for the time budget (``auto_values``).
AUTO_RECIPE = "auto"
RECIPE_NAMES = (*RECIPES, AUTO_RECIPE)

# The budget tiers of ``auto``: (up to this many training seconds, values), from benchmarks/budget_race.py
# (results/2026-12-02-cpu-budget-exploration on pydoc and python-source; the 600 s race of
# results/2026-11-30-cpu-recipes). At a minute the model that makes the most updates wins: one small layer
# on streams makes an order of magnitude more updates than the 2 x 192. At ten minutes the larger,
# regularised model wins (streams). Tier limits lie between the budgets measured.
_SHORT = {
    **RECIPES["streams"],
    "num_layers": 1,
    "hidden_size": 128,
    "dropout": 0.0,  # a few epochs of a small text in a minute: nothing to regularise yet
    "batch_size": 64,  # twice the updates of 128 streams in the same time (results/2026-12-02-cpu-budget-exploration)
    "epochs": 1000,  # an upper bound only: the time limit ends the run and its schedule is fitted to it
}
# At two minutes one layer of 192 (a little dropout) on streams: ahead of the one-minute model, which overfits or
# stalls by then, and of streams' 2 x 192, which has made few updates (results/2026-12-02-cpu-budget-exploration).
# Its upper limit lies between the 120 s and the 600 s evidence: not raced there.
_MEDIUM = {**_SHORT, "hidden_size": 192, "dropout": 0.1}
# A budgeted run validates on the tail's first AUTO_VAL_CHARS characters (the same ones each time, so records
# compare paired) in one pass with the state carried, as a streams model reads and generates: each character
# is computed once instead of once per window that holds it, so records can come often enough to see the
# best point within the wall-clock share train.loop.RECORD_SHARE gives them (at 60 s on Python sources it
# validated lower than the windows and level elsewhere: results/2026-12-05-cpu-wall-clock-60-stateful-val).
# The run's end scores its best checkpoint on the windows too (the book's figure; `charlm-jax eval` the whole
# tail).
AUTO_VAL_CHARS = 20_000
AUTO_VALIDATION = {"val_chars": AUTO_VAL_CHARS, "val_mode": "stateful"}
AUTO_TIERS: tuple[tuple[float, dict[str, Any]], ...] = (
    (90.0, {**_SHORT, **AUTO_VALIDATION}),
    (300.0, {**_MEDIUM, **AUTO_VALIDATION}),
    (math.inf, {**RECIPES["streams"], "epochs": 1000, **AUTO_VALIDATION}),
)
# A small text is read many times within the budget, and the short tier's unregularised model overfits it.
# The passes a budget makes over a text are estimated from the short tier's measured throughput (characters
# trained per second of budget on 2 CPU cores, results/2026-12-02-cpu-budget-race); above SMALL_TEXT_PASSES
# the short tier trains with SMALL_TEXT_DROPOUT instead of none.
SHORT_CHARS_PER_SECOND = 120_000
SMALL_TEXT_PASSES = 30.0
# Small slices of pydoc and python-source at 60 s: the most dropout tried scored best on both
# (results/2026-12-02-cpu-budget-small-texts).
SMALL_TEXT_DROPOUT = 0.4
# The same rule for the ten-minute tier's 2 x 192 model, which trains about LONG_CHARS_PER_SECOND characters per
# second of budget on 2 CPU cores (pydoc's ten minutes: 3,281 steps of 128 x 60 characters in 599.5 s,
# results/2026-12-05-cpu-wall-clock-600-runs). Its dropout of 0.4 held pydoc's ~55 passes (validation still
# falling at the end there) and not a text read hundreds of times: on the first half of IDLE's notes at 300 s
# (~210 passes) 0.55 validated 0.04 lower than 0.4 and 0.06 lower than 0.7, its gap (last - best) half of
# 0.4's (results/2026-12-05-cpu-wall-clock-passes-dropout-300). MANY_PASSES lies between the two.
LONG_CHARS_PER_SECOND = 42_000
MANY_PASSES = 100.0
MANY_PASSES_DROPOUT = 0.55
# Such a text is past its best early, and a fall from the best point's rate over a quarter of the stale steps
# overfits it again (gap last - best at 600 s: IDLE's notes +0.057, numpy's licence +0.090). Lower and shorter
# falls, one seed each (results/2026-12-05-cpu-wall-clock-600-fall): from a quarter of the rate, +0.024 on the
# notes and +0.026 on the licence (not tuned on); the whole rate over a tenth of the steps, +0.035 on the notes;
# from a tenth of the rate over a tenth of the steps, +0.000 on both. The last was run on both texts at once; a
# second seed of it, run after the choice, gave +0.000 on both too.
MANY_PASSES_ANNEAL_START = 0.1
MANY_PASSES_ANNEAL_SHARE = 0.1


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
    if not corpus_chars:
        return values
    if values.get("dropout") == 0.0 and budget_passes(time_limit, corpus_chars) > SMALL_TEXT_PASSES:
        values["dropout"] = SMALL_TEXT_DROPOUT
    long_tier = time_limit > AUTO_TIERS[-2][0]
    if long_tier and budget_passes(time_limit, corpus_chars, LONG_CHARS_PER_SECOND) > MANY_PASSES:
        values.update(
            dropout=MANY_PASSES_DROPOUT, anneal_start=MANY_PASSES_ANNEAL_START, anneal_share=MANY_PASSES_ANNEAL_SHARE
        )
    return values


def budget_passes(time_limit: float, corpus_chars: int, chars_per_second: float = SHORT_CHARS_PER_SECOND) -> float:
    """About how many times a tier whose model trains ``chars_per_second`` (default: the short tier's) reads
    a text of ``corpus_chars`` in ``time_limit`` s."""
    return time_limit * chars_per_second / max(corpus_chars, 1)


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
