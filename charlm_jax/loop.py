"""The training loop: the one place that prints, shows progress, logs and checkpoints.

Each epoch: shuffled full batches of windows (the last partial batch is
dropped and reshuffled next epoch, so the step keeps one shape and compiles
once), validation bits per character on the held-out tail, the book's
four-temperature sample, a metrics line appended to ``metrics.jsonl`` and an
orbax checkpoint. Ctrl-C saves a checkpoint at the current step before
exiting; ``resume=True`` continues from the latest checkpoint and reaches the
same parameters as an uninterrupted run, because every random choice is a
pure function of (seed, epoch, step).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from charlm_jax.checkpoint import CheckpointMeta, CheckpointStore, abstract_tree
from charlm_jax.config import TrainConfig
from charlm_jax.data import (Vocab, batches_per_epoch, epoch_batches, padded_eval_batches,
                             prepare_text, split_windows)
from charlm_jax.distributed import (batch_sharding, check_batch_divides, is_main_process, make_mesh,
                                    put_global, replicated, shard_rows)
from charlm_jax.errors import CharLMError
from charlm_jax.generate import generate_ids
from charlm_jax.train import (TrainState, compile_steps, create_train_state, model_from_config,
                              nats_to_bits, train_state_items)

EVAL_BATCH = 1024


@dataclass
class FitResult:
    """What a run produced: the final state, its vocabulary and one record per finished epoch."""

    state: TrainState
    vocab: Vocab
    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False


@dataclass(frozen=True)
class RunKeys:
    """Independent PRNG streams of a run, all derived from its seed."""

    init: jax.Array
    shuffle: jax.Array
    dropout: jax.Array
    sample: jax.Array

    @classmethod
    def from_seed(cls, seed: int) -> "RunKeys":
        return cls(*jax.random.split(jax.random.key(seed), 4))


def evaluate(eval_fn, params, corpus, val_starts: np.ndarray, mesh, batch: int) -> float:
    """Mean next-character NLL (nats) over every validation window."""
    total, count = 0.0, 0.0
    data = batch_sharding(mesh)
    for starts, weights in padded_eval_batches(val_starts, batch):
        nll_sum, n = eval_fn(params, corpus, put_global(starts, data), put_global(weights, data))
        total += float(nll_sum)
        count += float(n)
    return total / max(count, 1.0)


def sample_prompt(key: jax.Array, text: str, train_chars: int, maxlen: int) -> str:
    """A random training-text window as the prompt, as the book picks ``start_index``."""
    start = int(jax.random.randint(key, (), 0, max(train_chars - maxlen - 1, 1)))
    return text[start:start + maxlen]


def epoch_sample_keys(keys: RunKeys, epoch: int) -> tuple[jax.Array, jax.Array]:
    """(prompt key, generation key) of an epoch's samples; epoch 1's prompt is also the saved default."""
    prompt_key, generation_key = jax.random.split(jax.random.fold_in(keys.sample, epoch))
    return prompt_key, generation_key


def epoch_samples(params, model, vocab: Vocab, prompt: str, config: TrainConfig, key: jax.Array,
                  mesh) -> dict[str, str]:
    """The book's per-epoch samples, all temperatures in one call, rows split over the mesh."""
    if config.sample_length == 0 or not config.temperatures:
        return {}
    temps = np.asarray(config.temperatures, np.float32)
    prompt_ids = np.broadcast_to(vocab.encode(prompt), (len(temps), len(prompt)))
    prompt_rows, temp_rows = shard_rows(mesh, prompt_ids, temps)
    ids = generate_ids(params, key, prompt_rows, temp_rows, model=model,
                       length=config.sample_length, mode=config.sample_mode, maxlen=config.maxlen)
    return {f"{t:g}": vocab.decode(row) for t, row in zip(config.temperatures, np.asarray(ids))}


def _config_differences(a: TrainConfig, b: TrainConfig, ignore=("epochs",)) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [k for k in da if k not in ignore and da[k] != db[k]]


def fit(config: TrainConfig, text: str, out_dir: str | os.PathLike, *, resume: bool = False,
        console: Console | None = None, mesh=None, stop_after_steps: int | None = None,
        show_progress: bool = True) -> FitResult:
    """Train ``config`` on ``text``, checkpointing into ``out_dir``; see the module docstring.

    ``stop_after_steps`` stops (and checkpoints) after that many total steps, as
    Ctrl-C does; tests use it to interrupt a run at a known point.
    """
    console = console or Console(soft_wrap=True, quiet=not is_main_process())
    mesh = mesh or make_mesh()
    check_batch_divides(config.batch_size, mesh)
    out_dir = Path(out_dir)
    store = CheckpointStore(out_dir)
    stop = StopFlag()
    try:
        with stop.on_sigint():
            return _fit(config, text, out_dir, store, resume, console, mesh, stop_after_steps, show_progress,
                        stop)
    finally:
        store.close()


class StopFlag:
    """Ctrl-C sets a flag the loop checks between steps, so no save is ever cut in half.

    A second Ctrl-C raises KeyboardInterrupt at once, for a user who really wants out.
    """

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def on_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _fit(config, text, out_dir, store, resume, console, mesh, stop_after_steps, show_progress,
         stop: StopFlag) -> FitResult:
    text = prepare_text(text, config.lowercase)
    vocab = Vocab.from_text(text)
    latest = store.latest_step()
    if latest is not None and not resume:
        raise CharLMError(f"{str(out_dir)!r} already holds a run (step {latest}): pass --resume to "
                          "continue it, or choose another --out")
    meta = store.restore_meta(latest) if latest is not None else None
    if meta is not None:
        differing = _config_differences(config, meta.config)
        if differing:
            raise CharLMError(f"--resume with settings that differ from the checkpoint's: {differing}; "
                              "pass the same settings as the original run (only --epochs may change)")
        if meta.vocab != vocab:
            raise CharLMError("--resume with a different text: its characters differ from the "
                              "checkpoint's vocabulary; pass the original run's text")

    keys = RunKeys.from_seed(config.seed)
    split = split_windows(len(text), config.maxlen, config.step, config.val_fraction)
    train_chars = int(split.train_starts[-1]) + config.maxlen + 1
    model = model_from_config(config, vocab.size)
    repl = replicated(mesh)
    state = jax.device_put(create_train_state(keys.init, config, vocab.size), repl)
    if meta is not None:
        params, train_items = store.restore(abstract_tree(state.params), abstract_tree(train_state_items(state)),
                                            step=meta.step)
        state = state.replace(params=params, step=train_items["step"], opt_state=train_items["opt_state"])
    corpus = put_global(vocab.encode(text), repl)
    train_fn, eval_fn = compile_steps(model, config, mesh)
    data_sharding = batch_sharding(mesh)
    eval_batch = max(EVAL_BATCH - EVAL_BATCH % mesh.devices.size, mesh.devices.size)

    steps_per_epoch = batches_per_epoch(len(split.train_starts), config.batch_size)
    if steps_per_epoch == 0:
        raise CharLMError(f"only {len(split.train_starts)} training windows, fewer than one batch of "
                          f"{config.batch_size}: pass a smaller --batch-size or a longer text")
    step = int(state.step)
    result = FitResult(state=state, vocab=vocab, config=config)
    metrics_path = out_dir / "metrics.jsonl"
    default_prompt = meta.default_prompt if meta is not None else sample_prompt(
        epoch_sample_keys(keys, 1)[0], text, train_chars, config.maxlen)
    console.print(f"[bold]charlm-jax[/] {len(text):,} characters, vocabulary {vocab.size}, "
                  f"{len(split.train_starts):,} training windows, {len(split.val_starts):,} validation "
                  f"windows; {mesh.devices.size} device(s) ({jax.devices()[0].platform}), "
                  f"{jax.process_count()} process(es)"
                  + (f"; resuming at step {step}" if meta is not None else ""))

    def save(epoch: int) -> None:
        if store.latest_step() == int(state.step):
            return  # already saved (a stop right after an epoch's checkpoint)
        store.save(state.params, train_state_items(state),
                   CheckpointMeta(config=config, vocab=vocab, step=int(state.step), epoch=epoch,
                                  default_prompt=default_prompt))

    progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[speed]} win/s"),
                        TextColumn("skipped {task.fields[skipped]}"),
                        TimeRemainingColumn(), console=console, disable=not show_progress,
                        transient=True)
    epoch = step // steps_per_epoch
    skipped_total = skipped_in_row = 0
    try:
        with progress:
            while epoch < config.epochs:
                first_batch = step - epoch * steps_per_epoch
                task = progress.add_task("train", total=steps_per_epoch, completed=first_batch,
                                         epoch=epoch + 1, loss=float("nan"), speed="-", skipped=skipped_total)
                epoch_start = time.perf_counter()
                losses = []
                pending = []
                mark_time, mark_step = time.perf_counter(), step
                for starts in epoch_batches(jax.random.fold_in(keys.shuffle, epoch), split.train_starts,
                                            config.batch_size, first_batch):
                    state, metrics = train_fn(state, corpus, put_global(starts, data_sharding), keys.dropout)
                    step += 1
                    pending.append((metrics["loss"], metrics["skipped"]))
                    if len(pending) == 20 or step % steps_per_epoch == 0 or config.max_nonfinite_in_row < 20:
                        # One sync per 20 steps keeps dispatch asynchronous.
                        values = []
                        for loss, was_skipped in pending:
                            if bool(was_skipped):
                                skipped_total += 1
                                skipped_in_row += 1
                            else:
                                skipped_in_row = 0
                                values.append(float(loss))
                        pending = []
                        losses.extend(values)
                        if config.max_nonfinite_in_row and skipped_in_row >= config.max_nonfinite_in_row:
                            raise CharLMError(
                                f"{skipped_in_row} steps in a row had non-finite loss or gradients (skipped, "
                                f"parameters untouched) at step {step}; stopped. The last good checkpoint "
                                f"in {out_dir} is step {store.latest_step()}: lower --learning-rate or set "
                                "--clip-norm, then --resume")
                        now = time.perf_counter()
                        speed = (step - mark_step) * config.batch_size / max(now - mark_time, 1e-9)
                        mark_time, mark_step = now, step
                        progress.update(task, completed=step - epoch * steps_per_epoch,
                                        loss=float(np.mean(values)) if values else float("nan"),
                                        speed=f"{speed:,.0f}", skipped=skipped_total)
                    if stop.requested or (stop_after_steps is not None and step >= stop_after_steps):
                        raise _StopRequested()
                progress.remove_task(task)
                epoch += 1
                seconds = time.perf_counter() - epoch_start
                record = _end_of_epoch(epoch, step, losses, seconds, state, eval_fn, corpus, split, mesh,
                                       eval_batch, model, vocab, config, keys, text, train_chars, console)
                record["skipped_steps_total"] = skipped_total
                result.history.append(record)
                if is_main_process():
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                save(epoch)
                if stop.requested:
                    raise _StopRequested()
    except _StopRequested:
        progress.stop()
        save(epoch)
        result.interrupted = True
        if stop.requested:
            console.print(f"[yellow]interrupted[/]: checkpoint saved at step {int(state.step)} in {out_dir}; "
                          "continue with --resume")
    result.state = state
    return result


class _StopRequested(Exception):
    """Raised inside the loop when ``stop_after_steps`` is reached."""


def _end_of_epoch(epoch, step, losses, seconds, state, eval_fn, corpus, split, mesh, eval_batch, model,
                  vocab, config, keys, text, train_chars, console) -> dict[str, Any]:
    train_loss = float(np.mean(losses)) if losses else float("nan")
    record: dict[str, Any] = {"epoch": epoch, "step": step, "train_loss": train_loss,
                              "epoch_seconds": round(seconds, 3),
                              "windows_per_second": round(len(losses) * config.batch_size / max(seconds, 1e-9), 1)}
    if len(split.val_starts):
        eval_start = time.perf_counter()
        val_loss = evaluate(eval_fn, state.params, corpus, split.val_starts, mesh, eval_batch)
        record.update(val_loss=val_loss, val_bits_per_char=nats_to_bits(val_loss),
                      eval_seconds=round(time.perf_counter() - eval_start, 3))
    console.print(f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f}"
                  + (f", validation {record['val_loss']:.4f} nats = {record['val_bits_per_char']:.3f} bits/char"
                     if "val_loss" in record else "")
                  + f" ({seconds:.1f} s, {record['windows_per_second']:,.0f} windows/s)")
    prompt_key, generation_key = epoch_sample_keys(keys, epoch)
    prompt = sample_prompt(prompt_key, text, train_chars, config.maxlen)
    samples = epoch_samples(state.params, model, vocab, prompt, config, generation_key, mesh)
    if samples:
        console.print(f'--- Generating with seed: "{prompt}"', markup=False, highlight=False)
        for temperature, sample in samples.items():
            console.print(f"------ temperature: {temperature}", markup=False, highlight=False)
            console.print(prompt + sample, markup=False, highlight=False)
        record["prompt"] = prompt
        record["samples"] = samples
    if not math.isfinite(train_loss):
        console.print("[red]training loss is not finite[/]")
    return record
