"""The training loop: the one place that prints, shows progress, logs and checkpoints.

Each epoch: shuffled full batches of windows (the last partial batch is
dropped and reshuffled next epoch, so the step keeps one shape and compiles
once), validation bits per character on the held-out tail, the book's
four-temperature sample, a metrics line appended to ``metrics.jsonl`` and an
orbax checkpoint; the epoch with the lowest validation so far is also kept in
``<out>/best``, and ``early_stopping_patience`` epochs without a new best end
the run. Ctrl-C saves a checkpoint at the current step before
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
from charlm_jax.train import (TrainState, compile_steps, create_train_state, learning_rate_schedule,
                              model_from_config, nats_to_bits, train_state_items)

EVAL_BATCH = 1024


STOP_REASONS = ("completed", "early_stopping", "interrupted", "step_limit", "time_limit")


@dataclass
class FitResult:
    """What a run produced: the final state, its vocabulary and one record per finished epoch.

    ``stop_reason`` is one of STOP_REASONS; ``best_epoch`` / ``best_val_bits_per_char`` describe
    the checkpoint kept in ``<out>/best`` (None without a validation split).
    """

    state: TrainState
    vocab: Vocab
    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "completed"
    best_epoch: int | None = None
    best_val_bits_per_char: float | None = None

    @property
    def interrupted(self) -> bool:
        """Stopped before its planned epochs by Ctrl-C or a step/time limit (resumable)."""
        return self.stop_reason in ("interrupted", "step_limit", "time_limit")


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
        stop_after_seconds: float | None = None, show_progress: bool = True) -> FitResult:
    """Train ``config`` on ``text``, checkpointing into ``out_dir``; see the module docstring.

    ``stop_after_steps`` / ``stop_after_seconds`` (training time, validation excluded, counted
    across resumes) stop the run there: the partial epoch is validated, recorded and
    checkpointed, and ``--resume`` continues it. Tests use them to interrupt at a known point;
    benchmarks use the time limit to compare recipes at equal time.
    """
    console = console or Console(soft_wrap=True, quiet=not is_main_process())
    mesh = mesh or make_mesh()
    check_batch_divides(config.batch_size, mesh)
    out_dir = Path(out_dir)
    store = CheckpointStore(out_dir)
    best_store = CheckpointStore(out_dir / BEST_SUBDIR, max_to_keep=1)
    limits = _Limits(stop_after_steps, stop_after_seconds)
    stop = StopFlag()
    try:
        with stop.on_sigint():
            return _fit(config, text, out_dir, store, best_store, resume, console, mesh, limits,
                        show_progress, stop)
    finally:
        store.close()
        best_store.close()


BEST_SUBDIR = "best"


@dataclass(frozen=True)
class _Limits:
    steps: int | None = None
    seconds: float | None = None

    def reached(self, step: int, train_seconds: float) -> str | None:
        if self.steps is not None and step >= self.steps:
            return "step_limit"
        if self.seconds is not None and train_seconds >= self.seconds:
            return "time_limit"
        return None


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


def _previous_train_seconds(metrics_path: Path, step: int) -> float:
    """Training seconds already spent before ``step``, from the run's own metrics (for resumes)."""
    if not metrics_path.exists():
        return 0.0
    seconds = 0.0
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("step", math.inf) <= step:
            seconds = max(seconds, float(record.get("train_seconds", 0.0)))
    return seconds


def _fit(config, text, out_dir, store, best_store, resume, console, mesh, limits: _Limits, show_progress,
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
    steps_per_epoch = batches_per_epoch(len(split.train_starts), config.batch_size)
    if steps_per_epoch == 0:
        raise CharLMError(f"only {len(split.train_starts)} training windows, fewer than one batch of "
                          f"{config.batch_size}: pass a smaller --batch-size or a longer text")
    total_steps = config.epochs * steps_per_epoch
    model = model_from_config(config, vocab.size)
    repl = replicated(mesh)
    state = jax.device_put(create_train_state(keys.init, config, vocab.size, total_steps), repl)
    if meta is not None:
        params, train_items = store.restore(abstract_tree(state.params), abstract_tree(train_state_items(state)),
                                            step=meta.step)
        state = state.replace(params=params, step=train_items["step"], opt_state=train_items["opt_state"])
    corpus = put_global(vocab.encode(text), repl)
    train_fn, eval_fn = compile_steps(model, config, mesh)
    data_sharding = batch_sharding(mesh)
    eval_batch = max(EVAL_BATCH - EVAL_BATCH % mesh.devices.size, mesh.devices.size)
    schedule = learning_rate_schedule(config, total_steps)

    step = int(state.step)
    result = FitResult(state=state, vocab=vocab, config=config)
    metrics_path = out_dir / "metrics.jsonl"
    train_seconds = _previous_train_seconds(metrics_path, step) if meta is not None else 0.0
    if meta is not None and best_store.latest_step() is not None:
        best_meta = best_store.restore_meta()
        result.best_epoch, result.best_val_bits_per_char = best_meta.epoch, best_meta.val_bits_per_char
    default_prompt = meta.default_prompt if meta is not None else sample_prompt(
        epoch_sample_keys(keys, 1)[0], text, train_chars, config.maxlen)
    console.print(f"[bold]charlm-jax[/] {len(text):,} characters, vocabulary {vocab.size}, "
                  f"{len(split.train_starts):,} training windows, {len(split.val_starts):,} validation "
                  f"windows; {mesh.devices.size} device(s) ({jax.devices()[0].platform}), "
                  f"{jax.process_count()} process(es)"
                  + (f"; resuming at step {step}" if meta is not None else ""))

    def checkpoint_meta(epoch: int, val_bits: float | None = None) -> CheckpointMeta:
        return CheckpointMeta(config=config, vocab=vocab, step=int(state.step), epoch=epoch,
                              default_prompt=default_prompt, val_bits_per_char=val_bits)

    def save(epoch: int) -> None:
        if store.latest_step() == int(state.step):
            return  # already saved (a stop right after an epoch's checkpoint)
        store.save(state.params, train_state_items(state), checkpoint_meta(epoch))

    def finish_epoch(epoch: int, losses, grad_norms, seconds: float, partial: bool) -> dict[str, Any]:
        """Validate, sample, log and checkpoint; keep the best checkpoint; returns the epoch's record."""
        record = _end_of_epoch(epoch, step, losses, seconds, state, eval_fn, corpus, split, mesh,
                               eval_batch, model, vocab, config, keys, text, train_chars, console)
        record.update(train_seconds=round(train_seconds, 3), learning_rate=float(schedule(step)),
                      skipped_steps_total=skipped_total)
        if partial:
            record["partial_epoch"] = True
        if grad_norms:
            record.update(grad_norm_mean=float(np.mean(grad_norms)), grad_norm_max=float(np.max(grad_norms)))
        bits = record.get("val_bits_per_char")
        improved = bits is not None and math.isfinite(bits) and (
            result.best_val_bits_per_char is None or bits < result.best_val_bits_per_char)
        if improved:
            record["best"] = True
        result.history.append(record)
        if is_main_process():
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        save(epoch)  # the run's own checkpoint first: a crash between the two saves loses nothing
        if improved:
            result.best_epoch, result.best_val_bits_per_char = epoch, bits
            best_store.save(state.params, train_state_items(state), checkpoint_meta(epoch, bits))
        return record

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
                seconds_before_epoch = train_seconds
                losses, grad_norms, pending = [], [], []
                limit = None
                mark_time, mark_step = time.perf_counter(), step
                for starts in epoch_batches(jax.random.fold_in(keys.shuffle, epoch), split.train_starts,
                                            config.batch_size, first_batch):
                    state, metrics = train_fn(state, corpus, put_global(starts, data_sharding), keys.dropout)
                    step += 1
                    pending.append((metrics["loss"], metrics["skipped"], metrics["grad_norm"]))
                    limit = None
                    if (len(pending) == 20 or step % steps_per_epoch == 0 or config.max_nonfinite_in_row < 20
                            or limits.steps is not None):
                        # One sync per 20 steps keeps dispatch asynchronous.
                        values = []
                        for loss, was_skipped, grad_norm in pending:
                            if bool(was_skipped):
                                skipped_total += 1
                                skipped_in_row += 1
                            else:
                                skipped_in_row = 0
                                values.append(float(loss))
                                grad_norms.append(float(grad_norm))
                        pending = []
                        losses.extend(values)
                        if config.max_nonfinite_in_row and skipped_in_row >= config.max_nonfinite_in_row:
                            raise CharLMError(
                                f"{skipped_in_row} steps in a row had non-finite loss or gradients (skipped, "
                                f"parameters untouched) at step {step}; stopped. The last good checkpoint "
                                f"in {out_dir} is step {store.latest_step()}: lower --learning-rate or set "
                                "--clip-norm, then --resume")
                        now = time.perf_counter()
                        train_seconds = seconds_before_epoch + (now - epoch_start)
                        limit = limits.reached(step, train_seconds)
                        speed = (step - mark_step) * config.batch_size / max(now - mark_time, 1e-9)
                        mark_time, mark_step = now, step
                        progress.update(task, completed=step - epoch * steps_per_epoch,
                                        loss=float(np.mean(values)) if values else float("nan"),
                                        speed=f"{speed:,.0f}", skipped=skipped_total)
                    if stop.requested:
                        raise _StopRequested("interrupted")
                    if limit is not None and step % steps_per_epoch != 0:
                        progress.remove_task(task)
                        finish_epoch(epoch + 1, losses, grad_norms, time.perf_counter() - epoch_start,
                                     partial=True)
                        raise _StopRequested(limit)
                progress.remove_task(task)
                epoch += 1
                train_seconds = seconds_before_epoch + (time.perf_counter() - epoch_start)
                finish_epoch(epoch, losses, grad_norms, train_seconds - seconds_before_epoch, partial=False)
                if stop.requested:
                    raise _StopRequested("interrupted")
                if limit is not None:
                    raise _StopRequested(limit)
                patience = config.early_stopping_patience
                if patience and result.best_epoch is not None and epoch - result.best_epoch >= patience:
                    console.print(f"early stopping: validation has not improved for {patience} epoch(s); "
                                  f"best {result.best_val_bits_per_char:.3f} bits/char at epoch "
                                  f"{result.best_epoch}, kept in {out_dir / BEST_SUBDIR}")
                    result.stop_reason = "early_stopping"
                    break
    except _StopRequested as request:
        progress.stop()
        save(epoch)
        result.stop_reason = str(request)
        if request.args[0] == "interrupted":
            console.print(f"[yellow]interrupted[/]: checkpoint saved at step {int(state.step)} in {out_dir}; "
                          "continue with --resume")
    if result.best_epoch is not None and result.stop_reason != "early_stopping":
        console.print(f"best validation {result.best_val_bits_per_char:.3f} bits/char at epoch "
                      f"{result.best_epoch}, kept in {out_dir / BEST_SUBDIR}")
    result.state = state
    return result


class _StopRequested(Exception):
    """Raised inside the loop to stop it; the argument is the FitResult.stop_reason."""


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
