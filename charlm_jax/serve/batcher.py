"""Continuous batching: requests that arrive apart are decoded as rows of one compiled scan.

One thread owns the model's decoding. Between two chunks of ``chunk`` steps it admits the waiting
requests (each row's prompt read by ``decode.rows_start``, padded to one of a few lengths so they share
compiled calls), joins their states to the running batch, and drops the rows that are done or whose
client left. Rows whose options differ in what is compiled (sampler, top-k, which filters are on, the
history's width, adapted weights) run as separate batches, taken in turn; everything else (temperature,
top-p, min-p, the repetition controls' values, the seed) varies per row inside one batch.

A row's text is the one ``charlm_jax.generate`` gives its request alone: its random numbers come from
its own key and its own step count (``decode``'s module docstring), never from the batch it shares.
The batch is padded to one of ``SLOT_BUCKETS`` rows (copies of a live row, whose output is dropped), so
a batch of any size runs one of a few compiled shapes.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.errors import CharLMError
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.settings.serving import DEFAULT_CHUNK, DEFAULT_MAX_WAITING, SLOT_BUCKETS
from charlm_jax.use.decode import DecodeState, as_key, rows_start, stream_chunk

# Prompts are padded to a power of two from this length on (one compiled start per length).
SHORTEST_PROMPT_PAD = 16


class QueueFull(CharLMError):
    """The server has as many requests waiting as it accepts: the client should retry later (HTTP 503)."""


@dataclass(frozen=True)
class Signature:
    """What the rows of one batch share because it is compiled in (``GenerationOptions.STATIC_FIELDS`` and
    which optional filters are on), plus the weights (adapted requests bring their own)."""

    sampler: str
    top_k: int | None
    top_p: bool
    min_p: bool
    repetition_penalty: bool
    no_repeat_ngram: bool
    history_window: int
    weights: int  # id() of the parameters; 0 for the model's own

    @classmethod
    def of(cls, options: GenerationOptions, weights: int = 0) -> Signature:
        return cls(
            options.sampler,
            options.top_k,
            options.top_p is not None,
            options.min_p is not None,
            options.repetition_penalty is not None,
            options.no_repeat_ngram is not None,
            options.history_window,
            weights,
        )


@dataclass
class Job:
    """One request: a prompt, its options (a row per temperature) and where its text goes.

    ``deliver(row, piece, done)`` is called from the decoding thread with each row's next piece of text
    and once more with ``done=True``; ``cancel()`` (a client that left) frees its rows at the next chunk.
    """

    prompt_ids: np.ndarray
    options: GenerationOptions
    seed: int | jax.Array
    deliver: Callable[[int, str, bool], None]
    params: Any = None  # adapted weights, or None for the model's own
    error: str | None = None  # set before the last delivery when decoding failed
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Row:
    job: Job
    index: int  # which of the job's rows (its temperature's place; the key is fold_in(seed, index))
    remaining: int
    decode: Callable[[Any, bool], str]


class Group:
    """The running batch of one signature: its rows and their decoding state (padded to a bucket)."""

    def __init__(self, signature: Signature, params, options: GenerationOptions):
        self.signature = signature
        self.params = params
        self.options = options  # the static part every row shares
        self.rows: list[Row] = []
        self.state: DecodeState | None = None


def bucket(count: int, buckets: tuple[int, ...] = SLOT_BUCKETS) -> int:
    """The smallest of ``buckets`` that holds ``count`` (the largest's multiple beyond it)."""
    for size in buckets:
        if count <= size:
            return size
    return -(-count // buckets[-1]) * buckets[-1]


def prompt_pad(length: int) -> int:
    """The padded length a prompt of ``length`` ids is read at: a power of two, at least SHORTEST_PROMPT_PAD."""
    return max(SHORTEST_PROMPT_PAD, 1 << (int(length) - 1).bit_length())


def take_rows(state: DecodeState, index: np.ndarray) -> DecodeState:
    """The rows ``index`` of a batch's state (the scalar ``filled`` is shared and kept)."""
    return jax.tree.map(lambda x: x[index] if x.ndim else x, state)


def join_rows(states: list[DecodeState]) -> DecodeState:
    """States of batches joined row-wise into one."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs) if xs[0].ndim else xs[0], *states)


def row_options(group: Group, size: int) -> GenerationOptions:
    """The group's options with each row's own traced values, padded to ``size`` rows like its state."""
    rows = group.rows + [group.rows[-1]] * (size - len(group.rows))

    def per_row(name: str, dtype, column: bool):
        values = np.asarray([np.asarray(getattr(r.job.options, name)).reshape(-1)[0] for r in rows], dtype)
        return values[:, None] if column else values

    temperatures = np.asarray([r.job.options.temperatures[r.index] for r in rows], np.float32)
    extra: dict[str, Any] = {"repetition_window": per_row("repetition_window", np.int32, False)}
    for name, dtype in (("top_p", np.float32), ("min_p", np.float32), ("repetition_penalty", np.float32)):
        if getattr(group.options, name) is not None:
            extra[name] = per_row(name, dtype, True)
    if group.options.no_repeat_ngram is not None:
        extra["no_repeat_ngram"] = per_row("no_repeat_ngram", np.int32, True)
    return group.options.with_rows(temperatures, **extra)


class Batcher:
    """The decoding thread and its queue (see the module docstring). ``submit`` a ``Job``; ``close`` to stop.

    ``max_rows`` bounds the rows decoded at once, ``max_waiting`` the jobs waiting to join (a job beyond it
    is refused with ``QueueFull``).
    """

    def __init__(
        self,
        lm,
        *,
        chunk: int = DEFAULT_CHUNK,
        max_rows: int = SLOT_BUCKETS[-1],
        max_waiting: int = DEFAULT_MAX_WAITING,
    ):
        self.lm = lm
        self.chunk = int(chunk)
        self.max_rows = int(max_rows)
        self.max_waiting = int(max_waiting)
        self.waiting: deque[Job] = deque()
        self.groups: dict[Signature, Group] = {}
        self.wake = threading.Condition()
        self.stopped = False
        self.chunks_run = 0
        self.thread = threading.Thread(target=self._run, name="charlm-jax-batcher", daemon=True)
        self.thread.start()

    def warm_up(self, options: GenerationOptions | None = None) -> None:
        """Compile what the first requests with ``options`` (default: temperature only) would: a start and a
        chunk at every batch size, so no client waits for a compile. Call before serving."""
        options = options or GenerationOptions(length=self.chunk, temperatures=(1.0,))
        signature = Signature.of(options)
        probe = Group(signature, self.lm.params, options.replace(length=self.chunk, temperatures=(1.0,)))
        ids = self.lm.encode_prompt(self.lm.default_prompt)[:SHORTEST_PROMPT_PAD]
        probe.rows = [Row(Job(ids, options, 0, lambda *a: None), 0, 1, self.lm.vocab.decoder())]
        padded = np.zeros((1, SHORTEST_PROMPT_PAD), np.int32)
        padded[0, : len(ids)] = ids
        keys = jax.vmap(jax.random.fold_in, (None, 0))(as_key(0), jnp.arange(1, dtype=jnp.int32))
        state = rows_start(
            self.lm.params, keys, padded, np.full(1, len(ids), np.int32), row_options(probe, 1), model=self.lm.model
        )
        for size in SLOT_BUCKETS:
            if size <= bucket(self.max_rows):
                padded_state = take_rows(state, np.zeros(size, np.int64))
                stream_chunk(
                    self.lm.params, padded_state, row_options(probe, size), model=self.lm.model, count=self.chunk
                )

    # --- called from the server's threads ---
    def submit(self, job: Job) -> None:
        if job.options.rows > self.max_rows:
            raise CharLMError(f"{job.options.rows} rows asked, the server decodes at most {self.max_rows} at once")
        with self.wake:
            if self.stopped:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are waiting already: retry in a moment")
            self.waiting.append(job)
            self.wake.notify()

    def load(self) -> dict[str, int]:
        with self.wake:
            active = sum(len(g.rows) for g in self.groups.values())
            return {"active_rows": active, "waiting_requests": len(self.waiting), "chunks_run": self.chunks_run}

    def close(self) -> None:
        with self.wake:
            self.stopped = True
            self.wake.notify()
        self.thread.join(timeout=30)

    # --- the decoding thread ---
    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.stopped and not self.waiting and not self.groups:
                    self.wake.wait()
                if self.stopped:
                    break
                admitted = self._take_waiting()
            for job in admitted:
                try:
                    self._admit(job)
                except Exception as error:  # noqa: BLE001 - one request's failure must not stop the others
                    _end([job], f"decoding failed: {type(error).__name__}: {error}")
                    self.groups = {k: g for k, g in self.groups.items() if g.rows}
            for signature, group in list(self.groups.items()):
                try:
                    self._advance(group)
                except Exception as error:  # noqa: BLE001 - the batch's requests end; the server goes on
                    _end(_jobs(group), f"decoding failed: {type(error).__name__}: {error}")
                    self.groups.pop(signature, None)
        for group in self.groups.values():
            _end(_jobs(group), "the server is shutting down")
        _end(self.waiting, "the server is shutting down")

    def _take_waiting(self) -> list[Job]:
        """Jobs that fit in the free rows, first come first served (called holding the lock)."""
        free = self.max_rows - sum(len(g.rows) for g in self.groups.values())
        admitted = []
        while self.waiting and self.waiting[0].options.rows <= free:
            job = self.waiting.popleft()
            free -= job.options.rows
            admitted.append(job)
        return admitted

    def _admit(self, job: Job) -> None:
        params = self.lm.params if job.params is None else job.params
        signature = Signature.of(job.options, 0 if job.params is None else id(job.params))
        group = self.groups.get(signature)
        if group is None:
            static = job.options.replace(length=self.chunk, temperatures=(1.0,))
            group = self.groups[signature] = Group(signature, params, static)
        rows = job.options.rows
        padded = np.zeros((rows, prompt_pad(len(job.prompt_ids))), np.int32)
        padded[:, : len(job.prompt_ids)] = job.prompt_ids
        key = as_key(job.seed)
        keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(rows, dtype=jnp.int32))
        new_rows = [Row(job, i, job.options.length, self.lm.vocab.decoder()) for i in range(rows)]
        probe = Group(signature, params, group.options)
        probe.rows = new_rows
        options = row_options(probe, rows)
        lengths = np.full(rows, len(job.prompt_ids), np.int32)
        state = rows_start(params, keys, padded, lengths, options, model=self.lm.model)
        live = None if group.state is None else take_rows(group.state, np.arange(len(group.rows)))
        joined = state if live is None else join_rows([live, state])
        group.state = self._padded(joined, len(group.rows) + rows)
        group.rows.extend(new_rows)

    @staticmethod
    def _padded(state: DecodeState, live: int) -> DecodeState:
        """``state`` (its first ``live`` rows real) padded with copies of its last live row to a bucket."""
        size = bucket(live)
        index = np.minimum(np.arange(size), live - 1)
        return take_rows(state, index)

    def _advance(self, group: Group) -> None:
        """One chunk for ``group``'s rows; hand each row its text; drop finished and abandoned rows."""
        assert group.state is not None
        size = bucket(len(group.rows))
        options = row_options(group, size)
        group.state, ids = stream_chunk(group.params, group.state, options, model=self.lm.model, count=self.chunk)
        ids = np.asarray(ids)
        self.chunks_run += 1
        keep = []
        for slot, row in enumerate(group.rows):
            if row.job.cancelled.is_set():
                continue
            take = min(self.chunk, row.remaining)
            row.remaining -= take
            done = row.remaining == 0
            piece = row.decode(ids[slot, :take], done)
            row.job.deliver(row.index, piece, done)
            if not done:
                keep.append(slot)
        if len(keep) == len(group.rows):
            return
        if not keep:
            del self.groups[group.signature]
            return
        group.rows = [group.rows[i] for i in keep]
        group.state = self._padded(take_rows(group.state, np.asarray(keep)), len(keep))


def _end(jobs, message: str) -> None:
    """Close every row of ``jobs`` with ``message`` as their error."""
    for job in jobs:
        job.error = message
        for index in range(job.options.rows):
            job.deliver(index, "", True)


def _jobs(group: Group) -> list[Job]:
    """The jobs with rows in ``group``, each once."""
    return list({id(row.job): row.job for row in group.rows}.values())
