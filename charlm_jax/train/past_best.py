"""What a run under a wall-clock budget does once its validation is past its best.

A run whose validation has not improved for ``PAST_BEST_SHARE`` of its budget (and ``PAST_BEST_RECORDS``
records) would spend the rest of it training a model that only overfits further. ``TrainConfig.past_best``
says what it does instead: ``anneal`` (on a cosine schedule) reads the best checkpoint back and lowers the
learning rate from the rate it had there (times ``anneal_start``) to the final one, over ``anneal_share`` of the
steps it took to go stale (or what is left of the budget, if less), then ends; ``stop`` ends the run at once;
``continue`` trains on. A constant rate (the book's) has no final rate to fall to: it stops.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from charlm_jax.train.run import Run, RunState, wall_clock
from charlm_jax.train.run_dir import read_checkpoint
from charlm_jax.train.steps import Anneal, make_optimizer

PAST_BEST_SHARE = 0.2
PAST_BEST_RECORDS = 3


def stale_since(run: Run, state: RunState) -> int | None:
    """The best record's step when the validation, checked at a record under a wall-clock budget, has not
    improved for ``PAST_BEST_SHARE`` of the budget and ``PAST_BEST_RECORDS`` records; otherwise None."""
    if run.limits.max_seconds is None or state.best_wall_seconds is None or state.last_record_step != state.step:
        return None
    best = best_step(state) or 0
    since = [record for record in state.history if record["step"] > best]
    stale = wall_clock(run, state) - state.best_wall_seconds
    if len(since) < PAST_BEST_RECORDS or stale < PAST_BEST_SHARE * run.limits.max_seconds:
        return None
    return best


def best_step(state: RunState) -> int | None:
    steps = [record["step"] for record in state.history if record.get("best")]
    return steps[-1] if steps else None


def act_on_past_best(run: Run, state: RunState, steps_left: Callable[[], int]) -> bool:
    """At a record: whether the run ends here because its validation is past its best (``state.stop_note`` says
    why); a run that anneals is rewound instead (``rewind``) and ends when the fall is over (``annealed``).
    ``steps_left``: the steps the rest of the budget holds (asked only when the run is past its best)."""
    policy = run.config.past_best
    if policy == "continue" or state.anneal is not None:
        return False
    best = stale_since(run, state)
    if best is None:
        return False
    cosine = policy == "anneal" and run.config.lr_schedule == "cosine"
    steps = min(steps_left(), int(run.config.anneal_share * (state.step - best))) if cosine else 0
    if steps > 0:
        rewind(run, state, Anneal(at_step=state.step, from_step=best, steps=steps))
        return False
    state.stop_note = (
        f"validation has not improved since step {best:,} ({PAST_BEST_SHARE:.0%} of the time limit and "
        f"{PAST_BEST_RECORDS}+ records ago): the rest of the budget would only overfit"
    )
    return True


def rewind(run: Run, state: RunState, anneal: Anneal) -> None:
    """Go back to the weights and optimizer statistics of the best checkpoint (``anneal.from_step``), keep the
    step counters running, and put the rate on the fall ``anneal`` describes. The data goes on from the
    current step (batches after the best point, not a replay)."""
    _, (params, items) = read_checkpoint(run.directory.best_store, run.mesh, anneal.from_step)

    def counters_now(best, now):
        # Step counters (the schedule's, the non-finite guard's) keep counting; the rest is the best's.
        return now if np.issubdtype(now.dtype, np.integer) else best

    opt_state = jax.tree.map(counters_now, items["opt_state"], state.train.opt_state)
    tx = make_optimizer(run.config, state.schedule_steps, anneal)
    state.train = state.train.replace(params=params, opt_state=opt_state, tx=tx)
    state.anneal = anneal
    run.console.print(
        f"validation has not improved since step {anneal.from_step:,}: rewound to it; the learning rate falls "
        f"from there to its final value over {anneal.steps:,} steps, then the run ends"
    )


def annealed(state: RunState) -> bool:
    """Whether a rewound run's fall is over (it then ends, and ``state.stop_note`` says why)."""
    if state.anneal is None or state.step < state.anneal.end_step:
        return False
    state.stop_note = (
        f"validation had not improved since step {state.anneal.from_step:,}; rewound to it at step "
        f"{state.anneal.at_step:,} and annealed the learning rate over {state.anneal.steps:,} steps"
    )
    return True
