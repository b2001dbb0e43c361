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

from charlm_jax.config import TrainConfig
from charlm_jax.errors import CharLMError

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
# In a tier of ``auto``: bfloat16 where the device multiplies it faster, float32 elsewhere.
HARDWARE_DTYPE = "hardware"
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
AUTO_TIERS: tuple[tuple[float, dict[str, Any]], ...] = (
    (90.0, _SHORT),
    (math.inf, {**RECIPES["streams"], "epochs": 1000}),
)


def auto_values(time_limit: float | None, compute_dtype: str | None = None) -> dict[str, Any]:
    """The values ``--recipe auto`` uses for a budget of ``time_limit`` training seconds.

    A tier whose dtype is ``HARDWARE_DTYPE`` uses ``compute_dtype``, or when that is None
    ``preferred_compute_dtype()`` (which looks at the device); the others say which dtype they were measured in.
    """
    if time_limit is None:
        raise CharLMError(
            "--recipe auto picks its model and schedule for a time budget: pass --time-limit SECONDS "
            "(or name a fixed recipe: --recipe book, fast or streams)"
        )
    if not time_limit > 0:
        raise CharLMError(f"--time-limit must be > 0 seconds, got {time_limit:g}")
    values = dict(next(values for limit, values in AUTO_TIERS if time_limit <= limit))
    if values.get("compute_dtype") == HARDWARE_DTYPE:
        values["compute_dtype"] = compute_dtype or preferred_compute_dtype()
    return values


def preferred_compute_dtype() -> str:
    """bfloat16 where products in it are faster than float32's (a GPU, a TPU, a CPU with AMX or
    AVX512-BF16: benchmarks/compute_dtype.py), float32 elsewhere (an AVX2-only CPU converts each
    bfloat16 product to float32 and back, and is slower for it). Looks at JAX's backend only when JAX
    is already imported, so the CLI can ask before it splits the CPU into devices."""
    import sys

    if "jax" in sys.modules:
        import jax

        if jax.default_backend() in ("gpu", "tpu"):
            return "bfloat16"
    return "bfloat16" if cpu_has_bfloat16() else "float32"


def cpu_has_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (the amx_bf16 or avx512_bf16 flag of Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def recipe_values(name: str, time_limit: float | None = None, compute_dtype: str | None = None) -> dict[str, Any]:
    """The TrainConfig values of recipe ``name`` (``auto``: for ``time_limit`` seconds)."""
    if name == AUTO_RECIPE:
        return auto_values(time_limit, compute_dtype)
    if name not in RECIPES:
        raise CharLMError(f"unknown recipe {name!r}: pass one of {', '.join(RECIPE_NAMES)}")
    return dict(RECIPES[name])


def recipe_config(name: str = DEFAULT_RECIPE, *, time_limit: float | None = None, **overrides: Any) -> TrainConfig:
    """The TrainConfig of recipe ``name``, with ``overrides`` (TrainConfig fields) on top; ``auto`` needs
    the run's ``time_limit`` (the ``Limits.max_seconds`` it will be given)."""
    return TrainConfig(**{**recipe_values(name, time_limit, overrides.get("compute_dtype")), **overrides})
