"""The training loop: the one place that prints, shows progress, logs and checkpoints.

Read ``fit`` top to bottom: open the run directory, start or restore the run, then one flat loop
over blocks of batches (each block one jitted call of several optimizer steps, ``train.train_block``).
After each block the periodic work runs, each piece when its own rule says it is due: the
learning-rate schedule fitted to a time budget (once, after the second block), a record
(validation bits per character on the held-out tail, of the averaged weights too when the run keeps
them, the book's four-temperature sample, an orbax
checkpoint, the best so far kept in ``<out>/best``, a line in ``metrics.jsonl``), early stopping, and
under a wall-clock budget what a run past its best validation does (``train.past_best``).

Batches are the book's shuffled windows or consecutive streams (``data.make_batching``); the loop
does not tell them apart. Ctrl-C or SIGTERM saves a checkpoint at the current step before exiting;
``resume=True`` continues from the latest checkpoint and reaches the same parameters as an
uninterrupted run, because every random choice is a pure function of (seed, epoch, step).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import jax
import numpy as np
from rich.console import Console

from charlm_jax.data.prepared import PreparedCorpus
from charlm_jax.errors import CharLMError
from charlm_jax.runtime.distributed import (
    agreed_stop,
    block_sharding,
    default_mesh,
    is_main_process,
    make_mesh,
    put_windows,
    to_host,
    use_every_core,
)
from charlm_jax.settings.config import TrainConfig
from charlm_jax.train.init_from import DEFAULT_NEW_ROWS, fine_tune_config, read_source
from charlm_jax.train.past_best import act_on_past_best, annealed
from charlm_jax.train.records import (
    best_window_bits,
    save_stopped,
    say_best,
    write_record,
)
from charlm_jax.train.report import ProgressBar
from charlm_jax.train.run import Begin, FitResult, Limits, Run, RunState, StopReason, start_run, wall_clock
from charlm_jax.train.run_dir import RunDirectory, zero_carries
from charlm_jax.train.signals import Stopped, StopSignals
from charlm_jax.train.steps import compiled_train_block, learning_rate_schedule, make_optimizer


def fit(
    config: TrainConfig | None,
    text: str | PreparedCorpus | None,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overrides: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
    console: Console | None = None,
    mesh=None,
) -> FitResult:
    """Train on ``text`` (a string, or a ``PreparedCorpus`` read from its memory map), checkpointing into
    ``out_dir``; see the module docstring.

    The run records where its text came from (``load_text`` results know; a bare string is recorded by
    length and sha256 only). ``text=None`` means the built-in corpus for a new run and the run's own text
    for ``resume=True``; a resume given another text is refused, even one with the same characters.

    ``config`` is the run's whole setting (None: the defaults, the book's). ``overrides``
    (TrainConfig fields) go on top of it, or, when resuming, on top of the saved run's config,
    where only the fields in ``config.RESUMABLE_FIELDS`` may change; a full ``config`` given
    with ``resume=True`` must match the saved one in every other field. ``limits``: when to stop
    early (``Limits``). The progress bar shows on an interactive ``console`` only.
    """
    return train_run(config, text, out_dir, Begin(resume=resume), overrides, limits, console, mesh)


def fine_tune(
    source: str | os.PathLike,
    text: str | PreparedCorpus | None,
    out_dir: str | os.PathLike,
    *,
    config: TrainConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
    console: Console | None = None,
    new_rows: str = DEFAULT_NEW_ROWS,
) -> FitResult:
    """A new run in ``out_dir`` that starts from the weights of the run in ``source`` (``train --init-from``).

    The settings are the source's (or ``config``), with ``overrides`` on top; its model shape cannot change.
    The vocabulary is the union of the source's characters and ``text``'s; a new character's rows are made by
    ``new_rows`` (``train.init_from``). The optimizer, the steps and the schedule start fresh; the source run is
    only read. The new run is a run like any other (``fit(..., resume=True)`` continues it) and records its
    origin in ``<out_dir>/init_from.json``. A bad source or a shape that differs is refused before anything is
    written.
    """
    use_every_core()
    init = read_source(source, new_rows)
    config = fine_tune_config(init.config, config, dict(overrides or {}))
    return train_run(config, text, out_dir, Begin(init=init), None, limits, console, None)


def train_run(
    config: TrainConfig | None,
    text: str | PreparedCorpus | None,
    out_dir: str | os.PathLike,
    begin: Begin,
    overrides: Mapping[str, Any] | None,
    limits: Limits | None,
    console: Console | None,
    mesh,
) -> FitResult:
    """``fit`` and ``fine_tune``'s one loop: the run begins as ``begin`` says (new, resumed, from a source)."""
    use_every_core()
    limits = limits or Limits()
    console = console or Console(soft_wrap=True, quiet=not is_main_process())
    signals = limits.signals or StopSignals()
    with (
        signals.installed() if limits.signals is None else contextlib.nullcontext(),
        signals.deferred(),
        RunDirectory.opened(out_dir, lock=is_main_process()) as directory,
    ):
        started = limits.started if limits.started is not None else limits.clock()
        limits = replace(limits, signals=signals, started=started)
        mesh = mesh or training_mesh(config, overrides, out_dir, begin.resume)
        run, state = start_run(config, overrides or {}, text, directory, begin, mesh, console, limits)
        reason = None
        with ProgressBar(console, run.steps_per_epoch) as bar, contextlib.closing(run.events):
            try:
                for block in run.blocks_from(state.step):
                    if state.step % run.steps_per_epoch == 0:
                        state.carries = zero_carries(run.config, run.mesh)  # each epoch's streams start afresh
                    seconds = train_one_block(run, state, block)
                    bar.update(state.step, state.losses[-len(block) :], block.size / seconds, state.skipped_total)
                    if schedule_fit_due(run, state):
                        fit_schedule(run, state, seconds / len(block))
                    reason = stop_reason(run, state, len(block))
                    if record_due(run, state, len(block), reason):
                        recorded = run.limits.clock()
                        state.history.append(write_record(run, state))
                        account_record(run, state, run.limits.clock() - recorded)
                    if reason is None and (stalled(run, state) or past_best(run, state)):
                        reason = StopReason.EARLY_STOPPING
                    if reason is not None:
                        break
            except Stopped as stopped:  # a validation or sample that a stop request abandoned
                if stopped.forced:
                    raise
                reason = signal_reason(signals)
        if reason is not None and reason.by_signal:
            save_stopped(run, state)
    window_bits = best_window_bits(run, state, reason)
    say_best(run, state, reason, window_bits)
    return FitResult.of(run, state, reason or StopReason.COMPLETED, window_bits)


def training_mesh(config: TrainConfig | None, overrides: Mapping[str, Any] | None, out_dir, resume: bool):
    """The devices a run trains on when its caller names none: ``default_mesh`` for its batch size (a
    resumed run's saved one, read as JSON before any checkpoint is restored)."""
    from charlm_jax.io.checkpoint import peek_saved_config

    saved = peek_saved_config(out_dir) if resume else None
    batch = saved.batch_size if saved is not None else replace(config or TrainConfig(), **(overrides or {})).batch_size
    return default_mesh(batch) or make_mesh(jax.devices()[:1])


# ----------------------------------------------------------------------------------- one block


def train_one_block(run: Run, state: RunState, block: np.ndarray) -> float:
    """Run one jitted block of steps and account its metrics; returns its seconds (host sync included)."""
    started = run.limits.clock()
    windows = put_windows(run.corpus, block, run.config.maxlen + 1, block_sharding(run.mesh))
    (state.train, state.carries), metrics = compiled_train_block(run.mesh)(
        state.train,
        state.carries,
        windows,
        run.keys.dropout,
        model=run.model,
        maxlen=run.config.maxlen,
        objective=run.config.objective,
        carry_over=run.batching.carry_over,
    )
    metrics = to_host(metrics)  # the block's one host sync: (steps,) each
    seconds = run.limits.clock() - started
    account_steps(run, state, metrics)
    state.train_seconds += seconds
    state.seconds_since_record += seconds
    state.blocks_run += 1
    state.last_block_compiled = len(block) not in state.block_lengths_run
    state.block_lengths_run.add(len(block))
    if not state.last_block_compiled or not state.step_seconds:  # a block that compiled says little of the next
        state.step_seconds = seconds / len(block)
    if run.events.enabled:
        rate = float(learning_rate_schedule(run.config, state.schedule_steps, state.anneal)(state.step))
        run.events.block(
            state.step, metrics, seconds, block.size, block.size * run.config.maxlen, rate, state.skipped_total
        )
    return seconds


def account_steps(run: Run, state: RunState, metrics: dict[str, np.ndarray]) -> None:
    """Count one block's steps; stop the run after too many non-finite steps in a row."""
    for loss, skipped, grad_norm in zip(metrics["loss"], metrics["skipped"], metrics["grad_norm"]):
        state.step += 1
        if not skipped:
            state.skipped_in_row = 0
            state.losses.append(float(loss))
            state.grad_norms.append(float(grad_norm))
            continue
        state.skipped_total += 1
        state.skipped_in_row += 1
        limit = run.config.max_nonfinite_in_row
        if limit and state.skipped_in_row >= limit:
            raise CharLMError(
                f"{state.skipped_in_row} steps in a row had non-finite loss or gradients (skipped, "
                f"parameters untouched) at step {state.step}; stopped. The last good checkpoint in "
                f"{run.directory.path} is step {run.directory.store.latest_step()}: lower --learning-rate or set "
                "--clip-norm, then --resume"
            )


# ----------------------------------------------------------------------------------- periodic work

# A time budget's schedule is fitted by this block at the latest, even if every block so far compiled.
SCHEDULE_FIT_LATEST_BLOCK = 6


def schedule_fit_due(run: Run, state: RunState) -> bool:
    """Once per run under a time budget, timed on a block that compiled nothing: the first block of a length
    this process already ran (a block's steps are one compiled scan, and an epoch's last block may be shorter;
    a time that includes compiling plans the schedule several times too short). After
    ``SCHEDULE_FIT_LATEST_BLOCK`` blocks it fits on whatever it has."""
    return (
        state.blocks_run >= 2
        and (not state.last_block_compiled or state.blocks_run >= SCHEDULE_FIT_LATEST_BLOCK)
        and run.limits.budget is not None
        and not state.schedule_fitted
        and run.config.lr_schedule == "cosine"
    )


def fit_schedule(run: Run, state: RunState, step_seconds: float) -> None:
    """Fit the learning-rate schedule to the time budget, from the measured seconds per step.

    A cosine schedule planned over ``--epochs`` that the budget cannot reach is cut while the
    rate is still high; planned over the steps the remaining budget holds (2 % spare), the run
    ends on its final rate. A wall-clock budget's training time is what is left after the final
    record (``final_record_seconds``) and the share the records take on the way (``RECORD_SHARE``).
    The warm-up does not depend on the length, so switching during it
    changes no rate already used. The plan is saved with the checkpoints: a resumed run keeps it.
    """
    budget = run.limits.budget or 0.0
    fitted = min(run.total_steps, state.step + max(budget_steps_left(run, state, step_seconds), 1))
    state.schedule_steps, state.schedule_fitted = fitted, True
    state.train = state.train.replace(tx=make_optimizer(run.config, fitted))
    run.console.print(
        f"learning-rate schedule fitted to the {budget:g} s budget: {fitted:,} steps "
        f"({step_seconds * 1e3:.1f} ms per step measured)"
    )


def budget_steps_left(run: Run, state: RunState, step_seconds: float) -> int:
    """The optimizer steps the rest of the time budget holds (2 % spare): under a wall-clock budget, what is
    left after the final record (``final_record_seconds``) and the share the records take on the way
    (``RECORD_SHARE``); under a training-time budget, the training time left."""
    budget = run.limits.budget or 0.0
    if run.limits.max_seconds is not None:
        left = budget - wall_clock(run, state) - final_record_seconds(run, state)
        remaining = max(left, 0.0) * (1 - RECORD_SHARE)
    else:
        remaining = max(budget - state.train_seconds, 0.0)
    return int(0.98 * remaining / step_seconds)


def stop_reason(run: Run, state: RunState, block_steps: int) -> StopReason | None:
    """Whether to stop at this block boundary, and why.

    A wall-clock budget stops the run at the last boundary where one more block of ``block_steps``
    and the final record would not both fit in what is left of it. With several processes every
    one must stop at the same block: a signal one of them got is agreed on through a collective
    (``distributed.agreed_stop``); the clocks' decisions are made alike, from each process's own clock.
    """
    limits = run.limits
    if agreed_stop(run.signals):
        return signal_reason(run.signals)
    if annealed(state):
        return StopReason.EARLY_STOPPING
    if limits.max_steps is not None and state.step >= limits.max_steps:
        return StopReason.STEP_LIMIT
    if limits.max_train_seconds is not None and state.train_seconds >= limits.max_train_seconds:
        return StopReason.TIME_LIMIT
    if limits.max_seconds is not None:
        left = limits.max_seconds - wall_clock(run, state)
        if left < state.step_seconds * block_steps + final_record_seconds(run, state):
            return StopReason.TIME_LIMIT
    return None


# Under a wall-clock budget validation takes at most about this share of it: the steps between records grow until
# a validation costs this share of the training between two (issue 47 asks for at most ~10 %).
RECORD_SHARE = 0.08
# Before the first record is timed, the final record is expected to take this share of the budget.
FIRST_RECORD_SHARE = 0.05


def final_record_seconds(run: Run, state: RunState) -> float:
    """What the run's last record is expected to cost: the last one's time, or a share of the budget."""
    if state.record_seconds is not None:
        return state.record_seconds
    return FIRST_RECORD_SHARE * (run.limits.max_seconds or 0.0)


def account_record(run: Run, state: RunState, seconds: float) -> None:
    """After a record: its cost (what the final one is expected to take), and under a wall-clock budget the steps
    to the next one, so that validation takes ``RECORD_SHARE`` of the training between two (the first record's
    validation includes compiling it: an overestimate, which only spaces records out more)."""
    state.record_seconds, state.last_record_step = seconds, state.step
    last = state.history[-1] if state.history else {}
    if last.get("best"):
        state.best_wall_seconds = wall_clock(run, state)
    if run.limits.max_seconds is None or not state.step_seconds or "eval_seconds" not in last:
        return
    steps = math.ceil(last["eval_seconds"] / (RECORD_SHARE * state.step_seconds))
    state.record_every = max(run.config.eval_every_steps, steps)


def signal_reason(signals: StopSignals) -> StopReason:
    return StopReason.TERMINATED if signals.name == "SIGTERM" else StopReason.INTERRUPTED


def record_due(run: Run, state: RunState, block_steps: int, reason: StopReason | None) -> bool:
    """Whether the block just run ends with a record: at the run's end or a limit (never at a signal, whose
    checkpoint alone is saved), every ``eval_every_steps``, and at each epoch's end if the batching says so."""
    if reason is not None:
        return not reason.by_signal
    every = run.config.eval_every_steps
    if state.record_every:  # chosen for a wall-clock budget: steps since the last record
        crossed = state.step - state.last_record_step >= state.record_every
    else:
        crossed = bool(every) and state.step // every > (state.step - block_steps) // every
    epoch_end = state.step % run.steps_per_epoch == 0
    return state.step >= run.total_steps or crossed or (epoch_end and run.batching.records_each_epoch(every))


def past_best(run: Run, state: RunState) -> bool:
    """Under a wall-clock budget, at a record: whether the run ends because its validation is past its best
    (``train.past_best``; a run that anneals is rewound instead and goes on)."""
    if run.limits.max_seconds is None or state.last_record_step != state.step or not state.step_seconds:
        return False
    return act_on_past_best(run, state, lambda: budget_steps_left(run, state, state.step_seconds))


def stalled(run: Run, state: RunState) -> bool:
    """Early stopping, at an epoch's end: ``early_stopping_patience`` finished epochs without a new best."""
    patience = run.config.early_stopping_patience
    return (
        bool(patience)
        and state.best_epoch is not None
        and state.step % run.steps_per_epoch == 0
        and state.step // run.steps_per_epoch - state.best_epoch >= patience
    )
