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
from charlm_jax.settings.generation import ANY_ID, MAX_STOP_LENGTH, MAX_STOPS, GenerationOptions
from charlm_jax.settings.serving import DEFAULT_CHUNK, DEFAULT_MAX_WAITING, SLOT_BUCKETS
from charlm_jax.use.decode import DecodeState, as_key, rows_start, stream_chunk
from charlm_jax.use.stops import STOPPED

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
    stop: bool
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
            options.stop_ids is not None,
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
    """The running batch of one signature: its slots (a row, or None when free) and their decoding state, as
    many rows as slots (a bucket); a free slot decodes a copy of a row and its output is dropped."""

    def __init__(self, signature: Signature, params, options: GenerationOptions):
        self.signature = signature
        self.params = params
        self.options = options  # the static part every row shares
        self.slots: list[Row | None] = []
        self.state: DecodeState | None = None
        self.row_values: GenerationOptions | None = None  # row_options of the slots, until they change

    @property
    def rows(self) -> list[Row]:
        return [row for row in self.slots if row is not None]


def bucket(count: int, buckets: tuple[int, ...] = SLOT_BUCKETS) -> int:
    """The smallest of ``buckets`` that holds ``count`` (the largest's multiple beyond it)."""
    for size in buckets:
        if count <= size:
            return size
    return -(-count // buckets[-1]) * buckets[-1]


def prompt_pad(length: int) -> int:
    """The padded length a prompt of ``length`` ids is read at: a power of two, at least SHORTEST_PROMPT_PAD."""
    return max(SHORTEST_PROMPT_PAD, 1 << (int(length) - 1).bit_length())


# Compiled once per pair of bucket sizes (``index`` is as long as the new batch): a batch's state resized or
# compacted, and new rows written into free slots; shapes never depend on how many rows are live.
@jax.jit
def take_rows(state: DecodeState, index: jax.Array) -> DecodeState:
    """The rows ``index`` of a batch's state (the scalar ``filled`` is shared and kept)."""
    return jax.tree.map(lambda x: x[index] if x.ndim else x, state)


@jax.jit
def row_keys(first_keys: jax.Array, indices: jax.Array) -> jax.Array:
    """Row ``indices[r]`` of a request whose key is ``first_keys[r]``: ``decode.start``'s ``fold_in``."""
    return jax.vmap(jax.random.fold_in)(first_keys, indices)


@jax.jit
def put_rows(state: DecodeState, new: DecodeState, slots: jax.Array) -> DecodeState:
    """``state`` with the rows of ``new`` written at ``slots``."""
    return jax.tree.map(lambda x, y: x.at[slots].set(y) if x.ndim else x, state, new)


def row_options(group: Group, size: int) -> GenerationOptions:
    """The group's options with each slot's own traced values (a free slot takes a live row's)."""
    live = group.rows
    rows = [row if row is not None else live[0] for row in group.slots] if group.slots else live
    rows = rows + [rows[-1]] * (size - len(rows))

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
    if group.signature.stop:
        extra["stop_ids"] = np.stack([server_stop_table(r.job.options.stop_ids[r.index]) for r in rows])
    return group.options.with_rows(temperatures, **extra)


def server_stop_table(table: np.ndarray) -> np.ndarray:
    """One row's stop strings (stops, width) padded to the server's one shape (MAX_STOPS, MAX_STOP_LENGTH): wider
    with ANY_ID on the left, the unused stops all STOPPED (a tail ends with a generated id, so never matched)."""
    padded = np.full((MAX_STOPS, MAX_STOP_LENGTH), STOPPED, np.int32)
    padded[: table.shape[0]] = ANY_ID
    padded[: table.shape[0], MAX_STOP_LENGTH - table.shape[1] :] = table
    return padded


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
        """Compile what requests with ``options`` (default: temperature only) and short prompts will run: the
        prompt reading, a chunk, and the moves between batch sizes, at every size, so no client waits for a
        compile. Call before serving."""
        options = options or GenerationOptions(length=self.chunk, temperatures=(1.0,))
        probe = Group(Signature.of(options), self.lm.params, options.replace(length=self.chunk, temperatures=(1.0,)))
        ids = self.lm.encode_prompt(self.lm.default_prompt)[:SHORTEST_PROMPT_PAD]
        sizes = [size for size in SLOT_BUCKETS if size <= bucket(self.max_rows)]
        starts = {}
        for size in sizes:
            probe.slots = [Row(Job(ids, options, 0, lambda *a: None), 0, 1, self.lm.vocab.decoder())] * size
            padded = np.zeros((size, SHORTEST_PROMPT_PAD), np.int32)
            padded[:, : len(ids)] = ids
            keys = row_keys(jnp.stack([as_key(0)] * size), np.zeros(size, np.int32))
            lengths = np.full(size, len(ids), np.int32)
            starts[size] = rows_start(
                self.lm.params, keys, padded, lengths, row_options(probe, size), model=self.lm.model
            )
            stream_chunk(self.lm.params, starts[size], row_options(probe, size), model=self.lm.model, count=self.chunk)
        for size in sizes:  # growing, shrinking and admitting between any two sizes
            for other in sizes:
                take_rows(starts[size], np.zeros(other, np.int64))
                if other <= size:
                    put_rows(starts[size], starts[other], np.zeros(other, np.int32))

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
            active = sum(len(g.rows) for g in list(self.groups.values()))  # the decoding thread may change it
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
            if admitted:
                self._admit_all(admitted)
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

    def _admit_all(self, jobs: list[Job]) -> None:
        """Admit ``jobs``: those of one signature read their prompts in one compiled call, then join its batch."""
        by_signature: dict[Signature, list[Job]] = {}
        for job in jobs:
            by_signature.setdefault(Signature.of(job.options, 0 if job.params is None else id(job.params)), []).append(
                job
            )
        for signature, together in by_signature.items():
            try:
                self._admit(signature, together)
            except Exception as error:  # noqa: BLE001 - these requests fail; the others go on
                _end(together, f"decoding failed: {type(error).__name__}: {error}")
                self.groups = {k: g for k, g in self.groups.items() if g.rows}

    def _admit(self, signature: Signature, jobs: list[Job]) -> None:
        group = self.groups.get(signature)
        if group is None:
            params = self.lm.params if jobs[0].params is None else jobs[0].params
            static = jobs[0].options.replace(length=self.chunk, temperatures=(1.0,))
            group = self.groups[signature] = Group(signature, params, static)
        new_rows = [
            Row(job, i, job.options.length, self.lm.vocab.decoder()) for job in jobs for i in range(job.options.rows)
        ]
        count, size = len(new_rows), bucket(len(new_rows))
        padding = [new_rows[slot if slot < count else 0] for slot in range(size)]  # past ``count``: the first again
        padded = np.zeros((size, max(prompt_pad(len(job.prompt_ids)) for job in jobs)), np.int32)
        for slot, row in enumerate(padding):
            padded[slot, : len(row.job.prompt_ids)] = row.job.prompt_ids
        lengths = np.asarray([len(row.job.prompt_ids) for row in padding], np.int32)
        first_keys = {id(job): as_key(job.seed) for job in jobs}
        keys = row_keys(
            jnp.stack([first_keys[id(row.job)] for row in padding]), np.asarray([r.index for r in padding], np.int32)
        )
        probe = Group(signature, group.params, group.options)
        probe.slots = list(new_rows)
        state = rows_start(group.params, keys, padded, lengths, row_options(probe, size), model=self.lm.model)
        group.row_values = None  # the slots change below
        if group.state is None:  # a new batch: the new rows, padded to a bucket with copies
            group.state = state
            group.slots = [*new_rows, *[None] * (size - count)]
            return
        live = len(group.rows)
        if live + count > len(group.slots):  # grow to the next bucket (the new slots free)
            grown = bucket(live + count)
            group.state = take_rows(group.state, np.minimum(np.arange(grown), len(group.slots) - 1))
            group.slots += [None] * (grown - len(group.slots))
        free = [i for i, row in enumerate(group.slots) if row is None][:count]
        # A padding row is a copy of the first new row: written to the same slot, it changes nothing.
        group.state = put_rows(group.state, state, np.asarray(free + [free[0]] * (size - count), np.int32))
        for slot, row in zip(free, new_rows):
            group.slots[slot] = row

    def _advance(self, group: Group) -> None:
        """One chunk for ``group``'s rows; hand each row its text; free the slots of finished and abandoned
        rows, and shrink the batch to a smaller bucket when its live rows fit one."""
        assert group.state is not None
        if group.row_values is None:
            group.row_values = row_options(group, len(group.slots))
        group.state, ids = stream_chunk(
            group.params, group.state, group.row_values, model=self.lm.model, count=self.chunk
        )
        ids = np.asarray(ids)
        self.chunks_run += 1
        before = len(group.rows)
        for slot, row in enumerate(group.slots):
            if row is None:
                continue
            if row.job.cancelled.is_set():
                group.slots[slot] = None
                continue
            take = min(self.chunk, row.remaining)
            new = ids[slot, :take]
            stopped = new == STOPPED
            row.remaining = 0 if stopped.any() else row.remaining - take  # a stopped row is done
            done = row.remaining == 0
            row.job.deliver(row.index, row.decode(new[~stopped], done), done)
            if done:
                group.slots[slot] = None
        live = [i for i, row in enumerate(group.slots) if row is not None]
        if len(live) < before:
            group.row_values = None  # slots were freed
        if not live:
            del self.groups[group.signature]
        elif bucket(len(live)) < len(group.slots):
            size = bucket(len(live))
            index = np.asarray(live + [live[0]] * (size - len(live)))
            group.state = take_rows(group.state, index)
            group.slots = [group.slots[i] for i in live] + [None] * (size - len(live))


def _end(jobs, message: str) -> None:
    """Close every row of ``jobs`` with ``message`` as their error."""
    for job in jobs:
        job.error = message
        for index in range(job.options.rows):
            job.deliver(index, "", True)


def _jobs(group: Group) -> list[Job]:
    """The jobs with rows in ``group``, each once."""
    return list({id(row.job): row.job for row in group.rows}.values())
