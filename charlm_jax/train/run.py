"""A training run: what stays fixed while it trains (``Run``), what changes (``RunState``), when it stops
early (``Limits``), what it returns (``FitResult``), and how it starts: fresh, or from the newest readable
checkpoint of its directory, with every option checked before the first block (``start_run``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
from rich.console import Console

from charlm_jax.data.prepared import PreparedCorpus, corpus_ids
from charlm_jax.data.record import TextRecord, check_same_text, read_recorded_text, record_of
from charlm_jax.data.windows import Batching, Split, Vocab, make_batching, split_windows
from charlm_jax.errors import CharLMError, worded
from charlm_jax.io.checkpoint import CheckpointMeta
from charlm_jax.model.charlstm import CharLSTM, build_model
from charlm_jax.runtime.distributed import check_batch_divides, is_main_process
from charlm_jax.settings.config import TrainConfig, resume_config
from charlm_jax.train.event_log import EVENTS_SUBDIR, EventLog
from charlm_jax.train.init_from import InitFrom, fine_tune_config, transplant, union_vocab, write_origin
from charlm_jax.train.report import opening_line
from charlm_jax.train.run_dir import RunDirectory, new_run_prompt, read_checkpoint, write_new_run
from charlm_jax.train.signals import StopSignals
from charlm_jax.train.steps import Anneal, RunKeys, TrainState, create_train_state, make_optimizer


class StopReason(enum.StrEnum):
    """Why ``fit`` returned. A string enum, so records, JSON and f-strings show the plain name."""

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
class Limits:
    """When ``fit`` stops before the run's planned epochs: after ``max_steps`` optimizer steps (counted
    over the whole run), when its wall-clock budget ``max_seconds`` is spent, after ``max_train_seconds`` of
    training alone, or at a signal. Any limit ends the run at a block boundary with a record and a
    checkpoint, and ``resume=True`` continues it.

    ``max_seconds`` is the wall clock from ``started`` (the clock's reading when the command began; None:
    when ``fit`` is called) to the run's last line, compiling, validating, sampling and checkpointing
    included, counted across resumes: the loop ends at the last block boundary after which one more block
    and the final record would not fit (``train.loop.stop_reason``). ``max_train_seconds`` counts the
    training blocks only (validation, samples and checkpoints excluded), across resumes.

    ``signals`` is the caller's own ``StopSignals`` (the CLI's, installed for the whole command); by
    default ``fit`` routes SIGINT and SIGTERM to a new one while it runs. ``clock`` times the run (the
    budgets, and the schedule fitted to them): injectable, so tests need no real seconds.
    """

    max_steps: int | None = None
    max_seconds: float | None = None
    max_train_seconds: float | None = None
    signals: StopSignals | None = None
    clock: Callable[[], float] = time.perf_counter
    started: float | None = None

    def __post_init__(self) -> None:
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or self.max_steps <= 0):
            raise CharLMError(f"--max-steps (Limits.max_steps) must be > 0, got {self.max_steps}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise CharLMError(f"--time-limit (Limits.max_seconds) must be > 0 seconds, got {self.max_seconds:g}")
        if self.max_train_seconds is not None and not self.max_train_seconds > 0:
            raise CharLMError(
                f"--train-time-limit (Limits.max_train_seconds) must be > 0 seconds, got {self.max_train_seconds:g}"
            )
        if self.max_seconds is not None and self.max_train_seconds is not None:
            raise CharLMError(
                "--time-limit bounds the whole run's wall clock and --train-time-limit its training alone: pass one"
            )

    @property
    def budget(self) -> float | None:
        """The time budget the schedule is fitted to, of either kind (None: no budget)."""
        return self.max_seconds if self.max_seconds is not None else self.max_train_seconds


@dataclass(frozen=True)
class Run:
    """What stays fixed while a run trains: its settings, data, model, batching and directory."""

    config: TrainConfig
    vocab: Vocab
    split: Split
    corpus: np.ndarray  # (chars,) ids on the host: int32, or a prepared corpus's memory map
    batching: Batching
    keys: RunKeys
    model: CharLSTM
    mesh: Any
    directory: RunDirectory
    console: Console
    limits: Limits  # its signals are always set (fit's own, or the caller's)
    default_prompt: str
    text: TextRecord  # where the text came from, saved with every checkpoint
    events: EventLog = field(default_factory=EventLog)  # TensorBoard, when the extra is installed

    @property
    def signals(self) -> StopSignals:
        return self.limits.signals or StopSignals()

    @property
    def steps_per_epoch(self) -> int:
        return self.batching.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    def epoch_of(self, step: int) -> int:
        """The epoch a checkpoint or record at ``step`` belongs to: the finished one at a boundary, else the next."""
        return -(-step // self.steps_per_epoch)

    def blocks_from(self, step: int) -> Iterator[np.ndarray]:
        """Every block of window starts, (steps, batch), from ``step`` to the run's end or ``max_steps``."""
        end = min(self.total_steps, self.limits.max_steps or self.total_steps)
        while step < end:
            epoch, first_batch = step // self.steps_per_epoch + 1, step % self.steps_per_epoch
            for block in self.batching.blocks(self.keys.epoch_key(epoch), first_batch):
                block = block[: end - step]
                yield block
                step += len(block)
                if step >= end:
                    return


@dataclass
class RunState:
    """What the loop carries from block to block. A checkpoint saves the fields up to ``anneal``
    (the best ones in ``<out>/best``); the rest belong to this call of ``fit``."""

    train: TrainState
    carries: Any  # the LSTM carries the next batch starts from: zero for windows, the streams' state
    step: int  # optimizer steps taken (host copy of train.step)
    train_seconds: float = 0.0  # training clock, validation excluded, across resumes
    wall_seconds: float = 0.0  # the wall clock the run had spent before this call of fit (saved: across resumes)
    skipped_total: int = 0  # updates the non-finite guard refused
    best_epoch: int | None = None
    best_val_bits_per_char: float | None = None
    # Length of the learning-rate schedule in steps: the planned epochs', or, once a time budget
    # has been measured against the step time (``fit_schedule``), what fits the budget.
    schedule_steps: int = 0
    schedule_fitted: bool = False
    anneal: Anneal | None = None  # once rewound to the best weights: the rate's fall from there (train.past_best)
    skipped_in_row: int = 0
    blocks_run: int = 0  # blocks this process ran (the first one includes compiling)
    # Block lengths (steps) this process has compiled; whether the last block was the first of its length
    # (its time then includes compiling: an epoch's last, shorter block is compiled anew).
    block_lengths_run: set[int] = field(default_factory=set)
    last_block_compiled: bool = True
    # Per-step metrics since the last record (finite steps only), for the next record.
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    seconds_since_record: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    # Under a wall-clock budget: the last block's and the last record's seconds (what one more of each
    # costs), the step of the last record, the steps between records chosen for the budget (0: the config's
    # ``eval_every_steps``), and the wall clock when the best record was written.
    step_seconds: float = 0.0
    record_seconds: float | None = None
    last_record_step: int = 0
    record_every: int = 0
    best_wall_seconds: float | None = None
    stop_note: str = ""  # why an early stop stopped, when it was not the epochs' patience


def wall_clock(run: Run, state: RunState) -> float:
    """Seconds of the run's wall clock so far: before this call (resumes) and since it began."""
    return state.wall_seconds + run.limits.clock() - (run.limits.started or 0.0)


@dataclass
class FitResult:
    """What a run produced: the final state, its vocabulary and one record per validation.

    ``best_epoch`` / ``best_val_bits_per_char`` describe the checkpoint kept in ``<out>/best``
    (None without a validation split); a run validated statefully scores it on the tail's windows too.
    """

    state: TrainState
    vocab: Vocab
    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: StopReason = StopReason.COMPLETED
    best_epoch: int | None = None
    best_val_bits_per_char: float | None = None
    best_val_bits_per_char_windows: float | None = None

    @classmethod
    def of(cls, run: Run, state: RunState, reason: StopReason, window_bits: float | None = None) -> FitResult:
        return cls(
            state=state.train,
            vocab=run.vocab,
            config=run.config,
            history=state.history,
            stop_reason=reason,
            best_epoch=state.best_epoch,
            best_val_bits_per_char=state.best_val_bits_per_char,
            best_val_bits_per_char_windows=window_bits,
        )

    @property
    def resumable(self) -> bool:
        """Stopped before its planned epochs (a signal, a step or time limit): ``resume=True`` continues it."""
        return self.stop_reason.resumable

    @property
    def interrupted(self) -> bool:
        """Stopped by SIGINT or SIGTERM (a time or step limit is not an interruption)."""
        return self.stop_reason.by_signal


@dataclass(frozen=True)
class Begin:
    """How a run begins: new (from the seed's initialisation), resumed from its own checkpoint, or from another
    run's weights (``init``: fine-tuning)."""

    resume: bool = False
    init: InitFrom | None = None


def start_run(
    config: TrainConfig | None,
    overrides: Mapping[str, Any],
    text: str | PreparedCorpus | None,
    directory: RunDirectory,
    begin: Begin,
    mesh,
    console: Console,
    limits: Limits,
) -> tuple[Run, RunState]:
    """The run's fixed parts and its state: fresh, from a source run's weights, or restored from the latest
    readable checkpoint.

    Everything a user passed is checked here, before the first block is trained.
    """
    saved = restore_latest(directory, mesh, console, begin.resume)
    meta = saved[0] if saved is not None else None
    if begin.init is not None:
        config = fine_tune_config(begin.init.config, config, dict(overrides))
    elif meta is None:
        config = replace(config or TrainConfig(), **overrides)
    else:
        config = resume_config(meta.config, config, overrides)
    check_batch_divides(config.batch_size, mesh)
    text, record = run_text(text, meta, directory)
    vocab, corpus = corpus_ids(text, config.lowercase, config.units)
    wider = begin.init.vocab if begin.init is not None else meta.vocab if meta is not None else None
    if wider is not None:  # a fine-tuned run's vocabulary is wider than its text's
        vocab, corpus = widened(vocab, corpus, wider)
    if meta is not None and meta.vocab != vocab:  # the text has characters the checkpoint's vocabulary lacks
        raise worded(
            "{resume} with a different text: its characters differ from the checkpoint's vocabulary; pass the "
            "original run's {text}"
        )
    split = split_windows(len(corpus), config.maxlen, config.step, config.val_fraction, val_windows(config, limits))
    batching = make_batching(config.batching, split, config.batch_size, config.maxlen, config.steps_per_call)
    run = Run(
        config=config,
        vocab=vocab,
        split=split,
        corpus=corpus,
        batching=batching,
        keys=RunKeys.from_seed(config.seed),
        model=build_model(config, vocab.size),
        mesh=mesh,
        directory=directory,
        console=console,
        limits=limits,
        default_prompt=meta.default_prompt if meta is not None else new_run_prompt(config, vocab, corpus, split),
        text=record,
    )
    check_work_left(run, meta)
    state = restored_state(run, *saved) if saved is not None else new_state(run, begin.init)
    run = replace(run, events=EventLog.open(directory.path) if is_main_process() else EventLog())
    if run.events.enabled:
        console.print(f"TensorBoard events in {directory.path / EVENTS_SUBDIR}: tensorboard --logdir {directory.path}")
    console.print(opening_line(len(corpus), vocab.size, split, mesh, state.step, vocab.unit))
    return run, state


# Under a wall-clock budget a validation scores at most this many windows of the tail per second of the budget
# (or the config's --val-chars if fewer), so that its cost stays a small share of any budget on 2 CPU cores
# (the records' eval_seconds in benchmarks/results/2026-12-05-cpu-wall-clock), and less on an accelerator.
VAL_WINDOWS_PER_BUDGET_SECOND = 100


def val_windows(config: TrainConfig, limits: Limits) -> int:
    """How many windows of the held-out tail each validation scores (0: all): ``--val-chars``, and under a
    wall-clock budget no more than ``VAL_WINDOWS_PER_BUDGET_SECOND`` per second of it."""
    if limits.max_seconds is None:
        return config.val_chars
    cap = max(int(VAL_WINDOWS_PER_BUDGET_SECOND * limits.max_seconds), 1)
    return min(config.val_chars, cap) if config.val_chars else cap


def run_text(
    text: str | PreparedCorpus | None, meta: CheckpointMeta | None, directory: RunDirectory
) -> tuple[str | PreparedCorpus, TextRecord]:
    """The text to train on and its record: the one given (a resume's checked against the run's own by
    sha256), else the run's own read again (a resume), else the built-in default corpus (a new run)."""
    where = repr(str(directory.path))
    if text is None and meta is not None:
        # checked against the record as it is read (hashed once)
        text = read_recorded_text(meta.text, where, meta.config.units)
        assert meta.text is not None  # read_recorded_text refuses a run without one
        return text, meta.text
    if text is None:
        from charlm_jax.data.corpus import load_text

        text = load_text()
    record = record_of(text)
    if meta is not None:
        check_same_text(meta.text, record, where)
    return text, record


def restore_latest(directory: RunDirectory, mesh, console: Console, resume: bool):
    """(meta, (params, items)) of the newest readable checkpoint to resume from, or None for a new run."""
    latest = directory.store.latest_step()
    if latest is None:
        return None
    if not resume:
        raise worded(
            f"{str(directory.path)!r} already holds a run (step {latest}): pass {{resume}} to continue it, or "
            "choose another {out}"
        )
    meta, saved = directory.store.newest_readable(partial(read_checkpoint, directory.store, mesh), set_aside=True)
    dropped = directory.drop_records_after(meta.step) if is_main_process() else 0
    if dropped:
        console.print(f"{dropped} record(s) past step {meta.step} removed from {directory.metrics_path.name}")
    return meta, saved


def check_work_left(run: Run, meta: CheckpointMeta | None) -> None:
    """Refuse, before any work, a resume that has nothing left to train within its epochs and limits."""
    step, train_seconds = (meta.step, meta.train_seconds) if meta is not None else (0, 0.0)
    wall_seconds = meta.wall_seconds if meta is not None else 0.0
    if step >= run.total_steps:
        done = step // run.steps_per_epoch
        raise worded(
            f"the run in {str(run.directory.path)!r} already has {done} epoch(s): pass {{epochs}} greater than "
            f"{done} to train it further"
        )
    limits = run.limits
    if limits.max_steps is not None and step >= limits.max_steps:
        raise worded(
            f"the run in {str(run.directory.path)!r} is at step {step}, already at its step limit "
            f"{limits.max_steps}: pass a larger {{max_steps}} to train it further"
        )
    if limits.max_seconds is not None and wall_seconds >= limits.max_seconds:
        raise worded(
            f"the run in {str(run.directory.path)!r} has run {wall_seconds:.0f} s, already its "
            f"time limit of {limits.max_seconds:g} s: pass a larger {{time_limit}} to train it further"
        )
    if limits.max_train_seconds is not None and train_seconds >= limits.max_train_seconds:
        raise worded(
            f"the run in {str(run.directory.path)!r} has trained {train_seconds:.0f} s, already its "
            f"training time limit of {limits.max_train_seconds:g} s: pass a larger --train-time-limit "
            "(Limits.max_train_seconds) to train it further"
        )


def new_state(run: Run, init: InitFrom | None = None) -> RunState:
    """A new run's step-0 state: the seed's initialisation, or ``init``'s weights moved onto the run's vocabulary."""
    params = None
    if init is not None:
        fresh = create_train_state(RunKeys.from_seed(run.config.seed).init, run.config, run.vocab.size, 1).params
        params = transplant(init, fresh, run.vocab)
        if is_main_process():
            write_origin(run.directory.path, init, run.vocab)
        run.console.print(
            f"fine-tuning from {init.path} (step {init.step}): {run.vocab.size - init.vocab.size} new character(s), "
            "a fresh optimizer"
        )
    train, carries = write_new_run(
        run.directory.store,
        run.config,
        run.vocab,
        run.default_prompt,
        run.mesh,
        params=params,
        total_steps=run.total_steps,
        text=run.text,
    )
    return RunState(train=train, carries=carries, step=0, schedule_steps=run.total_steps)


def widened(vocab: Vocab, corpus: np.ndarray, source: Vocab) -> tuple[Vocab, np.ndarray]:
    """The union of ``source``'s characters and the text's, and the text's ids in it (the same array when
    the text's vocabulary already is the union)."""
    union = union_vocab(source, vocab)
    if union == vocab:
        return vocab, corpus
    new_ids = union.encode(vocab.chars)  # (text vocab,): each text id's id in the union
    return union, new_ids[np.asarray(corpus)].astype(np.int32)


def restored_state(run: Run, meta: CheckpointMeta, saved: tuple[Any, dict[str, Any]]) -> RunState:
    params, items = saved
    schedule_steps = meta.schedule_steps or run.total_steps
    anneal = Anneal(*meta.anneal) if meta.anneal is not None else None
    # The optimizer is rebuilt for the schedule's length; its state comes from the checkpoint.
    # apply_fn=None: the model is a static argument of the compiled block (see train.create_train_state).
    train = TrainState(
        step=items["step"],
        apply_fn=None,  # type: ignore[arg-type]
        params=params,
        tx=make_optimizer(run.config, schedule_steps, anneal),
        opt_state=items["opt_state"],
    )
    state = RunState(
        train=train,
        carries=items["carries"],
        step=meta.step,
        train_seconds=meta.train_seconds,
        wall_seconds=meta.wall_seconds,
        skipped_total=meta.skipped_steps_total,
        schedule_steps=schedule_steps,
        schedule_fitted=meta.schedule_steps is not None,
        anneal=anneal,
        last_record_step=meta.step,
    )
    if run.directory.best_store.latest_step() is not None:
        best = run.directory.best_store.restore_meta()
        state.best_epoch, state.best_val_bits_per_char = best.epoch, best.val_bits_per_char
    return state
