"""The training loop: the one place that prints, shows progress, logs and checkpoints.

Read ``fit`` top to bottom: restore or start a run, then one flat loop over blocks of
batches (each block one jitted call of several optimizer steps), and at the end of every
epoch (and every ``eval_every_steps``) one call of ``finish_epoch``: validation bits per
character on the held-out tail, the book's four-temperature sample, a line in
``metrics.jsonl``, an orbax checkpoint, and the best so far kept in ``<out>/best``.

Batches are shuffled full batches (the last partial batch of an epoch is dropped and
reshuffled next epoch, so the step keeps one shape). Ctrl-C saves a checkpoint at the
current step before exiting; ``resume=True`` continues from the latest checkpoint and
reaches the same parameters as an uninterrupted run, because every random choice is a
pure function of (seed, epoch, step).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from charlm_jax.checkpoint import CheckpointMeta, CheckpointStore, make_run_directory
from charlm_jax.config import TrainConfig, resume_config
from charlm_jax.data import (Split, Vocab, batches_per_epoch, epoch_blocks, padded_eval_batches, split_windows,
                             stream_blocks, stream_steps_per_epoch)
from charlm_jax.decode import SAMPLE_CHUNK, stream_chunk, stream_start
from charlm_jax.distributed import (agreed_stop, batch_sharding, block_sharding, check_batch_divides,
                                    is_main_process, make_mesh, put_global, put_windows, replicated, shard_rows,
                                    to_host)
from charlm_jax.errors import CharLMError
from charlm_jax.event_log import EVENTS_SUBDIR, EventLog
from charlm_jax.model import CharLSTM, build_model
from charlm_jax.options import GenerationOptions
from charlm_jax.prepared import PreparedCorpus, corpus_ids
from charlm_jax.run_lock import RunLock
from charlm_jax.scoring import nats_to_bits
from charlm_jax.stopping import StopSignals, Stopped
from charlm_jax.train import (CompiledSteps, TrainState, compile_steps, create_train_state,
                              learning_rate_schedule, make_optimizer, train_state_items)

BEST_SUBDIR = "best"
METRICS_NAME = "metrics.jsonl"
# Windows per validation batch. The input projection of a batch is materialised for all 60 steps
# (batch x 60 x 4 * hidden floats: 126 MB at 1024 for the book's model), the largest temporary of a
# run; 256 keeps it at 31 MB and the matmuls at 128 rows per device.
EVAL_BATCH = 256
# A validation this large takes long enough to say so when it starts.
ANNOUNCED_VALIDATION = 100_000


class StopReason(str, enum.Enum):
    """Why ``fit`` returned. A ``str`` enum, so records and JSON show the plain name."""

    COMPLETED = "completed"
    EARLY_STOPPING = "early_stopping"
    INTERRUPTED = "interrupted"  # SIGINT (Ctrl-C)
    TERMINATED = "terminated"  # SIGTERM (a scheduler's preemption)
    STEP_LIMIT = "step_limit"
    TIME_LIMIT = "time_limit"

    @property
    def resumable(self) -> bool:
        """Stopped before its planned epochs; ``resume=True`` continues the run."""
        return self is not StopReason.COMPLETED and self is not StopReason.EARLY_STOPPING

    @property
    def by_signal(self) -> bool:
        """Stopped by a signal (the CLI exits 128 + its number: 130 for SIGINT, 143 for SIGTERM)."""
        return self in (StopReason.INTERRUPTED, StopReason.TERMINATED)


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

    def sample_keys(self, epoch: int) -> tuple[jax.Array, jax.Array]:
        """(prompt key, generation key) of an epoch's samples; epoch 1's prompt is also the saved default."""
        prompt_key, generation_key = jax.random.split(jax.random.fold_in(self.sample, epoch))
        return prompt_key, generation_key


@dataclass(frozen=True)
class Run:
    """What stays fixed while a run trains: its settings, data, model, compiled steps and stores."""

    config: TrainConfig
    vocab: Vocab
    split: Split
    corpus: np.ndarray  # (chars,) ids on the host: int32, or a prepared corpus's memory map
    keys: RunKeys
    model: CharLSTM
    steps: CompiledSteps
    mesh: Any
    store: CheckpointStore
    best_store: CheckpointStore
    out_dir: Path
    console: Console
    stop: StopSignals
    default_prompt: str
    steps_per_epoch: int
    total_steps: int
    clock: Callable[[], float]  # seconds, for the training clock
    events: EventLog = field(default_factory=EventLog)  # TensorBoard, when the extra is installed

    def epochs_done(self, step: int) -> int:
        """Finished epochs after ``step`` optimizer steps (the one epoch arithmetic of the loop)."""
        return step // self.steps_per_epoch

    def batch_in_epoch(self, step: int) -> int:
        """Batches of the epoch in progress already taken after ``step`` steps."""
        return step % self.steps_per_epoch

    @property
    def streams(self) -> bool:
        """Consecutive streams with carried state (truncated BPTT) rather than the book's windows."""
        return self.config.batching == "streams"

    @property
    def validates_each_epoch(self) -> bool:
        """Whether every epoch's end is validated and recorded. A streams epoch is one pass over the text, a
        few seconds for a small one, while a validation reads every held-out character ``maxlen`` times:
        with ``eval_every_steps`` set, a streams run validates on that schedule (and at its end) only."""
        return not (self.streams and self.config.eval_every_steps)

    def epoch_blocks(self, epoch: int, first_batch: int):
        """The epoch's blocks of window starts, (steps, batch) each, in the run's batching."""
        key, config = jax.random.fold_in(self.keys.shuffle, epoch - 1), self.config
        if self.streams:
            return stream_blocks(key, self.split.val_start, config.batch_size, config.maxlen,
                                 config.steps_per_call, first_batch)
        return epoch_blocks(key, self.split, config.batch_size, config.steps_per_call, first_batch)

    def epoch_in_progress(self, step: int) -> int:
        """The epoch a checkpoint at ``step`` belongs to: the finished one at a boundary, else the next."""
        return -(-step // self.steps_per_epoch)


@dataclass
class RunState:
    """What the loop carries from block to block. A checkpoint saves all of it but ``skipped_in_row``
    (a resumed run starts a new count); the epoch follows from ``step`` (``Run.epochs_done``)."""

    train: TrainState
    step: int  # optimizer steps taken (host copy of train.step)
    train_seconds: float = 0.0  # training clock, validation excluded, across resumes
    skipped_total: int = 0  # updates the non-finite guard refused
    skipped_in_row: int = 0
    best_epoch: int | None = None
    best_val_bits_per_char: float | None = None
    # Length of the learning-rate schedule in steps: the planned epochs', or, once a time budget
    # has been measured against the step time (``plan_schedule``), what fits the budget.
    schedule_steps: int = 0
    schedule_fitted: bool = False
    # The streams' LSTM carries after the last step (batching "streams"; None for windows): zero at
    # each epoch's start, saved with every checkpoint so a resumed run continues them exactly.
    carries: Any = None


@dataclass
class EpochStats:
    """Per-step metrics of the epoch in progress (finite steps only)."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class FitResult:
    """What a run produced: the final state, its vocabulary and one record per finished epoch.

    ``best_epoch`` / ``best_val_bits_per_char`` describe the checkpoint kept in ``<out>/best``
    (None without a validation split).
    """

    state: TrainState
    vocab: Vocab
    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: StopReason = StopReason.COMPLETED
    best_epoch: int | None = None
    best_val_bits_per_char: float | None = None

    @property
    def resumable(self) -> bool:
        """Stopped before its planned epochs (a signal, a step or time limit): ``resume=True`` continues it."""
        return self.stop_reason.resumable

    @property
    def interrupted(self) -> bool:
        """Stopped by SIGINT or SIGTERM (a time or step limit is not an interruption)."""
        return self.stop_reason.by_signal


def fit(config: TrainConfig | None, text: str | PreparedCorpus, out_dir: str | os.PathLike, *, resume: bool = False,
        overrides: Mapping[str, Any] | None = None, console: Console | None = None, mesh=None,
        stop_after_steps: int | None = None, stop_after_seconds: float | None = None,
        show_progress: bool = True, stop: StopSignals | None = None,
        clock: Callable[[], float] = time.perf_counter) -> FitResult:
    """Train on ``text`` (a string, or a ``PreparedCorpus`` read from its memory map), checkpointing into
    ``out_dir``; see the module docstring.

    ``config`` is the run's whole setting (None: the defaults, the book's). ``overrides``
    (TrainConfig fields) go on top of it, or, when resuming, on top of the saved run's config,
    where only the fields in ``config.RESUMABLE_FIELDS`` may change; a full ``config`` given
    with ``resume=True`` must match the saved one in every other field.
    ``stop_after_steps`` / ``stop_after_seconds`` (training time, validation excluded, counted
    across resumes) stop the run there: the partial epoch is validated, recorded and
    checkpointed, and ``resume=True`` continues it. SIGINT and SIGTERM stop it too (see
    ``charlm_jax.stopping``): the checkpoint is saved at the last completed step. ``stop``
    is the caller's own ``StopSignals`` (the CLI's, installed for the whole command); by
    default ``fit`` routes both signals to a new one while it runs. ``clock`` times the training
    (the time budget and the schedule fitted to it): injectable, so tests need no real seconds.
    """
    console = console or Console(soft_wrap=True, quiet=not is_main_process())
    mesh = mesh or make_mesh()
    out_dir = Path(out_dir)
    own_signals = stop is None
    stop = stop or StopSignals()
    make_run_directory(out_dir)
    with (stop.installed() if own_signals else contextlib.nullcontext()), stop.deferred(), \
            (RunLock(out_dir) if is_main_process() else contextlib.nullcontext()), \
            CheckpointStore(out_dir) as store, CheckpointStore(out_dir / BEST_SUBDIR, max_to_keep=1) as best_store:
        run, state = restore_or_init(config, overrides or {}, text, store, best_store, resume, mesh, console, stop,
                                     clock)
        result = FitResult(state=state.train, vocab=run.vocab, config=run.config)
        run = replace(run, events=EventLog.open(out_dir) if is_main_process() else EventLog())
        if run.events.enabled:
            console.print(f"TensorBoard events in {out_dir / EVENTS_SUBDIR}: tensorboard --logdir {out_dir}")
        console.print(f"[bold]charlm-jax[/] {len(run.corpus):,} characters, vocabulary {run.vocab.size}, "
                      f"{run.split.train_windows:,} training windows, {len(run.split.val_starts):,} "
                      f"validation windows{describe_val_cap(run.split)}; {describe_mesh(mesh)}"
                      + (f"; resuming at step {state.step}" if state.step else ""))
        progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[speed]} win/s"),
                            TextColumn("skipped {task.fields[skipped]}"), TimeRemainingColumn(),
                            console=console, disable=not show_progress, transient=True)
        reason = None
        timed_blocks = 0  # the first block of a process includes compiling
        stats = EpochStats()  # the steps since the last record
        with progress, contextlib.closing(run.events):
            try:
                while reason is None and run.epochs_done(state.step) < run.config.epochs:
                    epoch = run.epochs_done(state.step) + 1
                    first_batch = run.batch_in_epoch(state.step)
                    task = progress.add_task("train", total=run.steps_per_epoch, completed=first_batch, epoch=epoch,
                                             loss=float("nan"), speed="-", skipped=state.skipped_total)
                    if run.streams and first_batch == 0:
                        state.carries = zero_carries(run)
                    for block in run.epoch_blocks(epoch, first_batch):
                        if stop_after_steps is not None:
                            block = block[:max(stop_after_steps - state.step, 0)]  # (steps, batch)
                        if len(block) == 0:
                            reason = StopReason.STEP_LIMIT
                            break
                        seconds = run_block(run, state, stats, block)
                        timed_blocks += 1
                        if timed_blocks == 2 and stop_after_seconds is not None and not state.schedule_fitted:
                            plan_schedule(run, state, stop_after_seconds, seconds / len(block))
                        progress.update(task, completed=state.step - (epoch - 1) * run.steps_per_epoch,
                                        loss=float(np.mean(stats.losses[-len(block):] or [np.nan])),
                                        speed=f"{len(block) * run.config.batch_size / seconds:,.0f}",
                                        skipped=state.skipped_total)
                        reason = stop_reason(stop, state, stop_after_steps, stop_after_seconds, timed_blocks)
                        if reason is not None:
                            break
                        if evaluation_due(run.config, state, len(block)) and (
                                state.step < epoch * run.steps_per_epoch or not run.validates_each_epoch):
                            result.history.append(finish_epoch(run, state, epoch, stats,
                                                               partial=state.step < epoch * run.steps_per_epoch))
                            stats = EpochStats()
                    progress.remove_task(task)
                    if reason is not None and reason.by_signal:
                        break
                    epoch_done = state.step == epoch * run.steps_per_epoch
                    last = reason is not None or run.epochs_done(state.step) >= run.config.epochs
                    recorded = bool(result.history) and result.history[-1]["step"] == state.step
                    if run.validates_each_epoch or (last and not recorded):
                        result.history.append(finish_epoch(run, state, epoch, stats, partial=not epoch_done))
                        stats = EpochStats()
                    if reason is None and stalled(run, state):
                        console.print(f"early stopping: validation has not improved for "
                                      f"{run.config.early_stopping_patience} epoch(s); best "
                                      f"{state.best_val_bits_per_char:.3f} bits/char at epoch {state.best_epoch}, "
                                      f"kept in {out_dir / BEST_SUBDIR}")
                        reason = StopReason.EARLY_STOPPING
            except Stopped as stopped:  # a validation or sample that a stop request abandoned
                if stopped.forced:
                    raise
                reason = signal_reason(stop)
        if reason is not None and reason.by_signal:
            save_checkpoint(run, state)
            console.print(f"stopped by {stop.name} at step {state.step}; checkpoint in {out_dir}; resume with "
                          f"charlm-jax train --out {out_dir} --resume")
    if state.best_epoch is not None and reason is not StopReason.EARLY_STOPPING:
        console.print(f"best validation {state.best_val_bits_per_char:.3f} bits/char at epoch "
                      f"{state.best_epoch}, kept in {out_dir / BEST_SUBDIR}")
    result.state, result.stop_reason = state.train, reason or StopReason.COMPLETED
    result.best_epoch, result.best_val_bits_per_char = state.best_epoch, state.best_val_bits_per_char
    return result


def restore_or_init(config: TrainConfig | None, overrides: Mapping[str, Any], text: str | PreparedCorpus,
                    store: CheckpointStore,
                    best_store: CheckpointStore, resume: bool, mesh, console: Console,
                    stop: StopSignals | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> tuple[Run, RunState]:
    """The run's fixed parts and its state: fresh, or restored from the latest checkpoint.

    On resume the run's config is the saved one with ``overrides`` (and, given a full
    ``config``, its resumable fields) on top, refused if anything else differs; the text must
    have the saved vocabulary.
    """
    latest = store.latest_step()
    if latest is not None and not resume:
        raise CharLMError(f"{str(store.directory)!r} already holds a run (step {latest}): pass --resume to "
                          "continue it, or choose another --out")
    meta, saved = None, None
    if latest is not None:
        meta, saved = store.newest_readable(partial(read_checkpoint, store, mesh), set_aside=True)
        dropped = drop_records_after(Path(store.directory) / METRICS_NAME, meta.step) if is_main_process() else 0
        if dropped:
            console.print(f"{dropped} record(s) past step {meta.step} removed from {METRICS_NAME}")
    if meta is None:
        config = replace(config or TrainConfig(), **overrides)
    else:
        config = resume_config(meta.config, config, overrides)
    check_batch_divides(config.batch_size, mesh)
    vocab, corpus = corpus_ids(text, config.lowercase)
    if meta is not None and meta.vocab != vocab:
        raise CharLMError("--resume with a different text: its characters differ from the "
                          "checkpoint's vocabulary; pass the original run's text")
    split = split_windows(len(corpus), config.maxlen, config.step, config.val_fraction, config.val_chars)
    if config.batching == "streams":
        steps_per_epoch = stream_steps_per_epoch(split.val_start, config.batch_size, config.maxlen)
        if steps_per_epoch == 0:
            raise CharLMError(f"{split.val_start:,} training characters cut into {config.batch_size} streams "
                              f"leave less than two windows of {config.maxlen} per stream: pass a smaller "
                              "--batch-size or --maxlen, or a longer text")
    else:
        steps_per_epoch = batches_per_epoch(split.train_windows, config.batch_size)
    if steps_per_epoch == 0:
        raise CharLMError(f"only {split.train_windows} training windows, fewer than one batch of "
                          f"{config.batch_size}: pass a smaller --batch-size or a longer text")
    if meta is not None and meta.step >= config.epochs * steps_per_epoch:
        done = meta.step // steps_per_epoch
        raise CharLMError(f"the run in {str(store.directory)!r} already has {done} epoch(s): pass --epochs "
                          f"greater than {done} to train it further")
    keys = RunKeys.from_seed(config.seed)
    total_steps = config.epochs * steps_per_epoch
    if meta is None:
        default_prompt = new_run_prompt(config, vocab, corpus, split)
        state = RunState(train=write_new_run(store, config, vocab, default_prompt, mesh, total_steps=total_steps),
                         step=0, schedule_steps=total_steps)
    else:
        default_prompt = meta.default_prompt
        train_state = jax.device_put(create_train_state(keys.init, config, vocab.size, total_steps), replicated(mesh))
        params, items = saved
        schedule_steps = meta.schedule_steps or total_steps
        state = RunState(train=train_state.replace(params=params, step=items["step"], opt_state=items["opt_state"],
                                                   tx=make_optimizer(config, schedule_steps)),
                         carries=items.get("carries"),
                         step=meta.step, train_seconds=meta.train_seconds,
                         skipped_total=meta.skipped_steps_total, schedule_steps=schedule_steps,
                         schedule_fitted=meta.schedule_steps is not None)
        if best_store.latest_step() is not None:
            best = best_store.restore_meta()
            state.best_epoch, state.best_val_bits_per_char = best.epoch, best.val_bits_per_char
    model = build_model(config, vocab.size)
    run = Run(config=config, vocab=vocab, split=split, corpus=corpus, keys=keys, model=model,
              steps=compile_steps(model, config, mesh), mesh=mesh, store=store, best_store=best_store,
              out_dir=Path(store.directory), console=console, stop=stop or StopSignals(),
              default_prompt=default_prompt, steps_per_epoch=steps_per_epoch, total_steps=total_steps, clock=clock)
    return run, state


def new_run_prompt(config: TrainConfig, vocab: Vocab, ids: np.ndarray, split: Split | None = None) -> str:
    """The prompt saved with a new run (``generate``'s default): a window of the training part of the
    text's ``ids``, drawn with the key of epoch 1's samples. The one rule, for trained and imported runs."""
    split = split or split_windows(len(ids), config.maxlen, config.step, config.val_fraction)
    return sample_prompt(RunKeys.from_seed(config.seed).sample_keys(1)[0], vocab, ids, split.val_start, config.maxlen)


def write_new_run(store: CheckpointStore, config: TrainConfig, vocab: Vocab, default_prompt: str, mesh=None, *,
                  params=None, total_steps: int | None = None) -> TrainState:
    """Start a run directory: its step-0 checkpoint, which ``load``, ``generate`` and ``--resume`` read.

    The parameters are the seed's initialisation, or ``params`` (an imported model's weights); the
    optimizer state is fresh. A new training run and ``import_keras`` both begin here. Returns the
    train state, replicated over ``mesh`` when one is given.
    """
    state = create_train_state(RunKeys.from_seed(config.seed).init, config, vocab.size, total_steps)
    if params is not None:
        state = state.replace(params=jax.tree.map(jnp.asarray, params))
    if mesh is not None:
        # put_global, not device_put: with several processes each must hand over its share of a global
        # array, or orbax cannot write it.
        state = jax.tree.map(lambda x: put_global(np.asarray(x), replicated(mesh)), state)
    items = train_state_items(state)
    if config.batching == "streams":
        items["carries"] = zero_carries_for(config, mesh)
    store.save(state.params, items,
               CheckpointMeta(config=config, vocab=vocab, step=0, epoch=0, default_prompt=default_prompt))
    return state


def zero_carries_for(config: TrainConfig, mesh=None):
    """Zero LSTM carries of the run's ``batch_size`` streams, split over ``mesh`` like the streams."""
    # Made on the host and placed once (not built on a device and copied back first).
    zeros = tuple((np.zeros((config.batch_size, config.hidden_size), np.float32),) * 2
                  for _ in range(config.num_layers))
    if mesh is None:
        return jax.tree.map(jnp.asarray, zeros)
    return jax.tree.map(lambda x: put_global(x, batch_sharding(mesh)), zeros)


def zero_carries(run: "Run"):
    return zero_carries_for(run.config, run.mesh)


def checkpoint_items(run: "Run", state: RunState) -> dict[str, Any]:
    """What a checkpoint saves besides the parameters: the optimizer's state, and the streams' carries."""
    items = train_state_items(state.train)
    if run.streams:
        items["carries"] = state.carries if state.carries is not None else zero_carries(run)
    return items


def read_checkpoint(store: CheckpointStore, mesh, step: int) -> tuple[CheckpointMeta, tuple[Any, Any]]:
    """A resumable checkpoint's meta, parameters and optimizer items, replicated over ``mesh``.

    The shapes come from the saved config (the fields a resume may change leave them alone).
    """
    meta = store.restore_meta(step)
    shapes = jax.eval_shape(lambda: create_train_state(jax.random.key(0), meta.config, meta.vocab.size, 1))
    placed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)),
                          (shapes.params, train_state_items(shapes)))
    if meta.config.batching == "streams":
        carries = jax.eval_shape(lambda: zero_carries_for(meta.config))
        placed[1]["carries"] = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding(mesh)), carries)
    return meta, store.restore(*placed, step=step)


def plan_schedule(run: Run, state: RunState, budget_seconds: float, step_seconds: float) -> None:
    """Fit the learning-rate schedule to a time budget, from the measured seconds per step.

    A cosine schedule planned over ``--epochs`` that the budget cannot reach is cut while the
    rate is still high; planned over the steps the remaining budget holds (2 % spare), the run
    ends on its final rate. The warm-up does not depend on the length, so switching during it
    changes no rate already used. The plan is saved with the checkpoints: a resumed run keeps it.
    """
    if run.config.lr_schedule != "cosine":
        return
    remaining = max(budget_seconds - state.train_seconds, 0.0)
    fitted = min(run.total_steps, state.step + max(int(0.98 * remaining / step_seconds), 1))
    state.schedule_steps, state.schedule_fitted = fitted, True
    state.train = state.train.replace(tx=make_optimizer(run.config, fitted))
    run.console.print(f"learning-rate schedule fitted to the {budget_seconds:g} s budget: {fitted:,} steps "
                      f"({step_seconds * 1e3:.1f} ms per step measured)")


def run_block(run: Run, state: RunState, stats: EpochStats, block: np.ndarray) -> float:
    """Run one jitted block of steps and account its metrics; returns its seconds (sync included)."""
    started = run.clock()
    windows = put_windows(run.corpus, block, run.config.maxlen + 1, block_sharding(run.mesh))
    if run.streams:
        (state.train, state.carries), metrics = run.steps.train_streams(state.train, state.carries, windows,
                                                                        run.keys.dropout)
    else:
        state.train, metrics = run.steps.train_block(state.train, windows, run.keys.dropout)
    metrics = to_host(metrics)  # the block's one host sync: (steps,) each
    seconds = run.clock() - started
    record_block(run, state, stats, metrics, seconds)
    if run.events.enabled:
        windows = block.size
        rate = float(learning_rate_schedule(run.config, state.schedule_steps)(state.step))
        run.events.block(state.step, metrics, seconds, windows, windows * run.config.maxlen, rate, state.skipped_total)
    return seconds


def record_block(run: Run, state: RunState, stats: EpochStats, metrics: dict[str, np.ndarray],
                 seconds: float) -> None:
    """Account one block's per-step metrics; stop the run after too many non-finite steps in a row."""
    for loss, skipped, grad_norm in zip(metrics["loss"], metrics["skipped"], metrics["grad_norm"]):
        state.step += 1
        if skipped:
            state.skipped_total += 1
            state.skipped_in_row += 1
            limit = run.config.max_nonfinite_in_row
            if limit and state.skipped_in_row >= limit:
                raise CharLMError(
                    f"{state.skipped_in_row} steps in a row had non-finite loss or gradients (skipped, "
                    f"parameters untouched) at step {state.step}; stopped. The last good checkpoint in "
                    f"{run.out_dir} is step {run.store.latest_step()}: lower --learning-rate or set "
                    "--clip-norm, then --resume")
        else:
            state.skipped_in_row = 0
            stats.losses.append(float(loss))
            stats.grad_norms.append(float(grad_norm))
    state.train_seconds += seconds
    stats.seconds += seconds


def evaluation_due(config: TrainConfig, state: RunState, block_steps: int) -> bool:
    """Whether the block just run reached a multiple of ``eval_every_steps``."""
    every = config.eval_every_steps
    return bool(every) and state.step // every > (state.step - block_steps) // every


def stop_reason(stop: StopSignals, state: RunState, max_steps: int | None, max_seconds: float | None,
                blocks_run: int) -> StopReason | None:
    """Whether to stop at this block boundary, and why.

    With several processes every one must stop at the same block: a signal one of them got is
    agreed on through a collective (``distributed.agreed_stop``, which also asks JAX's preemption
    service, the owner of SIGTERM in a multi-process run, whether this block is its sync point).
    """
    if agreed_stop(stop, blocks_run):
        return signal_reason(stop)
    if max_steps is not None and state.step >= max_steps:
        return StopReason.STEP_LIMIT
    if max_seconds is not None and state.train_seconds >= max_seconds:
        return StopReason.TIME_LIMIT
    return None


def signal_reason(stop: StopSignals) -> StopReason:
    return StopReason.TERMINATED if stop.name == "SIGTERM" else StopReason.INTERRUPTED


def stalled(run: Run, state: RunState) -> bool:
    """Early stopping: ``early_stopping_patience`` finished epochs without a new best."""
    patience = run.config.early_stopping_patience
    return bool(patience) and state.best_epoch is not None and \
        run.epochs_done(state.step) - state.best_epoch >= patience


def finish_epoch(run: Run, state: RunState, epoch: int, stats: EpochStats, partial: bool) -> dict[str, Any]:
    """Validate, sample, log and checkpoint the epoch (or the part of it a limit or ``eval_every_steps``
    ended); keep the best."""
    config, console = run.config, run.console
    train_loss = float(np.mean(stats.losses)) if stats.losses else float("nan")
    record: dict[str, Any] = {
        "epoch": epoch, "step": state.step, "train_loss": train_loss, "epoch_seconds": round(stats.seconds, 3),
        "windows_per_second": round(len(stats.losses) * config.batch_size / max(stats.seconds, 1e-9), 1),
        "train_seconds": round(state.train_seconds, 3),
        "learning_rate": float(learning_rate_schedule(config, state.schedule_steps)(state.step)),
        "schedule_steps": state.schedule_steps,
        "skipped_steps_total": state.skipped_total}
    if partial:
        record["partial_epoch"] = True
    if stats.grad_norms:
        record.update(grad_norm_mean=float(np.mean(stats.grad_norms)), grad_norm_max=float(np.max(stats.grad_norms)))
    if len(run.split.val_starts):
        started = run.clock()
        if len(run.split.val_starts) >= ANNOUNCED_VALIDATION:
            console.print(f"validating on {len(run.split.val_starts):,} held-out windows (a stop request "
                          "drops it and saves the last completed step)")
        val_loss = evaluate(run.steps.eval_step, state.train.params, run.corpus, run.split.val_starts, run.mesh,
                            run.stop, maxlen=config.maxlen)
        record.update(val_loss=val_loss, val_bits_per_char=nats_to_bits(val_loss),
                      eval_seconds=round(run.clock() - started, 3))
    console.print(f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f}"
                  + (f", validation {record['val_loss']:.4f} nats = {record['val_bits_per_char']:.3f} bits/char"
                     if "val_loss" in record else "")
                  + f" ({stats.seconds:.1f} s, {record['windows_per_second']:,.0f} windows/s)")
    if not math.isfinite(train_loss):
        console.print("[red]training loss is not finite[/]")
    prompt_key, generation_key = run.keys.sample_keys(epoch)
    prompt = sample_prompt(prompt_key, run.vocab, run.corpus, run.split.val_start, config.maxlen)
    samples = epoch_samples(run, state.train.params, prompt, generation_key)
    if samples:
        console.print(f'--- Generating with seed: "{prompt}"', markup=False, highlight=False)
        for temperature, sample in samples.items():
            console.print(f"------ temperature: {temperature}", markup=False, highlight=False)
            console.print(prompt + sample, markup=False, highlight=False)
        record.update(prompt=prompt, samples=samples)
    bits = record.get("val_bits_per_char")
    improved = bits is not None and math.isfinite(bits) and (
        state.best_val_bits_per_char is None or bits < state.best_val_bits_per_char)
    # The run's own checkpoint first (a crash between the two saves loses nothing), then the best, and
    # the record last: metrics.jsonl never holds a step whose checkpoint was not written.
    save_checkpoint(run, state)
    if improved:
        record["best"] = True
        with run.stop.critical():
            run.best_store.save(state.train.params, checkpoint_items(run, state), checkpoint_meta(run, state, bits))
        state.best_epoch, state.best_val_bits_per_char = epoch, bits
    if is_main_process():
        append_record(run.out_dir / METRICS_NAME, record)
        run.events.record(record)
    return record


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One line of ``metrics.jsonl``, written whole (a short write on a full disk is an OSError, not half a line)."""
    line = (json.dumps(record) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(descriptor, line) != len(line):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    finally:
        os.close(descriptor)


def drop_records_after(path: Path, step: int) -> int:
    """Remove ``metrics.jsonl`` records past ``step`` (a resume from an older checkpoint than the newest
    record: the damaged newest was skipped); returns how many went. Rewritten atomically."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _record_step(line) <= step]
    if len(kept) != len(lines):
        temporary = path.with_suffix(".jsonl.tmp")
        temporary.write_text("".join(kept))
        os.replace(temporary, path)
    return len(lines) - len(kept)


def _record_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a torn last line from a crash: dropped with the records past the checkpoint


def checkpoint_meta(run: Run, state: RunState, val_bits: float | None = None) -> CheckpointMeta:
    return CheckpointMeta(config=run.config, vocab=run.vocab, step=state.step, epoch=run.epoch_in_progress(state.step),
                          default_prompt=run.default_prompt, val_bits_per_char=val_bits,
                          train_seconds=state.train_seconds, skipped_steps_total=state.skipped_total,
                          schedule_steps=state.schedule_steps if state.schedule_fitted else None)


def save_checkpoint(run: Run, state: RunState) -> None:
    if run.store.latest_step() != state.step:  # a stop right after an epoch's checkpoint saves nothing new
        with run.stop.critical():
            run.store.save(state.train.params, checkpoint_items(run, state), checkpoint_meta(run, state))


def evaluate(eval_fn, params, corpus: np.ndarray, val_starts: np.ndarray, mesh, stop: StopSignals | None = None, *,
             maxlen: int) -> float:
    """Mean next-character NLL (nats) over the validation windows (``val_starts``, already capped).

    A stop request abandons it between batches (``Stopped``); with several processes the
    batches are collectives every process must run, so there it runs to the end.
    """
    devices = mesh.devices.size
    batch = max(EVAL_BATCH - EVAL_BATCH % devices, devices)
    total, count = 0.0, 0.0
    data = batch_sharding(mesh)
    poll = local_poll(stop)
    for starts, weights in padded_eval_batches(val_starts, batch):
        poll()
        nll_sum, n = eval_fn(params, put_windows(corpus, starts, maxlen + 1, data), put_global(weights, data))
        total += float(to_host(nll_sum))
        count += float(to_host(n))
    return total / max(count, 1.0)


def local_poll(stop: StopSignals | None) -> Callable[[], None]:
    """What abandons a validation or a sample between batches: ``stop.check`` in a single process; nothing
    with several, whose batches are collectives every process must run to the end."""
    return stop.check if stop is not None and jax.process_count() == 1 else (lambda: None)


def sample_prompt(key: jax.Array, vocab: Vocab, ids: np.ndarray, train_chars: int, maxlen: int) -> str:
    """A random window of the training text (its first ``train_chars``) as the prompt, as the book picks
    ``start_index``; also the default prompt saved with a run (epoch 1's key)."""
    start = int(jax.random.randint(key, (), 0, max(train_chars - maxlen - 1, 1)))
    return vocab.decode(ids[start:start + maxlen])


def epoch_samples(run: Run, params, prompt: str, key: jax.Array) -> dict[str, str]:
    """The book's per-epoch samples, all temperatures as rows of one batch split over the mesh.

    Generated in chunks of ``SAMPLE_CHUNK`` steps (the text is the same as one whole call's) so
    that a stop request is honoured between chunks however long the samples are.
    """
    config = run.config
    if config.sample_length == 0 or not config.temperatures:
        return {}
    options = GenerationOptions(length=config.sample_length, temperatures=config.temperatures, mode=config.sample_mode)
    prompt_ids = np.broadcast_to(run.vocab.encode(prompt), (options.rows, len(prompt)))
    prompt_rows, temp_rows = shard_rows(run.mesh, prompt_ids, options.temperatures)
    options = options.with_rows(temp_rows)
    length, chunk = options.length, min(SAMPLE_CHUNK, options.length)
    poll = local_poll(run.stop)
    state = stream_start(params, key, prompt_rows, options, model=run.model, steps=-(-length // chunk) * chunk,
                         maxlen=config.maxlen)
    pieces = []
    for begin in range(0, length, chunk):
        poll()
        state, ids = stream_chunk(params, state, options, model=run.model, count=chunk)
        pieces.append(to_host(ids)[:, :length - begin])
    ids = np.concatenate(pieces, axis=1)  # (temperatures, length)
    return {f"{t:g}": run.vocab.decode(row) for t, row in zip(config.temperatures, ids)}


def describe_val_cap(split: Split) -> str:
    if split.val_windows_all <= len(split.val_starts):
        return ""
    return f" (1 in {split.val_stride} of the tail's {split.val_windows_all:,}: --val-chars)"


def describe_mesh(mesh) -> str:
    devices = mesh.devices.size
    platform = mesh.devices.flat[0].platform
    return f"{devices} {platform} device(s), {jax.process_count()} process(es)"
