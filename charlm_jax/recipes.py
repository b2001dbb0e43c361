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


def recipe_config(name: str = DEFAULT_RECIPE, **overrides: Any) -> TrainConfig:
    """The TrainConfig of recipe ``name``, with ``overrides`` (TrainConfig fields) on top."""
    if name not in RECIPES:
        raise CharLMError(f"unknown recipe {name!r}: pass one of {', '.join(RECIPES)}")
    return TrainConfig(**{**RECIPES[name], **overrides})
