"""A record of a run: validation on the held-out tail, the per-epoch samples, checkpoints (the run's and the
best), and the lines that say where a run stopped. Each is called by ``loop.fit`` when its rule says it is due.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import astuple
from typing import Any

import jax
import numpy as np

from charlm_jax.data.windows import padded_eval_batches, sample_prompt
from charlm_jax.io.checkpoint import CheckpointMeta
from charlm_jax.model.scoring import nats_to_bits, score_ids
from charlm_jax.runtime.distributed import (
    agreed_stop,
    batch_sharding,
    is_main_process,
    put_global,
    put_windows,
    shard_rows,
    to_host,
)
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.train.averaging import averaged_params
from charlm_jax.train.report import print_record, print_samples
from charlm_jax.train.run import Run, RunState, StopReason, wall_clock
from charlm_jax.train.run_dir import BEST_SUBDIR, checkpoint_items, read_checkpoint
from charlm_jax.train.signals import StopSignals
from charlm_jax.train.steps import eval_step, learning_rate_schedule
from charlm_jax.use.decode import SAMPLE_CHUNK, sample_in_chunks

# Windows per validation batch. The input projection of a batch is materialised for all 60 steps
# (batch x 60 x 4 * hidden floats: 126 MB at 1024 for the book's model), the largest temporary of a
# run; 256 keeps it at 31 MB and the matmuls at 128 rows per device.
EVAL_BATCH = 256
# A validation this large takes long enough to say so when it starts.
ANNOUNCED_VALIDATION = 100_000
LN2 = math.log(2.0)  # bits to nats: score_ids gives log2-probabilities, a record's val_loss is in nats
# With several processes a validation asks whether any of them was told to stop every this many batches
# (a collective of a few bytes; a batch of the book's model is tens of milliseconds on a CPU).
POLL_EVERY_BATCHES = 8


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
        "wall_seconds": round(wall_clock(run, state), 3),
        "learning_rate": float(learning_rate_schedule(config, state.schedule_steps, state.anneal)(state.step)),
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
        record["val_mode"] = config.val_mode  # which figure: the book's windows, or one pass with the state carried
        if config.val_mode == "window":
            record["val_windows"] = len(run.split.val_starts)  # the tail's windows this figure averages
        else:
            record["val_chars_scored"] = stateful_chars(run)
    print_record(run.console, record, config.epochs, run.vocab.unit)
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
        wall_seconds=wall_clock(run, state),
        skipped_steps_total=state.skipped_total,
        schedule_steps=state.schedule_steps if state.schedule_fitted else None,
        anneal=astuple(state.anneal) if state.anneal is not None else None,
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
            f" --train-time-limit {limits.max_train_seconds:g}" if limits.max_train_seconds is not None else "",
        ]
    )
    return f"charlm-jax train --out {run.directory.path} --resume{flags}"


def best_window_bits(run: Run, state: RunState, reason: StopReason | None) -> float | None:
    """A run validated statefully ends by scoring ``<out>/best`` the book's way too (each tail character from
    the ``maxlen`` before it, over the run's validation windows; ``eval`` scores every window of the tail),
    said beside the cheap figure. None for a run validated on windows, stopped by a signal, or without a best."""
    if run.config.val_mode != "stateful" or state.best_epoch is None or (reason is not None and reason.by_signal):
        return None
    last = state.history[-1] if state.history else {}
    if last.get("best") and "best_weights" not in last:  # the weights in memory are the best ones
        params = state.train.params
    else:
        params = read_checkpoint(run.directory.best_store, run.mesh, run.directory.best_store.latest_step() or 0)[1][0]
    return nats_to_bits(validate(run, params, "window"))


def say_best(run: Run, state: RunState, reason: StopReason | None, window_bits: float | None = None) -> None:
    """The run's last line: where its best validation is kept (and why it stopped early, if it did)."""
    if state.best_epoch is None:
        return
    mode = f" ({run.config.val_mode})" if window_bits is not None else ""
    windows = f", {window_bits:.3f} on the tail's windows (the book's figure)" if window_bits is not None else ""
    kept = (
        f"{state.best_val_bits_per_char:.3f} bits/{run.vocab.unit}{mode} at epoch {state.best_epoch}{windows}, "
        f"kept in {run.directory.path / BEST_SUBDIR}"
    )
    if reason is StopReason.EARLY_STOPPING:
        why = state.stop_note or (f"validation has not improved for {run.config.early_stopping_patience} epoch(s)")
        run.console.print(f"early stopping: {why}; best {kept}")
    else:
        run.console.print(f"best validation {kept}")


def stateful_chars(run: Run) -> int:
    """How many characters a stateful validation scores: the tail's first ``val_chars`` (0: all of it)."""
    tail = len(run.corpus) - run.split.val_start - 1  # the tail's first character is read, not scored
    return min(run.config.val_chars, tail) if run.config.val_chars else tail


def stateful_tail(run: Run) -> np.ndarray:
    """The ids a stateful validation reads: ``stateful_chars`` scored ones and the one read before them."""
    start = run.split.val_start
    return np.asarray(run.corpus[start : start + stateful_chars(run) + 1], np.int32)


def validate(run: Run, params, mode: str | None = None) -> float:
    """Mean next-character NLL (nats) over the validation windows (already capped by ``val_chars``), or in
    ``mode`` (default: the run's ``val_mode``) ``"stateful"`` over one pass of the tail's first ``val_chars``
    characters, the state carried.

    A stop request abandons it between batches (``Stopped``); with several processes, once every
    process has agreed on it (``stop_poll``), so they all abandon the same batch. A stateful pass is a few
    compiled chunks and is not abandoned.
    """
    if (mode or run.config.val_mode) == "stateful":
        return float(-np.mean(score_ids(params, run.model, stateful_tail(run), "stateful", run.config.maxlen))) * LN2
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
    options = GenerationOptions(length=config.sample_length, temperatures=config.temperatures, mode=config.sample_mode)
    encoded = run.vocab.encode(prompt)
    prompt_ids = np.broadcast_to(encoded, (options.rows, len(encoded)))
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
