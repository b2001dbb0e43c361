"""The training loop: the one place that prints, shows progress, logs and checkpoints.

Read ``fit`` top to bottom: open the run directory, start or restore the run, then one flat loop
over blocks of batches (each block one jitted call of several optimizer steps, ``train.train_block``).
After each block the periodic work runs, each piece when its own rule says it is due: the
learning-rate schedule fitted to a time budget (once, after the second block), a record
(validation bits per character on the held-out tail, of the averaged weights too when the run keeps
them, the book's four-temperature sample, an orbax
checkpoint, the best so far kept in ``<out>/best``, a line in ``metrics.jsonl``), and early stopping.

Batches are the book's shuffled windows or consecutive streams (``data.make_batching``); the loop
does not tell them apart. Ctrl-C or SIGTERM saves a checkpoint at the current step before exiting;
``resume=True`` continues from the latest checkpoint and reaches the same parameters as an
uninterrupted run, because every random choice is a pure function of (seed, epoch, step).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import jax
import numpy as np
from rich.console import Console

from charlm_jax.averaging import averaged_params
from charlm_jax.checkpoint import CheckpointMeta
from charlm_jax.config import TrainConfig
from charlm_jax.data import padded_eval_batches, sample_prompt
from charlm_jax.decode import SAMPLE_CHUNK, sample_in_chunks
from charlm_jax.distributed import (
    agreed_stop,
    batch_sharding,
    block_sharding,
    default_mesh,
    is_main_process,
    make_mesh,
    put_global,
    put_windows,
    shard_rows,
    to_host,
    use_every_core,
)
from charlm_jax.errors import CharLMError
from charlm_jax.prepared import PreparedCorpus
from charlm_jax.report import ProgressBar, print_record, print_samples
from charlm_jax.run import FitResult, Limits, Run, RunState, StopReason, start_run
from charlm_jax.run_dir import BEST_SUBDIR, RunDirectory, checkpoint_items, zero_carries
from charlm_jax.scoring import nats_to_bits
from charlm_jax.stopping import Stopped, StopSignals
from charlm_jax.train import compiled_train_block, eval_step, learning_rate_schedule, make_optimizer

# Windows per validation batch. The input projection of a batch is materialised for all 60 steps
# (batch x 60 x 4 * hidden floats: 126 MB at 1024 for the book's model), the largest temporary of a
# run; 256 keeps it at 31 MB and the matmuls at 128 rows per device.
EVAL_BATCH = 256
# A validation this large takes long enough to say so when it starts.
ANNOUNCED_VALIDATION = 100_000
# With several processes a validation asks whether any of them was told to stop every this many batches
# (a collective of a few bytes; a batch of the book's model is tens of milliseconds on a CPU).
POLL_EVERY_BATCHES = 8


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
    use_every_core()
    limits = limits or Limits()
    console = console or Console(soft_wrap=True, quiet=not is_main_process())
    signals = limits.signals or StopSignals()
    with (
        signals.installed() if limits.signals is None else contextlib.nullcontext(),
        signals.deferred(),
        RunDirectory.opened(out_dir, lock=is_main_process()) as directory,
    ):
        limits, mesh = replace(limits, signals=signals), mesh or training_mesh(config, overrides, out_dir, resume)
        run, state = start_run(config, overrides or {}, text, directory, resume, mesh, console, limits)
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
                    reason = stop_reason(run, state)
                    if record_due(run, state, len(block), reason):
                        state.history.append(write_record(run, state))
                    if reason is None and stalled(run, state):
                        reason = StopReason.EARLY_STOPPING
                    if reason is not None:
                        break
            except Stopped as stopped:  # a validation or sample that a stop request abandoned
                if stopped.forced:
                    raise
                reason = signal_reason(signals)
        if reason is not None and reason.by_signal:
            save_stopped(run, state)
    say_best(run, state, reason)
    return FitResult.of(run, state, reason or StopReason.COMPLETED)


def training_mesh(config: TrainConfig | None, overrides: Mapping[str, Any] | None, out_dir, resume: bool):
    """The devices a run trains on when its caller names none: ``default_mesh`` for its batch size (a
    resumed run's saved one, read as JSON before any checkpoint is restored)."""
    from charlm_jax.checkpoint import peek_saved_config

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
    if run.events.enabled:
        rate = float(learning_rate_schedule(run.config, state.schedule_steps)(state.step))
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
        and run.limits.max_seconds is not None
        and not state.schedule_fitted
        and run.config.lr_schedule == "cosine"
    )


def fit_schedule(run: Run, state: RunState, step_seconds: float) -> None:
    """Fit the learning-rate schedule to the time budget, from the measured seconds per step.

    A cosine schedule planned over ``--epochs`` that the budget cannot reach is cut while the
    rate is still high; planned over the steps the remaining budget holds (2 % spare), the run
    ends on its final rate. The warm-up does not depend on the length, so switching during it
    changes no rate already used. The plan is saved with the checkpoints: a resumed run keeps it.
    """
    budget = run.limits.max_seconds or 0.0
    remaining = max(budget - state.train_seconds, 0.0)
    fitted = min(run.total_steps, state.step + max(int(0.98 * remaining / step_seconds), 1))
    state.schedule_steps, state.schedule_fitted = fitted, True
    state.train = state.train.replace(tx=make_optimizer(run.config, fitted))
    run.console.print(
        f"learning-rate schedule fitted to the {budget:g} s budget: {fitted:,} steps "
        f"({step_seconds * 1e3:.1f} ms per step measured)"
    )


def stop_reason(run: Run, state: RunState) -> StopReason | None:
    """Whether to stop at this block boundary, and why.

    With several processes every one must stop at the same block: a signal one of them got is
    agreed on through a collective (``distributed.agreed_stop``).
    """
    limits = run.limits
    if agreed_stop(run.signals):
        return signal_reason(run.signals)
    if limits.max_steps is not None and state.step >= limits.max_steps:
        return StopReason.STEP_LIMIT
    if limits.max_seconds is not None and state.train_seconds >= limits.max_seconds:
        return StopReason.TIME_LIMIT
    return None


def signal_reason(signals: StopSignals) -> StopReason:
    return StopReason.TERMINATED if signals.name == "SIGTERM" else StopReason.INTERRUPTED


def record_due(run: Run, state: RunState, block_steps: int, reason: StopReason | None) -> bool:
    """Whether the block just run ends with a record: at the run's end or a limit (never at a signal, whose
    checkpoint alone is saved), every ``eval_every_steps``, and at each epoch's end if the batching says so."""
    if reason is not None:
        return not reason.by_signal
    every = run.config.eval_every_steps
    crossed = bool(every) and state.step // every > (state.step - block_steps) // every
    epoch_end = state.step % run.steps_per_epoch == 0
    return state.step >= run.total_steps or crossed or (epoch_end and run.batching.records_each_epoch(every))


def stalled(run: Run, state: RunState) -> bool:
    """Early stopping, at an epoch's end: ``early_stopping_patience`` finished epochs without a new best."""
    patience = run.config.early_stopping_patience
    return (
        bool(patience)
        and state.best_epoch is not None
        and state.step % run.steps_per_epoch == 0
        and state.step // run.steps_per_epoch - state.best_epoch >= patience
    )


def write_record(run: Run, state: RunState) -> dict[str, Any]:
    """Validate, sample, checkpoint and log the steps since the last record; keep the best."""
    config, epoch = run.config, run.epoch_of(state.step)
    train_loss = float(np.mean(state.losses)) if state.losses else float("nan")
    seconds = state.seconds_since_record
    record: dict[str, Any] = {
        "epoch": epoch,
        "step": state.step,
        "train_loss": train_loss,
        "epoch_seconds": round(seconds, 3),
        "windows_per_second": round(len(state.losses) * config.batch_size / max(seconds, 1e-9), 1),
        "train_seconds": round(state.train_seconds, 3),
        "learning_rate": float(learning_rate_schedule(config, state.schedule_steps)(state.step)),
        "schedule_steps": state.schedule_steps,
        "skipped_steps_total": state.skipped_total,
    }
    if state.step % run.steps_per_epoch:
        record["partial_epoch"] = True
    if state.grad_norms:
        record.update(grad_norm_mean=float(np.mean(state.grad_norms)), grad_norm_max=float(np.max(state.grad_norms)))
    averaged = averaged_params(state.train.opt_state)
    if len(run.split.val_starts):
        started = run.limits.clock()
        val_loss = validate(run, state.train.params)
        record.update(val_loss=val_loss, val_bits_per_char=nats_to_bits(val_loss))
        if averaged is not None:
            record["averaged_val_bits_per_char"] = nats_to_bits(validate(run, averaged))
        record["eval_seconds"] = round(run.limits.clock() - started, 3)
    print_record(run.console, record, config.epochs)
    prompt_key, generation_key = run.keys.sample_keys(epoch)
    prompt = sample_prompt(prompt_key, run.vocab, run.corpus, run.split.val_start, config.maxlen)
    samples = epoch_samples(run, state.train.params, prompt, generation_key)
    if samples:
        print_samples(run.console, prompt, samples)
        record.update(prompt=prompt, samples=samples)
    bits, best_params = better_weights(record, state.train.params, averaged)
    improved = (
        bits is not None
        and math.isfinite(bits)
        and (state.best_val_bits_per_char is None or bits < state.best_val_bits_per_char)
    )
    # The run's own checkpoint first (a crash between the two saves loses nothing), then the best, and
    # the record last: metrics.jsonl never holds a step whose checkpoint was not written.
    save_checkpoint(run, state)
    if improved:
        record["best"] = True
        if best_params is averaged:
            record["best_weights"] = "averaged"  # <out>/best holds the average, not the weights trained
        with run.signals.critical():
            run.directory.best_store.save(
                best_params, checkpoint_items(state.train, state.carries), checkpoint_meta(run, state, bits)
            )
        state.best_epoch, state.best_val_bits_per_char = epoch, bits
    if is_main_process():
        run.directory.append_record(record)
        run.events.record(record)
    state.losses, state.grad_norms, state.seconds_since_record = [], [], 0.0
    return record


def better_weights(record: dict[str, Any], trained, averaged) -> tuple[float | None, Any]:
    """(validation bits, params) of whichever weights a record validated better: the trained ones, or their
    average when the run keeps one and it scored lower (a non-finite score never wins)."""

    def score(key: str) -> float:
        value = record.get(key)
        return value if value is not None and math.isfinite(value) else math.inf

    if averaged is not None and score("averaged_val_bits_per_char") < score("val_bits_per_char"):
        return record["averaged_val_bits_per_char"], averaged
    return record.get("val_bits_per_char"), trained


def checkpoint_meta(run: Run, state: RunState, val_bits: float | None = None) -> CheckpointMeta:
    return CheckpointMeta(
        config=run.config,
        vocab=run.vocab,
        step=state.step,
        epoch=run.epoch_of(state.step),
        default_prompt=run.default_prompt,
        val_bits_per_char=val_bits,
        train_seconds=state.train_seconds,
        skipped_steps_total=state.skipped_total,
        schedule_steps=state.schedule_steps if state.schedule_fitted else None,
        text=run.text,
    )


def save_checkpoint(run: Run, state: RunState) -> None:
    if run.directory.store.latest_step() != state.step:  # a stop right after a record's checkpoint saves nothing new
        with run.signals.critical():
            run.directory.store.save(
                state.train.params, checkpoint_items(state.train, state.carries), checkpoint_meta(run, state)
            )


def save_stopped(run: Run, state: RunState) -> None:
    """A signal's stop: the current step saved, and the command that continues it (every other process
    of a multi-process run says on its stderr where it stopped)."""
    save_checkpoint(run, state)
    path = run.directory.path
    if not is_main_process():
        print(
            f"charlm-jax: process {jax.process_index()} of {jax.process_count()} stopped by {run.signals.name} "
            f"at step {state.step}; process 0 saved the checkpoint in {path}",
            file=sys.stderr,
            flush=True,
        )
    run.console.print(
        f"stopped by {run.signals.name} at step {state.step}; checkpoint in {path}; resume with {resume_command(run)}"
    )


def resume_command(run: Run) -> str:
    """The command that continues this run as it was asked for: the run's text and settings are read from
    its checkpoint; the limits, which are not settings, are repeated."""
    limits = run.limits
    flags = "".join(
        [
            f" --max-steps {limits.max_steps}" if limits.max_steps is not None else "",
            f" --time-limit {limits.max_seconds:g}" if limits.max_seconds is not None else "",
        ]
    )
    return f"charlm-jax train --out {run.directory.path} --resume{flags}"


def say_best(run: Run, state: RunState, reason: StopReason | None) -> None:
    """The run's last line: where its best validation is kept (and why it stopped early, if it did)."""
    if state.best_epoch is None:
        return
    kept = (
        f"{state.best_val_bits_per_char:.3f} bits/char at epoch {state.best_epoch}, kept in "
        f"{run.directory.path / BEST_SUBDIR}"
    )
    if reason is StopReason.EARLY_STOPPING:
        run.console.print(
            f"early stopping: validation has not improved for {run.config.early_stopping_patience} "
            f"epoch(s); best {kept}"
        )
    else:
        run.console.print(f"best validation {kept}")


def validate(run: Run, params) -> float:
    """Mean next-character NLL (nats) over the validation windows (already capped by ``val_chars``).

    A stop request abandons it between batches (``Stopped``); with several processes, once every
    process has agreed on it (``stop_poll``), so they all abandon the same batch.
    """
    starts = run.split.val_starts
    if len(starts) >= ANNOUNCED_VALIDATION:
        run.console.print(
            f"validating on {len(starts):,} held-out windows (a stop request drops it and saves "
            "the last completed step)"
        )
    devices = run.mesh.devices.size
    batch = max(EVAL_BATCH - EVAL_BATCH % devices, devices)
    total, count = 0.0, 0.0
    data = batch_sharding(run.mesh)
    poll = stop_poll(run.signals, every=POLL_EVERY_BATCHES)
    for batch_starts, weights in padded_eval_batches(starts, batch):
        poll()
        windows = put_windows(run.corpus, batch_starts, run.config.maxlen + 1, data)
        nll_sum, n = eval_step(params, windows, put_global(weights, data), model=run.model, maxlen=run.config.maxlen)
        total += float(to_host(nll_sum))
        count += float(to_host(n))
    return total / max(count, 1.0)


def stop_poll(signals: StopSignals, every: int = 1) -> Callable[[], None]:
    """What abandons a validation or a sample between its batches (raising ``Stopped``): in one process its own
    request; with several, a request agreed on by all of them every ``every`` calls (a collective, which every
    process reaches at the same batch, since they run the same batches), so they abandon it together."""
    if jax.process_count() == 1:
        return signals.check
    calls = itertools.count(1)

    def poll() -> None:
        if next(calls) % every == 0 and agreed_stop(signals):
            signals.check()

    return poll


def epoch_samples(run: Run, params, prompt: str, key: jax.Array) -> dict[str, str]:
    """The book's per-epoch samples, all temperatures as rows of one batch split over the mesh.

    Read in pieces of ``SAMPLE_CHUNK`` steps (the text is the same as one whole call's) so that a
    stop request is honoured between pieces however long the samples are.
    """
    config = run.config
    if config.sample_length == 0 or not config.temperatures:
        return {}
    options = config.sample_options()
    prompt_ids = np.broadcast_to(run.vocab.encode(prompt), (options.rows, len(prompt)))
    prompt_rows, temperature_rows = shard_rows(run.mesh, prompt_ids, options.temperatures)
    poll = stop_poll(run.signals)
    chunk, pieces = min(SAMPLE_CHUNK, options.length), []
    for ids in sample_in_chunks(
        params,
        key,
        prompt_rows,
        options.with_rows(temperature_rows),
        model=run.model,
        maxlen=config.maxlen,
        chunk=chunk,
    ):
        pieces.append(ids)
        if len(pieces) * chunk < options.length:
            poll()
    ids = np.concatenate(pieces, axis=1)  # (temperatures, length)
    return {f"{t:g}": run.vocab.decode(row) for t, row in zip(config.temperatures, ids)}
